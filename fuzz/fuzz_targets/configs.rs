//! The JSON config readers, every one on every input (each is a cheap parse):
//! * `deradiff_core::SchedulerConfig::from_json` / `from_value` (which must agree),
//!   `SchedulerKind::from_config{,_value}`, and `SchedulerKind::build` for DDPM, DDIM (η 0, 1)
//!   and Euler ancestral at several step counts (edge cases around `num_train_timesteps`), then
//!   the built scheduler's timesteps, σs, ᾱs and the posterior of its first and last step;
//! * `deradiff_sd::UnetConfig::from_json` + `arch`;
//! * `VaeConfig` / `ClipTextConfig` as `Vae::load` and `text::load_clip` read them from
//!   `config.json` (a directory without weights: they stop after the config checks), plus
//!   `ClipTextConfig::validate` and `VaeConfig::scale_factor`;
//! * `ClipModelConfig::from_json` (+ the vision tower's `grid` / `num_positions`);
//! * `ClipPreprocessor::from_json`, then `resized_size` and `preprocess` of a small image;
//! * ImageReward's `MedConfig` / `BlipVisionConfig` (`med_config.json`, `vision_config.json`),
//!   and `BlipModel::load` of a folder holding them (no weights: it stops after the checks).
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::{Device, Tensor};
use deradiff_core::SchedulerKind;
use deradiff_core::SchedulerConfig;
use deradiff_rewards::{BlipModel, BlipVisionConfig, ClipPreprocessor, MedConfig};
use deradiff_sd::clip::{ClipModelConfig, ClipTextConfig};
use deradiff_sd::{load_clip, RgbImage, UnetConfig, Vae, VaeConfig};
use libfuzzer_sys::fuzz_target;

fn dir() -> &'static PathBuf {
    static D: OnceLock<PathBuf> = OnceLock::new();
    D.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("deradiff-fuzz-configs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    })
}

fn schedulers(text: &str) {
    let parsed = SchedulerConfig::from_json(text);
    let value = serde_json::from_str::<serde_json::Value>(text);
    if let Ok(v) = &value {
        let from_value = SchedulerConfig::from_value(v);
        if let (Ok(a), Ok(b)) = (&parsed, &from_value) {
            assert_eq!(a, b, "from_json and from_value disagree");
        }
        let _ = SchedulerKind::from_config_value(v);
    }
    let Ok(config) = parsed else { return };
    let _ = SchedulerKind::from_config(&config);
    let t = config.num_train_timesteps.unwrap_or(1000).min(200_000);
    let mut steps = vec![0, 1, 2, 3, 7, 50, t.saturating_sub(1), t, t + 1];
    steps.sort_unstable();
    steps.dedup();
    let x = Tensor::ones((1, 1), candle_core::DType::F32, &Device::Cpu).unwrap();
    let eps = Tensor::zeros((1, 1), candle_core::DType::F32, &Device::Cpu).unwrap();
    for kind in [
        SchedulerKind::Ddpm,
        SchedulerKind::Ddim { eta: 0.0 },
        SchedulerKind::Ddim { eta: 1.0 },
        SchedulerKind::EulerAncestral,
    ] {
        for &n in &steps {
            let Ok(s) = kind.build(&config, n) else { continue };
            assert_eq!(s.num_steps(), n, "{kind:?}: asked for {n} steps");
            assert_eq!(s.timesteps().len(), n, "{kind:?}: timesteps");
            if let Some(sigmas) = s.sigmas() {
                assert_eq!(sigmas.len(), n + 1, "{kind:?}: sigmas");
            }
            if let Some(ns) = s.noise_schedule() {
                assert_eq!(s.alphas_cumprod().len(), ns.num_train_timesteps(), "{kind:?}: alphas_cumprod");
            }
            let _ = s.init_noise_sigma();
            for step in [0, n.saturating_sub(1), n] {
                let _ = s.timestep(step);
                if let Ok(xin) = s.scale_model_input(&x, step) {
                    let _ = xin.to_vec2::<f32>();
                }
                if let Ok(p) = s.posterior(&x, &eps, step) {
                    let _ = format!("{p:?}");
                }
            }
        }
    }
}

fn sd_configs(text: &str) {
    let path = Path::new("config.json");
    // Findings C1, C2, C4 and C5 (fuzz/README.md) are fixed: every reader runs on every input.
    if let Ok(c) = UnetConfig::from_json(text, path) {
        if let Ok(arch) = c.arch(path) {
            if let Some(tt) = arch.text_time {
                let _ = tt.input_dim();
            }
        }
    }
    // Vae::load and load_clip read `config.json` themselves; the directory has no weights.
    let dir = dir();
    let cfg = dir.join("config.json");
    std::fs::write(&cfg, text).unwrap();
    if let Ok(v) = VaeConfig::from_file(&cfg) {
        let _ = v.scale_factor();
    }
    let _ = Vae::load(dir, candle_core::DType::F32, &Device::Cpu);
    if let Ok(c) = ClipTextConfig::from_file(&cfg) {
        let _ = c.validate(&cfg);
        let _ = c.activation(&cfg);
    }
    let _ = load_clip(dir, candle_core::DType::F32, &Device::Cpu);
    if let Ok(m) = ClipModelConfig::from_json(text, path) {
        let _ = m.vision.grid();
        let _ = m.vision.num_positions();
    }
    if let Ok(p) = ClipPreprocessor::from_json(text, path) {
        for (h, w) in [(1, 1), (3, 5), (5, 3), (224, 224), (1, 4096), (4096, 1)] {
            let _ = p.resized_size(h, w);
        }
        let data: Vec<u8> = (0..5 * 3 * 3).map(|i| (i * 37 % 256) as u8).collect();
        let image = RgbImage::new(5, 3, data).unwrap();
        let _ = p.preprocess(&image, &Device::Cpu);
    }
    // ImageReward's configs, alone and as a model folder's.
    let (med, vision) = (dir.join("med_config.json"), dir.join("vision_config.json"));
    std::fs::write(&med, text.as_bytes()).unwrap();
    std::fs::write(&vision, text.as_bytes()).unwrap();
    if let Ok(c) = MedConfig::from_file(&med) {
        let _ = c.activation(&med);
    }
    if let Ok(v) = BlipVisionConfig::from_file(&vision) {
        let _ = (v.grid(), v.num_tokens(), v.mlp_width());
    }
    let _ = BlipModel::load(dir, candle_core::DType::F32, &Device::Cpu);
    let _ = std::fs::remove_file(&vision);
    let _ = BlipModel::load(dir, candle_core::DType::F32, &Device::Cpu);
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    schedulers(&text);
    sd_configs(&text);
});
