//! Every reward's tokenizer against its reference package on 640 generated hostile prompts
//! (HTML entities, typographic quotes, full-width forms, emoji, combining marks, control
//! characters, mojibake, very long prompts, punctuation only), and the ftfy port against
//! `ftfy.fix_text` on a 3000-string corpus: `scripts/gen_fidelity_text_fixtures.py`.

use std::path::{Path, PathBuf};

use deradiff_rewards::{fix_text, open_clip_clean, BertTokenizer, OpenClipTokenizer};
use deradiff_sd::ClipTokenizer;
use serde_json::Value;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deradiff-tune/tests/fixtures/fidelity")
}

fn json(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join(name)).unwrap()).unwrap()
}

fn prompts() -> Vec<String> {
    json("prompts.json").as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect()
}

/// The reference ids of `key`, each padded to `len` with `pad`.
fn reference(key: &str, len: usize, pad: u32) -> Vec<Vec<u32>> {
    json("ids.json")[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            let mut ids: Vec<u32> = row.as_str().unwrap().split(' ').map(|x| x.parse().unwrap()).collect();
            ids.resize(len, pad);
            ids
        })
        .collect()
}

/// Compares every prompt's ids; the message lists the first mismatches.
fn check(name: &str, want: &[Vec<u32>], got: impl Fn(&str) -> Vec<u32>) {
    let prompts = prompts();
    assert!(prompts.len() >= 500 && want.len() == prompts.len());
    let bad: Vec<String> = prompts
        .iter()
        .zip(want)
        .filter_map(|(p, w)| {
            let g = got(p);
            (&g != w).then(|| format!("{p:?}: got {g:?}, want {w:?}"))
        })
        .collect();
    assert!(
        bad.is_empty(),
        "{name}: {} of {} prompts differ; first: {:#?}",
        bad.len(),
        prompts.len(),
        &bad[..bad.len().min(5)]
    );
}

#[test]
fn ftfy_port_matches_ftfy_on_the_corpus() {
    let corpus = json("ftfy.json");
    let pairs = corpus.as_array().unwrap();
    assert!(pairs.len() >= 3000);
    let mut changed = 0;
    let bad: Vec<String> = pairs
        .iter()
        .filter_map(|pair| {
            let (input, want) = (pair[0].as_str().unwrap(), pair[1].as_str().unwrap());
            changed += usize::from(input != want);
            let got = fix_text(input);
            (got != want).then(|| format!("{input:?}: got {got:?}, want {want:?}"))
        })
        .collect();
    assert!(changed > 1000, "the corpus must exercise the fixers");
    assert!(bad.is_empty(), "{} of {} differ; first: {:#?}", bad.len(), pairs.len(), &bad[..bad.len().min(8)]);
}

#[test]
fn open_clip_tokenizer_matches_hpsv2() {
    let tok = OpenClipTokenizer::from_file(dir().join("bpe"), 77).unwrap();
    let clean = json("clean.json");
    for (p, want) in prompts().iter().zip(clean.as_array().unwrap()) {
        assert_eq!(open_clip_clean(p), want.as_str().unwrap(), "cleaning {p:?}");
    }
    check("open_clip", &reference("open_clip", 77, 0), |p| tok.encode(p).unwrap());
    // The same merges read from a file path, as open_clip's own BPE file is.
    let file = OpenClipTokenizer::from_file(dir().join("bpe/merges.txt"), 77).unwrap();
    assert_eq!(file.encode("a photo of a cat").unwrap(), tok.encode("a photo of a cat").unwrap());
    assert_eq!((tok.sot_id(), tok.eot_id()), (2512, 2513));
}

#[test]
fn clip_tokenizers_match_transformers() {
    for (folder, key) in [("bpe", "hf-bpe"), ("bpe-json", "hf-bpe-json"), ("bpe-bang", "hf-bpe-bang")] {
        let tok = ClipTokenizer::from_dir(dir().join(folder)).unwrap();
        let pad = json("ids.json")[format!("{key}-pad")].as_u64().unwrap() as u32;
        assert_eq!(tok.pad_id(), pad, "{folder}");
        check(key, &reference(key, 77, pad), |p| tok.encode(p).unwrap());
    }
}

#[test]
fn bert_tokenizer_matches_image_reward() {
    let tok = BertTokenizer::from_dir(dir().join("bert")).unwrap();
    check("bert", &reference("bert", 35, tok.pad_id()), |p| tok.encode(p, 35).unwrap().0);
}
