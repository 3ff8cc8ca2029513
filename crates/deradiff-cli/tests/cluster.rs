//! The job-array flow on one machine: shard processes started at once (each finding its shard in
//! the Slurm or Kubernetes environment, as on a cluster, the count given), then `status`, `merge`
//! and `compare` against an unsharded run of the same sweep: identical files. A re-run of one
//! array index computes that shard; `status` exits non-zero while items are missing.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn deradiff() -> Command {
    Command::new(env!("CARGO_BIN_EXE_deradiff"))
}

fn ok(out: Output) -> String {
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn dir(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("cluster-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

const SWEEP: [&str; 12] =
    ["sweep", "--lambda-range", "0:2:5", "--prompts", "3", "--seeds", "0..2", "--steps", "4", "--samples", "32", "-q"];

#[test]
fn shards_started_at_once_then_merge_equal_an_unsharded_run() {
    let out = dir("array");
    let n = 3;
    // Slurm style (array 0-2, the index from the environment, the count given), the index
    // given as the Slurm example passes it, and Kubernetes style.
    let children: Vec<_> = (0..n)
        .map(|k| {
            let mut c = deradiff();
            c.args(SWEEP).arg("--out").arg(&out).arg("--shards").arg(n.to_string());
            match k {
                0 => c
                    .env("SLURM_ARRAY_TASK_ID", k.to_string())
                    .env("SLURM_ARRAY_TASK_MIN", "0")
                    .env("SLURM_ARRAY_TASK_COUNT", n.to_string()),
                1 => c.env("SLURM_ARRAY_TASK_ID", k.to_string()).arg("--shard").arg(k.to_string()),
                _ => c.env("JOB_COMPLETION_INDEX", k.to_string()),
            };
            c.spawn().expect("spawns")
        })
        .collect();
    for child in children {
        let o = child.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    for k in 0..n {
        assert!(out.join(format!("sweep.shard-{k:05}-of-{n:05}.jsonl")).is_file(), "shard {k}");
    }
    let status = ok(deradiff().arg("status").arg(&out).output().unwrap());
    assert!(status.contains("30/30 items") && !status.contains("running"), "{status}");
    let merged = ok(deradiff().arg("merge").arg(&out).output().unwrap());
    assert!(merged.contains("merged 3 files: 30 rows"), "{merged}");
    assert!(out.join("sweep.jsonl").is_file() && out.join("sweep.csv").is_file());
    assert!(out.join("reward_vs_lambda.png").is_file());

    // The same sweep unsharded: the merged files are its files, byte for byte.
    let whole = out.join("whole");
    ok(deradiff().args(SWEEP).arg("--out").arg(&whole).output().unwrap());
    for name in ["sweep.jsonl", "sweep.csv"] {
        assert!(std::fs::read(out.join(name)).unwrap() == std::fs::read(whole.join(name)).unwrap(), "{name}");
    }
    let status = ok(deradiff().arg("status").arg(&out).output().unwrap());
    assert!(status.contains("merged") && !status.contains("unsharded"), "{status}");
    let cmp = ok(deradiff()
        .args(["compare", "--quiet", "--bootstrap", "200", "--out"])
        .arg(out.join("compare"))
        .arg(whole.join("sweep.jsonl"))
        .arg(out.join("sweep.jsonl"))
        .output()
        .unwrap());
    assert!(cmp.contains("over 30 pairs"), "{cmp}");

    // A second process on a shard that is being written fails at once (the lock); a finished
    // shard rerun resumes and computes nothing.
    let again = ok(deradiff().args(SWEEP).args(["--shard", "1/3", "--out"]).arg(&out).output().unwrap());
    assert!(again.contains("0 rows computed"), "{again}");
}

/// `sbatch --array=1` re-runs one index: Slurm then reports a task count of 1 and a first index
/// of 1. With the count given and the index passed (the Slurm example), that is shard 1 of 3;
/// with the index left to the environment, an error naming the variable — never shard 0 of 1.
#[test]
fn a_rerun_of_one_array_index_recomputes_that_shard() {
    let out = dir("rerun");
    let rerun = |c: &mut Command| {
        c.env("SLURM_ARRAY_TASK_ID", "1").env("SLURM_ARRAY_TASK_MIN", "1").env("SLURM_ARRAY_TASK_MAX", "1");
        c.env("SLURM_ARRAY_TASK_COUNT", "1").env("SLURM_ARRAY_TASK_STEP", "1");
    };
    let mut c = deradiff();
    c.args(SWEEP).args(["--shards", "3", "--out"]).arg(&out);
    rerun(&mut c);
    let o = c.output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("SLURM_ARRAY_TASK_COUNT = 1") && err.contains("--shard $SLURM_ARRAY_TASK_ID"), "{err}");
    assert!(!out.exists(), "nothing is written");
    let mut c = deradiff();
    c.args(SWEEP).args(["--shards", "3", "--shard", "1", "--out"]).arg(&out);
    rerun(&mut c);
    let text = ok(c.output().unwrap());
    assert!(text.starts_with("shard 1/3: 10 of the sweep's 30 work items"), "{text}");
    assert!(out.join("sweep.shard-00001-of-00003.jsonl").is_file() && !out.join("sweep.jsonl").exists());
}

#[test]
fn merge_and_status_errors_are_clear() {
    let out = dir("errors");
    // Only shard 0 of 2: merge lists what is missing and fails; --allow-partial merges.
    ok(deradiff().args(SWEEP).args(["--shard", "0/2", "--out"]).arg(&out).output().unwrap());
    let o = deradiff().arg("merge").arg(&out).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("15 of 30 work items have no row, missing from shards 1/2 (15 items)"), "{err}");
    assert!(err.contains("--allow-partial"), "{err}");
    // status: exit 3 while items are missing; a shard whose process was killed (its lock record
    // left behind, its pid gone) is dead.
    let o = deradiff().arg("status").arg(&out).output().unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("15/30 items") && text.contains("not started: shards 1"), "{text}");
    #[cfg(target_os = "linux")]
    {
        let mut child = Command::new("true").spawn().unwrap();
        let gone = child.id();
        child.wait().unwrap();
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        let record = format!("{{\"pid\":{gone},\"host\":\"{}\"}}\n", host.trim());
        let partial = out.join("sweep.shard-00001-of-00002.jsonl");
        // Shard 1 started and killed: its header only, and its record.
        let header = std::fs::read_to_string(out.join("sweep.shard-00000-of-00002.jsonl"))
            .unwrap()
            .lines()
            .next()
            .unwrap()
            .replace("\"shard\":{\"index\":0,\"count\":2}", "\"shard\":{\"index\":1,\"count\":2}");
        std::fs::write(&partial, format!("{header}\n")).unwrap();
        std::fs::write(out.join("sweep.shard-00001-of-00002.lock"), record).unwrap();
        let o = deradiff().arg("status").arg(&out).output().unwrap();
        assert_eq!(o.status.code(), Some(3));
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(text.contains(&format!("0/15     sweep.shard-00001-of-00002.jsonl  dead: pid {gone}")), "{text}");
        std::fs::remove_file(out.join("sweep.shard-00001-of-00002.lock")).unwrap();
        std::fs::remove_file(&partial).unwrap();
    }
    assert!(!out.join("sweep.jsonl").exists());
    let partial = ok(deradiff().args(["merge", "--allow-partial"]).arg(&out).output().unwrap());
    assert!(partial.contains("15 items missing"), "{partial}");
    // A shard of another sweep in the folder.
    let other = ["sweep", "--lambda-range", "0:1:3", "--prompts", "3", "--steps", "4", "--samples", "32", "-q"];
    ok(deradiff().args(other).args(["--shard", "1/2", "--out"]).arg(&out).output().unwrap());
    let o = deradiff().arg("merge").arg(&out).output().unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("another sweep"), "{}", String::from_utf8_lossy(&o.stderr));
    // Bad shard arguments and environments.
    for (args, env, needle) in [
        (vec!["--shard", "2/2"], None, "does not exist"),
        (vec!["--shard", "x"], None, "K/N"),
        (vec!["--shards", "4"], None, "needs the shard's index"),
        (vec!["--shard", "1"], None, "--shard 1 needs the number of shards"),
        (vec![], Some(("JOB_COMPLETION_INDEX", "1")), "pass --shards N"),
        (vec![], Some(("SLURM_ARRAY_TASK_ID", "2")), "SLURM_ARRAY_TASK_ID = 2: this is a Slurm array task"),
        (vec!["--shards", "4"], Some(("SLURM_ARRAY_TASK_ID", "x")), "SLURM_ARRAY_TASK_ID = x"),
    ] {
        let mut c = deradiff();
        c.args(SWEEP).args(&args).arg("--out").arg(out.join("bad"));
        if let Some((k, v)) = env {
            c.env(k, v);
        }
        let o = c.output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{args:?} {env:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let o = deradiff().arg("status").arg(out.join("nowhere")).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
}
