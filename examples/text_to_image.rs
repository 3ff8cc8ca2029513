//! Realigned text-to-image: a reference Stable Diffusion checkpoint and a UNet aligned from it
//! (e.g. DPO), sampled at several λ with the same seed, so each image differs by λ alone
//! (λ = 0: the reference; 1: the aligned model; 0.5: the model aligned at twice its β; > 1
//! extrapolates).
//!
//! Run on the tiny random test models committed with the repository (the images are noise
//! patterns, but every stage — tokenizer, CLIP, guided UNets, realigned Euler-ancestral steps,
//! VAE — is the real one):
//!
//!     cargo run --release --example text_to_image
//!
//! On real checkpoints (diffusers layout, safetensors), e.g. the paper's SD 1.5 pair:
//!
//!     cargo run --release --example text_to_image -- \
//!         stable-diffusion-v1-5 dpo-sd1.5-text2image-v1 "a red fox in the snow" 50 out/
//!
//! Arguments: `[REFERENCE [ALIGNED [PROMPT [STEPS [OUT_DIR]]]]]`; the device comes from
//! `DERADIFF_DEVICE` (`cpu` by default, `cuda` with `--features cuda`).

use std::path::PathBuf;

use deradiff::sd::{parse_device, LoadOptions, Request, RgbImage, StableDiffusion};
use deradiff::{Flow, Realigner, SeededNoise, StepEvent};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("crates/deradiff-sd/tests/fixtures");
    let mut args = std::env::args().skip(1);
    let reference = args.next().map(PathBuf::from).unwrap_or_else(|| fixtures.join("tiny-sd"));
    let aligned = args.next().map(PathBuf::from).unwrap_or_else(|| fixtures.join("tiny-aligned-unet"));
    let prompt = args.next().unwrap_or_else(|| "a red cube on a wooden table, studio light".into());
    let steps = args.next().map(|s| s.parse()).transpose()?.unwrap_or(25);
    let out_dir = args.next().map(PathBuf::from).unwrap_or_else(|| std::env::temp_dir().join("deradiff_text_to_image"));
    let device = parse_device(&std::env::var("DERADIFF_DEVICE").unwrap_or_else(|_| "cpu".into()))?;

    // Load once: the reference's text encoder and VAE serve both UNets.
    let sd = StableDiffusion::load(&reference, &[&aligned], &LoadOptions { device, ..Default::default() })?;
    let request =
        Request { prompts: vec![prompt.clone()], steps, guidance_scale: Some(7.5), seed: 42, ..Default::default() };
    // Encode the prompt once for every λ and both UNets.
    let embeddings = sd.encode(&request)?;

    let mut images = Vec::new();
    for lambda in [0.0, 0.5, 1.0, 1.5] {
        let mut progress = |e: &StepEvent<'_>| {
            eprint!("\rλ = {lambda:<4} step {:>3}/{}", e.step + 1, e.num_steps);
            Flow::Continue
        };
        let realigner = Realigner::two_model(lambda)?;
        let out = sd.sample(&request, &embeddings, &realigner, &mut SeededNoise::new(request.seed), &mut progress)?;
        let image = sd.decode(&out.latent)?.remove(0);
        let path = out_dir.join(format!("lambda_{lambda}.png"));
        image.save_png(&path)?;
        eprintln!("  -> {}", path.display());
        images.push(image);
    }
    let grid = RgbImage::grid(&images, images.len(), 4, [255, 255, 255])?;
    grid.save_png(out_dir.join("grid.png"))?;
    println!("\"{prompt}\": λ = 0, 0.5, 1, 1.5 side by side in {}", out_dir.join("grid.png").display());
    Ok(())
}
