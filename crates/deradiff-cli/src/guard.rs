//! Where a command writes, checked before it runs: no output replaces one of the command's
//! inputs (the same file by device and inode, links followed: `./x`, `a/../x`, symbolic and hard
//! links are all one file), and an output path is a file or a folder as the option wants (a FIFO,
//! a device or a symbolic link loop is named as such). Every command that writes files calls
//! [`check_outputs`] with what it writes and what it reads.

use std::path::{Path, PathBuf};

use deradiff_core::io::{path_kind, same_file, PathKind};

use crate::error::{CliError, Result};

/// The most files of an input folder compared with the outputs (a pipeline folder has a few
/// dozen).
const MAX_SCANNED: usize = 10_000;

/// A file or folder a command reads, with the option that names it (`--aligned`, `inputs`, …).
pub(crate) type Input<'a> = (&'a str, &'a Path);

/// The regular files that `path` stands for as an input: itself, or the files of a folder and
/// of its subfolders one level down (a pipeline folder's `unet/`, `vae/`, …).
fn files_of(path: &Path) -> Vec<PathBuf> {
    fn push_files(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            if out.len() >= MAX_SCANNED {
                return;
            }
            let p = entry.path();
            match path_kind(&p) {
                Ok(PathKind::File) => out.push(p),
                Ok(PathKind::Dir) if depth > 0 => push_files(&p, depth - 1, out),
                _ => {}
            }
        }
    }
    match path_kind(path) {
        Ok(PathKind::File) => vec![path.to_path_buf()],
        Ok(PathKind::Dir) => {
            let mut out = Vec::new();
            push_files(path, 1, &mut out);
            out
        }
        _ => Vec::new(),
    }
}

/// Errors (a bad option, before anything runs) when one of `outputs` — each the option that
/// names it and the file it writes — is one of `inputs` or one of the files of an input folder,
/// however spelled: writing it would replace what the command reads.
pub(crate) fn check_outputs(outputs: &[(&str, &Path)], inputs: &[Input<'_>]) -> Result<()> {
    // An output that does not exist yet replaces nothing.
    let existing: Vec<&(&str, &Path)> =
        outputs.iter().filter(|(_, p)| matches!(path_kind(p), Ok(PathKind::File))).collect();
    if existing.is_empty() {
        return Ok(());
    }
    for (in_option, input) in inputs {
        for file in files_of(input) {
            if let Some((out_option, output)) = existing.iter().find(|(_, o)| same_file(o, &file)) {
                let inside =
                    if file.as_path() == *input { String::new() } else { format!(" (its file {})", file.display()) };
                return Err(CliError::usage(format!(
                    "{out_option} would write {}, which is the same file as {in_option} {}{inside}: an output must \
                     not replace an input; choose another {out_option}",
                    output.display(),
                    input.display()
                )));
            }
        }
    }
    Ok(())
}

/// Errors (a bad option) unless the output folder `dir` of `option` is missing (it is created)
/// or a folder: a file, a FIFO, a device or a symbolic link loop is named as what it is.
pub(crate) fn check_out_dir(option: &str, dir: &Path) -> Result<()> {
    match path_kind(dir) {
        Ok(PathKind::Missing | PathKind::Dir) => Ok(()),
        Ok(PathKind::File) => {
            Err(CliError::usage(format!("{option} {} exists and is a file, not a folder", dir.display())))
        }
        Ok(PathKind::Other(what)) => {
            Err(CliError::usage(format!("{option} {} is {what}: give a folder to write into", dir.display())))
        }
        Err(e) => Err(CliError::usage_because(format!("{option} {} cannot be inspected", dir.display()), e)),
    }
}

/// Errors (a bad option) unless the output file `path` of `option` is missing, a regular file
/// (replaced) or a link to where a file can be made: a folder, a FIFO, a device or a symbolic
/// link loop is named as what it is.
pub(crate) fn check_out_file(option: &str, path: &Path) -> Result<()> {
    match path_kind(path) {
        Ok(PathKind::Missing | PathKind::File) => Ok(()),
        Ok(PathKind::Other(what)) if what.starts_with("a dangling symbolic link") => Ok(()),
        Ok(PathKind::Dir) => {
            Err(CliError::usage(format!("{option} {} is a folder: give the path of a file to write", path.display())))
        }
        Ok(PathKind::Other(what)) => {
            Err(CliError::usage(format!("{option} {} is {what}: give the path of a file to write", path.display())))
        }
        Err(e) => Err(CliError::usage_because(format!("{option} {} cannot be inspected", path.display()), e)),
    }
}

/// Holds the lock of an output folder while a command writes its files there, so that two
/// commands writing into one folder at once leave the files of one of them, not a mix: the
/// second waits for the first. Released when dropped.
pub(crate) struct DirLock {
    _file: Option<std::fs::File>,
}

/// Locks the folder `dir` (it must exist) until the returned guard is dropped, waiting for
/// another deradiff process that holds it. Where folders cannot be locked (not Unix, or a file
/// system without locks) the files are written unlocked.
pub(crate) fn lock_dir(dir: &Path) -> DirLock {
    #[cfg(unix)]
    {
        let file = std::fs::File::open(dir).ok().filter(|f| f.lock().is_ok());
        DirLock { _file: file }
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        DirLock { _file: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_output_is_refused_when_it_is_an_input_by_any_spelling() {
        let root = std::env::temp_dir().join(format!("deradiff-guard-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("model/unet")).unwrap();
        let weights = root.join("model/unet/w.safetensors");
        std::fs::write(&weights, b"x").unwrap();
        let input: Input<'_> = ("--reference", &root.join("model"));
        let spelled = root.join("model/unet/../unet/./w.safetensors");
        let err = check_outputs(&[("--out", &spelled)], &[input]).unwrap_err().to_string();
        assert!(err.contains("same file as --reference") && err.contains("its file"), "{err}");
        assert!(check_outputs(&[("--out", &root.join("new.safetensors"))], &[input]).is_ok());
        #[cfg(unix)]
        {
            let hard = root.join("hard.safetensors");
            std::fs::hard_link(&weights, &hard).unwrap();
            assert!(check_outputs(&[("--out", &hard)], &[input]).is_err());
            let err = check_out_dir("--out", &root.join("model/unet/w.safetensors/x")).unwrap_err().to_string();
            assert!(err.contains("unreachable"), "{err}");
            std::os::unix::fs::symlink(root.join("b"), root.join("a")).unwrap();
            std::os::unix::fs::symlink(root.join("a"), root.join("b")).unwrap();
            let err = check_out_dir("--out", &root.join("a")).unwrap_err().to_string();
            assert!(err.contains("symbolic link loop"), "{err}");
            let err = check_out_file("--out", &root.join("a")).unwrap_err().to_string();
            assert!(err.contains("symbolic link loop"), "{err}");
        }
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn a_locked_folder_waits_for_its_holder() {
        let root = std::env::temp_dir().join(format!("deradiff-guard-lock-{}", std::process::id()));
        std::fs::create_dir_all(&root).unwrap();
        let first = lock_dir(&root);
        assert!(first._file.is_some(), "the folder could not be locked");
        let (tx, rx) = std::sync::mpsc::channel();
        let dir = root.clone();
        let waiter = std::thread::spawn(move || {
            let _second = lock_dir(&dir);
            tx.send(()).unwrap();
        });
        // The second lock waits while the first is held, and gets it once it is released.
        assert!(rx.recv_timeout(std::time::Duration::from_millis(200)).is_err());
        drop(first);
        assert!(rx.recv_timeout(std::time::Duration::from_secs(10)).is_ok());
        waiter.join().unwrap();
        std::fs::remove_dir_all(&root).unwrap();
    }
}
