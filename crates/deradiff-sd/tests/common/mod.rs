//! Shared helpers of the integration tests: fixture paths, the diffusers references, comparisons.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor};

pub mod edit;

/// `crates/deradiff-sd/tests/fixtures`.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join("fixtures")
}

/// The tiny reference checkpoint (diffusers layout).
pub fn tiny_sd() -> PathBuf {
    fixtures().join("tiny-sd")
}

/// The tiny aligned UNet (a bare `unet/` directory).
pub fn tiny_aligned() -> PathBuf {
    fixtures().join("tiny-aligned-unet")
}

/// The reference tensors computed by diffusers / transformers (`reference.safetensors`).
pub fn refs() -> &'static HashMap<String, Tensor> {
    static REFS: OnceLock<HashMap<String, Tensor>> = OnceLock::new();
    REFS.get_or_init(|| {
        candle_core::safetensors::load(fixtures().join("reference.safetensors"), &Device::Cpu)
            .expect("reference.safetensors loads")
    })
}

/// One reference tensor.
pub fn reference(name: &str) -> Tensor {
    refs().get(name).unwrap_or_else(|| panic!("reference tensor {name} missing")).clone()
}

/// `reference.json`.
pub fn meta() -> &'static serde_json::Value {
    static META: OnceLock<serde_json::Value> = OnceLock::new();
    META.get_or_init(|| {
        let text = std::fs::read_to_string(fixtures().join("reference.json")).expect("reference.json");
        serde_json::from_str(&text).expect("reference.json parses")
    })
}

/// max |a − b| (shapes must agree).
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let a = a.to_dtype(DType::F64).unwrap();
    let b = b.to_dtype(DType::F64).unwrap();
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap()
}

/// max |a|.
pub fn max_abs(a: &Tensor) -> f64 {
    a.to_dtype(DType::F64).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap()
}

/// A fresh, empty scratch directory under the target directory (removed first if present).
pub fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("deradiff-sd-tests").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Copies a directory tree.
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The tiny SDXL checkpoint (`scripts/gen_sdxl_fixtures.py`).
pub fn tiny_sdxl() -> PathBuf {
    fixtures().join("tiny-sdxl")
}

/// The tiny aligned SDXL UNet (a bare `unet/` directory).
pub fn tiny_sdxl_aligned() -> PathBuf {
    fixtures().join("tiny-sdxl-aligned-unet")
}

/// The SDXL reference tensors (`tiny-sdxl-reference.safetensors`).
pub fn xl_reference(name: &str) -> Tensor {
    static REFS: OnceLock<HashMap<String, Tensor>> = OnceLock::new();
    let refs = REFS.get_or_init(|| {
        candle_core::safetensors::load(fixtures().join("tiny-sdxl-reference.safetensors"), &Device::Cpu)
            .expect("tiny-sdxl-reference.safetensors loads")
    });
    refs.get(name).unwrap_or_else(|| panic!("SDXL reference tensor {name} missing")).clone()
}

/// `tiny-sdxl-reference.json`.
pub fn xl_meta() -> &'static serde_json::Value {
    static META: OnceLock<serde_json::Value> = OnceLock::new();
    META.get_or_init(|| {
        let text = std::fs::read_to_string(fixtures().join("tiny-sdxl-reference.json")).expect("reference json");
        serde_json::from_str(&text).expect("tiny-sdxl-reference.json parses")
    })
}
