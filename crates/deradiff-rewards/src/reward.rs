//! The [`Reward`] trait: one score per sample of a batch.
//!
//! A batch is a tensor whose first dimension indexes samples (`[n, d]` points of the analytic
//! testbed, `[n, 3, H, W]` decoded images) with, optionally, one prompt per sample, so that
//! text–image rewards (CLIP score, PickScore) implement the same trait as the analytic ones.

use candle_core::Tensor;

use crate::error::{Error, Result};

/// Scores a batch of samples: one finite number per sample, higher is better.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use deradiff_rewards::{Result, Reward};
///
/// /// The first coordinate of each sample.
/// struct First;
///
/// impl Reward for First {
///     fn name(&self) -> String {
///         "x1".into()
///     }
///     fn score(&self, samples: &Tensor, _prompts: Option<&[&str]>) -> Result<Vec<f64>> {
///         Ok(samples.narrow(1, 0, 1)?.flatten_all()?.to_vec1()?)
///     }
/// }
///
/// let batch = Tensor::new(&[[1.0f64, 5.0], [-2.0, 0.0]], &Device::Cpu)?;
/// assert_eq!(First.score(&batch, None)?, vec![1.0, -2.0]);
/// # Ok::<(), deradiff_rewards::Error>(())
/// ```
pub trait Reward {
    /// A short name, used as a column name in results files (`pickscore`, `proxy`, …).
    fn name(&self) -> String;

    /// One score per sample along dimension 0 of `samples`. `prompts`, when given, has one
    /// entry per sample (the prompt the sample was generated for); rewards that ignore text
    /// ignore it, and rewards that need it return an error when it is missing.
    fn score(&self, samples: &Tensor, prompts: Option<&[&str]>) -> Result<Vec<f64>>;
}

impl<R: Reward + ?Sized> Reward for &R {
    fn name(&self) -> String {
        (**self).name()
    }
    fn score(&self, samples: &Tensor, prompts: Option<&[&str]>) -> Result<Vec<f64>> {
        (**self).score(samples, prompts)
    }
}

impl<R: Reward + ?Sized> Reward for Box<R> {
    fn name(&self) -> String {
        (**self).name()
    }
    fn score(&self, samples: &Tensor, prompts: Option<&[&str]>) -> Result<Vec<f64>> {
        (**self).score(samples, prompts)
    }
}

/// A reward of 8-bit RGB images — what a user saves as PNG — with one prompt per image when it
/// needs them: what `deradiff score` runs on files made by any tool. [`Reward::score`] of the
/// same reward gives the same numbers for decoded samples (made 8-bit first).
#[cfg(feature = "sd")]
pub trait ImageScorer: Reward {
    /// Whether [`Self::score_rgb`] needs prompts.
    fn needs_prompts(&self) -> bool;

    /// One score per image; `prompts` has one entry per image (an error when it is needed and
    /// missing; ignored by rewards of the image alone).
    fn score_rgb(&self, images: &[deradiff_sd::RgbImage], prompts: Option<&[&str]>) -> Result<Vec<f64>>;

    /// One score per decoded file, each made RGB as the reward's reference loader makes it (its
    /// PIL mode, alpha and transparency handled as the reference does: see
    /// [`crate::ClipPreprocessor::reference_rgb`]). By default PIL's `convert("RGB")`, then
    /// [`Self::score_rgb`].
    fn score_pil(&self, images: &[crate::PilImage], prompts: Option<&[&str]>) -> Result<Vec<f64>> {
        let rgb: Vec<deradiff_sd::RgbImage> = images.iter().map(crate::PilImage::to_rgb).collect();
        self.score_rgb(&rgb, prompts)
    }
}

/// The prompts a text–image reward named `reward` needs, or the error saying to give one per
/// image.
#[cfg(feature = "sd")]
pub(crate) fn require_prompts<'a, 'b>(prompts: Option<&'a [&'b str]>, reward: &str) -> Result<&'a [&'b str]> {
    prompts.ok_or_else(|| {
        Error::InvalidArgument(format!(
            "the reward {reward:?} scores images against prompts: give one prompt per image"
        ))
    })
}

/// Scores a batch and checks the answer: one score per sample, every score finite (else
/// [`Error::NonFiniteReward`], whose context names `context` and the sample).
pub fn score_checked(
    reward: &dyn Reward,
    samples: &Tensor,
    prompts: Option<&[&str]>,
    context: &str,
) -> Result<Vec<f64>> {
    let n = samples.dims().first().copied().unwrap_or(0);
    if let Some(p) = prompts {
        if p.len() != n {
            return Err(Error::InvalidArgument(format!(
                "{} prompts were given for a batch of {n} samples; give one prompt per sample",
                p.len()
            )));
        }
    }
    let scores = reward.score(samples, prompts)?;
    if scores.len() != n {
        return Err(Error::InvalidArgument(format!(
            "the reward {:?} returned {} scores for a batch of {n} samples",
            reward.name(),
            scores.len()
        )));
    }
    if let Some((i, v)) = scores.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(Error::NonFiniteReward {
            reward: reward.name(),
            value: *v,
            context: format!("{context}, sample {i}"),
        });
    }
    Ok(scores)
}
