//! Atomic file writes, shared by every crate that writes results or images: a temporary file
//! beside the target, then a rename, so a reader never sees a half-written CSV, JSON or PNG.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` atomically: into `.<name>.<pid>.tmp` in the same directory (created
/// if missing), flushed to disk, then renamed over `path`. On failure the temporary file is
/// removed and `path` is left as it was. A path that names no file is `InvalidInput`.
pub fn write_atomic(path: impl AsRef<Path>, bytes: &[u8]) -> std::io::Result<()> {
    let path = path.as_ref();
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{} does not name a file", path.display()))
    })?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir)?;
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
