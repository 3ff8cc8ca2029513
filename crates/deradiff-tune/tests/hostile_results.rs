//! Results files and folders that a sweep did not write as they are: FIFOs, devices, folders and
//! link loops where a results file should be (never opened for a blocking read), files too large,
//! shard files that are unreadable, foreign or renamed (named by `status`, not counted as "not
//! started"), NaN that would be written as `null`, and sweeps whose products of counts or
//! batches are too large (refused before the results file is touched). A property test: merging
//! any permutation of the shard files of a sweep (their rows in any order) gives the unsharded
//! file, byte for byte.

use std::path::{Path, PathBuf};

use deradiff_analytic::{demo_linear_reward, demo_mixture};
use deradiff_tune::*;
use proptest::prelude::*;

fn dir(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("deradiff-hostile-results").join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn mkfifo(path: &Path) -> bool {
    std::process::Command::new("mkfifo").arg(path).status().is_ok_and(|s| s.success())
}

/// A sweep spec of `prompts` prompt entries (each with a seed) and `lambdas` λ, its header (of
/// `shard`) and the row of every item, computed from the item alone.
struct Synthetic {
    spec: SweepSpec,
    header: SweepHeader,
    rows: Vec<SweepRow>,
}

fn synthetic(prompts: usize, lambdas: usize, seeds: u64) -> Synthetic {
    let base: Vec<Prompt> = (0..prompts).map(|i| Prompt::text(format!("p{i}"), format!("prompt {i}"), 0)).collect();
    let entries = Prompt::with_seeds(&base, &(0..seeds).collect::<Vec<_>>());
    let spec = SweepSpec { lambdas: (0..lambdas).map(|l| l as f64 * 0.25 - 0.5).collect(), prompts: entries };
    let rewards = vec!["r".to_string(), "s".to_string()];
    let header = SweepHeader {
        format: RESULTS_FORMAT.into(),
        version: RESULTS_VERSION,
        model: "synthetic".into(),
        samples_per_prompt: 3,
        rewards: rewards.clone(),
        prompts: Some(prompts_hash(&spec.prompts)),
        spec_hash: Some(spec_hash("synthetic", 3, &rewards, &spec)),
        spec: Some(spec.clone()),
        shard: None,
    };
    let rows = spec
        .items()
        .map(|it| {
            let p = &spec.prompts[it.prompt];
            let v = (it.index as f64).sin();
            SweepRow {
                lambda: spec.lambdas[it.lambda],
                prompt_index: it.prompt,
                prompt: p.id.clone(),
                seed: p.seed,
                samples: 3,
                rewards: vec![
                    RewardSummary { name: "r".into(), mean: v, std: v.abs(), scores: None },
                    RewardSummary { name: "s".into(), mean: -v * 1e3, std: 0.5, scores: None },
                ],
                saturation: None,
                images: Vec::new(),
            }
        })
        .collect();
    Synthetic { spec, header, rows }
}

fn small_sweep(out: &Path, shard: Option<Shard>) {
    let mut setup = AnalyticSetup::new(demo_mixture(1).unwrap(), demo_linear_reward(), 1.0);
    setup.steps = 2;
    let model = AnalyticModel::new(setup).unwrap();
    let reward = AnalyticReward::new("proxy", demo_linear_reward());
    let mut config = SweepConfig::new(vec![0.0, 1.0], Prompt::seeds([0, 1]), 4);
    config.shard = shard;
    config.output = Some(SweepOutput::jsonl(out.join(results_file_name(shard))));
    run_sweep(&model, &[&reward], &config, &mut NoSweepObserver).unwrap();
}

#[test]
fn what_is_not_a_regular_results_file_is_refused_without_blocking() {
    let d = dir("kinds");
    let err = read_results(&d).unwrap_err().to_string();
    assert!(err.contains("is a folder, not a regular file"), "{err}");
    let err = read_results("/dev/zero").unwrap_err().to_string();
    assert!(err.contains("character device"), "{err}");
    let fifo = d.join("fifo.jsonl");
    if mkfifo(&fifo) {
        // No writer: a blocking open would hang here.
        let err = read_results(&fifo).unwrap_err().to_string();
        assert!(err.contains("FIFO"), "{err}");
        let err = merge_results(std::slice::from_ref(&fifo), false).unwrap_err().to_string();
        assert!(err.contains("FIFO"), "{err}");
    }
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(d.join("b.jsonl"), d.join("a.jsonl")).unwrap();
        std::os::unix::fs::symlink(d.join("a.jsonl"), d.join("b.jsonl")).unwrap();
        let err = read_results(d.join("a.jsonl")).unwrap_err().to_string();
        assert!(err.contains("symbolic link loop"), "{err}");
    }
    // Larger than MAX_RESULTS_FILE_BYTES (sparse: nothing is written or read).
    let big = d.join("big.jsonl");
    std::fs::File::create(&big).unwrap().set_len(MAX_RESULTS_FILE_BYTES + 1).unwrap();
    let err = read_results(&big).unwrap_err().to_string();
    assert!(err.contains("larger than 4 GiB") && err.contains("MAX_RESULTS_FILE_BYTES"), "{err}");
    std::fs::remove_file(&big).unwrap();
}

#[test]
fn status_names_the_shard_files_it_cannot_read() {
    let d = dir("status");
    for k in [0, 2] {
        small_sweep(&d, Some(Shard::new(k, 5).unwrap()));
    }
    let name = |k: usize| results_file_name(Some(Shard::new(k, 5).unwrap()));
    // Shard 1: a FIFO; shard 3: another file's bytes; shard 4: shard 0's file, renamed.
    let fifo = mkfifo(&d.join(name(1)));
    std::fs::write(d.join(name(3)), "{\"some\": \"other format\"}\n").unwrap();
    std::fs::copy(d.join(name(0)), d.join(name(4))).unwrap();
    // A folder named as a whole sweep's file, and a results file of another name (counted).
    std::fs::create_dir(d.join("sweep.jsonl")).unwrap();
    std::fs::write(d.join("prompts.jsonl"), "\"a cat\"\n").unwrap();
    let status = sweep_status(&d).unwrap();
    let why = |n: &str| status.unreadable.iter().find(|(p, _)| p.ends_with(n)).map(|(_, w)| w.clone());
    if fifo {
        assert!(why(&name(1)).is_some_and(|w| w.contains("FIFO")), "{:?}", status.unreadable);
    }
    assert!(why(&name(3)).is_some_and(|w| w.contains("header")), "{:?}", status.unreadable);
    assert!(why(&name(4)).is_some_and(|w| w.contains("its name says shard 4/5")), "{:?}", status.unreadable);
    assert!(why("sweep.jsonl").is_some_and(|w| w.contains("folder")), "{:?}", status.unreadable);
    assert_eq!(status.unreadable.len(), if fifo { 4 } else { 3 });
    assert_eq!(status.sweeps.len(), 1);
    let s = &status.sweeps[0];
    // Shards 0 and 2 are read; 1, 3 and 4 are listed as unreadable, not as "not started".
    assert_eq!(s.files.len(), 2);
    assert!(s.shards_without_file.is_empty(), "{:?}", s.shards_without_file);
    // An empty shard file (a shard that has just started) is named too.
    let e = dir("status-empty");
    std::fs::write(e.join(name(0)), "").unwrap();
    let status = sweep_status(&e).unwrap();
    assert!(status.unreadable[0].1.contains("empty"), "{:?}", status.unreadable);
}

#[test]
fn merge_refuses_headers_edited_under_their_spec_hash() {
    let d = dir("edited");
    let s = synthetic(2, 2, 1);
    let write = |k: usize, edit: &dyn Fn(&mut SweepHeader)| {
        let shard = Shard::new(k, 2).unwrap();
        let mut header = s.header.clone();
        header.shard = Some(shard);
        edit(&mut header);
        let rows: Vec<SweepRow> =
            s.rows.iter().enumerate().filter(|(i, _)| shard.owns(*i)).map(|(_, r)| r.clone()).collect();
        let path = d.join(results_file_name(Some(shard)));
        write_results(&path, &header, &rows).unwrap();
        path
    };
    let a = write(0, &|_| {});
    #[allow(clippy::type_complexity)]
    // Each named, with both values, and the edit suspected.
    let edits: [(&str, &dyn Fn(&mut SweepHeader)); 4] = [
        ("samples per prompt is 3 in", &|h| h.samples_per_prompt = 4),
        ("but another in", &|h| h.model = "another".into()),
        ("the prompt set's hash", &|h| h.prompts = Some("0".into())),
        ("the λ grid is", &|h| h.spec.as_mut().unwrap().lambdas[1] = 9.0),
    ];
    for (what, edit) in edits {
        let b = write(1, edit);
        let err = merge_results(&[a.clone(), b], false).unwrap_err().to_string();
        assert!(err.contains("was one edited?") && err.contains(what), "{what}: {err}");
    }
    let b = write(1, &|_| {});
    assert_eq!(merge_results(&[b, a], false).unwrap().rows, s.rows);
}

#[test]
fn results_file_names_round_trip() {
    for s in [None, Some(Shard::new(0, 1).unwrap()), Some(Shard::new(7, 12).unwrap())] {
        assert_eq!(shard_of_file_name(&results_file_name(s)), Some(s));
    }
    assert_eq!(shard_of_file_name("sweep.shard-3-of-4.jsonl"), Some(Some(Shard::new(3, 4).unwrap())));
    for other in
        ["sweep.csv", "sweep.shard-4-of-4.jsonl", "sweep.shard--1-of-4.jsonl", "sweep.shard-a-of-4.jsonl", "x.jsonl"]
    {
        assert_eq!(shard_of_file_name(other), None, "{other}");
    }
}

#[test]
fn nan_and_infinity_are_never_written() {
    let d = dir("nan");
    let s = synthetic(1, 2, 1);
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let mut rows = s.rows.clone();
        rows[1].rewards[0].mean = bad;
        let err = write_results(d.join("r.jsonl"), &s.header, &rows).unwrap_err();
        assert!(matches!(err, Error::NonFiniteReward { .. }), "{err:?}");
        assert_empty(&d, "a JSON lines file with a non-finite mean");
        let err = write_results_csv(d.join("r.csv"), &s.header.rewards, &rows).unwrap_err();
        assert!(err.to_string().contains("must be finite"), "{err}");
        assert_empty(&d, "a CSV file with a non-finite mean");
        rows[1].rewards[0].mean = 0.0;
        rows[0].rewards[1].std = bad;
        let err = write_results_csv(d.join("r.csv"), &s.header.rewards, &rows).unwrap_err();
        assert!(err.to_string().contains("must be finite"), "{err}");
        assert_empty(&d, "a CSV file with a non-finite std");
    }
}

/// Panics naming `case` unless the folder `d` holds no file or folder at all (no output, no
/// temporary file, no lock left behind).
fn assert_empty(d: &std::path::Path, case: &str) {
    let left: Vec<_> = std::fs::read_dir(d).unwrap().flatten().map(|e| e.path()).collect();
    assert!(left.is_empty(), "{case}: left {left:?}");
}

#[test]
fn products_of_counts_and_batches_are_bounded_before_anything_runs() {
    assert!(check_sweep_size(10, 1000, 256).is_ok());
    let err = check_sweep_size(MAX_LAMBDAS, 1000, 1).unwrap_err().to_string();
    assert!(err.contains("MAX_WORK_ITEMS") && err.contains("seeds"), "{err}");
    assert!(check_sweep_size(usize::MAX, 3, 1).is_err());
    let err = check_sweep_size(1000, 1000, 1_000_000).unwrap_err().to_string();
    assert!(err.contains("MAX_SWEEP_SAMPLES"), "{err}");
    // In a config: validated before the results file is opened.
    let d = dir("bounds");
    let prompts = Prompt::seeds(0..100_000);
    let mut config = SweepConfig::new((0..200).map(|l| l as f64).collect(), prompts, 1);
    config.output = Some(SweepOutput::jsonl(d.join("sweep.jsonl")));
    let mut setup = AnalyticSetup::new(demo_mixture(1).unwrap(), demo_linear_reward(), 1.0);
    setup.steps = 2;
    let model = AnalyticModel::new(setup).unwrap();
    let reward = AnalyticReward::new("proxy", demo_linear_reward());
    let err = run_sweep(&model, &[&reward], &config, &mut NoSweepObserver).unwrap_err().to_string();
    assert!(err.contains("MAX_WORK_ITEMS"), "{err}");
    assert_empty(&d, "a sweep of too many work items");
    // A batch too large: refused before the file exists, naming the knobs to turn.
    let lambdas: Vec<f64> = (0..300).map(|l| l as f64 / 100.0).collect();
    let mut config = SweepConfig::new(lambdas, Prompt::seeds([0, 1]), MAX_SAMPLES_PER_PROMPT);
    config.output = Some(SweepOutput::jsonl(d.join("sweep.jsonl")));
    config.prompts_per_batch = 2;
    assert_eq!(config.largest_batch(), 600);
    let err = run_sweep(&model, &[&reward], &config, &mut NoSweepObserver).unwrap_err().to_string();
    assert!(err.contains("MAX_BATCH_ELEMENTS") && err.contains("max_lambdas_per_batch"), "{err}");
    assert!(!err.contains("--max-batch"), "{err}");
    assert_empty(&d, "a sweep whose largest batch is too large");
    config.max_lambdas_per_batch = 1;
    assert_eq!(config.largest_batch(), 1);
    assert!(config.check_batch(&[MAX_SAMPLES_PER_PROMPT, 2]).is_ok());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// The shard files of any split of a sweep, given to merge in any order and each holding its
    /// rows in any order, merge into the unsharded file, byte for byte.
    #[test]
    fn merging_any_permutation_of_shards_gives_the_unsharded_file(
        prompts in 1usize..5,
        lambdas in 1usize..5,
        seeds in 1u64..3,
        shards in 1usize..7,
        order in any::<u64>(),
    ) {
        let s = synthetic(prompts, lambdas, seeds);
        let total = s.spec.len();
        let d = dir(&format!("perm-{prompts}-{lambdas}-{seeds}-{shards}-{order}"));
        let whole = d.join("whole.jsonl");
        write_results(&whole, &s.header, &s.rows).unwrap();
        // A permutation from `order` (a seeded Fisher–Yates), for the files and for the rows.
        let mut state = order | 1;
        let mut next = move |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let mut files = Vec::new();
        for k in 0..shards {
            let shard = Shard::new(k, shards).unwrap();
            let mut header = s.header.clone();
            header.shard = Some(shard);
            let mut rows: Vec<SweepRow> =
                s.rows.iter().enumerate().filter(|(i, _)| shard.owns(*i)).map(|(_, r)| r.clone()).collect();
            for i in (1..rows.len()).rev() {
                rows.swap(i, next(i + 1));
            }
            let path = d.join(results_file_name(Some(shard)));
            write_results(&path, &header, &rows).unwrap();
            files.push(path);
        }
        for i in (1..files.len()).rev() {
            files.swap(i, next(i + 1));
        }
        let merged = merge_results(&files, false).unwrap();
        prop_assert_eq!(merged.rows.len(), total);
        prop_assert!(merged.missing.is_empty());
        let out = d.join("merged.jsonl");
        write_results(&out, &merged.header, &merged.rows).unwrap();
        prop_assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&whole).unwrap());
        // Without one shard (when there are several): an error listing what is missing.
        if shards > 1 && total >= shards {
            let partial = merge_results(&files[1..], false);
            prop_assert!(matches!(partial, Err(Error::MissingItems { .. })), "{:?}", partial);
        }
        std::fs::remove_dir_all(&d).unwrap();
    }
}
