//! Safetensors weight files: finding them in a diffusers-layout directory, and loading them
//! through a checking [`SimpleBackend`] so that a missing or misshapen tensor is reported with the
//! file and tensor names rather than as a bare candle error.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::VarBuilder;

use crate::error::{Error, Result};
use crate::fs::{check_path, probe_path, read_text, Kind};

mod header;
mod renamed;
mod values;

pub(crate) use header::header_problem;
pub(crate) use renamed::Rename;
pub(crate) use values::check_values;

/// The safetensors file(s) of one model component, in the order they are read.
///
/// Found in a directory as diffusers and transformers name them: `{stem}.safetensors`, else
/// `{stem}.fp16.safetensors`, else the shards listed in `{stem}.safetensors.index.json`.
///
/// Every candidate is checked for its kind: a folder, a FIFO, a dangling link, … where a weight
/// file is looked for is an [`Error::WrongKind`], not skipped.
pub(crate) fn find_weight_files(dir: &Path, stem: &str, what: &str) -> Result<Vec<PathBuf>> {
    check_path(dir, Kind::Dir, &format!("{what} directory"), None)?;
    let weights = format!("{what} weights");
    for name in [format!("{stem}.safetensors"), format!("{stem}.fp16.safetensors")] {
        let p = dir.join(&name);
        if probe_path(&p, Kind::File, &weights, None)? {
            return Ok(vec![p]);
        }
    }
    for index in [format!("{stem}.safetensors.index.json"), format!("{stem}.safetensors.index.fp16.json")] {
        let p = dir.join(&index);
        if probe_path(&p, Kind::File, &format!("{what} weight index"), None)? {
            return shards_of(&p, dir);
        }
    }
    for other in ["bin", "ckpt", "pt", "pth"] {
        let p = dir.join(format!("{stem}.{other}"));
        if std::fs::symlink_metadata(&p).is_ok() {
            return Err(Error::unsupported(
                p,
                "only safetensors weights are loaded (pickle files can run code); convert it with \
                 diffusers' `save_pretrained(..., safe_serialization=True)`",
            ));
        }
    }
    Err(Error::NotFound { what: format!("{what} weights"), path: dir.join(format!("{stem}.safetensors")) })
}

/// The shard files of a weight index (`weight_map`: tensor name → file name in `dir`).
fn shards_of(index: &Path, dir: &Path) -> Result<Vec<PathBuf>> {
    let text = read_text(index, "weight index")?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::config(index, e.to_string()))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::config_field(index, "weight_map", "missing, or not an object of tensor name → file"))?;
    let mut files = Vec::with_capacity(map.len());
    for (tensor, v) in map {
        let name = v.as_str().ok_or_else(|| {
            Error::config_field(index, "weight_map", format!("the entry of `{tensor}` is {v}, not a file name"))
        })?;
        // A shard is a file beside the index: no folders, no absolute paths, no `..`.
        let plain = Path::new(name).file_name().is_some_and(|f| f == std::ffi::OsStr::new(name));
        if !plain || name == ".." {
            return Err(Error::config_field(
                index,
                "weight_map",
                format!("the entry of `{tensor}` is {name:?}, not the name of a file beside the index"),
            ));
        }
        files.push(name.to_string());
    }
    files.sort();
    files.dedup();
    if files.is_empty() {
        return Err(Error::config_field(index, "weight_map", "lists no files"));
    }
    let what = format!("weight shard listed in {}", index.display());
    files
        .into_iter()
        .map(|f| {
            let p = dir.join(&f);
            check_path(&p, Kind::File, &what, None)?;
            Ok(p)
        })
        .collect()
}

/// How the weight files are converted to safetensors (for [`Error::NotSafetensors`]).
const CONVERT: &str = "convert it to safetensors, for example with diffusers \
    (`DiffusionPipeline.from_pretrained(folder).save_pretrained(out, safe_serialization=True)`) or, for a bare \
    state dict, `safetensors.torch.save_file(torch.load(path, weights_only=True), out)`";

/// The largest safetensors header the `safetensors` crate accepts (100 MB).
const MAX_SAFETENSORS_HEADER: u64 = 100_000_000;

/// Checks from its first bytes that `path` (a regular file) can be safetensors, before it is
/// mapped: an [`Error::NotSafetensors`] saying what the file looks like instead (a pickle, a
/// zip archive, a Git LFS pointer, a web page, an empty or truncated file, …) and what to do.
pub fn sniff_safetensors(path: &Path) -> Result<()> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(|e| Error::io("read", path, e))?;
    let len = file.metadata().map_err(|e| Error::io("read", path, e))?.len();
    let mut buf = [0u8; 64];
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("read", path, e)),
        }
    }
    let head = &buf[..n];
    let not = |looks_like: String| Err(Error::NotSafetensors { path: path.to_path_buf(), looks_like });
    if len == 0 || head.is_empty() {
        return not("an empty file (0 bytes); download or copy it again".into());
    }
    // The safetensors layout is checked first: its 8-byte header length may begin with the bytes
    // of another format's signature (a header of 0x0280 = 640 bytes starts `80 02`, a pickle's
    // protocol-2 mark; 0x8b1f starts `1f 8b`, gzip's), and a valid file is never called a pickle.
    if let Some(first8) = head.get(..8) {
        let header = u64::from_le_bytes(first8.try_into().map_err(|_| Error::Internal("8 bytes are 8 bytes"))?);
        if header >= 2 && header <= len - 8 && head.get(8) == Some(&b'{') {
            return check_header_size(path, header);
        }
    }
    if head.len() >= 2 && head[0] == 0x80 && (2..=5).contains(&head[1]) {
        return not(format!(
            "a Python pickle (protocol {}: PyTorch's legacy `torch.save` format of .bin / .ckpt / .pt files, which \
             can run code when loaded); {CONVERT}",
            head[1]
        ));
    }
    if head.starts_with(b"PK\x03\x04") {
        return not(format!(
            "a zip archive (PyTorch's .bin / .pt / .ckpt format: pickled tensors in a zip, which can run code when \
             loaded); {CONVERT}"
        ));
    }
    if head.starts_with(b"version https://git-lfs") {
        return not(
            "a Git LFS pointer (a small text file standing in for the weights, left by a clone without git-lfs); \
             fetch the real file with `git lfs pull` or download it again"
                .into(),
        );
    }
    let magic: [(&[u8], &str); 5] = [
        (b"GGUF", "a GGUF file (llama.cpp / stable-diffusion.cpp weights)"),
        (b"\x89HDF\r\n\x1a\n", "an HDF5 file (Keras .h5 weights)"),
        (b"\x93NUMPY", "a NumPy .npy array"),
        (b"\x1f\x8b", "a gzip archive (extract it first)"),
        (b"\xfd7zXZ\x00", "an xz archive (extract it first)"),
    ];
    if let Some((_, kind)) = magic.iter().find(|(m, _)| head.starts_with(m)) {
        return not(format!("{kind}; deradiff loads safetensors in the diffusers layout: {CONVERT}"));
    }
    let text = std::str::from_utf8(head).ok().or_else(|| {
        // A multi-byte character cut at the end of the buffer is still text.
        std::str::from_utf8(&head[..head.len().saturating_sub(3)]).ok().filter(|t| !t.is_empty())
    });
    if let Some(text) = text.filter(|t| t.chars().all(|c| !c.is_control() || c.is_whitespace())) {
        let start = text.trim_start().to_ascii_lowercase();
        let first = text.trim().lines().next().unwrap_or("");
        let first: String = first.chars().take(40).collect();
        if start.starts_with("<!doctype") || start.starts_with("<html") || start.starts_with("<?xml") {
            return not(
                "a web page (HTML or XML: often the error or login page of a failed download); download the file \
                 again"
                    .into(),
            );
        }
        if start.starts_with('{') || start.starts_with('[') {
            return not(format!(
                "JSON text (it starts with `{first}`): a config or index file, not weights; give the .safetensors \
                 file"
            ));
        }
        return not(format!("a text file (it starts with `{first}`), not weights"));
    }
    let hex = head.iter().take(8).map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ");
    if len < 8 {
        return not(format!(
            "a {len}-byte file (bytes {hex}), too short for the 8-byte header length a safetensors file starts \
             with; download or copy it again"
        ));
    }
    let header = u64::from_le_bytes(head[..8].try_into().map_err(|_| Error::Internal("8 bytes are 8 bytes"))?);
    let starts_json = head.get(8) == Some(&b'{');
    if header > len - 8 {
        return not(if starts_json {
            format!(
                "a truncated safetensors file: its header alone is {header} bytes but only {} bytes follow the \
                 header length (an interrupted download?); download it again",
                len - 8
            )
        } else {
            format!(
                "no weight format this crate knows (first bytes {hex}): a safetensors file starts with the 8-byte \
                 length of its JSON header, and this file's first 8 bytes give {header}, more than the {} bytes \
                 that follow",
                len - 8
            )
        });
    }
    if header < 2 || !starts_json {
        return not(format!(
            "no weight format this crate knows (first bytes {hex}): its first 8 bytes give a header of {header} \
             bytes, but no JSON header (starting with `{{`) follows"
        ));
    }
    check_header_size(path, header)
}

/// A safetensors header of `header` bytes is at most [`MAX_SAFETENSORS_HEADER`].
fn check_header_size(path: &Path, header: u64) -> Result<()> {
    if header > MAX_SAFETENSORS_HEADER {
        return Err(Error::Weights {
            file: path.to_path_buf(),
            message: format!(
                "its safetensors header is {header} bytes, more than the {MAX_SAFETENSORS_HEADER} bytes the \
                 safetensors format allows"
            ),
        });
    }
    Ok(())
}

/// Builds a model from the safetensors weights `{stem}.safetensors` (or its `.fp16` variant, or
/// the shards of its index) in `dir`, through the checking loader: a missing or misshapen tensor
/// is an [`Error`] naming the file and the tensor. `build` gets a [`VarBuilder`] at the root of
/// the file's names converting to `dtype` on `device`; `what` names the model in errors.
///
/// For models outside this crate that follow transformers' tensor names (deradiff-tune's
/// `CLIPModel`).
pub fn load_checked<T>(
    dir: &Path,
    stem: &str,
    what: &str,
    dtype: DType,
    device: &Device,
    build: impl FnOnce(VarBuilder<'static>) -> candle_core::Result<T>,
) -> Result<T> {
    let files = find_weight_files(dir, stem, what)?;
    CheckedWeights::open(&files)?.build(dtype, device, None, build)
}

/// [`load_checked`] for one safetensors file named by its path (a reward's checkpoint, say):
/// a path that is not a file, a file that is not safetensors, or a missing or misshapen tensor is
/// an [`Error`] naming the file (and the tensor).
pub fn load_checked_file<T>(
    file: &Path,
    what: &str,
    dtype: DType,
    device: &Device,
    build: impl FnOnce(VarBuilder<'static>) -> candle_core::Result<T>,
) -> Result<T> {
    check_path(file, Kind::File, what, None)?;
    CheckedWeights::open(&[file.to_path_buf()])?.build(dtype, device, None, build)
}

/// Every tensor of the safetensors `file` (`what` names it), on the CPU in its stored dtype, for
/// loaders that remap names before building a model (open_clip checkpoints): a path that is not a
/// file, a file that is not safetensors, a tensor that is not a float, holds a NaN or an
/// infinity, or has a value that the conversion to `dtype` makes infinite, is an [`Error`]
/// naming the file (and the tensor).
pub fn load_tensors_checked(file: &Path, what: &str, dtype: DType) -> Result<HashMap<String, Tensor>> {
    check_path(file, Kind::File, what, None)?;
    sniff_safetensors(file)?;
    // SAFETY: the file is mapped read-only; as everywhere with mmap, it must not be truncated by
    // another process while it is read (the tensors are copied out before this returns).
    let st = unsafe { MmapedSafetensors::new(file) }.map_err(|e| open_error(file, e))?;
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        let stored = view.dtype();
        if !DType::try_from(stored).is_ok_and(|d| d.is_float()) {
            return Err(Error::TensorDType { file: file.to_path_buf(), tensor: name, dtype: format!("{stored:?}") });
        }
        if let Some(bad) = check_values(stored, view.data(), dtype) {
            let problem = bad.describe(view.shape().iter().product());
            return Err(Error::NonFiniteTensor { file: file.to_path_buf(), tensor: name, problem });
        }
        let t = st.load(&name, &Device::Cpu).map_err(|e| open_error(file, e))?;
        out.insert(name, t);
    }
    Ok(out)
}

/// An error opening a weight file: a failure to read it is an [`Error::Io`], anything else (not
/// safetensors, a corrupt header) an [`Error::Weights`].
fn open_error(file: &Path, mut e: candle_core::Error) -> Error {
    loop {
        e = match e {
            candle_core::Error::WithPath { inner, .. } | candle_core::Error::WithBacktrace { inner, .. } => *inner,
            candle_core::Error::Io(io) => return Error::io("read", file, io),
            other => {
                // The safetensors crate's message may name no tensor: find the entry at fault.
                let message = match header_problem(file) {
                    Some(problem) => format!("{other}: {problem}"),
                    None => other.to_string(),
                };
                return Error::Weights { file: file.to_path_buf(), message };
            }
        }
    }
}

/// What went wrong while a model pulled its tensors (reported after candle gives up).
#[derive(Debug, Clone)]
enum Failure {
    Missing {
        tensor: String,
        /// What the renaming backend of a single-file checkpoint adds (the diffusers name).
        hint: Option<String>,
    },
    Shape {
        tensor: String,
        expected: Shape,
        got: Shape,
    },
    /// A stored dtype that is not a float (as the safetensors header names it).
    DType {
        tensor: String,
        dtype: String,
    },
    /// A NaN or infinite value, or one the conversion to the model's dtype makes infinite.
    NonFinite {
        tensor: String,
        problem: String,
    },
}

/// Which part of a stored tensor a model takes (single-file checkpoints store some of diffusers'
/// tensors fused, as convolutions, or transposed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Part {
    /// The tensor as stored.
    Whole,
    /// Rows `start..start + len` of its first dimension (one of open_clip's fused q, k, v).
    Rows { start: usize, len: usize },
    /// Its trailing unit dimensions dropped (a 1×1 convolution read as a linear layer).
    Squeeze,
    /// The transpose of a matrix (open_clip's `text_projection`, applied as `x @ P`).
    Transpose,
}

impl Part {
    /// The shape of this part of a stored tensor of shape `stored`.
    pub(crate) fn shape(self, stored: &[usize]) -> Vec<usize> {
        match self {
            Part::Whole => stored.to_vec(),
            Part::Rows { len, .. } => {
                let mut s = stored.to_vec();
                if let Some(first) = s.first_mut() {
                    *first = len;
                }
                s
            }
            Part::Squeeze => {
                let mut s = stored.to_vec();
                while s.len() > 2 && s.last() == Some(&1) {
                    s.pop();
                }
                s
            }
            Part::Transpose => stored.iter().rev().copied().collect(),
        }
    }
}

/// Memory-mapped safetensors that check every requested tensor's name, shape and dtype before
/// loading it, remember what went wrong, and record which tensors were used (with their shapes).
pub(crate) struct CheckedWeights {
    files: Vec<PathBuf>,
    st: MmapedSafetensors,
    /// Tensor name → index into `files`.
    location: HashMap<String, usize>,
    failure: Mutex<Option<Failure>>,
    /// A failure no later success makes good (a non-finite value): reported even when the model
    /// built, since a builder that recovers from a failed tensor could otherwise hide it.
    fatal: Mutex<Option<Failure>>,
    used: Mutex<HashMap<String, Shape>>,
}

impl std::fmt::Debug for CheckedWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckedWeights").field("files", &self.files).finish_non_exhaustive()
    }
}

impl CheckedWeights {
    /// Opens (memory-maps) the files; a file that is not valid safetensors is an error naming it.
    pub(crate) fn open(files: &[PathBuf]) -> Result<Arc<Self>> {
        if files.is_empty() {
            return Err(Error::Internal("CheckedWeights::open was given no weight files"));
        }
        let mut location = HashMap::new();
        for (i, f) in files.iter().enumerate() {
            check_path(f, Kind::File, "weight file", None)?;
            sniff_safetensors(f)?;
            // SAFETY: the file is mapped read-only; as everywhere with mmap, it must not be
            // truncated by another process while it is in use.
            let one = unsafe { MmapedSafetensors::new(f) }.map_err(|e| open_error(f, e))?;
            for (name, _) in one.tensors() {
                location.insert(name, i);
            }
        }
        // SAFETY: as above.
        let st = unsafe { MmapedSafetensors::multi(files) }.map_err(|e| open_error(&files[0], e))?;
        Ok(Arc::new(Self {
            files: files.to_vec(),
            st,
            location,
            failure: Mutex::new(None),
            fatal: Mutex::new(None),
            used: Mutex::new(HashMap::new()),
        }))
    }

    /// The first file (what error messages name for a tensor that is nowhere).
    pub(crate) fn primary(&self) -> &Path {
        &self.files[0]
    }

    /// The file that holds `tensor` (the first file if none does).
    fn file_of(&self, tensor: &str) -> PathBuf {
        self.location.get(tensor).map(|&i| self.files[i].clone()).unwrap_or_else(|| self.files[0].clone())
    }

    /// Whether the files hold a tensor of this name.
    pub(crate) fn contains(&self, name: &str) -> bool {
        self.location.contains_key(name)
    }

    /// Names of all tensors in the files.
    pub(crate) fn names(&self) -> impl Iterator<Item = &str> {
        self.location.keys().map(String::as_str)
    }

    /// The tensors a model has taken so far, with their shapes.
    pub(crate) fn used(&self) -> HashMap<String, Shape> {
        self.used.lock().map(|u| u.clone()).unwrap_or_default()
    }

    /// A `VarBuilder` over these weights, converting to `dtype` on `device`.
    pub(crate) fn var_builder(self: &Arc<Self>, dtype: DType, device: &Device) -> VarBuilder<'static> {
        renamed::backend(self, None, dtype, device).0
    }

    /// Builds a model with `build`; if candle fails, reports the last tensor problem seen (with
    /// file and tensor names) instead of candle's error, when there was one.
    pub(crate) fn build<T>(
        self: &Arc<Self>,
        dtype: DType,
        device: &Device,
        prefix: Option<&str>,
        build: impl FnOnce(VarBuilder<'static>) -> candle_core::Result<T>,
    ) -> Result<T> {
        self.build_with(self.var_builder(dtype, device), prefix, build)
    }

    /// [`Self::build`] over the given `VarBuilder` (of this backend or one wrapping it).
    fn build_with<T>(
        self: &Arc<Self>,
        vb: VarBuilder<'static>,
        prefix: Option<&str>,
        build: impl FnOnce(VarBuilder<'static>) -> candle_core::Result<T>,
    ) -> Result<T> {
        if let Ok(mut f) = self.failure.lock() {
            *f = None;
        }
        let vb = match prefix {
            Some(p) => vb.pp(p),
            None => vb,
        };
        let built = build(vb);
        if let Some(f) = self.fatal.lock().ok().and_then(|mut f| f.take()) {
            return Err(self.describe(f));
        }
        match built {
            Ok(model) => Ok(model),
            Err(err) => {
                let failure = self.failure.lock().ok().and_then(|mut f| f.take());
                Err(match failure {
                    Some(f) => self.describe(f),
                    None => Error::Weights { file: self.primary().to_path_buf(), message: err.to_string() },
                })
            }
        }
    }

    fn describe(&self, failure: Failure) -> Error {
        match failure {
            Failure::Missing { tensor, hint } => {
                let hint = hint.unwrap_or_else(|| self.hint_for_missing(&tensor));
                Error::MissingTensor { file: self.primary().to_path_buf(), tensor, hint }
            }
            Failure::Shape { tensor, expected, got } => {
                Error::TensorShape { file: self.file_of(&tensor), tensor, expected, got }
            }
            Failure::DType { tensor, dtype } => Error::TensorDType { file: self.file_of(&tensor), tensor, dtype },
            Failure::NonFinite { tensor, problem } => {
                Error::NonFiniteTensor { file: self.file_of(&tensor), tensor, problem }
            }
        }
    }

    /// Explains a missing tensor when the file's names look like another layout.
    fn hint_for_missing(&self, tensor: &str) -> String {
        if self.names().any(|n| n.starts_with("model.diffusion_model.") || n.starts_with("first_stage_model.")) {
            return "; this is an original-layout (CompVis LDM / SGM) single-file checkpoint: give the file itself as the \
                    reference or aligned model, which loads it whole, not as one component's weights"
                .into();
        }
        let mut with_prefix: Vec<&str> = self.names().filter(|n| n.ends_with(&format!(".{tensor}"))).collect();
        with_prefix.sort();
        if let Some(n) = with_prefix.first() {
            let prefix = &n[..n.len() - tensor.len()];
            return format!("; the file has `{n}`: its tensor names carry the prefix `{prefix}`, strip it");
        }
        let total = self.location.len();
        format!(" (the file holds {total} tensors; is it the right component, and does its config match?)")
    }

    fn record(&self, failure: Failure) {
        if let Ok(mut f) = self.failure.lock() {
            *f = Some(failure);
        }
    }

    fn load_checked(
        &self,
        name: &str,
        expected: Option<&Shape>,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.load_part(name, Part::Whole, expected, dtype, dev)
    }

    /// The shape of the stored tensor `name`, if the files hold it.
    pub(crate) fn shape_of(&self, name: &str) -> Option<Vec<usize>> {
        self.st.get(name).ok().map(|v| v.shape().to_vec())
    }

    /// Records that the model asked for `shown` (a diffusers name) and the files have no tensor
    /// for it; `original` is the stored name looked for, if there is one.
    pub(crate) fn record_missing(&self, original: &str, hint: String) {
        self.record(Failure::Missing { tensor: original.to_string(), hint: Some(hint) });
    }

    /// [`Self::load_checked`] of `part` of the stored tensor `name` (the whole of it, rows of its
    /// first dimension taken from the mapped bytes without reading the rest, its trailing unit
    /// dimensions dropped, or its transpose): the checks are those of the stored tensor, the
    /// shape compared is the part's.
    pub(crate) fn load_part(
        &self,
        name: &str,
        part: Part,
        expected: Option<&Shape>,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let view = match self.st.get(name) {
            Ok(v) => v,
            Err(_) => {
                self.record(Failure::Missing { tensor: name.to_string(), hint: None });
                return Err(candle_core::Error::CannotFindTensor { path: name.to_string() });
            }
        };
        let got = Shape::from(part.shape(view.shape()));
        if let Some(expected) = expected {
            if &got != expected {
                self.record(Failure::Shape { tensor: name.to_string(), expected: expected.clone(), got: got.clone() });
                return Err(candle_core::Error::UnexpectedShape {
                    msg: format!("shape mismatch for {name}"),
                    expected: expected.clone(),
                    got,
                });
            }
        }
        // The error returned to candle is structured but never shown: `build` reports the
        // recorded failure (file, tensor, stored dtype) instead.
        let stored = view.dtype();
        match DType::try_from(stored) {
            Ok(d) if d.is_float() => {}
            Ok(d) => {
                self.record(Failure::DType { tensor: name.to_string(), dtype: format!("{stored:?}") });
                return Err(candle_core::Error::UnexpectedDType {
                    msg: "weights must be floating point",
                    expected: dtype,
                    got: d,
                });
            }
            Err(e) => {
                self.record(Failure::DType { tensor: name.to_string(), dtype: format!("{stored:?}") });
                return Err(e);
            }
        }
        if let Some(bad) = check_values(stored, view.data(), dtype) {
            let problem = bad.describe(got.elem_count());
            if let Ok(mut f) = self.fatal.lock() {
                f.get_or_insert(Failure::NonFinite { tensor: name.to_string(), problem: problem.clone() });
            }
            return Err(candle_core::Error::Msg(format!("tensor {name} {problem}")));
        }
        let t = match part {
            Part::Whole => self.st.load(name, dev)?,
            Part::Rows { start, len } => {
                let dims = view.shape();
                let row = dims[1..].iter().product::<usize>() * (view.dtype().bitsize() / 8);
                let bytes = view.data().get(start * row..(start + len) * row).ok_or_else(|| {
                    candle_core::Error::Msg(format!("rows {start}..{} of {name} are outside it", start + len))
                })?;
                let mut shape = dims.to_vec();
                shape[0] = len;
                let rows = safetensors::tensor::TensorView::new(view.dtype(), shape, bytes)
                    .map_err(|e| candle_core::Error::Msg(format!("rows of {name}: {e}")))?;
                candle_core::safetensors::Load::load(&rows, dev)?
            }
            Part::Squeeze => self.st.load(name, dev)?.reshape(got.clone())?,
            Part::Transpose => self.st.load(name, dev)?.t()?.contiguous()?,
        }
        .to_dtype(dtype)?;
        if let Ok(mut u) = self.used.lock() {
            u.insert(name.to_string(), Shape::from(view.shape().to_vec()));
        }
        // A failed probe that candle recovered from (e.g. a second shape tried) is forgotten.
        if let Ok(mut f) = self.failure.lock() {
            *f = None;
        }
        Ok(t)
    }
}

/// Names in `a` that `b` lacks or has with another shape (first few), for comparing the
/// architectures of two loaded models.
pub(crate) fn shape_differences(a: &HashMap<String, Shape>, b: &HashMap<String, Shape>) -> Vec<String> {
    let mut names: Vec<&String> = a.keys().chain(b.keys()).collect::<HashSet<_>>().into_iter().collect();
    names.sort();
    let mut out = Vec::new();
    for n in names {
        match (a.get(n), b.get(n)) {
            (Some(x), Some(y)) if x != y => out.push(format!("`{n}`: {x:?} vs {y:?}")),
            (Some(_), None) => out.push(format!("`{n}` only in the first")),
            (None, Some(_)) => out.push(format!("`{n}` only in the second")),
            _ => {}
        }
    }
    out
}
