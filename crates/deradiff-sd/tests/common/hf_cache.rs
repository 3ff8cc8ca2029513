//! The Hugging Face cache of `tests/fixtures/hf-cache/manifest.json`, rebuilt in a folder: the
//! tree `scripts/gen_hf_cache_fixture.py` laid out with huggingface_hub's own functions (folders,
//! `refs/` files, blobs copied from the fixtures, snapshot links as the same relative links).
//! Shared by deradiff-sd's `hub_cache` test and the CLI's (through `#[path]`).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The workspace root, from a crate's `CARGO_MANIFEST_DIR` (`crates/<name>`).
pub fn workspace_root(manifest_dir: &str) -> PathBuf {
    Path::new(manifest_dir).join("../..")
}

/// The manifest, parsed.
pub fn manifest(root: &Path) -> serde_json::Value {
    let path = root.join("crates/deradiff-sd/tests/fixtures/hf-cache/manifest.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("the manifest parses")
}

/// Builds the cache in `hub` (removed first) from the manifest; returns the manifest.
pub fn build(root: &Path, hub: &Path) -> serde_json::Value {
    let manifest = manifest(root);
    let _ = std::fs::remove_dir_all(hub);
    std::fs::create_dir_all(hub).unwrap();
    for entry in manifest["entries"].as_array().expect("entries") {
        let path = hub.join(entry["path"].as_str().expect("path"));
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        if entry.get("dir").is_some() {
            std::fs::create_dir_all(&path).unwrap();
        } else if let Some(text) = entry["text"].as_str() {
            std::fs::write(&path, text).unwrap();
        } else if let Some(source) = entry["copy"].as_str() {
            std::fs::copy(root.join(source), &path).unwrap_or_else(|e| panic!("{source}: {e}"));
        } else if let Some(target) = entry["link"].as_str() {
            std::os::unix::fs::symlink(target, &path).unwrap();
        } else {
            panic!("unknown manifest entry {entry}");
        }
    }
    manifest
}
