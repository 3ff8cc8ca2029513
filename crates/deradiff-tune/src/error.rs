//! The one error type of `deradiff-tune`.

use std::path::PathBuf;

/// Errors of the λ-search crate. Every bad input (an empty λ grid, a reversed λ range, a budget
/// of zero, a malformed results file, a reward that is NaN) comes back as one of these with a
/// message that says what to fix; nothing here panics on user input.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An error of the core crate (schedulers, the realigner, a denoiser).
    #[error(transparent)]
    Core(#[from] deradiff_core::Error),

    /// An error of the analytic testbed (mixtures, rewards, exact models).
    #[error(transparent)]
    Analytic(#[from] deradiff_analytic::Error),

    /// An error of deradiff-sd: a checkpoint, a reward model's tower, the Stable Diffusion
    /// pipeline (feature `sd`).
    #[cfg(feature = "sd")]
    #[error(transparent)]
    Sd(#[from] deradiff_sd::Error),

    /// An error of deradiff-rewards that no other variant stands for (a reward's errors that
    /// do — deradiff-sd's, candle's, [`Error::NonFiniteReward`], [`Error::InvalidArgument`],
    /// [`Error::User`] — become those variants). Boxed: it would make every result of this crate
    /// larger.
    #[error(transparent)]
    Rewards(Box<deradiff_rewards::Error>),

    /// An error raised inside candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// The λ grid of a sweep has no values.
    #[error("the λ grid is empty: give at least one λ")]
    EmptyGrid,

    /// A λ that is NaN or infinite, or that appears twice in a grid.
    #[error("invalid λ: {0}")]
    InvalidLambda(String),

    /// A search range `[lower, upper]` whose ends are not finite or not increasing.
    #[error(
        "the λ range [{lower}, {upper}] is not valid: it needs finite ends with lower < upper \
         (was it given reversed?)"
    )]
    InvalidRange {
        /// The lower end given.
        lower: f64,
        /// The upper end given.
        upper: f64,
    },

    /// A Bayesian-optimisation budget that cannot work (zero, or smaller than the initial design).
    #[error("invalid budget: {0}")]
    InvalidBudget(String),

    /// A model's output became NaN or infinite during a sweep, named by its [`crate::SweepModel`]
    /// ([`crate::SweepModel::describe_model`]).
    #[error(
        "the output of {model} became non-finite {at}: its activations overflow (weights, a LoRA multiplier or λ \
         far too large; in f16, try f32); the sweep was stopped"
    )]
    NonFiniteOutput {
        /// The model, in words, with its file or folder.
        model: String,
        /// Where ("at step 3 (timestep 981) of λ = …").
        at: String,
    },

    /// A reward (or an objective) gave NaN or ±∞.
    #[error("the reward {reward:?} is {value} for {context}; rewards must be finite numbers")]
    NonFiniteReward {
        /// The reward's name.
        reward: String,
        /// The offending value.
        value: f64,
        /// Where: λ, prompt and sample index (or the objective's λ).
        context: String,
    },

    /// A results file that cannot be read back: a line that is not a sweep row, a missing
    /// header, a duplicated row.
    #[error("malformed results file {path}, line {line}: {detail}")]
    MalformedResults {
        /// The file.
        path: PathBuf,
        /// The 1-based line number.
        line: usize,
        /// What is wrong with it.
        detail: String,
    },

    /// A results file written by a different sweep (another model, reward or sample count)
    /// than the one asked to resume it.
    #[error(
        "cannot resume {path}: it was written with {field} = {in_file}, but this sweep has \
         {field} = {in_config}; use another output file or overwrite it"
    )]
    ResumeMismatch {
        /// The file.
        path: PathBuf,
        /// The setting that differs.
        field: String,
        /// Its value in the file.
        in_file: String,
        /// Its value in this sweep.
        in_config: String,
    },

    /// A statistic that came out NaN or infinite (inputs so large that sums or squares overflow).
    #[error(
        "the {statistic} is {value}: the rewards are too large for f64 arithmetic (sums or squares \
         overflow); rescale them (for example divide by a power of ten) and compare again"
    )]
    NonFiniteStatistic {
        /// Which statistic.
        statistic: String,
        /// Its value (or its percentage of the mean, when that is what overflowed).
        value: f64,
    },

    /// A prompt file that cannot be read as prompts.
    #[error("prompt file {path}: {detail}")]
    PromptFile {
        /// The file.
        path: PathBuf,
        /// Where and what is wrong.
        detail: String,
    },

    /// Results files that cannot be merged (another sweep's file, a duplicate or foreign row, a
    /// shard given twice, a file without a spec).
    #[error("cannot merge: {0}")]
    Merge(String),

    /// A merge found work items no file has a row for.
    #[error(
        "{missing} of {total} work items have no row{}{shards}. The first: {first}. Finish or resume the \
         shards that own them, or merge with --allow-partial",
        if shards.is_empty() { "" } else { ", missing from shards " }
    )]
    MissingItems {
        /// How many are missing.
        missing: usize,
        /// Items in the sweep.
        total: usize,
        /// The shards that own them, each with its count (`3/8 (15 items), 5/8 (2 items)`);
        /// empty for unsharded files.
        shards: String,
        /// The first few, described.
        first: String,
    },

    /// The cluster scheduler's environment does not give this process one consistent shard: a
    /// variable that is not a number, an array task index outside the shard count, an array
    /// whose size, first index or step does not match the shards, or a job array without the
    /// shard count (which is never taken from the environment). `variable` names it; the
    /// message says which option or array to change.
    #[error("{variable} = {value}: {detail}")]
    ShardEnvironment {
        /// The environment variable (`SLURM_ARRAY_TASK_ID`, `SLURM_ARRAY_TASK_COUNT`,
        /// `SLURM_ARRAY_TASK_MIN`, `SLURM_ARRAY_TASK_STEP`, `JOB_COMPLETION_INDEX`).
        variable: String,
        /// Its value.
        value: String,
        /// What is inconsistent, and what to do.
        detail: String,
    },

    /// Another process is writing the same results file (it holds the file's lock).
    #[error(
        "{0} is being written by another sweep (its lock is held); wait for it to finish, or give this \
         sweep another output file"
    )]
    ResultsLocked(PathBuf),

    /// The output file exists and the sweep was told neither to resume nor to overwrite it.
    #[error("{0} already exists; resume it, overwrite it, or choose another file")]
    OutputExists(PathBuf),

    /// An argument that fits none of the above.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// The Gaussian process could not be fitted or evaluated.
    #[error("Gaussian process: {0}")]
    Gp(String),

    /// A file could not be read or written.
    #[error("cannot access {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },

    /// JSON (de)serialisation failed.
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),

    /// A figure could not be drawn or encoded.
    #[error("cannot draw {what}: {detail}")]
    Plot {
        /// Which figure.
        what: String,
        /// What went wrong.
        detail: String,
    },

    /// An error of a user-supplied reward, model, objective or progress callback (a callback
    /// that returns it stops a sweep or an optimisation; what was written so far is kept).
    #[error("{0}")]
    User(Box<dyn std::error::Error + Send + Sync>),
}

/// Result alias of the tune crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<deradiff_rewards::Error> for Error {
    /// A reward's error as the variant of this crate that stands for it, so that a sweep reports
    /// it as it did when the rewards were part of this crate; a tune error that a reward of this
    /// crate boxed as [`deradiff_rewards::Error::User`] comes back as itself.
    fn from(e: deradiff_rewards::Error) -> Self {
        use deradiff_rewards::Error as R;
        match e {
            #[cfg(feature = "sd")]
            R::Sd(e) => Error::Sd(e),
            R::Candle(e) => Error::Candle(e),
            R::NonFiniteReward { reward, value, context } => Error::NonFiniteReward { reward, value, context },
            R::InvalidArgument(m) => Error::InvalidArgument(m),
            R::PromptFile { path, detail } => Error::PromptFile { path, detail },
            R::Io { path, source } => Error::Io { path, source },
            R::User(e) => match e.downcast::<Error>() {
                Ok(e) => *e,
                Err(e) => Error::User(e),
            },
            other => Error::Rewards(Box::new(other)),
        }
    }
}

impl Error {
    /// Wraps any error of a user's own reward, model, objective or callback.
    pub fn user<E: Into<Box<dyn std::error::Error + Send + Sync>>>(err: E) -> Self {
        Error::User(err.into())
    }

    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}

/// Writes `bytes` to `path` atomically through the workspace's one writer
/// ([`deradiff_core::io::write_atomic`]), an error naming the path.
pub(crate) fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    deradiff_core::io::write_atomic(path, bytes).map_err(Error::io(path))
}
