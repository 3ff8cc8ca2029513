//! LoRA adapters for the UNet: loading the layouts people ship (diffusers, the older
//! attention-processor form, peft, kohya with diffusers or SGM block names, LoCon convolutions),
//! merging them into a UNet's weights, running a reference and several LoRA-aligned models in one
//! batched UNet pass, and extracting a LoRA from the difference of two full UNets.
//!
//! Every layer of an adapter is keyed by its **diffusers module path** in the UNet (for example
//! `down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q`, or `conv_in`), whatever the
//! layout of the file it came from; [`LoraLayer::origin`] keeps the name the file used, for errors.
//! The weight of an adapted layer is `W + multiplier · scale · up · down`, with the adapter's own
//! `scale = alpha / rank` (1 without an alpha) and a user `multiplier` (1 by default).

mod extract;
mod formats;
mod merge;
mod peft;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};

use crate::error::{Error, Result};
use crate::unet::Unet;

pub use extract::{extract_lora, extract_lora_with_progress, ExtractOptions, ExtractReport, LayerReport, SvdMethod};
pub use formats::{looks_like_lora, LoraFormat};

/// One adapted layer: `delta = scale · up · down` in the shape of the layer's weight.
///
/// Linear layers: `down` is `[r, in]`, `up` is `[out, r]`. Convolutions (LoCon): `down` is
/// `[r, in, kh, kw]` (the layer's kernel), `up` is `[out, r, 1, 1]`.
#[derive(Clone, Debug)]
pub struct LoraLayer {
    /// The down projection (`lora_A`, `lora_down`).
    pub down: Tensor,
    /// The up projection (`lora_B`, `lora_up`).
    pub up: Tensor,
    /// The stored alpha (`scale = alpha / rank`); `None` for scale 1.
    pub alpha: Option<f64>,
    /// The layer's name in the file it came from (the key prefix), for error messages.
    pub origin: String,
}

impl LoraLayer {
    /// The rank `r` (rows of `down`).
    pub fn rank(&self) -> usize {
        self.down.dims().first().copied().unwrap_or(0)
    }

    /// The adapter's own scale: `alpha / rank`, or 1 without an alpha.
    pub fn scale(&self) -> f64 {
        match self.alpha {
            Some(a) if self.rank() > 0 => a / self.rank() as f64,
            _ => 1.0,
        }
    }

    /// Whether this adapts a convolution (4-d `down`).
    pub fn is_conv(&self) -> bool {
        self.down.rank() == 4
    }

    /// `multiplier · scale · up · down` in the layer weight's shape (`[out, in]`, or
    /// `[out, in, kh, kw]` for a convolution), computed in f32 and returned in `down`'s dtype.
    pub fn delta(&self, multiplier: f64) -> Result<Tensor> {
        let dtype = self.down.dtype();
        let down = self.down.to_dtype(DType::F32)?;
        let up = self.up.to_dtype(DType::F32)?;
        let r = self.rank();
        let out = up.dims()[0];
        let down_shape = down.dims().to_vec();
        let down2 = down.reshape((r, down.elem_count() / r.max(1)))?;
        let up2 = up.reshape((out, r))?;
        let d = up2.matmul(&down2)?.affine(multiplier * self.scale(), 0.0)?;
        let mut shape = vec![out];
        shape.extend_from_slice(&down_shape[1..]);
        Ok(d.reshape(shape)?.to_dtype(dtype)?)
    }
}

/// A LoRA adapter for a UNet: its layers by diffusers module path.
#[derive(Clone, Debug)]
pub struct LoraAdapter {
    pub(crate) layers: BTreeMap<String, LoraLayer>,
    pub(crate) format: LoraFormat,
    pub(crate) source: PathBuf,
}

impl LoraAdapter {
    /// An adapter from its layers (keys: diffusers module paths).
    pub fn from_layers(layers: BTreeMap<String, LoraLayer>, format: LoraFormat, source: impl Into<PathBuf>) -> Self {
        Self { layers, format, source: source.into() }
    }

    /// Reads a LoRA adapter for `unet` from a file or folder in any of the layouts of
    /// [`LoraFormat`]: a `.safetensors` file, a peft folder (`adapter_model.safetensors` with
    /// `adapter_config.json`), a diffusers folder (`pytorch_lora_weights.safetensors`) or a folder
    /// holding one safetensors file. Key names are mapped to `unet`'s module paths (kohya's
    /// underscored names and SDXL's SGM block names need the UNet's layers to be resolved); the
    /// tensors are converted to the UNet's dtype and device.
    ///
    /// Errors ([`Error::Lora`], naming the key as the file spells it): DoRA, LoHa, LoKr and other
    /// LyCORIS kinds, text-encoder adapters, unknown keys, layers this UNet lacks, a `down`
    /// without its `up`, shapes that do not fit; what peft or diffusers refuse — a rank the peft
    /// config or the header's `lora_adapter_metadata` does not declare (read as peft reads a
    /// `LoraConfig`: `r` and `lora_alpha` default to 8, pattern keys are regular expressions
    /// taken in the file's order), kohya alphas beside that metadata, peft keys without their
    /// `adapter_config.json` — and a folder holding two adapters. A NaN or infinite value, or
    /// one the UNet's dtype makes infinite, is an [`Error::NonFiniteTensor`] naming the tensor.
    /// An adapter is never applied in part.
    pub fn load(path: impl AsRef<Path>, unet: &Unet) -> Result<Self> {
        formats::load(path.as_ref(), unet)
    }

    /// Writes the adapter as a diffusers-layout LoRA (`unet.<path>.lora.down.weight`,
    /// `.lora.up.weight`, each layer's scale folded into `up`), in `dtype`, atomically. diffusers' `load_lora_weights` and [`Self::load`] read it back.
    pub fn save(&self, path: impl AsRef<Path>, dtype: DType) -> Result<()> {
        let path = path.as_ref();
        let mut tensors: Vec<(String, Tensor)> = Vec::with_capacity(self.layers.len() * 3);
        for (module, layer) in &self.layers {
            let cpu = |t: &Tensor| -> Result<Tensor> {
                Ok(t.to_dtype(dtype)?.to_device(&candle_core::Device::Cpu)?.contiguous()?)
            };
            // The scale is folded into `up`: diffusers reads `.alpha` keys only from kohya files.
            let up = layer.up.to_dtype(DType::F32)?.affine(layer.scale(), 0.0)?;
            for (part, t) in [("down", cpu(&layer.down)?), ("up", cpu(&up)?)] {
                if !all_finite(&t)? {
                    return Err(Error::Lora {
                        path: path.to_path_buf(),
                        message: format!(
                            "the `{part}` weight of `{module}` is not finite in {dtype:?} (its values overflow it, or \
                             were not finite): nothing was written; save the adapter in f32"
                        ),
                    });
                }
                tensors.push((format!("unet.{module}.lora.{part}.weight"), t));
            }
        }
        let metadata = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
        let bytes = safetensors::serialize(tensors.iter().map(|(k, v)| (k.as_str(), v)), Some(metadata))
            .map_err(|e| Error::InvalidArgument(format!("cannot serialize the LoRA: {e}")))?;
        crate::image::write_atomic(path, &bytes)
    }

    /// The adapted layers, by diffusers module path.
    pub fn layers(&self) -> &BTreeMap<String, LoraLayer> {
        &self.layers
    }

    /// The layout the adapter was read from.
    pub fn format(&self) -> LoraFormat {
        self.format
    }

    /// The file or folder it was read from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// The adapter with every layer's delta multiplied by `multiplier` (folded into `up`). A
    /// multiplier that is not finite, or so large that an `up` weight overflows the adapter's
    /// dtype, is an [`Error::Lora`] naming the layer.
    pub fn scaled(mut self, multiplier: f64) -> Result<Self> {
        if !multiplier.is_finite() {
            return Err(Error::Lora {
                path: self.source.clone(),
                message: format!("the multiplier {multiplier:?} is not finite"),
            });
        }
        if multiplier != 1.0 {
            for (module, layer) in self.layers.iter_mut() {
                layer.up = layer.up.affine(multiplier, 0.0)?;
                if !all_finite(&layer.up)? {
                    return Err(Error::Lora {
                        path: self.source.clone(),
                        message: format!(
                            "the multiplier {multiplier:?} makes the up weight of `{}` ({module}) overflow {:?}: give a \
                             smaller multiplier",
                            layer.origin,
                            layer.up.dtype()
                        ),
                    });
                }
            }
        }
        Ok(self)
    }

    /// Checks the adapter against a UNet's layers (`layers`: weight shape by module path, as
    /// [`Unet::layer_shapes`] gives them): every adapted layer exists and its `down` /
    /// `up` fit the weight. An error names the key the file used.
    pub fn check(&self, layers: &BTreeMap<String, Vec<usize>>) -> Result<()> {
        for (path, layer) in &self.layers {
            let Some(weight) = layers.get(path) else {
                return Err(Error::Lora {
                    path: self.source.clone(),
                    message: format!(
                        "`{}` adapts `{path}`, which is not a linear or convolution layer of this UNet",
                        layer.origin
                    ),
                });
            };
            let r = layer.rank();
            let (down, up) = (layer.down.dims(), layer.up.dims());
            let fits = r > 0
                && down.len() == weight.len()
                && down[1..] == weight[1..]
                && up.len() == weight.len()
                && up[0] == weight[0]
                && up[1] == r
                && up[2..].iter().all(|&d| d == 1);
            if !fits {
                return Err(Error::Lora {
                    path: self.source.clone(),
                    message: format!(
                        "`{}`: down {down:?} and up {up:?} do not fit the layer `{path}` of weight shape {weight:?} \
                         (expected down [r, {}] and up [{}, r{}])",
                        layer.origin,
                        weight[1..].iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", "),
                        weight[0],
                        if weight.len() == 4 { ", 1, 1" } else { "" }
                    ),
                });
            }
        }
        Ok(())
    }
}

/// Whether every element of `t` is finite: `Σ 0·x` is 0 exactly then, NaN otherwise.
pub(crate) fn all_finite(t: &Tensor) -> Result<bool> {
    let probe = t.affine(0.0, 0.0)?.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?;
    Ok(probe == 0.0)
}
