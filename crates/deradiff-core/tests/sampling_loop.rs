//! The sampling loop (paper Algorithm 1) and the scheduler contract: stateless posteriors,
//! seeded determinism independent of K, observers, and typed errors.

use candle_core::{DType, Device, Tensor};
use deradiff_core::*;

fn values(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap()
}

/// A toy model whose ε prediction depends on x and t, so that trajectories are non-trivial.
struct Toy {
    gain: f64,
}

impl Denoiser for Toy {
    fn predict(&self, x: &Tensor, timestep: f64) -> Result<Tensor> {
        Ok(x.affine(self.gain, 0.01 * timestep / 1000.0)?.tanh()?)
    }
}

fn schedulers(n: usize) -> Vec<(&'static str, Box<dyn Scheduler>)> {
    let sd = SchedulerConfig::stable_diffusion_v1_5();
    let mut ddpm_learned = DdpmConfig::from_diffusers(&sd).unwrap();
    ddpm_learned.variance_type = VarianceType::LearnedRange;
    vec![
        ("ddpm", SchedulerKind::Ddpm.build(&sd, n).unwrap()),
        ("ddim-eta0", SchedulerKind::Ddim { eta: 0.0 }.build(&sd, n).unwrap()),
        ("ddim-eta1", SchedulerKind::Ddim { eta: 1.0 }.build(&sd, n).unwrap()),
        ("euler-a", SchedulerKind::EulerAncestral.build(&sd, n).unwrap()),
        ("ddpm-learned-range", Box::new(Ddpm::new(ddpm_learned, n).unwrap())),
    ]
}

#[test]
fn posterior_is_stateless() {
    let dev = Device::Cpu;
    let x = Tensor::new(&[[0.3f64, -1.2, 2.0, 0.7]], &dev).unwrap();
    let out = Tensor::new(&[[0.1f64, 0.4, -0.9, 1.1]], &dev).unwrap();
    let out2 = Tensor::cat(&[&out, &out.affine(0.5, 0.0).unwrap()], 1).unwrap();
    for (name, s) in schedulers(10) {
        let o = if name == "ddpm-learned-range" { &out2 } else { &out };
        // Call order must not matter: 5, 2, 5 (diffusers' Euler ancestral would have advanced
        // a hidden step counter in between).
        let a = s.posterior(&x, o, 5).unwrap();
        let _ = s.posterior(&x, o, 2).unwrap();
        let b = s.posterior(&x, o, 5).unwrap();
        assert_eq!(values(&a.mean), values(&b.mean), "{name}");
        assert_eq!(
            values(&a.variance.to_tensor_like(&a.mean).unwrap()),
            values(&b.variance.to_tensor_like(&b.mean).unwrap()),
            "{name}"
        );
        assert_eq!(values(&s.scale_model_input(&x, 5).unwrap()), values(&s.scale_model_input(&x, 5).unwrap()));
    }
}

#[test]
fn last_step_has_zero_or_floor_variance() {
    let x = Tensor::new(&[[0.3f64, -1.2]], &Device::Cpu).unwrap();
    for (name, s) in schedulers(10) {
        if name == "ddpm-learned-range" {
            continue;
        }
        let p = s.posterior(&x, &x, s.num_steps() - 1).unwrap();
        let v = p.variance.as_scalar().unwrap();
        match name {
            // SD 1.5's leading spacing ends at t = 1 > 0: diffusers' fixed_small floor.
            "ddpm" => assert_eq!(v, 1e-20),
            // SD 1.5 has set_alpha_to_one = false: past the end ᾱ = ᾱ_0 < 1, so η = 1 keeps
            // a small variance, as in diffusers.
            "ddim-eta1" => assert!(v > 0.0 && v < 1e-3, "{v}"),
            _ => assert_eq!(v, 0.0, "{name}"),
        }
    }
    let mut c = DdimConfig::from_diffusers(&SchedulerConfig::stable_diffusion_v1_5()).unwrap();
    c.eta = 1.0;
    c.set_alpha_to_one = true;
    let s = Ddim::new(c, 10).unwrap();
    assert_eq!(s.posterior(&x, &x, 9).unwrap().variance.as_scalar(), Some(0.0));
}

#[test]
fn scheduler_inputs_are_validated() {
    let dev = Device::Cpu;
    let x = Tensor::zeros((1, 4, 2, 2), DType::F32, &dev).unwrap();
    for (name, s) in schedulers(10) {
        let out = if name == "ddpm-learned-range" {
            Tensor::zeros((1, 8, 2, 2), DType::F32, &dev).unwrap()
        } else {
            x.clone()
        };
        assert!(matches!(s.posterior(&x, &out, 10), Err(Error::StepOutOfRange { step: 10, num_steps: 10 })));
        assert!(matches!(s.scale_model_input(&x, 11), Err(Error::StepOutOfRange { .. })));
        let wrong = Tensor::zeros((1, 3, 2, 2), DType::F32, &dev).unwrap();
        assert!(matches!(s.posterior(&x, &wrong, 0), Err(Error::ShapeMismatch { .. })), "{name}");
        let wrong_dtype = out.to_dtype(DType::F64).unwrap();
        assert!(matches!(s.posterior(&x, &wrong_dtype, 0), Err(Error::DTypeMismatch { .. })), "{name}");
    }
}

#[test]
fn half_precision_latents_keep_their_dtype() {
    let x = Tensor::new(&[[0.3f32, -1.2]], &Device::Cpu).unwrap().to_dtype(DType::F16).unwrap();
    for (name, s) in schedulers(10) {
        if name == "ddpm-learned-range" {
            continue;
        }
        let p = s.posterior(&x, &x, 3).unwrap();
        assert_eq!(p.mean.dtype(), DType::F16, "{name}");
        assert_eq!(s.scale_model_input(&x, 3).unwrap().dtype(), DType::F16);
    }
}

fn run(scheduler: &dyn Scheduler, models: Vec<&dyn Denoiser>, realigner: Realigner, seed: u64) -> Result<SampleOutput> {
    let sampler = Sampler::new(scheduler, models, realigner)?;
    sampler.run(&[2, 3], DType::F64, &Device::Cpu, &mut SeededNoise::new(seed), &mut NoObserver)
}

#[test]
fn same_seed_is_bit_identical_whatever_the_number_of_models() {
    let (a, b, c) = (Toy { gain: 0.5 }, Toy { gain: -0.3 }, Toy { gain: 0.9 });
    for (name, s) in schedulers(12) {
        if name == "ddpm-learned-range" {
            continue;
        }
        let single = run(s.as_ref(), vec![&a], Realigner::new(vec![1.0]).unwrap(), 7).unwrap();
        let again = run(s.as_ref(), vec![&a], Realigner::new(vec![1.0]).unwrap(), 7).unwrap();
        assert_eq!(values(&single.latent), values(&again.latent), "{name}: same seed");
        // λ = 0 with two models and weights [1, 0, 0] with three: the same noise stream, and
        // the reference posterior returned bit for bit, so the same latent bit for bit.
        let two = run(s.as_ref(), vec![&a, &b], Realigner::two_model(0.0).unwrap(), 7).unwrap();
        let three = run(s.as_ref(), vec![&a, &b, &c], Realigner::new(vec![1.0, 0.0, 0.0]).unwrap(), 7).unwrap();
        assert_eq!(values(&single.latent), values(&two.latent), "{name}: K = 2, λ = 0");
        assert_eq!(values(&single.latent), values(&three.latent), "{name}: K = 3");
        // λ = 1 reproduces the aligned model alone.
        let aligned = run(s.as_ref(), vec![&b], Realigner::new(vec![1.0]).unwrap(), 7).unwrap();
        let lambda1 = run(s.as_ref(), vec![&a, &b], Realigner::two_model(1.0).unwrap(), 7).unwrap();
        assert_eq!(values(&aligned.latent), values(&lambda1.latent), "{name}: λ = 1");
        // Another seed gives another sample (except for deterministic DDIM, whose only noise is x_T).
        let other = run(s.as_ref(), vec![&a], Realigner::new(vec![1.0]).unwrap(), 8).unwrap();
        assert_ne!(values(&single.latent), values(&other.latent), "{name}: other seed");
    }
}

#[test]
fn interpolation_lies_between_models_for_equal_variances() {
    // Equal scalar variances: the fused mean is exactly (1−λ)μ_ref + λμ_aligned at every step,
    // so with deterministic DDIM the first step's latent is the convex combination.
    let (a, b) = (Toy { gain: 0.5 }, Toy { gain: -0.3 });
    let s = SchedulerKind::Ddim { eta: 0.0 }.build(&SchedulerConfig::stable_diffusion_v1_5(), 1).unwrap();
    let ra = run(s.as_ref(), vec![&a], Realigner::new(vec![1.0]).unwrap(), 3).unwrap();
    let rb = run(s.as_ref(), vec![&b], Realigner::new(vec![1.0]).unwrap(), 3).unwrap();
    let mix = run(s.as_ref(), vec![&a, &b], Realigner::two_model(0.25).unwrap(), 3).unwrap();
    for ((x, y), m) in values(&ra.latent).iter().zip(values(&rb.latent)).zip(values(&mix.latent)) {
        assert!((0.75 * x + 0.25 * y - m).abs() < 1e-12);
    }
}

#[test]
fn observer_sees_every_step_and_can_stop() {
    let a = Toy { gain: 0.5 };
    let s = SchedulerKind::EulerAncestral.build(&SchedulerConfig::stable_diffusion_xl(), 8).unwrap();
    let sampler = Sampler::new(s.as_ref(), vec![&a, &a], Realigner::two_model(0.5).unwrap()).unwrap();
    let mut seen = Vec::new();
    let mut obs = |e: &StepEvent<'_>| {
        seen.push((e.step, e.timestep, e.posteriors.len()));
        assert_eq!(e.num_steps, 8);
        if e.step == 4 {
            Flow::Stop
        } else {
            Flow::Continue
        }
    };
    let out = sampler.run(&[1, 2], DType::F32, &Device::Cpu, &mut SeededNoise::new(1), &mut obs).unwrap();
    assert_eq!(out.steps_taken, 5);
    assert!(out.stopped_early);
    assert_eq!(seen.iter().map(|s| s.0).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);
    assert_eq!(seen[0].1, s.timesteps()[0]);
    assert!(seen.iter().all(|s| s.2 == 2));
}

#[test]
fn non_finite_model_output_stops_naming_the_step_and_the_model() {
    let bad =
        FnDenoiser(|x: &Tensor, t: f64| if t < 500.0 { Ok(x.affine(f64::NAN, 0.0)?) } else { Ok(x.zeros_like()?) });
    let good = Toy { gain: 0.1 };
    let s = SchedulerKind::Ddim { eta: 0.0 }.build(&SchedulerConfig::stable_diffusion_v1_5(), 10).unwrap();
    let first_bad = s.timesteps().iter().position(|&t| t < 500.0).unwrap();
    match run(s.as_ref(), vec![&bad], Realigner::new(vec![1.0]).unwrap(), 0) {
        Err(e @ Error::NonFiniteModelOutput { step, timestep, model: 0 }) => {
            assert_eq!(step, first_bad);
            assert_eq!(timestep, s.timesteps()[first_bad]);
            assert!(e.to_string().contains("the output of model 0"), "{e}");
        }
        other => panic!("expected NonFiniteModelOutput, got {other:?}"),
    }
    // The aligned model is the culprit, before any fusion (which would only see a NaN mean).
    match run(s.as_ref(), vec![&good, &bad], Realigner::two_model(0.5).unwrap(), 0) {
        Err(Error::NonFiniteModelOutput { step, model: 1, .. }) => assert_eq!(step, first_bad),
        other => panic!("expected NonFiniteModelOutput of model 1, got {other:?}"),
    }
    // Finite outputs and weights that extrapolate far: the fusion (or the latent, naming the
    // weights) is blamed, never a model.
    let other = Toy { gain: -0.7 };
    match run(s.as_ref(), vec![&good, &other], Realigner::two_model(1e30).unwrap(), 0) {
        Err(e @ Error::NonFiniteModelOutput { .. }) => panic!("a model was blamed: {e}"),
        Err(e @ Error::NonFiniteLatent { .. }) => assert!(e.to_string().contains("1e30"), "{e}"),
        Err(_) => {}
        Ok(_) => panic!("λ = 1e30 sampled"),
    }
}

#[test]
fn sampler_and_realigner_reject_bad_input() {
    let a = Toy { gain: 0.5 };
    let s = SchedulerKind::Ddpm.build(&SchedulerConfig::stable_diffusion_v1_5(), 4).unwrap();
    assert!(matches!(
        Sampler::new(s.as_ref(), vec![&a], Realigner::two_model(0.5).unwrap()),
        Err(Error::WeightCountMismatch { .. })
    ));
    assert!(matches!(Sampler::new(s.as_ref(), vec![], Realigner::new(vec![1.0]).unwrap()), Err(Error::NoModels)));
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        assert!(matches!(Realigner::two_model(bad), Err(Error::InvalidWeights(_))));
        assert!(matches!(Realigner::multi_reward(&[0.2, bad]), Err(Error::InvalidWeights(_))));
    }
    assert!(matches!(Realigner::new(vec![0.5, 0.6]), Err(Error::InvalidWeights(_))));
    assert!(matches!(Realigner::new(vec![]), Err(Error::InvalidWeights(_))));
    assert!(matches!(Realigner::multi_reward(&[]), Err(Error::InvalidWeights(_))));
    assert!(matches!(Realigner::per_step(vec![vec![1.0], vec![0.5, 0.5]]), Err(Error::InvalidWeights(_))));
    // A per-step schedule shorter than the run is an error when the sampler is built.
    let r = Realigner::two_model_per_step(&[0.5, 0.5]).unwrap();
    let err = Sampler::new(s.as_ref(), vec![&a, &a], r).err();
    assert!(matches!(err, Some(Error::WeightScheduleLength { schedule_steps: 2, num_steps: 4 })), "{err:?}");
    // Multi-reward weights.
    let r = Realigner::multi_reward(&[0.25, 0.5]).unwrap();
    assert_eq!(r.weights(0).unwrap(), &[0.25, 0.25, 0.5]);
    assert_eq!(r.num_models(), 3);
}

#[test]
fn per_step_weights_are_used_at_their_step() {
    let dev = Device::Cpu;
    let p0 = Posterior::scalar(Tensor::new(&[0.0f64], &dev).unwrap(), 1.0);
    let p1 = Posterior::scalar(Tensor::new(&[1.0f64], &dev).unwrap(), 1.0);
    let r = Realigner::two_model_per_step(&[0.0, 0.5, 2.0]).unwrap();
    let at = |s| values(&r.fuse(&[p0.clone(), p1.clone()], s).unwrap().mean)[0];
    assert_eq!((at(0), at(1), at(2)), (0.0, 0.5, 2.0));
}

#[test]
fn extrapolation_with_unequal_variances_names_the_step_or_falls_back() {
    let dev = Device::Cpu;
    let p0 = Posterior::scalar(Tensor::new(&[0.0f32, 1.0], &dev).unwrap(), 1.0);
    let p1 = Posterior::scalar(Tensor::new(&[1.0f32, 3.0], &dev).unwrap(), 2.0);
    let r = Realigner::two_model(3.0).unwrap();
    assert!(matches!(r.fuse(&[p0.clone(), p1.clone()], 17), Err(Error::NonPositivePrecision { step: 17, .. })));
    let fallback = r.with_policy(PrecisionPolicy::MeanOfMeans).fuse(&[p0, p1], 17).unwrap();
    assert_eq!(values(&fallback.mean), vec![-2.0 * 0.0 + 3.0 * 1.0, -2.0 * 1.0 + 3.0 * 3.0]);
    assert_eq!(fallback.variance.as_scalar(), Some(2.0));
    // Zero variance beside a positive one.
    let z = Posterior::scalar(Tensor::new(&[0.0f32, 1.0], &dev).unwrap(), 0.0);
    let q = Posterior::scalar(Tensor::new(&[0.0f32, 1.0], &dev).unwrap(), 0.5);
    assert!(matches!(
        Realigner::two_model(0.5).unwrap().fuse(&[z, q], 4),
        Err(Error::ZeroVarianceConflict { step: 4, .. })
    ));
}

#[test]
fn per_step_schedule_must_match_the_number_of_steps() {
    let a = Toy { gain: 0.5 };
    let b = Toy { gain: -0.3 };
    let s = SchedulerKind::EulerAncestral.build(&SchedulerConfig::stable_diffusion_v1_5(), 30).unwrap();
    // 50 λ for a 30-step run: an error at construction, not a silent use of entries 0–29.
    let fifty = Realigner::two_model_per_step(&[0.5; 50]).unwrap();
    assert_eq!(fifty.schedule_len(), Some(50));
    match Sampler::new(s.as_ref(), vec![&a, &b], fifty.clone()) {
        Err(e @ Error::WeightScheduleLength { schedule_steps: 50, num_steps: 30 }) => {
            let msg = e.to_string();
            assert!(msg.contains("50") && msg.contains("30") && msg.contains("two_model_schedule"), "{msg}");
        }
        Err(other) => panic!("expected WeightScheduleLength, got {other:?}"),
        Ok(_) => panic!("a 50-step schedule was accepted for 30 steps"),
    }
    assert!(matches!(fifty.for_steps(30), Err(Error::WeightScheduleLength { .. })));
    // Exactly 30: accepted, and unchanged by for_steps.
    let thirty = Realigner::two_model_per_step(&[0.5; 30]).unwrap();
    assert_eq!(thirty.for_steps(30).unwrap(), thirty);
    assert!(Sampler::new(s.as_ref(), vec![&a, &b], thirty).is_ok());
    // Constant weights fit any run.
    let constant = Realigner::two_model(0.5).unwrap();
    assert_eq!(constant.schedule_len(), None);
    assert_eq!(constant.for_steps(7).unwrap(), constant);
}

#[test]
fn function_schedule_is_evaluated_for_the_run() {
    let a = Toy { gain: 0.5 };
    let b = Toy { gain: -0.3 };
    // λ = 0 for the first half of the run, 1 after: the run must equal the reference alone for
    // the first half and the aligned model alone after, for any number of steps.
    let schedule = Realigner::two_model_schedule(|step, steps| if 2 * step < steps { 0.0 } else { 1.0 });
    assert_eq!(schedule.num_models(), 2);
    assert!(matches!(schedule.weights(0), Err(Error::InvalidArgument(_))));
    for n in [6, 9] {
        let s = SchedulerKind::Ddim { eta: 1.0 }.build(&SchedulerConfig::stable_diffusion_v1_5(), n).unwrap();
        let sampler = Sampler::new(s.as_ref(), vec![&a, &b], schedule.clone()).unwrap();
        let fixed = sampler.realigner();
        assert_eq!(fixed.schedule_len(), Some(n));
        for step in 0..n {
            let expected: &[f64] = if 2 * step < n { &[1.0, 0.0] } else { &[0.0, 1.0] };
            assert_eq!(fixed.weights(step).unwrap(), expected, "n = {n}, step {step}");
        }
        // The same weights given as a list give the same run, bit for bit.
        let listed: Vec<f64> = (0..n).map(|step| if 2 * step < n { 0.0 } else { 1.0 }).collect();
        let by_fn = run(s.as_ref(), vec![&a, &b], schedule.clone(), 3).unwrap();
        let by_list = run(s.as_ref(), vec![&a, &b], Realigner::two_model_per_step(&listed).unwrap(), 3).unwrap();
        assert_eq!(values(&by_fn.latent), values(&by_list.latent));
    }
    // Bad values from the function are errors naming the step.
    let nan_late = Realigner::two_model_schedule(|step, _| if step == 3 { f64::NAN } else { 0.5 });
    match nan_late.for_steps(5) {
        Err(Error::InvalidWeights(msg)) => assert!(msg.contains("step 3"), "{msg}"),
        other => panic!("expected InvalidWeights, got {other:?}"),
    }
    let wrong_count = Realigner::from_schedule(3, |_, _| vec![0.5, 0.5]).unwrap();
    assert!(matches!(wrong_count.for_steps(4), Err(Error::InvalidWeights(_))));
    assert!(matches!(Realigner::from_schedule(0, |_, _| vec![]), Err(Error::InvalidWeights(_))));
    let not_normalised = Realigner::from_schedule(2, |_, _| vec![0.5, 0.6]).unwrap();
    assert!(matches!(not_normalised.for_steps(2), Err(Error::InvalidWeights(_))));
    // Multi-reward through a function: [1 − Σλ, λ₁, λ₂].
    let multi = Realigner::from_schedule(3, |step, steps| {
        let l = step as f64 / steps as f64;
        vec![1.0 - 1.5 * l, l, 0.5 * l]
    })
    .unwrap()
    .with_policy(PrecisionPolicy::MeanOfMeans)
    .for_steps(4)
    .unwrap();
    assert_eq!(multi.weights(2).unwrap(), &[0.25, 0.5, 0.25]);
    assert_eq!(multi.policy(), PrecisionPolicy::MeanOfMeans);
}

#[test]
fn observer_sees_each_models_output() {
    let a = Toy { gain: 0.5 };
    let b = Toy { gain: -0.3 };
    let models: [&dyn Denoiser; 2] = [&a, &b];
    for (name, s) in schedulers(5).into_iter().filter(|(name, _)| *name != "ddpm-learned-range") {
        let sampler = Sampler::new(s.as_ref(), models.to_vec(), Realigner::two_model(0.25).unwrap()).unwrap();
        let z = Tensor::new(&[[0.3f64, -1.1, 0.8]], &Device::Cpu).unwrap();
        // The latent each step starts from: x_T, then every event's new latent.
        let mut x = z.affine(s.init_noise_sigma(), 0.0).unwrap();
        let mut checked = 0;
        let mut obs = |e: &StepEvent<'_>| {
            assert_eq!(e.model_outputs.len(), 2, "{name}");
            let x_in = s.scale_model_input(&x, e.step).unwrap();
            for ((out, model), posterior) in e.model_outputs.iter().zip(models).zip(e.posteriors) {
                // Exactly what the model returned for this step's input…
                assert_eq!(values(out), values(&model.predict(&x_in, e.timestep).unwrap()), "{name}");
                // …and what the scheduler turned into that model's posterior.
                let expected = s.posterior(&x, out, e.step).unwrap();
                assert_eq!(values(&posterior.mean), values(&expected.mean), "{name}");
            }
            assert_ne!(values(&e.model_outputs[0]), values(&e.model_outputs[1]), "{name}");
            x = e.latent.clone();
            checked += 1;
            Flow::Continue
        };
        sampler.run_from(&z, &mut SeededNoise::new(5), &mut obs).unwrap();
        assert_eq!(checked, 5, "{name}");
    }
}

/// An own model with data far outside [−1, 1]: x₀-prediction of a point mass. Default DDIM / DDPM
/// configs do not clip x̂₀, so the realigned run ends exactly where the mixture of the two models'
/// targets says; diffusers' class preset (`::diffusers()`) clips, which is right only for data in
/// [−1, 1].
#[test]
fn default_configs_do_not_clip_an_own_models_prediction() {
    let target =
        |x0: [f64; 2]| FnDenoiser(move |x: &Tensor, _t: f64| Ok(Tensor::new(&[x0], x.device())?.to_dtype(x.dtype())?));
    let (reference, aligned) = (target([2.0, -1.0]), target([6.0, -5.0]));
    let mut training = TrainingConfig::diffusers_default(TimestepSpacing::Leading);
    training.prediction_type = PredictionType::Sample;
    let ddim = Ddim::new(DdimConfig { training: training.clone(), eta: 0.5, ..Default::default() }, 10).unwrap();
    let ddpm = Ddpm::new(DdpmConfig { training: training.clone(), ..Default::default() }, 10).unwrap();
    for (name, s) in [("ddim", &ddim as &dyn Scheduler), ("ddpm", &ddpm)] {
        let sampler = Sampler::new(s, vec![&reference, &aligned], Realigner::two_model(0.5).unwrap()).unwrap();
        let mut last_mean = None;
        let mut observer = FnObserver::new(|event| {
            last_mean = Some(values(&event.fused.mean));
            Flow::Continue
        });
        sampler.run(&[1, 2], DType::F64, &Device::Cpu, &mut SeededNoise::new(3), &mut observer).unwrap();
        let mean = last_mean.unwrap();
        assert!((mean[0] - 4.0).abs() < 1e-9 && (mean[1] + 3.0).abs() < 1e-9, "{name}: {mean:?}");
    }
    let clipped = Ddim::new(DdimConfig { training, ..DdimConfig::diffusers() }, 10).unwrap();
    let sampler = Sampler::new(&clipped, vec![&reference, &aligned], Realigner::two_model(0.5).unwrap()).unwrap();
    let out = sampler.run(&[1, 2], DType::F64, &Device::Cpu, &mut SeededNoise::new(3), &mut NoObserver).unwrap();
    assert_eq!(values(&out.latent), vec![1.0, -1.0], "diffusers' preset clips x̂₀ to [−1, 1]");
}

/// The observer sees each step's weights as applied: a λ ramp over the steps.
#[test]
fn step_events_carry_the_weights_of_their_step() {
    let (a, b) = (Toy { gain: 0.5 }, Toy { gain: -0.3 });
    let scheduler = Ddim::new(DdimConfig::default(), 4).unwrap();
    let models = [a, b];
    let ramp = Realigner::two_model_per_step(&[0.0, 0.5, 1.0, 1.5]).unwrap();
    let sampler = Sampler::from_models(&scheduler, &models, ramp).unwrap();
    let mut seen = Vec::new();
    let mut observer = FnObserver::new(|event| {
        seen.push(event.weights.to_vec());
        Flow::Continue
    });
    sampler.run(&[2, 3], DType::F64, &Device::Cpu, &mut SeededNoise::new(1), &mut observer).unwrap();
    assert_eq!(seen, vec![vec![1.0, 0.0], vec![0.5, 0.5], vec![0.0, 1.0], vec![-0.5, 1.5]]);
}
