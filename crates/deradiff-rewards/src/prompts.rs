//! Prompt files in the formats prompt sets ship in: plain text, JSON lines, CSV with a column
//! name, and YAML lists (the official DeRaDiff prompt list is a YAML file).
//!
//! | extension | what is read |
//! |---|---|
//! | `.txt` (or anything else) | one prompt per non-empty line (a line starting with `#` is a comment) |
//! | `.jsonl` | one JSON value per non-empty line: a string, or an object whose `column` field is the prompt |
//! | `.csv` | a header row, then the `column` of every row (RFC 4180 quoting) |
//! | `.yaml`, `.yml` | a list of strings or of mappings with the `column` key; or a mapping whose `prompts` key (or whose only key) holds such a list; or a mapping of categories to such lists, read in order |
//!
//! `column` defaults to `prompt` (then `caption`, then `text` are tried when the default is not
//! there). An object or row may carry an `id`; otherwise the prompt's text is its id. Every error
//! names the file, the line (or the YAML entry) and what was expected.

use std::path::Path;

use crate::error::{Error, Result};

/// Most prompts one file may hold, and one sweep takes (deradiff-tune's bound on a prompt set).
pub const MAX_PROMPTS: usize = 1_000_000;

/// One prompt read from a file: its id and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptEntry {
    /// The file's `id` for it, or the text itself.
    pub id: String,
    /// The prompt.
    pub text: String,
}

/// The column names tried when none is given.
const DEFAULT_COLUMNS: [&str; 3] = ["prompt", "caption", "text"];

fn bad(path: &Path, where_: impl std::fmt::Display, what: impl std::fmt::Display) -> Error {
    Error::PromptFile { path: path.to_path_buf(), detail: format!("{where_}: {what}") }
}

/// Reads a prompt file (see the module docs for the formats). `column` names the field or CSV
/// column holding the prompt (default: `prompt`, `caption` or `text`, the first present).
/// An empty file, an empty prompt, more than [`MAX_PROMPTS`] prompts or a malformed entry is an
/// [`Error::PromptFile`] naming the file and where.
pub fn read_prompt_file(path: impl AsRef<Path>, column: Option<&str>) -> Result<Vec<PromptEntry>> {
    let path = path.as_ref();
    let meta = std::fs::metadata(path).map_err(Error::io(path))?;
    if !meta.is_file() {
        return Err(bad(path, "the path", "is not a regular file (a folder, device or FIFO): give a prompt file"));
    }
    let bytes = std::fs::read(path).map_err(Error::io(path))?;
    let text = String::from_utf8(bytes).map_err(|e| bad(path, "the file", format!("is not UTF-8 text ({e})")))?;
    let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    let entries = match ext.as_deref() {
        Some("jsonl") => read_jsonl(path, &text, column)?,
        Some("csv") => read_csv(path, &text, column)?,
        Some("yaml" | "yml") => read_yaml(path, &text, column)?,
        _ => read_txt(&text),
    };
    if entries.is_empty() {
        return Err(bad(path, "the file", "holds no prompt"));
    }
    if entries.len() > MAX_PROMPTS {
        return Err(bad(
            path,
            "the file",
            format!("holds {} prompts; at most {MAX_PROMPTS} are allowed", entries.len()),
        ));
    }
    if let Some(i) = entries.iter().position(|e| e.text.trim().is_empty()) {
        return Err(bad(path, format!("prompt #{}", i + 1), "is empty"));
    }
    Ok(entries)
}

fn entry(id: Option<String>, text: String) -> PromptEntry {
    PromptEntry { id: id.unwrap_or_else(|| text.clone()), text }
}

fn read_txt(text: &str) -> Vec<PromptEntry> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| entry(None, l.to_string()))
        .collect()
}

/// The column to read from an object with these keys.
fn pick_column(keys: impl Fn(&str) -> bool, column: Option<&str>) -> Option<&str> {
    match column {
        Some(c) => keys(c).then_some(c),
        None => DEFAULT_COLUMNS.into_iter().find(|c| keys(c)),
    }
}

fn wanted(column: Option<&str>) -> String {
    match column {
        Some(c) => format!("a field {c:?}"),
        None => "a field \"prompt\", \"caption\" or \"text\" (or name one with --prompt-column)".into(),
    }
}

fn read_jsonl(path: &Path, text: &str, column: Option<&str>) -> Result<Vec<PromptEntry>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let at = format!("line {}", i + 1);
        let value: serde_json::Value =
            serde_json::from_str(line).map_err(|e| bad(path, &at, format!("not JSON ({e})")))?;
        match value {
            serde_json::Value::String(s) => out.push(entry(None, s)),
            serde_json::Value::Object(o) => {
                let c = pick_column(|k| o.contains_key(k), column)
                    .ok_or_else(|| bad(path, &at, format!("an object without {}", wanted(column))))?;
                let text = o[c].as_str().ok_or_else(|| bad(path, &at, format!("{c:?} is not a string")))?;
                let id = o.get("id").map(|v| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()));
                out.push(entry(id, text.to_string()));
            }
            other => return Err(bad(path, &at, format!("expected a string or an object, got {other}"))),
        }
    }
    Ok(out)
}

fn read_csv(path: &Path, text: &str, column: Option<&str>) -> Result<Vec<PromptEntry>> {
    let mut reader = csv::ReaderBuilder::new().flexible(false).from_reader(text.as_bytes());
    let headers = reader.headers().map_err(|e| bad(path, "the header row", e))?.clone();
    let find = |name: &str| headers.iter().position(|h| h.trim() == name);
    let c = pick_column(|k| find(k).is_some(), column).ok_or_else(|| {
        bad(path, "the header row", format!("{:?} has no {}", headers.iter().collect::<Vec<_>>(), wanted(column)))
    })?;
    let (col, id_col) = (find(c).expect("picked"), find("id"));
    let mut out = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let record = record.map_err(|e| bad(path, format!("row {}", i + 2), e))?;
        let text = record.get(col).unwrap_or_default().to_string();
        let id = id_col.and_then(|j| record.get(j)).filter(|s| !s.is_empty()).map(str::to_string);
        out.push(entry(id, text));
    }
    Ok(out)
}

fn read_yaml(path: &Path, text: &str, column: Option<&str>) -> Result<Vec<PromptEntry>> {
    use yaml_rust2::{Yaml, YamlLoader};
    let docs = YamlLoader::load_from_str(text).map_err(|e| bad(path, "the YAML", e))?;
    let Some(doc) = docs.into_iter().next() else { return Ok(Vec::new()) };
    let from_list = |list: &[Yaml], prefix: &str| -> Result<Vec<PromptEntry>> {
        let mut out = Vec::with_capacity(list.len());
        for (i, item) in list.iter().enumerate() {
            let at = format!("{prefix}entry {}", i + 1);
            match item {
                Yaml::String(s) => out.push(entry(None, s.clone())),
                Yaml::Hash(h) => {
                    let has = |k: &str| h.contains_key(&Yaml::String(k.into()));
                    let c = pick_column(has, column)
                        .ok_or_else(|| bad(path, &at, format!("a mapping without {}", wanted(column))))?;
                    let text = h[&Yaml::String(c.into())]
                        .as_str()
                        .ok_or_else(|| bad(path, &at, format!("{c:?} is not a string")))?;
                    let id = match h.get(&Yaml::String("id".into())) {
                        Some(Yaml::String(s)) => Some(s.clone()),
                        Some(Yaml::Integer(n)) => Some(n.to_string()),
                        _ => None,
                    };
                    out.push(entry(id, text.to_string()));
                }
                other => return Err(bad(path, &at, format!("expected a string or a mapping, got {other:?}"))),
            }
        }
        Ok(out)
    };
    match &doc {
        Yaml::Array(list) => from_list(list, ""),
        Yaml::Hash(h) => {
            if let Some(Yaml::Array(list)) = h.get(&Yaml::String("prompts".into())) {
                return from_list(list, "prompts: ");
            }
            // Categories of prompts, each a list, read in the file's order.
            let mut out = Vec::new();
            for (k, v) in h {
                let name = k.as_str().map(str::to_string).unwrap_or_else(|| format!("{k:?}"));
                match v {
                    Yaml::Array(list) => out.extend(from_list(list, &format!("{name}: "))?),
                    _ => {
                        return Err(bad(
                            path,
                            format!("key {name:?}"),
                            "expected a list of prompts (the file must be a list, or a mapping of lists)",
                        ))
                    }
                }
            }
            Ok(out)
        }
        Yaml::Null => Ok(Vec::new()),
        other => Err(bad(path, "the document", format!("expected a list of prompts, got {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, text: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("deradiff-prompts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn texts(v: &[PromptEntry]) -> Vec<&str> {
        v.iter().map(|e| e.text.as_str()).collect()
    }

    #[test]
    fn every_format_reads_the_same_prompts() {
        let want = ["a red cube", "two cats, \"sleeping\"", "a tree"];
        let txt = file("p.txt", "# comment\na red cube\n\ntwo cats, \"sleeping\"\n  a tree  \n");
        let jsonl = file(
            "p.jsonl",
            "\"a red cube\"\n{\"prompt\": \"two cats, \\\"sleeping\\\"\", \"id\": 7}\n\n{\"id\": \"t\", \"prompt\": \"a tree\"}\n",
        );
        let csv = file("p.csv", "id,prompt,category\n1,a red cube,x\n2,\"two cats, \"\"sleeping\"\"\",y\n3,a tree,z\n");
        let yaml = file("p.yaml", "- a red cube\n- prompt: 'two cats, \"sleeping\"'\n  id: 2\n- {prompt: a tree}\n");
        let nested = file("n.yml", "animals:\n  - a red cube\n  - two cats, \"sleeping\"\nplants:\n  - a tree\n");
        let keyed = file("k.yaml", "prompts:\n  - a red cube\n  - two cats, \"sleeping\"\n  - a tree\n");
        for p in [&txt, &jsonl, &csv, &yaml, &nested, &keyed] {
            let got = read_prompt_file(p, None).unwrap();
            assert_eq!(texts(&got), want, "{}", p.display());
        }
        let ids: Vec<String> = read_prompt_file(&csv, None).unwrap().into_iter().map(|e| e.id).collect();
        assert_eq!(ids, ["1", "2", "3"]);
        let ids: Vec<String> = read_prompt_file(&jsonl, None).unwrap().into_iter().map(|e| e.id).collect();
        assert_eq!(ids, ["a red cube", "7", "t"]);
        // A named column.
        let caption = file("c.csv", "caption,prompt\nfrom caption,from prompt\n");
        assert_eq!(texts(&read_prompt_file(&caption, Some("caption")).unwrap()), ["from caption"]);
        assert_eq!(texts(&read_prompt_file(&caption, None).unwrap()), ["from prompt"]);
    }

    #[test]
    fn bad_files_name_the_file_and_the_place() {
        let cases = [
            ("empty.txt", "\n\n# nothing\n", "no prompt"),
            ("bad.jsonl", "\"ok\"\n{not json\n", "line 2"),
            ("num.jsonl", "42\n", "expected a string or an object"),
            ("nocol.jsonl", "{\"title\": \"x\"}\n", "without a field"),
            ("nocol.csv", "title\nx\n", "has no a field"),
            ("ragged.csv", "prompt,id\na,1\nb\n", "row 3"),
            ("bad.yaml", "- [unclosed\n", "YAML"),
            ("scalar.yaml", "just a string\n", "expected a list"),
            ("nested.yaml", "- [a, b]\n", "entry 1"),
            ("emptyprompt.csv", "prompt\n\"\"\n", "is empty"),
        ];
        for (name, text, needle) in cases {
            let err = read_prompt_file(file(name, text), None).unwrap_err().to_string();
            assert!(err.contains(name) && err.contains(needle), "{name}: {err}");
        }
        let err = read_prompt_file(std::env::temp_dir(), None).unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");
        let bin = file("bin.txt", "");
        std::fs::write(&bin, [0xff, 0xfe, 0x00]).unwrap();
        assert!(read_prompt_file(&bin, None).unwrap_err().to_string().contains("UTF-8"));
    }
}
