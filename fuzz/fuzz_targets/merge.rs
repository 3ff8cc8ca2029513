//! What `deradiff merge` and `deradiff status` do with the files of a sweep's output folder:
//! the input is split at NUL bytes into up to 6 files, written as the shard files of a folder
//! (`sweep.shard-K-of-N.jsonl`, N the number of parts); then `merge_results` of them in the
//! given order and reversed (the same rows or the same kind of error), the merged file written
//! and read back, and `sweep_status` of the folder.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use deradiff_tune::{merge_results, read_results, results_file_name, sweep_status, write_results, Shard};
use libfuzzer_sys::fuzz_target;

fn dir() -> &'static PathBuf {
    static D: OnceLock<PathBuf> = OnceLock::new();
    D.get_or_init(|| std::env::temp_dir().join(format!("deradiff-fuzz-merge-{}", std::process::id())))
}

fuzz_target!(|data: &[u8]| {
    let dir = dir();
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let parts: Vec<&[u8]> = data.split(|&b| b == 0).take(6).collect();
    let n = parts.len();
    let mut files = Vec::new();
    for (k, part) in parts.iter().enumerate() {
        let path = dir.join(results_file_name(Some(Shard::new(k, n).unwrap())));
        std::fs::write(&path, part).unwrap();
        files.push(path);
    }
    let forward = merge_results(&files, true);
    files.reverse();
    let backward = merge_results(&files, true);
    match (&forward, &backward) {
        (Ok(a), Ok(b)) => {
            // Rows come out in work-item order whatever the order of the files.
            assert_eq!(a.rows, b.rows, "the order of the files changed the rows");
            assert_eq!(a.header, b.header);
            let out = dir.join("merged.jsonl");
            if write_results(&out, &a.header, &a.rows).is_ok() {
                let back = read_results(&out).expect("a merged file reads back");
                assert_eq!(back.rows, a.rows);
            }
            let _ = std::fs::remove_file(&out);
        }
        (Ok(_), Err(e)) | (Err(e), Ok(_)) if n == 1 => panic!("one file, two answers: {e}"),
        _ => {}
    }
    let status = sweep_status(dir).expect("the folder is readable");
    assert!(status.sweeps.len() + status.unreadable.len() <= n);
    for s in &status.sweeps {
        assert!(s.done <= s.total);
    }
});
