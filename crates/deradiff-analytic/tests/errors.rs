//! Bad inputs give errors with a message, never a panic.

use candle_core::{Device, Tensor};
use deradiff_analytic::{
    coupled_distance, demo_linear_reward, demo_mixture, energy_distance, mean_reward, run_study, Error, ExactDenoiser,
    GaussianMixture, Reward, StudyConfig,
};
use deradiff_core::{Denoiser, SchedulerKind, TimestepSpacing, TrainingConfig};

fn assert_err<T: std::fmt::Debug>(r: Result<T, Error>, needle: &str) {
    match r {
        Ok(v) => panic!("expected an error mentioning {needle:?}, got Ok({v:?})"),
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains(needle), "error {msg:?} does not mention {needle:?}");
        }
    }
}

#[test]
fn mixtures_are_checked() {
    let m = || vec![vec![0.0], vec![1.0]];
    let v = || vec![vec![1.0], vec![1.0]];
    assert_err(GaussianMixture::new(vec![1.0, 0.0], m(), v()), "weight 1 is 0");
    assert_err(GaussianMixture::new(vec![1.0, -2.0], m(), v()), "positive");
    assert_err(GaussianMixture::new(vec![f64::NAN, 1.0], m(), v()), "weight 0 is NaN");
    assert_err(GaussianMixture::new(vec![f64::INFINITY, 1.0], m(), v()), "finite");
    assert_err(GaussianMixture::new(vec![], vec![], vec![]), "no components");
    assert_err(GaussianMixture::new(vec![1.0], m(), v()), "one of each per component");
    assert_err(GaussianMixture::new(vec![1.0, 1.0], m(), vec![vec![1.0], vec![0.0]]), "variance of component 1");
    assert_err(GaussianMixture::new(vec![1.0, 1.0], m(), vec![vec![1.0], vec![-1.0]]), "positive");
    assert_err(GaussianMixture::new(vec![1.0, 1.0], vec![vec![0.0], vec![f64::NAN]], v()), "mean of component 1");
    assert_err(GaussianMixture::new(vec![1.0, 1.0], vec![vec![0.0], vec![1.0, 2.0]], v()), "dimension is 1");
    assert_err(GaussianMixture::gaussian(vec![], vec![]), "dimension must be at least 1");
    assert_err(GaussianMixture::from_log_weights(vec![0.0, f64::NEG_INFINITY], m(), v()), "log-weight 1");
    let ok = GaussianMixture::new(vec![2.0, 6.0], m(), v()).unwrap();
    let w = ok.weights();
    assert!((w[0] - 0.25).abs() < 1e-15 && (w[1] - 0.75).abs() < 1e-15, "{w:?}");
    assert_err(ok.log_density(&[0.0, 1.0]), "dimension 2");
    assert_err(ok.noised(1.5), "[0, 1]");
    assert_err(ok.sample(0, 1), "at least 1");
    assert_err(demo_mixture(0), "at least 1 component");
    assert_err(demo_mixture(17), "1 to 16");
}

#[test]
fn rewards_and_betas_are_checked() {
    assert_err(Reward::quadratic(vec![1.0], vec![-0.1]), "curvature 0 is -0.1");
    assert_err(Reward::quadratic(vec![1.0, 2.0], vec![0.0]), "2 linear coefficients but 1 curvatures");
    assert_err(Reward::linear(vec![f64::NAN]), "finite");
    assert_err(Reward::linear(vec![]), "at least 1");
    let data = demo_mixture(3).unwrap();
    let r = demo_linear_reward();
    assert_err(data.tilt(&r, 0.0), "positive");
    assert_err(data.tilt(&r, -1.0), "β = -1");
    assert_err(data.tilt(&r, f64::NAN), "β = NaN");
    assert_err(data.tilt(&Reward::linear(vec![1.0]).unwrap(), 1.0), "dimension 1 but the data has dimension 2");
    assert_err(r.value(&[1.0]), "dimension");
    assert_err(r.exact_mean(&GaussianMixture::gaussian(vec![0.0], vec![1.0]).unwrap()), "dimension");
    let three_d = Tensor::zeros((4, 3), candle_core::DType::F64, &Device::Cpu).unwrap();
    assert_err(mean_reward(&r, &three_d), "dimension");
}

#[test]
fn metrics_and_denoiser_check_shapes() {
    let a = Tensor::zeros((4, 2), candle_core::DType::F64, &Device::Cpu).unwrap();
    let b = Tensor::zeros((5, 2), candle_core::DType::F64, &Device::Cpu).unwrap();
    let c = Tensor::zeros((4, 3), candle_core::DType::F64, &Device::Cpu).unwrap();
    let flat = Tensor::zeros(8, candle_core::DType::F64, &Device::Cpu).unwrap();
    assert_err(coupled_distance(&a, &b), "one shape");
    assert_err(coupled_distance(&a, &flat), "[n, d]");
    assert_err(energy_distance(&a, &c), "dimensions 2 and 3");
    assert!(energy_distance(&a, &b).unwrap() == 0.0);
    let model = ExactDenoiser::from_training(
        demo_mixture(3).unwrap(),
        &TrainingConfig::diffusers_default(TimestepSpacing::Leading),
    )
    .unwrap();
    let e = model.predict(&c, 10.0).unwrap_err().to_string();
    assert!(e.contains("[n, 2]"), "{e}");
    assert!(model.predict(&a, f64::NAN).is_err());
    assert_err(model.predict_at_alpha_bar(&a, 1.0), "ᾱ must lie in [0, 1)");
    assert_err(model.predict_at_alpha_bar(&a, -0.1), "ᾱ must lie in [0, 1)");
}

#[test]
fn study_configs_are_checked() {
    let base = || {
        let mut c = StudyConfig::new(demo_mixture(3).unwrap(), demo_linear_reward(), 1.0, vec![2.0, 0.5]);
        c.samples = 8;
        c.steps = 4;
        c
    };
    let check = |f: &dyn Fn(&mut StudyConfig), needle: &str| {
        let mut c = base();
        f(&mut c);
        assert_err(c.validate(), needle);
        assert_err(run_study(&c).map(|o| o.result), needle);
    };
    check(&|c| c.anchor_beta = -1.0, "anchor β is -1");
    check(&|c| c.anchor_beta = 0.0, "anchor β is 0");
    check(&|c| c.anchor_beta = f64::INFINITY, "finite");
    check(&|c| c.target_betas = vec![2.0, -0.5], "target β #2 is -0.5");
    check(&|c| c.target_betas = vec![0.0], "must be positive");
    check(&|c| c.target_betas = vec![], "no target βs");
    check(&|c| c.samples = 0, "samples must be at least 1");
    check(&|c| c.steps = 0, "steps must be at least 1");
    check(&|c| c.scheduler = SchedulerKind::Ddim { eta: 1.5 }, "η must lie in [0, 1]");
    check(&|c| c.reward = Reward::linear(vec![1.0, 2.0, 3.0]).unwrap(), "dimension 3");
    // More steps than training timesteps: the core's error comes through.
    let mut c = base();
    c.steps = 5000;
    assert_err(run_study(&c).map(|o| o.result), "trained with only 1000");
    assert!(run_study(&base()).is_ok());
}
