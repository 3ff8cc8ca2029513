//! The state of a sampling run for schedulers that read earlier steps (multistep solvers,
//! Heun): each model's own history of outputs along the shared, fused trajectory.
//!
//! A multistep solver's step is affine in the latent and in the model outputs of the last few
//! steps. Each model keeps **its own** history (the converted outputs it produced at the shared
//! latents of earlier steps), so its posterior at a step is the step that model's own solver
//! would take from the fused trajectory; the fusion of those posteriors (zero variance: the
//! weighted mean) is then the solver applied to the weighted model outputs. A scheduler whose
//! step also carries a second latent along (UniPC's corrected sample, Heun's sample at the start
//! of a step) keeps it **shared**: the models' values are fused with the step's weights, like the
//! latent itself. See `docs/math.md` §7.

use std::collections::VecDeque;

use candle_core::Tensor;

use super::Scheduler;
use crate::error::{Error, Result};
use crate::ops::linear_combination;
use crate::posterior::Posterior;

/// What one model's step reads from earlier steps: that model's history (oldest first, at most
/// [`Scheduler::history_len`] entries) and the shared latent the scheduler carries (if any).
#[derive(Debug, Clone, Copy, Default)]
pub struct StepContext<'a> {
    /// This model's records of the latest steps, oldest first.
    pub history: &'a [Tensor],
    /// The shared latent carried from an earlier step (UniPC's last corrected sample, Heun's
    /// sample at the start of the step), fused over the models.
    pub shared: Option<&'a Tensor>,
}

impl StepContext<'_> {
    /// No history: what a scheduler's plain [`Scheduler::posterior`] sees.
    pub const EMPTY: StepContext<'static> = StepContext { history: &[], shared: None };
}

/// How a step changes the shared latent a scheduler carries.
#[derive(Debug, Clone)]
pub enum SharedUpdate {
    /// Keep it as it is.
    Keep,
    /// It becomes the step's input latent `x` (the same for every model).
    Input,
    /// This model's value; the state fuses the models' values with the step's weights.
    Fused(Tensor),
}

/// One model's step: its posterior and what the run keeps for later steps.
#[derive(Debug, Clone)]
pub struct ModelStep {
    /// The Gaussian posterior of the next latent (variance 0 for a deterministic step).
    pub posterior: Posterior,
    /// Appended to this model's history (the oldest entry beyond
    /// [`Scheduler::history_len`] is dropped); `None` appends nothing.
    pub record: Option<Tensor>,
    /// The new shared latent.
    pub shared: SharedUpdate,
}

impl ModelStep {
    /// A step that keeps nothing (every stateless scheduler's).
    pub fn stateless(posterior: Posterior) -> Self {
        Self { posterior, record: None, shared: SharedUpdate::Keep }
    }
}

struct Pending {
    x: Tensor,
    records: Vec<Option<Tensor>>,
    shared: Vec<SharedUpdate>,
}

/// One run's per-model histories and shared latent, for driving any [`Scheduler`] step by step
/// with K models (what [`crate::Sampler`] does inside).
///
/// Each step is one [`SolverState::posteriors`] call (the K models' posteriors at the shared
/// latent) and, after the fusion, one [`SolverState::advance`] with the step's weights (which
/// commits the models' records and fuses the shared latent). Steps go in order from 0. For a
/// stateless scheduler (DDPM, DDIM, Euler, Euler ancestral, LCM) this is simply
/// [`Scheduler::posterior`] per model.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use deradiff_core::*;
///
/// // DPM-Solver++ (2M) with Karras sigmas, realigned by hand: two models, λ = 0.5.
/// let config = DpmSolverConfig { sigma_spacing: SigmaSpacing::Karras, ..Default::default() };
/// let scheduler = DpmSolverMultistep::new(config, 10)?;
/// let reference = FnDenoiser(|x: &Tensor, _t: f64| Ok(x.affine(0.1, 0.0)?));
/// let aligned = FnDenoiser(|x: &Tensor, _t: f64| Ok(x.affine(0.2, 0.1)?));
/// let models: [&dyn Denoiser; 2] = [&reference, &aligned];
/// let realigner = Realigner::two_model(0.5)?;
/// let mut noise = SeededNoise::new(3);
/// let mut state = SolverState::new(&scheduler, models.len())?;
/// let mut x = noise.standard_normal(&(1, 4).into(), DType::F64, &Device::Cpu)?
///     .affine(scheduler.init_noise_sigma(), 0.0)?;
/// for step in 0..scheduler.num_steps() {
///     let x_in = scheduler.scale_model_input(&x, step)?;
///     let t = scheduler.timestep(step)?;
///     let outputs = models.iter().map(|m| m.predict(&x_in, t)).collect::<Result<Vec<_>>>()?;
///     let posteriors = state.posteriors(&x, &outputs, step)?;
///     let fused = realigner.fuse(&posteriors, step)?;
///     x = fused.sample_with(&noise.standard_normal(x.shape(), x.dtype(), x.device())?)?;
///     state.advance(realigner.weights(step)?)?;
/// }
/// assert_eq!(x.dims(), &[1, 4]);
/// # Ok::<(), deradiff_core::Error>(())
/// ```
pub struct SolverState<'a> {
    scheduler: &'a dyn Scheduler,
    histories: Vec<VecDeque<Tensor>>,
    shared: Option<Tensor>,
    next_step: usize,
    pending: Option<Pending>,
}

impl std::fmt::Debug for SolverState<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SolverState")
            .field("num_models", &self.histories.len())
            .field("next_step", &self.next_step)
            .field("history", &self.histories.first().map_or(0, VecDeque::len))
            .field("shared", &self.shared.is_some())
            .finish_non_exhaustive()
    }
}

impl<'a> SolverState<'a> {
    /// A fresh state (step 0, empty histories) for `num_models` models (≥ 1).
    pub fn new(scheduler: &'a dyn Scheduler, num_models: usize) -> Result<Self> {
        if num_models == 0 {
            return Err(Error::NoModels);
        }
        Ok(Self {
            scheduler,
            histories: (0..num_models).map(|_| VecDeque::new()).collect(),
            shared: None,
            next_step: 0,
            pending: None,
        })
    }

    /// The scheduler this state drives.
    pub fn scheduler(&self) -> &'a dyn Scheduler {
        self.scheduler
    }

    /// The number of models.
    pub fn num_models(&self) -> usize {
        self.histories.len()
    }

    /// The step the next [`SolverState::posteriors`] call must be for.
    pub fn next_step(&self) -> usize {
        self.next_step
    }

    /// The models' posteriors of `step` at the shared latent `x` (one model output each, in
    /// model order). Their records wait for [`SolverState::advance`].
    ///
    /// Errors: [`Error::StepOrder`] for any step but [`SolverState::next_step`] (including a
    /// second call before `advance`), [`Error::WeightCountMismatch`] for a wrong number of
    /// outputs, and the scheduler's own errors.
    pub fn posteriors(&mut self, x: &Tensor, model_outputs: &[Tensor], step: usize) -> Result<Vec<Posterior>> {
        if self.pending.is_some() {
            return Err(Error::StepOrder {
                expected: self.next_step,
                detail: format!("posteriors() for step {step} before advance() ended step {}", self.next_step),
            });
        }
        if step != self.next_step {
            return Err(Error::StepOrder { expected: self.next_step, detail: format!("posteriors() for step {step}") });
        }
        if model_outputs.len() != self.histories.len() {
            return Err(Error::WeightCountMismatch { weights: self.histories.len(), posteriors: model_outputs.len() });
        }
        let k = model_outputs.len();
        let (mut posteriors, mut records, mut shared) = (Vec::with_capacity(k), Vec::with_capacity(k), Vec::new());
        for (history, out) in self.histories.iter_mut().zip(model_outputs) {
            let context = StepContext { history: history.make_contiguous(), shared: self.shared.as_ref() };
            let model_step = self.scheduler.step(x, out, step, context)?;
            posteriors.push(model_step.posterior);
            records.push(model_step.record);
            shared.push(model_step.shared);
        }
        self.pending = Some(Pending { x: x.clone(), records, shared });
        Ok(posteriors)
    }

    /// Ends the step: appends every model's record to its history and fuses the shared latent
    /// with the step's `weights` (`Σ w_i s_i / Σ w_i`, the zero-variance limit of the fusion).
    ///
    /// Errors: [`Error::StepOrder`] without a preceding [`SolverState::posteriors`],
    /// [`Error::WeightCountMismatch`], [`Error::InvalidWeights`] for weights summing to 0.
    pub fn advance(&mut self, weights: &[f64]) -> Result<()> {
        if weights.len() != self.histories.len() {
            return Err(Error::WeightCountMismatch { weights: weights.len(), posteriors: self.histories.len() });
        }
        self.advance_with(&mut |values: &[Tensor]| Self::weighted_mean(weights, values))
    }

    /// `Σ w_i v_i / Σ w_i`: how a shared latent is fused (the zero-variance limit of the fusion;
    /// a one-hot weight returns its value bit for bit).
    ///
    /// Errors: [`Error::WeightCountMismatch`], [`Error::InvalidWeights`] for weights that are
    /// not finite or sum to 0.
    pub fn weighted_mean(weights: &[f64], values: &[Tensor]) -> Result<Tensor> {
        if weights.len() != values.len() {
            return Err(Error::WeightCountMismatch { weights: weights.len(), posteriors: values.len() });
        }
        let total: f64 = weights.iter().sum();
        if !(total.is_finite() && total != 0.0) {
            return Err(Error::InvalidWeights(format!(
                "the weights {weights:?} sum to {total}; a shared latent is their weighted mean"
            )));
        }
        let terms: Vec<(f64, &Tensor)> = weights.iter().map(|w| w / total).zip(values).collect();
        Ok(linear_combination(&terms, false)?.0)
    }

    /// [`SolverState::advance`] with the fusion of the shared latent left to `fuse`, which gets
    /// the models' values (model order) — for a batch whose rows are fused with different
    /// weights (`deradiff-tune`'s batched sampler).
    pub fn advance_with(&mut self, fuse: &mut dyn FnMut(&[Tensor]) -> Result<Tensor>) -> Result<()> {
        let pending = self.pending.take().ok_or_else(|| Error::StepOrder {
            expected: self.next_step,
            detail: "advance() without posteriors() for the step".into(),
        })?;
        let keep = self.scheduler.history_len();
        for (history, record) in self.histories.iter_mut().zip(pending.records) {
            if let Some(r) = record {
                history.push_back(r);
            }
            while history.len() > keep {
                history.pop_front();
            }
        }
        let mut fused_values = Vec::new();
        let (mut keep_count, mut input_count) = (0, 0);
        for update in pending.shared {
            match update {
                SharedUpdate::Keep => keep_count += 1,
                SharedUpdate::Input => input_count += 1,
                SharedUpdate::Fused(t) => fused_values.push(t),
            }
        }
        let k = self.histories.len();
        if input_count == k {
            self.shared = Some(pending.x);
        } else if fused_values.len() == k {
            self.shared = Some(fuse(&fused_values)?);
        } else if keep_count != k {
            return Err(Error::InvalidArgument(
                "the scheduler updated the shared latent differently for different models".into(),
            ));
        }
        self.next_step += 1;
        Ok(())
    }
}
