//! Prompt files in the formats prompt sets ship in: plain text, JSON lines, CSV / TSV with a
//! column name, YAML and JSON documents (the official DeRaDiff prompt list is a YAML file).
//!
//! | extension | what is read |
//! |---|---|
//! | `.txt`, `.text`, `.prompts`, or none | one prompt per non-empty line (a line starting with `#` is a comment) |
//! | `.jsonl`, `.ndjson` | one JSON value per non-empty line: a string, or an object whose `column` field is the prompt |
//! | `.csv`, `.tsv` | a header row, then the `column` of every row (RFC 4180 quoting in `.csv`; tab-separated, unquoted `.tsv`) |
//! | `.yaml`, `.yml`, `.json` | one document: a list of strings or of mappings with the `column` key; or a mapping whose `prompts` key (or whose only key) holds such a list; or a mapping of categories to such lists, read in order |
//!
//! Any other extension is an error: a file's format is never guessed.
//!
//! Every format:
//!
//! * is read only from a regular file (never a FIFO or a device) of at most
//!   [`MAX_PROMPT_FILE_BYTES`];
//! * is UTF-8 text: a leading UTF-8 byte-order mark is skipped, UTF-16 or UTF-32 text (their
//!   byte-order marks) and NUL bytes are errors;
//! * ends lines with LF, CRLF or a lone CR (classic Mac OS), all alike;
//! * takes the prompt from `column` (a JSON field, CSV column or YAML key), by default the first
//!   of `prompt`, `caption`, `text` present (any letter case). A column named explicitly must be
//!   used: it is an error for a plain-text file or for an entry that is a bare string;
//! * takes an entry's `id` (a string or an integer; empty means none), else its text, as its id:
//!   two different prompts with one id are an error (the same prompt twice is kept twice);
//! * holds 1 to [`MAX_PROMPTS`] prompts, none blank, each (and each id) at most
//!   [`MAX_PROMPT_BYTES`] bytes; a YAML file holds one document of at most [`MAX_YAML_NODES`]
//!   nodes once its aliases are expanded (an alias bomb is refused before it is built), nested at
//!   most [`MAX_YAML_DEPTH`] deep.
//!
//! Every error is an [`Error::PromptFile`] naming the file, the line (or the YAML entry) and
//! what was expected.

mod tree;

use std::collections::HashMap;
use std::path::Path;

use crate::error::{Error, Result};

pub use tree::{MAX_YAML_DEPTH, MAX_YAML_NODES};

/// Most prompts one file may hold, and one sweep takes (deradiff-tune's bound on a prompt set).
pub const MAX_PROMPTS: usize = 1_000_000;

/// The largest prompt file read: 256 MiB (a million prompts of 200 bytes with their ids and
/// JSON syntax). A larger file is refused before it is read.
pub const MAX_PROMPT_FILE_BYTES: u64 = 256 << 20;

/// The longest prompt (and id), in bytes: 16 KiB. Text encoders read 77 tokens (a few hundred
/// bytes); a longer entry is a file that is not a prompt list (a line of a binary or a whole
/// document on one line).
pub const MAX_PROMPT_BYTES: usize = 16 << 10;

/// One prompt read from a file: its id and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptEntry {
    /// The file's `id` for it, or the text itself.
    pub id: String,
    /// The prompt.
    pub text: String,
}

/// The column names tried when none is given (any letter case).
const DEFAULT_COLUMNS: [&str; 3] = ["prompt", "caption", "text"];

pub(crate) fn bad(path: &Path, where_: impl std::fmt::Display, what: impl std::fmt::Display) -> Error {
    Error::PromptFile { path: path.to_path_buf(), detail: format!("{where_}: {what}") }
}

/// The formats, by extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Text,
    JsonLines,
    Csv,
    Tsv,
    Yaml,
    Json,
}

fn format_of(path: &Path) -> Result<Format> {
    let ext = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase());
    Ok(match ext.as_deref() {
        None | Some("txt" | "text" | "prompts") => Format::Text,
        Some("jsonl" | "ndjson") => Format::JsonLines,
        Some("csv") => Format::Csv,
        Some("tsv") => Format::Tsv,
        Some("yaml" | "yml") => Format::Yaml,
        Some("json") => Format::Json,
        Some(other) => {
            return Err(bad(
                path,
                "the file name",
                format!(
                    ".{other} is not a prompt file format: name it .txt (one prompt per line), .jsonl, .csv, .tsv, \
                     .yaml / .yml or .json after what it holds"
                ),
            ))
        }
    })
}

/// Reads a prompt file (see the module docs for the formats and the rules). `column` names the
/// field or CSV column holding the prompt (default: `prompt`, `caption` or `text`, the first
/// present). Anything that is not a prompt list is an [`Error::PromptFile`] naming the file and
/// where (a path that is not a regular file included); a file that cannot be read is an
/// [`Error::Io`].
pub fn read_prompt_file(path: impl AsRef<Path>, column: Option<&str>) -> Result<Vec<PromptEntry>> {
    let path = path.as_ref();
    format_of(path)?;
    let bytes = deradiff_core::io::read_regular_file(path, MAX_PROMPT_FILE_BYTES).map_err(|e| match e.kind() {
        std::io::ErrorKind::FileTooLarge => bad(
            path,
            "the file",
            format!(
                "is larger than {} MiB, the most a prompt file may hold (MAX_PROMPT_FILE_BYTES): split it",
                MAX_PROMPT_FILE_BYTES >> 20
            ),
        ),
        std::io::ErrorKind::InvalidInput => bad(path, "the path", format!("{e}: give a prompt file")),
        _ => Error::io(path)(e),
    })?;
    parse_prompt_file(path, &bytes, column)
}

/// Parses the bytes of a prompt file as [`read_prompt_file`] does, the format taken from the
/// extension of `path` (which names the file in errors and is not read).
pub fn parse_prompt_file(path: &Path, bytes: &[u8], column: Option<&str>) -> Result<Vec<PromptEntry>> {
    let format = format_of(path)?;
    let text = decode(path, bytes)?;
    let column = column.map(str::trim);
    if column == Some("") {
        return Err(bad(path, "the column", "is empty: name the field or column that holds the prompt"));
    }
    let entries = match format {
        Format::Text => read_txt(path, text, column)?,
        Format::JsonLines => read_jsonl(path, text, column)?,
        Format::Csv => read_csv(path, text, column, b',')?,
        Format::Tsv => read_csv(path, text, column, b'\t')?,
        Format::Yaml => tree::read_yaml(path, text, column)?,
        Format::Json => tree::read_json(path, text, column)?,
    };
    check_entries(path, &entries)?;
    Ok(entries)
}

/// The file's text: UTF-8 without its byte-order mark; UTF-16 / UTF-32 and NUL bytes refused.
fn decode<'a>(path: &Path, bytes: &'a [u8]) -> Result<&'a str> {
    for (bom, name) in [
        (&[0x00, 0x00, 0xfe, 0xff][..], "UTF-32"),
        (&[0xff, 0xfe, 0x00, 0x00][..], "UTF-32"),
        (&[0xfe, 0xff][..], "UTF-16"),
        (&[0xff, 0xfe][..], "UTF-16"),
    ] {
        if bytes.starts_with(bom) {
            return Err(bad(
                path,
                "the file",
                format!("is {name} text (it starts with a {name} byte-order mark): save it as UTF-8"),
            ));
        }
    }
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    // `contains` finds a byte with memchr; the offset is looked for only when there is one.
    if let Some(at) = bytes.contains(&0).then(|| bytes.iter().position(|&b| b == 0)).flatten() {
        return Err(bad(path, "the file", format!("holds a NUL byte at offset {at}: it is not a text file")));
    }
    std::str::from_utf8(bytes).map_err(|e| bad(path, "the file", format!("is not UTF-8 text ({e})")))
}

/// The lines of `text` with their numbers (from 1): LF, CRLF and a lone CR each end a line.
fn lines(text: &str) -> Lines<'_> {
    Lines { rest: Some(text).filter(|t| !t.is_empty()), any_cr: text.contains('\r'), number: 0 }
}

/// The iterator of [`lines`].
struct Lines<'a> {
    rest: Option<&'a str>,
    /// Whether the text has a CR at all: without one, each line end is found with memchr.
    any_cr: bool,
    number: usize,
}

impl<'a> Iterator for Lines<'a> {
    type Item = (usize, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        let t = self.rest?;
        self.number += 1;
        let end = if self.any_cr { t.find(['\n', '\r']) } else { t.find('\n') };
        match end {
            Some(i) => {
                let skip = if t[i..].starts_with("\r\n") { 2 } else { 1 };
                self.rest = Some(&t[i + skip..]).filter(|r| !r.is_empty());
                Some((self.number, &t[..i]))
            }
            None => {
                self.rest = None;
                Some((self.number, t))
            }
        }
    }
}

/// Errors once `count` entries exceed [`MAX_PROMPTS`] (checked while a file is read, so that a
/// huge one stops early).
pub(crate) fn check_count(path: &Path, count: usize) -> Result<()> {
    if count > MAX_PROMPTS {
        return Err(bad(path, "the file", format!("holds more than {MAX_PROMPTS} prompts (MAX_PROMPTS): split it")));
    }
    Ok(())
}

/// A prompt and its id (the text when absent or empty).
pub(crate) fn entry(id: Option<String>, text: String) -> PromptEntry {
    PromptEntry { id: id.filter(|i| !i.is_empty()).unwrap_or_else(|| text.clone()), text }
}

/// The column to read from an object with these keys: `column` exactly, else the first default
/// name present in any letter case (the key as the object spells it).
pub(crate) fn pick_column<'k>(
    mut keys: impl Iterator<Item = &'k str> + Clone,
    column: Option<&str>,
) -> Option<&'k str> {
    match column {
        Some(c) => keys.find(|k| *k == c),
        None => DEFAULT_COLUMNS.iter().find_map(|d| keys.clone().find(|k| k.trim().eq_ignore_ascii_case(d))),
    }
}

pub(crate) fn wanted(column: Option<&str>) -> String {
    match column {
        Some(c) => format!("a field {c:?}"),
        None => "a field \"prompt\", \"caption\" or \"text\" (or name one with --prompt-column)".into(),
    }
}

/// The error for a bare string entry when a column was named (the column would be ignored).
pub(crate) fn bare_string(path: &Path, at: &str, column: &str) -> Error {
    bad(
        path,
        at,
        format!(
            "a bare string, but the prompt column {column:?} was named (--prompt-column): give the entries as objects \
             with that field, or leave the column out"
        ),
    )
}

fn read_txt(path: &Path, text: &str, column: Option<&str>) -> Result<Vec<PromptEntry>> {
    if let Some(c) = column {
        return Err(bad(
            path,
            "the file",
            format!(
                "is plain text (one prompt per line), which has no columns, but the prompt column {c:?} was named \
                 (--prompt-column): leave it out, or give a .jsonl, .csv, .tsv, .yaml or .json file"
            ),
        ));
    }
    let mut out = Vec::new();
    for (_, line) in lines(text) {
        let line = line.trim();
        if !line.is_empty() && !line.starts_with('#') {
            out.push(entry(None, line.to_string()));
            check_count(path, out.len())?;
        }
    }
    Ok(out)
}

/// An `id` value of a JSON object: a string or an integer (`null`: none).
fn json_id(path: &Path, at: &str, v: &serde_json::Value) -> Result<Option<String>> {
    match v {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::String(s) => Ok(Some(s.clone())),
        serde_json::Value::Number(n) if n.is_i64() || n.is_u64() => Ok(Some(n.to_string())),
        other => Err(bad(path, at, format!("the id {other} is not a string or an integer"))),
    }
}

fn read_jsonl(path: &Path, text: &str, column: Option<&str>) -> Result<Vec<PromptEntry>> {
    let mut out = Vec::new();
    for (n, line) in lines(text) {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let at = format!("line {n}");
        let value: serde_json::Value =
            serde_json::from_str(line).map_err(|e| bad(path, &at, format!("not JSON ({e})")))?;
        match value {
            serde_json::Value::String(_) if column.is_some() => {
                return Err(bare_string(path, &at, column.unwrap_or_default()))
            }
            serde_json::Value::String(s) => out.push(entry(None, s)),
            serde_json::Value::Object(o) => {
                let c = pick_column(o.keys().map(String::as_str), column)
                    .ok_or_else(|| bad(path, &at, format!("an object without {}", wanted(column))))?;
                let text = o[c].as_str().ok_or_else(|| bad(path, &at, format!("{c:?} is not a string")))?;
                let id = o.get("id").map(|v| json_id(path, &at, v)).transpose()?.flatten();
                out.push(entry(id, text.to_string()));
            }
            other => return Err(bad(path, &at, format!("expected a string or an object, got {other}"))),
        }
        check_count(path, out.len())?;
    }
    Ok(out)
}

fn read_csv(path: &Path, text: &str, column: Option<&str>, delimiter: u8) -> Result<Vec<PromptEntry>> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(false)
        .delimiter(delimiter)
        .quoting(delimiter != b'\t')
        .from_reader(text.as_bytes());
    let headers = reader.headers().map_err(|e| bad(path, "the header row", e))?.clone();
    let c = pick_column(headers.iter(), column).ok_or_else(|| {
        bad(path, "the header row", format!("{:?} has no {}", headers.iter().collect::<Vec<_>>(), wanted(column)))
    })?;
    let find = |name: &str| headers.iter().position(|h| h == name);
    let (col, id_col) = (find(c).unwrap_or_default(), headers.iter().position(|h| h.trim() == "id"));
    let mut out = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| {
            let at = e.position().map_or_else(|| "a row".to_string(), |p| format!("line {}", p.line()));
            bad(path, at, e)
        })?;
        let text = record.get(col).unwrap_or_default().to_string();
        let id = id_col.and_then(|j| record.get(j)).map(str::to_string);
        out.push(entry(id, text));
        check_count(path, out.len())?;
    }
    Ok(out)
}

/// Every entry: at least one, none blank or longer than [`MAX_PROMPT_BYTES`], no id naming two
/// different prompts.
fn check_entries(path: &Path, entries: &[PromptEntry]) -> Result<()> {
    if entries.is_empty() {
        return Err(bad(path, "the file", "holds no prompt"));
    }
    check_count(path, entries.len())?;
    let mut ids: HashMap<&str, usize> = HashMap::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        let at = format!("prompt #{}", i + 1);
        if e.text.trim().is_empty() {
            return Err(bad(path, at, "is empty"));
        }
        for (what, s) in [("prompt", &e.text), ("id", &e.id)] {
            if s.len() > MAX_PROMPT_BYTES {
                return Err(bad(
                    path,
                    &at,
                    format!(
                        "its {what} is {} bytes long, more than {MAX_PROMPT_BYTES} (MAX_PROMPT_BYTES): is this a prompt \
                         list?",
                        s.len()
                    ),
                ));
            }
        }
        if let Some(&j) = ids.get(e.id.as_str()) {
            if entries[j].text != e.text {
                return Err(bad(
                    path,
                    &at,
                    format!(
                        "has the id {:?} of prompt #{}, another prompt ({:?} and {:?}): give each prompt its own id",
                        e.id,
                        j + 1,
                        entries[j].text,
                        e.text
                    ),
                ));
            }
        } else {
            ids.insert(&e.id, i);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_end_at_lf_crlf_and_cr() {
        let got: Vec<(usize, &str)> = lines("a\r\nb\rc\n\nd").collect();
        assert_eq!(got, [(1, "a"), (2, "b"), (3, "c"), (4, ""), (5, "d")]);
        let got: Vec<(usize, &str)> = lines("a\nb\n\nd\n").collect();
        assert_eq!(got, [(1, "a"), (2, "b"), (3, ""), (4, "d")]);
        assert_eq!(lines("").count(), 0);
        assert_eq!(lines("\n").collect::<Vec<_>>(), [(1, "")]);
        assert_eq!(lines("x\n").collect::<Vec<_>>(), [(1, "x")]);
        assert_eq!(lines("x\r").collect::<Vec<_>>(), [(1, "x")]);
    }
}
