//! Classifier-free guidance as a [`Denoiser`] wrapper, and the prompt embeddings it shares.
//!
//! A [`Guided`] denoiser runs its model once per step on the doubled batch
//! `[x; x]` with `[uncond; cond]` embeddings (diffusers' order) and returns
//! `uncond + g · (cond − uncond)`. As in diffusers, a scale `g ≤ 1` switches guidance off: the
//! model runs once on the conditional embeddings alone. Several `Guided` denoisers (the reference
//! and the aligned UNets) borrow the same [`PromptEmbeddings`], so the text encoder runs once
//! however many UNets are realigned.

use candle_core::Tensor;
use deradiff_core::Denoiser;

use crate::error::{Error, Result};

/// A network conditioned on a per-sample context (text embeddings): what [`Guided`] wraps.
/// Implemented by [`crate::Unet`]; implement it to guide your own model.
pub trait ConditionalModel {
    /// The model output for `x` `[B, …]` at `timestep` given `context` `[B, …]`.
    fn forward_conditional(&self, x: &Tensor, timestep: f64, context: &Tensor) -> Result<Tensor>;
}

impl<M: ConditionalModel + ?Sized> ConditionalModel for &M {
    fn forward_conditional(&self, x: &Tensor, timestep: f64, context: &Tensor) -> Result<Tensor> {
        (**self).forward_conditional(x, timestep, context)
    }
}

/// A classifier-free guidance scale: finite and `>= 0`; guidance is on for values above 1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GuidanceScale(f64);

impl GuidanceScale {
    /// Checks `scale` (an error for negative, NaN or infinite values).
    pub fn new(scale: f64) -> Result<Self> {
        if !(scale.is_finite() && scale >= 0.0) {
            return Err(Error::InvalidGuidance(scale));
        }
        Ok(Self(scale))
    }

    /// The scale.
    pub fn value(self) -> f64 {
        self.0
    }

    /// Whether guidance runs (diffusers' `do_classifier_free_guidance`: `scale > 1`).
    pub fn is_active(self) -> bool {
        self.0 > 1.0
    }
}

/// Text embeddings of a batch of prompts and, for guidance, of their negative prompts.
#[derive(Debug, Clone)]
pub struct PromptEmbeddings {
    cond: Tensor,
    uncond: Option<Tensor>,
    /// `[uncond; cond]`, concatenated once here rather than at every step.
    both: Option<Tensor>,
}

impl PromptEmbeddings {
    /// From conditional embeddings `[B, L, D]` and, for guidance, unconditional ones of the same
    /// shape.
    pub fn new(cond: Tensor, uncond: Option<Tensor>) -> Result<Self> {
        if cond.rank() != 3 || cond.dim(0)? == 0 {
            return Err(Error::InvalidArgument(format!(
                "prompt embeddings must be [batch >= 1, tokens, width], got {:?}",
                cond.dims()
            )));
        }
        let both = match &uncond {
            Some(u) => {
                if u.shape() != cond.shape() || u.dtype() != cond.dtype() {
                    return Err(Error::InvalidArgument(format!(
                        "negative-prompt embeddings {:?} {:?} do not match the prompt embeddings {:?} {:?}",
                        u.dims(),
                        u.dtype(),
                        cond.dims(),
                        cond.dtype()
                    )));
                }
                Some(Tensor::cat(&[u, &cond], 0)?)
            }
            None => None,
        };
        Ok(Self { cond, uncond, both })
    }

    /// Number of samples `B`.
    pub fn batch(&self) -> usize {
        self.cond.dims()[0]
    }

    /// The conditional embeddings `[B, L, D]`.
    pub fn cond(&self) -> &Tensor {
        &self.cond
    }

    /// The unconditional (negative-prompt) embeddings, if computed.
    pub fn uncond(&self) -> Option<&Tensor> {
        self.uncond.as_ref()
    }

    /// Each sample repeated `n` times in a row (diffusers' `num_images_per_prompt`).
    pub fn repeat_each(&self, n: usize) -> Result<Self> {
        if n == 0 {
            return Err(Error::InvalidArgument("images per prompt must be at least 1".into()));
        }
        if n == 1 {
            return Ok(self.clone());
        }
        let rep = |t: &Tensor| -> Result<Tensor> {
            let (b, l, d) = t.dims3()?;
            Ok(t.unsqueeze(1)?.broadcast_as((b, n, l, d))?.reshape((b * n, l, d))?)
        };
        Self::new(rep(&self.cond)?, self.uncond.as_ref().map(rep).transpose()?)
    }
}

/// Classifier-free guidance around a [`ConditionalModel`]: a [`Denoiser`] for the sampler.
///
/// ```no_run
/// # fn demo(unet: &deradiff_sd::Unet, emb: &deradiff_sd::PromptEmbeddings) -> deradiff_sd::Result<()> {
/// use deradiff_core::Denoiser;
/// let guided = deradiff_sd::Guided::new(unet, emb, 7.5)?;
/// # let x = candle_core::Tensor::zeros((1, 4, 8, 8), candle_core::DType::F32, &candle_core::Device::Cpu)?;
/// let eps = guided.predict(&x, 999.0)?;
/// # Ok(()) }
/// ```
pub struct Guided<'a, M: ?Sized> {
    model: &'a M,
    embeddings: &'a PromptEmbeddings,
    scale: GuidanceScale,
}

impl<M: ?Sized> std::fmt::Debug for Guided<'_, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guided").field("scale", &self.scale).field("batch", &self.embeddings.batch()).finish()
    }
}

impl<'a, M: ConditionalModel + ?Sized> Guided<'a, M> {
    /// Guides `model` with `embeddings` at `scale` (an error for a negative or non-finite scale,
    /// or for a scale above 1 without negative-prompt embeddings).
    pub fn new(model: &'a M, embeddings: &'a PromptEmbeddings, scale: f64) -> Result<Self> {
        let scale = GuidanceScale::new(scale)?;
        if scale.is_active() && embeddings.uncond.is_none() {
            return Err(Error::InvalidArgument(format!(
                "guidance scale {} needs negative-prompt embeddings; encode them with guidance on",
                scale.value()
            )));
        }
        Ok(Self { model, embeddings, scale })
    }

    /// The guidance scale.
    pub fn scale(&self) -> GuidanceScale {
        self.scale
    }

    fn guided(&self, x: &Tensor, timestep: f64) -> Result<Tensor> {
        let b = x.dims().first().copied().unwrap_or(0);
        if b != self.embeddings.batch() {
            return Err(Error::InvalidArgument(format!(
                "latent batch {b} differs from the {} prompt embeddings",
                self.embeddings.batch()
            )));
        }
        match (&self.embeddings.both, self.scale.is_active()) {
            (Some(both), true) => {
                let x2 = Tensor::cat(&[x, x], 0)?;
                let out = self.model.forward_conditional(&x2, timestep, both)?;
                let uncond = out.narrow(0, 0, b)?;
                let cond = out.narrow(0, b, b)?;
                // diffusers: noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond)
                Ok((&uncond + ((&cond - &uncond)? * self.scale.value())?)?)
            }
            _ => self.model.forward_conditional(x, timestep, &self.embeddings.cond),
        }
    }
}

impl<M: ConditionalModel + ?Sized> Denoiser for Guided<'_, M> {
    fn predict(&self, x: &Tensor, timestep: f64) -> deradiff_core::Result<Tensor> {
        Ok(self.guided(x, timestep)?)
    }
}
