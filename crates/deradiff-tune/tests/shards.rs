//! Sharded sweeps (issue: sweeps that outgrow one machine): deterministic items, shards that
//! together equal an unsharded run row for row — also when killed and resumed —, merge and its
//! errors, status, multiple seeds per prompt, and the schedulers' environment variables.

use std::path::PathBuf;

use deradiff_analytic::{demo_linear_reward, GaussianMixture};
use deradiff_core::SchedulerKind;
use deradiff_tune::*;

fn mixture() -> GaussianMixture {
    GaussianMixture::new(vec![0.6, 0.4], vec![vec![-0.6, 0.0], vec![0.8, 0.4]], vec![vec![0.5, 0.4], vec![0.4, 0.6]])
        .unwrap()
}

fn model() -> AnalyticModel {
    let mut setup = AnalyticSetup::new(mixture(), demo_linear_reward(), 1.0);
    setup.scheduler = SchedulerKind::EulerAncestral;
    setup.steps = 4;
    AnalyticModel::new(setup).unwrap()
}

fn truth() -> TrueReward {
    TrueReward::new("true", demo_linear_reward(), ManifoldPenalty::ReferenceLogDensity(mixture()), 2.0).unwrap()
}

fn dir(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("deradiff-shards").join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// 3 prompts × 2 seeds × 5 λ = 30 items.
fn config() -> SweepConfig {
    let prompts = Prompt::with_seeds(&[Prompt::seeded(10), Prompt::seeded(20), Prompt::seeded(30)], &[0, 7]);
    let mut c = SweepConfig::new(vec![0.0, 0.25, 0.5, 1.0, 1.5], prompts, 8);
    c.max_lambdas_per_batch = 2;
    c
}

/// An observer that fails after `n` rows: a kill at a row boundary.
struct KillAfter(usize);

impl SweepObserver for KillAfter {
    fn on_event(&mut self, event: &SweepEvent) -> Result<()> {
        if matches!(event, SweepEvent::Row { .. }) {
            if self.0 == 0 {
                return Err(Error::user("killed"));
            }
            self.0 -= 1;
        }
        Ok(())
    }
}

#[test]
fn sharded_then_merged_equals_unsharded_row_for_row() {
    let (m, t) = (model(), truth());
    let root = dir("equal");
    let mut whole = config();
    whole.output = Some(SweepOutput::jsonl(root.join("whole.jsonl")));
    let unsharded = run_sweep(&m, &[&t], &whole, &mut NoSweepObserver).unwrap();
    assert_eq!(unsharded.rows.len(), 30);
    for n in [1usize, 3, 4] {
        let mut files = Vec::new();
        for k in 0..n {
            let mut c = config();
            c.shard = Some(Shard::new(k, n).unwrap());
            let path = root.join(format!("n{n}-shard{k}.jsonl"));
            c.output = Some(SweepOutput::jsonl(&path));
            // Killed after a pseudo-random number of rows, then resumed (twice for some shards).
            let kill = (k * 7 + n * 3) % 5;
            let first = run_sweep(&m, &[&t], &c, &mut KillAfter(kill));
            if kill < c.total() {
                assert!(first.is_err(), "n = {n}, k = {k}");
            }
            // A write cut short by the kill: half a row at the end of the file.
            let mut bytes = std::fs::read(&path).unwrap();
            bytes.extend_from_slice(b"{\"lambda\":0.5,\"prom");
            std::fs::write(&path, bytes).unwrap();
            let resumed = run_sweep(&m, &[&t], &c, &mut NoSweepObserver).unwrap();
            assert_eq!(resumed.rows.len(), c.total(), "n = {n}, k = {k}");
            assert_eq!(read_results(&path).unwrap().header.shard, Some(Shard::new(k, n).unwrap()));
            files.push(path);
        }
        // Shard sizes differ by at most one item.
        let sizes: Vec<usize> = files.iter().map(|f| read_results(f).unwrap().rows.len()).collect();
        assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1, "{sizes:?}");
        let merged = merge_results(&files, false).unwrap();
        assert!(merged.missing.is_empty());
        assert_eq!(merged.rows, unsharded.rows, "n = {n}: merged rows differ from the unsharded run's");
        let out = root.join(format!("merged-{n}.jsonl"));
        write_results(&out, &merged.header, &merged.rows).unwrap();
        let back = read_results(&out).unwrap();
        assert_eq!(back.rows, unsharded.rows);
        assert_eq!(back.header.spec_hash, unsharded.header.spec_hash);
        assert_eq!(back.header.shard, None);
    }
}

#[test]
fn merge_refuses_mixed_specs_duplicates_missing_items_and_foreign_files() {
    let (m, t) = (model(), truth());
    let root = dir("errors");
    let shard_file = |k: usize, n: usize, c: &SweepConfig, name: &str| -> PathBuf {
        let mut c = c.clone();
        c.shard = Some(Shard::new(k, n).unwrap());
        let path = root.join(name);
        c.output = Some(SweepOutput::jsonl(&path));
        run_sweep(&m, &[&t], &c, &mut NoSweepObserver).unwrap();
        path
    };
    let a0 = shard_file(0, 2, &config(), "a0.jsonl");
    let a1 = shard_file(1, 2, &config(), "a1.jsonl");
    // Missing items: only shard 0 of 2.
    let err = merge_results(std::slice::from_ref(&a0), false).unwrap_err();
    assert!(matches!(err, Error::MissingItems { missing: 15, total: 30, .. }), "{err:?}");
    assert!(err.to_string().contains("missing from shards 1/2 (15 items)"), "{err}");
    assert!(err.to_string().contains("shard 1/2") && err.to_string().contains("--allow-partial"), "{err}");
    let partial = merge_results(std::slice::from_ref(&a0), true).unwrap();
    assert_eq!((partial.rows.len(), partial.missing.len()), (15, 15));
    // The same shard twice.
    let err = merge_results(&[a0.clone(), a0.clone(), a1.clone()], false).unwrap_err();
    assert!(err.to_string().contains("both shard 0/2"), "{err}");
    // Another sweep's shard (another λ grid).
    let mut other = config();
    other.lambdas.push(2.0);
    let b1 = shard_file(1, 2, &other, "b1.jsonl");
    let err = merge_results(&[a0.clone(), b1], false).unwrap_err();
    // The setting that differs, with both values — not two hashes.
    let text = err.to_string();
    assert!(text.contains("another sweep") && text.contains("the λ grid is 0, 0.25, 0.5, 1, 1.5 in"), "{text}");
    assert!(text.contains("but 0, 0.25, 0.5, 1, 1.5, 2 in"), "{text}");
    // Another split (3 shards) of the same sweep.
    let c1 = shard_file(1, 3, &config(), "c1.jsonl");
    let err = merge_results(&[a0.clone(), c1], false).unwrap_err();
    assert!(err.to_string().contains("split the sweep the same way"), "{err}");
    // A duplicated row (a file edited by hand: a row of shard 0 copied into itself).
    let text = std::fs::read_to_string(&a0).unwrap();
    let row = text.lines().nth(1).unwrap();
    let dup = root.join("dup.jsonl");
    std::fs::write(&dup, format!("{text}{row}\n")).unwrap();
    assert!(matches!(merge_results(&[dup, a1.clone()], false), Err(Error::MalformedResults { .. })));
    // A row of another shard moved into a file.
    let text1 = std::fs::read_to_string(&a1).unwrap();
    let moved = root.join("moved.jsonl");
    std::fs::write(&moved, format!("{text}{}\n", text1.lines().nth(1).unwrap())).unwrap();
    let err = merge_results(&[moved, a1.clone()], false).unwrap_err();
    assert!(err.to_string().contains("row of another shard"), "{err}");
    // Foreign files: not JSON lines, empty, or another format.
    for (name, bytes) in [("junk.jsonl", &b"\x89PNG\r\n"[..]), ("empty.jsonl", b""), ("other.jsonl", b"{\"a\":1}\n")] {
        let p = root.join(name);
        std::fs::write(&p, bytes).unwrap();
        assert!(merge_results(&[p, a1.clone()], false).is_err(), "{name}");
    }
    assert!(matches!(merge_results(&[], false), Err(Error::Merge(_))));
}

#[test]
fn status_reports_progress_across_shards() {
    let (m, t) = (model(), truth());
    let root = dir("status");
    for k in [0usize, 2] {
        let mut c = config();
        c.shard = Some(Shard::new(k, 4).unwrap());
        c.output = Some(SweepOutput::jsonl(root.join(format!("shard{k}.jsonl"))));
        let kill = if k == 2 { 3 } else { usize::MAX };
        let _ = run_sweep(&m, &[&t], &c, &mut KillAfter(kill));
    }
    std::fs::write(root.join("notes.jsonl"), "{\"not\": \"a sweep\"}\n").unwrap();
    let status = sweep_status(&root).unwrap();
    assert_eq!(status.sweeps.len(), 1);
    assert!(status.unreadable.is_empty(), "{:?}", status.unreadable);
    let s = &status.sweeps[0];
    // Shard 0 finished its 8 items; shard 2 was killed as it reported its 4th row (written).
    assert_eq!((s.total, s.done, s.shards), (30, 8 + 4, Some(4)));
    assert_eq!((s.missing(), status.missing()), (18, 18));
    assert_eq!(s.shards_without_file, vec![1, 3]);
    // The killed shard's writer ended with an error: its lock record is gone, it is "stopped".
    assert!(s.files.iter().all(|f| f.writer == WriterState::Idle), "{:?}", s.files);
    let text = s.to_string();
    assert!(text.contains("12/30") && text.contains("not started: shards 1, 3"), "{text}");
    assert!(text.contains("stopped") && !text.contains("Some(") && !text.contains("unsharded"), "{text}");
    assert!(sweep_status(root.join("shard0.jsonl")).is_err());
    // A merged file beside the shards is "merged", and its rows are not counted twice.
    let files = [root.join("shard0.jsonl"), root.join("shard2.jsonl")];
    let merged = merge_results(&files, true).unwrap();
    write_results(root.join("sweep.jsonl"), &merged.header, &merged.rows).unwrap();
    let status = sweep_status(&root).unwrap();
    let s = &status.sweeps[0];
    assert_eq!((s.done, s.missing()), (12, 18));
    assert!(s.to_string().contains("merged"), "{s}");
}

/// A lock record beside a results file tells a running writer from a dead one (on this host) and
/// from one on another host.
#[cfg(target_os = "linux")]
#[test]
fn status_tells_running_shards_from_dead_ones_by_their_lock_record() {
    let (m, t) = (model(), truth());
    let root = dir("locks");
    let path = root.join(results_file_name(Some(Shard::new(0, 2).unwrap())));
    let mut c = config();
    c.shard = Some(Shard::new(0, 2).unwrap());
    c.output = Some(SweepOutput::jsonl(&path));
    // While the sweep runs, its record names this process; it is removed when the sweep stops.
    let mut seen = None;
    let mut observe = |e: &SweepEvent<'_>| {
        if matches!(e, SweepEvent::Row { done: 2, .. }) {
            seen = Some(writer_state(&path));
            return Err(Error::user("stopped"));
        }
        Ok(())
    };
    run_sweep(&m, &[&t], &c, &mut observe).unwrap_err();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_string();
    assert_eq!(seen, Some(WriterState::Running { pid: std::process::id(), host: host.clone() }));
    assert_eq!(writer_state(&path), WriterState::Idle);
    assert!(!lock_record_path(&path).exists());
    // A record left by a killed process (a pid that has exited) is dead; another host's is unknown.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let gone = child.id();
    child.wait().unwrap();
    let record = |pid: u32, host: &str| {
        let r = LockRecord { pid, host: host.into(), process_start: None };
        std::fs::write(lock_record_path(&path), serde_json::to_string(&r).unwrap()).unwrap();
    };
    record(gone, &host);
    assert_eq!(writer_state(&path), WriterState::Dead { pid: gone, host: host.clone() });
    let s = sweep_status(&root).unwrap().sweeps[0].to_string();
    assert!(s.contains(&format!("dead: pid {gone} on {host} is gone; rerun it to resume")), "{s}");
    record(gone, "elsewhere");
    assert!(matches!(writer_state(&path), WriterState::Unknown { .. }));
    // A pid that now belongs to a process started at another time is dead too.
    let me = LockRecord { pid: std::process::id(), host: host.clone(), process_start: Some(1) };
    std::fs::write(lock_record_path(&path), serde_json::to_string(&me).unwrap()).unwrap();
    assert!(matches!(writer_state(&path), WriterState::Dead { .. }));
    // Resuming replaces the record, and removes it when done.
    run_sweep(&m, &[&t], &c, &mut NoSweepObserver).unwrap();
    assert_eq!(writer_state(&path), WriterState::Idle);
}

#[test]
fn seeds_give_one_row_per_prompt_and_seed() {
    let (m, t) = (model(), truth());
    let c = config();
    let r = run_sweep(&m, &[&t], &c, &mut NoSweepObserver).unwrap();
    let seeds: std::collections::HashSet<(String, u64)> = r.rows.iter().map(|r| (r.prompt.clone(), r.seed)).collect();
    assert_eq!(seeds.len(), 6);
    // Pairing keeps the seeds apart: 30 pairs, bootstrap over prompts × seeds.
    let pairs = pair_rows(&r.rows, &r.rows, "true", PairBy::LambdaAndPrompt).unwrap();
    assert_eq!(pairs.original.len(), 30);
    assert!(pairs.labels.iter().any(|l| l.ends_with("seed 7")));
    // The same (id, seed) twice is an error.
    let dup = Prompt::with_seeds(&[Prompt::seeded(1)], &[3, 3]);
    assert!(run_sweep(&m, &[&t], &SweepConfig::new(vec![0.0], dup, 2), &mut NoSweepObserver).is_err());
}

#[test]
fn shards_come_from_arguments_and_the_schedulers_environment() {
    assert_eq!("2/4".parse::<Shard>().unwrap(), Shard::new(2, 4).unwrap());
    for bad in ["4/4", "1", "a/b", "1/0", "-1/4"] {
        assert!(bad.parse::<Shard>().is_err(), "{bad}");
    }
    fn env<'a>(pairs: &'a [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    }
    assert_eq!(Shard::from_env(None, env(&[])).unwrap(), None);
    assert_eq!(Shard::from_env(Some(4), env(&[])).unwrap(), None);
    // Slurm, --array=0-7 with --shards 8: the index of the count given.
    let full = [
        ("SLURM_ARRAY_TASK_ID", "3"),
        ("SLURM_ARRAY_TASK_MIN", "0"),
        ("SLURM_ARRAY_TASK_MAX", "7"),
        ("SLURM_ARRAY_TASK_COUNT", "8"),
        ("SLURM_ARRAY_TASK_STEP", "1"),
    ];
    assert_eq!(Shard::from_env(Some(8), env(&full)).unwrap(), Some(Shard::new(3, 8).unwrap()));
    // Each inconsistency is an error naming its variable; the count never comes from the array.
    // (--shards, the environment, the variable named, the advice given)
    type Case<'a> = (Option<usize>, &'a [(&'a str, &'a str)], &'a str, &'a str);
    let cases: [Case<'_>; 8] = [
        // sbatch --array=3 (a re-run of one index): count 1, min 3 — never shard 0 of 1.
        (
            None,
            &[("SLURM_ARRAY_TASK_ID", "3"), ("SLURM_ARRAY_TASK_MIN", "3"), ("SLURM_ARRAY_TASK_COUNT", "1")],
            "SLURM_ARRAY_TASK_ID",
            "--shards N --shard $SLURM_ARRAY_TASK_ID",
        ),
        (
            Some(8),
            &[("SLURM_ARRAY_TASK_ID", "3"), ("SLURM_ARRAY_TASK_MIN", "3"), ("SLURM_ARRAY_TASK_COUNT", "1")],
            "SLURM_ARRAY_TASK_COUNT",
            "--shards 8 --shard $SLURM_ARRAY_TASK_ID",
        ),
        // sbatch --array=0 re-run alone: count 1 for 8 shards, refused too.
        (Some(8), &[("SLURM_ARRAY_TASK_ID", "0"), ("SLURM_ARRAY_TASK_COUNT", "1")], "SLURM_ARRAY_TASK_COUNT", "0-7"),
        // --array=1-8.
        (
            Some(8),
            &[("SLURM_ARRAY_TASK_ID", "1"), ("SLURM_ARRAY_TASK_MIN", "1"), ("SLURM_ARRAY_TASK_COUNT", "8")],
            "SLURM_ARRAY_TASK_MIN",
            "numbered from 0",
        ),
        // --array=0-6:2 with --shards 4.
        (
            Some(4),
            &[("SLURM_ARRAY_TASK_ID", "2"), ("SLURM_ARRAY_TASK_STEP", "2"), ("SLURM_ARRAY_TASK_COUNT", "4")],
            "SLURM_ARRAY_TASK_STEP",
            "stepped",
        ),
        (Some(4), &[("SLURM_ARRAY_TASK_ID", "4")], "SLURM_ARRAY_TASK_ID", "does not exist"),
        (Some(4), &[("SLURM_ARRAY_TASK_ID", "x")], "SLURM_ARRAY_TASK_ID", "not a non-negative integer"),
        (Some(6), &[("JOB_COMPLETION_INDEX", "6")], "JOB_COMPLETION_INDEX", "completions"),
    ];
    for (shards, vars, variable, advice) in cases {
        let err = Shard::from_env(shards, env(vars)).unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(&err, Error::ShardEnvironment { variable: v, .. } if v == variable) && text.contains(advice),
            "{vars:?} with --shards {shards:?}: {text}"
        );
    }
    // Kubernetes Indexed Job: the index, and the count from --shards.
    let k8s = env(&[("JOB_COMPLETION_INDEX", "5")]);
    assert_eq!(Shard::from_env(Some(6), k8s).unwrap(), Some(Shard::new(5, 6).unwrap()));
    let err = Shard::from_env(None, env(&[("JOB_COMPLETION_INDEX", "5")])).unwrap_err();
    assert!(err.to_string().contains("--shards N"), "{err}");
    assert!(Shard::from_env(Some(6), env(&[("JOB_COMPLETION_INDEX", "x")])).is_err());
}

#[test]
fn a_shard_resumes_only_as_itself() {
    let (m, t) = (model(), truth());
    let root = dir("resume");
    let path = root.join("s.jsonl");
    let mut c = config();
    c.shard = Some(Shard::new(0, 2).unwrap());
    c.output = Some(SweepOutput::jsonl(&path));
    run_sweep(&m, &[&t], &c, &mut KillAfter(2)).unwrap_err();
    let mut other = c.clone();
    other.shard = Some(Shard::new(1, 2).unwrap());
    let err = run_sweep(&m, &[&t], &other, &mut NoSweepObserver).unwrap_err();
    assert!(matches!(err, Error::ResumeMismatch { ref field, .. } if field == "shard"), "{err:?}");
    let mut grid = c.clone();
    grid.lambdas.push(3.0);
    let err = run_sweep(&m, &[&t], &grid, &mut NoSweepObserver).unwrap_err();
    assert!(
        matches!(&err, Error::ResumeMismatch { field, in_file, in_config, .. }
            if field == "the λ grid" && in_file == "0, 0.25, 0.5, 1, 1.5" && in_config == "0, 0.25, 0.5, 1, 1.5, 3"),
        "{err:?}"
    );
    let mut seeds = c.clone();
    seeds.prompts = Prompt::with_seeds(&[Prompt::seeded(10), Prompt::seeded(20), Prompt::seeded(30)], &[0, 8]);
    let err = run_sweep(&m, &[&t], &seeds, &mut NoSweepObserver).unwrap_err().to_string();
    assert!(err.contains("prompt entry #2") && err.contains("seed 7") && err.contains("seed 8"), "{err}");
}

#[test]
fn prompt_batched_rows_equal_one_prompt_per_batch() {
    let (m, t) = (model(), truth());
    let one = run_sweep(&m, &[&t], &config(), &mut NoSweepObserver).unwrap();
    for (per, max) in [(2usize, 0usize), (6, 0), (4, 3), (3, 7)] {
        let mut c = config();
        c.prompts_per_batch = per;
        c.max_lambdas_per_batch = max;
        // Count the model calls: fewer, larger batches.
        let batched = run_sweep(&m, &[&t], &c, &mut NoSweepObserver).unwrap();
        assert_eq!(batched.rows, one.rows, "{per} prompts per batch, at most {max} groups");
    }
}
