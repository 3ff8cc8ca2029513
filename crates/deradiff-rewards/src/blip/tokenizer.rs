//! BLIP's tokenizer: bert-base-uncased's WordPiece with `[DEC]` and `[ENC]` added as special
//! tokens (models/BLIP/blip.py `init_tokenizer`), through the `tokenizers` crate.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use deradiff_sd::fs::{check_path, probe_path, read_text, Kind};
use deradiff_sd::{parse_tokenizer_json, plain_ids};
use deradiff_sd::{Error, Result};
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::{AddedToken, Tokenizer};

/// BERT's special tokens, then the two BLIP adds (in `init_tokenizer`'s order, so a vocabulary
/// without them gives `[DEC]` the id after its last and `[ENC]` the next, as transformers does).
const SPECIALS: [&str; 7] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "[ENC]"];

/// BLIP's BERT tokenizer with ImageReward's encoding: `[CLS] tokens… [SEP] [PAD]…`, truncated
/// and padded to a fixed length, with the attention mask.
pub struct BertTokenizer {
    inner: Tokenizer,
    source: PathBuf,
    cls: u32,
    sep: u32,
    pad: u32,
}

impl std::fmt::Debug for BertTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BertTokenizer").field("source", &self.source).finish_non_exhaustive()
    }
}

impl BertTokenizer {
    /// Loads `dir/tokenizer.json` if present (transformers' `BertTokenizerFast` file), else
    /// `dir/vocab.txt` (one WordPiece token per line, bert-base-uncased's), built as
    /// transformers' `BertTokenizer` with `do_lower_case` from `tokenizer_config.json` (true when
    /// absent): BERT's normaliser (control characters dropped, CJK characters split, accents
    /// stripped when lowercasing), BERT's pre-tokeniser, WordPiece with `##` and `[UNK]`. BERT's
    /// special tokens and BLIP's `[DEC]`, `[ENC]` are added where missing.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        check_path(dir, Kind::Dir, "BERT tokenizer folder", None)?;
        let err = |m: String| Error::Tokenizer { path: dir.to_path_buf(), message: m };
        let json = dir.join("tokenizer.json");
        let mut inner = if probe_path(&json, Kind::File, "tokenizer", None)? {
            parse_tokenizer_json(&read_text(&json, "tokenizer")?, &json)?
        } else {
            let vocab_path = dir.join("vocab.txt");
            check_path(&vocab_path, Kind::File, "BERT vocabulary vocab.txt (or tokenizer.json)", None)?;
            let text = read_text(&vocab_path, "BERT vocabulary")?;
            // transformers' load_vocab: line i is token i (a repeated token keeps its last line).
            let mut vocab: HashMap<String, u32> = HashMap::new();
            for (i, line) in text.lines().enumerate() {
                let id = u32::try_from(i).map_err(|_| err("the vocabulary has more than 2^32 lines".into()))?;
                vocab.insert(line.to_string(), id);
            }
            if !vocab.contains_key("[UNK]") {
                return Err(err(format!("{} has no `[UNK]` token", vocab_path.display())));
            }
            let lowercase = read_lowercase(&dir.join("tokenizer_config.json"))?;
            let wordpiece = WordPiece::builder()
                .vocab(vocab.into_iter().collect::<tokenizers::models::bpe::Vocab>())
                .unk_token("[UNK]".into())
                .continuing_subword_prefix("##".into())
                .max_input_chars_per_word(100)
                .build()
                .map_err(|e| err(e.to_string()))?;
            let mut tok = Tokenizer::new(wordpiece);
            tok.with_normalizer(Some(BertNormalizer::new(true, true, None, lowercase)))
                .map_err(|e| err(e.to_string()))?;
            tok.with_pre_tokenizer(Some(BertPreTokenizer));
            tok
        };
        let missing: Vec<AddedToken> =
            SPECIALS.iter().filter(|t| !is_added(&inner, t)).map(|t| AddedToken::from(*t, true)).collect();
        inner.add_special_tokens(missing).map_err(|e| err(e.to_string()))?;
        inner.with_truncation(None).map_err(|e| err(e.to_string()))?.with_padding(None);
        let id = |t: &str| inner.token_to_id(t).ok_or_else(|| err(format!("the token `{t}` has no id")));
        let (cls, sep, pad) = (id("[CLS]")?, id("[SEP]")?, id("[PAD]")?);
        Ok(Self { inner, source: dir.to_path_buf(), cls, sep, pad })
    }

    /// The ids of `prompt` without `[CLS]` / `[SEP]`, untruncated.
    pub fn tokens(&self, prompt: &str) -> Result<Vec<u32>> {
        plain_ids(&self.inner, &self.source, prompt)
    }

    /// `[CLS] tokens… [SEP] [PAD]…` — exactly `max_length` ids, the tokens truncated to
    /// `max_length − 2` — and the attention mask (1 up to `[SEP]`, 0 on padding), as
    /// `tokenizer(prompt, padding="max_length", truncation=True, max_length=max_length)` gives
    /// them (ImageReward: 35).
    pub fn encode(&self, prompt: &str, max_length: usize) -> Result<(Vec<u32>, Vec<u32>)> {
        if max_length < 2 {
            return Err(Error::InvalidArgument(format!(
                "BertTokenizer::encode: max_length {max_length} leaves no room for [CLS] and [SEP]"
            )));
        }
        let tokens = self.tokens(prompt)?;
        let keep = tokens.len().min(max_length - 2);
        let mut ids = Vec::with_capacity(max_length);
        ids.push(self.cls);
        ids.extend_from_slice(&tokens[..keep]);
        ids.push(self.sep);
        let mut mask = vec![1u32; ids.len()];
        ids.resize(max_length, self.pad);
        mask.resize(max_length, 0);
        Ok((ids, mask))
    }

    /// The `[PAD]` id.
    pub fn pad_id(&self) -> u32 {
        self.pad
    }
}

/// Whether `token` is an added token (kept whole in text; a vocabulary entry alone would be
/// split by the pre-tokeniser). Adding one that is in the vocabulary keeps its id.
fn is_added(tok: &Tokenizer, token: &str) -> bool {
    tok.get_added_tokens_decoder().values().any(|t| t.content == token)
}

/// `do_lower_case` of a `tokenizer_config.json` (true when the file or the field is absent).
fn read_lowercase(path: &Path) -> Result<bool> {
    if !probe_path(path, Kind::File, "tokenizer config", None)? {
        return Ok(true);
    }
    let text = read_text(path, "tokenizer config")?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::config(path, e.to_string()))?;
    match value.get("do_lower_case") {
        None | Some(serde_json::Value::Null) => Ok(true),
        Some(serde_json::Value::Bool(b)) => Ok(*b),
        Some(v) => Err(Error::config_field(path, "do_lower_case", format!("must be true or false, got {v}"))),
    }
}
