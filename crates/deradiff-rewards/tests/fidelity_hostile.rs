//! The new readers on hostile input: ftfy's port, HTML unescaping and open_clip's tokenizer on
//! arbitrary text and merges files, and PNG decoding into PIL's modes on corrupted files — a
//! result or a typed error, never a panic.

use std::path::Path;

use deradiff_rewards::{fix_text, html_unescape, open_clip_clean, OpenClipTokenizer, PilImage, Resample};
use proptest::prelude::*;

fn fidelity() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deradiff-tune/tests/fixtures/fidelity")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn text_cleaning_takes_any_string(s in "\\PC{0,40}|[&#;a-zA-Z0-9\u{80}-\u{ff}\u{2018}-\u{201f}\u{1b}\\[ ]{0,40}") {
        let fixed = fix_text(&s);
        let _ = html_unescape(&fixed);
        let clean = open_clip_clean(&s);
        prop_assert_eq!(clean.trim(), clean.as_str());
    }

    #[test]
    fn merges_files_are_read_or_refused(text in "[a-z<>/ \n#]{0,200}", prompt in "\\PC{0,30}") {
        if let Ok(tok) = OpenClipTokenizer::from_merges(&text, 77, "merges.txt") {
            // Every symbol BPE can make is in the vocabulary it builds.
            let ids = tok.encode(&prompt).unwrap();
            prop_assert_eq!(ids.len(), 77);
            prop_assert!(ids.iter().all(|&i| (i as usize) < tok.vocab_size()));
        }
    }

    #[test]
    fn corrupted_pngs_decode_or_fail(file in 0usize..34, at in 8usize..400, byte in any::<u8>(), cut in 0usize..2) {
        let dir = fidelity().join("images");
        let mut names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
        names.sort();
        let mut bytes = std::fs::read(&names[file % names.len()]).unwrap();
        let at = at % bytes.len();
        bytes[at] = byte;
        if cut == 1 {
            bytes.truncate(at);
        }
        let tmp = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("fidelity-hostile-{}.png", std::process::id()));
        std::fs::write(&tmp, &bytes).unwrap();
        if let Ok(img) = PilImage::load_png(&tmp) {
            let rgb = img.to_rgb();
            prop_assert_eq!((rgb.width(), rgb.height()), (img.width(), img.height()));
            let _ = img.to_rgb_on_white();
            let small = img.resize(7, 5, Resample::Bicubic).unwrap();
            prop_assert_eq!(small.to_rgb().data().len(), 7 * 5 * 3);
        }
    }
}

#[test]
fn bad_merges_and_files_are_typed_errors() {
    let err = OpenClipTokenizer::from_merges("#version\na b c\n", 77, "m.txt").unwrap_err().to_string();
    assert!(err.contains("expected two symbols"), "{err}");
    let err = OpenClipTokenizer::from_merges("#version\na b\n", 1, "m.txt").unwrap_err().to_string();
    assert!(err.contains("at least 2"), "{err}");
    let gz = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bpe_simple_vocab_16e6.txt.gz");
    std::fs::write(&gz, b"\x1f\x8b").unwrap();
    let err = OpenClipTokenizer::from_file(&gz, 77).unwrap_err().to_string();
    assert!(err.contains("gunzip"), "{err}");
    let err = PilImage::load_png(fidelity().join("prompts.json")).unwrap_err().to_string();
    assert!(err.contains("not a readable PNG"), "{err}");
}
