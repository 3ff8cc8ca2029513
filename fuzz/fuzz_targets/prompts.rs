//! `deradiff_rewards::parse_prompt_file` on any bytes, as every prompt-file format: the first
//! byte picks the extension and the column, the rest is the file. A successful read must be a
//! prompt list (1 to MAX_PROMPTS prompts, none blank or too long, each id naming one prompt); an
//! error must be a `PromptFile` error. Every few inputs also go through `read_prompt_file` from
//! disk.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use deradiff_rewards::{parse_prompt_file, read_prompt_file, Error, PromptEntry, MAX_PROMPTS, MAX_PROMPT_BYTES};
use libfuzzer_sys::fuzz_target;

const EXTENSIONS: [&str; 9] = ["txt", "jsonl", "csv", "tsv", "yaml", "yml", "json", "ndjson", "xlsx"];
const COLUMNS: [Option<&str>; 4] = [None, Some("prompt"), Some("caption"), Some("id")];

fn dir() -> &'static PathBuf {
    static D: OnceLock<PathBuf> = OnceLock::new();
    D.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("deradiff-fuzz-prompts-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    })
}

fn check(path: &Path, got: Result<Vec<PromptEntry>, Error>) {
    match got {
        Ok(entries) => {
            assert!(!entries.is_empty() && entries.len() <= MAX_PROMPTS, "{}", path.display());
            for e in &entries {
                assert!(!e.text.trim().is_empty(), "a blank prompt");
                assert!(e.text.len() <= MAX_PROMPT_BYTES && e.id.len() <= MAX_PROMPT_BYTES, "too long");
                assert!(!e.id.is_empty(), "an empty id");
            }
            let mut by_id = std::collections::HashMap::new();
            for e in &entries {
                assert_eq!(*by_id.entry(e.id.as_str()).or_insert(e.text.as_str()), e.text.as_str(), "one id, two prompts");
            }
        }
        Err(Error::PromptFile { .. }) => {}
        Err(other) => panic!("{}: not a PromptFile error: {other:?}", path.display()),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else { return };
    let ext = EXTENSIONS[usize::from(selector) % EXTENSIONS.len()];
    let column = COLUMNS[usize::from(selector / 16) % COLUMNS.len()];
    let path = dir().join(format!("prompts.{ext}"));
    check(&path, parse_prompt_file(&path, bytes, column));
    if selector % 8 == 0 {
        std::fs::write(&path, bytes).unwrap();
        check(&path, read_prompt_file(&path, column));
    }
});
