//! `deradiff_sd::ClipTokenizer::from_dir` and `deradiff_rewards::BertTokenizer::from_dir` (BLIP's,
//! for ImageReward) on fuzzed tokenizer files, then encoding prompts.
//!
//! The input is split at NUL bytes (no valid JSON file contains one):
//! * 4 or more parts: `vocab.json` NUL `merges.txt` NUL `tokenizer_config.json` NUL
//!   `special_tokens_map.json` [NUL prompt] — the vocab + merges layout of real SD repositories
//!   (the first part is also written as BERT's `vocab.txt`);
//! * fewer: `tokenizer.json` [NUL `tokenizer_config.json` [NUL prompt]].
//!
//! An empty config part means that file is absent. Each built tokenizer encodes the prompt and
//! two fixed ones; `encode` must give exactly `max_length` ids starting with bos (CLIP), and
//! 35 ids with a mask of as many entries (BERT).
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use deradiff_rewards::BertTokenizer;
use deradiff_sd::ClipTokenizer;
use libfuzzer_sys::fuzz_target;

const FILES: [&str; 6] =
    ["tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"];

fn dir() -> &'static PathBuf {
    static D: OnceLock<PathBuf> = OnceLock::new();
    D.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("deradiff-fuzz-tokenizer-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    })
}

fuzz_target!(|data: &[u8]| {
    let dir = dir();
    for f in FILES {
        let _ = std::fs::remove_file(dir.join(f));
    }
    let parts: Vec<&[u8]> = data.split(|&b| b == 0).collect();
    let put = |name: &str, bytes: Option<&&[u8]>, optional: bool| {
        if let Some(b) = bytes {
            if !(optional && b.is_empty()) {
                std::fs::write(dir.join(name), b).unwrap();
            }
        }
    };
    let prompt = if parts.len() >= 4 {
        put("vocab.json", parts.first(), false);
        put("vocab.txt", parts.first(), false);
        put("merges.txt", parts.get(1), false);
        put("tokenizer_config.json", parts.get(2), true);
        put("special_tokens_map.json", parts.get(3), true);
        parts.get(4)
    } else {
        // Finding T1 (fuzz/README.md) is fixed: malformed JSON in `decoder` is an error.
        put("tokenizer.json", parts.first(), false);
        put("tokenizer_config.json", parts.get(1), true);
        parts.get(2)
    };
    let prompt = String::from_utf8_lossy(prompt.copied().unwrap_or(b"a red cube on a table"));
    let prompts = [prompt.as_ref(), "", "A photo of an astronaut riding a horse, <|endoftext|> [CLS] 4k!"];
    if let Ok(tok) = ClipTokenizer::from_dir(dir) {
        let n = tok.max_length();
        for p in prompts {
            if let Ok(ids) = tok.encode(p) {
                assert_eq!(ids.len(), n, "encode gave {} ids, max_length is {n}", ids.len());
                assert_eq!(ids[0], tok.bos_id());
            }
            let _ = tok.is_truncated(p);
        }
    }
    if let Ok(tok) = BertTokenizer::from_dir(dir) {
        for p in prompts {
            if let Ok((ids, mask)) = tok.encode(p, 35) {
                assert_eq!((ids.len(), mask.len()), (35, 35), "BERT encode");
            }
        }
    }
});
