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

use crate::conditioning::{AddedConditioning, ConditionalModel};
use crate::error::{Error, Result};

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
    /// SDXL: the added conditioning of `cond`, of `uncond`, and `[uncond; cond]`.
    added: Option<AddedConditioning>,
    added_uncond: Option<AddedConditioning>,
    added_both: Option<AddedConditioning>,
}

impl PromptEmbeddings {
    /// From conditional embeddings `[B, L, D]` and, for guidance, unconditional ones of the same
    /// shape.
    pub fn new(cond: Tensor, uncond: Option<Tensor>) -> Result<Self> {
        if cond.rank() != 3 || cond.dim(0)? == 0 {
            return Err(Error::shape(
                "the prompt embeddings given to PromptEmbeddings::new",
                "[batch >= 1, tokens, width]",
                cond.dims(),
            ));
        }
        let both = match &uncond {
            Some(u) => {
                if u.shape() != cond.shape() {
                    return Err(Error::shape(
                        "the negative-prompt embeddings given to PromptEmbeddings::new",
                        format!("{:?} (the prompt embeddings' shape)", cond.dims()),
                        u.dims(),
                    ));
                }
                if u.dtype() != cond.dtype() {
                    return Err(Error::DTypeMismatch {
                        context: "the negative-prompt embeddings given to PromptEmbeddings::new (the prompt \
                                  embeddings' dtype)"
                            .into(),
                        expected: cond.dtype(),
                        got: u.dtype(),
                    });
                }
                Some(Tensor::cat(&[u, &cond], 0)?)
            }
            None => None,
        };
        Ok(Self { cond, uncond, both, added: None, added_uncond: None, added_both: None })
    }

    /// Attaches SDXL's added conditioning: `cond` for the prompts and, exactly when there are
    /// negative-prompt embeddings, `uncond` for them (same batch).
    pub fn with_added(mut self, cond: AddedConditioning, uncond: Option<AddedConditioning>) -> Result<Self> {
        let b = self.batch();
        for (which, a) in [("", Some(&cond)), ("negative-prompt ", uncond.as_ref())] {
            if let Some(a) = a.filter(|a| a.batch() != b) {
                return Err(Error::shape(
                    format!("the {which}pooled text embeddings given to PromptEmbeddings::with_added"),
                    format!("[{b}, width] (the prompt embeddings' batch)"),
                    a.text_embeds().dims(),
                ));
            }
        }
        if uncond.is_some() != self.uncond.is_some() {
            return Err(Error::InvalidArgument(
                "PromptEmbeddings::with_added: give negative-prompt added conditioning (`uncond`) exactly when the \
                 embeddings have negative-prompt embeddings"
                    .into(),
            ));
        }
        self.added_both = uncond.as_ref().map(|u| u.cat(&cond)).transpose()?;
        self.added = Some(cond);
        self.added_uncond = uncond;
        Ok(self)
    }

    /// SDXL's added conditioning of the prompts, if any.
    pub fn added(&self) -> Option<&AddedConditioning> {
        self.added.as_ref()
    }

    /// SDXL's added conditioning of the negative prompts, if any.
    pub fn added_uncond(&self) -> Option<&AddedConditioning> {
        self.added_uncond.as_ref()
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

    /// The embeddings of a batch whose rows come from several encodings: `parts[0]`'s rows, then
    /// `parts[1]`'s, … along the batch, for the conditional embeddings, the negative-prompt
    /// embeddings and SDXL's added conditioning alike. The layout contract of one encoding holds
    /// for the result: row `i` of [`Self::uncond`] is the negative prompt of row `i` of
    /// [`Self::cond`], and [`Guided`] runs `[uncond; cond]` of the whole batch (so every row is
    /// guided by its own part's negative prompt). Prompt batching stacks the encodings of
    /// different prompts this way (each repeated with [`Self::repeat_each`] first as needed).
    ///
    /// An error for no parts; for parts of different token counts, widths or dtypes; or for a
    /// mix of parts with and without negative-prompt embeddings, or with and without added
    /// conditioning.
    pub fn concat(parts: &[Self]) -> Result<Self> {
        let first = match parts {
            [] => return Err(Error::InvalidArgument("PromptEmbeddings::concat: no parts; give at least one".into())),
            [one] => return Ok(one.clone()),
            [first, ..] => first,
        };
        for (i, p) in parts.iter().enumerate().skip(1) {
            let (a, b) = (p.cond.dims(), first.cond.dims());
            if a[1..] != b[1..] {
                return Err(Error::shape(
                    format!("the prompt embeddings of part #{} given to PromptEmbeddings::concat", i + 1),
                    format!("[batch, {}, {}] (part #1's tokens and width)", b[1], b[2]),
                    a,
                ));
            }
            if p.cond.dtype() != first.cond.dtype() {
                return Err(Error::DTypeMismatch {
                    context: format!(
                        "the prompt embeddings of part #{} given to PromptEmbeddings::concat (part #1's dtype)",
                        i + 1
                    ),
                    expected: first.cond.dtype(),
                    got: p.cond.dtype(),
                });
            }
            for (what, has, first_has) in [
                ("negative-prompt embeddings", p.uncond.is_some(), first.uncond.is_some()),
                ("added conditioning (SDXL)", p.added.is_some(), first.added.is_some()),
            ] {
                if has != first_has {
                    let say = |h: bool| if h { "has" } else { "has no" };
                    return Err(Error::InvalidArgument(format!(
                        "PromptEmbeddings::concat: part #{} {} {what} and part #1 {}; encode every part the same \
                         way (the same guidance on or off, the same checkpoint)",
                        i + 1,
                        say(has),
                        say(first_has)
                    )));
                }
            }
        }
        let cond = Tensor::cat(&parts.iter().map(|p| &p.cond).collect::<Vec<_>>(), 0)?;
        let uncond = match first.uncond {
            Some(_) => Some(Tensor::cat(&parts.iter().filter_map(|p| p.uncond.as_ref()).collect::<Vec<_>>(), 0)?),
            None => None,
        };
        let out = Self::new(cond, uncond)?;
        if first.added.is_none() {
            return Ok(out);
        }
        let added = AddedConditioning::concat(&parts.iter().filter_map(|p| p.added.clone()).collect::<Vec<_>>())?;
        let added_uncond = match first.added_uncond {
            Some(_) => Some(AddedConditioning::concat(
                &parts.iter().filter_map(|p| p.added_uncond.clone()).collect::<Vec<_>>(),
            )?),
            None => None,
        };
        out.with_added(added, added_uncond)
    }

    /// Each sample repeated `n` times in a row (diffusers' `num_images_per_prompt`).
    pub fn repeat_each(&self, n: usize) -> Result<Self> {
        if n == 0 {
            return Err(Error::InvalidArgument("PromptEmbeddings::repeat_each: n must be at least 1".into()));
        }
        if n == 1 {
            return Ok(self.clone());
        }
        let rep = |t: &Tensor| -> Result<Tensor> {
            let (b, l, d) = t.dims3()?;
            Ok(t.unsqueeze(1)?.broadcast_as((b, n, l, d))?.reshape((b * n, l, d))?)
        };
        let out = Self::new(rep(&self.cond)?, self.uncond.as_ref().map(rep).transpose()?)?;
        match &self.added {
            Some(a) => {
                out.with_added(a.repeat_each(n)?, self.added_uncond.as_ref().map(|u| u.repeat_each(n)).transpose()?)
            }
            None => Ok(out),
        }
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
pub struct Guided<'a, M> {
    model: M,
    embeddings: &'a PromptEmbeddings,
    scale: GuidanceScale,
}

impl<M> std::fmt::Debug for Guided<'_, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guided").field("scale", &self.scale).field("batch", &self.embeddings.batch()).finish()
    }
}

impl<'a, M: ConditionalModel> Guided<'a, M> {
    /// Guides `model` (a reference such as `&Unet`, or a view such as
    /// [`crate::Unet::adapter_view`]) with `embeddings` at `scale` (an error for a negative or
    /// non-finite scale, or for a scale above 1 without negative-prompt embeddings).
    pub fn new(model: M, embeddings: &'a PromptEmbeddings, scale: f64) -> Result<Self> {
        let scale = GuidanceScale::new(scale)?;
        if scale.is_active() && embeddings.uncond.is_none() {
            return Err(Error::InvalidArgument(format!(
                "Guided::new: guidance scale {} (above 1: guidance on) needs negative-prompt embeddings, and these \
                 have none; encode them with guidance on (a scale above 1 for StableDiffusion::encode_prompts, or \
                 in Request::guidance_scale for StableDiffusion::encode)",
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
            return Err(Error::shape(
                "the latents given to a guided denoiser (Guided::predict)",
                format!("[{}, channels, height, width] (the batch of its prompt embeddings)", self.embeddings.batch()),
                x.dims(),
            ));
        }
        match (&self.embeddings.both, self.scale.is_active()) {
            (Some(both), true) => {
                let x2 = Tensor::cat(&[x, x], 0)?;
                let out = self.model.forward_added(&x2, timestep, both, self.embeddings.added_both.as_ref())?;
                let uncond = out.narrow(0, 0, b)?;
                let cond = out.narrow(0, b, b)?;
                // diffusers: noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond)
                Ok((&uncond + ((&cond - &uncond)? * self.scale.value())?)?)
            }
            _ => self.model.forward_added(x, timestep, &self.embeddings.cond, self.embeddings.added.as_ref()),
        }
    }
}

impl<M: ConditionalModel> Denoiser for Guided<'_, M> {
    fn predict(&self, x: &Tensor, timestep: f64) -> deradiff_core::Result<Tensor> {
        Ok(self.guided(x, timestep)?)
    }
}

/// Classifier-free guidance for several models of one joint UNet — the reference and
/// LoRA-aligned models sharing its base weights ([`crate::Unet::with_adapters`]) — in **one**
/// UNet pass per step: the rows of every model (each with its `[uncond; cond]` pair) are stacked
/// and run by [`crate::Unet::forward_rows`], every adapted layer adding its delta to its own
/// model's rows. [`Self::denoisers`] gives one [`Denoiser`] per model for the sampler: the first
/// one asked at a step runs the pass for all, the others take their rows from it (the same
/// latents tensor and timestep). The outputs equal [`Guided`] around each model's merged UNet.
pub struct JointGuided<'a> {
    unet: &'a crate::Unet,
    models: Vec<Option<usize>>,
    embeddings: &'a PromptEmbeddings,
    scale: GuidanceScale,
    /// Context and added conditioning stacked for all models (built once).
    context: Tensor,
    added: Option<AddedConditioning>,
    /// The last pass: (latents tensor id, timestep bits) and each model's guided output.
    last: std::sync::Mutex<Option<(candle_core::TensorId, u64, Vec<Tensor>)>>,
}

impl std::fmt::Debug for JointGuided<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JointGuided").field("models", &self.models).field("scale", &self.scale).finish()
    }
}

impl<'a> JointGuided<'a> {
    /// Guides the models `models` of `unet` (`None`: its base weights; `Some(k)`: attached
    /// adapter `k`) with `embeddings` at `scale`, as [`Guided::new`] checks them.
    pub fn new(
        unet: &'a crate::Unet,
        models: Vec<Option<usize>>,
        embeddings: &'a PromptEmbeddings,
        scale: f64,
    ) -> Result<Self> {
        let scale = Guided::new(unet, embeddings, scale)?.scale();
        if models.is_empty() {
            return Err(Error::InvalidArgument("JointGuided::new: no models; give at least one".into()));
        }
        if let Some(k) = models.iter().flatten().find(|&&k| k >= unet.num_adapters()) {
            return Err(Error::InvalidArgument(format!(
                "JointGuided::new: model adapter {k} is not attached to {} ({} attached)",
                unet.source().display(),
                unet.num_adapters()
            )));
        }
        let n = models.len();
        let (context, added) = match (&embeddings.both, scale.is_active()) {
            (Some(both), true) => (both, embeddings.added_both.as_ref()),
            _ => (&embeddings.cond, embeddings.added.as_ref()),
        };
        let context = Tensor::cat(&vec![context; n], 0)?;
        let added = added.map(|a| AddedConditioning::concat(&vec![a.clone(); n])).transpose()?;
        Ok(Self { unet, models, embeddings, scale, context, added, last: std::sync::Mutex::new(None) })
    }

    /// One denoiser per model, in the order of `models`.
    pub fn denoisers(&self) -> Vec<JointDenoiser<'_, 'a>> {
        (0..self.models.len()).map(|index| JointDenoiser { joint: self, index }).collect()
    }

    /// Every model's guided output for `x` at `timestep`, from one UNet pass.
    pub fn predict_all(&self, x: &Tensor, timestep: f64) -> Result<Vec<Tensor>> {
        let b = x.dims().first().copied().unwrap_or(0);
        if b != self.embeddings.batch() {
            return Err(Error::shape(
                "the latents given to a guided denoiser (JointGuided::predict_all)",
                format!("[{}, channels, height, width] (the batch of its prompt embeddings)", self.embeddings.batch()),
                x.dims(),
            ));
        }
        let guided = self.embeddings.both.is_some() && self.scale.is_active();
        let rows = if guided { 2 * b } else { b };
        let per_model = if guided { Tensor::cat(&[x, x], 0)? } else { x.clone() };
        let n = self.models.len();
        let xs = Tensor::cat(&vec![&per_model; n], 0)?;
        let groups: Vec<crate::RowGroup> =
            self.models.iter().map(|&adapter| crate::RowGroup { adapter, rows }).collect();
        let out = self.unet.forward_rows(&xs, timestep, &self.context, self.added.as_ref(), &groups)?;
        (0..n)
            .map(|m| {
                let own = out.narrow(0, m * rows, rows)?;
                if guided {
                    let uncond = own.narrow(0, 0, b)?;
                    let cond = own.narrow(0, b, b)?;
                    Ok((&uncond + ((&cond - &uncond)? * self.scale.value())?)?)
                } else {
                    Ok(own)
                }
            })
            .collect()
    }

    fn predict_one(&self, index: usize, x: &Tensor, timestep: f64) -> Result<Tensor> {
        let key = (x.id(), timestep.to_bits());
        let mut last = self.last.lock().map_err(|_| Error::Internal("a joint guidance pass panicked earlier"))?;
        if let Some((id, t, outs)) = last.as_ref() {
            if (*id, *t) == key {
                return outs.get(index).cloned().ok_or(Error::Internal("joint guidance: model index out of range"));
            }
        }
        let outs = self.predict_all(x, timestep)?;
        let out = outs.get(index).cloned().ok_or(Error::Internal("joint guidance: model index out of range"))?;
        *last = Some((key.0, key.1, outs));
        Ok(out)
    }
}

/// One model of a [`JointGuided`]: a [`Denoiser`] for the sampler.
#[derive(Debug, Clone, Copy)]
pub struct JointDenoiser<'j, 'a> {
    joint: &'j JointGuided<'a>,
    index: usize,
}

impl Denoiser for JointDenoiser<'_, '_> {
    fn predict(&self, x: &Tensor, timestep: f64) -> deradiff_core::Result<Tensor> {
        Ok(self.joint.predict_one(self.index, x, timestep)?)
    }
}
