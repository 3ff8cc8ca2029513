//! The workspace's layout rules, checked on the source tree (issue 26): no Rust source file over
//! 800 lines, and the crates form a stack — each crate depends only on crates below it.
//! Each crate's own module layers are checked by its `tests/layers.rs`.

use std::path::{Path, PathBuf};

/// The most lines a Rust source file may have.
const MAX_LINES: usize = 800;

/// The crates bottom to top: a crate may depend on crates earlier in this list only.
const STACK: [&str; 8] = [
    "deradiff-core",
    "deradiff-kernels",
    "deradiff-analytic",
    "deradiff-sd",
    "deradiff-rewards",
    "deradiff-tune",
    "deradiff-cli",
    "deradiff",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if name == "target" || name == "fixtures" || name.to_string_lossy().starts_with('.') {
            continue;
        }
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn no_source_file_is_over_800_lines() {
    let mut files = Vec::new();
    for dir in ["src", "tests", "examples", "benches", "crates", "fuzz"] {
        rust_files(&root().join(dir), &mut files);
    }
    assert!(files.len() > 100, "found only {} Rust files: is the walk right?", files.len());
    let long: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let lines = std::fs::read_to_string(f).unwrap().lines().count();
            (lines > MAX_LINES).then(|| format!("{} ({lines} lines)", f.strip_prefix(root()).unwrap().display()))
        })
        .collect();
    assert!(long.is_empty(), "files over {MAX_LINES} lines: {long:#?}");
}

/// The `deradiff-*` names in the `[dependencies]` table of a manifest (dev-dependencies may
/// reach up: tests of a lower crate may use a higher one's fixtures only through files).
fn workspace_dependencies(manifest: &str) -> Vec<String> {
    let mut in_deps = false;
    let mut deps = Vec::new();
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_deps = line == "[dependencies]";
            continue;
        }
        if in_deps && line.starts_with("deradiff") {
            let name: String = line.chars().take_while(|c| c.is_alphanumeric() || *c == '-' || *c == '_').collect();
            deps.push(name);
        }
    }
    deps
}

#[test]
fn each_crate_depends_only_on_crates_below_it() {
    let mut checked = 0;
    for (level, name) in STACK.iter().enumerate() {
        let manifest = if *name == "deradiff" {
            root().join("Cargo.toml")
        } else {
            root().join("crates").join(name).join("Cargo.toml")
        };
        let text = std::fs::read_to_string(&manifest).unwrap_or_else(|e| panic!("{}: {e}", manifest.display()));
        for dep in workspace_dependencies(&text) {
            let dep_level =
                STACK.iter().position(|s| *s == dep).unwrap_or_else(|| panic!("{name}: unknown crate {dep}"));
            assert!(dep_level < level, "{name} depends on {dep}, which is not below it in {STACK:?}");
        }
        checked += 1;
    }
    assert_eq!(checked, STACK.len());
}

/// The rewards score images without the sweep machinery: deradiff-rewards is below tune.
#[test]
fn rewards_do_not_need_the_sweep_crate() {
    let manifest = std::fs::read_to_string(root().join("crates/deradiff-rewards/Cargo.toml")).unwrap();
    let deps = workspace_dependencies(&manifest);
    assert!(!deps.iter().any(|d| d == "deradiff-tune"), "deradiff-rewards depends on deradiff-tune: {deps:?}");
    let cli = std::fs::read_to_string(root().join("crates/deradiff-cli/src/commands/score.rs")).unwrap();
    assert!(!cli.contains("deradiff_tune"), "`deradiff score` uses deradiff-tune");
}
