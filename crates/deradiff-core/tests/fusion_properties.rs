//! Property tests of the Gaussian fusion (paper eqs. 7, 34–35): the scalar kernel in
//! `deradiff_core::fusion` and the tensor path of `Realigner::fuse`.
//!
//! Case counts: 8 scalar properties × 2 000 cases + 4 tensor properties × 300 cases ≈ 17 000
//! cases per run.

use candle_core::{DType, Device, Tensor};
use deradiff_core::fusion::{fuse, FusionFailure, Gaussian};
use deradiff_core::PrecisionPolicy;
use deradiff_core::{Error, Posterior, Realigner, Variance};
use proptest::prelude::*;

const SCALAR_CASES: u32 = 2_000;
const TENSOR_CASES: u32 = 300;

/// A Gaussian component: (mean, variance > 0).
fn gaussian() -> impl Strategy<Value = (f64, f64)> {
    (-10.0f64..10.0, -6.0f64..6.0).prop_map(|(m, log_v)| (m, log_v.exp()))
}

/// Convex weights (non-negative, summing to one up to rounding), K in 1..=5.
fn convex_weights(k: usize) -> impl Strategy<Value = Vec<f64>> {
    prop::collection::vec(0.0f64..1.0, k).prop_map(|raw| {
        let s: f64 = raw.iter().sum();
        if s == 0.0 {
            let k = raw.len() as f64;
            raw.iter().map(|_| 1.0 / k).collect()
        } else {
            raw.iter().map(|x| x / s).collect()
        }
    })
}

/// Any finite weights summing to one exactly up to rounding (extrapolation included).
fn affine_weights(k: usize) -> impl Strategy<Value = Vec<f64>> {
    prop::collection::vec(-3.0f64..3.0, k - 1).prop_map(|free| {
        let mut w = vec![1.0 - free.iter().sum::<f64>()];
        w.extend(free);
        w
    })
}

fn log_normal(x: f64, m: f64, v: f64) -> f64 {
    -0.5 * (x - m) * (x - m) / v - 0.5 * (2.0 * std::f64::consts::PI * v).ln()
}

fn split(comps: &[(f64, f64)]) -> (Vec<f64>, Vec<f64>) {
    comps.iter().copied().unzip()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: SCALAR_CASES, ..ProptestConfig::default() })]

    /// log N(x; μ̂, σ̂²) = Σ w_i log N(x; μ_i, σ_i²) + const: the fused Gaussian is the normalised
    /// product of the weighted densities (checked at two random points).
    #[test]
    fn fusion_matches_density_product(
        (w, comps) in (1usize..=5).prop_flat_map(|k| (affine_weights(k), prop::collection::vec(gaussian(), k))),
        x1 in -20.0f64..20.0,
        x2 in -20.0f64..20.0,
    ) {
        let (means, vars) = split(&comps);
        match fuse(&w, &means, &vars, PrecisionPolicy::Error) {
            Ok(Gaussian { mean, variance }) => {
                prop_assert!(variance > 0.0);
                let f = |x: f64| {
                    w.iter().zip(&comps).map(|(wi, (m, v))| wi * log_normal(x, *m, *v)).sum::<f64>()
                        - log_normal(x, mean, variance)
                };
                let scale: f64 = [x1, x2].iter().map(|&x| {
                    w.iter().zip(&comps).map(|(wi, (m, v))| (wi * (x - m) * (x - m) / v).abs()).sum::<f64>()
                        + (x - mean) * (x - mean) / variance
                }).sum::<f64>() + 1.0;
                prop_assert!((f(x1) - f(x2)).abs() <= 1e-9 * scale,
                    "not a constant: {} vs {} (scale {scale})", f(x1), f(x2));
            }
            Err(FusionFailure::NonPositivePrecision) => {
                let precision: f64 = w.iter().zip(&vars).map(|(wi, v)| wi / v).sum();
                let scale: f64 = w.iter().zip(&vars).map(|(wi, v)| (wi / v).abs()).sum();
                prop_assert!(precision <= 1e-12 * scale, "rejected a positive precision {precision}");
            }
            Err(e) => prop_assert!(false, "unexpected failure {e:?}"),
        }
    }

    /// Weights [1, 0] and [0, 1] return the reference and the aligned posterior bit for bit.
    #[test]
    fn lambda_zero_and_one_recover_inputs_exactly(a in gaussian(), b in gaussian()) {
        let (means, vars) = split(&[a, b]);
        let g0 = fuse(&[1.0, 0.0], &means, &vars, PrecisionPolicy::Error).unwrap();
        prop_assert_eq!(g0, Gaussian { mean: a.0, variance: a.1 });
        let g1 = fuse(&[0.0, 1.0], &means, &vars, PrecisionPolicy::Error).unwrap();
        prop_assert_eq!(g1, Gaussian { mean: b.0, variance: b.1 });
    }

    /// K = 1 with weight 1 is the identity.
    #[test]
    fn single_model_is_identity(a in gaussian()) {
        prop_assert_eq!(fuse(&[1.0], &[a.0], &[a.1], PrecisionPolicy::Error).unwrap(), Gaussian { mean: a.0, variance: a.1 });
    }

    /// The order of the models does not matter.
    #[test]
    fn permutation_invariance(
        (w, comps, perm) in (2usize..=5).prop_flat_map(|k| (
            convex_weights(k),
            prop::collection::vec(gaussian(), k),
            Just((0..k).collect::<Vec<_>>()).prop_shuffle(),
        )),
    ) {
        let (means, vars) = split(&comps);
        let g = fuse(&w, &means, &vars, PrecisionPolicy::Error).unwrap();
        let pw: Vec<f64> = perm.iter().map(|&i| w[i]).collect();
        let pm: Vec<f64> = perm.iter().map(|&i| means[i]).collect();
        let pv: Vec<f64> = perm.iter().map(|&i| vars[i]).collect();
        let h = fuse(&pw, &pm, &pv, PrecisionPolicy::Error).unwrap();
        prop_assert!((g.mean - h.mean).abs() <= 1e-12 * (1.0 + g.mean.abs()));
        prop_assert!((g.variance - h.variance).abs() <= 1e-12 * g.variance);
    }

    /// Fusing a posterior with itself at weights a and b equals fusing it once at a + b.
    #[test]
    fn self_fusion_adds_weights(
        p in gaussian(), q in gaussian(), a in -2.0f64..2.0, b in -2.0f64..2.0,
    ) {
        let c = 1.0 - a - b;
        let split3 = fuse(&[a, b, c], &[p.0, p.0, q.0], &[p.1, p.1, q.1], PrecisionPolicy::Error);
        let merged = fuse(&[a + b, c], &[p.0, q.0], &[p.1, q.1], PrecisionPolicy::Error);
        match (split3, merged) {
            (Ok(g), Ok(h)) => {
                let tol = 1e-9 * (1.0 + (a.abs() + b.abs() + c.abs()) * (p.1 / q.1 + q.1 / p.1));
                prop_assert!((g.variance - h.variance).abs() <= tol * h.variance, "{g:?} vs {h:?}");
                prop_assert!((g.mean - h.mean).abs() <= tol * (1.0 + h.mean.abs() + p.0.abs() + q.0.abs()), "{g:?} vs {h:?}");
            }
            (Err(e), Err(f)) => prop_assert_eq!(e, f),
            (g, h) => {
                // Only possible at the boundary where the precision is ~0.
                let precision = (a + b) / p.1 + c / q.1;
                let scale = (a + b).abs() / p.1 + c.abs() / q.1;
                prop_assert!(precision.abs() <= 1e-9 * scale, "{g:?} vs {h:?}");
            }
        }
    }

    /// Convex weights keep the fused variance between the smallest and the largest input
    /// variance, and the mean inside the range of the means; nothing is NaN or Inf.
    #[test]
    fn convex_weights_stay_in_range(
        (w, comps) in (1usize..=5).prop_flat_map(|k| (convex_weights(k), prop::collection::vec(gaussian(), k))),
    ) {
        let (means, vars) = split(&comps);
        let g = fuse(&w, &means, &vars, PrecisionPolicy::Error).unwrap();
        prop_assert!(g.mean.is_finite() && g.variance.is_finite());
        let active = |xs: &[f64]| -> Vec<f64> { xs.iter().zip(&w).filter(|(_, w)| **w != 0.0).map(|(x, _)| *x).collect() };
        let (av, am) = (active(&vars), active(&means));
        let vmin = av.iter().copied().fold(f64::INFINITY, f64::min);
        let vmax = av.iter().copied().fold(0.0, f64::max);
        prop_assert!(g.variance >= vmin * (1.0 - 1e-12) && g.variance <= vmax * (1.0 + 1e-12));
        let mmin = am.iter().copied().fold(f64::INFINITY, f64::min);
        let mmax = am.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        prop_assert!(g.mean >= mmin - 1e-12 * (1.0 + mmin.abs()) && g.mean <= mmax + 1e-12 * (1.0 + mmax.abs()));
    }

    /// Equal variances (zero included) give the weighted mean of the means with that variance.
    #[test]
    fn equal_variances_give_weighted_mean(
        (w, means) in (1usize..=5).prop_flat_map(|k| (affine_weights(k), prop::collection::vec(-10.0f64..10.0, k))),
        v in prop_oneof![Just(0.0), 1e-6f64..1e3],
    ) {
        let vars = vec![v; w.len()];
        let g = fuse(&w, &means, &vars, PrecisionPolicy::Error).unwrap();
        let expected: f64 = w.iter().zip(&means).map(|(a, b)| a * b).sum();
        let scale: f64 = w.iter().zip(&means).map(|(a, b)| (a * b).abs()).sum::<f64>() + 1.0;
        prop_assert!((g.mean - expected).abs() <= 1e-12 * scale);
        prop_assert!((g.variance - v).abs() <= 1e-12 * v);
    }

    /// Invalid inputs are reported, never a panic and never a NaN.
    #[test]
    fn invalid_inputs_are_errors(
        w in prop::collection::vec(prop_oneof![Just(f64::NAN), Just(f64::INFINITY), -5.0f64..5.0], 1..5),
        m in prop::collection::vec(prop_oneof![Just(f64::NAN), -5.0f64..5.0], 1..5),
        v in prop::collection::vec(prop_oneof![Just(-1.0), Just(0.0), Just(f64::NAN), Just(f64::INFINITY), 0.0f64..5.0], 1..5),
    ) {
        if let Ok(g) = fuse(&w, &m, &v, PrecisionPolicy::Error) {
            prop_assert!(g.mean.is_finite() && g.variance.is_finite() && g.variance >= 0.0);
        }
        // The Realigner validates weights first: it never panics either.
        if let Ok(r) = Realigner::new(w.clone()) {
            let ps: Vec<Posterior> = m.iter().zip(&v).map(|(&mi, &vi)| {
                Posterior::scalar(Tensor::new(&[mi], &Device::Cpu).unwrap(), vi)
            }).collect();
            if let Ok(p) = r.fuse(&ps, 0) {
                let mean = p.mean.to_vec1::<f64>().unwrap()[0];
                let var = p.variance.as_scalar().unwrap();
                prop_assert!(mean.is_finite() && var.is_finite() && var >= 0.0);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The tensor path.

#[derive(Debug, Clone)]
struct TensorCase {
    dims: Vec<usize>,
    weights: Vec<f64>,
    means: Vec<Vec<f64>>,
    /// `None`: a scalar variance (first element of `var_values`), `Some`: diagonal.
    diagonal: Vec<bool>,
    var_values: Vec<Vec<f64>>,
    f32: bool,
}

fn tensor_case(extrapolate: bool) -> impl Strategy<Value = TensorCase> {
    (1usize..=4, prop::collection::vec(1usize..=5, 1..=4), any::<bool>()).prop_flat_map(move |(k, dims, f32)| {
        let n: usize = dims.iter().product();
        let weights = if extrapolate { affine_weights(k).boxed() } else { convex_weights(k).boxed() };
        (
            Just(dims),
            weights,
            prop::collection::vec(prop::collection::vec(-10.0f64..10.0, n), k),
            prop::collection::vec(any::<bool>(), k),
            prop::collection::vec(prop::collection::vec((-4.0f64..4.0).prop_map(f64::exp), n), k),
            Just(f32),
        )
            .prop_map(|(dims, weights, means, diagonal, var_values, f32)| TensorCase {
                dims,
                weights,
                means,
                diagonal,
                var_values,
                f32,
            })
    })
}

impl TensorCase {
    fn dtype(&self) -> DType {
        if self.f32 {
            DType::F32
        } else {
            DType::F64
        }
    }

    /// Values as the tensors will hold them (rounded to f32 where the case is f32).
    fn round(&self, x: f64) -> f64 {
        if self.f32 {
            x as f32 as f64
        } else {
            x
        }
    }

    fn posteriors(&self) -> Vec<Posterior> {
        let t = |v: &Vec<f64>| {
            Tensor::from_vec(v.clone(), self.dims.as_slice(), &Device::Cpu).unwrap().to_dtype(self.dtype()).unwrap()
        };
        (0..self.weights.len())
            .map(|i| Posterior {
                mean: t(&self.means[i]),
                variance: if self.diagonal[i] {
                    Variance::Diagonal(t(&self.var_values[i]))
                } else {
                    Variance::Scalar(self.round(self.var_values[i][0]))
                },
            })
            .collect()
    }

    fn variance(&self, i: usize, j: usize) -> f64 {
        if self.diagonal[i] {
            self.round(self.var_values[i][j])
        } else {
            self.round(self.var_values[i][0])
        }
    }

    /// The scalar kernel applied element by element, in f64.
    fn reference(&self, j: usize) -> Result<Gaussian<f64>, FusionFailure> {
        let k = self.weights.len();
        let m: Vec<f64> = (0..k).map(|i| self.round(self.means[i][j])).collect();
        let v: Vec<f64> = (0..k).map(|i| self.variance(i, j)).collect();
        fuse(&self.weights, &m, &v, PrecisionPolicy::Error)
    }
}

fn values(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: TENSOR_CASES, ..ProptestConfig::default() })]

    /// `Realigner::fuse` equals the scalar kernel element by element, for scalar and diagonal
    /// variances mixed freely, in f32 and f64, and fails exactly where the kernel fails.
    #[test]
    fn tensor_path_matches_scalar_kernel(case in prop_oneof![tensor_case(false), tensor_case(true)]) {
        let realigner = Realigner::new(case.weights.clone()).unwrap();
        let result = realigner.fuse(&case.posteriors(), 3);
        let n = case.means[0].len();
        let all_scalar = case.diagonal.iter().all(|d| !d);
        let expected: Vec<_> = if all_scalar { vec![case.reference(0)] } else { (0..n).map(|j| case.reference(j)).collect() };
        match result {
            Ok(p) => {
                let tol = if case.f32 { 1e-5 } else { 1e-12 };
                let mean = values(&p.mean);
                let var: Vec<f64> = match &p.variance {
                    Variance::Scalar(v) => { prop_assert!(all_scalar); vec![*v; n] }
                    Variance::Diagonal(t) => { prop_assert!(!all_scalar); values(t) }
                };
                for j in 0..n {
                    let g = if all_scalar {
                        // One plan for the step: the reference mean per element is Σ α_i μ_ij.
                        let plan = expected[0].unwrap();
                        let k = case.weights.len();
                        let m: Vec<f64> = (0..k).map(|i| case.round(case.means[i][j])).collect();
                        let v: Vec<f64> = (0..k).map(|i| case.variance(i, j)).collect();
                        let g = fuse(&case.weights, &m, &v, PrecisionPolicy::Error).unwrap();
                        prop_assert_eq!(g.variance, plan.variance);
                        g
                    } else {
                        expected[j].unwrap()
                    };
                    let mscale: f64 = case.weights.iter().enumerate().map(|(i, w)| (w * case.means[i][j]).abs()).sum::<f64>() + 1.0;
                    prop_assert!((mean[j] - g.mean).abs() <= tol * mscale * 10.0, "mean {} vs {}", mean[j], g.mean);
                    prop_assert!((var[j] - g.variance).abs() <= tol * g.variance * 10.0, "var {} vs {}", var[j], g.variance);
                }
            }
            Err(Error::NonPositivePrecision { step, element }) => {
                prop_assert_eq!(step, 3);
                prop_assert_eq!(expected[if all_scalar { 0 } else { element }], Err(FusionFailure::NonPositivePrecision));
            }
            Err(Error::NonFiniteFusion { step, .. }) => prop_assert_eq!(step, 3),
            Err(e) => prop_assert!(false, "unexpected error {e}"),
        }
    }

    /// λ = 0 and λ = 1 return the reference and the aligned posterior bit for bit on tensors.
    #[test]
    fn tensor_lambda_zero_and_one_are_exact(case in tensor_case(false).prop_filter("two models", |c| c.weights.len() == 2)) {
        let ps = case.posteriors();
        for (lambda, idx) in [(0.0, 0usize), (1.0, 1usize)] {
            let p = Realigner::two_model(lambda).unwrap().fuse(&ps, 0).unwrap();
            prop_assert_eq!(values(&p.mean), values(&ps[idx].mean));
            match (&p.variance, &ps[idx].variance) {
                (Variance::Scalar(a), Variance::Scalar(b)) => prop_assert_eq!(a, b),
                (a, b) => prop_assert_eq!(values(&a.to_tensor_like(&p.mean).unwrap()), values(&b.to_tensor_like(&ps[idx].mean).unwrap())),
            }
        }
    }

    /// No NaN or Inf for finite inputs with positive variances and convex weights.
    #[test]
    fn tensor_convex_fusion_is_finite(case in tensor_case(false)) {
        let p = Realigner::new(case.weights.clone()).unwrap().fuse(&case.posteriors(), 0).unwrap();
        prop_assert!(values(&p.mean).iter().all(|x| x.is_finite()));
        prop_assert!(values(&p.variance.to_tensor_like(&p.mean).unwrap()).iter().all(|x| x.is_finite() && *x > 0.0));
    }

    /// Mismatched counts, shapes and dtypes are errors.
    #[test]
    fn tensor_mismatches_are_errors(case in tensor_case(false), extra in 1usize..3) {
        let ps = case.posteriors();
        let k = ps.len();
        // Wrong number of weights.
        let w: Vec<f64> = (0..k + extra).map(|_| 1.0 / (k + extra) as f64).collect();
        let wrong_count = Realigner::new(w).unwrap().fuse(&ps, 0);
        prop_assert!(matches!(wrong_count, Err(Error::WeightCountMismatch { .. })), "{wrong_count:?}");
        if k >= 2 {
            let r = Realigner::new(case.weights.clone()).unwrap();
            let mut bad = ps.clone();
            bad[1].mean = bad[1].mean.flatten_all().unwrap().repeat(2).unwrap();
            let bad_shape = r.fuse(&bad, 0);
            prop_assert!(matches!(bad_shape, Err(Error::ShapeMismatch { .. })), "{bad_shape:?}");
            let mut bad = ps.clone();
            let other = if case.f32 { DType::F64 } else { DType::F32 };
            bad[1].mean = bad[1].mean.to_dtype(other).unwrap();
            let bad_dtype = r.fuse(&bad, 0);
            prop_assert!(matches!(bad_dtype, Err(Error::DTypeMismatch { .. })), "{bad_dtype:?}");
        }
    }
}
