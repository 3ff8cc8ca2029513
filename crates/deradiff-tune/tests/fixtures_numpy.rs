//! deradiff-tune's agreement statistics, Gaussian process and acquisitions against values
//! computed independently with numpy and scipy (`scripts/gen_tune_fixtures.py`, which documents
//! the method; fixture `tests/fixtures/tune_reference.json`).

use deradiff_tune::{
    agreement, bootstrap_maes, expected_improvement, normal_cdf, normal_pdf, AgreementConfig, GaussianProcess,
    GpBounds, GpHyper,
};
use serde_json::Value;

fn fixture() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tune_reference.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("fixture present")).expect("fixture is JSON")
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array().expect("array").iter().map(|x| x.as_f64().expect("number")).collect()
}

fn rel_err(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-300)
}

#[test]
fn agreement_statistics_match_numpy() {
    let fx = fixture();
    let mut worst_det = 0.0f64;
    let mut worst_boot = 0.0f64;
    for case in fx["agreement"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let x = f64s(&case["original"]);
        let y = f64s(&case["approx"]);
        let config = AgreementConfig {
            bootstrap: case["resamples"].as_u64().unwrap() as usize,
            seed: case["seed"].as_u64().unwrap(),
            reference_mean: case["reference_mean"].as_f64(),
            ..AgreementConfig::default()
        };
        let s = agreement(&x, &y, &config).unwrap();
        assert!(rel_err(s.reference_mean, case["mean_original"].as_f64().unwrap()) < 1e-14, "{name}");
        let ours = [
            ("mae", s.mae),
            ("rmse", s.rmse),
            ("median_abs", s.median_abs),
            ("max_abs", s.max_abs),
            ("bias", s.bias),
            ("sd_diff", s.sd_diff),
            ("loa_low", s.loa_low),
            ("loa_high", s.loa_high),
            ("mae_bootstrap_mean", s.mae_bootstrap_mean),
            ("mae_ci_low", s.mae_ci_low),
            ("mae_ci_high", s.mae_ci_high),
        ];
        for (key, stat) in ours {
            let e = &case["expected"][key];
            let (v, p) = (e["value"].as_f64().unwrap(), e["percent"].as_f64().unwrap());
            // numpy sums pairwise, we sum left to right: agreement to rounding.
            let err = rel_err(stat.value, v).max(rel_err(stat.percent.unwrap(), p));
            assert!(err < 1e-11, "{name} {key}: ours {stat:?}, numpy {v} ({p} %), rel err {err:e}");
            if key.starts_with("mae_") {
                worst_boot = worst_boot.max(err);
            } else {
                worst_det = worst_det.max(err);
            }
        }
        // The shared bootstrap stream: the first resamples' MAEs are the very same numbers.
        let abs: Vec<f64> = x.iter().zip(&y).map(|(a, b)| (b - a).abs()).collect();
        let maes = bootstrap_maes(&abs, 5, config.seed);
        assert_eq!(maes, f64s(&case["first_bootstrap_maes"]), "{name}: bootstrap stream differs from Python's");

        // Against numpy's and scipy's own bootstraps (different random indices): Monte-Carlo
        // agreement with B = 20 000 on both sides.
        let nb = &case["numpy_bootstrap"];
        let big = AgreementConfig { bootstrap: nb["resamples"].as_u64().unwrap() as usize, ..config };
        let sb = agreement(&x, &y, &big).unwrap();
        let sd = nb["mae_bootstrap_sd"].as_f64().unwrap();
        let b = big.bootstrap as f64;
        let mean_tol = 5.0 * sd * (2.0 / b).sqrt();
        let d_mean = (sb.mae_bootstrap_mean.value - nb["mae_bootstrap_mean"].as_f64().unwrap()).abs();
        assert!(
            d_mean < mean_tol,
            "{name}: bootstrap mean {} vs numpy's, diff {d_mean} > {mean_tol}",
            sb.mae_bootstrap_mean.value
        );
        for (ours, key) in [(sb.mae_ci_low.value, "mae_ci_low"), (sb.mae_ci_high.value, "mae_ci_high")] {
            for src in [key.to_string(), key.replace("mae_", "scipy_")] {
                let theirs = nb[&src].as_f64().unwrap();
                assert!((ours - theirs).abs() < 0.12 * sd, "{name}: {key} {ours} vs {src} {theirs} (sd {sd})");
            }
        }
        println!(
            "{name}: n = {}, MAE {:.6e} (boot {:.6e}, CI [{:.6e}, {:.6e}]), bias {:.6e}, LoA [{:.6e}, {:.6e}]; \
             numpy-rng boot mean diff {d_mean:.2e} (tol {mean_tol:.2e})",
            s.n,
            s.mae.value,
            s.mae_bootstrap_mean.value,
            s.mae_ci_low.value,
            s.mae_ci_high.value,
            s.bias.value,
            s.loa_low.value,
            s.loa_high.value
        );
    }
    println!(
        "largest relative error vs numpy: deterministic {worst_det:.2e}, shared-stream bootstrap {worst_boot:.2e}"
    );
}

#[test]
fn gaussian_process_matches_scipy() {
    let fx = fixture();
    for case in fx["gp"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let lambdas = f64s(&case["lambdas"]);
        let values = f64s(&case["values"]);
        let (lo, hi) = (case["lower"].as_f64().unwrap(), case["upper"].as_f64().unwrap());
        let h = &case["hyper"];
        let hyper = GpHyper {
            length_scale: h["length_scale"].as_f64().unwrap(),
            signal_variance: h["signal_variance"].as_f64().unwrap(),
            noise_variance: h["noise_variance"].as_f64().unwrap(),
        };
        let gp = GaussianProcess::with_hyper(&lambdas, &values, lo, hi, hyper).unwrap();
        assert_eq!(gp.jitter(), 0.0);
        let lml = case["log_marginal_likelihood"].as_f64().unwrap();
        assert!(
            rel_err(gp.log_marginal_likelihood(), lml) < 1e-10,
            "{name}: LML {} vs {lml}",
            gp.log_marginal_likelihood()
        );
        let scale = values.iter().fold(0.0f64, |a, v| a.max(v.abs()));
        for ((t, m), s) in f64s(&case["tests"]).iter().zip(f64s(&case["mean"])).zip(f64s(&case["sd"])) {
            let (pm, ps) = gp.predict(*t);
            assert!((pm - m).abs() < 1e-10 * scale.max(1.0), "{name} mean at {t}: {pm} vs {m}");
            assert!((ps - s).abs() < 1e-7 * scale.max(1.0), "{name} sd at {t}: {ps} vs {s}");
        }
        // The marginal-likelihood fit reaches scipy's multi-start L-BFGS-B optimum.
        let bounds = GpBounds::default();
        assert_eq!(bounds.signal_variance, (0.01, 100.0), "the fixture's box is the default box");
        let fitted = GaussianProcess::fit(&lambdas, &values, lo, hi, &bounds).unwrap();
        let best = case["max_log_marginal_likelihood"].as_f64().unwrap();
        let ours = fitted.log_marginal_likelihood();
        println!("{name}: fitted LML {ours:.6} (scipy max {best:.6}), hyper {:?}", fitted.hyper());
        assert!(ours > best - 1e-4, "{name}: fitted LML {ours} below scipy's maximum {best}");
    }
}

#[test]
fn acquisitions_match_scipy() {
    let fx = fixture();
    for c in fx["expected_improvement"].as_array().unwrap() {
        let f = |k: &str| c[k].as_f64().unwrap();
        let ei = expected_improvement(f("mean"), f("sd"), f("best"), f("xi"));
        assert!((ei - f("ei")).abs() < 1e-14 + 1e-12 * f("ei").abs(), "EI {ei} vs scipy {}", f("ei"));
    }
    for c in fx["normal"].as_array().unwrap() {
        let z = c["z"].as_f64().unwrap();
        let (cdf, pdf) = (c["cdf"].as_f64().unwrap(), c["pdf"].as_f64().unwrap());
        assert!(rel_err(normal_cdf(z), cdf) < 1e-13, "Φ({z}) = {} vs {cdf}", normal_cdf(z));
        assert!(rel_err(normal_pdf(z), pdf) < 1e-14, "φ({z}) = {} vs {pdf}", normal_pdf(z));
    }
}
