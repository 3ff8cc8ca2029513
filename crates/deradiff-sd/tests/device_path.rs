//! Whole realigned runs on the device path (what a GPU runs: candle's ops in the model's dtype,
//! forced on the CPU with `deradiff_kernels::with_device_path`) against the same run on the CPU
//! kernels in f32: the tiny SD and SDXL pipelines with their aligned UNets (two models, λ = 0.5,
//! classifier-free guidance, Euler ancestral, 3 steps, 8×8 pixels), UNets in f32, f16 and bf16; the images
//! within 1/255 (f32), 2/255 (f16) and 6/255 (bf16) of the f32 CPU run's.
//!
//! The text encoders and the VAE run in f32 in every run (decoding each run's final latents), so
//! the differences are the UNets' and the sampling loop's (in the UNets' dtype, as on a GPU);
//! candle's CPU convolution has no bf16, which the device path's convolution stands in for with
//! an f32 convolution rounded to bf16 (what cuDNN computes for bf16).

mod common;

use std::path::Path;

use candle_core::{DType, Device};
use common::*;
use deradiff_core::{NoObserver, Realigner, SchedulerConfig, SchedulerKind};
use deradiff_sd::{RgbImage, StableDiffusion, TextEncoder, Unet, Vae};

/// The pipeline at `root` with `aligned`'s UNet, its UNets in `dtype`, the rest in f32.
fn pipeline(root: &Path, aligned: &Path, dtype: DType) -> StableDiffusion {
    let cpu = Device::Cpu;
    let unet = |dir: &Path| Unet::load(dir, None, dtype, &cpu).unwrap();
    let unets = vec![unet(&root.join("unet")), unet(aligned)];
    let vae = Vae::load(root.join("vae"), DType::F32, &cpu).unwrap();
    let te = TextEncoder::load(root.join("text_encoder"), root.join("tokenizer"), DType::F32, &cpu).unwrap();
    let text = std::fs::read_to_string(root.join("scheduler/scheduler_config.json")).unwrap();
    let scheduler: SchedulerConfig = serde_json::from_str(&text).unwrap();
    if root.join("text_encoder_2").is_dir() {
        let te2 =
            TextEncoder::load_with_projection(root.join("text_encoder_2"), root.join("tokenizer_2"), DType::F32, &cpu)
                .unwrap();
        StableDiffusion::from_parts_sdxl(te, te2, vae, unets, scheduler, true).unwrap()
    } else {
        StableDiffusion::from_parts(te, vae, unets, scheduler).unwrap()
    }
}

/// The images of one realigned run (two prompts, one negative).
fn images(sd: &StableDiffusion, device_path: bool) -> Vec<RgbImage> {
    let request = deradiff_sd::Request {
        prompts: vec!["a red cube on a table".into(), "a photo of a cat".into()],
        negative_prompt: Some("blurry".into()),
        scheduler: SchedulerKind::EulerAncestral,
        steps: 3,
        seed: 11,
        height: Some(8),
        width: Some(8),
        ..Default::default()
    };
    let run = || sd.generate(&request, &Realigner::two_model(0.5).unwrap(), &mut NoObserver).unwrap().images;
    if device_path {
        deradiff_kernels::with_device_path(run)
    } else {
        run()
    }
}

/// The largest difference of two runs' pixel values, and how many differ.
fn worst(a: &[RgbImage], b: &[RgbImage]) -> (u8, usize) {
    assert_eq!(a.len(), b.len());
    let pairs = a.iter().zip(b).flat_map(|(x, y)| {
        assert_eq!((x.width(), x.height()), (y.width(), y.height()));
        x.data().iter().zip(y.data())
    });
    pairs.fold((0, 0), |(m, n), (p, q)| (m.max(p.abs_diff(*q)), n + usize::from(p != q)))
}

fn check(root: &Path, aligned: &Path) {
    let want = images(&pipeline(root, aligned, DType::F32), false);
    for (dtype, limit) in [(DType::F32, 1), (DType::F16, 2), (DType::BF16, 6)] {
        let got = images(&pipeline(root, aligned, dtype), true);
        let (max, differing) = worst(&got, &want);
        let total: usize = want.iter().map(|i| i.data().len()).sum();
        println!(
            "{}: device path in {dtype:?}: {differing} of {total} bytes differ from f32, by at most {max}",
            root.display()
        );
        assert!(max <= limit, "{dtype:?}: pixel values differ by up to {max} (limit {limit})");
    }
}

#[test]
fn tiny_sd_realigned_on_the_device_path_matches_f32() {
    check(&tiny_sd(), &tiny_aligned());
}

#[test]
fn tiny_sdxl_realigned_on_the_device_path_matches_f32() {
    check(&tiny_sdxl(), &tiny_sdxl_aligned());
}
