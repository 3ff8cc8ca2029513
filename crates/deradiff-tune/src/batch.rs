//! Many λ in one sampling run: the λ values share the batch dimension, so every model runs
//! **once per step for all λ**, not once per λ.
//!
//! With G realigners (one per λ) and a group of `m` samples, the latent is `[G·m, …]`: rows
//! `g·m .. (g+1)·m` belong to realigner `g`. At each step
//!
//! 1. every denoiser predicts on the whole stacked batch (one call per model);
//! 2. `scheduler.posterior` runs on the whole batch (one call per model);
//! 3. the posteriors are split along dimension 0 into the G groups, each group is fused with
//!    its own [`Realigner`], and sampled with the **same** standard-normal draw `z` of shape
//!    `[m, …]`; the groups are concatenated again.
//!
//! The noise is drawn exactly as [`deradiff_core::Sampler::run`] draws it for one `[m, …]` run
//! (first `z_T`, then one draw per step, from the same [`NoiseSource`]), so the rows of group
//! `g` are the very samples an unbatched run of realigner `g` with the same seed produces
//! (bit for bit on the CPU: the per-row arithmetic is the same), and all λ share their noise —
//! common random numbers, which is what makes a reward curve over λ smooth.

use candle_core::{DType, Device, Shape, Tensor};
use deradiff_core::{Denoiser, NoiseSource, Posterior, Realigner, Scheduler, Variance};

use crate::error::{Error, Result};

/// Progress of a batched run: the step just taken.
#[derive(Debug, Clone, Copy)]
pub struct BatchStep {
    /// The inference step just taken (0-based).
    pub step: usize,
    /// Number of inference steps.
    pub num_steps: usize,
    /// Number of realigners (λ values) sharing the batch.
    pub groups: usize,
}

/// A scheduler and K denoisers, sampled for several realigners at once (see the module docs).
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use deradiff_core::{Ddim, DdimConfig, FnDenoiser, Realigner, SeededNoise};
/// use deradiff_tune::BatchedSampler;
///
/// let reference = FnDenoiser(|x: &Tensor, _t: f64| Ok(x.zeros_like()?));
/// let aligned = FnDenoiser(|x: &Tensor, _t: f64| Ok(x.ones_like()?.affine(0.1, 0.0)?));
/// let scheduler = Ddim::new(DdimConfig::default(), 10)?;
/// let sampler = BatchedSampler::new(&scheduler, vec![&reference, &aligned])?;
/// let realigners = [Realigner::two_model(0.0)?, Realigner::two_model(0.5)?, Realigner::two_model(1.0)?];
/// let out = sampler.run(&realigners, &[4, 2], DType::F32, &Device::Cpu, &mut SeededNoise::new(0), &mut |_| Ok(()))?;
/// assert_eq!(out.len(), 3);
/// assert_eq!(out[1].dims(), &[4, 2]);
/// # Ok::<(), deradiff_tune::Error>(())
/// ```
pub struct BatchedSampler<'a> {
    scheduler: &'a dyn Scheduler,
    denoisers: Vec<&'a dyn Denoiser>,
}

impl<'a> BatchedSampler<'a> {
    /// A sampler over `denoisers` (reference first, then the aligned models, in weight order).
    pub fn new(scheduler: &'a dyn Scheduler, denoisers: Vec<&'a dyn Denoiser>) -> Result<Self> {
        if denoisers.is_empty() {
            return Err(deradiff_core::Error::NoModels.into());
        }
        Ok(Self { scheduler, denoisers })
    }

    /// The scheduler.
    pub fn scheduler(&self) -> &dyn Scheduler {
        self.scheduler
    }

    /// Samples a group of shape `group_shape` (`[m, …]`) for every realigner, with `z_T` the
    /// first draw of `noise` (as [`deradiff_core::Sampler::run`] does); returns one `[m, …]`
    /// tensor per realigner, in order.
    pub fn run(
        &self,
        realigners: &[Realigner],
        group_shape: impl Into<Shape>,
        dtype: DType,
        device: &Device,
        noise: &mut dyn NoiseSource,
        progress: &mut dyn FnMut(BatchStep) -> Result<()>,
    ) -> Result<Vec<Tensor>> {
        let shape = group_shape.into();
        if shape.dims().is_empty() || shape.dims()[0] == 0 {
            return Err(Error::InvalidArgument(format!(
                "the group shape {:?} needs a first (sample) dimension of at least 1",
                shape.dims()
            )));
        }
        let z = noise.standard_normal(&shape, dtype, device)?;
        self.run_from(realigners, &z, noise, progress)
    }

    /// As [`BatchedSampler::run`], from a given standard-normal `z_T` of the group's shape
    /// (scaled here by the scheduler's `init_noise_sigma`).
    pub fn run_from(
        &self,
        realigners: &[Realigner],
        z_t: &Tensor,
        noise: &mut dyn NoiseSource,
        progress: &mut dyn FnMut(BatchStep) -> Result<()>,
    ) -> Result<Vec<Tensor>> {
        let groups = realigners.len();
        if groups == 0 {
            return Err(Error::EmptyGrid);
        }
        for r in realigners {
            if r.num_models() != self.denoisers.len() {
                return Err(deradiff_core::Error::WeightCountMismatch {
                    weights: r.num_models(),
                    posteriors: self.denoisers.len(),
                }
                .into());
            }
        }
        let m = z_t.dims().first().copied().unwrap_or(0);
        if m == 0 {
            return Err(Error::InvalidArgument("z_T has no samples along dimension 0".into()));
        }
        let sched = self.scheduler;
        let num_steps = sched.num_steps();
        let x0 = z_t.affine(sched.init_noise_sigma(), 0.0)?;
        let mut x = if groups == 1 { x0 } else { Tensor::cat(&vec![&x0; groups], 0)? };
        let mut posteriors: Vec<Posterior> = Vec::with_capacity(self.denoisers.len());
        let mut group_posts: Vec<Posterior> = Vec::with_capacity(self.denoisers.len());
        for step in 0..num_steps {
            let timestep = sched.timestep(step)?;
            let x_in = sched.scale_model_input(&x, step)?;
            posteriors.clear();
            for denoiser in &self.denoisers {
                let out = denoiser.predict(&x_in, timestep)?;
                posteriors.push(sched.posterior(&x, &out, step)?);
            }
            let z = noise.standard_normal(&z_t.shape().clone(), x.dtype(), x.device())?;
            let mut next = Vec::with_capacity(groups);
            for (g, realigner) in realigners.iter().enumerate() {
                group_posts.clear();
                for p in &posteriors {
                    group_posts.push(narrow_posterior(p, g * m, m, groups)?);
                }
                let fused = realigner.fuse(&group_posts, step)?;
                let xg = fused.sample_with(&z)?;
                if !is_finite(&xg)? {
                    return Err(deradiff_core::Error::NonFiniteLatent { step, timestep }.into());
                }
                next.push(xg);
            }
            x = if groups == 1 { next.pop().unwrap_or(x) } else { Tensor::cat(&next, 0)? };
            progress(BatchStep { step, num_steps, groups })?;
        }
        if groups == 1 {
            return Ok(vec![x]);
        }
        (0..groups).map(|g| Ok(x.narrow(0, g * m, m)?)).collect()
    }
}

/// Rows `start .. start + len` of a posterior (mean and a diagonal variance; a scalar variance
/// is shared).
fn narrow_posterior(p: &Posterior, start: usize, len: usize, groups: usize) -> Result<Posterior> {
    if groups == 1 {
        return Ok(p.clone());
    }
    let mean = p.mean.narrow(0, start, len)?;
    let variance = match &p.variance {
        Variance::Scalar(v) => Variance::Scalar(*v),
        Variance::Diagonal(t) => Variance::Diagonal(t.narrow(0, start, len)?),
    };
    Ok(Posterior { mean, variance })
}

/// Whether every element is finite: `Σ 0·x` is 0 exactly then, NaN otherwise.
fn is_finite(x: &Tensor) -> Result<bool> {
    let probe = x.affine(0.0, 0.0)?.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?;
    Ok(probe == 0.0)
}
