//! Batched sweeps: one model call per step for all λ, rows identical to unbatched runs,
//! streaming, resuming after an interruption, results files.

use std::cell::RefCell;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use deradiff_analytic::{demo_linear_reward, demo_mixture, ExactDenoiser, GaussianMixture};
use deradiff_core::{Denoiser, NoObserver, Realigner, Sampler, Scheduler, SchedulerConfig, SchedulerKind, SeededNoise};
use deradiff_rewards::Reward;
use deradiff_tune::*;

fn mixture() -> GaussianMixture {
    GaussianMixture::new(vec![0.6, 0.4], vec![vec![-0.6, 0.0], vec![0.8, 0.4]], vec![vec![0.5, 0.4], vec![0.4, 0.6]])
        .unwrap()
}

fn model(kind: SchedulerKind, steps: usize) -> AnalyticModel {
    model_with(kind, SchedulerConfig::default(), steps)
}

fn model_with(kind: SchedulerKind, options: SchedulerConfig, steps: usize) -> AnalyticModel {
    let mut setup = AnalyticSetup::new(mixture(), demo_linear_reward(), 1.0);
    setup.scheduler = kind;
    setup.scheduler_options = options;
    setup.steps = steps;
    AnalyticModel::new(setup).unwrap()
}

fn tmp(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("deradiff-tune-sweep");
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    let _ = std::fs::remove_file(&p);
    p
}

#[test]
fn batched_groups_equal_unbatched_runs_bit_for_bit() {
    let lambdas = [0.0, 0.3, 1.0, 1.4];
    let sde = SchedulerConfig {
        algorithm_type: Some("sde-dpmsolver++".into()),
        use_karras_sigmas: Some(true),
        ..Default::default()
    };
    let order3 = SchedulerConfig { solver_order: Some(3), ..Default::default() };
    let kinds = [
        (SchedulerKind::Ddpm, SchedulerConfig::default()),
        (SchedulerKind::Ddim { eta: 0.5 }, SchedulerConfig::default()),
        (SchedulerKind::EulerAncestral, SchedulerConfig::default()),
        (SchedulerKind::Euler, SchedulerConfig::default()),
        (SchedulerKind::Heun, SchedulerConfig::default()),
        (SchedulerKind::DpmSolverMultistep, SchedulerConfig::default()),
        (SchedulerKind::DpmSolverMultistep, sde),
        (SchedulerKind::UniPc, order3),
        (SchedulerKind::Lcm, SchedulerConfig::default()),
    ];
    for (kind, options) in kinds {
        let m = model_with(kind, options, 8);
        let realigners: Vec<Realigner> = lambdas.iter().map(|&l| Realigner::two_model(l).unwrap()).collect();
        let sampler = BatchedSampler::new(m.scheduler(), vec![m.reference(), m.anchor()]).unwrap();
        let batched = sampler
            .run(&realigners, &[16, 2], DType::F64, &Device::Cpu, &mut SeededNoise::new(5), &mut |_| Ok(()))
            .unwrap();
        for (g, &l) in lambdas.iter().enumerate() {
            let single = Sampler::new(
                m.scheduler(),
                vec![m.reference() as &dyn Denoiser, m.anchor()],
                Realigner::two_model(l).unwrap(),
            )
            .unwrap()
            .run(&[16, 2], DType::F64, &Device::Cpu, &mut SeededNoise::new(5), &mut NoObserver)
            .unwrap();
            assert_eq!(
                batched[g].to_vec2::<f64>().unwrap(),
                single.latent.to_vec2::<f64>().unwrap(),
                "{kind:?}, λ = {l}: the batched group differs from the unbatched run"
            );
        }
    }
}

/// Wraps a denoiser and records the batch size of every call.
struct Counting<'a> {
    inner: &'a ExactDenoiser,
    calls: &'a RefCell<Vec<usize>>,
}

impl Denoiser for Counting<'_> {
    fn predict(&self, x: &Tensor, t: f64) -> deradiff_core::Result<Tensor> {
        self.calls.borrow_mut().push(x.dims()[0]);
        self.inner.predict(x, t)
    }
}

/// The analytic model with counting denoisers.
struct CountingModel {
    inner: AnalyticModel,
    reference_calls: RefCell<Vec<usize>>,
    anchor_calls: RefCell<Vec<usize>>,
}

impl SweepModel for CountingModel {
    fn scheduler(&self) -> &dyn Scheduler {
        self.inner.scheduler()
    }
    fn denoisers(&self, _prompt: &Prompt) -> Result<Vec<Box<dyn Denoiser + '_>>> {
        Ok(vec![
            Box::new(Counting { inner: self.inner.reference(), calls: &self.reference_calls }),
            Box::new(Counting { inner: self.inner.anchor(), calls: &self.anchor_calls }),
        ])
    }
    fn latent_shape(&self, samples: usize) -> Result<Vec<usize>> {
        self.inner.latent_shape(samples)
    }
    fn dtype(&self) -> DType {
        self.inner.dtype()
    }
    fn device(&self) -> Device {
        self.inner.device()
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

#[test]
fn a_sweep_of_8_lambdas_runs_each_model_once_per_step() {
    let steps = 6;
    let counting = CountingModel {
        inner: model(SchedulerKind::Ddpm, steps),
        reference_calls: RefCell::new(Vec::new()),
        anchor_calls: RefCell::new(Vec::new()),
    };
    let reward = AnalyticReward::new("proxy", demo_linear_reward());
    let lambdas = linspace(0.0, 1.4, 8).unwrap();
    let config = SweepConfig::new(lambdas.clone(), Prompt::seeds([3]), 10);
    let result = run_sweep(&counting, &[&reward], &config, &mut NoSweepObserver).unwrap();
    assert_eq!(result.rows.len(), 8);
    // One call per model per step, each on the whole stacked batch of 8 λ × 10 samples.
    assert_eq!(*counting.reference_calls.borrow(), vec![80; steps]);
    assert_eq!(*counting.anchor_calls.borrow(), vec![80; steps]);

    // Two prompts: once per step per prompt; a cap of 3 λ per batch: ⌈8/3⌉ = 3 batches.
    counting.reference_calls.borrow_mut().clear();
    let mut config = SweepConfig::new(lambdas, Prompt::seeds([3, 4]), 10);
    config.max_lambdas_per_batch = 3;
    let capped = run_sweep(&counting, &[&reward], &config, &mut NoSweepObserver).unwrap();
    let calls = counting.reference_calls.borrow().clone();
    assert_eq!(calls.len(), 2 * 3 * steps);
    assert_eq!(calls.iter().sum::<usize>(), 2 * 8 * 10 * steps);
    // Batching does not change the rows.
    for r in &result.rows {
        assert_eq!(capped.row(r.lambda, "seed-3").unwrap(), r);
    }
}

#[test]
fn rows_stream_as_batches_finish_and_summaries_are_right() {
    let m = model(SchedulerKind::Ddpm, 5);
    let proxy = AnalyticReward::new("proxy", demo_linear_reward());
    let truth =
        TrueReward::new("true", demo_linear_reward(), ManifoldPenalty::Quadratic { center: vec![0.0, 0.0] }, 1.0)
            .unwrap();
    let mut config = SweepConfig::new(vec![0.0, 0.5, 1.0], Prompt::seeds([1, 2]), 12);
    config.keep_scores = true;
    let mut events = Vec::new();
    let mut steps_seen = 0;
    let result = run_sweep(&m, &[&proxy, &truth], &config, &mut |e: &SweepEvent<'_>| {
        match e {
            SweepEvent::Step { .. } => steps_seen += 1,
            SweepEvent::Row { row, done, total } => events.push((row.lambda, row.prompt.clone(), *done, *total)),
        }
        Ok(())
    })
    .unwrap();
    assert_eq!(steps_seen, 2 * 5);
    assert_eq!(events.len(), 6);
    assert_eq!(events[0], (0.0, "seed-1".to_string(), 1, 6));
    assert_eq!(events[5], (1.0, "seed-2".to_string(), 6, 6));
    let row = result.row(0.5, "seed-2").unwrap();
    let scores = row.reward("proxy").unwrap().scores.clone().unwrap();
    assert_eq!(scores.len(), 12);
    let mean = scores.iter().sum::<f64>() / 12.0;
    assert!((row.reward("proxy").unwrap().mean - mean).abs() < 1e-12);
    let summary = result.summaries("true").unwrap();
    assert_eq!(summary.iter().map(|s| s.lambda).collect::<Vec<_>>(), vec![0.0, 0.5, 1.0]);
    let a = result.row(1.0, "seed-1").unwrap().reward("true").unwrap().mean;
    let b = result.row(1.0, "seed-2").unwrap().reward("true").unwrap().mean;
    assert!((summary[2].mean - 0.5 * (a + b)).abs() < 1e-12);
    assert!((summary[2].sem - (a - b).abs() / 2.0).abs() < 1e-12, "SEM of two prompts is |a − b|/2");
    assert!(result.summaries("missing").is_err());
}

#[test]
fn an_interrupted_sweep_resumes_with_no_duplicated_or_lost_rows() {
    let m = model(SchedulerKind::Ddpm, 4);
    let proxy = AnalyticReward::new("proxy", demo_linear_reward());
    let lambdas = vec![0.0, 0.25, 0.5, 0.75, 1.0];
    let prompts = Prompt::seeds([10, 11, 12]);
    let full_json = tmp("full.jsonl");
    let full_csv = tmp("full.csv");
    let mut config = SweepConfig::new(lambdas.clone(), prompts.clone(), 8);
    config.output = Some(SweepOutput::jsonl(&full_json).with_csv(&full_csv));
    let full = run_sweep(&m, &[&proxy], &config, &mut NoSweepObserver).unwrap();
    assert_eq!((full.computed, full.resumed), (15, 0));

    for (kill_after, cap) in [(7usize, 0usize), (1, 2), (14, 0), (9, 1)] {
        let part_json = tmp(&format!("part-{kill_after}-{cap}.jsonl"));
        let part_csv = tmp(&format!("part-{kill_after}-{cap}.csv"));
        let mut config = SweepConfig::new(lambdas.clone(), prompts.clone(), 8);
        config.max_lambdas_per_batch = cap;
        config.output = Some(SweepOutput::jsonl(&part_json).with_csv(&part_csv));
        // "Kill" the sweep: the observer errors after `kill_after` rows.
        let mut rows = 0;
        let err = run_sweep(&m, &[&proxy], &config, &mut |e: &SweepEvent<'_>| {
            if let SweepEvent::Row { .. } = e {
                rows += 1;
                if rows == kill_after {
                    return Err(Error::user("killed"));
                }
            }
            Ok(())
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "killed");
        assert_eq!(read_results(&part_json).unwrap().rows.len(), kill_after);
        // A crash in the middle of the next write leaves half a line behind.
        {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().append(true).open(&part_json).unwrap();
            f.write_all(b"{\"lambda\":0.5,\"prompt_index\":1,\"pro").unwrap();
        }
        let read = read_results(&part_json).unwrap();
        assert!(read.truncated_tail);
        let resumed = run_sweep(&m, &[&proxy], &config, &mut NoSweepObserver).unwrap();
        assert_eq!((resumed.resumed, resumed.computed), (kill_after, 15 - kill_after));
        if cap == 0 {
            // Same batches as the uninterrupted run: byte-identical files.
            assert_eq!(
                std::fs::read(&part_json).unwrap(),
                std::fs::read(&full_json).unwrap(),
                "kill after {kill_after}"
            );
            assert_eq!(std::fs::read(&part_csv).unwrap(), std::fs::read(&full_csv).unwrap());
        }
        // Whatever the batching, the same rows (same values: each λ's noise is its prompt's).
        let mut got = read_results(&part_json).unwrap().rows;
        let mut want = full.rows.clone();
        let key = |r: &SweepRow| (r.prompt.clone(), r.lambda.to_bits());
        got.sort_by_key(key);
        want.sort_by_key(key);
        assert_eq!(got, want, "kill after {kill_after}, cap {cap}");
        // Running it again computes nothing.
        let again = run_sweep(&m, &[&proxy], &config, &mut NoSweepObserver).unwrap();
        assert_eq!((again.resumed, again.computed), (15, 0));
        assert_eq!(read_results(&part_json).unwrap().rows.len(), 15);
    }

    // Extending the grid of a finished sweep computes only the new λ.
    let mut config = SweepConfig::new(vec![0.0, 0.25, 0.5, 0.75, 1.0, 1.25], prompts, 8);
    config.output = Some(SweepOutput::jsonl(&full_json).with_csv(&full_csv));
    let extended = run_sweep(&m, &[&proxy], &config, &mut NoSweepObserver).unwrap();
    assert_eq!((extended.resumed, extended.computed), (15, 3));
    let csv = std::fs::read_to_string(&full_csv).unwrap();
    assert_eq!(csv.lines().count(), 1 + 18);
    assert!(csv.starts_with("lambda,prompt_index,prompt,seed,samples,proxy_mean,proxy_std\n"));
}

#[test]
fn results_files_are_checked() {
    let m = model(SchedulerKind::Ddpm, 2);
    let proxy = AnalyticReward::new("proxy", demo_linear_reward());
    let path = tmp("checked.jsonl");
    let mut config = SweepConfig::new(vec![0.0, 1.0], Prompt::seeds([0]), 4);
    config.output = Some(SweepOutput::jsonl(&path));
    run_sweep(&m, &[&proxy], &config, &mut NoSweepObserver).unwrap();
    let good = std::fs::read_to_string(&path).unwrap();

    // A line in the middle that is not a row.
    let mut lines: Vec<&str> = good.lines().collect();
    lines.insert(2, "{\"lambda\": \"oops\"}");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    match run_sweep(&m, &[&proxy], &config, &mut NoSweepObserver) {
        Err(Error::MalformedResults { line, .. }) => assert_eq!(line, 3),
        other => panic!("expected MalformedResults, got {other:?}"),
    }
    assert!(matches!(read_results(&path), Err(Error::MalformedResults { line: 3, .. })));

    // A duplicated row.
    let lines: Vec<&str> = good.lines().collect();
    std::fs::write(&path, format!("{}\n{}\n", good.trim_end(), lines[1])).unwrap();
    let err = read_results(&path).unwrap_err();
    assert!(err.to_string().contains("a second row for λ = 0"), "{err}");

    // Not a results file at all.
    std::fs::write(&path, "lambda,prompt\n0,1\n").unwrap();
    let err = run_sweep(&m, &[&proxy], &config, &mut NoSweepObserver).unwrap_err();
    assert!(err.to_string().contains("line 1") && err.to_string().contains("header"), "{err}");

    // Another sweep's file.
    std::fs::write(&path, &good).unwrap();
    let mut other = SweepConfig::new(vec![0.0, 1.0], Prompt::seeds([0]), 5);
    other.output = config.output.clone();
    match run_sweep(&m, &[&proxy], &other, &mut NoSweepObserver) {
        Err(Error::ResumeMismatch { field, in_file, in_config, .. }) => {
            assert_eq!((field.as_str(), in_file.as_str(), in_config.as_str()), ("samples per prompt", "4", "5"))
        }
        other => panic!("expected ResumeMismatch, got {other:?}"),
    }
    let renamed = AnalyticReward::new("proxy2", demo_linear_reward());
    assert!(matches!(run_sweep(&m, &[&renamed], &config, &mut NoSweepObserver), Err(Error::ResumeMismatch { .. })));

    // Fail / Overwrite.
    let mut fail = config.clone();
    fail.output.as_mut().unwrap().if_exists = IfExists::Fail;
    assert!(matches!(run_sweep(&m, &[&proxy], &fail, &mut NoSweepObserver), Err(Error::OutputExists(_))));
    let mut over = other.clone();
    over.output.as_mut().unwrap().if_exists = IfExists::Overwrite;
    let r = run_sweep(&m, &[&proxy], &over, &mut NoSweepObserver).unwrap();
    assert_eq!((r.resumed, r.computed), (0, 2));
    assert_eq!(read_results(&path).unwrap().header.samples_per_prompt, 5);

    // A file holding only half a header line is a fresh start.
    std::fs::write(&path, "{\"format\":\"deradiff-sw").unwrap();
    let r = run_sweep(&m, &[&proxy], &config, &mut NoSweepObserver).unwrap();
    assert_eq!((r.resumed, r.computed), (0, 2));
    // A last row without its newline but complete is kept.
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.trim_end()).unwrap();
    let r = run_sweep(&m, &[&proxy], &config, &mut NoSweepObserver).unwrap();
    assert_eq!((r.resumed, r.computed), (2, 0));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    assert!(matches!(read_results(tmp("does-not-exist.jsonl")), Err(Error::Io { .. })));
}

/// A reward that is NaN for samples with x₁ > 0.
struct Flaky;

impl Reward for Flaky {
    fn name(&self) -> String {
        "flaky".into()
    }
    fn score(&self, samples: &Tensor, _: Option<&[&str]>) -> deradiff_rewards::Result<Vec<f64>> {
        Ok(samples.to_vec2::<f64>()?.iter().map(|r| if r[0] > 0.0 { f64::NAN } else { r[0] }).collect())
    }
}

#[test]
fn bad_sweep_inputs_give_clear_errors() {
    let m = model(SchedulerKind::Ddpm, 2);
    let proxy = AnalyticReward::new("proxy", demo_linear_reward());
    let run = |lambdas: Vec<f64>, prompts: Vec<Prompt>, samples: usize| {
        run_sweep(&m, &[&proxy], &SweepConfig::new(lambdas, prompts, samples), &mut NoSweepObserver)
    };
    assert!(matches!(run(vec![], Prompt::seeds([0]), 4), Err(Error::EmptyGrid)));
    assert!(run(vec![], Prompt::seeds([0]), 4).unwrap_err().to_string().contains("λ grid is empty"));
    let e = run(vec![0.0, f64::NAN], Prompt::seeds([0]), 4).unwrap_err();
    assert!(matches!(e, Error::InvalidLambda(_)) && e.to_string().contains("NaN"), "{e}");
    let e = run(vec![0.5, 0.5], Prompt::seeds([0]), 4).unwrap_err();
    assert!(e.to_string().contains("appears twice"), "{e}");
    assert!(run(vec![0.5], vec![], 4).unwrap_err().to_string().contains("prompt set is empty"));
    assert!(run(vec![0.5], Prompt::seeds([1, 1]), 4).unwrap_err().to_string().contains("appears twice"));
    assert!(run(vec![0.5], Prompt::seeds([1]), 0).unwrap_err().to_string().contains("at least 1"));
    let e = run_sweep(&m, &[], &SweepConfig::new(vec![0.5], Prompt::seeds([1]), 4), &mut NoSweepObserver);
    assert!(e.unwrap_err().to_string().contains("no rewards"));
    let e = run_sweep(&m, &[&proxy, &proxy], &SweepConfig::new(vec![0.5], Prompt::seeds([1]), 4), &mut NoSweepObserver);
    assert!(e.unwrap_err().to_string().contains("unique"));

    // NaN rewards name the reward, λ, prompt and sample.
    let e = run_sweep(&m, &[&Flaky], &SweepConfig::new(vec![0.0, 1.0], Prompt::seeds([1]), 16), &mut NoSweepObserver)
        .unwrap_err();
    match &e {
        Error::NonFiniteReward { reward, value, context } => {
            assert_eq!(reward, "flaky");
            assert!(value.is_nan());
            assert!(context.contains("λ = 0") && context.contains("seed-1") && context.contains("sample"), "{context}");
        }
        other => panic!("expected NonFiniteReward, got {other:?}"),
    }
    assert!(e.to_string().contains("must be finite"), "{e}");

    // A model with a mixture of another dimension than the reward, and a bad anchor.
    let mut setup =
        AnalyticSetup::new(demo_mixture(1).unwrap(), deradiff_analytic::Reward::linear(vec![1.0]).unwrap(), 1.0);
    assert!(AnalyticModel::new(setup.clone()).is_err());
    setup.proxy = demo_linear_reward();
    setup.anchor_beta = 0.0;
    assert!(AnalyticModel::new(setup.clone()).unwrap_err().to_string().contains("anchor β"));
    setup.anchor_beta = 1.0;
    setup.steps = 0;
    assert!(AnalyticModel::new(setup).is_err());
}

/// A text–image-style reward: the prompt's length, per sample (needs the prompts).
struct PromptLength;

impl Reward for PromptLength {
    fn name(&self) -> String {
        "prompt_length".into()
    }
    fn score(&self, samples: &Tensor, prompts: Option<&[&str]>) -> deradiff_rewards::Result<Vec<f64>> {
        let prompts = prompts.ok_or_else(|| deradiff_rewards::Error::user("this reward needs prompts"))?;
        assert_eq!(prompts.len(), samples.dims()[0]);
        Ok(prompts.iter().map(|p| p.chars().count() as f64).collect())
    }
}

#[test]
fn text_prompts_reach_rewards_and_csv_escapes_them() {
    let m = model(SchedulerKind::Ddpm, 2);
    let prompts = vec![Prompt::text("cat, sitting", "a \"cat\", sitting", 1), Prompt::text("dog", "a dog", 2)];
    let path = tmp("text.jsonl");
    let csv = tmp("text.csv");
    let mut config = SweepConfig::new(vec![0.5], prompts, 3);
    config.output = Some(SweepOutput::jsonl(&path).with_csv(&csv));
    let r = run_sweep(&m, &[&PromptLength], &config, &mut NoSweepObserver).unwrap();
    assert_eq!(r.row(0.5, "cat, sitting").unwrap().rewards[0].mean, 16.0);
    assert_eq!(r.row(0.5, "dog").unwrap().rewards[0].std, 0.0);
    let text = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(text.lines().nth(1).unwrap(), "0.5,0,\"cat, sitting\",1,3,16,0");
    // Seeded groups have no text: a reward that needs it says so.
    let e = run_sweep(&m, &[&PromptLength], &SweepConfig::new(vec![0.5], Prompt::seeds([1]), 3), &mut NoSweepObserver);
    assert!(e.unwrap_err().to_string().contains("needs prompts"));
}

#[test]
fn rows_of_two_sets_pair_for_the_agreement_statistics() {
    let m = model(SchedulerKind::Ddpm, 3);
    let proxy = AnalyticReward::new("proxy", demo_linear_reward());
    let a = run_sweep(&m, &[&proxy], &SweepConfig::new(vec![0.5, 1.0], Prompt::seeds([1, 2]), 6), &mut NoSweepObserver)
        .unwrap();
    let b = run_sweep(&m, &[&proxy], &SweepConfig::new(vec![1.0, 0.5], Prompt::seeds([2, 1]), 6), &mut NoSweepObserver)
        .unwrap();
    let pairs = pair_rows(&a.rows, &b.rows, "proxy", PairBy::LambdaAndPrompt).unwrap();
    assert_eq!(pairs.labels.len(), 4);
    assert_eq!(pairs.original, pairs.approx, "the same sweep in another order pairs to equal values");
    assert_eq!(pairs.labels[0], "λ=0.5, seed-1, seed 1");
    let s = agreement(&pairs.original, &pairs.approx, &AgreementConfig::default()).unwrap();
    assert_eq!(s.mae.value, 0.0);
    assert!(pair_rows(&a.rows, &b.rows, "proxy", PairBy::Prompt).unwrap_err().to_string().contains("two rows"));
    assert!(pair_rows(&a.rows, &b.rows[..3], "proxy", PairBy::LambdaAndPrompt)
        .unwrap_err()
        .to_string()
        .contains("no row"));
    assert!(pair_rows(&a.rows[..3], &b.rows, "proxy", PairBy::LambdaAndPrompt)
        .unwrap_err()
        .to_string()
        .contains("without a partner"));
    assert!(pair_rows(&a.rows, &b.rows, "nope", PairBy::LambdaAndPrompt).is_err());
}

#[test]
fn a_second_writer_on_the_same_results_file_fails_at_once() {
    let path = tmp("locked.jsonl");
    let m = model(SchedulerKind::Ddpm, 4);
    let truth =
        TrueReward::new("true", demo_linear_reward(), ManifoldPenalty::ReferenceLogDensity(mixture()), 2.0).unwrap();
    let mut config = SweepConfig::new(vec![0.0, 1.0], Prompt::seeds(0..2), 4);
    config.output = Some(SweepOutput::jsonl(&path));
    // The first sweep holds the lock while its observer runs; a second one started then fails.
    struct Intruder<'a> {
        config: &'a SweepConfig,
        m: &'a AnalyticModel,
        truth: &'a TrueReward,
        err: Option<Error>,
    }
    impl SweepObserver for Intruder<'_> {
        fn on_event(&mut self, event: &SweepEvent) -> Result<()> {
            if self.err.is_none() && matches!(event, SweepEvent::Row { .. }) {
                self.err = run_sweep(self.m, &[self.truth], self.config, &mut NoSweepObserver).err();
            }
            Ok(())
        }
    }
    let mut intruder = Intruder { config: &config, m: &m, truth: &truth, err: None };
    let first = run_sweep(&m, &[&truth], &config, &mut intruder).unwrap();
    let err = intruder.err.expect("the second writer must fail");
    assert!(matches!(err, Error::ResultsLocked(ref p) if p == &path), "{err:?}");
    assert!(err.to_string().contains("another sweep"), "{err}");
    // The file holds each row once.
    let back = read_results(&path).unwrap();
    assert_eq!(back.rows, first.rows);
    assert_eq!(back.rows.len(), 4);
}

#[test]
fn resuming_with_another_prompt_set_is_an_error() {
    let path = tmp("prompts.jsonl");
    let m = model(SchedulerKind::Ddpm, 4);
    let truth =
        TrueReward::new("true", demo_linear_reward(), ManifoldPenalty::ReferenceLogDensity(mixture()), 2.0).unwrap();
    let mut config = SweepConfig::new(vec![0.0, 1.0], Prompt::seeds(0..4), 4);
    config.output = Some(SweepOutput::jsonl(&path));
    run_sweep(&m, &[&truth], &config, &mut NoSweepObserver).unwrap();
    let header = read_results(&path).unwrap().header;
    assert_eq!(header.prompts.as_deref(), Some(prompts_hash(&config.prompts).as_str()));
    // Two of the four prompts: refused, naming the prompt set, and the file is untouched.
    let before = std::fs::read(&path).unwrap();
    config.prompts = Prompt::seeds(0..2);
    let err = run_sweep(&m, &[&truth], &config, &mut NoSweepObserver).unwrap_err();
    // The setting that differs is named, with both values.
    let text = err.to_string();
    assert!(text.contains("the prompt entries") && text.contains("4 entries") && text.contains("2 entries"), "{text}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
    // A file from before headers recorded the prompt set: the rows are checked instead.
    let text = String::from_utf8(before.clone()).unwrap();
    let (head, rows) = text.split_once('\n').unwrap();
    let mut head: serde_json::Value = serde_json::from_str(head).unwrap();
    for key in ["prompts", "spec", "spec_hash"] {
        head.as_object_mut().unwrap().remove(key);
    }
    std::fs::write(&path, format!("{head}\n{rows}")).unwrap();
    let err = run_sweep(&m, &[&truth], &config, &mut NoSweepObserver).unwrap_err();
    assert!(matches!(err, Error::ResumeMismatch { ref in_config, .. } if in_config.contains("no prompt")), "{err:?}");
}

#[test]
fn negative_zero_and_zero_are_one_lambda() {
    let row = |lambda: f64, v: f64| SweepRow {
        lambda,
        prompt_index: 0,
        prompt: "p".into(),
        seed: 0,
        samples: 1,
        rewards: vec![RewardSummary { name: "r".into(), mean: v, std: 0.0, scores: None }],
        saturation: None,
        images: Vec::new(),
    };
    let pairs =
        pair_rows(&[row(-0.0, 1.0), row(1.0, 2.0)], &[row(0.0, 1.5), row(1.0, 2.5)], "r", PairBy::LambdaAndPrompt)
            .unwrap();
    assert_eq!(pairs.approx, vec![1.5, 2.5]);
    assert!(matches!(check_lambdas(&[0.0, -0.0]), Err(Error::InvalidLambda(_))));
}

#[test]
fn sizes_are_bounded_before_anything_is_allocated() {
    let m = model(SchedulerKind::Ddpm, 4);
    let truth =
        TrueReward::new("true", demo_linear_reward(), ManifoldPenalty::ReferenceLogDensity(mixture()), 2.0).unwrap();
    let huge = SweepConfig::new(vec![0.0], Prompt::seeds(0..1), 1_000_000_000_000);
    let err = run_sweep(&m, &[&truth], &huge, &mut NoSweepObserver).unwrap_err();
    assert!(err.to_string().contains(&MAX_SAMPLES_PER_PROMPT.to_string()), "{err}");
    assert!(matches!(linspace(0.0, 2.0, 1_000_000_000), Err(Error::InvalidArgument(_))));
    let grid = vec![0.5; MAX_LAMBDAS + 1];
    assert!(matches!(check_lambdas(&grid), Err(Error::InvalidLambda(_))));
    // A batch of 2 λ × 1 000 000 samples × 2 dims fits; 1 000 λ of them does not.
    let many: Vec<f64> = (0..1000).map(|i| i as f64 / 1000.0).collect();
    let wide = SweepConfig::new(many, Prompt::seeds(0..1), MAX_SAMPLES_PER_PROMPT);
    let err = run_sweep(&m, &[&truth], &wide, &mut NoSweepObserver).unwrap_err();
    assert!(err.to_string().contains("max_lambdas_per_batch"), "{err}");
    let bo = BoConfig { budget: 1_000_000_000, ..Default::default() };
    assert!(matches!(bo.validate(), Err(Error::InvalidBudget(_))));
    let stats = agreement(&[1.0, 2.0], &[1.5, 2.5], &AgreementConfig { bootstrap: usize::MAX, ..Default::default() });
    assert!(matches!(stats, Err(Error::InvalidArgument(_))));
}

#[test]
fn statistics_and_plots_of_huge_values_are_typed_errors() {
    // Squares of 1e200 overflow: the RMSE would be inf.
    let err = agreement(&[1e200, 2e200], &[-1e200, 3e200], &AgreementConfig::default()).unwrap_err();
    assert!(matches!(err, Error::NonFiniteStatistic { .. }), "{err:?}");
    assert!(err.to_string().contains("rescale"), "{err}");
    // ±1e308 on an axis: an error, not a hang.
    let summaries = vec![
        LambdaSummary { lambda: 0.0, mean: -1e308, sem: 0.0, prompts: 1 },
        LambdaSummary { lambda: 1.0, mean: 1e308, sem: 0.0, prompts: 1 },
    ];
    let err = deradiff_tune::plot::reward_vs_lambda_png(&summaries, "r", 1.96, "t").unwrap_err();
    assert!(matches!(err, Error::Plot { .. }), "{err:?}");
}

#[test]
fn saving_images_needs_an_image_model_and_an_output_and_stands_in_for_rewards() {
    let m = model(SchedulerKind::Ddpm, 2);
    let reward = AnalyticReward::new("proxy", demo_linear_reward());
    // Neither a reward nor images: nothing would come of it.
    let e = run_sweep(&m, &[], &SweepConfig::new(vec![0.5], Prompt::seeds([1]), 4), &mut NoSweepObserver);
    let e = e.unwrap_err().to_string();
    assert!(e.contains("no rewards and no images") && e.contains("save_images"), "{e}");
    // Images need the results file's folder.
    let mut config = SweepConfig::new(vec![0.5], Prompt::seeds([1]), 4);
    config.save_images = true;
    let e = run_sweep(&m, &[&reward], &config, &mut NoSweepObserver).unwrap_err().to_string();
    assert!(e.contains("give the sweep an output"), "{e}");
    // The testbed's samples are points, not images: refused before a row is written.
    let path = tmp("images.jsonl");
    config.output = Some(SweepOutput::jsonl(&path));
    let e = run_sweep(&m, &[], &config, &mut NoSweepObserver).unwrap_err().to_string();
    assert!(e.contains("makes no images"), "{e}");
    assert_eq!(read_results(&path).unwrap().rows.len(), 0);
}

#[test]
fn a_report_of_a_sweep_without_images_escapes_its_prompts_and_shows_its_numbers() {
    let m = model(SchedulerKind::Ddpm, 2);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("deradiff-tune-report-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let huge = "ü<i>".repeat(20_000);
    let prompts = vec![
        Prompt::text("p1", "<script>alert(1)</script>", 1),
        Prompt::text("p\"2'", "\"quoted\" & 'single' 🙂", 2),
        Prompt::text("p3", huge.clone(), 3),
    ];
    let mut config = SweepConfig::new(vec![-0.5, 0.0, 1.0], prompts, 8);
    config.output = Some(SweepOutput::jsonl(dir.join("sweep.jsonl")));
    run_sweep(&m, &[&PromptLength], &config, &mut NoSweepObserver).unwrap();
    let summary = write_report(&dir).unwrap();
    assert_eq!((summary.sections.clone(), summary.rows, summary.images), (vec!["sweep"], 9, 0));
    assert!(summary.notes.iter().any(|n| n.contains("saved no images")), "{:?}", summary.notes);
    let html = std::fs::read_to_string(&summary.html).unwrap();
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;") && !html.contains("<script>alert"));
    assert!(html.contains("&quot;quoted&quot; &amp; &#39;single&#39; 🙂") && html.contains("id p&quot;2&#39;"));
    assert!(html.contains(&"ü&lt;i&gt;".repeat(20_000)) && !html.contains("<i>"));
    // Exactly one script (the page's own) and no address outside the folder.
    assert_eq!(html.matches("<script").count(), 1);
    assert!(!html.contains("http:") && !html.contains("https:") && !html.contains("src=\"/"));
    assert!(html.contains("content=\"default-src 'none'; img-src 'self' file:;"), "a policy that fetches nothing");
    assert!(dir.join(REPORT_ASSETS_DIR).join("reward_0.png").is_file());
    // The prompt-length reward's gain per prompt: the same at every λ, 0.
    assert!(html.contains("data-gain-0=\"0e0\""), "gains are written");
    // Nothing to report in an empty folder.
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    assert!(write_report(&empty).unwrap_err().to_string().contains("holds no results to report"));
}
