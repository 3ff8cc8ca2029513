//! The realigned sampling loop: paper Algorithm 1 for any scheduler and K models.

use candle_core::{DType, Device, Shape, Tensor};

use crate::denoiser::Denoiser;
use crate::error::{Error, Result};
use crate::noise::NoiseSource;
use crate::posterior::Posterior;
use crate::realigner::Realigner;
use crate::scheduler::{Scheduler, SolverState};

/// What an [`Observer`] sees after each step.
#[derive(Debug)]
pub struct StepEvent<'a> {
    /// The inference step just taken (0-based).
    pub step: usize,
    /// Number of inference steps of the run.
    pub num_steps: usize,
    /// Its training timestep.
    pub timestep: f64,
    /// The fusion weights of this step, one per model (λ ramps and per-step schedules show
    /// here as they were applied).
    pub weights: &'a [f64],
    /// Each model's raw output at this step (ε, v or x₀ as the scheduler's prediction type
    /// says), in model order: what its [`Denoiser`] returned for the scaled latent, before the
    /// scheduler turned it into that model's posterior (and before the fusion).
    pub model_outputs: &'a [Tensor],
    /// Each model's posterior at this step.
    pub posteriors: &'a [Posterior],
    /// The fused posterior.
    pub fused: &'a Posterior,
    /// The new latent `x_{t-1}`.
    pub latent: &'a Tensor,
}

/// Whether the loop goes on after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Take the next step.
    Continue,
    /// Stop now and return the current latent.
    Stop,
}

/// Called after every step: progress bars, tracing latents, early stopping.
pub trait Observer {
    /// Sees the step; returning [`Flow::Stop`] ends the run early; an error aborts it.
    fn on_step(&mut self, event: &StepEvent<'_>) -> Result<Flow>;
}

impl<F: FnMut(&StepEvent<'_>) -> Flow> Observer for F {
    fn on_step(&mut self, event: &StepEvent<'_>) -> Result<Flow> {
        Ok(self(event))
    }
}

/// An [`Observer`] made from a closure, whose argument type is then inferred: a bare closure
/// passed where `&mut dyn Observer` is expected needs `|e: &StepEvent<'_>|`, this does not.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use deradiff_core::*;
///
/// let zero = FnDenoiser(|x: &Tensor, _t: f64| Ok(x.zeros_like()?));
/// let scheduler = Ddim::new(DdimConfig::default(), 5)?;
/// let sampler = Sampler::new(&scheduler, vec![&zero], Realigner::new(vec![1.0])?)?;
/// let mut seen = Vec::new();
/// let mut observer = FnObserver::new(|event| {
///     seen.push((event.step, event.weights.to_vec()));
///     Flow::Continue
/// });
/// sampler.run(&[1, 2], DType::F32, &Device::Cpu, &mut SeededNoise::new(0), &mut observer)?;
/// assert_eq!(seen.len(), 5);
/// assert_eq!(seen[0].1, vec![1.0]);
/// # Ok::<(), deradiff_core::Error>(())
/// ```
pub struct FnObserver<F>(F);

impl<F: FnMut(&StepEvent<'_>) -> Flow> FnObserver<F> {
    /// Wraps `f`, called after every step; its return value says whether to go on.
    pub fn new(f: F) -> Self {
        Self(f)
    }
}

impl<F: FnMut(&StepEvent<'_>) -> Flow> Observer for FnObserver<F> {
    fn on_step(&mut self, event: &StepEvent<'_>) -> Result<Flow> {
        Ok((self.0)(event))
    }
}

impl<F> std::fmt::Debug for FnObserver<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FnObserver")
    }
}

/// An observer that does nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoObserver;

impl Observer for NoObserver {
    fn on_step(&mut self, _event: &StepEvent<'_>) -> Result<Flow> {
        Ok(Flow::Continue)
    }
}

/// The result of a sampling run.
#[derive(Debug, Clone)]
pub struct SampleOutput {
    /// The final latent (`x_0`, or the latent at the step an observer stopped at).
    pub latent: Tensor,
    /// Number of steps taken.
    pub steps_taken: usize,
    /// Whether an observer stopped the run before the last step.
    pub stopped_early: bool,
}

/// A scheduler, K denoisers and a realigner: everything of a realigned sampling run but the
/// noise. For a scheduler that reads earlier steps (DPM-Solver++, UniPC, Heun) the run keeps
/// each model's own history in a [`SolverState`].
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use deradiff_core::*;
///
/// // Two toy models that predict different constant noise.
/// let reference = FnDenoiser(|x: &Tensor, _t: f64| Ok(x.zeros_like()?));
/// let aligned = FnDenoiser(|x: &Tensor, _t: f64| Ok(x.ones_like()?.affine(0.1, 0.0)?));
/// let scheduler = Ddim::new(DdimConfig::default(), 10)?;
/// let sampler = Sampler::new(&scheduler, vec![&reference, &aligned], Realigner::two_model(0.5)?)?;
/// let out = sampler.run(&[2, 4], DType::F32, &Device::Cpu, &mut SeededNoise::new(0), &mut NoObserver)?;
/// assert_eq!(out.latent.dims(), &[2, 4]);
/// # Ok::<(), deradiff_core::Error>(())
/// ```
pub struct Sampler<'a> {
    scheduler: &'a dyn Scheduler,
    denoisers: Vec<&'a dyn Denoiser>,
    realigner: Realigner,
}

impl<'a> Sampler<'a> {
    /// Checks that there is one weight per denoiser, and fixes the realigner's weights for the
    /// scheduler's number of steps ([`Realigner::for_steps`]): a per-step weight list whose
    /// length differs from [`Scheduler::num_steps`] is [`Error::WeightScheduleLength`], and a
    /// function schedule is evaluated here.
    pub fn new(scheduler: &'a dyn Scheduler, denoisers: Vec<&'a dyn Denoiser>, realigner: Realigner) -> Result<Self> {
        if denoisers.is_empty() {
            return Err(Error::NoModels);
        }
        let realigner = realigner.for_steps(scheduler.num_steps())?;
        if denoisers.len() != realigner.num_models() {
            return Err(Error::WeightCountMismatch { weights: realigner.num_models(), posteriors: denoisers.len() });
        }
        Ok(Self { scheduler, denoisers, realigner })
    }

    /// [`Sampler::new`] for a slice of denoisers of one type — the pipeline's guided UNets
    /// (`StableDiffusion::denoisers`), boxed denoisers, … — with no cast to `&dyn Denoiser`.
    ///
    /// ```
    /// use candle_core::{DType, Device, Tensor};
    /// use deradiff_core::*;
    ///
    /// let models: Vec<Box<dyn Denoiser>> = vec![
    ///     Box::new(FnDenoiser(|x: &Tensor, _t: f64| Ok(x.zeros_like()?))),
    ///     Box::new(FnDenoiser(|x: &Tensor, _t: f64| Ok(x.affine(0.1, 0.0)?))),
    /// ];
    /// let scheduler = Ddpm::new(DdpmConfig::default(), 4)?;
    /// let sampler = Sampler::from_models(&scheduler, &models, Realigner::two_model(0.5)?)?;
    /// let out = sampler.run(&[1, 3], DType::F32, &Device::Cpu, &mut SeededNoise::new(1), &mut NoObserver)?;
    /// assert_eq!(out.steps_taken, 4);
    /// # Ok::<(), deradiff_core::Error>(())
    /// ```
    pub fn from_models<D: Denoiser>(
        scheduler: &'a dyn Scheduler,
        models: &'a [D],
        realigner: Realigner,
    ) -> Result<Self> {
        Self::new(scheduler, models.iter().map(|d| d as &dyn Denoiser).collect(), realigner)
    }

    /// The scheduler.
    pub fn scheduler(&self) -> &dyn Scheduler {
        self.scheduler
    }

    /// The realigner, fixed for the scheduler's steps (see [`Sampler::new`]).
    pub fn realigner(&self) -> &Realigner {
        &self.realigner
    }

    /// Samples from `x_T ~ N(0, init_noise_sigma² I)` of the given shape: the first draw of
    /// `noise` is `x_T`'s, then one draw per step.
    pub fn run(
        &self,
        shape: impl Into<Shape>,
        dtype: DType,
        device: &Device,
        noise: &mut dyn NoiseSource,
        observer: &mut dyn Observer,
    ) -> Result<SampleOutput> {
        let z = noise.standard_normal(&shape.into(), dtype, device)?;
        self.run_from(&z, noise, observer)
    }

    /// Samples from a given standard-normal `z_T` (scaled here by the scheduler's
    /// `init_noise_sigma`, as diffusers' pipelines do); `noise` gives one draw per step.
    pub fn run_from(
        &self,
        z_t: &Tensor,
        noise: &mut dyn NoiseSource,
        observer: &mut dyn Observer,
    ) -> Result<SampleOutput> {
        let sched = self.scheduler;
        let num_steps = sched.num_steps();
        let mut x = z_t.affine(sched.init_noise_sigma(), 0.0)?;
        let mut state = SolverState::new(sched, self.denoisers.len())?;
        let mut outputs = Vec::with_capacity(self.denoisers.len());
        for step in 0..num_steps {
            let timestep = sched.timestep(step)?;
            let x_in = sched.scale_model_input(&x, step)?;
            outputs.clear();
            for (model, denoiser) in self.denoisers.iter().enumerate() {
                let out = denoiser.predict(&x_in, timestep)?;
                if !is_finite(&out)? {
                    return Err(Error::NonFiniteModelOutput { step, timestep, model });
                }
                outputs.push(out);
            }
            let posteriors = state.posteriors(&x, &outputs, step)?;
            let weights = self.realigner.weights(step)?;
            let fused = self.realigner.fuse(&posteriors, step)?;
            let z = noise.standard_normal(x.shape(), x.dtype(), x.device())?;
            x = fused.sample_with(&z)?;
            if !is_finite(&x)? {
                return Err(Error::NonFiniteLatent { step, timestep, weights: weights.to_vec() });
            }
            state.advance(weights)?;
            let event = StepEvent {
                step,
                num_steps,
                timestep,
                weights,
                model_outputs: &outputs,
                posteriors: &posteriors,
                fused: &fused,
                latent: &x,
            };
            if observer.on_step(&event)? == Flow::Stop {
                let stopped_early = step + 1 < num_steps;
                return Ok(SampleOutput { latent: x, steps_taken: step + 1, stopped_early });
            }
        }
        Ok(SampleOutput { latent: x, steps_taken: num_steps, stopped_early: false })
    }
}

/// Whether every element is finite: `Σ 0·x` is 0 exactly then, NaN otherwise.
fn is_finite(x: &Tensor) -> Result<bool> {
    let probe = x.affine(0.0, 0.0)?.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?;
    Ok(probe == 0.0)
}
