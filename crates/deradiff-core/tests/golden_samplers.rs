//! Golden test: Euler, Heun, DPM-Solver++, UniPC and LCM against HuggingFace diffusers 0.42.
//!
//! The fixture `tests/fixtures/diffusers_samplers.json` is written by
//! `scripts/gen_sampler_fixtures.py` (its header has the method). Each case is a whole sampling
//! run of one diffusers class with its options, at 10, 25 and 50 steps (LCM also 1–8), with
//! ε- and v-prediction (and `sample` for one configuration per class): diffusers'
//! `scheduler_config.json`, timesteps, float32 sigmas, `init_noise_sigma`, and for every step
//! diffusers' output `y` (float32, from diffusers' own trajectory) and its float64 twin's — the
//! same step in float64 arithmetic on diffusers' float32 schedule, which is what deradiff
//! computes. The model outputs and noises are reproduced here from the run's seed.
//!
//! We build each scheduler from the config as a user would (`SchedulerKind` from `_class_name`,
//! then `build`), replay the run through a [`SolverState`] with one model, feeding diffusers'
//! latent of every step, and check:
//! * timesteps: integers exactly; fractional ones (Euler, Heun) within `TIMESTEP_ULPS` float32
//!   ulps (deradiff reproduces numpy's float32 log, which `_sigma_to_t` reads; what remains is
//!   the σ table's last bit);
//! * sigmas and `init_noise_sigma` within `SIGMA_ULPS` float32 ulp (torch's float32 square root);
//! * every step's output against the float64 twin within `TWIN_TOL` and against diffusers as
//!   shipped within `REL_TOL = 2e-5` (`|ours − ref| ≤ tol · max(|ref|, 1)`); the latter is waived,
//!   and counted, only where diffusers' float32 output is itself further than `REL_TOL` from the
//!   twin (float32 cancellation).
//!
//! Run with `-- --nocapture` for the worst errors per class.

use std::collections::BTreeMap;
use std::str::FromStr;

use candle_core::{Device, Tensor};
use deradiff_core::{SchedulerConfig, SchedulerKind, SolverState};
use serde::Deserialize;

const REL_TOL: f64 = 2e-5;
/// Ours against diffusers' step in float64 on its own float32 schedule. What separates the two is
/// a σ one float32 ulp apart (6e-8 relative) where torch's float32 square root is not correctly
/// rounded, amplified by the steps' `1/r_k` terms (observed ≤ 3.6e-7, see the printout).
const TWIN_TOL: f64 = 1e-6;
const SIGMA_ULPS: u32 = 1;
/// With `rescale_betas_zero_snr`, torch's float32 square root (not correctly rounded in a few
/// places) sits inside diffusers' rescaling too, and one σ comes out two ulps from ours.
const SIGMA_ULPS_ZERO_SNR: u32 = 2;
const TIMESTEP_ULPS: u32 = 1;
const FIXTURE: &str = include_str!("fixtures/diffusers_samplers.json");

#[derive(Deserialize)]
struct Fixture {
    diffusers_version: String,
    cases: Vec<OptionSet>,
}

#[derive(Deserialize)]
struct OptionSet {
    name: String,
    class: String,
    config: serde_json::Value,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    num_inference_steps: usize,
    timesteps: Vec<f64>,
    sigmas: Option<Vec<f64>>,
    init_noise_sigma: f64,
    runs: Vec<Run>,
}

#[derive(Deserialize)]
struct Run {
    prediction_type: String,
    seed: u64,
    #[serde(rename = "x_T")]
    x_t: Vec<f64>,
    scaled_0: Vec<f64>,
    /// `[y, d]`: diffusers' float32 output, the twin's deviation `(y64 − y)/max(|y|, 1)` in 1e-10.
    steps: Vec<(Vec<f64>, Vec<i64>)>,
}

/// The generator's `Draws`: a 64-bit LCG, each draw k/1000 for k in [−2000, 2000].
struct Draws(u64);

impl Draws {
    fn take(&mut self, n: usize) -> Vec<f64> {
        // (k − 2000)/1000 exactly as Python computes it: an integer difference, then one division.
        (0..n)
            .map(|_| {
                self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (((self.0 >> 33) % 4001) as i64 - 2000) as f64 / 1000.0
            })
            .collect()
    }
}

fn rel(ours: f64, reference: f64) -> f64 {
    if ours == reference {
        return 0.0;
    }
    let e = (ours - reference).abs() / reference.abs().max(1.0);
    if e.is_nan() {
        f64::INFINITY
    } else {
        e
    }
}

fn ulps(a: f32, b: f32) -> u32 {
    if a == b {
        return 0;
    }
    if a.is_sign_negative() != b.is_sign_negative() {
        return u32::MAX;
    }
    a.to_bits().abs_diff(b.to_bits())
}

#[derive(Default)]
struct Worst {
    value: f64,
    at: String,
}

impl Worst {
    fn update(&mut self, value: f64, at: impl FnOnce() -> String) {
        if self.at.is_empty() || value > self.value {
            *self = Worst { value, at: at() };
        }
    }
}

#[derive(Default)]
struct Stats {
    runs: usize,
    steps: usize,
    vs_shipped: Worst,
    vs_twin: Worst,
    shipped_vs_twin: Worst,
    waived: usize,
    sigma_ulps: u32,
    timestep_ulps: u32,
}

/// The fixture's shortest float32 decimals as the float32 values they name.
fn f32_values(v: &[f64]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x as f32)).collect()
}

fn tensor(v: &[f64]) -> Tensor {
    Tensor::from_vec(v.to_vec(), (1, v.len()), &Device::Cpu).unwrap()
}

fn values(t: &Tensor) -> Vec<f64> {
    t.flatten_all().unwrap().to_vec1::<f64>().unwrap()
}

fn check_case(set: &OptionSet, case: &Case, stats: &mut Stats, failures: &mut Vec<String>) {
    let n = case.num_inference_steps;
    let name = format!("{}/n{n}", set.name);
    let kind = SchedulerKind::from_str(&set.class).unwrap_or_else(|e| panic!("{name}: {e}"));
    for run in &case.runs {
        let at = format!("{name}/{}", run.prediction_type);
        let mut config = set.config.clone();
        config["prediction_type"] = serde_json::Value::from(run.prediction_type.clone());
        let config = SchedulerConfig::from_json(&config.to_string()).unwrap_or_else(|e| panic!("{at}: config: {e}"));
        let scheduler = kind.build(&config, n).unwrap_or_else(|e| panic!("{at}: building: {e}"));

        // Timesteps, sigmas, init_noise_sigma.
        let ours = scheduler.timesteps();
        if ours.len() != case.timesteps.len() {
            failures.push(format!("{at}: {} timesteps, diffusers {}", ours.len(), case.timesteps.len()));
            continue;
        }
        for (i, (&a, &b)) in ours.iter().zip(&case.timesteps).enumerate() {
            let d = ulps(a as f32, b as f32);
            stats.timestep_ulps = stats.timestep_ulps.max(d);
            let integer = b.fract() == 0.0 && kind_has_integer_timesteps(kind);
            if (integer && a != b) || a != f64::from(a as f32) || d > TIMESTEP_ULPS {
                failures.push(format!("{at}: timestep {i} is {a}, diffusers {b} ({d} float32 ulps)"));
            }
        }
        let sigma_ulps = if set.config["rescale_betas_zero_snr"] == true { SIGMA_ULPS_ZERO_SNR } else { SIGMA_ULPS };
        if let Some(theirs) = &case.sigmas {
            let ours = scheduler.sigmas().expect("a σ-space scheduler has sigmas");
            let used = ours.len();
            if used > theirs.len() || used != scheduler.num_steps() + 1 {
                failures.push(format!("{at}: {used} sigmas, diffusers {}", theirs.len()));
            }
            for (i, (&a, &b)) in ours.iter().zip(theirs).enumerate() {
                let d = ulps(a as f32, b as f32);
                stats.sigma_ulps = stats.sigma_ulps.max(d);
                if d > sigma_ulps {
                    failures.push(format!("{at}: sigma {i} is {a:e}, diffusers {b:e} ({d} float32 ulps)"));
                }
            }
        }
        let d = ulps(scheduler.init_noise_sigma() as f32, case.init_noise_sigma as f32);
        if d > SIGMA_ULPS {
            failures.push(format!(
                "{at}: init_noise_sigma {} vs diffusers {} ({d} ulps)",
                scheduler.init_noise_sigma(),
                case.init_noise_sigma
            ));
        }

        // The run.
        let mut draws = Draws(run.seed);
        let z_t = draws.take(2);
        let expected_x_t: Vec<f64> = z_t.iter().map(|z| f64::from(*z as f32 * case.init_noise_sigma as f32)).collect();
        assert_eq!(expected_x_t, f32_values(&run.x_t), "{at}: the draws are not the generator's");
        let mut x = tensor(&expected_x_t);
        let scaled = values(&scheduler.scale_model_input(&x, 0).unwrap());
        for (a, b) in scaled.iter().zip(&run.scaled_0) {
            if rel(*a, *b) > 4e-7 {
                failures.push(format!("{at}: scale_model_input {a:e}, diffusers {b:e}"));
            }
        }
        let stochastic = set.class == "LCMScheduler" || set.config["algorithm_type"] == "sde-dpmsolver++";
        let mut state = SolverState::new(scheduler.as_ref(), 1).unwrap();
        assert_eq!(run.steps.len(), scheduler.num_steps(), "{at}: steps");
        for (i, (y, dev)) in run.steps.iter().enumerate() {
            let y = &f32_values(y);
            let o = tensor(&draws.take(2));
            let posterior = match state.posteriors(&x, &[o], i) {
                Ok(mut p) => p.remove(0),
                Err(e) => {
                    failures.push(format!("{at} step {i}: {e}"));
                    break;
                }
            };
            let z = if stochastic { draws.take(2) } else { vec![0.0; 2] };
            let out = values(&posterior.sample_with(&tensor(&z)).unwrap());
            if !stochastic {
                assert_eq!(posterior.variance.as_scalar(), Some(0.0), "{at} step {i}: a deterministic step");
            }
            state.advance(&[1.0]).unwrap();
            for j in 0..y.len() {
                let y64 = y[j] + dev[j] as f64 * 1e-10 * y[j].abs().max(1.0);
                let (e32, e64, rounding) = (rel(out[j], y[j]), rel(out[j], y64), rel(y[j], y64));
                let place = || format!("{at} step {i} elem {j}");
                stats.vs_twin.update(e64, place);
                stats.shipped_vs_twin.update(rounding, place);
                if e64 > TWIN_TOL {
                    failures.push(format!("{} : ours {:e}, float64 twin {y64:e} (rel {e64:.2e})", place(), out[j]));
                }
                if rounding > REL_TOL {
                    stats.waived += 1;
                    continue;
                }
                stats.vs_shipped.update(e32, place);
                if e32 > REL_TOL {
                    failures.push(format!("{} : ours {:e}, diffusers {:e} (rel {e32:.2e})", place(), out[j], y[j]));
                }
            }
            stats.steps += 1;
            x = tensor(y);
        }
        stats.runs += 1;
    }
}

fn kind_has_integer_timesteps(kind: SchedulerKind) -> bool {
    !matches!(kind, SchedulerKind::Euler | SchedulerKind::Heun)
}

#[test]
fn samplers_match_diffusers() {
    let fixture: Fixture = serde_json::from_str(FIXTURE).expect("fixture parses");
    assert!(fixture.diffusers_version.starts_with("0.42"), "fixture from diffusers {}", fixture.diffusers_version);
    let mut by_class: BTreeMap<String, Stats> = BTreeMap::new();
    let mut failures = Vec::new();
    for set in &fixture.cases {
        for case in &set.cases {
            check_case(set, case, by_class.entry(set.class.clone()).or_default(), &mut failures);
        }
    }
    for (class, s) in &by_class {
        eprintln!("{class}: {} runs, {} steps", s.runs, s.steps);
        eprintln!("  vs float64 twin       worst rel {:.3e} at {}", s.vs_twin.value, s.vs_twin.at);
        eprintln!("  vs diffusers float32  worst rel {:.3e} at {}", s.vs_shipped.value, s.vs_shipped.at);
        eprintln!(
            "  diffusers' own float32 vs twin: worst {:.3e} at {}; {} elements beyond {REL_TOL:e} (shipped check waived)",
            s.shipped_vs_twin.value, s.shipped_vs_twin.at, s.waived
        );
        eprintln!("  sigmas ≤ {} float32 ulps, timesteps ≤ {} ulps", s.sigma_ulps, s.timestep_ulps);
    }
    for class in [
        "EulerDiscreteScheduler",
        "HeunDiscreteScheduler",
        "DPMSolverMultistepScheduler",
        "UniPCMultistepScheduler",
        "LCMScheduler",
    ] {
        assert!(by_class.get(class).is_some_and(|s| s.steps > 0), "no {class} steps in the fixture");
    }
    if !failures.is_empty() {
        let shown = failures.iter().take(60).cloned().collect::<Vec<_>>().join("\n");
        panic!("{} mismatches against diffusers (first 60):\n{shown}", failures.len());
    }
}
