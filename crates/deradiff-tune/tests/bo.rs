//! Bayesian optimisation of λ on the analytic testbed, and its bad inputs.
//!
//! The objective is DeRaDiff's measured mean *true* reward: the reference is the exact model of
//! a two-component Gaussian mixture, the anchor the exact model aligned at β = 1 to a *linear*
//! proxy reward, and the true reward adds `κ · log p_ref(x)`, which penalises samples that leave
//! the data. Raising λ raises the proxy but pushes samples off the data, so `Ĵ(λ)` has an
//! interior maximum. `Ĵ` is measured by sampling (DDPM, 12 steps, 2 prompts × 48 samples), every
//! λ with the same noise (common random numbers), so it is smooth in λ.

use deradiff_analytic::{demo_linear_reward, demo_mixture, GaussianMixture};
use deradiff_core::SchedulerKind;
use deradiff_tune::*;

const KAPPA: f64 = 2.5;

fn mixture() -> GaussianMixture {
    GaussianMixture::new(vec![0.6, 0.4], vec![vec![-0.6, 0.0], vec![0.8, 0.4]], vec![vec![0.5, 0.4], vec![0.4, 0.6]])
        .unwrap()
}

fn testbed(data: GaussianMixture, steps: usize) -> (AnalyticModel, TrueReward) {
    let mut setup = AnalyticSetup::new(data.clone(), demo_linear_reward(), 1.0);
    setup.scheduler = SchedulerKind::Ddpm;
    setup.steps = steps;
    let model = AnalyticModel::new(setup).unwrap();
    let truth =
        TrueReward::new("true", demo_linear_reward(), ManifoldPenalty::ReferenceLogDensity(data), KAPPA).unwrap();
    (model, truth)
}

fn argmax(grid: &[f64], values: &[f64]) -> (f64, f64) {
    let i = (0..values.len()).max_by(|&a, &b| values[a].total_cmp(&values[b])).unwrap();
    (grid[i], values[i])
}

#[test]
fn bo_finds_the_dense_grid_optimum_within_0_05_in_10_evaluations_for_9_of_10_seeds() {
    let (model, truth) = testbed(mixture(), 12);
    let grid = linspace(0.0, 1.0, 101).unwrap();
    let mut passed = [0usize; 2];
    let mut report = Vec::new();
    let mut evaluations = [Vec::new(), Vec::new()];
    for seed in 0..10u64 {
        let prompts = Prompt::seeds([100 + 2 * seed, 101 + 2 * seed]);
        // The dense grid: 101 λ in one batched run.
        let mut dense = SweepObjective::new(&model, &truth, prompts.clone(), 48).unwrap();
        let values = dense.evaluate(&grid).unwrap();
        let (grid_best, grid_value) = argmax(&grid, &values);
        assert!(grid_best > 0.05 && grid_best < 0.95, "seed {seed}: the optimum {grid_best} is not interior");

        // Algorithm 2's uniform initial design and the default stratified one.
        for design in [InitialDesign::LatinHypercube, InitialDesign::Uniform] {
            let mut objective = SweepObjective::new(&model, &truth, prompts.clone(), 48).unwrap();
            let config = BoConfig { seed, budget: 10, design, ..BoConfig::default() };
            let mut seen = 0;
            let result = optimize(&mut objective, &config, &mut |e: &BoEvaluation| {
                seen += 1;
                assert_eq!(e.index + 1, seen);
                Ok(())
            })
            .unwrap();
            assert!(objective.evaluations() <= 10 && result.history.len() <= 10);
            let ok = (result.lambda_star - grid_best).abs() <= 0.05;
            let slot = (design == InitialDesign::Uniform) as usize;
            passed[slot] += ok as usize;
            evaluations[slot].push(objective.evaluations());
            report.push(format!(
                "seed {seed} {design:?}: grid λ {grid_best:.2} (Ĵ {grid_value:.4}), BO λ* {:.4} (Ĵ {:.4}) in {} evaluations{}{}",
                result.lambda_star,
                result.value_star,
                objective.evaluations(),
                if result.converged { " (converged)" } else { "" },
                if ok { "" } else { "  <-- MISSED" }
            ));
            // Ĵ is smooth: λ* is never better than the dense grid by more than rounding.
            assert!(result.value_star <= grid_value + 1e-3, "seed {seed}: λ* beats the dense grid by too much");
        }
    }
    println!("{}", report.join("\n"));
    println!(
        "within 0.05 of the dense-grid optimum: Latin hypercube {} / 10 seeds (evaluations {:?}), uniform {} / 10 \
         (evaluations {:?})",
        passed[0], evaluations[0], passed[1], evaluations[1]
    );
    for (p, name) in passed.iter().zip(["Latin hypercube", "uniform"]) {
        assert!(*p >= 9, "BO ({name} design) found the optimum for only {p} of 10 seeds:\n{}", report.join("\n"));
    }
}

#[test]
fn one_gaussian_puts_the_optimum_at_beta_over_kappa() {
    // N(m, Σ), linear proxy w·x, anchor β: E[r_true](λ) = const + wᵀΣw (λ/β − κλ²/(2β²)),
    // maximal at λ* = β/κ = 0.4, and DeRaDiff is exact for one Gaussian and a linear reward.
    let (model, truth) = testbed(demo_mixture(1).unwrap(), 10);
    let grid = linspace(0.0, 1.0, 51).unwrap();
    let mut objective = SweepObjective::new(&model, &truth, Prompt::seeds([0, 1, 2, 3]), 128).unwrap();
    let values = objective.evaluate(&grid).unwrap();
    let (best, _) = argmax(&grid, &values);
    assert!((best - 1.0 / KAPPA).abs() <= 0.06, "dense-grid optimum {best}, expected {}", 1.0 / KAPPA);
    let result = optimize(&mut objective, &BoConfig { seed: 3, ..BoConfig::default() }, &mut |_| Ok(())).unwrap();
    assert!((result.lambda_star - best).abs() <= 0.05, "λ* {} vs grid {best}", result.lambda_star);
}

#[test]
fn acquisitions_designs_and_incumbents_all_find_a_smooth_optimum() {
    let f = |l: f64| -(l - 1.3).powi(2) + 0.05 * (5.0 * l).sin();
    let grid = linspace(0.5, 2.5, 2001).unwrap();
    let (best, _) = argmax(&grid, &grid.iter().map(|&l| f(l)).collect::<Vec<_>>());
    for acquisition in [
        Acquisition::ExpectedImprovement { xi: 0.0 },
        Acquisition::ExpectedImprovement { xi: 0.01 },
        Acquisition::UpperConfidenceBound { delta: 0.1 },
        Acquisition::UcbFixed { kappa: 2.0 },
    ] {
        for design in [InitialDesign::Uniform, InitialDesign::LatinHypercube, InitialDesign::Grid] {
            for incumbent in [Incumbent::BestObserved, Incumbent::BestPredicted] {
                let config = BoConfig {
                    lower: 0.5,
                    upper: 2.5,
                    budget: 12,
                    initial: 4,
                    design,
                    acquisition,
                    incumbent,
                    seed: 11,
                    ..BoConfig::default()
                };
                let mut calls = Vec::new();
                let mut objective = |ls: &[f64]| {
                    calls.push(ls.len());
                    Ok(ls.iter().map(|&l| f(l)).collect())
                };
                let r = optimize(&mut objective, &config, &mut |_| Ok(())).unwrap();
                assert_eq!(calls[0], 4, "the initial design is evaluated in one call");
                assert!(calls.len() <= 1 + 8 && calls[1..].iter().all(|&c| c == 1));
                assert_eq!(r.converged, calls.len() < 9);
                assert!(
                    (r.lambda_star - best).abs() < 0.05,
                    "{acquisition:?} {design:?} {incumbent:?}: λ* {}",
                    r.lambda_star
                );
                assert!(r.history.iter().all(|e| (0.5..=2.5).contains(&e.lambda)));
                assert_eq!(r.history.iter().filter(|e| e.phase == BoPhase::Initial).count(), 4);
                let last = r.history.last().unwrap();
                assert_eq!((last.best_lambda, last.best_value), r.best_observed);
            }
        }
    }
    // The same seed gives the same search; JSON of the result is valid.
    let mut objective = |ls: &[f64]| Ok(ls.iter().map(|&l| f(l)).collect());
    let config = BoConfig { lower: 0.5, upper: 2.5, design: InitialDesign::Uniform, ..BoConfig::default() };
    let a = optimize(&mut objective, &config, &mut |_| Ok(())).unwrap();
    let b = optimize(&mut objective, &config, &mut |_| Ok(())).unwrap();
    assert_eq!(a.history, b.history);
    let json: serde_json::Value = serde_json::from_str(&a.to_json().unwrap()).unwrap();
    assert_eq!(json["history"].as_array().unwrap().len(), a.history.len());
    // xtol = 0 spends the whole budget.
    let all = BoConfig { xtol: 0.0, ..config };
    let c = optimize(&mut objective, &all, &mut |_| Ok(())).unwrap();
    assert_eq!(c.history.len(), 10);
    assert!(!c.converged);
    assert!(json["lambda_star"].as_f64().is_some());
}

#[test]
fn bad_bo_inputs_give_clear_errors() {
    let mut objective = |ls: &[f64]| Ok(ls.iter().map(|l| -l * l).collect());
    let run = |config: BoConfig, objective: &mut dyn Objective| optimize(objective, &config, &mut |_| Ok(()));
    let e = run(BoConfig { budget: 0, ..BoConfig::default() }, &mut objective).unwrap_err();
    assert!(matches!(e, Error::InvalidBudget(_)) && e.to_string().contains("budget is 0"), "{e}");
    let e = run(BoConfig { lower: 1.0, upper: 0.0, ..BoConfig::default() }, &mut objective).unwrap_err();
    assert!(matches!(e, Error::InvalidRange { .. }) && e.to_string().contains("reversed"), "{e}");
    let e = run(BoConfig { lower: 0.5, upper: 0.5, ..BoConfig::default() }, &mut objective).unwrap_err();
    assert!(matches!(e, Error::InvalidRange { .. }));
    let e = run(BoConfig { upper: f64::NAN, ..BoConfig::default() }, &mut objective).unwrap_err();
    assert!(matches!(e, Error::InvalidRange { .. }));
    let e = run(BoConfig { initial: 0, ..BoConfig::default() }, &mut objective).unwrap_err();
    assert!(matches!(e, Error::InvalidBudget(_)));
    let e = run(BoConfig { initial: 11, ..BoConfig::default() }, &mut objective).unwrap_err();
    assert!(e.to_string().contains("11 points but the budget is 10"), "{e}");
    let e = run(BoConfig { candidates: 2, ..BoConfig::default() }, &mut objective).unwrap_err();
    assert!(e.to_string().contains("candidates"), "{e}");
    let e = run(
        BoConfig { acquisition: Acquisition::UpperConfidenceBound { delta: 1.5 }, ..BoConfig::default() },
        &mut objective,
    )
    .unwrap_err();
    assert!(e.to_string().contains("δ"), "{e}");
    let e = run(
        BoConfig { acquisition: Acquisition::ExpectedImprovement { xi: f64::NAN }, ..BoConfig::default() },
        &mut objective,
    )
    .unwrap_err();
    assert!(e.to_string().contains("ξ"), "{e}");

    // NaN from the objective.
    let mut nan_after = |ls: &[f64]| Ok(ls.iter().map(|&l| if l > 0.5 { f64::NAN } else { l }).collect());
    let e = run(BoConfig { design: InitialDesign::Grid, ..BoConfig::default() }, &mut nan_after).unwrap_err();
    assert!(matches!(e, Error::NonFiniteReward { .. }) && e.to_string().contains("λ = 1"), "{e}");
    let mut wrong_count = |_: &[f64]| Ok(vec![1.0]);
    let e = run(BoConfig::default(), &mut wrong_count).unwrap_err();
    assert!(e.to_string().contains("returned 1 values for 3"), "{e}");

    // A progress callback can stop the search.
    let e = optimize(&mut objective, &BoConfig::default(), &mut |ev| {
        if ev.index == 4 {
            Err(Error::user("enough"))
        } else {
            Ok(())
        }
    })
    .unwrap_err();
    assert_eq!(e.to_string(), "enough");

    // Gaussian-process inputs.
    assert!(matches!(GaussianProcess::fit(&[], &[], 0.0, 1.0, &GpBounds::default()), Err(Error::Gp(_))));
    assert!(matches!(
        GaussianProcess::fit(&[0.1], &[f64::NAN], 0.0, 1.0, &GpBounds::default()),
        Err(Error::NonFiniteReward { .. })
    ));
    assert!(matches!(
        GaussianProcess::fit(&[0.1], &[1.0], 1.0, 0.0, &GpBounds::default()),
        Err(Error::InvalidRange { .. })
    ));
    let bad = GpHyper { length_scale: -1.0, signal_variance: 1.0, noise_variance: 0.0 };
    assert!(GaussianProcess::with_hyper(&[0.1], &[1.0], 0.0, 1.0, bad).is_err());
    // Coincident points without noise are factored with jitter, not an error.
    let h = GpHyper { length_scale: 0.3, signal_variance: 1.0, noise_variance: 0.0 };
    let gp = GaussianProcess::with_hyper(&[0.2, 0.2, 0.7], &[1.0, 1.0, 0.0], 0.0, 1.0, h).unwrap();
    assert!(gp.jitter() > 0.0 && gp.predict(0.2).0.is_finite());
    assert!(matches!(linspace(1.0, 0.0, 5), Err(Error::InvalidRange { .. })));
    assert!(matches!(linspace(0.0, 1.0, 0), Err(Error::EmptyGrid)));
}
