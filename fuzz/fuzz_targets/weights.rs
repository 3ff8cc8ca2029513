//! Safetensors weight files through deradiff-sd's checking loader.
//!
//! The input is one `.safetensors` file. It is loaded as every model the crate builds from
//! weights, each in a directory with a fixed `config.json`: the micro configs of `fuzz/micro/`
//! (a few-KB model, so valid seeds are small) and the tiny test fixtures' configs (so the
//! fixtures' own weight files, copied into the corpus, load in full):
//! `Unet::load` (SD and SDXL UNets), `Vae::load`, `text::load_clip` /
//! `load_clip_with_projection`, and `load_checked` building a `ClipModel` (as CLIP scoring does).
//!
//! `DERADIFF_FUZZ_WRITE_SEEDS=<dir>` makes the target write valid micro-model weight files
//! (random values; f32, f16, bf16 and f64) into `<dir>` and exit instead of fuzzing.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::{DType, Device};
use deradiff_rewards::ClipModel;
use deradiff_sd::clip::ClipModelConfig;
use deradiff_sd::{load_checked, load_clip, load_clip_with_projection, Unet, UnetConfig, Vae};
use libfuzzer_sys::fuzz_target;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../crates/deradiff-sd/tests/fixtures");
const TUNE_FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../crates/deradiff-tune/tests/fixtures");
const MICRO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/micro");

/// What each model directory holds besides the input.
#[derive(Clone, Copy)]
enum Kind {
    Unet,
    Vae,
    Clip,
    ClipProjection,
    ClipModel,
}

struct Setup {
    input: PathBuf,
    models: Vec<(Kind, PathBuf)>,
    clip_model: ClipModelConfig,
}

fn setup() -> &'static Setup {
    static S: OnceLock<Setup> = OnceLock::new();
    S.get_or_init(|| {
        let root = std::env::temp_dir().join(format!("deradiff-fuzz-weights-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let input = root.join("input.safetensors");
        let configs: Vec<(Kind, &str, PathBuf)> = vec![
            (Kind::Unet, "micro-unet", Path::new(MICRO).join("unet.json")),
            (Kind::Vae, "micro-vae", Path::new(MICRO).join("vae.json")),
            (Kind::Clip, "micro-clip", Path::new(MICRO).join("text_encoder.json")),
            (Kind::ClipProjection, "micro-clip-proj", Path::new(MICRO).join("text_encoder.json")),
            (Kind::Unet, "sd-unet", Path::new(FIXTURES).join("tiny-sd/unet/config.json")),
            (Kind::Unet, "sdxl-unet", Path::new(FIXTURES).join("tiny-sdxl/unet/config.json")),
            (Kind::Vae, "sd-vae", Path::new(FIXTURES).join("tiny-sd/vae/config.json")),
            (Kind::Clip, "sd-clip", Path::new(FIXTURES).join("tiny-sd/text_encoder/config.json")),
            (Kind::ClipProjection, "sdxl-clip2", Path::new(FIXTURES).join("tiny-sdxl/text_encoder_2/config.json")),
            (Kind::ClipModel, "clip-model", Path::new(TUNE_FIXTURES).join("clip/clip-gelu/config.json")),
        ];
        let mut models = Vec::new();
        for (kind, name, config) in configs {
            let dir = root.join(name);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::copy(&config, dir.join("config.json")).unwrap();
            let stem = match kind {
                Kind::Unet | Kind::Vae => "diffusion_pytorch_model.safetensors",
                _ => "model.safetensors",
            };
            std::os::unix::fs::symlink(&input, dir.join(stem)).unwrap();
            models.push((kind, dir));
        }
        let clip_model =
            ClipModelConfig::from_file(Path::new(TUNE_FIXTURES).join("clip/clip-gelu/config.json")).unwrap();
        Setup { input, models, clip_model }
    })
}

fuzz_target!(init: {
    if let Ok(dir) = std::env::var("DERADIFF_FUZZ_WRITE_SEEDS") {
        write_seeds(Path::new(&dir));
        check_seeds(Path::new(&dir));
        std::process::exit(0);
    }
    setup();
}, |data: &[u8]| {
    let s = setup();
    std::fs::write(&s.input, data).unwrap();
    let cpu = Device::Cpu;
    for (kind, dir) in &s.models {
        match kind {
            Kind::Unet => {
                let _ = Unet::load(dir, None, DType::F32, &cpu);
            }
            Kind::Vae => {
                let _ = Vae::load(dir, DType::F32, &cpu);
            }
            Kind::Clip => {
                let _ = load_clip(dir, DType::F32, &cpu);
            }
            Kind::ClipProjection => {
                let _ = load_clip_with_projection(dir, DType::F32, &cpu);
            }
            Kind::ClipModel => {
                let _ = load_checked(dir, "model", "CLIP model", DType::F32, &cpu, |vb| ClipModel::new(vb, &s.clip_model));
            }
        }
    }
});

/// Valid weight files of the micro models, built over a `VarMap` (random init) and saved.
fn write_seeds(out: &Path) {
    use candle_nn::{VarBuilder, VarMap};
    use deradiff_sd::clip::{ClipActivation, ClipTextConfig, ClipTextModel};
    std::fs::create_dir_all(out).unwrap();
    let cpu = Device::Cpu;
    let save_all = |map: &VarMap, name: &str| {
        let tensors: std::collections::HashMap<String, candle_core::Tensor> =
            map.data().lock().unwrap().iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect();
        for (dtype, suffix) in [(DType::F32, "f32"), (DType::F16, "f16"), (DType::BF16, "bf16"), (DType::F64, "f64")] {
            let converted: std::collections::HashMap<String, candle_core::Tensor> =
                tensors.iter().map(|(k, v)| (k.clone(), v.to_dtype(dtype).unwrap())).collect();
            candle_core::safetensors::save(&converted, out.join(format!("{name}-{suffix}.safetensors"))).unwrap();
        }
    };

    let unet_cfg = UnetConfig::from_file(Path::new(MICRO).join("unet.json")).unwrap();
    let map = VarMap::new();
    let vb = VarBuilder::from_varmap(&map, DType::F32, &cpu);
    Unet::from_var_builder(vb, unet_cfg, "micro unet", DType::F32, &cpu).unwrap();
    save_all(&map, "micro-unet");

    let vae_cfg = deradiff_sd::VaeConfig::from_file(Path::new(MICRO).join("vae.json")).unwrap();
    let arch = candle_transformers_vae_config(&vae_cfg);
    let map = VarMap::new();
    let vb = VarBuilder::from_varmap(&map, DType::F32, &cpu);
    candle_transformers::models::stable_diffusion::vae::AutoEncoderKL::new(vb, 3, 3, arch).unwrap();
    save_all(&map, "micro-vae");

    let text_cfg = ClipTextConfig::from_file(Path::new(MICRO).join("text_encoder.json")).unwrap();
    let map = VarMap::new();
    let vb = VarBuilder::from_varmap(&map, DType::F32, &cpu);
    ClipTextModel::new_with_projection(vb, &text_cfg, ClipActivation::QuickGelu).unwrap();
    save_all(&map, "micro-clip-proj");
}

fn candle_transformers_vae_config(
    c: &deradiff_sd::VaeConfig,
) -> candle_transformers::models::stable_diffusion::vae::AutoEncoderKLConfig {
    candle_transformers::models::stable_diffusion::vae::AutoEncoderKLConfig {
        block_out_channels: c.block_out_channels.clone(),
        layers_per_block: c.layers_per_block,
        latent_channels: c.latent_channels,
        norm_num_groups: c.norm_num_groups,
        use_quant_conv: c.use_quant_conv,
        use_post_quant_conv: c.use_post_quant_conv,
    }
}

/// Prints which loaders accept each seed (every micro seed must load as its own model).
fn check_seeds(dir: &Path) {
    let s = setup();
    let mut names: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    names.sort();
    for f in names {
        std::fs::copy(&f, &s.input).unwrap();
        let cpu = Device::Cpu;
        let ok: Vec<String> = s
            .models
            .iter()
            .filter(|(kind, dir)| match kind {
                Kind::Unet => Unet::load(dir, None, DType::F32, &cpu).is_ok(),
                Kind::Vae => Vae::load(dir, DType::F32, &cpu).is_ok(),
                Kind::Clip => load_clip(dir, DType::F32, &cpu).is_ok(),
                Kind::ClipProjection => load_clip_with_projection(dir, DType::F32, &cpu).is_ok(),
                Kind::ClipModel => {
                    load_checked(dir, "model", "CLIP", DType::F32, &cpu, |vb| ClipModel::new(vb, &s.clip_model)).is_ok()
                }
            })
            .map(|(_, d)| d.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        eprintln!("{}: loads as {ok:?}", f.display());
    }
}
