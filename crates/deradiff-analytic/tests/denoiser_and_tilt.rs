//! The exact denoiser against finite differences of the noised log-density, and the exact tilt
//! against numerical integration.

use candle_core::{Device, Tensor};
use deradiff_analytic::{mean_reward, ExactDenoiser, GaussianMixture, Reward};
use deradiff_core::{Denoiser, NoiseSchedule, PredictionType, TimestepSpacing, TrainingConfig};

fn mixture_2d() -> GaussianMixture {
    GaussianMixture::new(
        vec![0.2, 0.5, 0.3],
        vec![vec![-1.5, 0.5], vec![1.0, -1.0], vec![0.5, 2.5]],
        vec![vec![0.2, 0.6], vec![0.5, 0.1], vec![1.2, 0.3]],
    )
    .unwrap()
}

fn schedule() -> NoiseSchedule {
    let t = TrainingConfig::diffusers_default(TimestepSpacing::Leading);
    NoiseSchedule::new(&t.beta_schedule, t.num_train_timesteps).unwrap()
}

fn row(t: &Tensor) -> Vec<Vec<f64>> {
    t.to_vec2::<f64>().unwrap()
}

#[test]
fn epsilon_is_minus_sqrt_one_minus_alpha_times_the_finite_difference_score() {
    let data = mixture_2d();
    let model = ExactDenoiser::new(data.clone(), schedule(), PredictionType::Epsilon);
    let points = [[0.0, 0.0], [-1.2, 0.9], [2.0, -0.5], [0.4, 3.1], [-3.0, -2.0]];
    let x = Tensor::new(&points, &Device::Cpu).unwrap();
    let h = 1e-5;
    for a in [0.999, 0.9, 0.5, 0.1, 0.005] {
        let noised = data.noised(a).unwrap();
        let eps = row(&model.predict_at_alpha_bar(&x, a).unwrap());
        for (p, e) in points.iter().zip(&eps) {
            for j in 0..2 {
                let (mut up, mut down) = (p.to_vec(), p.to_vec());
                up[j] += h;
                down[j] -= h;
                let fd = (noised.log_density(&up).unwrap() - noised.log_density(&down).unwrap()) / (2.0 * h);
                let expected = -(1.0 - a).sqrt() * fd;
                let tol = 1e-6 * (1.0 + expected.abs());
                assert!((e[j] - expected).abs() < tol, "ᾱ = {a}, x = {p:?}, j = {j}: ε̂ {} vs FD {expected}", e[j]);
            }
            // The analytic score agrees with the finite difference too.
            let g = noised.grad_log_density(p).unwrap();
            for j in 0..2 {
                assert!((e[j] + (1.0 - a).sqrt() * g[j]).abs() < 1e-12);
            }
        }
    }
}

#[test]
fn v_and_sample_outputs_are_consistent_with_epsilon() {
    let data = mixture_2d();
    let x = Tensor::new(&[[0.3, -0.7], [1.9, 2.2], [-2.5, 0.1]], &Device::Cpu).unwrap();
    let s = schedule();
    let eps_m = ExactDenoiser::new(data.clone(), s.clone(), PredictionType::Epsilon);
    let x0_m = ExactDenoiser::new(data.clone(), s.clone(), PredictionType::Sample);
    let v_m = ExactDenoiser::new(data, s, PredictionType::VPrediction);
    // A fractional timestep: ᾱ comes from alpha_cumprod_at.
    for t in [0.0, 17.5, 400.0, 978.612244897959, 999.0] {
        let a = eps_m.alpha_bar(t);
        assert_eq!(a, eps_m.schedule().alpha_cumprod_at(t));
        let (eps, x0, v) = (
            row(&eps_m.predict(&x, t).unwrap()),
            row(&x0_m.predict(&x, t).unwrap()),
            row(&v_m.predict(&x, t).unwrap()),
        );
        let xs = row(&x);
        for i in 0..3 {
            for j in 0..2 {
                // x_t = √ᾱ x̂₀ + √(1−ᾱ) ε̂ (Tweedie), v = √ᾱ ε − √(1−ᾱ) x₀.
                let recon = a.sqrt() * x0[i][j] + (1.0 - a).sqrt() * eps[i][j];
                assert!((recon - xs[i][j]).abs() < 1e-9, "t = {t}: {recon} vs {}", xs[i][j]);
                let v_expected = a.sqrt() * eps[i][j] - (1.0 - a).sqrt() * x0[i][j];
                assert!((v[i][j] - v_expected).abs() < 1e-12);
            }
        }
    }
}

#[test]
fn nothing_overflows_at_small_noise_far_from_the_data() {
    let data = mixture_2d();
    let model = ExactDenoiser::new(data.clone(), schedule(), PredictionType::Sample);
    let x = Tensor::new(&[[60.0, -45.0], [-1e3, 1e3]], &Device::Cpu).unwrap();
    let a = 1.0 - 1e-10;
    let x0 = row(&model.predict_at_alpha_bar(&x, a).unwrap());
    for r in &x0 {
        assert!(r.iter().all(|v| v.is_finite()), "{r:?}");
    }
    // Far out, x̂₀ is x itself (the posterior of one component with almost no noise).
    assert!((x0[0][0] - 60.0).abs() < 1e-6 && (x0[0][1] + 45.0).abs() < 1e-6, "{:?}", x0[0]);
    let eps = ExactDenoiser::new(data, schedule(), PredictionType::Epsilon);
    let e = row(&eps.predict_at_alpha_bar(&x, a).unwrap());
    assert!(e.iter().flatten().all(|v| v.is_finite()));
    // f32 inputs come back as f32.
    let x32 = x.to_dtype(candle_core::DType::F32).unwrap();
    assert_eq!(eps.predict(&x32, 3.0).unwrap().dtype(), candle_core::DType::F32);
}

/// ∫ f over [lo, hi] by the composite Simpson rule with `n` (even) intervals.
fn simpson(f: impl Fn(f64) -> f64, lo: f64, hi: f64, n: usize) -> f64 {
    let h = (hi - lo) / n as f64;
    let mut s = f(lo) + f(hi);
    for i in 1..n {
        s += f(lo + i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 };
    }
    s * h / 3.0
}

fn normal_pdf(x: f64, m: f64, s2: f64) -> f64 {
    (-(x - m) * (x - m) / (2.0 * s2)).exp() / (2.0 * std::f64::consts::PI * s2).sqrt()
}

#[test]
fn tilt_weights_and_mean_agree_with_numerical_integration_in_1d() {
    let weights = [0.5, 0.3, 0.2];
    let means = [-2.0, 1.0, 3.5];
    let vars = [0.5, 1.0, 0.25];
    let data = GaussianMixture::new(
        weights.to_vec(),
        means.iter().map(|m| vec![*m]).collect(),
        vars.iter().map(|v| vec![*v]).collect(),
    )
    .unwrap();
    for (reward, beta) in [
        (Reward::linear(vec![1.0]).unwrap(), 2.0),
        (Reward::quadratic(vec![1.5], vec![0.7]).unwrap(), 0.8),
        (Reward::quadratic(vec![-0.5], vec![2.0]).unwrap(), 0.3),
    ] {
        let tilted = data.tilt(&reward, beta).unwrap();
        let r = |x: f64| reward.value(&[x]).unwrap();
        let (lo, hi, n) = (-40.0, 40.0, 40_000);
        let z: Vec<f64> = (0..3)
            .map(|k| simpson(|x| weights[k] * normal_pdf(x, means[k], vars[k]) * (r(x) / beta).exp(), lo, hi, n))
            .collect();
        let total: f64 = z.iter().sum();
        for (k, w) in tilted.weights().iter().enumerate() {
            assert!((w - z[k] / total).abs() < 1e-9, "β = {beta}: weight {k}: {w} vs {}", z[k] / total);
        }
        // The tilted density is p_ref · exp(r/β) / Z pointwise.
        for x in [-3.0, -0.5, 0.0, 1.7, 4.2] {
            let p_ref = data.log_density(&[x]).unwrap().exp();
            let expected = p_ref * (r(x) / beta).exp() / total;
            let got = tilted.log_density(&[x]).unwrap().exp();
            assert!((got - expected).abs() < 1e-9 * (1.0 + expected), "x = {x}: {got} vs {expected}");
        }
        // Exact mean reward vs the integral of r · p_β.
        let mean = simpson(|x| r(x) * data.log_density(&[x]).unwrap().exp() * (r(x) / beta).exp(), lo, hi, n) / total;
        let exact = reward.exact_mean(&tilted).unwrap();
        assert!((mean - exact).abs() < 1e-8 * (1.0 + exact.abs()), "{mean} vs {exact}");
        // And exact sampling has that mean reward (Monte Carlo, 5 standard errors).
        let samples = tilted.sample(20_000, 3).unwrap();
        let values = reward.evaluate(&samples).unwrap();
        let m = mean_reward(&reward, &samples).unwrap();
        let sd = (values.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / values.len() as f64).sqrt();
        assert!((m - exact).abs() < 5.0 * sd / (values.len() as f64).sqrt(), "{m} vs {exact} (sd {sd})");
    }
}

#[test]
fn tilting_at_tiny_beta_stays_finite() {
    let data = deradiff_analytic::demo_mixture(3).unwrap();
    let reward = deradiff_analytic::demo_linear_reward();
    let tilted = data.tilt(&reward, 1e-3).unwrap();
    assert!(tilted.log_weights().iter().all(|l| l.is_finite()));
    // As β → 0 a linear tilt shifts each mode by s² w / β and its log-weight grows like
    // Σ_j s_j² w_j² / (2β²): all the mass goes to the mode widest along w, component 2.
    assert!(tilted.weights()[2] > 0.999_999, "{:?}", tilted.weights());
    assert_eq!(data.tilt(&reward, f64::INFINITY).unwrap(), data);
}

#[test]
fn at_zero_terminal_snr_the_input_is_pure_noise() {
    // ᾱ = 0 (rescale_betas_zero_snr at the last timestep): x_t = ε, so ε̂ = x_t exactly, and
    // the best clean-sample guess is the data mean (v = −x̂₀ there).
    let data = mixture_2d();
    let points = [[0.0, 0.0], [-1.2, 0.9], [2.0, -0.5]];
    let x = Tensor::new(&points, &Device::Cpu).unwrap();
    let mean = data.mean();
    for (prediction, expected) in [
        (PredictionType::Epsilon, points.iter().map(|p| p.to_vec()).collect::<Vec<_>>()),
        (PredictionType::Sample, vec![mean.clone(); 3]),
        (PredictionType::VPrediction, vec![mean.iter().map(|m| -m).collect(); 3]),
    ] {
        let model = ExactDenoiser::new(data.clone(), schedule(), prediction);
        let got = row(&model.predict_at_alpha_bar(&x, 0.0).unwrap());
        for (g, e) in got.iter().zip(&expected) {
            for (a, b) in g.iter().zip(e) {
                assert!((a - b).abs() < 1e-12, "{prediction:?}: {g:?} vs {e:?}");
            }
        }
    }
}
