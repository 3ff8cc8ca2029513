//! `deradiff_sd::ClipTokenizer::from_dir` on fuzzed tokenizer files, then encoding prompts.
//!
//! The input is split at NUL bytes (no valid JSON file contains one):
//! * 4 or more parts: `vocab.json` NUL `merges.txt` NUL `tokenizer_config.json` NUL
//!   `special_tokens_map.json` [NUL prompt] — the vocab + merges layout of real SD repositories;
//! * fewer: `tokenizer.json` [NUL `tokenizer_config.json` [NUL prompt]].
//!
//! An empty config part means that file is absent. Each built tokenizer encodes the prompt and
//! two fixed ones; `encode` must give exactly `max_length` ids starting with bos.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use deradiff_sd::ClipTokenizer;
use libfuzzer_sys::fuzz_target;

const FILES: [&str; 5] =
    ["tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"];

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
    let Ok(tok) = ClipTokenizer::from_dir(dir) else { return };
    let n = tok.max_length();
    for p in [prompt.as_ref(), "", "A photo of an astronaut riding a horse, <|endoftext|> 4k!"] {
        if let Ok(ids) = tok.encode(p) {
            assert_eq!(ids.len(), n, "encode gave {} ids, max_length is {n}", ids.len());
            assert_eq!(ids[0], tok.bos_id());
        }
        let _ = tok.is_truncated(p);
    }
});
