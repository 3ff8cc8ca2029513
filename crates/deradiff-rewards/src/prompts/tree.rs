//! YAML and JSON prompt documents: one document, its size after alias expansion and its depth
//! bounded before it is built, then read as a list of prompts (see the parent module).

use std::collections::HashMap;
use std::path::Path;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;
use yaml_rust2::{Yaml, YamlLoader};

use super::{bad, bare_string, check_count, entry, pick_column, wanted, PromptEntry};
use crate::error::Result;

/// The most nodes (scalars, lists, mappings) a YAML prompt file may hold once its aliases are
/// expanded: 10 million (a million prompts with their ids and a few more fields). An alias bomb
/// ("billion laughs": anchors that repeat each other) is refused before it is expanded.
pub const MAX_YAML_NODES: usize = 10_000_000;

/// The deepest nesting of lists and mappings a YAML prompt file may have: 64 (a prompt list is
/// nested two or three deep).
pub const MAX_YAML_DEPTH: usize = 64;

/// Counts the nodes of a YAML stream as it is parsed, aliases counted at the size of what they
/// repeat, and its documents; stops at the first bound exceeded.
#[derive(Default)]
struct Guard {
    /// Nodes so far, aliases expanded.
    nodes: usize,
    /// The open lists and mappings: their anchor and `nodes` when they started.
    open: Vec<(usize, usize)>,
    /// The expanded size of every anchored node.
    anchors: HashMap<usize, usize>,
    /// Documents ended.
    documents: usize,
    /// The first bound exceeded.
    exceeded: Option<String>,
}

impl Guard {
    fn add(&mut self, n: usize, anchor: usize) {
        self.nodes = self.nodes.saturating_add(n);
        if anchor > 0 {
            self.anchors.insert(anchor, n);
        }
        if self.nodes > MAX_YAML_NODES {
            self.exceeded = Some(format!(
                "holds more than {MAX_YAML_NODES} nodes once its aliases are expanded (MAX_YAML_NODES): an alias that \
                 repeats an alias (an alias bomb), or too large a file"
            ));
        }
    }
}

impl MarkedEventReceiver for Guard {
    fn on_event(&mut self, ev: Event, _mark: Marker) {
        if self.exceeded.is_some() {
            return;
        }
        match ev {
            Event::DocumentEnd => self.documents += 1,
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                self.open.push((anchor, self.nodes));
                self.add(1, 0);
                if self.open.len() > MAX_YAML_DEPTH {
                    self.exceeded =
                        Some(format!("nests lists or mappings more than {MAX_YAML_DEPTH} deep (MAX_YAML_DEPTH)"));
                }
            }
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some((anchor, start)) = self.open.pop() {
                    if anchor > 0 {
                        self.anchors.insert(anchor, self.nodes - start);
                    }
                }
            }
            Event::Scalar(_, _, anchor, _) => self.add(1, anchor),
            Event::Alias(id) => {
                let n = self.anchors.get(&id).copied().unwrap_or(1);
                self.add(n, 0);
            }
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentStart => {}
        }
    }
}

pub(super) fn read_yaml(path: &Path, text: &str, column: Option<&str>) -> Result<Vec<PromptEntry>> {
    let mut guard = Guard::default();
    Parser::new_from_str(text).load(&mut guard, true).map_err(|e| bad(path, "the YAML", e))?;
    if let Some(what) = guard.exceeded {
        return Err(bad(path, "the YAML", what));
    }
    if guard.documents > 1 {
        return Err(bad(
            path,
            "the YAML",
            format!(
                "holds {} documents (separated by ---); a prompt file is one document: put every prompt in one list",
                guard.documents
            ),
        ));
    }
    let docs = YamlLoader::load_from_str(text).map_err(|e| bad(path, "the YAML", e))?;
    match docs.into_iter().next() {
        Some(doc) => from_document(path, &doc, column),
        None => Ok(Vec::new()),
    }
}

/// A JSON document as the YAML it also is (JSON's numbers, strings, arrays and objects), so
/// that both are read by one set of rules. serde_json bounds the nesting (128 levels).
fn json_to_yaml(v: serde_json::Value) -> Yaml {
    use serde_json::Value;
    match v {
        Value::Null => Yaml::Null,
        Value::Bool(b) => Yaml::Boolean(b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Yaml::Integer(i),
            None => Yaml::Real(n.to_string()),
        },
        Value::String(s) => Yaml::String(s),
        Value::Array(a) => Yaml::Array(a.into_iter().map(json_to_yaml).collect()),
        Value::Object(o) => Yaml::Hash(o.into_iter().map(|(k, v)| (Yaml::String(k), json_to_yaml(v))).collect()),
    }
}

pub(super) fn read_json(path: &Path, text: &str, column: Option<&str>) -> Result<Vec<PromptEntry>> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| bad(path, "the JSON", e))?;
    from_document(path, &json_to_yaml(value), column)
}

/// A short rendering of a YAML value for a message.
fn show(y: &Yaml) -> String {
    let s = match y {
        Yaml::String(s) | Yaml::Real(s) => format!("{s:?}"),
        Yaml::Integer(i) => i.to_string(),
        Yaml::Boolean(b) => b.to_string(),
        Yaml::Null => "null".into(),
        Yaml::Array(a) => format!("a list of {}", a.len()),
        Yaml::Hash(h) => format!("a mapping of {} keys", h.len()),
        Yaml::Alias(_) | Yaml::BadValue => "an unreadable value".into(),
    };
    s.chars().take(80).collect()
}

fn from_list(path: &Path, list: &[Yaml], prefix: &str, column: Option<&str>, out: &mut Vec<PromptEntry>) -> Result<()> {
    for (i, item) in list.iter().enumerate() {
        let at = format!("{prefix}entry {}", i + 1);
        match item {
            Yaml::String(_) if column.is_some() => return Err(bare_string(path, &at, column.unwrap_or_default())),
            Yaml::String(s) => out.push(entry(None, s.clone())),
            Yaml::Hash(h) => {
                let keys = h.keys().filter_map(Yaml::as_str);
                let c = pick_column(keys, column)
                    .ok_or_else(|| bad(path, &at, format!("a mapping without {}", wanted(column))))?;
                let text = h[&Yaml::String(c.into())]
                    .as_str()
                    .ok_or_else(|| bad(path, &at, format!("{c:?} is not a string")))?;
                let id = match h.get(&Yaml::String("id".into())) {
                    None | Some(Yaml::Null) => None,
                    Some(Yaml::String(s)) => Some(s.clone()),
                    Some(Yaml::Integer(n)) => Some(n.to_string()),
                    Some(other) => {
                        return Err(bad(path, &at, format!("the id {} is not a string or an integer", show(other))))
                    }
                };
                out.push(entry(id, text.to_string()));
            }
            other => return Err(bad(path, &at, format!("expected a string or a mapping, got {}", show(other)))),
        }
        check_count(path, out.len())?;
    }
    Ok(())
}

fn from_document(path: &Path, doc: &Yaml, column: Option<&str>) -> Result<Vec<PromptEntry>> {
    let mut out = Vec::new();
    match doc {
        Yaml::Array(list) => from_list(path, list, "", column, &mut out)?,
        Yaml::Hash(h) => {
            if let Some(Yaml::Array(list)) = h.get(&Yaml::String("prompts".into())) {
                from_list(path, list, "prompts: ", column, &mut out)?;
                return Ok(out);
            }
            // Categories of prompts, each a list, read in the file's order.
            for (k, v) in h {
                let name = k.as_str().map(str::to_string).unwrap_or_else(|| show(k));
                match v {
                    Yaml::Array(list) => from_list(path, list, &format!("{name}: "), column, &mut out)?,
                    _ => {
                        return Err(bad(
                            path,
                            format!("key {name:?}"),
                            "expected a list of prompts (the file must be a list, or a mapping of lists)",
                        ))
                    }
                }
            }
        }
        Yaml::Null | Yaml::BadValue => {}
        other => {
            return Err(bad(path, "the document", format!("expected a list of prompts, got {}", show(other))));
        }
    }
    Ok(out)
}
