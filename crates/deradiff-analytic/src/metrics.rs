//! Metrics between sample sets: mean reward, mean distance between coupled samples, and the
//! energy distance between two empirical distributions.

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};
use crate::reward::Reward;

/// Rows of a `[n, d]` tensor as one flat f64 buffer, with `(n, d)`.
pub(crate) fn rows_of(samples: &Tensor, what: &str) -> Result<(Vec<f64>, usize, usize)> {
    let (n, d) = samples
        .dims2()
        .map_err(|_| Error::InvalidArgument(format!("{what} must have shape [n, d], got {:?}", samples.dims())))?;
    if n == 0 || d == 0 {
        return Err(Error::InvalidArgument(format!("{what} is empty (shape {:?})", samples.dims())));
    }
    let flat = samples.to_device(&Device::Cpu)?.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    Ok((flat, n, d))
}

/// The mean of `r` over the rows of a `[n, d]` sample tensor.
pub fn mean_reward(reward: &Reward, samples: &Tensor) -> Result<f64> {
    let values = reward.evaluate(samples)?;
    if values.is_empty() {
        return Err(Error::InvalidArgument("no samples to average the reward over".into()));
    }
    Ok(values.iter().sum::<f64>() / values.len() as f64)
}

/// The mean Euclidean distance `1/n Σ_i ‖a_i − b_i‖` between row `i` of `a` and row `i` of `b`:
/// for two runs from the same noise (coupled samples) it measures how far one sampler's output
/// moved from the other's, free of Monte-Carlo noise. Both tensors must have one shape `[n, d]`.
pub fn coupled_distance(a: &Tensor, b: &Tensor) -> Result<f64> {
    let (xa, n, d) = rows_of(a, "the first sample set")?;
    let (xb, nb, db) = rows_of(b, "the second sample set")?;
    if (n, d) != (nb, db) {
        return Err(Error::InvalidArgument(format!(
            "coupled samples must have one shape, got [{n}, {d}] and [{nb}, {db}]"
        )));
    }
    let total: f64 = xa.chunks_exact(d).zip(xb.chunks_exact(d)).map(|(p, q)| dist(p, q)).sum();
    Ok(total / n as f64)
}

fn dist(p: &[f64], q: &[f64]) -> f64 {
    p.iter().zip(q).map(|(x, y)| (x - y) * (x - y)).sum::<f64>().sqrt()
}

/// The energy distance (Székely & Rizzo) between the empirical distributions of the rows of `a`
/// and of `b` (`[n, d]` and `[m, d]`):
///
/// `D = √( 2 E‖X − Y‖ − E‖X − X'‖ − E‖Y − Y'‖ )`,
///
/// with every expectation the plain average over all pairs (the V-statistic, which is never
/// negative). `D` is a metric on distributions, zero only when they are equal, in the units of
/// `x`, and needs no random projections or tuning. The cost is `O((n + m)² d)`, so large sample
/// sets should be subsampled first (the study uses at most [`ENERGY_DISTANCE_MAX_ROWS`] rows).
pub fn energy_distance(a: &Tensor, b: &Tensor) -> Result<f64> {
    let (xa, _, d) = rows_of(a, "the first sample set")?;
    let (xb, _, db) = rows_of(b, "the second sample set")?;
    if d != db {
        return Err(Error::InvalidArgument(format!("sample sets of dimensions {d} and {db} cannot be compared")));
    }
    Ok(energy_distance_flat(&xa, &xb, d))
}

/// The most rows per sample set that the study feeds to [`energy_distance`] (the first rows,
/// which are i.i.d.).
pub const ENERGY_DISTANCE_MAX_ROWS: usize = 4096;

pub(crate) fn energy_distance_flat(xa: &[f64], xb: &[f64], d: usize) -> f64 {
    // Every mean is a full double loop in the same order, so that two identical sample sets give
    // exactly 0 (the three sums round identically).
    let mean_pairwise = |x: &[f64], y: &[f64]| -> f64 {
        let mut s = 0.0;
        for p in x.chunks_exact(d) {
            for q in y.chunks_exact(d) {
                s += dist(p, q);
            }
        }
        s / ((x.len() / d) * (y.len() / d)) as f64
    };
    let e = 2.0 * mean_pairwise(xa, xb) - mean_pairwise(xa, xa) - mean_pairwise(xb, xb);
    e.max(0.0).sqrt()
}
