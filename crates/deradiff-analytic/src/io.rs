//! Atomic file writes (through the workspace's one writer, `deradiff_core::io::write_atomic`): a temporary file beside the target, then a rename, so a reader never sees
//! a half-written CSV, JSON or PNG.

use std::path::Path;

use crate::error::{Error, Result};

/// Writes `bytes` to `path` atomically: into `.<name>.<pid>.tmp` in the same directory (created
/// if missing), flushed to disk, then renamed over `path`. On failure the temporary file is
/// removed and `path` is left as it was. [`deradiff_core::io::write_atomic`] with this crate's
/// errors.
pub fn write_atomic(path: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
    let path = path.as_ref();
    deradiff_core::io::write_atomic(path, bytes).map_err(|source| match source.kind() {
        std::io::ErrorKind::InvalidInput => Error::InvalidArgument(source.to_string()),
        _ => Error::Io { path: path.to_path_buf(), source },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_the_path() {
        let dir = std::env::temp_dir().join(format!("atomic-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let file = dir.join("nested").join("a.txt");
        write_atomic(&file, b"one").unwrap();
        write_atomic(&file, b"two").unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "two");
        // A directory in the way: an error naming the path, and the directory is untouched.
        let blocked = dir.join("nested");
        let err = write_atomic(&blocked, b"x").unwrap_err().to_string();
        assert!(err.contains("nested"), "{err}");
        assert!(blocked.is_dir());
        let leftovers = std::fs::read_dir(&dir)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "tmp"))
            .count();
        assert_eq!(leftovers, 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
