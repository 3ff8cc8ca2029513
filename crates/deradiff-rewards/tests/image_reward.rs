//! ImageReward against the `image-reward` package's own code (`scripts/gen_image_reward_fixtures.py`):
//! a tiny random ImageReward model in the published layout (converted by
//! `scripts/convert_to_safetensors.py image-reward`), BLIP's BERT tokenizer, openai/CLIP's
//! torchvision transform, the ViT's image tokens, the text encoder's cross-attended `[CLS]`
//! features and the normalised reward.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use deradiff_rewards::{BertTokenizer, BlipVisionConfig, ImageRewardScore, ImageScorer, MedConfig, Reward};
use deradiff_sd::RgbImage;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deradiff-tune/tests/fixtures/image_reward")
}

/// A fresh folder under the temporary directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("deradiff-image-reward-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn reference() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir().join("reference.safetensors"), &Device::Cpu).unwrap()
}

fn meta() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join("reference.json")).unwrap()).unwrap()
}

fn max_err(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    let d = (a.to_dtype(DType::F64).unwrap() - b.to_dtype(DType::F64).unwrap()).unwrap();
    d.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap()
}

fn images(r: &HashMap<String, Tensor>) -> Vec<RgbImage> {
    (0..)
        .map_while(|i| r.get(&format!("image{i}")))
        .map(|t| {
            let (h, w, _) = t.dims3().unwrap();
            RgbImage::new(w, h, t.flatten_all().unwrap().to_vec1::<u8>().unwrap()).unwrap()
        })
        .collect()
}

fn prompts() -> Vec<String> {
    meta()["prompts"].as_array().unwrap().iter().map(|p| p.as_str().unwrap().to_string()).collect()
}

/// The prompt of each image, as the generator paired them.
fn prompt_of_images() -> Vec<String> {
    let all = prompts();
    meta()["prompt_of_image"].as_array().unwrap().iter().map(|i| all[i.as_u64().unwrap() as usize].clone()).collect()
}

fn u32_rows(t: &Tensor) -> Vec<Vec<u32>> {
    t.to_dtype(DType::U32).unwrap().to_vec2().unwrap()
}

#[test]
fn bert_tokenizer_gives_blips_ids_from_vocab_txt_and_tokenizer_json() {
    let r = reference();
    let (want_ids, want_mask) = (u32_rows(&r["input_ids"]), u32_rows(&r["attention_mask"]));
    // The fixture folder has tokenizer.json (BertTokenizerFast's, with [DEC] and [ENC]); a folder
    // with only vocab.txt builds the tokenizer as transformers' BertTokenizer + init_tokenizer.
    let only_vocab = Scratch::new("vocab");
    std::fs::copy(dir().join("vocab.txt"), only_vocab.path().join("vocab.txt")).unwrap();
    for tok in [BertTokenizer::from_dir(dir()).unwrap(), BertTokenizer::from_dir(only_vocab.path()).unwrap()] {
        for (i, p) in prompts().iter().enumerate() {
            let (ids, mask) = tok.encode(p, 35).unwrap();
            assert_eq!(ids, want_ids[i], "prompt {p:?}");
            assert_eq!(mask, want_mask[i], "prompt {p:?}");
        }
    }
    // The long prompt is truncated, the empty one is [CLS] [SEP]; [DEC] / [ENC] are whole tokens.
    let lens: Vec<u32> = want_mask.iter().map(|m| m.iter().sum()).collect();
    assert!(lens.contains(&35) && lens.contains(&2), "{lens:?}");
}

#[test]
fn image_reward_matches_the_package_from_pixels_to_rewards() {
    let r = reference();
    let reward = ImageRewardScore::load(dir(), DType::F32, &Device::Cpu).unwrap();
    let imgs = images(&r);
    assert_eq!(imgs.len(), 6);
    // openai/CLIP's _transform: identical pixel values (image 0 is cropped by 3 rows, where
    // torchvision's rounding and transformers' differ).
    let pixels = reward.preprocessor().preprocess_batch(&imgs, &Device::Cpu).unwrap();
    assert_eq!(max_err(&pixels, &r["pixel_values"]), 0.0);
    // The ViT's tokens.
    let embeds = reward.model().image_embeds(&r["pixel_values"]).unwrap();
    let e = max_err(&embeds, &r["image_embeds"]);
    eprintln!("image tokens: max |Δ| {e:.2e}");
    assert!(e < 1e-4, "image tokens differ by {e}");
    // The [CLS] features, and the rewards one image at a time (ImageReward.score) and as a batch.
    let owned = prompt_of_images();
    let texts: Vec<&str> = owned.iter().map(String::as_str).collect();
    let features = reward.features(&imgs, &texts).unwrap();
    let e = max_err(&features, &r["txt_features"]);
    eprintln!("text features: max |Δ| {e:.2e}");
    assert!(e < 1e-4, "text features differ by {e}");
    let want: Vec<f64> = r["rewards"].to_dtype(DType::F64).unwrap().to_vec1().unwrap();
    let got = reward.score_images(&imgs, &texts).unwrap();
    let worst = got.iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0.0, f64::max);
    eprintln!("rewards: max |Δ| {worst:.2e} over {want:?}");
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!((g - w).abs() < 1e-4, "image {i}: {g} vs {w}");
    }
    let spread = want.iter().cloned().fold(f64::MIN, f64::max) - want.iter().cloned().fold(f64::MAX, f64::min);
    assert!(spread > 0.1, "the fixture's rewards should differ ({want:?})");
    for (i, img) in imgs.iter().enumerate() {
        let one = reward.score_images(std::slice::from_ref(img), &texts[i..=i]).unwrap();
        assert!((one[0] - got[i]).abs() < 1e-6);
    }
    // inference_rank(prompt 0, all images): the same prompt for every image.
    let want: Vec<f64> = r["rank_rewards"].to_dtype(DType::F64).unwrap().to_vec1().unwrap();
    let first = vec![texts[0]; imgs.len()];
    let got = reward.score_rgb(&imgs, Some(&first)).unwrap();
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() < 1e-4, "{g} vs {w}");
    }
}

#[test]
fn the_reward_trait_scores_decoded_samples_as_the_saved_images() {
    let r = reference();
    let reward = ImageRewardScore::load(dir(), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(reward.name(), "image_reward");
    assert!(reward.needs_prompts());
    // Image 1 as a decoded sample in [-1, 1]: x / 127.5 − 1 maps back to the same bytes.
    let img = &images(&r)[1];
    let (h, w) = (img.height(), img.width());
    let planar: Vec<f32> =
        (0..3).flat_map(|c| img.data().iter().skip(c).step_by(3).map(|&v| f32::from(v) / 127.5 - 1.0)).collect();
    let samples = Tensor::from_vec(planar, (1, 3, h, w), &Device::Cpu).unwrap();
    let prompt = prompt_of_images()[1].clone();
    let got = reward.score(&samples, Some(&[prompt.as_str()])).unwrap();
    let want: Vec<f64> = r["rewards"].to_dtype(DType::F64).unwrap().to_vec1().unwrap();
    assert!((got[0] - want[1]).abs() < 1e-4, "{} vs {}", got[0], want[1]);
    let err = reward.score(&samples, None).unwrap_err().to_string();
    assert!(err.contains("prompt"), "{err}");
    let err = reward.score_images(&images(&r)[..2], &[prompt.as_str()]).unwrap_err().to_string();
    assert!(err.contains("one prompt per image"), "{err}");
}

#[test]
fn the_published_configs_parse() {
    // ImageReward's med_config.json (THUDM/ImageReward, BLIP's configs/med_config.json).
    let published = r#"{
      "architectures": ["BertModel"],
      "attention_probs_dropout_prob": 0.1,
      "hidden_act": "gelu",
      "hidden_dropout_prob": 0.1,
      "hidden_size": 768,
      "initializer_range": 0.02,
      "intermediate_size": 3072,
      "layer_norm_eps": 1e-12,
      "max_position_embeddings": 512,
      "model_type": "bert",
      "num_attention_heads": 12,
      "num_hidden_layers": 12,
      "pad_token_id": 0,
      "type_vocab_size": 2,
      "vocab_size": 30524,
      "encoder_width": 768,
      "add_cross_attention": true
    }"#;
    let tmp = Scratch::new("configs");
    let path = tmp.path().join("med_config.json");
    std::fs::write(&path, published).unwrap();
    let med = MedConfig::from_file(&path).unwrap();
    assert_eq!((med.vocab_size, med.hidden_size, med.num_hidden_layers, med.num_attention_heads), (30524, 768, 12, 12));
    assert_eq!((med.intermediate_size, med.max_position_embeddings, med.layer_norm_eps), (3072, 512, 1e-12));
    // ImageReward's ViT: create_vit('large', 224).
    let vit = BlipVisionConfig::default();
    vit.validate("default").unwrap();
    assert_eq!((vit.image_size, vit.patch_size, vit.embed_dim, vit.depth, vit.num_heads), (224, 16, 1024, 24, 16));
    assert_eq!((vit.num_tokens(), vit.mlp_width()), (197, 4096));
    // Bad values are errors naming the field.
    for (json, field) in [
        (r#"{"add_cross_attention": false}"#, "add_cross_attention"),
        (r#"{"add_cross_attention": true, "num_attention_heads": 7}"#, "num_attention_heads"),
        (r#"{"add_cross_attention": true, "hidden_size": 0}"#, "hidden_size"),
        (r#"{"add_cross_attention": true, "vocab_size": 100000000000}"#, "vocab_size"),
        (r#"{"add_cross_attention": true, "hidden_act": "relu"}"#, "hidden_act"),
        (r#"{"add_cross_attention": true, "position_embedding_type": "relative_key"}"#, "position_embedding_type"),
    ] {
        std::fs::write(&path, json).unwrap();
        let err = MedConfig::from_file(&path).unwrap_err().to_string();
        assert!(err.contains(field), "{json}: {err}");
    }
    let vpath = tmp.path().join("vision_config.json");
    for (json, field) in [
        (r#"{"embed_dim": 100, "num_heads": 16}"#, "num_heads"),
        (r#"{"patch_size": 0}"#, "patch_size"),
        (r#"{"image_size": 1000000}"#, "image_size"),
        (r#"{"mlp_ratio": -1}"#, "mlp_ratio"),
        (r#"{"depth": 2, "width": 3}"#, "width"),
    ] {
        std::fs::write(&vpath, json).unwrap();
        let err = BlipVisionConfig::from_file(&vpath).unwrap_err().to_string();
        assert!(err.contains(field), "{json}: {err}");
    }
}

#[test]
fn bad_folders_are_errors_that_say_what_to_do() {
    let tmp = Scratch::new("folders");
    let d = tmp.path();
    for f in ["med_config.json", "vision_config.json", "vocab.txt"] {
        std::fs::copy(dir().join(f), d.join(f)).unwrap();
    }
    // The published pickle, not converted.
    std::fs::write(d.join("ImageReward.pt"), b"PK\x03\x04 a zip pickle").unwrap();
    let err = ImageRewardScore::load(d, DType::F32, &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("convert_to_safetensors.py image-reward"), "{err}");
    // A pickle named model.safetensors.
    std::fs::write(d.join("model.safetensors"), b"\x80\x02}q\x00(X").unwrap();
    let err = ImageRewardScore::load(d, DType::F32, &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("convert_to_safetensors.py image-reward"), "{err}");
    // A checkpoint without the head, and one whose text encoder lacks a tensor.
    let all = candle_core::safetensors::load(dir().join("model.safetensors"), &Device::Cpu).unwrap();
    let without = |skip: &dyn Fn(&str) -> bool| -> HashMap<String, Tensor> {
        all.iter().filter(|(k, _)| !skip(k)).map(|(k, v)| (k.clone(), v.clone())).collect()
    };
    candle_core::safetensors::save(&without(&|k| k.starts_with("mlp.")), d.join("model.safetensors")).unwrap();
    let err = ImageRewardScore::load(d, DType::F32, &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("mlp.layers"), "{err}");
    let gone = "blip.text_encoder.encoder.layer.1.crossattention.self.key.weight";
    candle_core::safetensors::save(&without(&|k| k == gone), d.join("model.safetensors")).unwrap();
    let err = ImageRewardScore::load(d, DType::F32, &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains(gone), "{err}");
    // No med_config.json.
    std::fs::remove_file(d.join("med_config.json")).unwrap();
    let err = ImageRewardScore::load(d, DType::F32, &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("med_config.json"), "{err}");
}
