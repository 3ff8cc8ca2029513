//! Extracting a LoRA from two full UNets: per layer, the best rank-`r` approximation of the
//! weight difference `ΔW = W_aligned − W_reference` (truncated SVD), as `up · down`.
//!
//! The truncated SVD is computed in f64 with `nalgebra`: by default exactly (the symmetric
//! eigendecomposition of the Gram matrix of `ΔW`'s smaller side, then the projection of `ΔW` on
//! its leading eigenvectors: the Eckart–Young optimum), or, with [`SvdMethod::Randomized`], by a
//! randomized range finder (Halko, Martinsson & Tropp 2011, with power iterations), much faster
//! on large layers and near-optimal when the spectrum decays. Each layer's
//! relative Frobenius error `‖ΔW − up·down‖ / ‖ΔW‖` is computed from the residual itself, not
//! estimated.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};
use nalgebra::{DMatrix, SymmetricEigen};

use super::{LoraAdapter, LoraFormat, LoraLayer};
use crate::error::{Error, Result};
use crate::unet::Unet;

/// Options of [`extract_lora`].
#[derive(Clone, Debug)]
pub struct ExtractOptions {
    /// The rank of every extracted layer (clipped to the layer's smaller side).
    pub rank: usize,
    /// How the truncated SVD is computed (exactly by default).
    pub method: SvdMethod,
    /// Layers whose `‖ΔW‖ / ‖W_reference‖` is at most this are left out of the adapter (0 by
    /// default: only layers that did not change at all are left out).
    pub min_relative_change: f64,
    /// Seed of the randomized range finder's projection.
    pub seed: u64,
}

impl Default for ExtractOptions {
    fn default() -> Self {
        Self { rank: 16, method: SvdMethod::Exact, min_relative_change: 0.0, seed: 0 }
    }
}

/// How [`extract_lora`] computes each layer's truncated SVD.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SvdMethod {
    /// The exact truncated SVD (cost `min(m, n)² · max(m, n)` per `m × n` layer).
    Exact,
    /// A randomized range finder of `rank + oversampling` columns with `power_iterations`
    /// (cost `m · n · (rank + oversampling) · (2 · power_iterations + 2)`); exact when
    /// `rank + oversampling` reaches the layer's smaller side.
    Randomized {
        /// Extra dimensions of the range finder (10 is usual).
        oversampling: usize,
        /// Power iterations (2 is usual; more for slowly decaying spectra).
        power_iterations: usize,
    },
}

/// One layer of an [`ExtractReport`].
#[derive(Clone, Debug, PartialEq)]
pub struct LayerReport {
    /// The layer's diffusers module path.
    pub path: String,
    /// Its weight shape (`[out, in]` or `[out, in, kh, kw]`).
    pub shape: Vec<usize>,
    /// The rank extracted (the requested rank, clipped to the layer's smaller side).
    pub rank: usize,
    /// `‖ΔW‖_F`.
    pub delta_norm: f64,
    /// `‖ΔW‖_F / ‖W_reference‖_F`: how much the layer moved.
    pub relative_change: f64,
    /// `‖ΔW − up·down‖_F / ‖ΔW‖_F`: what the rank-`r` adapter misses of the change.
    pub relative_error: f64,
}

/// What [`extract_lora`] did: every extracted layer, the layers left out, and the totals.
#[derive(Clone, Debug, PartialEq)]
pub struct ExtractReport {
    /// The extracted layers, by module path.
    pub layers: Vec<LayerReport>,
    /// Layers left out because they did not change (beyond `min_relative_change`).
    pub unchanged: Vec<String>,
    /// Parameters that differ between the two UNets but that a LoRA cannot carry (biases,
    /// group and layer norms), by tensor name: the extracted adapter misses these changes.
    pub not_representable: Vec<String>,
    /// `sqrt(Σ‖ΔW − up·down‖²) / sqrt(Σ‖ΔW‖²)` over all linear and convolution layers
    /// (left-out layers count with their whole change as error).
    pub total_relative_error: f64,
    /// Parameters of the adapter (all `down` and `up` entries).
    pub parameters: usize,
}

impl ExtractReport {
    /// The adapter's size in bytes when stored in `dtype`.
    pub fn bytes(&self, dtype: DType) -> usize {
        self.parameters * dtype.size_in_bytes()
    }
}

/// Extracts a LoRA from a reference and an aligned UNet of the same architecture: for every
/// linear and convolution layer whose weight changed, the truncated SVD of the change at
/// `options.rank` (`up = U·Σ`, `down = Vᵀ`, scale 1), in the reference UNet's dtype. The adapter
/// loads back with [`LoraAdapter::load`] after [`LoraAdapter::save`] (diffusers layout), and
/// `reference.merged_with(&adapter, 1.0)` approximates `aligned` with the reported errors. Biases
/// and norm parameters are no part of a LoRA: those that differ are listed in
/// [`ExtractReport::not_representable`] (a fully fine-tuned model changes them too).
pub fn extract_lora(
    reference: &Unet,
    aligned: &Unet,
    options: &ExtractOptions,
) -> Result<(LoraAdapter, ExtractReport)> {
    extract_lora_with_progress(reference, aligned, options, &mut |_, _| {})
}

/// [`extract_lora`], calling `progress(done, total)` after each layer (for a progress bar).
pub fn extract_lora_with_progress(
    reference: &Unet,
    aligned: &Unet,
    options: &ExtractOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(LoraAdapter, ExtractReport)> {
    if options.rank == 0 {
        return Err(Error::InvalidArgument("extract_lora: the rank must be at least 1".into()));
    }
    if !(options.min_relative_change >= 0.0 && options.min_relative_change.is_finite()) {
        return Err(Error::InvalidArgument(format!(
            "extract_lora: min_relative_change {} must be a finite number >= 0",
            options.min_relative_change
        )));
    }
    reference.check_same_architecture(aligned)?;
    let ref_weights = reference.layer_weights()?;
    let al_weights = aligned.layer_weights()?;
    let mut noise = deradiff_core::SeededNoise::new(options.seed);
    let mut layers = BTreeMap::new();
    let mut reports = Vec::new();
    let mut unchanged = Vec::new();
    let (mut err2, mut total2, mut parameters) = (0.0f64, 0.0f64, 0usize);
    let total = ref_weights.len();
    for (done, (path, w_ref)) in ref_weights.iter().enumerate() {
        progress(done, total);
        let w_al = al_weights.get(path).ok_or_else(|| Error::Internal("extract_lora: layer sets differ"))?;
        let shape = w_ref.dims().to_vec();
        let (out, cols) = (shape[0], w_ref.elem_count() / shape[0].max(1));
        let a = to_matrix(w_ref, out, cols)?;
        let b = to_matrix(w_al, out, cols)?;
        let delta = &b - &a;
        let delta_norm = delta.norm();
        let ref_norm = a.norm();
        if !delta_norm.is_finite() || !ref_norm.is_finite() {
            return Err(not_finite(path, "the weight difference ‖W_aligned − W_reference‖", delta_norm));
        }
        let relative_change = if ref_norm > 0.0 { delta_norm / ref_norm } else { delta_norm };
        if delta_norm == 0.0 || relative_change <= options.min_relative_change {
            err2 += delta_norm * delta_norm;
            total2 += delta_norm * delta_norm;
            unchanged.push(path.clone());
            continue;
        }
        let rank = options.rank.min(out).min(cols);
        let (up, down) = truncated(&delta, rank, options, &mut noise);
        let residual = (&delta - &up * &down).norm();
        if !residual.is_finite() {
            return Err(not_finite(path, "the extraction's residual ‖ΔW − up·down‖", residual));
        }
        err2 += residual * residual;
        total2 += delta_norm * delta_norm;
        parameters += up.len() + down.len();
        let mut down_shape = vec![rank];
        down_shape.extend_from_slice(&shape[1..]);
        let mut up_shape = vec![out, rank];
        up_shape.extend(std::iter::repeat_n(1, shape.len() - 2));
        let device = reference.device();
        let dtype = reference.dtype();
        let layer = LoraLayer {
            down: from_matrix(&down, &down_shape, dtype, device)?,
            up: from_matrix(&up, &up_shape, dtype, device)?,
            alpha: None,
            origin: path.clone(),
        };
        layers.insert(path.clone(), layer);
        reports.push(LayerReport {
            path: path.clone(),
            shape,
            rank,
            delta_norm,
            relative_change,
            relative_error: residual / delta_norm,
        });
    }
    progress(total, total);
    let total_relative_error = if total2 > 0.0 { (err2 / total2).sqrt() } else { 0.0 };
    if !total_relative_error.is_finite() {
        return Err(not_finite("(all layers)", "the total relative error", total_relative_error));
    }
    let others = aligned.other_parameters()?;
    let mut not_representable = Vec::new();
    for (name, t) in reference.other_parameters()? {
        let differs = match others.get(&name) {
            // NaN (a non-finite parameter) counts as a difference, never as none.
            Some(o) => {
                let d = (o.to_dtype(DType::F32)? - t.to_dtype(DType::F32)?)?.abs()?.max_all()?.to_scalar::<f32>()?;
                d > 0.0 || d.is_nan()
            }
            None => true,
        };
        if differs {
            not_representable.push(name);
        }
    }
    let adapter = LoraAdapter::from_layers(layers, LoraFormat::Diffusers, aligned.source());
    Ok((adapter, ExtractReport { layers: reports, unchanged, not_representable, total_relative_error, parameters }))
}

/// A quantity of the extraction that is not finite: an error, never a reported error of 0 or NaN.
fn not_finite(path: &str, what: &str, value: f64) -> Error {
    Error::InvalidArgument(format!(
        "extract_lora: {what} of `{path}` is {value}, not finite: the two UNets' weights are too large to subtract \
         in f64, or not finite; nothing was extracted"
    ))
}

fn to_matrix(t: &Tensor, rows: usize, cols: usize) -> Result<DMatrix<f64>> {
    let v = t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    Ok(DMatrix::from_row_slice(rows, cols, &v))
}

fn from_matrix(m: &DMatrix<f64>, shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
    let data: Vec<f64> = m.transpose().as_slice().to_vec(); // row-major
    Ok(Tensor::from_vec(data, shape, &Device::Cpu)?.to_dtype(dtype)?.to_device(device)?)
}

/// The best rank-`rank` approximation `up · down` of `m` (`up`: rows × rank, `down`: rank ×
/// cols), from an orthonormal basis of (an approximation of) its leading column space.
fn truncated(
    m: &DMatrix<f64>,
    rank: usize,
    options: &ExtractOptions,
    noise: &mut deradiff_core::SeededNoise,
) -> (DMatrix<f64>, DMatrix<f64>) {
    let (rows, cols) = m.shape();
    if rows > cols {
        // Work on the wide side: M = (Mᵀ)ᵀ ≈ (up' down')ᵀ = down'ᵀ up'ᵀ.
        let (up_t, down_t) = truncated(&m.transpose(), rank, options, noise);
        return (down_t.transpose(), up_t.transpose());
    }
    // Q: an orthonormal basis of the column space to search (all of it for the exact SVD).
    let q = match options.method {
        SvdMethod::Randomized { oversampling, power_iterations } if rank.saturating_add(oversampling) < rows => {
            let k = rank + oversampling;
            let omega = DMatrix::from_vec(cols, k, noise.draw(cols * k));
            let mut q = (m * omega).qr().q();
            for _ in 0..power_iterations {
                let z = (m.transpose() * &q).qr().q();
                q = (m * z).qr().q();
            }
            Some(q)
        }
        _ => None,
    };
    // B = Qᵀ M; B Bᵀ = W Λ Wᵀ; the left singular vectors of M are Q W.
    let b = match &q {
        Some(q) => q.transpose() * m,
        None => m.clone(),
    };
    let gram = &b * b.transpose();
    let eig = SymmetricEigen::new(gram);
    let mut order: Vec<usize> = (0..eig.eigenvalues.len()).collect();
    order.sort_by(|&i, &j| eig.eigenvalues[j].total_cmp(&eig.eigenvalues[i]));
    let w = DMatrix::from_fn(eig.eigenvectors.nrows(), rank, |r, c| eig.eigenvectors[(r, order[c])]);
    let u = match &q {
        Some(q) => q * w,
        None => w,
    }; // rows × rank, orthonormal
    let down = u.transpose() * m; // rank × cols: Σ Vᵀ
                                  // Split each singular value evenly between the factors, so neither under- or overflows
                                  // when stored in f16.
    let norms: Vec<f64> = (0..rank).map(|i| down.row(i).norm().sqrt()).collect();
    let up = DMatrix::from_fn(rows, rank, |r, c| u[(r, c)] * norms[c]);
    let down = DMatrix::from_fn(rank, cols, |r, c| if norms[r] > 0.0 { down[(r, c)] / norms[r] } else { 0.0 });
    (up, down)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(rows: usize, cols: usize, seed: u64) -> DMatrix<f64> {
        DMatrix::from_vec(rows, cols, deradiff_core::SeededNoise::new(seed).draw(rows * cols))
    }

    /// The truncated SVD's error equals the Eckart–Young bound: the tail singular values.
    #[test]
    fn truncation_error_is_the_tail_of_the_spectrum() {
        for (rows, cols, rank) in [(6, 40, 2), (40, 6, 3), (30, 50, 4), (12, 12, 12)] {
            let m = random(rows, cols, 3);
            let sv = m.clone().svd(false, false).singular_values;
            let mut s: Vec<f64> = sv.iter().copied().collect();
            s.sort_by(|a, b| b.total_cmp(a));
            let tail: f64 = s[rank..].iter().map(|x| x * x).sum::<f64>().sqrt();
            let options = ExtractOptions { rank, ..Default::default() };
            let (up, down) = truncated(&m, rank, &options, &mut deradiff_core::SeededNoise::new(1));
            let err = (&m - &up * &down).norm();
            assert!((err - tail).abs() <= 1e-9 * m.norm(), "{rows}x{cols} r{rank}: {err} vs {tail}");
            assert_eq!((up.shape(), down.shape()), ((rows, rank), (rank, cols)));
            // The randomized finder on this flat spectrum: near the optimum.
            let randomized = SvdMethod::Randomized { oversampling: 10, power_iterations: 4 };
            let options = ExtractOptions { rank, method: randomized, ..Default::default() };
            let (up, down) = truncated(&m, rank, &options, &mut deradiff_core::SeededNoise::new(1));
            let err_r = (&m - &up * &down).norm();
            assert!(err_r >= err - 1e-9 && err_r <= err * (1.0 + 1e-3), "{rows}x{cols} r{rank}: {err_r} vs {err}");
        }
    }

    /// A matrix of rank r is recovered exactly at rank r, also through the randomized path.
    #[test]
    fn a_low_rank_change_is_recovered_exactly() {
        let m = random(60, 4, 5) * random(4, 90, 6);
        let randomized = SvdMethod::Randomized { oversampling: 2, power_iterations: 0 };
        let options = ExtractOptions { rank: 4, method: randomized, ..Default::default() };
        let (up, down) = truncated(&m, 4, &options, &mut deradiff_core::SeededNoise::new(2));
        assert!((&m - &up * &down).norm() <= 1e-9 * m.norm());
    }
}
