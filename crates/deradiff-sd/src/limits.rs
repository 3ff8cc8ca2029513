//! The size limits of this crate, below the models that check them: how large an image side, a
//! batch and a latent tensor may be, refused before anything is allocated. Their public spelling
//! is [`crate::StableDiffusion::MAX_IMAGE_SIDE`], [`crate::StableDiffusion::MAX_BATCH`] and
//! [`crate::StableDiffusion::MAX_LATENT_ELEMENTS`].

use crate::error::{Error, Result};

/// The largest image height or width, in pixels ([`crate::StableDiffusion::MAX_IMAGE_SIDE`]).
pub(crate) const MAX_IMAGE_SIDE: usize = 8192;

/// The most samples one request may have ([`crate::StableDiffusion::MAX_BATCH`]).
pub(crate) const MAX_BATCH: usize = 4096;

/// The most latent elements one run may have ([`crate::StableDiffusion::MAX_LATENT_ELEMENTS`]).
pub(crate) const MAX_LATENT_ELEMENTS: usize = 1 << 28;

/// An error unless `dims` (latents `[batch, channels, height, width]` as the UNet or the VAE
/// takes them) is non-empty and has at most twice [`MAX_LATENT_ELEMENTS`]
/// elements (classifier-free guidance doubles the batch), computed without overflow: an
/// [`Error::ShapeMismatch`] with `context` (the argument and the function) otherwise.
pub(crate) fn check_latent_size(dims: &[usize], context: impl FnOnce() -> String) -> Result<()> {
    let limit = 2 * MAX_LATENT_ELEMENTS;
    let elements = dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
    match elements {
        Some(n) if n > 0 && n <= limit => Ok(()),
        _ => Err(Error::shape(
            context(),
            format!(
                "[batch, channels, height, width], every dimension at least 1 and at most {limit} elements in all \
                 (twice StableDiffusion::MAX_LATENT_ELEMENTS)"
            ),
            dims,
        )),
    }
}
