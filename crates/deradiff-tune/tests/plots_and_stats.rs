//! Figures (they render, as PNG of the expected size, written atomically) and agreement
//! statistics on a realistic comparison: DeRaDiff's mean reward against the exact models aligned
//! from scratch (the paper's Table 5 setting, on the analytic testbed).

use std::path::PathBuf;

use deradiff_analytic::{demo_linear_reward, run_study, GaussianMixture, StudyConfig};
use deradiff_tune::plot::{abs_error_ecdf_png, bland_altman_png, bo_trace_png, reward_vs_lambda_png, write_png};
use deradiff_tune::*;

fn mixture() -> GaussianMixture {
    GaussianMixture::new(vec![0.6, 0.4], vec![vec![-0.6, 0.0], vec![0.8, 0.4]], vec![vec![0.5, 0.4], vec![0.4, 0.6]])
        .unwrap()
}

fn out_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("deradiff-tune-figures");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Width and height from a PNG's IHDR.
fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    let be = |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    (be(16), be(20))
}

/// Pairs (exact model aligned from scratch, DeRaDiff) of mean rewards over several anchors and
/// targets.
fn study_pairs() -> (Vec<f64>, Vec<f64>) {
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for anchor in [0.5, 1.0, 2.0] {
        let mut config = StudyConfig::new(mixture(), demo_linear_reward(), anchor, vec![0.75, 1.5, 3.0, 6.0]);
        config.samples = 64;
        config.steps = 8;
        config.seed = (anchor * 10.0) as u64;
        for row in run_study(&config).unwrap().result.rows {
            x.push(row.target_model_mean_reward);
            y.push(row.deradiff_mean_reward);
        }
    }
    (x, y)
}

#[test]
fn figures_render() {
    let dir = out_dir();
    let mut setup = AnalyticSetup::new(mixture(), demo_linear_reward(), 1.0);
    setup.steps = 8;
    let model = AnalyticModel::new(setup).unwrap();
    let truth =
        TrueReward::new("true", demo_linear_reward(), ManifoldPenalty::ReferenceLogDensity(mixture()), 2.5).unwrap();

    // Mean reward vs λ with error bars over 4 prompts.
    let config = SweepConfig::new(linspace(0.0, 1.2, 13).unwrap(), Prompt::seeds(0..4), 24);
    let sweep = run_sweep(&model, &[&truth], &config, &mut NoSweepObserver).unwrap();
    let png =
        reward_vs_lambda_png(&sweep.summaries("true").unwrap(), "true reward", 1.96, "Mean true reward vs λ").unwrap();
    assert_eq!(png_size(&png), (900, 620));
    write_png(dir.join("reward_vs_lambda.png"), &png).unwrap();

    // The BO trace with the dense grid behind it.
    let prompts = Prompt::seeds([5, 6]);
    let grid = linspace(0.0, 1.0, 51).unwrap();
    let dense = SweepObjective::new(&model, &truth, prompts.clone(), 32).unwrap().evaluate(&grid).unwrap();
    let curve: Vec<(f64, f64)> = grid.iter().copied().zip(dense).collect();
    let mut objective = SweepObjective::new(&model, &truth, prompts, 32).unwrap();
    let bo =
        optimize(&mut objective, &BoConfig { seed: 1, xtol: 0.0, ..BoConfig::default() }, &mut |_| Ok(())).unwrap();
    let png = bo_trace_png(&bo, Some(&curve), "Bayesian optimisation of λ (EI, 10 evaluations)").unwrap();
    assert_eq!(png_size(&png), (900, 620));
    write_png(dir.join("bo_trace.png"), &png).unwrap();
    assert!(bo_trace_png(&bo, None, "no reference").is_ok());

    // Bland–Altman and the ECDF of |Δ| for DeRaDiff vs the exact aligned models.
    let (x, y) = study_pairs();
    let stats = agreement(&x, &y, &AgreementConfig { bootstrap: 2000, seed: 1, ..AgreementConfig::default() }).unwrap();
    println!("{}", stats.to_markdown());
    let png = bland_altman_png(&x, &y, &stats, "Bland–Altman: DeRaDiff vs exact aligned models").unwrap();
    assert_eq!(png_size(&png), (900, 620));
    write_png(dir.join("bland_altman.png"), &png).unwrap();
    let png = abs_error_ecdf_png(&x, &y, &stats, "ECDF of |DeRaDiff − exact| mean reward").unwrap();
    assert_eq!(png_size(&png), (900, 620));
    write_png(dir.join("abs_error_ecdf.png"), &png).unwrap();
    println!("figures in {}", dir.display());

    // Bad figure inputs are errors, not panics.
    assert!(reward_vs_lambda_png(&[], "r", 1.0, "t").is_err());
    let nan = vec![LambdaSummary { lambda: 0.0, mean: f64::NAN, sem: 0.0, prompts: 1 }];
    assert!(reward_vs_lambda_png(&nan, "r", 1.0, "t").is_err());
    assert!(bland_altman_png(&x[..3], &y, &stats, "t").is_err());
    assert!(abs_error_ecdf_png(&[], &[], &stats, "t").is_err());
    assert!(write_png(dir.join("missing-dir/../"), &png).is_err());
}

#[test]
fn agreement_on_the_testbed_is_small_and_consistent() {
    let (x, y) = study_pairs();
    let s = agreement(&x, &y, &AgreementConfig { bootstrap: 3000, seed: 9, ..AgreementConfig::default() }).unwrap();
    assert_eq!(s.n, 12);
    // Identities that hold whatever the data.
    assert!(s.median_abs.value <= s.max_abs.value && s.mae.value <= s.rmse.value + 1e-15);
    assert!(s.mae_ci_low.value <= s.mae_bootstrap_mean.value && s.mae_bootstrap_mean.value <= s.mae_ci_high.value);
    assert!((s.loa_high.value - s.loa_low.value - 2.0 * 1.96 * s.sd_diff.value).abs() < 1e-12);
    let mean_x = x.iter().sum::<f64>() / x.len() as f64;
    assert!((s.mae.percent.unwrap() - 100.0 * s.mae.value / mean_x).abs() < 1e-9);
    // DeRaDiff tracks the exact models closely (a few percent of the mean reward at most).
    assert!(s.mae.percent.unwrap().abs() < 5.0, "{}", s.to_markdown());
    // The same seed gives the same bootstrap; another seed another one.
    let again = agreement(&x, &y, &s.config).unwrap();
    assert_eq!(again, s);
    let other = agreement(&x, &y, &AgreementConfig { seed: 10, ..s.config }).unwrap();
    assert_ne!(other.mae_bootstrap_mean, s.mae_bootstrap_mean);
    assert_eq!(other.mae, s.mae);
}

#[test]
fn bad_statistics_inputs_give_clear_errors() {
    let c = AgreementConfig::default();
    let e = agreement(&[1.0, 2.0], &[1.0], &c).unwrap_err();
    assert!(e.to_string().contains("need pairs"), "{e}");
    assert!(agreement(&[1.0], &[1.0], &c).unwrap_err().to_string().contains("at least 2 pairs"));
    let e = agreement(&[1.0, f64::NAN], &[1.0, 2.0], &c).unwrap_err();
    assert!(matches!(e, Error::NonFiniteReward { .. }) && e.to_string().contains("pair 1"), "{e}");
    let e = agreement(&[1.0, 2.0], &[1.0, f64::INFINITY], &c).unwrap_err();
    assert!(e.to_string().contains("approximation"), "{e}");
    assert!(agreement(&[1.0, 2.0], &[1.0, 2.0], &AgreementConfig { bootstrap: 0, ..c }).is_err());
    assert!(agreement(&[1.0, 2.0], &[1.0, 2.0], &AgreementConfig { confidence: 1.0, ..c }).is_err());
    assert!(agreement(&[1.0, 2.0], &[1.0, 2.0], &AgreementConfig { reference_mean: Some(f64::NAN), ..c }).is_err());
    // A zero mean has no relative values, but the absolute ones are there.
    let s = agreement(&[-1.0, 1.0], &[-1.5, 1.5], &AgreementConfig { bootstrap: 10, ..c }).unwrap();
    assert_eq!(s.mae.percent, None);
    assert_eq!(s.mae.value, 0.5);
    assert!(s.to_markdown().contains("n/a"));
}
