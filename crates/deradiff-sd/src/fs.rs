//! The crate's filesystem layer: what is at a path (symbolic links followed, without opening
//! it), and reading the text and JSON files of a checkpoint (configs, tokenizers, weight indexes)
//! with their kind and size checked first. Every error names the path and what it should be.
//!
//! Public because the reward models built on this crate read their checkpoints the same way.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};

/// Reads and parses a config file (`what` names it in errors): see [`read_text`] and
/// [`parse_json`].
pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path, what: &str) -> Result<T> {
    let text = read_text(path, what)?;
    parse_json(&text, path)
}

/// The largest text file (config, tokenizer, weight index) this crate reads: 64 MiB. Real ones
/// are at most a few MiB (a CLIP `tokenizer.json` is about 2 MiB); a larger file is refused
/// before it is read rather than exhausting memory.
pub const MAX_TEXT_FILE_BYTES: u64 = 64 << 20;

/// What a path is expected to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A regular file (or a symbolic link to one).
    File,
    /// A directory (or a symbolic link to one).
    Dir,
}

impl Kind {
    fn expected(self) -> &'static str {
        match self {
            Kind::File => "a file",
            Kind::Dir => "a folder",
        }
    }
}

/// What [`inspect`] found at a path (symbolic links followed).
enum Found {
    Nothing,
    File,
    Dir,
    /// Anything else, in words ("a FIFO (named pipe)", "a symbolic link loop", …).
    Other(String),
}

/// `ELOOP`: too many levels of symbolic links (not an `io::ErrorKind` on stable Rust).
fn is_link_loop(e: &std::io::Error) -> bool {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    const ELOOP: i32 = 40;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    const ELOOP: i32 = 62;
    e.raw_os_error() == Some(ELOOP)
}

/// A file type that is neither a file, a folder nor a link, in words.
fn describe_special(ft: &std::fs::FileType) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if ft.is_fifo() {
            return "a FIFO (named pipe)".into();
        }
        if ft.is_socket() {
            return "a socket".into();
        }
        if ft.is_block_device() {
            return "a block device".into();
        }
        if ft.is_char_device() {
            return "a character device".into();
        }
    }
    let _ = ft;
    "neither a file nor a folder".into()
}

/// The nearest ancestor of `path` that exists but is not a folder (what makes a path fail with
/// "not a directory").
fn blocking_ancestor(path: &Path) -> Option<(PathBuf, String)> {
    path.ancestors().skip(1).find_map(|a| match std::fs::metadata(a) {
        Ok(m) if m.is_dir() => None,
        Ok(m) if m.is_file() => Some((a.to_path_buf(), "a file".to_string())),
        Ok(m) => Some((a.to_path_buf(), describe_special(&m.file_type()))),
        Err(_) => None,
    })
}

/// What is at `path`, following symbolic links, without opening it (so a FIFO does not block).
/// An [`Error::Io`] when the path cannot be inspected (no permission on a folder on the way).
fn inspect(path: &Path) -> Result<Found> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Found::Nothing),
        Err(e) if is_link_loop(&e) => return Ok(Found::Other("a path through a symbolic link loop".into())),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
            return Ok(Found::Other(match blocking_ancestor(path) {
                Some((a, what)) => format!("unreachable: {} is {what}, not a folder", a.display()),
                None => "unreachable: a folder on its way is not a folder".into(),
            }))
        }
        Err(e) => return Err(Error::io("inspect", path, e)),
    };
    let ft = meta.file_type();
    if ft.is_file() {
        return Ok(Found::File);
    }
    if ft.is_dir() {
        return Ok(Found::Dir);
    }
    if !ft.is_symlink() {
        return Ok(Found::Other(describe_special(&ft)));
    }
    let target = std::fs::read_link(path).map(|t| t.display().to_string()).unwrap_or_else(|_| "?".into());
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(Found::File),
        Ok(m) if m.is_dir() => Ok(Found::Dir),
        Ok(m) => Ok(Found::Other(format!("a symbolic link to {}", describe_special(&m.file_type())))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Ok(Found::Other(format!("a dangling symbolic link (its target {target} does not exist)")))
        }
        Err(e) if is_link_loop(&e) => Ok(Found::Other(format!("a symbolic link loop (it points to {target})"))),
        Err(e) => Err(Error::io("follow the symbolic link", path, e)),
    }
}

/// Whether `path` is of kind `kind` (symbolic links followed): `Ok(true)` if so, `Ok(false)` when
/// nothing is there (for optional files), an [`Error::WrongKind`] naming what is there otherwise
/// (`what` names the path, `expected` what it should be; `None`: "a file" / "a folder"), an
/// [`Error::Io`] when it cannot be inspected.
pub fn probe_path(path: &Path, kind: Kind, what: &str, expected: Option<&str>) -> Result<bool> {
    let found = match (inspect(path)?, kind) {
        (Found::Nothing, _) => return Ok(false),
        (Found::File, Kind::File) | (Found::Dir, Kind::Dir) => return Ok(true),
        (Found::File, Kind::Dir) => "a file".to_string(),
        (Found::Dir, Kind::File) => "a folder".to_string(),
        (Found::Other(s), _) => s,
    };
    Err(Error::WrongKind {
        what: what.to_string(),
        path: path.to_path_buf(),
        found,
        expected: expected.unwrap_or(kind.expected()).to_string(),
    })
}

/// Whether `path` is a file or a folder (symbolic links followed): `Ok(None)` when nothing is
/// there, an [`Error::WrongKind`] (`what` names the path, `expected` what it should be) when it is
/// something else (a FIFO, a device, a dangling link, a link loop, …).
pub fn probe_any(path: &Path, what: &str, expected: &str) -> Result<Option<Kind>> {
    match inspect(path)? {
        Found::Nothing => Ok(None),
        Found::File => Ok(Some(Kind::File)),
        Found::Dir => Ok(Some(Kind::Dir)),
        Found::Other(found) => Err(Error::WrongKind {
            what: what.to_string(),
            path: path.to_path_buf(),
            found,
            expected: expected.to_string(),
        }),
    }
}

/// Checks that `path` is of kind `kind` (symbolic links followed): an [`Error::NotFound`] when
/// nothing is there, an [`Error::WrongKind`] naming what is there when it is something else (see
/// [`probe_path`]).
pub fn check_path(path: &Path, kind: Kind, what: &str, expected: Option<&str>) -> Result<()> {
    if probe_path(path, kind, what, expected)? {
        Ok(())
    } else {
        Err(Error::NotFound { what: what.to_string(), path: path.to_path_buf() })
    }
}

/// Reads a whole UTF-8 text file (a config, tokenizer or weight index; `what` names it in
/// errors), after checking that it is a file ([`check_path`]) of at most
/// [`MAX_TEXT_FILE_BYTES`]. Text that is not UTF-8 is an [`Error::Config`].
pub fn read_text(path: &Path, what: &str) -> Result<String> {
    use std::io::Read;
    check_path(path, Kind::File, what, None)?;
    let file = std::fs::File::open(path).map_err(|e| Error::io("read", path, e))?;
    let len = file.metadata().map_err(|e| Error::io("read", path, e))?.len();
    let too_large = |n: u64| {
        Error::config(
            path,
            format!(
                "the {what} is {n} bytes; this crate reads text files of at most {} MiB (is it the right file?)",
                MAX_TEXT_FILE_BYTES >> 20
            ),
        )
    };
    if len > MAX_TEXT_FILE_BYTES {
        return Err(too_large(len));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    // `take`: the file may grow while it is read.
    file.take(MAX_TEXT_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(|e| Error::io("read", path, e))?;
    if bytes.len() as u64 > MAX_TEXT_FILE_BYTES {
        return Err(too_large(bytes.len() as u64));
    }
    String::from_utf8(bytes).map_err(|e| {
        Error::config(
            path,
            format!(
                "the {what} is not UTF-8 text (invalid byte at offset {}): is it the right file?",
                e.utf8_error().valid_up_to()
            ),
        )
    })
}

/// Parses a config document (`path` names it in errors): text that is not JSON, or JSON that is
/// not an object of the config's shape, is an [`Error::Config`]; a field whose value has the
/// wrong type is an [`Error::ConfigField`] naming the field.
pub fn parse_json<T: for<'de> Deserialize<'de>>(text: &str, path: &Path) -> Result<T> {
    let value: Value = serde_json::from_str(text).map_err(|e| Error::config(path, e.to_string()))?;
    let whole = match T::deserialize(&value) {
        Ok(config) => return Ok(config),
        Err(e) => e,
    };
    // Every field has a default, so each field alone deserializes unless its own value is bad.
    if let Value::Object(fields) = &value {
        for (field, v) in fields {
            let alone = Value::Object(std::iter::once((field.clone(), v.clone())).collect());
            if let Err(e) = T::deserialize(&alone) {
                return Err(Error::config_field(path, field, e.to_string()));
            }
        }
    }
    Err(Error::config(path, whole.to_string()))
}

/// The config file beside weights: `dir/config.json`.
pub fn config_path(dir: &Path) -> PathBuf {
    dir.join("config.json")
}
