//! LoRA files and folders through `deradiff_sd::lora::LoraAdapter::load` for the tiny SD and
//! SDXL UNets, and `looks_like_lora`.
//!
//! The input is a folder, framed so that the fuzzer can change each part:
//! * byte 0, the layout: bit 0 writes `adapter_config.json`; bits 1–2 name the weights
//!   (`adapter_model.safetensors`, `pytorch_lora_weights.safetensors`, `lora.safetensors`, or the
//!   first two both: two adapters); bit 3 puts the adapter in a subfolder `a/` (and loads the
//!   outer folder); bit 4 loads the weight file itself instead of its folder;
//! * bytes 1–2: the length `L` of the config (little-endian, at most what follows);
//! * the next `L` bytes: `adapter_config.json`;
//! * the rest: the weights (a safetensors file, its header's `lora_adapter_metadata` included).
//!
//! An adapter that loads must fit its UNet: merging it and attaching it work, and it saves as a
//! diffusers-layout file (in f32) that loads back with the same layers, ranks and scales.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use candle_core::{DType, Device};
use deradiff_sd::lora::{looks_like_lora, LoraAdapter};
use deradiff_sd::Unet;
use libfuzzer_sys::fuzz_target;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../crates/deradiff-sd/tests/fixtures");

struct Setup {
    root: PathBuf,
    unets: Vec<Unet>,
}

fn setup() -> &'static Setup {
    static S: OnceLock<Setup> = OnceLock::new();
    S.get_or_init(|| {
        let root = std::env::temp_dir().join(format!("deradiff-fuzz-lora-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let unets = ["tiny-sd/unet", "tiny-sdxl/unet"]
            .iter()
            .map(|d| Unet::load(PathBuf::from(FIXTURES).join(d), None, DType::F32, &Device::Cpu).unwrap())
            .collect();
        Setup { root, unets }
    })
}

const NAMES: [&str; 3] = ["adapter_model.safetensors", "pytorch_lora_weights.safetensors", "lora.safetensors"];

fuzz_target!(|data: &[u8]| {
    let s = setup();
    let Some((&layout, rest)) = data.split_first() else { return };
    let (len, rest) = match rest {
        [a, b, rest @ ..] => (usize::from(u16::from_le_bytes([*a, *b])).min(rest.len()), rest),
        _ => (0, rest),
    };
    let (config, weights) = rest.split_at(len);
    let folder = s.root.join("case");
    let _ = std::fs::remove_dir_all(&folder);
    let inner = if layout & 8 != 0 { folder.join("a") } else { folder.clone() };
    std::fs::create_dir_all(&inner).unwrap();
    if layout & 1 != 0 {
        std::fs::write(inner.join("adapter_config.json"), config).unwrap();
    }
    let names: &[&str] = match (layout >> 1) & 3 {
        0 => &NAMES[..1],
        1 => &NAMES[1..2],
        2 => &NAMES[2..],
        _ => &NAMES[..2],
    };
    for name in names {
        std::fs::write(inner.join(name), weights).unwrap();
    }
    let path = if layout & 16 != 0 { inner.join(names[0]) } else { folder.clone() };
    let _ = looks_like_lora(&path);
    for unet in &s.unets {
        let Ok(adapter) = LoraAdapter::load(&path, unet) else { continue };
        // What loads fits the UNet, and survives a save in the diffusers layout.
        unet.merged_with(&adapter, 0.5).expect("a loaded adapter merges");
        unet.with_adapters(&[(&adapter, 1.0)]).expect("a loaded adapter attaches");
        let saved = s.root.join("saved.safetensors");
        if adapter.save(&saved, DType::F32).is_ok() {
            let back = LoraAdapter::load(&saved, unet).expect("a saved adapter loads back");
            assert_eq!(back.layers().len(), adapter.layers().len());
            for (path, layer) in adapter.layers() {
                let b = &back.layers()[path];
                assert_eq!(b.rank(), layer.rank(), "{path}");
                assert_eq!(b.scale(), 1.0, "{path}: the scale is folded into up");
            }
        }
    }
});
