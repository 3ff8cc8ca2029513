//! The one error type of `deradiff-core`.
//!
//! Every bad input a user can give (a λ that is NaN, weights that do not match the number of
//! models, a step out of range, a schedule that makes no sense, posteriors of different shapes)
//! comes back as a variant of [`Error`] whose message says what to fix; nothing in this crate
//! panics on user input.

use std::path::PathBuf;

use candle_core::{DType, DeviceLocation, Shape};

/// Errors of the core crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An error raised inside candle (tensor arithmetic, allocation, device transfer).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// A noise schedule or scheduler was configured with values that cannot work.
    #[error("invalid scheduler configuration: {0}")]
    InvalidConfig(String),

    /// A `scheduler_config.json` document (a string or a JSON value) could not be parsed.
    #[error("cannot parse scheduler config: {0}")]
    ConfigParse(#[from] serde_json::Error),

    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },

    /// A `scheduler_config.json` file was read but is not valid JSON for a scheduler config.
    #[error("cannot parse scheduler config {}: {source}", path.display())]
    ConfigFileParse {
        /// The file.
        path: PathBuf,
        /// The JSON error (with line and column).
        source: serde_json::Error,
    },

    /// A scheduler name (a diffusers `_class_name` or a short name) that deradiff does not
    /// implement.
    #[error(
        "unknown or unsupported scheduler '{name}': accepted are {} (for another class named in a \
         checkpoint's scheduler_config.json, pick one of these; the file's training schedule still applies)",
        crate::scheduler::SchedulerKind::ACCEPTED_NAMES.join(", ")
    )]
    UnknownScheduler {
        /// The name that was given.
        name: String,
    },

    /// A scheduler config has no (string) `_class_name`, so the sampler cannot be read from it.
    #[error(
        "the scheduler config{} has no string \"_class_name\"; choose the sampler explicitly \
         (one of {})",
        path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default(),
        crate::scheduler::SchedulerKind::ACCEPTED_NAMES.join(", ")
    )]
    MissingSchedulerClass {
        /// The file, when the config was read from one.
        path: Option<PathBuf>,
    },

    /// The config asks for a feature this crate does not implement (rather than ignoring it).
    #[error("unsupported scheduler option: {0}")]
    Unsupported(String),

    /// A step index at or past the number of inference steps.
    #[error("step {step} is out of range: the scheduler has {num_steps} inference steps (0..{num_steps})")]
    StepOutOfRange {
        /// The index that was asked for.
        step: usize,
        /// The number of inference steps.
        num_steps: usize,
    },

    /// Two tensors that must have the same shape do not.
    #[error("shape mismatch in {context}: expected {expected:?}, got {got:?}")]
    ShapeMismatch {
        /// What was being compared.
        context: String,
        /// The shape that was required.
        expected: Shape,
        /// The shape that was given.
        got: Shape,
    },

    /// Two tensors that must have the same dtype do not.
    #[error("dtype mismatch in {context}: expected {expected:?}, got {got:?}")]
    DTypeMismatch {
        /// What was being compared.
        context: String,
        /// The dtype that was required.
        expected: DType,
        /// The dtype that was given.
        got: DType,
    },

    /// Two tensors that must live on the same device do not.
    #[error("device mismatch in {context}: expected {expected:?}, got {got:?}")]
    DeviceMismatch {
        /// What was being compared.
        context: String,
        /// The device that was required.
        expected: DeviceLocation,
        /// The device that was given.
        got: DeviceLocation,
    },

    /// Realignment weights that are NaN or infinite, or that do not sum to one.
    #[error("invalid realignment weights: {0}")]
    InvalidWeights(String),

    /// A per-step weight schedule whose length differs from the number of inference steps of
    /// the run it is used for.
    #[error(
        "the realigner's weight schedule has {schedule_steps} steps but the run has {num_steps} \
         inference steps: give exactly one weight vector (λ) per step, or compute them from \
         (step, steps) with Realigner::from_schedule / Realigner::two_model_schedule"
    )]
    WeightScheduleLength {
        /// Number of steps in the schedule.
        schedule_steps: usize,
        /// Number of inference steps of the run.
        num_steps: usize,
    },

    /// The number of weights differs from the number of posteriors (or denoisers).
    #[error("{weights} weights were given for {posteriors} posteriors: give exactly one weight per model")]
    WeightCountMismatch {
        /// Number of weights.
        weights: usize,
        /// Number of posteriors (models).
        posteriors: usize,
    },

    /// A posterior variance that is negative or not finite.
    #[error("invalid posterior variance at step {step}: {detail}")]
    InvalidVariance {
        /// The inference step.
        step: usize,
        /// What was wrong.
        detail: String,
    },

    /// The fused precision `Σ w_i / σ_i²` is zero or negative somewhere (possible for λ > 1 with
    /// unequal variances): the geometric mixture is not a Gaussian there.
    #[error(
        "fused precision is not positive at step {step} (element {element}): the weights extrapolate \
         too far for these variances; use a smaller λ, or opt into \
         Realigner::with_policy(PrecisionPolicy::MeanOfMeans)"
    )]
    NonPositivePrecision {
        /// The inference step.
        step: usize,
        /// Flat index of the first offending element (0 for scalar variances).
        element: usize,
    },

    /// Variances differ across models and one of them is zero: the product of a point mass with a
    /// Gaussian has no Gaussian limit that does not depend on how the variances went to zero.
    #[error(
        "cannot fuse at step {step} (element {element}): one model has zero variance and another \
         has a positive one; zero variances can only be fused when every model has them (or opt \
         into Realigner::with_policy(PrecisionPolicy::MeanOfMeans))"
    )]
    ZeroVarianceConflict {
        /// The inference step.
        step: usize,
        /// Flat index of the first offending element (0 for scalar variances).
        element: usize,
    },

    /// The fused mean or variance overflowed.
    #[error("fusion at step {step} produced a non-finite value (element {element})")]
    NonFiniteFusion {
        /// The inference step.
        step: usize,
        /// Flat index of the first offending element.
        element: usize,
    },

    /// A latent became NaN or infinite during sampling while every model's output was finite:
    /// the fusion's weights extrapolate too far (a λ far outside `[0, 1]`).
    #[error(
        "the latent became non-finite at step {step} (timestep {timestep}) although every model's output was \
         finite: the realignment weights {weights:?} extrapolate too far (a λ far outside [0, 1]); the sampling run \
         was stopped"
    )]
    NonFiniteLatent {
        /// The inference step that produced it.
        step: usize,
        /// The training timestep of that step.
        timestep: f64,
        /// The models' weights at that step (reference first).
        weights: Vec<f64>,
    },

    /// One model's output (a [`crate::Denoiser`]'s prediction) became NaN or infinite during
    /// sampling, before any fusion. Callers that know the models by name (deradiff-sd's
    /// pipeline) name it.
    #[error(
        "the output of model {model} (0 is the reference, then the aligned models in weight order) became \
         non-finite at step {step} (timestep {timestep}): that model overflowed; the sampling run was stopped"
    )]
    NonFiniteModelOutput {
        /// The inference step.
        step: usize,
        /// The training timestep of that step.
        timestep: f64,
        /// The model's index among the sampler's denoisers.
        model: usize,
    },

    /// A [`crate::SolverState`] was driven out of order: steps go from 0, one
    /// `posteriors` / `advance` pair each.
    #[error(
        "solver state out of order at step {expected}: {detail}; drive it from step 0 with one \
         posteriors() call and one advance() per step"
    )]
    StepOrder {
        /// The step the state is at.
        expected: usize,
        /// What was asked instead.
        detail: String,
    },

    /// A multistep scheduler's step was asked for without the earlier model outputs it reads
    /// ([`crate::Scheduler::posterior`] alone at a step past the first).
    #[error(
        "step {step} of {scheduler} reads {needed} earlier model output(s) of the same model but got {got}; \
         drive the scheduler with a SolverState (Sampler does), not posterior() alone"
    )]
    MissingHistory {
        /// The scheduler's class name.
        scheduler: &'static str,
        /// The step.
        step: usize,
        /// How many earlier outputs (or the shared latent, counted as one) it needs.
        needed: usize,
        /// How many it got.
        got: usize,
    },

    /// No models were given where at least one is needed.
    #[error("no models: give at least one denoiser / posterior")]
    NoModels,

    /// An invalid argument that fits none of the above.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// An error from a user-supplied [`crate::Denoiser`] or observer.
    #[error("denoiser error: {0}")]
    Denoiser(Box<dyn std::error::Error + Send + Sync>),
}

/// Result alias of the core crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps any error of a user's own [`crate::Denoiser`] implementation.
    pub fn denoiser<E: std::error::Error + Send + Sync + 'static>(err: E) -> Self {
        Error::Denoiser(Box::new(err))
    }
}
