//! Loading a UNet: where its weights and config are ([`UnetLocation`]), reading them
//! ([`Unet::load`], [`Unet::from_files`]) or building it over any `VarBuilder`
//! ([`Unet::from_var_builder`]).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use candle_core::{DType, Device, Shape};

use super::layers::LayerMut;
use super::model::UnetModel;
use super::Unet;
use crate::config::{UnetArch, UnetConfig};
use crate::error::{Error, Result};
use crate::fs::{check_path, config_path, probe_any, probe_path, Kind};
use crate::weights::{find_weight_files, CheckedWeights, Rename};

/// Where a UNet's weights and config are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnetLocation {
    /// The safetensors file(s).
    pub weights: Vec<PathBuf>,
    /// Its `config.json`, if it has one of its own.
    pub config: Option<PathBuf>,
}

impl UnetLocation {
    /// Resolves what a user gave:
    /// * a pipeline directory with a `unet/` subdirectory;
    /// * a UNet directory (`config.json` + `diffusion_pytorch_model[.fp16].safetensors` or shards);
    /// * a single `.safetensors` file (no config of its own: the reference's is used).
    ///
    /// Nothing at `path` is an [`Error::NotFound`]; anything else that is neither a folder nor a
    /// file (a FIFO, a device, a dangling link, a link loop, …) an [`Error::WrongKind`] saying
    /// what it is. The weights themselves are checked when they are opened.
    pub fn resolve(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let what = "UNet (directory or .safetensors file)";
        let expected = "a pipeline folder (with unet/), a UNet folder (config.json + \
                        diffusion_pytorch_model.safetensors) or a .safetensors file";
        match probe_any(path, what, expected)? {
            None => Err(Error::NotFound { what: what.into(), path: path.into() }),
            Some(Kind::File) => {
                let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
                if ext != "safetensors" {
                    return Err(Error::unsupported(
                        path,
                        "a single-file model must be a .safetensors file, in the diffusers layout or the \
                         original one (pickle .bin / .ckpt files are not loaded: convert them with \
                         `safetensors.torch.save_file`)",
                    ));
                }
                Ok(Self { weights: vec![path.to_path_buf()], config: None })
            }
            Some(Kind::Dir) => {
                let unet = path.join("unet");
                let dir = if probe_path(&unet, Kind::Dir, "UNet folder of the pipeline", None)? {
                    unet
                } else {
                    path.to_path_buf()
                };
                let cfg = config_path(&dir);
                check_path(
                    &cfg,
                    Kind::File,
                    "UNet config (a pipeline directory needs unet/config.json, a UNet directory config.json)",
                    None,
                )?;
                let weights = find_weight_files(&dir, "diffusion_pytorch_model", "UNet")?;
                Ok(Self { weights, config: Some(cfg) })
            }
        }
    }
}

impl Unet {
    /// Loads a UNet from a pipeline directory, a UNet directory, or (with `fallback` — the
    /// reference's config and its path) a single safetensors file.
    pub fn load(
        path: impl AsRef<Path>,
        fallback: Option<(&UnetConfig, &Path)>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let path = path.as_ref();
        if crate::single_file::is_original_layout(path) {
            return crate::single_file::SingleFile::open(path)?.load_unet(fallback, dtype, device);
        }
        let loc = UnetLocation::resolve(path)?;
        let (config, cfg_path) = match (&loc.config, fallback) {
            (Some(p), _) => (UnetConfig::from_file(p)?, p.clone()),
            (None, Some((c, p))) => (c.clone(), p.to_path_buf()),
            (None, None) => {
                return Err(Error::InvalidArgument(format!(
                    "Unet::load: {} is a bare weight file and no fallback config was given; the reference UNet \
                     needs its config.json (give its directory)",
                    path.display()
                )))
            }
        };
        Self::from_files(&loc.weights, config, &cfg_path, dtype, device)
    }

    /// Loads weights `files` with `config` (whose path `config_path` is named in errors).
    pub fn from_files(
        files: &[PathBuf],
        config: UnetConfig,
        config_path: &Path,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        if files.is_empty() {
            return Err(Error::InvalidArgument(
                "Unet::from_files: `files` is empty; give the UNet's weight files".into(),
            ));
        }
        let arch = config.arch(config_path)?;
        let weights = CheckedWeights::open(files)?;
        let model = weights.build(dtype, device, None, |vb| UnetModel::new(vb, arch.clone()))?;
        let (source, shapes) = (weights.primary().to_path_buf(), weights.used());
        let mut unet = Self::assemble(model, config, arch, source, shapes, dtype, device);
        unet.config_path = config_path.to_path_buf();
        Ok(unet)
    }

    /// Builds a UNet with `config` over `weights` stored under other names than diffusers'
    /// (`rename`: a single-file checkpoint); `config_path` names the config in errors.
    pub(crate) fn from_renamed(
        weights: &Arc<CheckedWeights>,
        rename: Arc<Rename>,
        config: UnetConfig,
        config_path: &Path,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let arch = config.arch(config_path)?;
        let (model, shapes) =
            weights.build_renamed(rename, dtype, device, None, |vb| UnetModel::new(vb, arch.clone()))?;
        let mut unet = Self::assemble(model, config, arch, weights.primary().to_path_buf(), shapes, dtype, device);
        unet.config_path = config_path.to_path_buf();
        Ok(unet)
    }

    /// Builds a UNet with `config` over any `VarBuilder` (diffusers' weight names), for example
    /// one over random tensors for a benchmark of a full-size architecture without its checkpoint.
    /// `source` names the model in errors. Unlike [`Self::load`], the weight shapes are not
    /// recorded, so [`Self::check_same_architecture`] compares only the channels of such a model.
    pub fn from_var_builder(
        vb: candle_nn::VarBuilder,
        config: UnetConfig,
        source: impl Into<PathBuf>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let source = source.into();
        let arch = config.arch(&source)?;
        let vb = vb.set_dtype(dtype).set_device(device.clone());
        let model = UnetModel::new(vb, arch.clone())?;
        Ok(Self::assemble(model, config, arch, source, HashMap::new(), dtype, device))
    }

    /// The `Unet` around a built `model`; `shapes` are its weights' shapes as loaded.
    fn assemble(
        mut model: UnetModel,
        config: UnetConfig,
        arch: UnetArch,
        source: PathBuf,
        shapes: HashMap<String, Shape>,
        dtype: DType,
        device: &Device,
    ) -> Self {
        let layers = layer_shapes(&mut model);
        Self {
            model: Box::new(model),
            layers,
            adapters: 0,
            config,
            arch,
            config_path: source.clone(),
            source,
            shapes,
            dtype,
            device: device.clone(),
            forward_calls: AtomicUsize::new(0),
        }
    }
}

/// The weight shapes of the model's linear and convolution layers, by module path.
fn layer_shapes(model: &mut UnetModel) -> BTreeMap<String, Vec<usize>> {
    let mut layers = BTreeMap::new();
    let _ = model.visit(&mut |path, layer| {
        match layer {
            LayerMut::Linear(l) => layers.insert(path, l.file_shape()),
            LayerMut::Conv(c) => layers.insert(path, c.weight.dims().to_vec()),
            LayerMut::Norm { .. } => None,
        };
        Ok(())
    });
    layers
}
