//! The VAE decoder: candle-transformers' `AutoEncoderKL` configured from `vae/config.json`,
//! with the checkpoint's own `scaling_factor` and spatial scale factor.
//!
//! Every decode method but [`Vae::decode_unscaled`] takes latents as the sampler produces them
//! (the VAE's latents × `scaling_factor`) and divides by `scaling_factor` itself.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_transformers::models::stable_diffusion::vae::AutoEncoderKL;

use crate::config::VaeConfig;
use crate::error::{Error, Result};
use crate::fs::{check_path, config_path, Kind};
use crate::image::RgbImage;
use crate::limits::{check_latent_size, MAX_IMAGE_SIDE};
use crate::weights::{find_weight_files, CheckedWeights, Rename};

/// The dtype a VAE of `config` runs in when `dtype` is asked for: f32 for f16 with the config's
/// `force_upcast` (diffusers' default, against fp16 overflow in the decoder), else `dtype`.
fn run_dtype(config: &VaeConfig, dtype: DType) -> DType {
    if dtype == DType::F16 && config.force_upcast {
        DType::F32
    } else {
        dtype
    }
}

/// A loaded VAE.
pub struct Vae {
    model: AutoEncoderKL,
    config: VaeConfig,
    dtype: DType,
    device: Device,
    /// The folder it was loaded from (named when its output is not finite).
    source: PathBuf,
}

impl std::fmt::Debug for Vae {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vae").field("config", &self.config).field("dtype", &self.dtype).finish_non_exhaustive()
    }
}

impl Vae {
    /// Loads `dir` (`config.json` + `diffusion_pytorch_model.safetensors`). With `dtype` f16 and
    /// the config's `force_upcast` (diffusers' default), the VAE runs in f32, as diffusers does to
    /// avoid fp16 overflow in the decoder.
    pub fn load(dir: impl AsRef<Path>, dtype: DType, device: &Device) -> Result<Self> {
        let dir = dir.as_ref();
        check_path(dir, Kind::Dir, "VAE directory", None)?;
        let cfg_path = config_path(dir);
        let config = VaeConfig::from_file(&cfg_path)?;
        let arch = config.arch(&cfg_path)?;
        let dtype = run_dtype(&config, dtype);
        let files = find_weight_files(dir, "diffusion_pytorch_model", "VAE")?;
        let weights = CheckedWeights::open(&files)?;
        let (in_c, out_c) = (config.in_channels, config.out_channels);
        let model = weights.build(dtype, device, None, |vb| AutoEncoderKL::new(vb, in_c, out_c, arch))?;
        Ok(Self { model, config, dtype, device: device.clone(), source: dir.to_path_buf() })
    }

    /// Builds the VAE with `config` over `weights` stored under other names than diffusers'
    /// (`rename`: a single-file checkpoint); `config_path` names the config in errors.
    pub(crate) fn from_renamed(
        weights: &std::sync::Arc<CheckedWeights>,
        rename: std::sync::Arc<Rename>,
        config: VaeConfig,
        config_path: &Path,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let arch = config.arch(config_path)?;
        let dtype = run_dtype(&config, dtype);
        let (in_c, out_c) = (config.in_channels, config.out_channels);
        let (model, _) =
            weights.build_renamed(rename, dtype, device, None, |vb| AutoEncoderKL::new(vb, in_c, out_c, arch))?;
        Ok(Self { model, config, dtype, device: device.clone(), source: weights.primary().to_path_buf() })
    }

    /// The config.
    pub fn config(&self) -> &VaeConfig {
        &self.config
    }

    /// Image pixels per latent pixel: `2^(len(block_out_channels) − 1)` (8 for SD, 2 for a
    /// two-level test VAE).
    pub fn scale_factor(&self) -> usize {
        self.config.scale_factor()
    }

    /// `scaling_factor` from the config: the sampler works on the VAE's latents × this, and
    /// [`Self::decode`] / [`Self::decode_f32`] divide by it before decoding.
    pub fn scaling_factor(&self) -> f64 {
        self.config.scaling_factor
    }

    /// Latent channels.
    pub fn latent_channels(&self) -> usize {
        self.config.latent_channels
    }

    /// The dtype the VAE computes in.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// `latents / scaling_factor` in f32: the sampler's latents as the decoder takes them
    /// (checked as [`Self::decode_unscaled`] checks them).
    pub fn unscale(&self, latents: &Tensor) -> Result<Tensor> {
        self.check_latents(latents)?;
        Ok((latents.to_dtype(DType::F32)? / self.config.scaling_factor)?)
    }

    /// An [`Error::ShapeMismatch`] unless `z` is `[batch, latent_channels, height, width]`,
    /// non-empty, of at most twice [`crate::StableDiffusion::MAX_LATENT_ELEMENTS`] elements, and decodes
    /// to sides of at most [`crate::StableDiffusion::MAX_IMAGE_SIDE`] pixels: checked before any
    /// computation, so that no size overflows and nothing huge is allocated.
    fn check_latents(&self, z: &Tensor) -> Result<()> {
        let dims = z.dims();
        let context = "the latents given to the VAE decoder";
        if dims.len() != 4 || dims[1] != self.config.latent_channels {
            return Err(Error::shape(
                context,
                format!("[batch, {}, height, width]", self.config.latent_channels),
                dims,
            ));
        }
        check_latent_size(dims, || context.to_string())?;
        let (f, max) = (self.scale_factor(), MAX_IMAGE_SIDE);
        if dims[2..].iter().any(|&side| side.checked_mul(f).is_none_or(|px| px > max)) {
            return Err(Error::shape(
                context,
                format!(
                    "[batch, {}, height, width] with height and width at most {} (× the scale factor {f}: at most \
                     {max} pixels a side, StableDiffusion::MAX_IMAGE_SIDE)",
                    self.config.latent_channels,
                    max / f
                ),
                dims,
            ));
        }
        Ok(())
    }

    /// The decoder's raw output `[B, 3, H·f, W·f]` (f32, about `[-1, 1]`, not clamped) for
    /// latents `z` that are already unscaled (divided by [`Self::scaling_factor`], see
    /// [`Self::unscale`]). For latents as the sampler produces them use [`Self::decode`] or
    /// [`Self::decode_f32`].
    ///
    /// Latents with a zero dimension or more than twice
    /// [`crate::StableDiffusion::MAX_LATENT_ELEMENTS`] elements, or that would decode to an image
    /// side of more than [`crate::StableDiffusion::MAX_IMAGE_SIDE`] pixels, are an
    /// [`Error::ShapeMismatch`].
    ///
    /// The latents are decoded one image at a time. On the CPU this makes each image's bits
    /// independent of the batch it is decoded in: candle-transformers' VAE runs candle's
    /// convolutions, whose 1×1 ones are one GEMM over every image of the batch, and the `gemm`
    /// crate changes its reduction order with the GEMM's size. On a GPU (the kernels' device path)
    /// it bounds memory: the decoder's mid-block attention holds an f32 score matrix of
    /// (pixels / 64)² per image — 1 GiB at 1024 px, 16 GiB at 2048 px — and a batch would hold one
    /// per image at once.
    pub fn decode_unscaled(&self, z: &Tensor) -> Result<Tensor> {
        self.check_latents(z)?;
        let z = z.to_device(&self.device)?.to_dtype(self.dtype)?;
        let batch = z.dim(0)?;
        if batch == 1 {
            return Ok(self.model.decode(&z)?.to_dtype(DType::F32)?);
        }
        let images = (0..batch)
            .map(|i| Ok(self.model.decode(&z.narrow(0, i, 1)?)?.to_dtype(DType::F32)?))
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&images, 0)?)
    }

    /// Images `[B, 3, H·f, W·f]` as f32 in `[0, 1]` from latents as the sampler produces them:
    /// the decoder's output for `latents / scaling_factor`, then diffusers' post-processing
    /// `clamp(x / 2 + 1/2, 0, 1)` (its `output_type="pt"`). [`Self::decode`] is the same image
    /// rounded to 8 bits.
    ///
    /// A decoded value that is not finite is an [`Error::NonFiniteOutput`] naming the VAE and the
    /// image (never a black pixel).
    pub fn decode_f32(&self, latents: &Tensor) -> Result<Tensor> {
        Ok(self.decode_f32_with_saturation(latents)?.0)
    }

    /// [`Self::decode_f32`] and, per image, its saturation: the fraction of its pixels that the
    /// clamp to `[0, 1]` changes (a pixel is clipped when one of its channels lies outside
    /// `[-1, 1]` as decoded). Near 1 the image is black, white or pure colours everywhere: the
    /// latents are far outside what the VAE was trained on (a λ or weights extrapolating far;
    /// see [`Self::SATURATED`]).
    pub fn decode_f32_with_saturation(&self, latents: &Tensor) -> Result<(Tensor, Vec<f64>)> {
        let raw = self.decode_unscaled(&self.unscale(latents)?)?;
        let saturation = self.saturation(&raw)?;
        Ok((raw.affine(0.5, 0.5)?.clamp(0f32, 1f32)?, saturation))
    }

    /// 8-bit RGB images from latents as the sampler produces them: the decoder's output for
    /// `latents / scaling_factor`, then diffusers' post-processing (see
    /// [`RgbImage::from_tensor`]). A decoded value that is not finite is an
    /// [`Error::NonFiniteOutput`].
    pub fn decode(&self, latents: &Tensor) -> Result<Vec<RgbImage>> {
        Ok(self.decode_with_saturation(latents)?.0)
    }

    /// [`Self::decode`] and each image's saturation (as [`Self::decode_f32_with_saturation`]).
    pub fn decode_with_saturation(&self, latents: &Tensor) -> Result<(Vec<RgbImage>, Vec<f64>)> {
        let raw = self.decode_unscaled(&self.unscale(latents)?)?;
        let saturation = self.saturation(&raw)?;
        Ok((RgbImage::from_tensor(&raw)?, saturation))
    }

    /// A saturation from which an image is reported as saturated (deradiff sample and sweeps
    /// warn): 0.9, nine pixels in ten clipped. A natural image clips few pixels (its darkest and
    /// brightest areas); a λ far outside `[0, 1]` clips nearly all of them.
    pub const SATURATED: f64 = 0.9;

    /// Per image of a raw decoded batch `[B, 3, H, W]` (as [`Self::decode_unscaled`] gives it):
    /// its saturation, the fraction of pixels with a channel outside `[-1, 1]`; an
    /// [`Error::NonFiniteOutput`] naming the VAE and the image if a value is not finite.
    pub fn saturation(&self, raw: &Tensor) -> Result<Vec<f64>> {
        let b = raw.dims().first().copied().unwrap_or(0);
        // Σ 0·x per image: 0 when every value is finite, NaN otherwise.
        let probe = raw.affine(0.0, 0.0)?.to_dtype(DType::F64)?.flatten_from(1)?.sum(1)?.to_vec1::<f64>()?;
        if let Some(i) = probe.iter().position(|p| *p != 0.0) {
            return Err(Error::NonFiniteOutput {
                model: format!("the VAE decoder ({})", self.source.display()),
                at: format!("in image {} of {b}", i + 1),
            });
        }
        let clipped = raw.abs()?.gt(1.0)?.max_keepdim(1)?.to_dtype(DType::F64)?;
        Ok(clipped.flatten_from(1)?.mean(1)?.to_vec1::<f64>()?)
    }
}
