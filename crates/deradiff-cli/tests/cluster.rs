//! The job-array flow on one machine: shard processes started at once (each finding its shard in
//! the Slurm or Kubernetes environment, as on a cluster), then `status`, `merge` and `compare`
//! against an unsharded run of the same sweep: identical rows.

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
    // Slurm style (array 1-3: TASK_MIN 1) for two tasks, Kubernetes style for the third.
    let children: Vec<_> = (0..n)
        .map(|k| {
            let mut c = deradiff();
            c.args(SWEEP).arg("--out").arg(&out);
            if k < 2 {
                c.env("SLURM_ARRAY_TASK_ID", (k + 1).to_string())
                    .env("SLURM_ARRAY_TASK_MIN", "1")
                    .env("SLURM_ARRAY_TASK_COUNT", n.to_string());
            } else {
                c.env("JOB_COMPLETION_INDEX", k.to_string()).arg("--shards").arg(n.to_string());
            }
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
    assert!(status.contains("30/30 items"), "{status}");
    let merged = ok(deradiff().arg("merge").arg(&out).output().unwrap());
    assert!(merged.contains("merged 3 files: 30 rows"), "{merged}");
    assert!(out.join("sweep.jsonl").is_file() && out.join("sweep.csv").is_file());
    assert!(out.join("reward_vs_lambda.png").is_file());

    // The same sweep unsharded: the merged file holds the very same rows, in the same order.
    let whole = out.join("unsharded");
    ok(deradiff().args(SWEEP).arg("--out").arg(&whole).output().unwrap());
    let rows =
        |p: &Path| -> Vec<String> { std::fs::read_to_string(p).unwrap().lines().skip(1).map(String::from).collect() };
    assert_eq!(rows(&out.join("sweep.jsonl")), rows(&whole.join("sweep.jsonl")));
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

#[test]
fn merge_and_status_errors_are_clear() {
    let out = dir("errors");
    // Only shard 0 of 2: merge lists what is missing and fails; --allow-partial merges.
    ok(deradiff().args(SWEEP).args(["--shard", "0/2", "--out"]).arg(&out).output().unwrap());
    let o = deradiff().arg("merge").arg(&out).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("15 of 30 work items have no row") && err.contains("--allow-partial"), "{err}");
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
        (vec!["--shard", "x"], None, "k/n"),
        (vec!["--shards", "4"], None, "needs the shard index"),
        (vec![], Some(("JOB_COMPLETION_INDEX", "1")), "give --shards n"),
        (vec![], Some(("SLURM_ARRAY_TASK_ID", "x")), "SLURM_ARRAY_TASK_ID"),
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
