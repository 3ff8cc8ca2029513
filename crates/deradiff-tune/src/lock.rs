//! Who is writing a results file: the lock record a sweep keeps beside it while it runs.
//!
//! A sweep holds an exclusive lock on its results file (a second process on the same file fails at
//! once), and writes beside it a small record (`sweep.shard-00003-of-00008.lock` next
//! to `sweep.shard-00003-of-00008.jsonl`) of its process id, its host and when the process started. The
//! record is removed when the sweep ends — finished or stopped by an error —, and stays behind
//! when the process is killed. [`writer_state`] reads it: a process on this host that still runs
//! is [`WriterState::Running`], one that is gone is [`WriterState::Dead`]; a process on another
//! host cannot be checked from here ([`WriterState::Unknown`]).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The record a running sweep keeps beside its results file (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRecord {
    /// The writing process's id.
    pub pid: u32,
    /// The host it runs on (its host name).
    pub host: String,
    /// When the process started, in clock ticks since boot (Linux: field 22 of
    /// `/proc/<pid>/stat`), so that a pid reused by another process is not taken for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_start: Option<u64>,
}

/// Whether a process is writing a results file, by its lock record ([`writer_state`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriterState {
    /// No record: no sweep is writing the file (it finished, stopped on an error, or never ran).
    Idle,
    /// The writing process runs on this host.
    Running {
        /// Its process id.
        pid: u32,
        /// Its host.
        host: String,
    },
    /// The record's process ran on this host and is gone (killed): nothing writes the file.
    Dead {
        /// Its process id.
        pid: u32,
        /// Its host.
        host: String,
    },
    /// The record's process runs, or ran, on another host: it cannot be checked from here.
    Unknown {
        /// Its process id.
        pid: u32,
        /// Its host.
        host: String,
    },
}

impl std::fmt::Display for WriterState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriterState::Idle => f.write_str("no process is writing it"),
            WriterState::Running { pid, host } => write!(f, "running: pid {pid} on {host}"),
            WriterState::Dead { pid, host } => write!(f, "dead: pid {pid} on {host} is gone"),
            WriterState::Unknown { pid, host } => {
                write!(f, "unknown: pid {pid} on {host}, another host, cannot be checked from here")
            }
        }
    }
}

/// The lock record's path for the results file `results`: the same name ending in `.lock`.
pub fn lock_record_path(results: &Path) -> PathBuf {
    results.with_extension("lock")
}

/// This host's name (Linux: `/proc/sys/kernel/hostname`; else `$HOSTNAME`), if known.
fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

/// Process `pid`'s start time in clock ticks since boot (Linux), `None` where there is no
/// `/proc/<pid>/stat` to read.
fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after the last ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// The record of this process.
pub(crate) fn this_process() -> LockRecord {
    let pid = std::process::id();
    LockRecord { pid, host: host_name().unwrap_or_else(|| "an unknown host".into()), process_start: process_start(pid) }
}

/// Writes this process's lock record for `results`, best effort: a folder where it cannot be
/// written only leaves `status` without it. Returns the record's path when written.
pub(crate) fn write_record(results: &Path) -> Option<PathBuf> {
    let path = lock_record_path(results);
    let json = serde_json::to_string(&this_process()).ok()?;
    deradiff_core::io::write_atomic(&path, format!("{json}\n").as_bytes()).ok()?;
    Some(path)
}

/// Removes the lock record at `path` if it is still this process's.
pub(crate) fn remove_record(path: &Path) {
    let ours = read_record(path).is_some_and(|r| r.pid == std::process::id());
    if ours {
        let _ = std::fs::remove_file(path);
    }
}

/// The lock record at `path`, if there is a readable one.
fn read_record(path: &Path) -> Option<LockRecord> {
    if !matches!(deradiff_core::io::path_kind(path), Ok(deradiff_core::io::PathKind::File)) {
        return None;
    }
    let bytes = deradiff_core::io::read_regular_file(path, 1 << 16).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Whether a process is writing the results file `results`, by its lock record (see the module
/// docs): a record of this host whose process is gone — or whose pid now belongs to a process
/// started at another time — is [`WriterState::Dead`].
pub fn writer_state(results: &Path) -> WriterState {
    let Some(record) = read_record(&lock_record_path(results)) else {
        return WriterState::Idle;
    };
    let LockRecord { pid, host, process_start: started } = record;
    if host_name().as_deref() != Some(host.as_str()) || !Path::new("/proc/self/stat").exists() {
        return WriterState::Unknown { pid, host };
    }
    match (process_start(pid), started) {
        (None, _) => WriterState::Dead { pid, host },
        (Some(now), Some(then)) if now != then => WriterState::Dead { pid, host },
        _ => WriterState::Running { pid, host },
    }
}
