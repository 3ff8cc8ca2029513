//! The crate's modules read top-down: every module of `src/` belongs to a layer ([`LAYERS`]) and
//! imports only from its own layer and the layers below it. A `use crate::…`, `crate::x::…` or
//! `super::…` reference to a higher layer fails the test, naming the file and the import.
//!
//! LoRA sits in a layer of its own above the UNet: `lora` reads, merges into and extracts from
//! the UNet, and the UNet knows nothing of LoRA, so there is no cycle between the two.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The layers, bottom first, each with its top-level modules (a file `src/x.rs` or a folder
/// `src/x/`; every file in a folder is in its folder's layer). `lib.rs`, which declares and
/// re-exports them all, is above every layer.
const LAYERS: &[(&str, &[&str])] = &[
    ("utilities", &["error", "device", "image", "fs", "hub", "limits", "conditioning"]),
    ("weights and configs", &["weights", "config"]),
    ("models", &["unet", "vae", "clip", "single_file"]),
    ("adapters", &["lora"]),
    ("guidance and text", &["guidance", "text", "tokenizer"]),
    ("pipeline", &["pipeline"]),
];

/// The layer of a top-level module.
fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, modules)| modules.contains(&module))
}

/// `source` without comments, string literals' contents and character literals (so that a
/// path in a doc link or an error message is not taken for an import); its line breaks are
/// kept, so that line numbers stay right.
fn code_only(source: &str) -> String {
    let s: Vec<char> = source.chars().collect();
    let mut out = String::with_capacity(s.len());
    // The line breaks of s[from..to], for what is left out.
    let breaks = |from: usize, to: usize| "\n".repeat(s[from..to.min(s.len())].iter().filter(|&&c| c == '\n').count());
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        let next = s.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < s.len() && s[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let start = i;
            let mut depth = 0;
            while i < s.len() {
                if s[i] == '/' && s.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if s[i] == '*' && s.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push_str(&breaks(start, i));
        } else if c == 'r' && (next == Some('#') || next == Some('"')) && !is_ident(s.get(i.wrapping_sub(1))) {
            // A raw string: r"…", r#"…"#, …
            let hashes = s[i + 1..].iter().take_while(|&&h| h == '#').count();
            if s.get(i + 1 + hashes) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            let start = i;
            i += hashes + 2;
            while i < s.len()
                && !(s[i] == '"' && s[i + 1..].iter().take(hashes).filter(|&&h| h == '#').count() == hashes)
            {
                i += 1;
            }
            i += hashes + 1;
            out.push_str("\"\"");
            out.push_str(&breaks(start, i));
        } else if c == '"' {
            let start = i;
            i += 1;
            while i < s.len() && s[i] != '"' {
                i += if s[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
            out.push_str(&breaks(start, i));
        } else if c == '\'' && next == Some('\\') {
            // '\n', '\'', '\u{…}'
            i += 2;
            while i < s.len() && s[i] != '\'' {
                i += 1;
            }
            i += 1;
        } else if c == '\'' && s.get(i + 2) == Some(&'\'') {
            i += 3;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn is_ident(c: Option<&char>) -> bool {
    c.is_some_and(|c| c.is_alphanumeric() || *c == '_')
}

/// The identifier at the start of `s`.
fn ident(s: &str) -> &str {
    let end = s.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(s.len());
    &s[..end]
}

/// The first path segment of every item of a `{…}` group at the start of `s` (nested groups
/// skipped), and the group's text.
fn group_heads(s: &str) -> (Vec<String>, &str) {
    let mut depth = 0;
    let mut end = s.len();
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    end = i + 1;
                    break;
                }
            }
            _ => {}
        }
    }
    let inner = &s[1..end.saturating_sub(1)];
    let mut heads = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices().chain(std::iter::once((inner.len(), ','))) {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                let item = inner[start..i].trim();
                if !item.is_empty() {
                    heads.push(ident(item).to_string());
                }
                start = i + 1;
            }
            _ => {}
        }
    }
    (heads, &s[..end])
}

/// One reference from a file to another module: its line, its text and the top-level module
/// it reaches.
#[derive(Debug)]
struct Reference {
    line: usize,
    text: String,
    module: String,
}

/// The module path of a file under `src/`: `unet/load.rs` → `[unet, load]`, `unet/mod.rs` →
/// `[unet]`, `fs.rs` → `[fs]`.
fn module_path(relative: &Path) -> Vec<String> {
    let mut parts: Vec<String> = relative.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let last = parts.pop().unwrap_or_default();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" {
        parts.push(stem.to_string());
    }
    parts
}

/// The names `lib.rs` re-exports (`pub use module::{A, B};`), each with its module.
fn root_exports(lib: &str) -> BTreeMap<String, String> {
    let code = code_only(lib);
    let mut names = BTreeMap::new();
    for statement in code.split(';') {
        let Some(rest) = statement.trim().strip_prefix("pub use ") else { continue };
        let module = ident(rest.trim()).to_string();
        for name in rest.split(|c: char| !(c.is_alphanumeric() || c == '_')) {
            if !name.is_empty() && name != module && name != "self" {
                names.insert(name.to_string(), module.clone());
            }
        }
    }
    names
}

/// The top-level module a name at the crate root stands for: a module itself, or the module a
/// root re-export comes from.
fn root_module(name: &str, exports: &BTreeMap<String, String>) -> String {
    if layer_of(name).is_some() {
        name.to_string()
    } else {
        exports.get(name).cloned().unwrap_or_else(|| name.to_string())
    }
}

/// Every `crate::…` and `super::…` reference of the file at `module` (its module path), with the
/// top-level module each reaches.
fn references(code: &str, module: &[String], exports: &BTreeMap<String, String>) -> Vec<Reference> {
    let mut found = Vec::new();
    let bytes = code.as_bytes();
    let mut i = 0;
    while i < code.len() {
        let rest = &code[i..];
        let boundary =
            i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_' || bytes[i - 1] == b'$');
        let (base, mut after): (Vec<String>, &str) = if boundary && rest.starts_with("crate::") {
            (Vec::new(), &rest["crate::".len()..])
        } else if boundary && rest.starts_with("super::") {
            let mut up = 0;
            let mut r = rest;
            while let Some(more) = r.strip_prefix("super::") {
                up += 1;
                r = more;
            }
            (module[..module.len().saturating_sub(up)].to_vec(), r)
        } else {
            i += rest.chars().next().map_or(1, char::len_utf8);
            continue;
        };
        let start = i;
        let heads: Vec<String> = if after.starts_with('{') {
            let (heads, group) = group_heads(after);
            after = &after[group.len()..];
            heads
        } else {
            let head = ident(after).to_string();
            after = &after[head.len()..];
            vec![head]
        };
        let tail = after.len();
        let text_end = code.len() - tail;
        let mut text = code[start..text_end].to_string();
        // Show the rest of the path (`crate::pipeline::check_latent_size`).
        let more: String =
            code[text_end..].chars().take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':').collect();
        text.push_str(&more);
        let rest_of_path = &code[text_end + more.len()..];
        if more.ends_with("::") && rest_of_path.starts_with('{') {
            text.push_str(group_heads(rest_of_path).1);
        }
        for head in heads {
            let target = match base.first() {
                Some(top) => top.clone(),
                None => root_module(&head, exports),
            };
            found.push(Reference { line: code[..start].matches('\n').count() + 1, text: text.clone(), module: target });
        }
        i = text_end;
    }
    found
}

/// The violations of the layering among `files` (path under `src/`, source), `lib.rs` given
/// apart: one line per upward import, naming the file and the import.
fn violations(files: &[(PathBuf, String)], lib: &str) -> Vec<String> {
    let exports = root_exports(lib);
    let mut out = Vec::new();
    for (path, source) in files {
        let module = module_path(path);
        let Some(top) = module.first() else { continue };
        let Some(own) = layer_of(top) else {
            out.push(format!(
                "src/{}: module `{top}` is in no layer; add it to LAYERS in tests/layers.rs",
                path.display()
            ));
            continue;
        };
        for r in references(&code_only(source), &module, &exports) {
            match layer_of(&r.module) {
                Some(theirs) if theirs > own => out.push(format!(
                    "src/{}:{} (layer {} \"{}\") imports `{}` from the higher layer {} \"{}\" (module `{}`)",
                    path.display(),
                    r.line,
                    own + 1,
                    LAYERS[own].0,
                    r.text,
                    theirs + 1,
                    LAYERS[theirs].0,
                    r.module
                )),
                Some(_) => {}
                None => out.push(format!(
                    "src/{}:{}: `{}` reaches `{}`, which is neither a module in LAYERS nor a name lib.rs re-exports",
                    path.display(),
                    r.line,
                    r.text,
                    r.module
                )),
            }
        }
    }
    out
}

/// Every `.rs` file under `dir`, as (path relative to `root`, source).
fn rust_files(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, String)>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(root, &path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let source = std::fs::read_to_string(&path).unwrap();
            out.push((path.strip_prefix(root).unwrap().to_path_buf(), source));
        }
    }
}

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `src/`'s files but `lib.rs`, and `lib.rs`.
fn src_tree() -> (Vec<(PathBuf, String)>, String) {
    let src = crate_dir().join("src");
    let mut files = Vec::new();
    rust_files(&src, &src, &mut files);
    let lib = files.iter().position(|(p, _)| p == Path::new("lib.rs")).expect("src/lib.rs");
    let (_, lib) = files.remove(lib);
    (files, lib)
}

#[test]
fn no_module_imports_from_a_higher_layer() {
    let (files, lib) = src_tree();
    assert!(files.len() > 20, "found only {} files under src/", files.len());
    let bad = violations(&files, &lib);
    assert!(bad.is_empty(), "imports against the layering:\n{}", bad.join("\n"));
}

#[test]
fn the_layer_table_names_the_modules_lib_rs_declares() {
    let (_, lib) = src_tree();
    let declared: Vec<String> = code_only(&lib)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod ").or_else(|| l.trim().strip_prefix("mod ")))
        .map(|m| m.trim_end_matches(';').trim().to_string())
        .collect();
    let mut tabled: Vec<String> = LAYERS.iter().flat_map(|(_, m)| m.iter().map(|m| m.to_string())).collect();
    let mut declared_sorted = declared.clone();
    declared_sorted.sort();
    tabled.sort();
    assert_eq!(declared_sorted, tabled, "the modules of lib.rs and the layers of tests/layers.rs differ");
}

#[test]
fn the_unet_never_imports_lora() {
    let (files, lib) = src_tree();
    let exports = root_exports(&lib);
    for (path, source) in files.iter().filter(|(p, _)| p.starts_with("unet")) {
        for r in references(&code_only(source), &module_path(path), &exports) {
            assert_ne!(
                r.module,
                "lora",
                "src/{}:{} imports `{}`: the UNet must not depend on LoRA",
                path.display(),
                r.line,
                r.text
            );
        }
    }
}

/// The checker itself: an upward import is found in every spelling, and named.
#[test]
fn an_upward_import_is_reported() {
    let lib = "pub mod lora;\nmod pipeline;\nmod unet;\npub use pipeline::{Request, StableDiffusion};\n\
               pub use unet::Unet;\n";
    let cases = [
        ("unet/mod.rs", "use crate::pipeline::check_latent_size;", "crate::pipeline::check_latent_size"),
        ("unet/load.rs", "use crate::{error::Error, lora::LoraAdapter};", "crate::{error::Error, lora::LoraAdapter}"),
        ("vae.rs", "fn f() -> crate::StableDiffusion { todo!() }", "crate::StableDiffusion"),
        ("unet/model.rs", "use super::super::lora::LoraLayer;", "super::super::lora::LoraLayer"),
        ("fs.rs", "use super::Request;", "super::Request"),
    ];
    // Line numbers survive comments and strings that span lines.
    let source = "/* a\nb */\nconst S: &str = \"x\ny\";\n// c\nuse crate::pipeline::StableDiffusion;\n";
    let bad = violations(&[(PathBuf::from("vae.rs"), source.to_string())], lib);
    assert!(bad.len() == 1 && bad[0].starts_with("src/vae.rs:6 "), "{bad:?}");
    for (path, source, import) in cases {
        let bad = violations(&[(PathBuf::from(path), source.to_string())], lib);
        assert_eq!(bad.len(), 1, "{path}: {source}: {bad:?}");
        assert!(bad[0].starts_with(&format!("src/{path}:1 ")) && bad[0].contains(&format!("`{import}`")), "{}", bad[0]);
    }
    let fine = [
        ("pipeline/load.rs", "use crate::unet::Unet; use super::request::LoadOptions; use crate::Unet as U;"),
        ("unet/load.rs", "use super::Unet; use super::layers::LayerMut; use crate::error::Result;"),
        ("lora/merge.rs", "use crate::unet::{LowRank, Unet};"),
        ("unet/mod.rs", "/// See [`crate::lora::LoraAdapter`].\nfn f() { let _ = \"crate::pipeline::x\"; }"),
    ];
    for (path, source) in fine {
        let bad = violations(&[(PathBuf::from(path), source.to_string())], lib);
        assert!(bad.is_empty(), "{path}: {bad:?}");
    }
}

#[test]
fn no_source_file_is_over_800_lines() {
    let dir = crate_dir();
    let mut files = Vec::new();
    for sub in ["src", "tests", "examples", "benches"] {
        if dir.join(sub).is_dir() {
            rust_files(&dir, &dir.join(sub), &mut files);
        }
    }
    let long: Vec<String> = files
        .iter()
        .filter(|(_, s)| s.lines().count() > 800)
        .map(|(p, s)| format!("{} ({} lines)", p.display(), s.lines().count()))
        .collect();
    assert!(long.is_empty(), "files over 800 lines: {long:?}");
}
