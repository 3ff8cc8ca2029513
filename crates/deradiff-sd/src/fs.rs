//! The crate's filesystem layer: what is at a path (symbolic links followed, without opening
//! it), and reading the text and JSON files of a checkpoint (configs, tokenizers, weight indexes)
//! with their kind and size checked first. Every error names the path and what it should be.
//!
//! Public because the reward models built on this crate read their checkpoints the same way.

use std::path::{Path, PathBuf};

use deradiff_core::io::{path_kind, PathKind};
use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};

/// Reads and parses a config file (`what` names it in errors): see [`read_text`] and
/// [`parse_json`].
pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path, what: &str) -> Result<T> {
    let text = read_text(path, what)?;
    parse_json(&text, path)
}

/// The largest text file (config, tokenizer, weight index) this crate reads: 64 MiB. Real ones
/// are at most a few MiB (a CLIP `tokenizer.json` is about 2 MiB); a larger file is refused
/// before it is read rather than exhausting memory.
pub const MAX_TEXT_FILE_BYTES: u64 = 64 << 20;

/// What a path is expected to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A regular file (or a symbolic link to one).
    File,
    /// A directory (or a symbolic link to one).
    Dir,
}

impl Kind {
    fn expected(self) -> &'static str {
        match self {
            Kind::File => "a file",
            Kind::Dir => "a folder",
        }
    }
}

/// What is at `path`, following symbolic links, without opening it (so a FIFO does not block):
/// deradiff-core's [`path_kind`]. An [`Error::Io`] when the path cannot be inspected (no
/// permission on a folder on the way).
fn inspect(path: &Path) -> Result<PathKind> {
    path_kind(path).map_err(|e| Error::io("inspect", path, e))
}

/// Whether `path` is of kind `kind` (symbolic links followed): `Ok(true)` if so, `Ok(false)` when
/// nothing is there (for optional files), an [`Error::WrongKind`] naming what is there otherwise
/// (`what` names the path, `expected` what it should be; `None`: "a file" / "a folder"), an
/// [`Error::Io`] when it cannot be inspected.
pub fn probe_path(path: &Path, kind: Kind, what: &str, expected: Option<&str>) -> Result<bool> {
    let found = match (inspect(path)?, kind) {
        (PathKind::Missing, _) => return Ok(false),
        (PathKind::File, Kind::File) | (PathKind::Dir, Kind::Dir) => return Ok(true),
        (PathKind::File, Kind::Dir) => "a file".to_string(),
        (PathKind::Dir, Kind::File) => "a folder".to_string(),
        (PathKind::Other(s), _) => s,
    };
    Err(Error::WrongKind {
        what: what.to_string(),
        path: path.to_path_buf(),
        found,
        expected: expected.unwrap_or(kind.expected()).to_string(),
    })
}

/// Whether `path` is a file or a folder (symbolic links followed): `Ok(None)` when nothing is
/// there, an [`Error::WrongKind`] (`what` names the path, `expected` what it should be) when it is
/// something else (a FIFO, a device, a dangling link, a link loop, …).
pub fn probe_any(path: &Path, what: &str, expected: &str) -> Result<Option<Kind>> {
    match inspect(path)? {
        PathKind::Missing => Ok(None),
        PathKind::File => Ok(Some(Kind::File)),
        PathKind::Dir => Ok(Some(Kind::Dir)),
        PathKind::Other(found) => Err(Error::WrongKind {
            what: what.to_string(),
            path: path.to_path_buf(),
            found,
            expected: expected.to_string(),
        }),
    }
}

/// Checks that `path` is of kind `kind` (symbolic links followed): an [`Error::NotFound`] when
/// nothing is there, an [`Error::WrongKind`] naming what is there when it is something else (see
/// [`probe_path`]).
pub fn check_path(path: &Path, kind: Kind, what: &str, expected: Option<&str>) -> Result<()> {
    if probe_path(path, kind, what, expected)? {
        Ok(())
    } else {
        Err(Error::NotFound { what: what.to_string(), path: path.to_path_buf() })
    }
}

/// Reads a whole UTF-8 text file (a config, tokenizer or weight index; `what` names it in
/// errors), after checking that it is a file ([`check_path`]) of at most
/// [`MAX_TEXT_FILE_BYTES`]. Text that is not UTF-8 is an [`Error::Config`].
pub fn read_text(path: &Path, what: &str) -> Result<String> {
    use std::io::Read;
    check_path(path, Kind::File, what, None)?;
    let file = std::fs::File::open(path).map_err(|e| Error::io("read", path, e))?;
    let len = file.metadata().map_err(|e| Error::io("read", path, e))?.len();
    let too_large = |n: u64| {
        Error::config(
            path,
            format!(
                "the {what} is {n} bytes; this crate reads text files of at most {} MiB (is it the right file?)",
                MAX_TEXT_FILE_BYTES >> 20
            ),
        )
    };
    if len > MAX_TEXT_FILE_BYTES {
        return Err(too_large(len));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    // `take`: the file may grow while it is read.
    file.take(MAX_TEXT_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(|e| Error::io("read", path, e))?;
    if bytes.len() as u64 > MAX_TEXT_FILE_BYTES {
        return Err(too_large(bytes.len() as u64));
    }
    String::from_utf8(bytes).map_err(|e| {
        Error::config(
            path,
            format!(
                "the {what} is not UTF-8 text (invalid byte at offset {}): is it the right file?",
                e.utf8_error().valid_up_to()
            ),
        )
    })
}

/// Parses a config document (`path` names it in errors): text that is not JSON, or JSON that is
/// not an object of the config's shape, is an [`Error::Config`]; a field whose value has the
/// wrong type is an [`Error::ConfigField`] naming the field.
pub fn parse_json<T: for<'de> Deserialize<'de>>(text: &str, path: &Path) -> Result<T> {
    let value: Value = serde_json::from_str(text).map_err(|e| Error::config(path, e.to_string()))?;
    let whole = match T::deserialize(&value) {
        Ok(config) => return Ok(config),
        Err(e) => e,
    };
    // Every field has a default, so each field alone deserializes unless its own value is bad.
    if let Value::Object(fields) = &value {
        for (field, v) in fields {
            let alone = Value::Object(std::iter::once((field.clone(), v.clone())).collect());
            if let Err(e) = T::deserialize(&alone) {
                return Err(Error::config_field(path, field, e.to_string()));
            }
        }
    }
    Err(Error::config(path, whole.to_string()))
}

/// The config file beside weights: `dir/config.json`.
pub fn config_path(dir: &Path) -> PathBuf {
    dir.join("config.json")
}
