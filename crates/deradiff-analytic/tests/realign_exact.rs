//! DeRaDiff is exact for one Gaussian and a linear reward, under every scheduler and output
//! parameterisation; λ = 0 and λ = 1 reproduce the reference and the anchor sample for sample.

use candle_core::{DType, Device, Tensor};
use deradiff_analytic::{coupled_distance, demo_linear_reward, demo_mixture, ExactDenoiser, GaussianMixture, Reward};
use deradiff_core::{
    Ddim, DdimConfig, Ddpm, DdpmConfig, Denoiser, DpmAlgorithm, DpmSolverConfig, DpmSolverMultistep, DpmSolverType,
    Euler, EulerAncestral, EulerAncestralConfig, EulerConfig, Heun, HeunConfig, Lcm, LcmConfig, NoObserver,
    PredictionType, Realigner, Sampler, Scheduler, SeededNoise, SigmaSpacing, TimestepSpacing, TrainingConfig, UniPc,
    UniPcConfig, UniPcSolverType, VarianceType,
};

const N: usize = 48;
const STEPS: usize = 20;

fn schedulers(training: &TrainingConfig) -> Vec<(String, Box<dyn Scheduler>)> {
    let ddim = |eta: f64| -> Box<dyn Scheduler> {
        Box::new(
            Ddim::new(
                DdimConfig {
                    training: training.clone(),
                    eta,
                    set_alpha_to_one: false,
                    clip_sample: None,
                    use_clipped_model_output: false,
                },
                STEPS,
            )
            .unwrap(),
        )
    };
    vec![
        (
            "ddpm".into(),
            Box::new(
                Ddpm::new(
                    DdpmConfig {
                        training: training.clone(),
                        variance_type: VarianceType::FixedSmall,
                        clip_sample: None,
                    },
                    STEPS,
                )
                .unwrap(),
            ),
        ),
        ("ddim eta=0".into(), ddim(0.0)),
        ("ddim eta=1".into(), ddim(1.0)),
        (
            "euler-a".into(),
            Box::new(EulerAncestral::new(EulerAncestralConfig { training: training.clone() }, STEPS).unwrap()),
        ),
    ]
}

fn sample(scheduler: &dyn Scheduler, denoisers: Vec<&dyn Denoiser>, realigner: Realigner, d: usize) -> Tensor {
    let sampler = Sampler::new(scheduler, denoisers, realigner).unwrap();
    sampler.run(&[N, d], DType::F64, &Device::Cpu, &mut SeededNoise::new(11), &mut NoObserver).unwrap().latent
}

#[test]
fn one_gaussian_and_a_linear_reward_realign_exactly() {
    let data = GaussianMixture::gaussian(vec![0.5, -1.0, 2.0], vec![0.3, 1.5, 0.8]).unwrap();
    let reward = Reward::linear(vec![1.0, -0.5, 2.0]).unwrap();
    let anchor_beta = 2.0;
    let trainings = [
        TrainingConfig::stable_diffusion(PredictionType::Epsilon, TimestepSpacing::Leading, 1),
        TrainingConfig::stable_diffusion(PredictionType::VPrediction, TimestepSpacing::Trailing, 0),
        TrainingConfig {
            prediction_type: PredictionType::Sample,
            ..TrainingConfig::diffusers_default(TimestepSpacing::Linspace)
        },
    ];
    let mut checked = 0;
    for training in &trainings {
        let reference = ExactDenoiser::from_training(data.clone(), training).unwrap();
        let anchor = ExactDenoiser::from_training(data.tilt(&reward, anchor_beta).unwrap(), training).unwrap();
        for (name, scheduler) in schedulers(training) {
            for lambda in [0.0, 0.25, 0.5, 1.0, 2.0, 4.0] {
                let beta = if lambda == 0.0 { f64::INFINITY } else { anchor_beta / lambda };
                let exact = ExactDenoiser::from_training(data.tilt(&reward, beta).unwrap(), training).unwrap();
                let target = sample(scheduler.as_ref(), vec![&exact], Realigner::new(vec![1.0]).unwrap(), 3);
                let derad =
                    sample(scheduler.as_ref(), vec![&reference, &anchor], Realigner::two_model(lambda).unwrap(), 3);
                let dist = coupled_distance(&derad, &target).unwrap();
                assert!(
                    dist <= 1e-10,
                    "{name}, {:?}: coupled distance {dist:e} at λ = {lambda}",
                    training.prediction_type
                );
                // The runs really moved the samples: the target's mean follows β.
                let mean = target.mean(0).unwrap().to_vec1::<f64>().unwrap();
                let expected = exact.mixture().mean();
                let spread = mean.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
                assert!(spread < 1.2, "{name}: sample mean {mean:?} far from {expected:?}");
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 3 * 4 * 6);
}

#[test]
fn lambda_zero_and_one_reproduce_reference_and_anchor_for_mixtures() {
    let data = demo_mixture(3).unwrap();
    let reward = deradiff_analytic::demo_quadratic_reward();
    let training = TrainingConfig::diffusers_default(TimestepSpacing::Leading);
    let reference = ExactDenoiser::from_training(data.clone(), &training).unwrap();
    let anchor = ExactDenoiser::from_training(data.tilt(&reward, 0.7).unwrap(), &training).unwrap();
    for (name, scheduler) in schedulers(&training).into_iter().chain(new_schedulers(&training, 8)) {
        let single = Realigner::new(vec![1.0]).unwrap();
        let ref_samples = sample(scheduler.as_ref(), vec![&reference], single.clone(), 2);
        let anchor_samples = sample(scheduler.as_ref(), vec![&anchor], single, 2);
        let at0 = sample(scheduler.as_ref(), vec![&reference, &anchor], Realigner::two_model(0.0).unwrap(), 2);
        let at1 = sample(scheduler.as_ref(), vec![&reference, &anchor], Realigner::two_model(1.0).unwrap(), 2);
        let v = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        assert_eq!(v(&at0), v(&ref_samples), "{name}: λ = 0 is not the reference");
        assert_eq!(v(&at1), v(&anchor_samples), "{name}: λ = 1 is not the anchor");
        // And the two models really differ, so the check above has teeth.
        assert!(coupled_distance(&ref_samples, &anchor_samples).unwrap() > 0.1, "{name}");
    }
    // With a mixture and λ strictly between, DeRaDiff is not exact (the testbed can see it).
    let scheduler = schedulers(&training).remove(0).1;
    let exact = ExactDenoiser::from_training(data.tilt(&reward, 1.4).unwrap(), &training).unwrap();
    let target = sample(scheduler.as_ref(), vec![&exact], Realigner::new(vec![1.0]).unwrap(), 2);
    let derad = sample(scheduler.as_ref(), vec![&reference, &anchor], Realigner::two_model(0.5).unwrap(), 2);
    assert!(coupled_distance(&derad, &target).unwrap() > 1e-3);
}

#[test]
fn linear_reward_demo_case_is_exact_through_the_study() {
    let mut config = deradiff_analytic::StudyConfig::new(
        demo_mixture(1).unwrap(),
        demo_linear_reward(),
        1.0,
        vec![4.0, 2.0, 1.0, 0.5, 0.25],
    );
    config.samples = 64;
    config.steps = 15;
    let out = deradiff_analytic::run_study(&config).unwrap();
    for row in &out.result.rows {
        assert!(row.coupled_distance <= 1e-10, "λ = {}: {:e}", row.lambda, row.coupled_distance);
        assert!(row.abs_diff_pct.unwrap() < 1e-8, "λ = {}: {:?}", row.lambda, row.abs_diff_pct);
    }
}

/// The samplers beyond the paper's three: deterministic (Euler, Heun, DPM-Solver++, UniPC: the
/// zero-variance limit, each model's own history) and stochastic (DPM-Solver++ SDE, LCM), with
/// the options that change the arithmetic most (Karras / beta σ, orders 1–3, the UniPC
/// corrector, Heun's second evaluation).
fn new_schedulers(training: &TrainingConfig, steps: usize) -> Vec<(String, Box<dyn Scheduler>)> {
    let t = || training.clone();
    let dpm = |order: usize, algorithm: DpmAlgorithm, spacing: SigmaSpacing| -> Box<dyn Scheduler> {
        let c = DpmSolverConfig {
            training: t(),
            solver_order: order,
            algorithm,
            sigma_spacing: spacing,
            solver_type: if order == 2 { DpmSolverType::Heun } else { DpmSolverType::Midpoint },
            ..DpmSolverConfig::default()
        };
        Box::new(DpmSolverMultistep::new(c, steps).unwrap())
    };
    let unipc = |order: usize, solver_type: UniPcSolverType, predict_x0: bool| -> Box<dyn Scheduler> {
        let c = UniPcConfig { training: t(), solver_order: order, solver_type, predict_x0, ..UniPcConfig::default() };
        Box::new(UniPc::new(c, steps).unwrap())
    };
    vec![
        ("euler".into(), Box::new(Euler::new(EulerConfig { training: t(), ..EulerConfig::default() }, steps).unwrap())),
        (
            "euler karras".into(),
            Box::new(
                Euler::new(
                    EulerConfig { training: t(), sigma_spacing: SigmaSpacing::Karras, ..EulerConfig::default() },
                    steps,
                )
                .unwrap(),
            ),
        ),
        (
            "heun beta".into(),
            Box::new(
                Heun::new(HeunConfig { training: t(), sigma_spacing: SigmaSpacing::Beta, clip_sample: None }, steps)
                    .unwrap(),
            ),
        ),
        ("dpm++ 2m karras".into(), dpm(2, DpmAlgorithm::DpmSolverPlusPlus, SigmaSpacing::Karras)),
        ("dpm++ 3m".into(), dpm(3, DpmAlgorithm::DpmSolverPlusPlus, SigmaSpacing::Timesteps)),
        ("dpm++ 2m sde karras".into(), dpm(2, DpmAlgorithm::SdeDpmSolverPlusPlus, SigmaSpacing::Karras)),
        ("dpm++ 3m sde exponential".into(), dpm(3, DpmAlgorithm::SdeDpmSolverPlusPlus, SigmaSpacing::Exponential)),
        ("unipc bh2 2".into(), unipc(2, UniPcSolverType::Bh2, true)),
        ("unipc bh1 3".into(), unipc(3, UniPcSolverType::Bh1, true)),
        ("unipc bh2 3 eps".into(), unipc(3, UniPcSolverType::Bh2, false)),
        ("lcm".into(), Box::new(Lcm::new(LcmConfig { training: t(), ..LcmConfig::default() }, steps.min(8)).unwrap())),
    ]
}

#[test]
fn every_new_scheduler_realigns_one_gaussian_exactly() {
    let data = GaussianMixture::gaussian(vec![0.5, -1.0, 2.0], vec![0.3, 1.5, 0.8]).unwrap();
    let reward = Reward::linear(vec![1.0, -0.5, 2.0]).unwrap();
    let anchor_beta = 2.0;
    let trainings = [
        TrainingConfig::stable_diffusion(PredictionType::Epsilon, TimestepSpacing::Leading, 1),
        TrainingConfig::stable_diffusion(PredictionType::VPrediction, TimestepSpacing::Trailing, 0),
    ];
    let mut checked = 0;
    for training in &trainings {
        let reference = ExactDenoiser::from_training(data.clone(), training).unwrap();
        let anchor = ExactDenoiser::from_training(data.tilt(&reward, anchor_beta).unwrap(), training).unwrap();
        for (name, scheduler) in new_schedulers(training, 12) {
            for lambda in [0.0, 0.5, 1.0, 2.5] {
                let beta = if lambda == 0.0 { f64::INFINITY } else { anchor_beta / lambda };
                let exact = ExactDenoiser::from_training(data.tilt(&reward, beta).unwrap(), training).unwrap();
                let target = sample(scheduler.as_ref(), vec![&exact], Realigner::new(vec![1.0]).unwrap(), 3);
                let derad =
                    sample(scheduler.as_ref(), vec![&reference, &anchor], Realigner::two_model(lambda).unwrap(), 3);
                let dist = coupled_distance(&derad, &target).unwrap();
                assert!(
                    dist <= 1e-10,
                    "{name}, {:?}: coupled distance {dist:e} at λ = {lambda}",
                    training.prediction_type
                );
                let mean = target.mean(0).unwrap().to_vec1::<f64>().unwrap();
                let expected = exact.mixture().mean();
                let spread = mean.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
                assert!(spread < 1.2, "{name}: sample mean {mean:?} far from {expected:?}");
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 2 * 11 * 4);
}
