//! BLIP's BERT tokenizer on arbitrary text (control characters, combining marks, CJK, emoji,
//! literal special tokens, very long words): always `max_length` ids inside the vocabulary,
//! `[CLS]` first, a mask of ones then zeros — never a panic. (Its ids against transformers' are
//! checked in `tests/image_reward.rs`.)

use std::path::Path;

use deradiff_rewards::BertTokenizer;
use proptest::prelude::*;

fn tokenizer() -> BertTokenizer {
    BertTokenizer::from_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../deradiff-tune/tests/fixtures/image_reward"))
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn any_text_gives_a_full_row_of_known_ids(
        text in prop_oneof![
            any::<String>(),
            "[\\PC\\pC ]{0,200}",
            "(\\[CLS\\]|\\[SEP\\]|\\[PAD\\]|\\[DEC\\]|\\[ENC\\]|\\[MASK\\]|[a-z]{1,150}| |中|é|\u{301}|\u{0}){0,40}",
        ],
        max_length in 2usize..64,
    ) {
        let tok = tokenizer();
        let (ids, mask) = tok.encode(&text, max_length).unwrap();
        prop_assert_eq!(ids.len(), max_length);
        prop_assert_eq!(mask.len(), max_length);
        let real = mask.iter().take_while(|&&m| m == 1).count();
        prop_assert!(real >= 2 && mask[real..].iter().all(|&m| m == 0));
        // 136 ids: the fixture vocabulary's 134 and [DEC], [ENC].
        prop_assert!(ids.iter().all(|&i| i < 136), "{:?}", ids);
        prop_assert!(ids[real..].iter().all(|&i| i == tok.pad_id()));
    }
}

#[test]
fn too_short_a_length_is_an_error() {
    let err = tokenizer().encode("a cat", 1).unwrap_err().to_string();
    assert!(err.contains("[CLS] and [SEP]"), "{err}");
}
