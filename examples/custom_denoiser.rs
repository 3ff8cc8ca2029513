//! Your own `Denoiser` in a realigned run beside deradiff's: the aligned UNet's guided ε is
//! passed through a user-written wrapper that caps its RMS (a crude guard against the
//! over-saturation large guidance scales cause), and the core `Sampler` fuses it with the
//! reference's plain guided ε at every step.
//!
//! Anything that implements `Denoiser::predict(x, timestep)` can take part: a model of your own,
//! a wrapper around ours, a closure (`FnDenoiser`).
//!
//!     cargo run --release --example custom_denoiser [REFERENCE [ALIGNED]]
//!
//! (defaults: the tiny test models committed with the repository).

use std::path::PathBuf;

use deradiff::sd::{LoadOptions, Request, StableDiffusion};
use deradiff::Tensor;
use deradiff::{Denoiser, NoObserver, Realigner, Sampler, SeededNoise};

/// Scales the inner denoiser's output down so that its root mean square is at most `max_rms`.
struct RmsCap<D> {
    inner: D,
    max_rms: f64,
}

impl<D: Denoiser> Denoiser for RmsCap<D> {
    fn predict(&self, x: &Tensor, timestep: f64) -> deradiff::Result<Tensor> {
        let out = self.inner.predict(x, timestep)?;
        let rms = out.sqr()?.mean_all()?.sqrt()?.to_dtype(deradiff::DType::F64)?.to_scalar::<f64>()?;
        if rms > self.max_rms {
            Ok(out.affine(self.max_rms / rms, 0.0)?)
        } else {
            Ok(out)
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("crates/deradiff-sd/tests/fixtures");
    let mut args = std::env::args().skip(1);
    let reference = args.next().map(PathBuf::from).unwrap_or_else(|| fixtures.join("tiny-sd"));
    let aligned = args.next().map(PathBuf::from).unwrap_or_else(|| fixtures.join("tiny-aligned-unet"));

    let sd = StableDiffusion::load(&reference, &[&aligned], &LoadOptions::default())?;
    let request = Request { prompts: vec!["a lighthouse at dusk".into()], steps: 20, ..Default::default() };
    let embeddings = sd.encode(&request)?;

    // deradiff's guided UNets (classifier-free guidance inside), reference first...
    let mut guided = sd.denoisers(embeddings.embeddings(), sd.guidance_scale(&request)?)?.into_iter();
    let (reference_eps, aligned_eps) = (guided.next().ok_or("no reference")?, guided.next().ok_or("no aligned")?);
    // ...and the aligned one wrapped in our own denoiser.
    let capped = RmsCap { inner: aligned_eps, max_rms: 1.0 };

    let scheduler = request.scheduler.build(sd.scheduler_config(), request.steps)?;
    let sampler = Sampler::new(scheduler.as_ref(), vec![&reference_eps, &capped], Realigner::two_model(0.5)?)?;
    let shape = sd.latent_shape(&request, embeddings.batch())?;
    let out =
        sampler.run(shape.to_vec(), sd.dtype(), sd.device(), &mut SeededNoise::new(request.seed), &mut NoObserver)?;

    let path = std::env::temp_dir().join("deradiff_custom_denoiser.png");
    sd.decode(&out.latent)?[0].save_png(&path)?;
    println!("{} steps, image written to {}", out.steps_taken, path.display());
    Ok(())
}
