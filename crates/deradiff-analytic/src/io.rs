//! Atomic file writes: a temporary file beside the target, then a rename, so a reader never sees
//! a half-written CSV, JSON or PNG.

use std::path::Path;

use crate::error::{Error, Result};

/// Writes `bytes` to `path` atomically: into `.<name>.<pid>.tmp` in the same directory (created
/// if missing), flushed to disk, then renamed over `path`. On failure the temporary file is
/// removed and `path` is left as it was.
pub fn write_atomic(path: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
    let path = path.as_ref();
    deradiff_core::io::write_atomic(path, bytes).map_err(|source| match source.kind() {
        std::io::ErrorKind::InvalidInput => Error::InvalidArgument(format!("{} does not name a file", path.display())),
        _ => Error::Io { path: path.to_path_buf(), source },
    })
}
