//! Helpers shared by the Stable Diffusion sweep tests.
#![allow(dead_code)]

use candle_core::{DType, Tensor};
use deradiff_rewards::{Result, Reward};

/// A cheap image reward: a fixed, position-dependent positive weighting of the decoded pixels
/// shifted to `[0, 2]` (sensitive to every pixel's value and place; a sum of positive terms, so
/// that a relative difference of two scores is not inflated by cancellation).
pub struct Pixels;

impl Reward for Pixels {
    fn name(&self) -> String {
        "pixels".into()
    }

    fn score(&self, samples: &Tensor, _prompts: Option<&[&str]>) -> Result<Vec<f64>> {
        // Each row on its own, in a fixed order (no batched matmul whose reduction could depend
        // on the batch: the sweeps' batch-invariance tests compare these sums bit for bit).
        let rows = samples.to_dtype(DType::F64)?.flatten_from(1)?.to_vec2::<f64>()?;
        Ok(rows
            .iter()
            .map(|row| {
                let d = row.len() as f64;
                row.iter().enumerate().map(|(i, &x)| (x + 1.0) * (1.0 + 0.5 * ((i as f64) * 0.37).sin()) / d).sum()
            })
            .collect())
    }
}

/// Not a reward: each image's fingerprint, an FNV-1a hash of the bits of its decoded f32 values
/// (52 bits, exact in an f64), so that rows equal bit for bit mean images equal bit for bit (and
/// so byte for byte in any 8-bit encoding of them).
pub struct ImageBits;

impl Reward for ImageBits {
    fn name(&self) -> String {
        "image_bits".into()
    }

    fn score(&self, samples: &Tensor, _prompts: Option<&[&str]>) -> Result<Vec<f64>> {
        let rows = samples.to_dtype(DType::F32)?.flatten_from(1)?.to_vec2::<f32>()?;
        Ok(rows
            .iter()
            .map(|row| {
                let mut h = 0xcbf2_9ce4_8422_2325u64;
                for b in row.iter().flat_map(|x| x.to_bits().to_le_bytes()) {
                    h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
                }
                (h >> 12) as f64
            })
            .collect())
    }
}
