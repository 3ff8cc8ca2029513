//! Realign two models with the core API: a reference and an "aligned" model whose data are
//! Gaussians N(0, 1) and N(2, 1); λ moves the samples' mean to 2λ (exactly, for Gaussians), and
//! λ > 1 extrapolates.
//!
//! Run: `cargo run --release --example realign_basics`

use deradiff::*;

/// The exact ε-predictor for data N(m, 1) under the variance-preserving process:
/// x_t ~ N(√ᾱ m, 1), so ε = √(1−ᾱ) (x − √ᾱ m).
struct GaussianData {
    mean: f64,
    schedule: NoiseSchedule,
}

impl Denoiser for GaussianData {
    fn predict(&self, x: &Tensor, timestep: f64) -> Result<Tensor> {
        let a = self.schedule.alpha_cumprod_at(timestep);
        Ok(x.affine((1.0 - a).sqrt(), -(1.0 - a).sqrt() * a.sqrt() * self.mean)?)
    }
}

fn main() -> Result<()> {
    // A checkpoint's scheduler config (here SDXL's preset), sampled with Euler ancestral.
    let config = SchedulerConfig::stable_diffusion_xl();
    let scheduler = SchedulerKind::EulerAncestral.build(&config, 30)?;
    let schedule = EulerAncestralConfig::from_diffusers(&config)?.training.beta_schedule;
    let schedule = NoiseSchedule::new(&schedule, 1000)?;

    let reference = GaussianData { mean: 0.0, schedule: schedule.clone() };
    let aligned = GaussianData { mean: 2.0, schedule };

    println!("  λ    sample mean   expected");
    for lambda in [0.0, 0.25, 0.5, 1.0, 1.5] {
        let sampler = Sampler::new(scheduler.as_ref(), vec![&reference, &aligned], Realigner::two_model(lambda)?)?;
        // Same seed for every λ: the differences come from λ alone.
        let out = sampler.run(&[4096, 1], DType::F64, &Device::Cpu, &mut SeededNoise::new(0), &mut NoObserver)?;
        let mean = out.latent.mean_all()?.to_scalar::<f64>()?;
        println!("{lambda:5.2}   {mean:10.4}   {:8.4}", 2.0 * lambda);
    }
    Ok(())
}
