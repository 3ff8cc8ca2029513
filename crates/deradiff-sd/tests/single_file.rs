//! Single-file checkpoints in the original (LDM / SGM) layout, written by diffusers' own
//! conversion scripts from tiny diffusers-layout pipelines (`scripts/gen_single_file_fixtures.py`;
//! diffusers' `from_single_file` reads them back to the same tensors there): every tensor the
//! loaders are served equals the diffusers-layout file's; the configs inferred from the tensors
//! give the folder's architecture; the realigned runs of a single-file reference and single-file
//! aligned UNets are bit for bit the runs of the folders; a missing or an unknown tensor is an
//! error naming it.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use common::*;
use deradiff_core::{NoObserver, Realigner, SchedulerKind, SeededNoise};
use deradiff_sd::clip::ClipTextConfig;
use deradiff_sd::{
    Error, LoadOptions, Request, SingleFile, SingleFileFamily, SingleFileOptions, StableDiffusion, Unet, UnetConfig,
    VaeConfig,
};

fn dir() -> PathBuf {
    fixtures().join("single-file")
}

fn stored(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

/// Every tensor of the diffusers-layout `file` of `component` equals what the single file serves
/// under its name (position ids, a buffer, aside).
fn assert_same_tensors(single: &SingleFile, component: &str, file: &Path) -> usize {
    let ours = stored(file);
    let names: Vec<&str> = ours.keys().map(String::as_str).filter(|n| !n.ends_with("position_ids")).collect();
    let theirs = single.diffusers_tensors(component, &names, DType::F32).unwrap();
    for n in &names {
        let a = ours[*n].to_dtype(DType::F32).unwrap();
        let b = &theirs[*n];
        assert_eq!(a.dims(), b.dims(), "{component} {n}");
        assert_eq!(max_abs_diff(&a, b), 0.0, "{component} {n}");
    }
    names.len()
}

const UNET: &str = "diffusion_pytorch_model.safetensors";

#[test]
fn every_tensor_equals_the_diffusers_layout() {
    let sd15 = SingleFile::open(dir().join("sd15.safetensors")).unwrap();
    assert_eq!(sd15.family(), SingleFileFamily::Sd1);
    let folder = dir().join("sd15");
    let n = assert_same_tensors(&sd15, "unet", &folder.join("unet").join(UNET))
        + assert_same_tensors(&sd15, "vae", &folder.join("vae").join(UNET))
        + assert_same_tensors(&sd15, "text_encoder", &folder.join("text_encoder/model.safetensors"));
    let sdxl = SingleFile::open(dir().join("sdxl.safetensors")).unwrap();
    assert_eq!(sdxl.family(), SingleFileFamily::Sdxl);
    let folder = dir().join("sdxl");
    // text_encoder_2: open_clip's fused in_proj split into q, k, v; text_projection transposed.
    let m = assert_same_tensors(&sdxl, "unet", &folder.join("unet").join(UNET))
        + assert_same_tensors(&sdxl, "vae", &folder.join("vae").join(UNET))
        + assert_same_tensors(&sdxl, "text_encoder", &folder.join("text_encoder/model.safetensors"))
        + assert_same_tensors(&sdxl, "text_encoder_2", &folder.join("text_encoder_2/model.safetensors"));
    let mut k = 0;
    for name in ["sd15", "sdxl"] {
        let aligned = SingleFile::open(dir().join(format!("{name}-aligned.safetensors"))).unwrap();
        assert!(!aligned.has_pipeline());
        k += assert_same_tensors(&aligned, "unet", &dir().join(format!("{name}-aligned-unet")).join(UNET));
    }
    println!("equal to the diffusers layout: SD 1.5 {n} tensors, SDXL {m}, the aligned UNets {k}");
    assert!(n > 900 && m > 900 && k > 1200, "{n} {m} {k}");
}

#[test]
fn configs_inferred_from_the_tensors() {
    // SD 1.5: the folder was written with the SD 1.x template's values, so everything agrees.
    let sd15 = SingleFile::open(dir().join("sd15.safetensors")).unwrap();
    let folder = dir().join("sd15");
    let cfg = folder.join("unet/config.json");
    let theirs = UnetConfig::from_file(&cfg).unwrap();
    // sample_size, the training resolution (SD 1.5's 64 in the template), only sets defaults.
    let ours = UnetConfig { sample_size: theirs.sample_size.clone(), ..sd15.unet_config().unwrap() };
    assert_eq!(ours.arch(&cfg).unwrap(), theirs.arch(&cfg).unwrap());
    let vae = VaeConfig::from_file(folder.join("vae/config.json")).unwrap();
    assert_eq!(sd15.vae_config().unwrap(), vae);
    let (clip, none) = sd15.text_configs().unwrap();
    assert!(none.is_none());
    let theirs = ClipTextConfig::from_file(folder.join("text_encoder/config.json")).unwrap();
    assert_eq!(ClipTextConfig { projection_dim: theirs.projection_dim, ..clip }, theirs);
    assert_eq!(sd15.scheduler_config(), deradiff_core::SchedulerConfig::stable_diffusion_v1_5());

    // SDXL: the shapes agree with the folder; heads and norm groups are SDXL's (not the tiny
    // model's), so an SDXL template build of this model is refused and names the override.
    let sdxl = SingleFile::open(dir().join("sdxl.safetensors")).unwrap();
    let folder = dir().join("sdxl");
    for err in [sdxl.unet_config().unwrap_err(), sdxl.text_configs().unwrap_err()] {
        assert!(matches!(err, Error::Unsupported { .. }), "{err}");
        assert!(err.to_string().contains("--model-config"), "{err}");
    }
    let theirs = VaeConfig::from_file(folder.join("vae/config.json")).unwrap();
    assert_eq!(VaeConfig { norm_num_groups: theirs.norm_num_groups, ..sdxl.vae_config().unwrap() }, theirs);
    assert_eq!(sdxl.scheduler_config(), deradiff_core::SchedulerConfig::stable_diffusion_xl());
}

fn request(height: usize) -> Request {
    // One step at SD 1.5's 64 px (its four-level UNet is slow in debug builds), two for SDXL.
    let steps = if height == 64 { 1 } else { 2 };
    Request {
        prompts: vec!["a red cube on a table".into()],
        negative_prompt: Some("blurry".into()),
        scheduler: SchedulerKind::EulerAncestral,
        steps,
        seed: 5,
        height: Some(height),
        width: Some(height),
        ..Default::default()
    }
}

/// The final latents and 8-bit images of a λ = 0.7 realigned run (the images only where
/// `decode`: the SD 1.5-shaped VAE takes seconds in debug builds).
fn run(sd: &StableDiffusion, height: usize, decode: bool) -> (Tensor, Vec<Vec<u8>>) {
    let (req, realigner) = (request(height), Realigner::two_model(0.7).unwrap());
    if decode {
        let out = sd.generate(&req, &realigner, &mut NoObserver).unwrap();
        return (out.latents, out.images.iter().map(|i| i.data().to_vec()).collect());
    }
    let enc = sd.encode(&req).unwrap();
    let out = sd.sample(&req, &enc, &realigner, &mut SeededNoise::new(req.seed), &mut NoObserver).unwrap();
    (out.latent, Vec::new())
}

fn assert_bit_equal(a: &(Tensor, Vec<Vec<u8>>), b: &(Tensor, Vec<Vec<u8>>), what: &str) {
    let (x, y) =
        (a.0.flatten_all().unwrap().to_vec1::<f32>().unwrap(), b.0.flatten_all().unwrap().to_vec1::<f32>().unwrap());
    assert!(x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()), "{what}: latents differ");
    if !a.1.is_empty() && !b.1.is_empty() {
        assert_eq!(a.1, b.1, "{what}: images differ");
    }
}

#[test]
fn sd15_realigned_run_equals_the_folder_run() {
    let folder =
        StableDiffusion::load(dir().join("sd15"), &[dir().join("sd15-aligned-unet")], &LoadOptions::default()).unwrap();
    // The single file alone: tokenizer from --tokenizer, every config from the SD 1.x template.
    let options = LoadOptions {
        single_file: SingleFileOptions { tokenizer: Some(dir().join("sd15")), ..Default::default() },
        ..Default::default()
    };
    let single =
        StableDiffusion::load(dir().join("sd15.safetensors"), &[dir().join("sd15-aligned.safetensors")], &options)
            .unwrap();
    assert_eq!(single.scheduler_config(), folder.scheduler_config());
    assert_eq!(single.vae().scaling_factor(), 0.18215);
    let reference = run(&folder, 64, false);
    assert_bit_equal(&run(&single, 64, false), &reference, "SD 1.5 single file");
    // A tokenizer folder itself works for SD 1.x too, with a diffusers-layout aligned UNet.
    let options = LoadOptions {
        single_file: SingleFileOptions { tokenizer: Some(dir().join("sd15/tokenizer")), ..Default::default() },
        ..Default::default()
    };
    let tok =
        StableDiffusion::load(dir().join("sd15.safetensors"), &[dir().join("sd15-aligned-unet")], &options).unwrap();
    let (a, b) = (tok.encode(&request(64)).unwrap(), folder.encode(&request(64)).unwrap());
    assert_eq!(max_abs_diff(a.embeddings().cond(), b.embeddings().cond()), 0.0);
    assert_eq!(max_abs_diff(a.embeddings().uncond().unwrap(), b.embeddings().uncond().unwrap()), 0.0);
    tok.unets()[0].check_same_architecture(&folder.unets()[0]).unwrap();
}

#[test]
fn sdxl_realigned_run_equals_the_folder_run() {
    let folder =
        StableDiffusion::load(dir().join("sdxl"), &[dir().join("sdxl-aligned-unet")], &LoadOptions::default()).unwrap();
    let reference = run(&folder, 32, true);
    // Configs (and tokenizers) from the folder, as diffusers' from_single_file(config=...).
    let options = LoadOptions {
        single_file: SingleFileOptions { config: Some(dir().join("sdxl")), ..Default::default() },
        ..Default::default()
    };
    let single =
        StableDiffusion::load(dir().join("sdxl.safetensors"), &[dir().join("sdxl-aligned.safetensors")], &options)
            .unwrap();
    assert!(single.is_sdxl());
    assert_bit_equal(&run(&single, 32, true), &reference, "SDXL single file");
    // A folder reference with a single-file aligned UNet (which takes the reference's config).
    let mixed =
        StableDiffusion::load(dir().join("sdxl"), &[dir().join("sdxl-aligned.safetensors")], &LoadOptions::default())
            .unwrap();
    assert_bit_equal(&run(&mixed, 32, false), &reference, "SDXL folder + single-file aligned UNet");
}

/// `file` with `edit` applied to its tensors, written under a scratch folder.
fn edited(file: &str, name: &str, edit: impl FnOnce(&mut HashMap<String, Tensor>)) -> PathBuf {
    let mut tensors = stored(&dir().join(file));
    edit(&mut tensors);
    let out = scratch(name).join(file);
    candle_core::safetensors::save(&tensors, &out).unwrap();
    out
}

#[test]
fn missing_and_unknown_tensors_are_named() {
    let key = "model.diffusion_model.output_blocks.4.1.transformer_blocks.0.attn2.to_k.weight";
    let missing = edited("sd15-aligned.safetensors", "single-missing", |t| {
        t.remove(key).unwrap();
    });
    let err = Unet::load(&missing, None, DType::F32, &Device::Cpu).unwrap_err();
    match &err {
        Error::MissingTensor { tensor, hint, .. } => {
            assert_eq!(tensor, key);
            assert!(hint.contains("up_blocks.1.attentions.1.transformer_blocks.0.attn2.to_k.weight"), "{hint}");
        }
        other => panic!("expected a missing tensor, got {other}"),
    }
    let extra = "model.diffusion_model.input_blocks.1.1.extra_norm.weight";
    let unknown = edited("sd15-aligned.safetensors", "single-unknown", |t| {
        t.insert(extra.into(), Tensor::ones(4, DType::F32, &Device::Cpu).unwrap());
    });
    let err = Unet::load(&unknown, None, DType::F32, &Device::Cpu).unwrap_err();
    match &err {
        Error::UnknownTensors { names, count, .. } => {
            assert_eq!(*count, 1);
            assert!(names.contains(extra), "{names}");
        }
        other => panic!("expected unknown tensors, got {other}"),
    }
    // The open_clip half of an SDXL file: a fused in_proj missing is named as stored.
    let fused = "conditioner.embedders.1.model.transformer.resblocks.1.attn.in_proj_weight";
    let sdxl = edited("sdxl.safetensors", "single-missing-xl", |t| {
        t.remove(fused).unwrap();
    });
    let options = LoadOptions {
        single_file: SingleFileOptions { config: Some(dir().join("sdxl")), ..Default::default() },
        ..Default::default()
    };
    let err = StableDiffusion::load(&sdxl, &[] as &[&Path], &options).unwrap_err();
    assert!(matches!(&err, Error::MissingTensor { tensor, .. } if tensor == fused), "{err}");
    // Without tokenizers a single-file reference says what it needs.
    let err =
        StableDiffusion::load(dir().join("sdxl.safetensors"), &[] as &[&Path], &LoadOptions::default()).unwrap_err();
    assert!(matches!(&err, Error::TokenizerNeeded { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("tokenizer_2/") && text.contains("--tokenizer") && text.contains("stable-diffusion-xl-base-1.0"),
        "{text}"
    );
    // A UNet-only file is no reference.
    let err = StableDiffusion::load(dir().join("sd15-aligned.safetensors"), &[] as &[&Path], &LoadOptions::default())
        .unwrap_err();
    assert!(err.to_string().contains("UNet only"), "{err}");
}
