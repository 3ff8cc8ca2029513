//! Files, shared by every crate that reads user files or writes results and images.
//!
//! * Writing: [`write_atomic`] (a temporary file beside the target, then a rename, so a reader
//!   never sees a half-written CSV, JSON or PNG) and [`encode_png_rgb8`].
//! * Reading what a user names: [`path_kind`] says what is at a path without opening it (a FIFO
//!   or a device is never opened, so nothing blocks on one), [`read_regular_file`] reads a regular
//!   file of bounded size and refuses anything else, and [`same_file`] tells whether two paths
//!   are one file (links followed, device and inode compared), so that no output replaces an
//!   input.

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
        // Follow the chain; a loop is named as one.
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
            Err(e) if is_link_loop(&e) => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "{} is a symbolic link loop (too many levels of links): choose a file path to write to",
                    path.display()
                ),
            )),
            Err(e) => Err(std::io::Error::new(
                e.kind(),
                format!("{} is a symbolic link that cannot be followed ({e})", path.display()),
            )),
        };
    }
    if ft.is_dir() {
        return Err(invalid("a directory"));
    }
    Err(invalid(&describe_special(&ft)))
}

/// What is at a path, symbolic links followed (see [`path_kind`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathKind {
    /// Nothing: the path does not exist.
    Missing,
    /// A regular file, or a symbolic link to one.
    File,
    /// A directory, or a symbolic link to one.
    Dir,
    /// Anything else, in words: "a FIFO (named pipe)", "a socket", "a character device", "a
    /// block device", "a symbolic link loop", "a dangling symbolic link (to …)", "unreachable: …
    /// is a file, not a folder".
    Other(String),
}

impl PathKind {
    /// What it is, in words ("nothing", "a file", "a folder", or the words of [`PathKind::Other`]).
    pub fn describe(&self) -> &str {
        match self {
            PathKind::Missing => "nothing (it does not exist)",
            PathKind::File => "a file",
            PathKind::Dir => "a folder",
            PathKind::Other(s) => s,
        }
    }
}

/// `ELOOP`: too many levels of symbolic links (not an `io::ErrorKind` on stable Rust).
fn is_link_loop(e: &std::io::Error) -> bool {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    const ELOOP: i32 = 40;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    const ELOOP: i32 = 62;
    e.raw_os_error() == Some(ELOOP)
}

/// A file type that is neither a file, a folder nor a link, in words.
fn describe_special(ft: &std::fs::FileType) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if ft.is_fifo() {
            return "a FIFO (named pipe)".into();
        }
        if ft.is_socket() {
            return "a socket".into();
        }
        if ft.is_block_device() {
            return "a block device".into();
        }
        if ft.is_char_device() {
            return "a character device".into();
        }
    }
    let _ = ft;
    "neither a file nor a folder".into()
}

/// What is at `path`, symbolic links followed, found without opening it (so that a FIFO never
/// blocks and a device is never touched). An error only when the path cannot be inspected at all
/// (no permission on a folder on the way).
pub fn path_kind(path: &Path) -> std::io::Result<PathKind> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(PathKind::Missing),
        Err(e) if is_link_loop(&e) => return Ok(PathKind::Other("a path through a symbolic link loop".into())),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
            // The nearest ancestor that exists but is not a folder.
            let blocking = path.ancestors().skip(1).find_map(|a| match std::fs::metadata(a) {
                Ok(m) if m.is_dir() => None,
                Ok(m) if m.is_file() => Some((a, "a file".to_string())),
                Ok(m) => Some((a, describe_special(&m.file_type()))),
                Err(_) => None,
            });
            return Ok(PathKind::Other(match blocking {
                Some((a, what)) => format!("unreachable: {} is {what}, not a folder", a.display()),
                None => "unreachable: a folder on its way is not a folder".into(),
            }));
        }
        Err(e) => return Err(e),
    };
    let ft = meta.file_type();
    if ft.is_file() {
        return Ok(PathKind::File);
    }
    if ft.is_dir() {
        return Ok(PathKind::Dir);
    }
    if !ft.is_symlink() {
        return Ok(PathKind::Other(describe_special(&ft)));
    }
    let target = std::fs::read_link(path).map(|t| t.display().to_string()).unwrap_or_else(|_| "?".into());
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(PathKind::File),
        Ok(m) if m.is_dir() => Ok(PathKind::Dir),
        Ok(m) => Ok(PathKind::Other(format!("a symbolic link to {}", describe_special(&m.file_type())))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Ok(PathKind::Other(format!("a dangling symbolic link (its target {target} does not exist)")))
        }
        Err(e) if is_link_loop(&e) => Ok(PathKind::Other(format!("a symbolic link loop (it points to {target})"))),
        Err(e) => Err(e),
    }
}

/// Reads the whole of `path`, which must be a regular file (or a link to one) of at most
/// `max_bytes` bytes.
///
/// Anything else is refused before it is opened — a FIFO, a socket or a device (so the read
/// never blocks), a folder, a link loop — with `InvalidInput` naming what it is; the file is
/// opened without blocking (`O_NONBLOCK` on Unix) and checked again once open (it may have been
/// swapped). A larger file, or one that grows past `max_bytes` while it is read, is
/// `FileTooLarge` naming its size and the limit; missing is `NotFound`.
pub fn read_regular_file(path: &Path, max_bytes: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let not_regular = |what: &str| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} is {what}, not a regular file", path.display()),
        )
    };
    match path_kind(path)? {
        PathKind::File => {}
        PathKind::Missing => {
            return Err(std::io::Error::new(std::io::ErrorKind::NotFound, format!("{} does not exist", path.display())))
        }
        other => return Err(not_regular(other.describe())),
    }
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY);
    }
    let file = options.open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(not_regular(&describe_special(&meta.file_type())));
    }
    let too_large = |n: u64| {
        std::io::Error::new(
            std::io::ErrorKind::FileTooLarge,
            format!("{} is {n} bytes, more than the {max_bytes} bytes read at most", path.display()),
        )
    };
    if meta.len() > max_bytes {
        return Err(too_large(meta.len()));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // `take`: the file may grow while it is read.
    file.take(max_bytes.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max_bytes {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

/// Whether `a` and `b` are one existing file, however spelled: symbolic links followed, then
/// the device and inode compared on Unix (so hard links and `./` spellings are one file), the
/// canonical paths elsewhere. `false` when either cannot be inspected (it does not exist yet).
pub fn same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (std::fs::metadata(a), std::fs::metadata(b)) {
            (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
            (Ok(x), Ok(y)) => x == y,
            _ => false,
        }
    }
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
    fn reads_only_regular_files_of_bounded_size_and_never_blocks() {
        let dir = std::env::temp_dir().join(format!("deradiff-io-read-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("a.txt");
        std::fs::write(&file, b"12345").unwrap();
        assert_eq!(read_regular_file(&file, 5).unwrap(), b"12345");
        let e = read_regular_file(&file, 4).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::FileTooLarge);
        assert!(e.to_string().contains("5 bytes") && e.to_string().contains("4 bytes"), "{e}");
        assert_eq!(read_regular_file(&dir.join("nope"), 9).unwrap_err().kind(), std::io::ErrorKind::NotFound);
        let e = read_regular_file(&dir, 9).unwrap_err();
        assert!(e.to_string().contains("a folder"), "{e}");
        assert_eq!(path_kind(&file).unwrap(), PathKind::File);
        assert_eq!(path_kind(&dir).unwrap(), PathKind::Dir);
        assert_eq!(path_kind(&dir.join("nope")).unwrap(), PathKind::Missing);
        assert!(matches!(path_kind(&file.join("x")).unwrap(), PathKind::Other(s) if s.contains("unreachable")));
        #[cfg(unix)]
        {
            let fifo = dir.join("fifo");
            if std::process::Command::new("mkfifo").arg(&fifo).status().is_ok_and(|s| s.success()) {
                // No writer: a blocking open would hang here.
                let e = read_regular_file(&fifo, 9).unwrap_err();
                assert!(e.to_string().contains("FIFO"), "{e}");
                assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
            }
            let e = read_regular_file(Path::new("/dev/zero"), 9).unwrap_err();
            assert!(e.to_string().contains("character device"), "{e}");
            let (a, b) = (dir.join("la"), dir.join("lb"));
            std::os::unix::fs::symlink(&b, &a).unwrap();
            std::os::unix::fs::symlink(&a, &b).unwrap();
            assert!(read_regular_file(&a, 9).unwrap_err().to_string().contains("loop"));
            let e = write_atomic(&a, b"x").unwrap_err();
            assert!(e.to_string().contains("symbolic link loop"), "{e}");
            let dangling = dir.join("dangling");
            std::os::unix::fs::symlink(dir.join("missing"), &dangling).unwrap();
            assert!(matches!(path_kind(&dangling).unwrap(), PathKind::Other(s) if s.contains("dangling")));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn same_file_sees_through_spellings_and_links() {
        let dir = std::env::temp_dir().join(format!("deradiff-io-same-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let a = dir.join("a.jsonl");
        std::fs::write(&a, b"x").unwrap();
        std::fs::write(dir.join("b.jsonl"), b"x").unwrap();
        assert!(same_file(&a, &dir.join("sub/../a.jsonl")));
        assert!(same_file(&a, &dir.join("./a.jsonl")));
        assert!(!same_file(&a, &dir.join("b.jsonl")));
        assert!(!same_file(&a, &dir.join("missing")));
        #[cfg(unix)]
        {
            std::fs::hard_link(&a, dir.join("hard.jsonl")).unwrap();
            assert!(same_file(&a, &dir.join("hard.jsonl")));
            std::os::unix::fs::symlink(&a, dir.join("soft.jsonl")).unwrap();
            assert!(same_file(&dir.join("soft.jsonl"), &a));
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
