//! The sweep modules are layered in one direction: `spec` ← `results` ← {`merge`, `sweep`}.
//!
//! * `spec` (work items, shards, the spec and its hash) imports none of `results`, `merge`,
//!   `sweep`;
//! * `results` (the results-file format: header, rows, reader, writer, CSV) imports `spec` only;
//! * `merge` (merging shard files, progress) and `sweep` (the run loop) import `results` and
//!   `spec`, never each other: what they share goes down into `results` or `spec`;
//! * `difference` (the setting in which two headers differ) is part of the results layer: it
//!   imports `results` and `spec`, never `merge` or `sweep`; `lock` (a writer's lock record)
//!   imports none of them.
//!
//! This test reads the crate's sources and fails naming the file, the line and the import that
//! breaks the order: a path through the module (`crate::results::…`) or through a root
//! re-export of one of its items (`crate::read_results`).

use std::collections::BTreeMap;
use std::path::Path;

/// Each layered module and the modules it must not import.
const FORBIDDEN: &[(&str, &[&str])] = &[
    ("spec", &["results", "merge", "sweep"]),
    ("results", &["merge", "sweep"]),
    ("merge", &["sweep"]),
    ("sweep", &["merge"]),
    ("difference", &["merge", "sweep"]),
    ("lock", &["spec", "results", "merge", "sweep", "difference"]),
];

/// The names of the items a module file declares at its top level (`pub`, `pub(crate)` or
/// private), which the crate root may re-export.
fn declared_items(source: &str) -> Vec<String> {
    let mut names = Vec::new();
    for line in source.lines() {
        let mut rest = line;
        for prefix in ["pub(crate) ", "pub "] {
            if let Some(r) = rest.strip_prefix(prefix) {
                rest = r;
                break;
            }
        }
        for kind in ["fn ", "struct ", "enum ", "trait ", "const ", "type ", "static "] {
            if let Some(r) = rest.strip_prefix(kind) {
                let name: String = r.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                if !name.is_empty() {
                    names.push(name);
                }
            }
        }
    }
    names
}

/// Identifiers in `text`.
fn identifiers(text: &str) -> Vec<&str> {
    text.split(|c: char| !(c.is_alphanumeric() || c == '_')).filter(|s| !s.is_empty()).collect()
}

/// Every path through the crate root in `source` (`crate::…` or `super::…`), comments removed:
/// (line number, the path as written, the identifiers it names). A group (`crate::{a::b, c}`)
/// names every identifier inside its braces.
fn crate_paths(source: &str) -> Vec<(usize, String, Vec<String>)> {
    // Comments out, lines kept (so that line numbers stay right).
    let code: String = source
        .lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut found = Vec::new();
    for root in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(i) = code[from..].find(root) {
            let start = from + i;
            let before = code[..start].chars().next_back();
            from = start + root.len();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue; // part of a longer name, e.g. `deradiff_crate::`
            }
            let rest = &code[from..];
            let end = if rest.starts_with('{') {
                let mut depth = 0usize;
                let mut end = rest.len();
                for (k, c) in rest.char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = k + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                end
            } else {
                rest.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':')).unwrap_or(rest.len())
            };
            let path = &rest[..end];
            let names = if path.starts_with('{') {
                identifiers(path).into_iter().map(String::from).collect()
            } else {
                // `crate::a::b`: the first segment says where it leads (a module or a re-export).
                identifiers(path).into_iter().take(1).map(String::from).collect()
            };
            let line = code[..start].matches('\n').count() + 1;
            found.push((line, format!("{root}{}", path.split_whitespace().collect::<Vec<_>>().join(" ")), names));
        }
    }
    found.sort();
    found
}

/// The imports of `module` (whose source is `source`) that break the layers, as messages.
fn violations(module: &str, source: &str, items: &BTreeMap<String, Vec<String>>) -> Vec<String> {
    let forbidden = FORBIDDEN.iter().find(|(m, _)| *m == module).map(|(_, f)| *f).unwrap_or(&[]);
    let mut out = Vec::new();
    for (line, path, names) in crate_paths(source) {
        for name in &names {
            let target = if forbidden.contains(&name.as_str()) {
                Some(name.clone())
            } else {
                forbidden.iter().find(|f| items.get(**f).is_some_and(|i| i.contains(name))).map(|f| f.to_string())
            };
            if let Some(target) = target {
                out.push(format!(
                    "src/{module}.rs:{line}: `{path}` imports `{target}` (through `{name}`): `{module}` must not \
                     depend on {}",
                    forbidden.join(", ")
                ));
            }
        }
    }
    out
}

#[test]
fn spec_results_merge_sweep_are_layered() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let sources: BTreeMap<String, String> = FORBIDDEN
        .iter()
        .map(|(m, _)| {
            let path = src.join(format!("{m}.rs"));
            let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (m.to_string(), text)
        })
        .collect();
    let items: BTreeMap<String, Vec<String>> = sources.iter().map(|(m, s)| (m.clone(), declared_items(s))).collect();
    let broken: Vec<String> = sources.iter().flat_map(|(m, s)| violations(m, s, &items)).collect();
    assert!(broken.is_empty(), "the sweep modules import against their layers:\n{}", broken.join("\n"));
}

#[test]
fn the_check_names_file_line_and_import() {
    let items: BTreeMap<String, Vec<String>> = [
        ("results".to_string(), vec!["read_results".to_string()]),
        ("merge".to_string(), vec!["merge_results".to_string()]),
        ("sweep".to_string(), vec!["run_sweep".to_string()]),
    ]
    .into();
    // A path through the module, one through a root re-export, one inside a group; comments and
    // allowed imports are not reported.
    let source = "use crate::error::Result;\n\
                  use crate::results::SweepRow;\n\
                  // use crate::merge::merge_results;\n\
                  use crate::{model::Prompt, read_results};\n\
                  fn f() { let _ = crate::sweep::run_sweep; }\n";
    let v = violations("spec", source, &items);
    assert_eq!(v.len(), 3, "{v:#?}");
    assert!(v[0].starts_with("src/spec.rs:2: `crate::results::SweepRow` imports `results`"), "{}", v[0]);
    assert!(v[1].starts_with("src/spec.rs:4: `crate::{model::Prompt, read_results}` imports `results`"), "{}", v[1]);
    assert!(v[2].starts_with("src/spec.rs:5: `crate::sweep::run_sweep` imports `sweep`"), "{}", v[2]);
    assert!(violations("merge", source, &items).iter().any(|m| m.contains("imports `sweep`")));
    assert!(violations("results", "use crate::spec::Shard;\n", &items).is_empty());
}
