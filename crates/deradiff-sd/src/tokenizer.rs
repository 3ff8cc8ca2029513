//! The CLIP tokenizer a checkpoint ships in `tokenizer/`.
//!
//! Real SD repositories ship `vocab.json` + `merges.txt` (+ `tokenizer_config.json`,
//! `special_tokens_map.json`) and no `tokenizer.json`; both layouts are read. From vocab and
//! merges the tokenizer is built exactly as transformers' `CLIPTokenizer` builds it: NFC,
//! whitespace runs → one space, lowercase; CLIP's split pattern; byte-level symbols; BPE with the
//! `</w>` end-of-word suffix. Prompts are encoded as diffusers' pipelines do:
//! `[bos] tokens… [eos] [pad]…`, truncated and padded to `model_max_length` (77 for SD).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde_json::Value;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::{Lowercase, Replace, Sequence as NormalizerSequence, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use crate::error::{Error, Result};
use crate::fs::{check_path, probe_path, read_text, Kind};

/// CLIP's pre-tokenizer pattern (openai/CLIP `simple_tokenizer.py`, transformers' `CLIPTokenizer`).
const CLIP_PATTERN: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";
const DEFAULT_BOS: &str = "<|startoftext|>";
const DEFAULT_EOS: &str = "<|endoftext|>";
/// Above this, `model_max_length` is transformers' "unset" sentinel (1e30).
const MAX_SANE_LENGTH: u64 = 1 << 20;

/// A CLIP tokenizer with SD's padding and truncation.
pub struct ClipTokenizer {
    inner: Tokenizer,
    source: PathBuf,
    max_length: usize,
    bos: u32,
    eos: u32,
    pad: u32,
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer")
            .field("source", &self.source)
            .field("max_length", &self.max_length)
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("pad", &self.pad)
            .finish_non_exhaustive()
    }
}

/// A special token as the config files write it: a string or `{"content": …}`.
fn token_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

#[derive(Debug, Clone)]
struct Specials {
    bos: String,
    eos: String,
    pad: String,
    unk: String,
    max_length: Option<usize>,
}

fn read_json_object(path: &Path) -> Result<Option<serde_json::Map<String, Value>>> {
    if !probe_path(path, Kind::File, "tokenizer config", None)? {
        return Ok(None);
    }
    let text = read_text(path, "tokenizer config")?;
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(o)) => Ok(Some(o)),
        Ok(_) => Err(Error::config(path, "expected a JSON object")),
        Err(e) => Err(Error::config(path, e.to_string())),
    }
}

/// Special tokens and length from `tokenizer_config.json`, overridden by
/// `special_tokens_map.json` unless the former lists `added_tokens_decoder` (transformers' rule).
fn read_specials(dir: &Path) -> Result<Specials> {
    let mut s = Specials {
        bos: DEFAULT_BOS.into(),
        eos: DEFAULT_EOS.into(),
        pad: DEFAULT_EOS.into(),
        unk: DEFAULT_EOS.into(),
        max_length: None,
    };
    let apply = |s: &mut Specials, o: &serde_json::Map<String, Value>| {
        for (key, slot) in [("bos_token", &mut s.bos), ("eos_token", &mut s.eos), ("unk_token", &mut s.unk)] {
            if let Some(t) = o.get(key).and_then(token_string) {
                *slot = t;
            }
        }
        if let Some(t) = o.get("pad_token").and_then(token_string) {
            s.pad = t;
        }
    };
    let config = read_json_object(&dir.join("tokenizer_config.json"))?;
    let mut read_map = true;
    if let Some(o) = &config {
        apply(&mut s, o);
        if let Some(n) = o.get("model_max_length").and_then(Value::as_u64) {
            if n > 0 && n <= MAX_SANE_LENGTH {
                s.max_length = Some(n as usize);
            }
        }
        read_map = !o.contains_key("added_tokens_decoder");
    }
    if read_map {
        if let Some(o) = read_json_object(&dir.join("special_tokens_map.json"))? {
            apply(&mut s, &o);
        }
    }
    Ok(s)
}

/// The ids of `prompt` without special tokens; a failure names the tokenizer's `source` and the
/// prompt.
pub fn plain_ids(tokenizer: &Tokenizer, source: &Path, prompt: &str) -> Result<Vec<u32>> {
    let enc = tokenizer
        .encode(prompt, false)
        .map_err(|e| Error::Tokenizer { path: source.to_path_buf(), message: format!("{e} (prompt {prompt:?})") })?;
    Ok(enc.get_ids().to_vec())
}

/// A `tokenizer.json` through the `tokenizers` crate. The text must be JSON first (the crate
/// panics on some malformed documents, e.g. one cut off inside `decoder`); a panic left in the
/// crate's deserializers is caught and reported as an [`Error::Config`] too.
pub fn parse_tokenizer_json(text: &str, path: &Path) -> Result<Tokenizer> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(_)) => {}
        Ok(_) => return Err(Error::config(path, "expected a JSON object (a tokenizers `tokenizer.json`)")),
        Err(e) => return Err(Error::config(path, e.to_string())),
    }
    match std::panic::catch_unwind(|| Tokenizer::from_str(text)) {
        Ok(parsed) => parsed.map_err(|e| Error::config(path, e.to_string())),
        Err(panic) => {
            let why = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("no message");
            Err(Error::config(
                path,
                format!("not a valid tokenizers `tokenizer.json` (the tokenizers crate failed: {why})"),
            ))
        }
    }
}

fn read_vocab(path: &Path) -> Result<Vocab> {
    let text = read_text(path, "tokenizer vocabulary")?;
    let map: HashMap<String, u32> = serde_json::from_str(&text).map_err(|e| Error::config(path, e.to_string()))?;
    Ok(map.into_iter().collect())
}

fn read_merges(path: &Path) -> Result<Vec<(String, String)>> {
    let text = read_text(path, "tokenizer merges")?;
    let mut merges = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.starts_with("#version") || line.trim().is_empty() {
            continue;
        }
        let mut parts = line.split(' ');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(a), Some(b), None) => merges.push((a.to_string(), b.to_string())),
            _ => return Err(Error::config(path, format!("line {}: expected two symbols, got `{line}`", i + 1))),
        }
    }
    Ok(merges)
}

/// transformers' `CLIPTokenizer` pipeline around a BPE model.
fn clip_pipeline(bpe: BPE, specials: &Specials, dir: &Path) -> Result<Tokenizer> {
    let err =
        |e: Box<dyn std::error::Error + Send + Sync>| Error::Tokenizer { path: dir.into(), message: e.to_string() };
    let mut tok = Tokenizer::new(bpe);
    let normalizer = NormalizerSequence::new(vec![
        NFC.into(),
        Replace::new(tokenizers::normalizers::replace::ReplacePattern::Regex(r"\s+".into()), " ").map_err(err)?.into(),
        Lowercase.into(),
    ]);
    tok.with_normalizer(Some(normalizer)).map_err(err)?;
    let split =
        Split::new(SplitPattern::Regex(CLIP_PATTERN.into()), SplitDelimiterBehavior::Removed, true).map_err(err)?;
    tok.with_pre_tokenizer(Some(PreTokenizerSequence::new(vec![
        split.into(),
        ByteLevel::new(false, true, true).into(),
    ])));
    let mut seen = Vec::new();
    for t in [&specials.bos, &specials.eos, &specials.unk, &specials.pad] {
        if !seen.contains(t) {
            seen.push(t.clone());
        }
    }
    tok.add_special_tokens(seen.iter().map(|t| AddedToken::from(t.clone(), true))).map_err(err)?;
    Ok(tok)
}

impl ClipTokenizer {
    /// Loads `dir/tokenizer.json` if present, else `dir/vocab.json` + `dir/merges.txt`; special
    /// tokens and `model_max_length` come from `tokenizer_config.json` /
    /// `special_tokens_map.json` (CLIP's defaults otherwise: `<|startoftext|>`, `<|endoftext|>`
    /// also as padding, 77 tokens).
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        check_path(dir, Kind::Dir, "tokenizer directory", None)?;
        let specials = read_specials(dir)?;
        let json = dir.join("tokenizer.json");
        let mut inner = if probe_path(&json, Kind::File, "tokenizer", None)? {
            let text = read_text(&json, "tokenizer")?;
            parse_tokenizer_json(&text, &json)?
        } else {
            let vocab_path = dir.join("vocab.json");
            let merges_path = dir.join("merges.txt");
            for (p, what) in [(&vocab_path, "tokenizer vocabulary"), (&merges_path, "tokenizer merges")] {
                check_path(p, Kind::File, &format!("{what} (or tokenizer.json)"), None)?;
            }
            let bpe = BPE::builder()
                .vocab_and_merges(read_vocab(&vocab_path)?, read_merges(&merges_path)?)
                .continuing_subword_prefix(String::new())
                .end_of_word_suffix("</w>".into())
                .unk_token(specials.unk.clone())
                .fuse_unk(false)
                .build()
                .map_err(|e| Error::Tokenizer { path: dir.to_path_buf(), message: e.to_string() })?;
            clip_pipeline(bpe, &specials, dir)?
        };
        // Truncation and padding are done here, the SD way; a tokenizer.json may carry its own.
        inner
            .with_truncation(None)
            .map_err(|e| Error::Tokenizer { path: dir.to_path_buf(), message: e.to_string() })?
            .with_padding(None);
        let id = |t: &str, what: &str| {
            inner.token_to_id(t).ok_or_else(|| Error::Tokenizer {
                path: dir.to_path_buf(),
                message: format!("the {what} token `{t}` is not in the vocabulary"),
            })
        };
        let bos = id(&specials.bos, "bos")?;
        let eos = id(&specials.eos, "eos")?;
        let pad = id(&specials.pad, "pad")?;
        let max_length = specials.max_length.unwrap_or(77);
        if max_length < 2 {
            return Err(Error::config_field(
                dir.join("tokenizer_config.json"),
                "model_max_length",
                format!("must be at least 2 (room for the begin and end tokens), got {max_length}"),
            ));
        }
        Ok(Self { inner, source: dir.to_path_buf(), max_length, bos, eos, pad })
    }

    /// Number of ids per prompt (`model_max_length`).
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// The begin-of-text id.
    pub fn bos_id(&self) -> u32 {
        self.bos
    }

    /// The end-of-text id.
    pub fn eos_id(&self) -> u32 {
        self.eos
    }

    /// The padding id (`<|endoftext|>` for SD 1.x, `!` for SD 2.x).
    pub fn pad_id(&self) -> u32 {
        self.pad
    }

    /// The ids of `prompt` without begin/end tokens, untruncated.
    pub fn tokens(&self, prompt: &str) -> Result<Vec<u32>> {
        plain_ids(&self.inner, &self.source, prompt)
    }

    /// `[bos] tokens… [eos] [pad]…`: exactly [`Self::max_length`] ids, the tokens truncated to
    /// `max_length − 2` (as diffusers' `tokenizer(..., padding="max_length", truncation=True)`).
    pub fn encode(&self, prompt: &str) -> Result<Vec<u32>> {
        let tokens = self.tokens(prompt)?;
        let keep = tokens.len().min(self.max_length - 2);
        let mut ids = Vec::with_capacity(self.max_length);
        ids.push(self.bos);
        ids.extend_from_slice(&tokens[..keep]);
        ids.push(self.eos);
        ids.resize(self.max_length, self.pad);
        Ok(ids)
    }

    /// Whether `prompt` is longer than the model sees (its tail would be dropped).
    pub fn is_truncated(&self, prompt: &str) -> Result<bool> {
        Ok(self.tokens(prompt)?.len() > self.max_length - 2)
    }
}
