//! Checks of `--reference` and `--aligned` made before any weights are loaded: a reference given
//! as one of its component folders, and an aligned UNet of the other architecture (SDXL vs
//! SD 1.x / 2.x), each explained in the words of the command line.

use std::path::{Path, PathBuf};

use deradiff_core::SchedulerConfig;
use deradiff_sd::{is_original_layout, SingleFile, SingleFileFamily, SingleFileOptions, UnetConfig, UnetLocation};

use crate::error::{CliError, Result};

/// The architecture family of a UNet, as far as realignment cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    /// SD 1.x / 2.x: no added conditioning.
    Sd,
    /// SDXL: `text_time` added conditioning (pooled text embedding and micro-conditioning).
    Sdxl,
}

impl Family {
    fn describe(self) -> &'static str {
        match self {
            Family::Sd => "SD 1.x / 2.x",
            Family::Sdxl => "SDXL",
        }
    }
}

/// The family of the UNet whose `config.json` is `path`, or `None` when the config cannot be
/// read or checked (the loader then reports why).
fn family_of_config(path: &Path) -> Option<Family> {
    let arch = UnetConfig::from_file(path).ok()?.arch(path).ok()?;
    Some(if arch.text_time.is_some() { Family::Sdxl } else { Family::Sd })
}

/// The family of a single-file checkpoint in the original layout, inferred from its tensors.
fn family_of_single_file(path: &Path) -> Option<Family> {
    if !is_original_layout(path) {
        return None;
    }
    Some(match SingleFile::open(path).ok()?.family() {
        SingleFileFamily::Sdxl => Family::Sdxl,
        _ => Family::Sd,
    })
}

/// The family of the reference's UNet (`REFERENCE/unet/config.json`, or a single file's
/// tensors), if it can be read.
pub(crate) fn reference_family(reference: &Path) -> Option<Family> {
    family_of_single_file(reference).or_else(|| family_of_config(&reference.join("unet").join("config.json")))
}

/// The reference's `scheduler/scheduler_config.json` (SDXL's own without one, as the pipeline
/// loader does), read before the weights to choose a sweep's sampler; `None` where it cannot be
/// read (the loader then says why).
pub(crate) fn reference_scheduler_config(reference: &Path, single: &SingleFileOptions) -> Option<SchedulerConfig> {
    if is_original_layout(reference) {
        return single.scheduler_config(&SingleFile::open(reference).ok()?).ok();
    }
    let path = reference.join("scheduler").join("scheduler_config.json");
    if path.is_file() {
        return SchedulerConfig::from_file(&path).ok();
    }
    (reference_family(reference) == Some(Family::Sdxl)).then(SchedulerConfig::stable_diffusion_xl)
}

/// The family of an aligned UNet as `--aligned` gives it (pipeline directory or UNet directory;
/// a bare `.safetensors` file has no config of its own), if it can be read.
fn aligned_family(aligned: &Path) -> Option<Family> {
    if let Some(family) = family_of_single_file(aligned) {
        return Some(family);
    }
    let location = UnetLocation::resolve(aligned).ok()?;
    family_of_config(location.config.as_deref()?)
}

/// Reads a folder's `config.json` as JSON, if it has one.
fn read_config(dir: &Path) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join("config.json")).ok()?;
    serde_json::from_str(&text).ok()
}

/// Which component of a diffusers pipeline `dir` looks like (`"unet"`, `"vae"`,
/// `"text_encoder"`), from its `config.json` or, without one, its weight file names.
fn component_kind(dir: &Path) -> Option<&'static str> {
    if let Some(config) = read_config(dir) {
        let class = config.get("_class_name").and_then(|c| c.as_str()).unwrap_or("");
        let architectures = config.get("architectures").map(|a| a.to_string()).unwrap_or_default();
        if class.starts_with("UNet") || config.get("cross_attention_dim").is_some() {
            return Some("unet");
        }
        if class.starts_with("Autoencoder") || config.get("latent_channels").is_some() {
            return Some("vae");
        }
        if architectures.contains("CLIPText")
            || config.get("model_type").and_then(|m| m.as_str()) == Some("clip_text_model")
        {
            return Some("text_encoder");
        }
        return None;
    }
    let has_diffusers_weights = std::fs::read_dir(dir).ok()?.flatten().any(|e| {
        let name = e.file_name();
        let name = name.to_string_lossy();
        name.starts_with("diffusion_pytorch_model") && name.ends_with(".safetensors")
    });
    has_diffusers_weights.then_some("unet")
}

/// Explains a `--reference` that is a component folder of a pipeline (its `unet/`, `vae/`, …)
/// instead of the pipeline directory. Anything else (a missing path, a file, a pipeline with a
/// missing part) is left to the loader, which names what it did not find.
fn check_reference_layout(reference: &Path) -> Result<()> {
    if !reference.is_dir() || reference.join("model_index.json").is_file() || reference.join("unet").is_dir() {
        return Ok(());
    }
    if let Some(kind) = component_kind(reference) {
        let parent = reference
            .canonicalize()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .map(|p| format!(" ({})", p.display()))
            .unwrap_or_default();
        return Err(CliError::usage(format!(
            "--reference must be the pipeline directory (with model_index.json, unet/, vae/, text_encoder/, \
             tokenizer/, scheduler/); {} looks like its {kind}/ folder: pass its parent{parent}",
            reference.display()
        )));
    }
    Ok(())
}

/// Errors when an aligned UNet is SDXL and the reference SD 1.x / 2.x, or the other way round
/// (judged from their `config.json`s; models whose config cannot be read are left to the
/// loader's shape check).
fn check_aligned_family(reference: &Path, aligned: &[PathBuf]) -> Result<()> {
    let Some(reference_family) = reference_family(reference) else { return Ok(()) };
    for a in aligned {
        match aligned_family(a) {
            Some(family) if family != reference_family => {
                return Err(CliError::usage(format!(
                    "the aligned model {} is an {} UNet but the reference {} is {}: an aligned model must be \
                     fine-tuned from the reference (the same architecture, different weights)",
                    a.display(),
                    family.describe(),
                    reference.display(),
                    reference_family.describe()
                )));
            }
            _ => {}
        }
    }
    Ok(())
}

/// The checks of `--reference` and `--aligned` made before any weights are loaded: the
/// reference is a pipeline directory, and every aligned model is of its architecture.
pub(crate) fn check_models(reference: &Path, aligned: &[PathBuf]) -> Result<()> {
    check_reference_layout(reference)?;
    check_aligned_family(reference, aligned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deradiff-sd/tests/fixtures")
    }

    #[test]
    fn component_folders_are_recognised() {
        let sd = fixtures().join("tiny-sd");
        assert_eq!(component_kind(&sd.join("unet")), Some("unet"));
        assert_eq!(component_kind(&sd.join("vae")), Some("vae"));
        assert_eq!(component_kind(&sd.join("text_encoder")), Some("text_encoder"));
        assert!(check_reference_layout(&sd).is_ok());
        let e = check_reference_layout(&sd.join("unet")).unwrap_err().to_string();
        assert!(e.contains("looks like its unet/ folder: pass its parent"), "{e}");
    }

    #[test]
    fn families_are_read_from_the_configs() {
        assert_eq!(reference_family(&fixtures().join("tiny-sd")), Some(Family::Sd));
        assert_eq!(reference_family(&fixtures().join("tiny-sdxl")), Some(Family::Sdxl));
        assert_eq!(aligned_family(&fixtures().join("tiny-sdxl-aligned-unet")), Some(Family::Sdxl));
        assert_eq!(aligned_family(&fixtures().join("tiny-aligned-unet")), Some(Family::Sd));
        let e = check_aligned_family(&fixtures().join("tiny-sd"), &[fixtures().join("tiny-sdxl-aligned-unet")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("is an SDXL UNet but the reference") && e.contains("is SD 1.x / 2.x"), "{e}");
    }
}
