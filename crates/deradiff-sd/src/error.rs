//! The one error type of `deradiff-sd`.
//!
//! Every problem with a checkpoint names the file: a file that is missing ([`Error::NotFound`]),
//! of the wrong kind (a folder, a FIFO, a link loop, …: [`Error::WrongKind`]), cannot be read or
//! written ([`Error::Io`]), is not safetensors at all ([`Error::NotSafetensors`]), does not parse
//! ([`Error::Config`], [`Error::Weights`]), has a field with a bad value ([`Error::ConfigField`], naming the field),
//! asks for something not implemented ([`Error::Unsupported`]), or lacks or misshapes a tensor
//! ([`Error::MissingTensor`], [`Error::TensorShape`], [`Error::TensorDType`], naming the tensor).
//! Bad arguments say which: a field of a [`crate::Request`] ([`Error::InvalidRequest`]), a
//! tensor of the wrong shape or dtype ([`Error::ShapeMismatch`], [`Error::DTypeMismatch`], naming
//! the argument and the function), an encoding of another request
//! ([`Error::EncodedRequestMismatch`]), a guidance scale ([`Error::InvalidGuidance`]), anything
//! else ([`Error::InvalidArgument`], naming the function or option). Nothing in this crate
//! panics on user input.

use std::path::PathBuf;

use candle_core::{DType, Shape};

/// Errors of the Stable Diffusion crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An error raised inside candle (tensor arithmetic, allocation, device transfer).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// An error of deradiff-core (scheduler, realigner, sampling loop).
    #[error(transparent)]
    Core(deradiff_core::Error),

    /// A file or directory the checkpoint needs does not exist: nothing at all is at the path
    /// (something of the wrong kind is [`Error::WrongKind`]).
    #[error("{what} not found: {path} does not exist")]
    NotFound {
        /// What was being looked for ("UNet config", "VAE weights", …).
        what: String,
        /// The path that was tried.
        path: PathBuf,
    },

    /// Something is at the path, but not what was expected: a file where a folder is expected, a
    /// folder where a file is, a FIFO, a socket or a device, a symbolic link loop, a dangling
    /// symbolic link, a path through a file, or a component folder of a pipeline (`unet/`, `vae/`,
    /// …) where the pipeline folder is expected.
    #[error("{what}: {path} is {found}, expected {expected}")]
    WrongKind {
        /// What the path was given as ("reference model", "UNet config", …).
        what: String,
        /// The path.
        path: PathBuf,
        /// What is there ("a file", "a folder", "a FIFO (named pipe)", "a symbolic link loop", …).
        found: String,
        /// What is expected there, and what to pass instead when that is known.
        expected: String,
    },

    /// Reading or writing a file failed.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// "read", "write", "create the directory of", ….
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },

    /// A Hugging Face repo id (`org/name`) whose repo is not in the local Hugging Face cache
    /// ([`crate::HubCache`]): nothing is downloaded; the command that fetches it is named.
    #[error(
        "{repo} is not in the Hugging Face cache{}: {looked_in} does not exist; fetch it with `{download}` \
         (`{}` with huggingface_hub 1.x), or give the model's folder",
        if *not_a_path { ", nor a file or folder" } else { "" },
        hf_command(download)
    )]
    NotCached {
        /// The repo id as given.
        repo: String,
        /// The repo's folder in the cache that was looked for.
        looked_in: PathBuf,
        /// The `huggingface-cli download …` command that fetches it.
        download: String,
        /// Whether it was also looked for as a path (and is not one).
        not_a_path: bool,
    },

    /// A revision (branch, tag) of a cached Hugging Face repo that is not in the cache: its
    /// `refs/` file does not exist.
    #[error(
        "{repo}: the revision is not in the Hugging Face cache: {looked_in} does not exist (cached: {cached}); \
         fetch it with `{download}` (`{}` with huggingface_hub 1.x)",
        hf_command(download)
    )]
    RevisionNotCached {
        /// The repo id and revision as given.
        repo: String,
        /// The ref file that was looked for (`refs/{revision}`).
        looked_in: PathBuf,
        /// The revisions that are cached (refs, then commits).
        cached: String,
        /// The `huggingface-cli download …` command that fetches it.
        download: String,
    },

    /// A commit's snapshot, or a file or folder of it, that is not in the Hugging Face cache.
    #[error(
        "{repo}: {file} is not in the Hugging Face cache ({note}); fetch it with `{download}` (`{}` with \
         huggingface_hub 1.x)",
        hf_command(download)
    )]
    NotInSnapshot {
        /// The repo id, revision and path as given.
        repo: String,
        /// The snapshot folder or file looked for.
        file: PathBuf,
        /// Why it is not there.
        note: String,
        /// The `huggingface-cli download …` command that fetches it.
        download: String,
    },

    /// A file of a cached snapshot that is a symbolic link to a blob that is gone (the cache was
    /// cleaned or a download interrupted).
    #[error(
        "broken link in the Hugging Face cache: {file} points to {blob}, which cannot be opened ({reason}); \
         download it again with `{download}`"
    )]
    BrokenCacheLink {
        /// The file in `snapshots/`.
        file: PathBuf,
        /// The blob it points to.
        blob: PathBuf,
        /// What opening it said.
        reason: String,
        /// The command that downloads it again.
        download: String,
    },

    /// A `config.json` (or tokenizer config, or weight index) that cannot be parsed as a whole:
    /// not JSON, or not the expected kind of document. A field with a bad value is
    /// [`Error::ConfigField`].
    #[error("cannot parse {path}: {message}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },

    /// A field of a config file whose value is invalid: of the wrong type, out of range, or
    /// inconsistent with another field.
    #[error("{path}: invalid `{field}`: {message}")]
    ConfigField {
        /// The file.
        path: PathBuf,
        /// The field, as the file spells it (`norm_num_groups`, `block_out_channels`, …).
        field: String,
        /// What is wrong with its value, and what would be accepted.
        message: String,
    },

    /// A model whose configuration asks for something this crate does not implement (rather
    /// than silently computing something else).
    #[error("unsupported model ({path}): {message}")]
    Unsupported {
        /// The config or weight file.
        path: PathBuf,
        /// What is not supported, and what is.
        message: String,
    },

    /// A weight file that does not even start like safetensors: a Python pickle or a zip archive
    /// (PyTorch's `.bin` / `.pt` / `.ckpt`), a Git LFS pointer, a web page, an empty or truncated
    /// file, other bytes. Checked from its first bytes before the file is mapped.
    #[error("not a safetensors file: {path} looks like {looks_like}")]
    NotSafetensors {
        /// The file.
        path: PathBuf,
        /// What the file looks like instead, and what to do about it ("a Python pickle (…);
        /// convert it with …").
        looks_like: String,
    },

    /// An image file that cannot be read as an image: not a PNG, corrupt, truncated, or larger
    /// than [`crate::RgbImage::MAX_PIXELS`].
    #[error("cannot read the image {path}: {message}")]
    Image {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },

    /// A weight file that starts like safetensors but is not valid safetensors (a corrupt
    /// header, offsets past the end of the file, …).
    #[error("cannot load weights from {file}: {message}")]
    Weights {
        /// The file.
        file: PathBuf,
        /// What was wrong.
        message: String,
    },

    /// A LoRA adapter that cannot be used: an unknown or unsupported key (DoRA, text-encoder
    /// adapters, LoHa), a layer this UNet does not have, shapes that do not fit, a bad
    /// `adapter_config.json`. The message names the key as the file spells it.
    #[error("LoRA adapter {path}: {message}")]
    Lora {
        /// The adapter's file or folder.
        path: PathBuf,
        /// What is wrong, naming the key.
        message: String,
    },

    /// A tensor the model needs is not in its weight file.
    #[error("{file}: missing tensor `{tensor}`{hint}")]
    MissingTensor {
        /// The weight file (the first shard for sharded checkpoints).
        file: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// Extra help (for example a prefix the file's names carry), starting with "; " if any.
        hint: String,
    },

    /// Tensors of a single-file checkpoint that no model loaded and that diffusers' conversion
    /// does not drop either (a layout other than the one inferred, or a component deradiff does
    /// not load).
    #[error("{file}: {count} tensor(s) {what} that no model loads: {names}")]
    UnknownTensors {
        /// The checkpoint.
        file: PathBuf,
        /// What was loaded from it (for example "under `model.diffusion_model.`").
        what: String,
        /// How many.
        count: usize,
        /// The first few names, backquoted and comma-separated.
        names: String,
    },

    /// A single-file reference needs tokenizers, which no single file holds.
    #[error(
        "{file} is a single-file {family} checkpoint, which holds no tokenizer: give {needs} \
         (deradiff --tokenizer DIR; LoadOptions::single_file.tokenizer), for example those of the diffusers \
         pipeline {repo}, which are read from the local Hugging Face cache when it is there \
         (`huggingface-cli download {repo} --include 'tokenizer*/*'` fetches them)"
    )]
    TokenizerNeeded {
        /// The checkpoint.
        file: PathBuf,
        /// Its family ("SD 1.x", "SD 2.x", "SDXL").
        family: String,
        /// The folders needed.
        needs: String,
        /// The diffusers pipeline whose tokenizers fit (diffusers' default for the family).
        repo: String,
    },

    /// A tensor whose shape is not the one the model's config implies.
    #[error("{file}: tensor `{tensor}` has shape {got:?} but the model config expects {expected:?}")]
    TensorShape {
        /// The weight file holding the tensor.
        file: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// The shape the configuration implies.
        expected: Shape,
        /// The shape in the file.
        got: Shape,
    },

    /// A tensor stored with a dtype that cannot be used as a weight.
    #[error("{file}: tensor `{tensor}` is stored as {dtype}; weights must be floating point (F32, F16, BF16, F64)")]
    TensorDType {
        /// The weight file holding the tensor.
        file: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// Its dtype as the safetensors header names it (`I64`, `BOOL`, `F8_E4M3`, …): it need not
        /// be a dtype candle has.
        dtype: String,
    },

    /// A weight tensor holding a NaN or an infinity, or a value that the conversion to the model's
    /// dtype makes infinite (65520 in f16, say): it would make every output NaN. Checked in one
    /// pass over each tensor as it is loaded (UNets, VAEs, text encoders, LoRA adapters, the
    /// reward models).
    #[error("{file}: tensor `{tensor}` {problem}")]
    NonFiniteTensor {
        /// The weight file holding the tensor.
        file: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// The value, where it is, and what to do ("holds NaN at element 3 of 64: …").
        problem: String,
    },

    /// A model's output became NaN or infinite: the reference UNet, an aligned UNet, the reference
    /// with a LoRA adapter, the weight-space model, or the VAE decoder, named with the step (or
    /// the image) where it happened. Its weights are finite (they are checked at load), so its
    /// activations overflowed.
    #[error(
        "the output of {model} became non-finite {at}: its activations overflow (weights, a LoRA multiplier or the \
         realignment weights far too large; in f16, try f32); the run was stopped"
    )]
    NonFiniteOutput {
        /// The model, in words, with its file or folder.
        model: String,
        /// Where: "at step 3 (timestep 981)", "in image 1 of 2".
        at: String,
    },

    /// The reference and an aligned model do not have the same architecture, or the text encoder
    /// does not fit the UNet, or conditioning made for one kind of model (SDXL's added
    /// conditioning, an SDXL pipeline's encoding) was given to another.
    #[error("models do not fit together: {0}")]
    ModelMismatch(String),

    /// A tokenizer that cannot be built or that fails on a prompt.
    #[error("tokenizer ({path}): {message}")]
    Tokenizer {
        /// The tokenizer directory or file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },

    /// A dtype the chosen device cannot run (for example bf16 on CPU in candle 0.11).
    #[error("dtype {dtype:?} is not supported on {device}: {message}")]
    UnsupportedDType {
        /// The dtype asked for.
        dtype: DType,
        /// The device, in words.
        device: String,
        /// Why, and what to use instead.
        message: String,
    },

    /// A device that cannot be opened (for example CUDA in a build without the `cuda` feature).
    #[error("cannot use device `{device}`: {message}")]
    Device {
        /// The device as given.
        device: String,
        /// Why.
        message: String,
    },

    /// A tensor argument whose shape is not the one the operation takes (latents, text
    /// embeddings, pooled text embeddings, `time_ids`, decoded images, …).
    #[error("shape mismatch in {context}: expected {expected}, got {got:?}")]
    ShapeMismatch {
        /// The argument and the function it was given to ("the latents given to Unet::forward").
        context: String,
        /// The shape it must have, with named dimensions where any size goes
        /// (`[batch, 4, height, width]`).
        expected: String,
        /// The shape it has.
        got: Vec<usize>,
    },

    /// Two tensors that must have the same dtype do not.
    #[error("dtype mismatch in {context}: expected {expected:?}, got {got:?}")]
    DTypeMismatch {
        /// What was being compared, and where.
        context: String,
        /// The dtype that was required.
        expected: DType,
        /// The dtype that was given.
        got: DType,
    },

    /// A field of a [`crate::Request`] that cannot be honoured (zero steps, no prompts, a size
    /// the VAE cannot produce, SDXL micro-conditioning for an SD 1.x / 2.x checkpoint, …).
    #[error("invalid Request::{field}: {message}")]
    InvalidRequest {
        /// The field of [`crate::Request`] to change (`steps`, `prompts`, `height`, …).
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },

    /// [`crate::StableDiffusion::sample`] was given an [`crate::pipeline::EncodedRequest`] encoded from
    /// another request (other prompts, negative prompt, images per prompt, guidance on or off,
    /// `force_zeros_for_empty_prompt` or, for SDXL, micro-conditioning).
    #[error(
        "StableDiffusion::sample was given the encoding of another request: Request::{field} differs ({detail}); \
         encode this request with StableDiffusion::encode"
    )]
    EncodedRequestMismatch {
        /// The field of [`crate::Request`] that differs.
        field: &'static str,
        /// How it differs.
        detail: String,
    },

    /// A classifier-free guidance scale that is negative or not finite.
    #[error(
        "classifier-free guidance scale must be a finite number >= 0, got {0} (Request::guidance_scale, or the \
         scale given to Guided::new, StableDiffusion::denoisers or StableDiffusion::encode_prompts)"
    )]
    InvalidGuidance(f64),

    /// Any other invalid argument; the message names the function or option to change.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// A broken invariant of this crate (a bug, never the user's input): please report it.
    #[error("internal error in deradiff-sd (please report it): {0}")]
    Internal(&'static str),
}

/// `huggingface-cli download …` as huggingface_hub 1.x spells it (`hf download …`).
fn hf_command(download: &str) -> String {
    match download.strip_prefix("huggingface-cli ") {
        Some(rest) => format!("hf {rest}"),
        None => download.to_string(),
    }
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<deradiff_core::Error> for Error {
    /// Unwraps errors of this crate that travelled through the core's sampling loop (a
    /// [`crate::Guided`] denoiser reports them as `deradiff_core::Error::Denoiser`).
    fn from(e: deradiff_core::Error) -> Self {
        match e {
            deradiff_core::Error::Denoiser(inner) => match inner.downcast::<Error>() {
                Ok(ours) => *ours,
                Err(other) => Error::Core(deradiff_core::Error::Denoiser(other)),
            },
            deradiff_core::Error::Candle(c) => Error::Candle(c),
            other => Error::Core(other),
        }
    }
}

impl From<Error> for deradiff_core::Error {
    /// Lets this crate's errors leave a [`deradiff_core::Denoiser`] (candle errors stay candle
    /// errors; the rest are wrapped, and [`Error::from`] unwraps them again).
    fn from(e: Error) -> Self {
        match e {
            Error::Candle(c) => deradiff_core::Error::Candle(c),
            Error::Core(c) => c,
            other => deradiff_core::Error::denoiser(other),
        }
    }
}

impl Error {
    /// For a file that is not safetensors ([`Error::NotSafetensors`]), says how the published
    /// checkpoint (`published`, e.g. "the published ImageReward.pt") is converted — `command` —
    /// instead of the general advice (diffusers, a bare state dict). Other errors are returned as
    /// they are.
    pub fn with_conversion(self, published: &str, command: &str) -> Self {
        match self {
            Error::NotSafetensors { path, looks_like } => {
                // This file's own conversion replaces the general advice (diffusers, a bare
                // state dict), which does not fit a reward checkpoint.
                let what = looks_like.split("; convert it to safetensors").next().unwrap_or(&looks_like);
                Error::NotSafetensors {
                    path,
                    looks_like: format!("{what}; {published} is a pickle: convert it with `{command}`"),
                }
            }
            other => other,
        }
    }

    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { action, path: path.into(), source }
    }

    /// [`Error::Config`]: the file at `path` is not a config of the expected shape.
    pub fn config(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Config { path: path.into(), message: message.into() }
    }

    /// [`Error::ConfigField`]: `field` of the config at `path` has a bad value.
    pub fn config_field(path: impl Into<PathBuf>, field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::ConfigField { path: path.into(), field: field.into(), message: message.into() }
    }

    /// [`Error::ShapeMismatch`]: `context` expected `expected`, got the shape `got`.
    pub fn shape(context: impl Into<String>, expected: impl Into<String>, got: &[usize]) -> Self {
        Error::ShapeMismatch { context: context.into(), expected: expected.into(), got: got.to_vec() }
    }

    pub(crate) fn request(field: &'static str, message: impl Into<String>) -> Self {
        Error::InvalidRequest { field, message: message.into() }
    }

    /// [`Error::Unsupported`]: the model at `path` asks for something deradiff does not do.
    pub fn unsupported(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Unsupported { path: path.into(), message: message.into() }
    }
}
