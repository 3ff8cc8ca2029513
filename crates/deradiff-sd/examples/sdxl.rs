//! Realigned SDXL with its micro-conditioning: the paper's main setting (reference
//! `stabilityai/stable-diffusion-xl-base-1.0`, aligned `mhdang/dpo-sdxl-text2image-v1`,
//! Euler ancestral, guidance 5), sampled at λ = 0, 0.5 and 1 with the same seed.
//!
//! Run on the tiny random SDXL-shaped models committed with the crate (noise images, but every
//! stage is the real one: both text encoders, pooled embeddings, `time_ids`, guided UNets with
//! `text_time` conditioning, realigned steps, VAE with its own scaling factor):
//!
//!     cargo run --release -p deradiff-sd --example sdxl
//!
//! On the real checkpoints (diffusers layout, safetensors; a GPU with `--features cuda`):
//!
//!     DERADIFF_DEVICE=cuda cargo run --release -p deradiff-sd --features cuda --example sdxl -- \
//!         stable-diffusion-xl-base-1.0 dpo-sdxl-text2image-v1 "a red fox in the snow" 50 out/
//!
//! Arguments: `[REFERENCE [ALIGNED [PROMPT [STEPS [OUT_DIR]]]]]`.

use std::path::PathBuf;

use candle_core::DType;
use deradiff_core::{NoObserver, Realigner, SeededNoise};
use deradiff_sd::{parse_device, LoadOptions, Request, StableDiffusion};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut args = std::env::args().skip(1);
    let reference = args.next().map(PathBuf::from).unwrap_or_else(|| fixtures.join("tiny-sdxl"));
    let aligned = args.next().map(PathBuf::from).unwrap_or_else(|| fixtures.join("tiny-sdxl-aligned-unet"));
    let prompt = args.next().unwrap_or_else(|| "a red cube on a wooden table, studio light".into());
    let steps = args.next().map(|s| s.parse()).transpose()?.unwrap_or(20);
    let out_dir = args.next().map(PathBuf::from).unwrap_or_else(|| std::env::temp_dir().join("deradiff_sdxl"));
    let device = parse_device(&std::env::var("DERADIFF_DEVICE").unwrap_or_else(|_| "cpu".into()))?;
    let dtype = if device.is_cpu() { DType::F32 } else { DType::F16 };

    let sd = StableDiffusion::load(&reference, &[&aligned], &LoadOptions { dtype, device, ..Default::default() })?;
    if !sd.is_sdxl() {
        return Err(format!("{} is not an SDXL checkpoint", reference.display()).into());
    }
    let (height, width) = sd.default_size();
    let request = Request {
        prompts: vec![prompt.clone()],
        steps,
        // guidance_scale: None, SDXL's default (5.0).
        seed: 42,
        // SDXL's micro-conditioning, here diffusers' defaults spelled out: the image as if it
        // came uncropped from an image of its own size.
        original_size: Some((height, width)),
        crop_top_left: (0, 0),
        target_size: Some((height, width)),
        ..Default::default()
    };
    let embeddings = sd.encode(&request)?;
    for lambda in [0.0, 0.5, 1.0] {
        let realigner = Realigner::two_model(lambda)?;
        let out = sd.sample(&request, &embeddings, &realigner, &mut SeededNoise::new(request.seed), &mut NoObserver)?;
        let path = out_dir.join(format!("sdxl_lambda_{lambda}.png"));
        sd.decode(&out.latent)?.remove(0).save_png(&path)?;
        println!("λ = {lambda}: {}", path.display());
    }
    Ok(())
}
