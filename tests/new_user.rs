//! Three programs written as a new user of the `deradiff` facade would write them (issue 26):
//! an own `Denoiser` realigned with DDIM and DDPM, a Stable Diffusion loop with a λ ramp and an
//! observer, and a K = 2 fusion with a scheduler read from a `scheduler_config.json`. Each uses
//! the spelling the guide shows, with no cast, no type annotation and no second crate.

use std::path::PathBuf;

use deradiff::{DType, Device, Tensor};
use deradiff::{
    Ddim, DdimConfig, Ddpm, DdpmConfig, Denoiser, Flow, FnObserver, NoiseSchedule, Realigner, Result, Sampler,
    SchedulerConfig, SchedulerKind, SeededNoise, TrainingConfig,
};

/// The exact ε-predictor of data `N(mean, I)` under the variance-preserving process:
/// `x_t ~ N(√ᾱ m, I)`, so `E[ε | x_t] = √(1−ᾱ) (x_t − √ᾱ m)`.
struct GaussianData {
    mean: Vec<f64>,
    schedule: NoiseSchedule,
}

impl Denoiser for GaussianData {
    fn predict(&self, x: &Tensor, timestep: f64) -> Result<Tensor> {
        let a = self.schedule.alpha_cumprod_at(timestep);
        let mean = Tensor::new(self.mean.as_slice(), x.device())?.to_dtype(x.dtype())?;
        Ok(x.broadcast_sub(&mean.affine(a.sqrt(), 0.0)?)?.affine((1.0 - a).sqrt(), 0.0)?)
    }
}

fn column_means(samples: &Tensor) -> Vec<f64> {
    samples.mean(0).unwrap().to_dtype(DType::F64).unwrap().to_vec1().unwrap()
}

/// Program 1: data far outside [−1, 1], realigned with the default DDIM (η = 0.5) and DDPM
/// configs. The geometric mixture of two unit Gaussians' models at λ = 0.5 samples the Gaussian
/// at the mean of the means, (4, −3): the default configs do not clip x̂₀ (diffusers' class
/// default, `::diffusers()`, would pull every sample into [−1, 1]).
#[test]
fn an_own_denoiser_realigned_with_ddim_and_ddpm() {
    let training = TrainingConfig::diffusers_default(deradiff::TimestepSpacing::Leading);
    let schedule = NoiseSchedule::new(&training.beta_schedule, training.num_train_timesteps).unwrap();
    let reference = GaussianData { mean: vec![2.0, -1.0], schedule: schedule.clone() };
    let aligned = GaussianData { mean: vec![6.0, -5.0], schedule };

    let ddim = Ddim::new(DdimConfig { eta: 0.5, ..Default::default() }, 50).unwrap();
    let ddpm = Ddpm::new(DdpmConfig::default(), 50).unwrap();
    for (name, scheduler) in [("ddim", &ddim as &dyn deradiff::Scheduler), ("ddpm", &ddpm)] {
        let sampler = Sampler::new(scheduler, vec![&reference, &aligned], Realigner::two_model(0.5).unwrap()).unwrap();
        let out = sampler
            .run(&[4000, 2], DType::F64, &Device::Cpu, &mut SeededNoise::new(5), &mut deradiff::NoObserver)
            .unwrap();
        let mean = column_means(&out.latent);
        assert!((mean[0] - 4.0).abs() < 0.1 && (mean[1] + 3.0).abs() < 0.1, "{name}: mean {mean:?}");
    }
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("crates/deradiff-sd/tests/fixtures").join(name)
}

/// Program 2: SD with λ ramping from 0 to 1.5 over the steps, an observer closure that records
/// each step's weights and stops after three steps.
#[test]
fn a_stable_diffusion_loop_with_a_lambda_ramp_and_an_observer() {
    use deradiff::sd::{LoadOptions, Request, StableDiffusion};

    let sd =
        StableDiffusion::load(fixture("tiny-sd"), &[fixture("tiny-aligned-unet")], &LoadOptions::default()).unwrap();
    let request = Request { prompts: vec!["a red cube".into()], steps: 4, seed: 3, ..Default::default() };
    let ramp = Realigner::two_model_schedule(|step, steps| 1.5 * step as f64 / (steps - 1) as f64);
    let mut seen = Vec::new();
    let mut observer = FnObserver::new(|event| {
        seen.push(event.weights[1]);
        if event.step == 2 {
            Flow::Stop
        } else {
            Flow::Continue
        }
    });
    let out = sd.generate(&request, &ramp, &mut observer).unwrap();
    assert_eq!(seen, vec![0.0, 0.5, 1.0]);
    assert_eq!(out.steps_taken, 3);
    assert!(out.stopped_early);
    // The pipeline's guided denoisers go into a core sampler without a cast.
    let encoded = sd.encode(&request).unwrap();
    let guided = sd.denoisers(encoded.embeddings(), encoded.guidance_scale()).unwrap();
    let scheduler = SchedulerKind::Ddim { eta: 0.0 }.build(sd.scheduler_config(), 2).unwrap();
    let sampler = Sampler::from_models(scheduler.as_ref(), &guided, Realigner::two_model(0.5).unwrap()).unwrap();
    let shape = sd.latent_shape(&request, 1).unwrap();
    let latent = sampler
        .run(&shape, DType::F32, &Device::Cpu, &mut SeededNoise::new(1), &mut deradiff::NoObserver)
        .unwrap()
        .latent;
    assert_eq!(latent.dims(), &shape);
}

/// Program 3: a reference and two aligned models (K = 2 rewards) fused with weights
/// `[1 − λ₁ − λ₂, λ₁, λ₂]`, the sampler chosen by a checkpoint's `scheduler_config.json`.
#[test]
fn a_k2_fusion_with_a_scheduler_from_its_config_file() {
    let dir = std::env::temp_dir().join(format!("deradiff-new-user-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("scheduler_config.json");
    std::fs::write(
        &path,
        r#"{"_class_name": "DDIMScheduler", "beta_schedule": "scaled_linear", "beta_start": 0.00085,
            "beta_end": 0.012, "clip_sample": false, "set_alpha_to_one": false, "steps_offset": 1,
            "num_train_timesteps": 1000, "prediction_type": "epsilon"}"#,
    )
    .unwrap();
    let config = SchedulerConfig::from_file(&path).unwrap();
    let kind = SchedulerKind::from_config(&config).unwrap();
    assert_eq!(kind.class_name(), "DDIMScheduler");
    let scheduler = kind.build(&config, 30).unwrap();

    let schedule =
        NoiseSchedule::new(&DdimConfig::from_diffusers(&config).unwrap().training.beta_schedule, 1000).unwrap();
    let model = |mean: [f64; 2]| GaussianData { mean: mean.to_vec(), schedule: schedule.clone() };
    let models = [model([0.0, 0.0]), model([2.0, 0.0]), model([0.0, 4.0])];
    let realigner = Realigner::multi_reward(&[0.5, 0.25]).unwrap();
    let sampler = Sampler::from_models(scheduler.as_ref(), &models, realigner).unwrap();
    let out =
        sampler.run(&[4000, 2], DType::F64, &Device::Cpu, &mut SeededNoise::new(9), &mut deradiff::NoObserver).unwrap();
    // Equal variances: the fused Gaussian's mean is Σ w_i m_i = (1, 1).
    let mean = column_means(&out.latent);
    assert!((mean[0] - 1.0).abs() < 0.1 && (mean[1] - 1.0).abs() < 0.1, "mean {mean:?}");

    // The same with Stable Diffusion: two aligned UNets, the request's sampler from the file in
    // one call; equal, bit for bit, to setting the pipeline's config and the kind by hand.
    use deradiff::sd::{LoadOptions, Request, StableDiffusion};
    let aligned = [fixture("tiny-aligned-unet"), fixture("tiny-aligned-unet")];
    let mut sd = StableDiffusion::load(fixture("tiny-sd"), &aligned, &LoadOptions::default()).unwrap();
    let mut request = Request { prompts: vec!["a red cube".into()], steps: 3, seed: 2, ..Default::default() };
    request.use_scheduler_config_file(&path).unwrap();
    assert_eq!(request.scheduler, SchedulerKind::Ddim { eta: 0.0 });
    let fusion = Realigner::multi_reward(&[0.3, 0.4]).unwrap();
    let one_call = sd.generate(&request, &fusion, &mut deradiff::NoObserver).unwrap();
    sd.set_scheduler_config(config);
    let by_hand = Request { scheduler: SchedulerKind::Ddim { eta: 0.0 }, scheduler_config: None, ..request };
    let two_calls = sd.generate(&by_hand, &fusion, &mut deradiff::NoObserver).unwrap();
    let same = (&one_call.latents - &two_calls.latents).unwrap().abs().unwrap().max_all().unwrap();
    assert_eq!(same.to_scalar::<f32>().unwrap(), 0.0);
    std::fs::remove_dir_all(&dir).ok();
}
