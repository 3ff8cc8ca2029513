//! What a guided model is, below the models that implement it: [`ConditionalModel`] (a network
//! conditioned on per-sample text embeddings, what classifier-free guidance wraps) and
//! [`AddedConditioning`] (SDXL's pooled text embeddings and micro-conditioning `time_ids`).
//! The UNet implements the one and takes the other; guidance ([`crate::Guided`]) and the pipeline
//! build on both.

use candle_core::Tensor;

use crate::error::{Error, Result};

/// A network conditioned on a per-sample context (text embeddings): what [`crate::Guided`] wraps.
/// Implemented by [`crate::Unet`]; implement it to guide your own model.
pub trait ConditionalModel {
    /// The model output for `x` `[B, …]` at `timestep` given `context` `[B, …]`.
    fn forward_conditional(&self, x: &Tensor, timestep: f64, context: &Tensor) -> Result<Tensor>;

    /// The model output with SDXL's added conditioning (one row per sample). The default
    /// implementation takes none: it runs [`Self::forward_conditional`] for `None` and is an
    /// error for `Some`.
    fn forward_added(
        &self,
        x: &Tensor,
        timestep: f64,
        context: &Tensor,
        added: Option<&AddedConditioning>,
    ) -> Result<Tensor> {
        match added {
            None => self.forward_conditional(x, timestep, context),
            Some(_) => Err(Error::ModelMismatch(
                "this model takes no added conditioning (SDXL's pooled text embeddings and time_ids): its \
                 ConditionalModel::forward_added is the default one"
                    .into(),
            )),
        }
    }
}

impl<M: ConditionalModel + ?Sized> ConditionalModel for &M {
    fn forward_conditional(&self, x: &Tensor, timestep: f64, context: &Tensor) -> Result<Tensor> {
        (**self).forward_conditional(x, timestep, context)
    }

    fn forward_added(
        &self,
        x: &Tensor,
        timestep: f64,
        context: &Tensor,
        added: Option<&AddedConditioning>,
    ) -> Result<Tensor> {
        (**self).forward_added(x, timestep, context, added)
    }
}

/// SDXL's added conditioning, one row per sample: the pooled text embedding `[B, P]` and the
/// six micro-conditioning `time_ids` `[B, 6]` (original height, width, crop top, left, target
/// height, width), both f32 or the model's dtype.
#[derive(Debug, Clone)]
pub struct AddedConditioning {
    text_embeds: Tensor,
    time_ids: Tensor,
}

impl AddedConditioning {
    /// Checks the shapes: `text_embeds` `[B, P]`, `time_ids` `[B, K]` with the same `B ≥ 1`.
    pub fn new(text_embeds: Tensor, time_ids: Tensor) -> Result<Self> {
        let (te, ti) = (text_embeds.dims(), time_ids.dims());
        if te.len() != 2 || te[0] == 0 {
            return Err(Error::shape(
                "the pooled text embeddings given to AddedConditioning::new",
                "[batch >= 1, width]",
                te,
            ));
        }
        if ti.len() != 2 || ti[0] != te[0] {
            return Err(Error::shape(
                "the time_ids given to AddedConditioning::new",
                format!("[{}, 6] (one row per pooled text embedding)", te[0]),
                ti,
            ));
        }
        Ok(Self { text_embeds, time_ids })
    }

    /// The pooled text embeddings `[B, P]`.
    pub fn text_embeds(&self) -> &Tensor {
        &self.text_embeds
    }

    /// The time ids `[B, K]`.
    pub fn time_ids(&self) -> &Tensor {
        &self.time_ids
    }

    /// Number of samples.
    pub fn batch(&self) -> usize {
        self.text_embeds.dims()[0]
    }

    /// `[self; other]` along the batch.
    pub fn cat(&self, other: &Self) -> Result<Self> {
        Self::new(
            Tensor::cat(&[&self.text_embeds, &other.text_embeds], 0)?,
            Tensor::cat(&[&self.time_ids, &other.time_ids], 0)?,
        )
    }

    /// `[parts[0]; parts[1]; …]` along the batch: the rows of every part, in order (an error for
    /// no parts, or for parts whose widths or dtypes differ).
    pub fn concat(parts: &[Self]) -> Result<Self> {
        match parts {
            [] => Err(Error::InvalidArgument("AddedConditioning::concat: no parts; give at least one".into())),
            [one] => Ok(one.clone()),
            _ => {
                let (te, ti): (Vec<&Tensor>, Vec<&Tensor>) =
                    parts.iter().map(|p| (&p.text_embeds, &p.time_ids)).unzip();
                for (i, p) in parts.iter().enumerate().skip(1) {
                    for (what, a, b) in
                        [("pooled text embeddings", &p.text_embeds, te[0]), ("time_ids", &p.time_ids, ti[0])]
                    {
                        if a.dims()[1] != b.dims()[1] {
                            return Err(Error::shape(
                                format!("the {what} of part #{} given to AddedConditioning::concat", i + 1),
                                format!("[batch, {}] (part #1's width)", b.dims()[1]),
                                a.dims(),
                            ));
                        }
                        if a.dtype() != b.dtype() {
                            return Err(Error::DTypeMismatch {
                                context: format!(
                                    "the {what} of part #{} given to AddedConditioning::concat (part #1's dtype)",
                                    i + 1
                                ),
                                expected: b.dtype(),
                                got: a.dtype(),
                            });
                        }
                    }
                }
                Self::new(Tensor::cat(&te, 0)?, Tensor::cat(&ti, 0)?)
            }
        }
    }

    /// Each row repeated `n` times in a row.
    pub fn repeat_each(&self, n: usize) -> Result<Self> {
        let rep = |t: &Tensor| -> Result<Tensor> {
            let (b, d) = t.dims2()?;
            Ok(t.unsqueeze(1)?.broadcast_as((b, n, d))?.reshape((b * n, d))?)
        };
        Self::new(rep(&self.text_embeds)?, rep(&self.time_ids)?)
    }
}
