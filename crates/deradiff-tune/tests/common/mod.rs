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
        let x = samples.to_dtype(DType::F64)?.flatten_from(1)?;
        let d = x.dim(1)?;
        let w: Vec<f64> = (0..d).map(|i| (1.0 + 0.5 * ((i as f64) * 0.37).sin()) / d as f64).collect();
        let w = Tensor::from_vec(w, (d, 1), x.device())?;
        Ok((x + 1.0)?.matmul(&w)?.flatten_all()?.to_vec1::<f64>()?)
    }
}
