//! Explicit, seeded noise: the same seed gives the same bits on the same machine, whatever the
//! number of models, because noise is drawn once per step by the sampling loop and never by a
//! model or a scheduler.

use std::collections::VecDeque;

use candle_core::{DType, Device, Shape, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::error::{Error, Result};

/// A source of standard-normal tensors for the sampling loop.
pub trait NoiseSource {
    /// A tensor of independent `N(0, 1)` draws.
    fn standard_normal(&mut self, shape: &Shape, dtype: DType, device: &Device) -> Result<Tensor>;
}

/// Standard normals from ChaCha20 seeded with a `u64` (a stream that does not change between
/// `rand` releases), drawn in f64 and rounded to the requested dtype.
///
/// candle's own CPU generator cannot be seeded (`Device::Cpu.set_seed` fails in 0.11), so all of
/// deradiff's noise comes from here.
#[derive(Debug, Clone)]
pub struct SeededNoise {
    rng: ChaCha20Rng,
}

impl SeededNoise {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Self { rng: ChaCha20Rng::seed_from_u64(seed) }
    }

    /// `n` standard normals as f64.
    pub fn draw(&mut self, n: usize) -> Vec<f64> {
        (0..n).map(|_| StandardNormal.sample(&mut self.rng)).collect()
    }
}

impl NoiseSource for SeededNoise {
    fn standard_normal(&mut self, shape: &Shape, dtype: DType, device: &Device) -> Result<Tensor> {
        let data = self.draw(shape.elem_count());
        Ok(Tensor::from_vec(data, shape.clone(), &Device::Cpu)?.to_dtype(dtype)?.to_device(device)?)
    }
}

/// Replays given tensors in order: for checking a sampling run against a reference
/// implementation that used the same noise (diffusers with injected noise).
#[derive(Debug, Clone, Default)]
pub struct InjectedNoise {
    queue: VecDeque<Tensor>,
}

impl InjectedNoise {
    /// Noise tensors to hand out, first the initial latent's, then one per step.
    pub fn new(tensors: impl IntoIterator<Item = Tensor>) -> Self {
        Self { queue: tensors.into_iter().collect() }
    }
}

impl NoiseSource for InjectedNoise {
    fn standard_normal(&mut self, shape: &Shape, dtype: DType, device: &Device) -> Result<Tensor> {
        let t = self
            .queue
            .pop_front()
            .ok_or_else(|| Error::InvalidArgument("injected noise exhausted: give one tensor per draw".into()))?;
        if t.shape() != shape {
            return Err(Error::ShapeMismatch {
                context: "injected noise".into(),
                expected: shape.clone(),
                got: t.shape().clone(),
            });
        }
        Ok(t.to_dtype(dtype)?.to_device(device)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_bits_and_moments() {
        let a = SeededNoise::new(7).draw(20_000);
        assert_eq!(a, SeededNoise::new(7).draw(20_000));
        assert_ne!(a, SeededNoise::new(8).draw(20_000));
        let mean = a.iter().sum::<f64>() / a.len() as f64;
        let var = a.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / a.len() as f64;
        assert!(mean.abs() < 0.03 && (var - 1.0).abs() < 0.05, "mean {mean} var {var}");
    }
}
