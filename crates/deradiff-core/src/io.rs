//! Atomic file writes, shared by every crate that writes results or images: a temporary file
//! beside the target, then a rename, so a reader never sees a half-written CSV, JSON or PNG.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` atomically: into `.<name>.<pid>.tmp` in the same directory (created
/// if missing), flushed to disk, then renamed over `path`. On failure the temporary file is
/// removed and `path` is left as it was.
///
/// What `path` may be:
/// * missing, or a regular file (replaced);
/// * a symbolic link to a regular file or to nothing yet: the link is kept and its target is
///   written (atomically, beside the target), as `std::fs::write` would write through it;
/// * anything else — a directory, a device such as `/dev/null`, a FIFO, a socket, a link loop —
///   is refused with `InvalidInput` naming what it is, and nothing is written.
///
/// A path that names no file is `InvalidInput`. Temporary files of this function left by
/// processes that no longer run (a kill during the final rename) are removed on the next write of
/// the same file (on systems with `/proc`).
pub fn write_atomic(path: impl AsRef<Path>, bytes: &[u8]) -> std::io::Result<()> {
    let target = resolve_target(path.as_ref())?;
    let path = target.as_path();
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{} does not name a file", path.display()))
    })?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir)?;
    remove_stale_temporaries(&dir, &name.to_string_lossy());
    let tmp = dir.join(format!(".{}.{}.tmp", name.to_string_lossy(), std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The file to write for `path`: `path` itself, or the target of a symbolic link; an error for
/// anything that is not a regular file.
fn resolve_target(path: &Path) -> std::io::Result<PathBuf> {
    let invalid = |what: &str| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} is {what}, not a regular file: choose a file path to write to", path.display()),
        )
    };
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(path.to_path_buf()),
        Err(e) => return Err(e),
    };
    let ft = meta.file_type();
    if ft.is_file() {
        return Ok(path.to_path_buf());
    }
    if ft.is_symlink() {
        // Follow the chain (a loop is an error of the OS, reported as such).
        return match std::fs::metadata(path) {
            Ok(m) if m.is_file() => std::fs::canonicalize(path),
            Ok(m) if m.is_dir() => Err(invalid("a link to a directory")),
            Ok(_) => Err(invalid("a link to a device, FIFO or socket")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // A dangling link: create its target.
                let link = std::fs::read_link(path)?;
                let base = path.parent().unwrap_or(Path::new("."));
                Ok(if link.is_absolute() { link } else { base.join(link) })
            }
            Err(e) => Err(std::io::Error::new(
                e.kind(),
                format!("{} is a symbolic link that cannot be followed ({e})", path.display()),
            )),
        };
    }
    if ft.is_dir() {
        return Err(invalid("a directory"));
    }
    Err(invalid("a device, FIFO or socket"))
}

/// Removes `.<name>.<pid>.tmp` files in `dir` whose process is gone (Linux: no `/proc/<pid>`).
fn remove_stale_temporaries(dir: &Path, name: &str) {
    let proc_fs = Path::new("/proc/self");
    if !proc_fs.exists() {
        return;
    }
    let prefix = format!(".{name}.");
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let file = entry.file_name();
        let Some(file) = file.to_str() else { continue };
        let Some(pid) = file.strip_prefix(&prefix).and_then(|rest| rest.strip_suffix(".tmp")) else { continue };
        let Ok(pid) = pid.parse::<u32>() else { continue };
        if pid != std::process::id() && !Path::new("/proc").join(pid.to_string()).exists() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Encodes an 8-bit RGB buffer (`width × height × 3` bytes, rows top to bottom) as PNG: the one
/// PNG encoder of the workspace (images, grids and figures). A buffer of the wrong length is
/// `InvalidInput`.
pub fn encode_png_rgb8(rgb: &[u8], width: u32, height: u32) -> std::io::Result<Vec<u8>> {
    let expected = (width as u64).checked_mul(height as u64).and_then(|n| n.checked_mul(3));
    if expected != Some(rgb.len() as u64) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("an RGB image of {width}x{height} needs {width}·{height}·3 bytes, got {}", rgb.len()),
        ));
    }
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, width, height);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().map_err(std::io::Error::other)?;
        writer.write_image_data(rgb).map_err(std::io::Error::other)?;
        writer.finish().map_err(std::io::Error::other)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_and_replaces_without_leftovers() {
        let dir = std::env::temp_dir().join(format!("deradiff-io-{}", std::process::id()));
        let path = dir.join("sub").join("a.txt");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.join("sub")).unwrap().count(), 1);
        // Renaming over a directory fails; the directory and its content are untouched.
        assert!(write_atomic(dir.join("sub"), b"x").is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(write_atomic(Path::new("/"), b"x").unwrap_err().kind(), std::io::ErrorKind::InvalidInput);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn refuses_what_is_not_a_regular_file_and_writes_through_links() {
        let dir = std::env::temp_dir().join(format!("deradiff-io-kinds-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // A device is refused and untouched.
        if Path::new("/dev/null").exists() {
            let err = write_atomic("/dev/null", b"x").unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
            assert!(err.to_string().contains("device"), "{err}");
        }
        // A link to a file: the link stays, its target gets the bytes.
        let target = dir.join("target.txt");
        std::fs::write(&target, b"old").unwrap();
        #[cfg(unix)]
        {
            let link = dir.join("link.txt");
            std::os::unix::fs::symlink(&target, &link).unwrap();
            write_atomic(&link, b"new").unwrap();
            assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
            assert_eq!(std::fs::read(&target).unwrap(), b"new");
            // A link loop is an error.
            let (a, b) = (dir.join("a"), dir.join("b"));
            std::os::unix::fs::symlink(&b, &a).unwrap();
            std::os::unix::fs::symlink(&a, &b).unwrap();
            assert!(write_atomic(&a, b"x").is_err());
        }
        // A stale temporary of a process that is gone is removed by the next write.
        let stale = dir.join(".target.txt.4294967295.tmp");
        std::fs::write(&stale, b"half").unwrap();
        write_atomic(&target, b"again").unwrap();
        if Path::new("/proc/self").exists() {
            assert!(!stale.exists());
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn png_round_trips_and_checks_the_length() {
        let rgb: Vec<u8> = (0..2 * 3 * 3).map(|i| (i * 13) as u8).collect();
        let png = encode_png_rgb8(&rgb, 3, 2).unwrap();
        let mut reader = png::Decoder::new(std::io::Cursor::new(png)).read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (3, 2));
        assert_eq!(&buf[..info.buffer_size()], &rgb[..]);
        assert_eq!(encode_png_rgb8(&rgb, 4, 2).unwrap_err().kind(), std::io::ErrorKind::InvalidInput);
    }
}
