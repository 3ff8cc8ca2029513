//! `deradiff_tune::read_results` on the input written to a file, then what `deradiff compare`
//! and the plots do with a results file: per-λ summaries, pairing, agreement statistics.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use deradiff_tune::{agreement, lambda_summaries, pair_rows, read_results, AgreementConfig, PairBy};
use libfuzzer_sys::fuzz_target;

fn path() -> &'static PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("deradiff-fuzz-results-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("results.jsonl")
    })
}

fuzz_target!(|data: &[u8]| {
    let path = path();
    std::fs::write(path, data).unwrap();
    let Ok(file) = read_results(path) else { return };
    assert!(file.rows.len() <= data.len(), "more rows than bytes");
    // Every reward the header names, and every name a row carries.
    let mut names: Vec<&str> = file.header.rewards.iter().map(String::as_str).collect();
    for r in file.rows.iter().take(8) {
        names.extend(r.rewards.iter().take(4).map(|s| s.name.as_str()));
    }
    names.sort_unstable();
    names.dedup();
    for name in names.into_iter().take(8) {
        let _ = lambda_summaries(&file.rows, name);
        for by in [PairBy::LambdaAndPrompt, PairBy::Prompt] {
            if let Ok(pairs) = pair_rows(&file.rows, &file.rows, name, by) {
                let config = AgreementConfig { bootstrap: 16, ..AgreementConfig::default() };
                let _ = agreement(&pairs.original, &pairs.approx, &config);
            }
        }
    }
});
