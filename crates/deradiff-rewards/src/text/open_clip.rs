//! open_clip's tokenizer (`SimpleTokenizer` + `tokenize`, as HPS v2's vendored copy
//! `hpsv2/src/open_clip/tokenizer.py` has it), for HPS v2 / v2.1.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use deradiff_sd::fs::{check_path, read_text, Kind};
use deradiff_sd::{Error, Result};

use super::ftfy::fix_text;
use super::html::html_unescape;

/// The merges open_clip reads from its BPE file: `lines[1 : 49152 − 256 − 2 + 1]`.
const MAX_MERGES: usize = 49152 - 256 - 2;

/// open_clip's special tokens, recognised in the text as written.
const SOT: &str = "<start_of_text>";
const EOT: &str = "<end_of_text>";

/// open_clip's tokenizer, exactly as HPS v2 tokenizes prompts:
///
/// 1. `basic_clean`: [`fix_text`] (ftfy), Python's `html.unescape` twice ([`html_unescape`]),
///    strip (Python's `str.strip`: its whitespace includes U+001C–U+001F);
/// 2. `whitespace_clean`: runs of Unicode white space (the `regex` module's `\s`) become one
///    space, strip; then Python's `str.lower`;
/// 3. its split pattern (`<start_of_text>`, `<end_of_text>`, contractions — matched ignoring case,
///    so `ſ` counts as `s` —, letter runs, single digits, other runs; U+0345, which the pattern
///    under `re.IGNORECASE` matches nowhere, is dropped), each piece's UTF-8 bytes mapped to
///    CLIP's byte alphabet and merged by its BPE (the literal texts `<start_of_text>` and
///    `<end_of_text>` are the special ids, as open_clip's cache makes them);
/// 4. `tokenize(text, 77)`: `[sot] tokens… [eot]`, cut to the context with the end token kept
///    as the last id (a long prompt loses its tail, never its end token), zero-padded.
///
/// Not a transformers `CLIPTokenizer`: that one normalises with NFC only (no ftfy, no HTML
/// unescaping) and cuts differently; on the fixture's 640 hostile prompts the two differ on 358.
pub struct OpenClipTokenizer {
    encoder: HashMap<String, u32>,
    ranks: HashMap<(String, String), usize>,
    byte_encoder: [char; 256],
    sot: u32,
    eot: u32,
    context_length: usize,
    source: PathBuf,
}

impl std::fmt::Debug for OpenClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenClipTokenizer")
            .field("source", &self.source)
            .field("vocab", &self.encoder.len())
            .field("context_length", &self.context_length)
            .finish_non_exhaustive()
    }
}

/// CLIP's `bytes_to_unicode`: printable bytes as themselves, the others from U+0100 on.
fn bytes_to_unicode() -> [char; 256] {
    let mut out = ['\0'; 256];
    let printable = |b: u32| (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
    let mut n = 0;
    for (b, slot) in out.iter_mut().enumerate() {
        let b = b as u32;
        *slot = if printable(b) {
            char::from_u32(b).unwrap_or('\0')
        } else {
            n += 1;
            char::from_u32(255 + n).unwrap_or('\0')
        };
    }
    out
}

/// Python's `str.strip()`: its white space (`str.isspace`) is Unicode's plus U+001C–U+001F.
fn py_strip(s: &str) -> &str {
    s.trim_matches(|c: char| c.is_whitespace() || ('\x1c'..='\x1f').contains(&c))
}

fn whitespace_runs() -> &'static regex::Regex {
    static RE: OnceLock<regex::Regex> = OnceLock::new();
    RE.get_or_init(|| regex::Regex::new(r"\s+").expect("a valid pattern"))
}

fn split_pattern() -> &'static regex::Regex {
    static RE: OnceLock<regex::Regex> = OnceLock::new();
    RE.get_or_init(|| {
        regex::Regex::new(
            r"(?i:<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d)|\p{L}+|\p{N}|[^\s\p{L}\p{N}\x{345}]+",
        )
        .expect("a valid pattern")
    })
}

/// `whitespace_clean(basic_clean(text)).lower()`: the text open_clip's BPE sees.
pub fn open_clip_clean(text: &str) -> String {
    let fixed = fix_text(text);
    let unescaped = html_unescape(&html_unescape(&fixed));
    let spaced = whitespace_runs().replace_all(py_strip(&unescaped), " ").into_owned();
    py_strip(&spaced).to_lowercase()
}

impl OpenClipTokenizer {
    /// From a BPE merges file: open_clip's `bpe_simple_vocab_16e6.txt` (uncompressed; gunzip the
    /// `.gz` open_clip ships) or the `merges.txt` of a Hub CLIP tokenizer folder (e.g.
    /// laion/CLIP-ViT-H-14-laion2B-s32B-b79K's, the same merges with a `#version` line). The
    /// first line is a header, then at most 48894 merges are read (open_clip's slice), blank lines
    /// skipped; the vocabulary is built as open_clip builds it (the 256 byte symbols, the same
    /// with `</w>`, each merge, then `<start_of_text>` and `<end_of_text>`), so the ids are
    /// open_clip's (and those of CLIP's `vocab.json`). `path` may also be a folder holding
    /// `merges.txt`. `context_length` is the text tower's (77).
    pub fn from_file(path: impl AsRef<Path>, context_length: usize) -> Result<Self> {
        let path = path.as_ref();
        let file = if path.is_dir() {
            let merges = path.join("merges.txt");
            check_path(&merges, Kind::File, "BPE merges (merges.txt)", None)?;
            merges
        } else {
            check_path(path, Kind::File, "BPE merges file (merges.txt or bpe_simple_vocab_16e6.txt)", None)?;
            path.to_path_buf()
        };
        if file.extension().is_some_and(|e| e == "gz") {
            return Err(Error::Tokenizer {
                path: file,
                message: "a gzip file: decompress it first (gunzip -k bpe_simple_vocab_16e6.txt.gz)".into(),
            });
        }
        Self::from_merges(&read_text(&file, "BPE merges")?, context_length, &file)
    }

    /// From the text of a merges file (see [`Self::from_file`]; `source` names it in errors).
    pub fn from_merges(text: &str, context_length: usize, source: impl AsRef<Path>) -> Result<Self> {
        let source = source.as_ref().to_path_buf();
        let err = |message: String| Error::Tokenizer { path: source.clone(), message };
        if context_length < 2 {
            return Err(err(format!("context length {context_length}: at least 2 (the begin and end tokens)")));
        }
        let byte_encoder = bytes_to_unicode();
        // `bytes_to_unicode().values()` in its insertion order: the printable bytes, then the rest.
        let printable = |b: &usize| byte_encoder[*b] as usize == *b;
        let order: Vec<char> =
            (0..256).filter(printable).chain((0..256).filter(|b| !printable(b))).map(|b| byte_encoder[b]).collect();
        let mut vocab: Vec<String> = order.iter().map(char::to_string).collect();
        vocab.extend(order.iter().map(|c| format!("{c}</w>")));
        let mut ranks = HashMap::new();
        for (i, line) in text.split('\n').skip(1).take(MAX_MERGES).enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() {
                continue;
            }
            let mut parts = line.split_whitespace();
            match (parts.next(), parts.next(), parts.next()) {
                (Some(a), Some(b), None) => {
                    vocab.push(format!("{a}{b}"));
                    // Python's dict: a repeated merge keeps its last rank.
                    ranks.insert((a.to_string(), b.to_string()), vocab.len() - 513);
                }
                _ => return Err(err(format!("line {}: expected two symbols, got {line:?}", i + 2))),
            }
        }
        vocab.push(SOT.into());
        vocab.push(EOT.into());
        let encoder: HashMap<String, u32> = vocab.into_iter().enumerate().map(|(i, t)| (t, i as u32)).collect();
        let id = |t: &str| encoder.get(t).copied().ok_or_else(|| err(format!("no id for {t}")));
        let (sot, eot) = (id(SOT)?, id(EOT)?);
        Ok(Self { encoder, ranks, byte_encoder, sot, eot, context_length, source })
    }

    /// Ids per prompt (the context length).
    pub fn context_length(&self) -> usize {
        self.context_length
    }

    /// The `<start_of_text>` id.
    pub fn sot_id(&self) -> u32 {
        self.sot
    }

    /// The `<end_of_text>` id (the largest: the text tower pools there).
    pub fn eot_id(&self) -> u32 {
        self.eot
    }

    /// Number of ids in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.encoder.len()
    }

    /// open_clip's `bpe` of one byte-encoded piece.
    fn bpe(&self, token: &str) -> Vec<String> {
        let chars: Vec<char> = token.chars().collect();
        let Some((last, init)) = chars.split_last() else { return Vec::new() };
        let mut word: Vec<String> = init.iter().map(char::to_string).collect();
        word.push(format!("{last}</w>"));
        while word.len() > 1 {
            let best = word
                .windows(2)
                .filter_map(|p| self.ranks.get(&(p[0].clone(), p[1].clone())).map(|&r| (r, p)))
                .min_by_key(|(r, _)| *r)
                .map(|(_, p)| (p[0].clone(), p[1].clone()));
            let Some((first, second)) = best else { break };
            let mut merged = Vec::with_capacity(word.len());
            let mut i = 0;
            while i < word.len() {
                if i + 1 < word.len() && word[i] == first && word[i + 1] == second {
                    merged.push(format!("{first}{second}"));
                    i += 2;
                } else {
                    merged.push(word[i].clone());
                    i += 1;
                }
            }
            word = merged;
        }
        word
    }

    /// The ids of `prompt` without the begin/end tokens, untruncated (`SimpleTokenizer.encode`).
    pub fn tokens(&self, prompt: &str) -> Result<Vec<u32>> {
        let clean = open_clip_clean(prompt);
        let mut ids = Vec::new();
        for m in split_pattern().find_iter(&clean) {
            let piece = m.as_str();
            if piece == SOT || piece == EOT {
                ids.push(if piece == SOT { self.sot } else { self.eot });
                continue;
            }
            let encoded: String = piece.bytes().map(|b| self.byte_encoder[b as usize]).collect();
            for sym in self.bpe(&encoded) {
                let id = self.encoder.get(&sym).copied().ok_or_else(|| Error::Tokenizer {
                    path: self.source.clone(),
                    message: format!("the BPE symbol {sym:?} (prompt {prompt:?}) is not in the vocabulary"),
                })?;
                ids.push(id);
            }
        }
        Ok(ids)
    }

    /// `tokenize(prompt, context_length)`: exactly [`Self::context_length`] ids — `[sot] tokens…
    /// [eot]`, cut to the context with `eot` as the last id when longer, then zeros.
    pub fn encode(&self, prompt: &str) -> Result<Vec<u32>> {
        let mut ids = Vec::with_capacity(self.context_length);
        ids.push(self.sot);
        ids.extend(self.tokens(prompt)?);
        ids.push(self.eot);
        if ids.len() > self.context_length {
            ids.truncate(self.context_length);
            ids[self.context_length - 1] = self.eot;
        }
        ids.resize(self.context_length, 0);
        Ok(ids)
    }

    /// Whether `prompt` is longer than the context (its tail would be cut).
    pub fn is_truncated(&self, prompt: &str) -> Result<bool> {
        Ok(self.tokens(prompt)?.len() + 2 > self.context_length)
    }
}
