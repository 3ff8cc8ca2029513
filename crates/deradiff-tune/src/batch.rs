//! Many λ in one sampling run: the λ values share the batch dimension, so every model runs
//! **once per step for all λ**, not once per λ.
//!
//! With G realigners (one per λ) and a group of `m` samples, the latent is `[G·m, …]`: rows
//! `g·m .. (g+1)·m` belong to realigner `g`. At each step
//!
//! 1. every denoiser predicts on the whole stacked batch (one call per model);
//! 2. the scheduler's posteriors run on the whole batch (one call per model, through a
//!    [`SolverState`] that keeps each model's history for the multistep solvers);
//! 3. the posteriors are split along dimension 0 into the G groups, each group is fused with
//!    its own [`Realigner`], and sampled with the **same** standard-normal draw `z` of shape
//!    `[m, …]`; the groups are concatenated again.
//!
//! The noise is drawn exactly as [`deradiff_core::Sampler::run`] draws it for one `[m, …]` run
//! (first `z_T`, then one draw per step, from the same [`NoiseSource`]), so the rows of group
//! `g` are the very samples an unbatched run of realigner `g` with the same seed produces
//! (bit for bit on the CPU: the per-row arithmetic is the same), and all λ share their noise —
//! common random numbers, which is what makes a reward curve over λ smooth.
//!
//! Several prompts can share one batch too ([`BatchedSampler::run_streams`]): each group then
//! names its noise *stream* (one per prompt, with the prompt's own [`NoiseSource`]), every stream
//! draws `z_T` and its per-step `z` exactly as an unbatched run of that prompt would, and the
//! denoisers condition each group's rows on its own prompt. The rows are again those of
//! unbatched runs.

use candle_core::{DType, Device, Shape, Tensor};
use deradiff_core::{Denoiser, NoiseSource, Posterior, Realigner, Scheduler, SolverState, Variance};

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
        let groups: Vec<(&Realigner, usize)> = realigners.iter().map(|r| (r, 0)).collect();
        self.run_streams(&groups, group_shape, dtype, device, &mut [noise], progress)
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
        let groups: Vec<(&Realigner, usize)> = realigners.iter().map(|r| (r, 0)).collect();
        self.run_streams_from(&groups, std::slice::from_ref(z_t), &mut [noise], progress)
    }

    /// Groups of several noise streams (prompts) in one batch: group `g` is fused with
    /// `groups[g].0` and sampled with the noise of stream `groups[g].1`; `noises[s]` is stream
    /// `s`'s source, which draws its `z_T` of `group_shape` first and then one `z` per step, as
    /// an unbatched run of that stream would. The denoisers must condition group `g`'s rows
    /// (`g·m .. (g+1)·m`) on its stream's prompt. Returns each group's final latent, in order.
    pub fn run_streams(
        &self,
        groups: &[(&Realigner, usize)],
        group_shape: impl Into<Shape>,
        dtype: DType,
        device: &Device,
        noises: &mut [&mut dyn NoiseSource],
        progress: &mut dyn FnMut(BatchStep) -> Result<()>,
    ) -> Result<Vec<Tensor>> {
        let shape = group_shape.into();
        if shape.dims().is_empty() || shape.dims()[0] == 0 {
            return Err(Error::InvalidArgument(format!(
                "the group shape {:?} needs a first (sample) dimension of at least 1",
                shape.dims()
            )));
        }
        let z_t = noises.iter_mut().map(|n| n.standard_normal(&shape, dtype, device)).collect::<Result<Vec<_>, _>>()?;
        self.run_streams_from(groups, &z_t, noises, progress)
    }

    /// As [`BatchedSampler::run_streams`], from each stream's standard-normal `z_T`.
    pub fn run_streams_from(
        &self,
        groups: &[(&Realigner, usize)],
        z_t: &[Tensor],
        noises: &mut [&mut dyn NoiseSource],
        progress: &mut dyn FnMut(BatchStep) -> Result<()>,
    ) -> Result<Vec<Tensor>> {
        let n_groups = groups.len();
        if n_groups == 0 {
            return Err(Error::EmptyGrid);
        }
        if z_t.len() != noises.len() || z_t.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "{} initial latents for {} noise streams: give one of each per stream",
                z_t.len(),
                noises.len()
            )));
        }
        for (r, stream) in groups {
            if r.num_models() != self.denoisers.len() {
                return Err(deradiff_core::Error::WeightCountMismatch {
                    weights: r.num_models(),
                    posteriors: self.denoisers.len(),
                }
                .into());
            }
            if *stream >= noises.len() {
                return Err(Error::InvalidArgument(format!(
                    "a group names noise stream {stream} but there are {} streams",
                    noises.len()
                )));
            }
        }
        let shape = z_t[0].shape().clone();
        if z_t.iter().any(|z| z.shape() != &shape) {
            return Err(Error::InvalidArgument("the streams' initial latents differ in shape".into()));
        }
        let m = shape.dims().first().copied().unwrap_or(0);
        if m == 0 {
            return Err(Error::InvalidArgument("z_T has no samples along dimension 0".into()));
        }
        let sched = self.scheduler;
        let num_steps = sched.num_steps();
        let starts = z_t.iter().map(|z| z.affine(sched.init_noise_sigma(), 0.0)).collect::<Result<Vec<_>, _>>()?;
        let mut x = if n_groups == 1 {
            starts[groups[0].1].clone()
        } else {
            Tensor::cat(&groups.iter().map(|(_, s)| &starts[*s]).collect::<Vec<_>>(), 0)?
        };
        let mut state = SolverState::new(sched, self.denoisers.len())?;
        let mut outputs: Vec<Tensor> = Vec::with_capacity(self.denoisers.len());
        let mut group_posts: Vec<Posterior> = Vec::with_capacity(self.denoisers.len());
        for step in 0..num_steps {
            let timestep = sched.timestep(step)?;
            let x_in = sched.scale_model_input(&x, step)?;
            outputs.clear();
            for (model, denoiser) in self.denoisers.iter().enumerate() {
                let out = denoiser.predict(&x_in, timestep)?;
                if !is_finite(&out)? {
                    return Err(deradiff_core::Error::NonFiniteModelOutput { step, timestep, model }.into());
                }
                outputs.push(out);
            }
            // Each model's history covers the whole batch; the shared latent (UniPC, Heun) is
            // fused per group with that group's weights, like the latent.
            let posteriors = state.posteriors(&x, &outputs, step)?;
            // One draw per stream, shared by its groups (its λ values).
            let z = noises
                .iter_mut()
                .map(|n| n.standard_normal(&shape, x.dtype(), x.device()))
                .collect::<Result<Vec<_>, _>>()?;
            let mut next = Vec::with_capacity(n_groups);
            for (g, (realigner, stream)) in groups.iter().enumerate() {
                group_posts.clear();
                for p in &posteriors {
                    group_posts.push(narrow_posterior(p, g * m, m, n_groups)?);
                }
                let fused = realigner.fuse(&group_posts, step)?;
                let xg = fused.sample_with(&z[*stream])?;
                if !is_finite(&xg)? {
                    let weights = realigner.weights(step)?.to_vec();
                    return Err(deradiff_core::Error::NonFiniteLatent { step, timestep, weights }.into());
                }
                next.push(xg);
            }
            x = if n_groups == 1 { next.pop().unwrap_or(x) } else { Tensor::cat(&next, 0)? };
            state.advance_with(&mut |values: &[Tensor]| {
                let mut fused = Vec::with_capacity(n_groups);
                for (g, (realigner, _)) in groups.iter().enumerate() {
                    let rows =
                        values.iter().map(|v| narrow_rows(v, g * m, m, n_groups)).collect::<Result<Vec<_>, _>>()?;
                    fused.push(SolverState::weighted_mean(realigner.weights(step)?, &rows)?);
                }
                if n_groups == 1 {
                    return Ok(fused.remove(0));
                }
                Ok(Tensor::cat(&fused, 0)?)
            })?;
            progress(BatchStep { step, num_steps, groups: n_groups })?;
        }
        if n_groups == 1 {
            return Ok(vec![x]);
        }
        (0..n_groups).map(|g| Ok(x.narrow(0, g * m, m)?)).collect()
    }
}

/// Rows `start .. start + len` of a tensor (the whole tensor for one group).
fn narrow_rows(t: &Tensor, start: usize, len: usize, groups: usize) -> deradiff_core::Result<Tensor> {
    if groups == 1 {
        return Ok(t.clone());
    }
    Ok(t.narrow(0, start, len)?)
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
