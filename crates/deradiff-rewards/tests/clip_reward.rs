//! CLIP score and PickScore against transformers 5 on tiny random `CLIPModel`s with quick-GELU
//! and exact GELU (`scripts/gen_clip_fixtures.py` writes the fixtures and references).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use deradiff_rewards::{
    resize_like_pil, ClipPreprocessor, ClipScore, ClipScorer, PickScore, Resample, ResizeTo, Reward, OPENAI_CLIP_MEAN,
};
use deradiff_sd::clip::ClipModelConfig;
use deradiff_sd::RgbImage;

const TOL: f64 = 1e-4;
const MODELS: [(&str, &str); 2] = [("clip-quick-gelu", "quick_gelu"), ("clip-gelu", "gelu")];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deradiff-tune/tests/fixtures/clip")
}

fn reference() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixtures().join("reference.safetensors"), &Device::Cpu).unwrap()
}

fn meta() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("reference.json")).unwrap()).unwrap()
}

fn prompts(meta: &serde_json::Value) -> Vec<String> {
    meta["prompts"].as_array().unwrap().iter().map(|p| p.as_str().unwrap().to_string()).collect()
}

fn flat(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

fn max_err(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

fn image(t: &Tensor) -> RgbImage {
    let (h, w, _) = t.dims3().unwrap();
    RgbImage::new(w, h, t.flatten_all().unwrap().to_vec1::<u8>().unwrap()).unwrap()
}

fn images(reference: &HashMap<String, Tensor>) -> Vec<RgbImage> {
    (0..4).map(|i| image(&reference[&format!("image{i}")])).collect()
}

#[test]
fn clip_models_match_transformers() {
    let reference = reference();
    let meta = meta();
    let prompts = prompts(&meta);
    let prompts: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let imgs = images(&reference);
    let batch = &reference["batch"];
    for (name, act) in MODELS {
        let dir = fixtures().join(name);
        let scorer = Arc::new(ClipScorer::load(&dir, DType::F32, &Device::Cpu).unwrap());
        // Both rewards share the one loaded model.
        let clip = ClipScore::new(scorer.clone());
        let pick = PickScore::new(scorer.clone());
        assert_eq!(scorer.model().config().vision.hidden_act, act);

        // Token ids as CLIPTokenizer gives them.
        let ids: Vec<Vec<u32>> = scorer.token_ids(&prompts).unwrap().to_vec2().unwrap();
        let want: Vec<Vec<i64>> = reference["input_ids"].to_vec2().unwrap();
        let want: Vec<Vec<u32>> = want.iter().map(|r| r.iter().map(|&v| v as u32).collect()).collect();
        assert_eq!(ids, want, "{name}: token ids");

        let text = flat(&scorer.text_embeds(&prompts).unwrap());
        let e_text = max_err(&text, &flat(&reference[&format!("{name}.text_embeds")]));

        let mut report = format!("{name}: text embeds {e_text:.2e}");
        assert!(e_text < TOL, "{name}: text embeddings off by {e_text}");
        for group in ["images", "batch"] {
            let key = |k: &str| format!("{name}.{group}.{k}");
            let group_images = if group == "images" { imgs.clone() } else { RgbImage::from_tensor(batch).unwrap() };

            // Preprocessing alone.
            let pixels = scorer.preprocessor().preprocess_batch(&group_images, &Device::Cpu).unwrap();
            let ref_pixels = &reference[&key("pixel_values")];
            let e_pix = max_err(&flat(&pixels), &flat(ref_pixels));
            assert!(e_pix < 1e-6, "{name}/{group}: pixel values off by {e_pix}");

            // The model alone, on transformers' own pixel values.
            let ref_img = flat(&reference[&key("image_embeds")]);
            let e_model = max_err(&flat(&scorer.pixel_embeds(ref_pixels).unwrap()), &ref_img);
            // Preprocessing and model.
            let e_img = max_err(&flat(&scorer.image_embeds(&group_images).unwrap()), &ref_img);
            let ids = scorer.token_ids(&prompts).unwrap();
            let logits = scorer.model().logits_per_image(ref_pixels, &ids).unwrap();
            let e_logits = max_err(&flat(&logits), &flat(&reference[&key("logits_per_image")]));
            assert!(e_model < TOL && e_img < TOL, "{name}/{group}: image embeddings off by {e_model} / {e_img}");
            assert!(e_logits < TOL, "{name}/{group}: logits off by {e_logits}");

            // The rewards: from 8-bit images, and (batch) through the Reward trait from [-1, 1].
            let ref_clip = flat(&reference[&key("clip_score")]);
            let ref_pick = flat(&reference[&key("pickscore")]);
            let (got_clip, got_pick) = if group == "images" {
                (
                    clip.score_images(&group_images, &prompts).unwrap(),
                    pick.score_images(&group_images, &prompts).unwrap(),
                )
            } else {
                (clip.score(batch, Some(&prompts)).unwrap(), pick.score(batch, Some(&prompts)).unwrap())
            };
            let e_clip = max_err(&got_clip, &ref_clip);
            let e_pick = max_err(&got_pick, &ref_pick);
            assert!(e_clip < TOL, "{name}/{group}: CLIP score off by {e_clip}: {got_clip:?} vs {ref_clip:?}");
            assert!(e_pick < TOL, "{name}/{group}: PickScore off by {e_pick}: {got_pick:?} vs {ref_pick:?}");
            assert!(ref_clip.contains(&0.0) && ref_clip.iter().any(|&s| s > 0.0));
            report += &format!(
                "; {group}: pixels {e_pix:.1e}, image embeds {e_model:.1e} (model) {e_img:.1e} (with preprocessing), \
                 logits {e_logits:.1e}, CLIP score {e_clip:.1e}, PickScore {e_pick:.1e}"
            );
        }
        eprintln!("{report}");
    }
}

#[test]
fn resize_is_bit_identical_to_pil() {
    let reference = reference();
    let meta = meta();
    let imgs = images(&reference);
    for case in meta["resize_cases"].as_array().unwrap() {
        let src = &imgs[case["image"].as_u64().unwrap() as usize];
        let filter = Resample::from_pil(case["resample"].as_u64().unwrap()).unwrap();
        let (w, h) = (case["width"].as_u64().unwrap() as usize, case["height"].as_u64().unwrap() as usize);
        let got = resize_like_pil(src, w, h, filter).unwrap();
        let want = image(&reference[case["key"].as_str().unwrap()]);
        let differ = got.data().iter().zip(want.data()).filter(|(a, b)| a != b).count();
        assert_eq!(differ, 0, "{case}: {differ} bytes differ from PIL");
    }
}

/// A copy of a fixture model directory in a fresh temporary directory.
fn copy_model(name: &str, tag: &str) -> PathBuf {
    let dst = std::env::temp_dir().join(format!("deradiff-clip-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dst);
    std::fs::create_dir_all(&dst).unwrap();
    for entry in std::fs::read_dir(fixtures().join(name)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dst.join(entry.file_name())).unwrap();
    }
    dst
}

#[test]
fn missing_class_embedding_is_an_error_naming_it() {
    let dir = copy_model("clip-gelu", "no-class");
    let file = dir.join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
    assert!(tensors.remove("vision_model.embeddings.class_embedding").is_some());
    candle_core::safetensors::save(&tensors, &file).unwrap();
    let err = ClipScorer::load(&dir, DType::F32, &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("vision_model.embeddings.class_embedding"), "{err}");
    assert!(err.contains("model.safetensors"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn misshapen_weights_and_missing_files_are_errors() {
    let dir = copy_model("clip-quick-gelu", "bad-shape");
    let text = std::fs::read_to_string(dir.join("config.json")).unwrap();
    // A projection width the weights do not have.
    std::fs::write(dir.join("config.json"), text.replace("\"projection_dim\": 16", "\"projection_dim\": 17")).unwrap();
    let err = ClipScorer::load(&dir, DType::F32, &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("projection") && err.contains("shape"), "{err}");
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let err = ClipScorer::load(&dir, DType::F32, &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("model.safetensors"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
    let err = ClipScorer::load(fixtures().join("nowhere"), DType::F32, &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("nowhere") && err.contains("does not exist"), "{err}");
}

fn config_json(edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("clip-gelu/config.json")).unwrap()).unwrap();
    edit(&mut v);
    v.to_string()
}

#[test]
fn malformed_configs_are_errors() {
    let ok = ClipModelConfig::from_json(&config_json(|_| {}), "config.json").unwrap();
    assert_eq!(ok.projection_dim, 16);
    assert_eq!(ok.text.projection_dim, 16, "the top-level projection_dim wins over text_config's");
    let cases: Vec<(&str, String)> = vec![
        ("cannot parse", "{ \"text_config\": ".into()),
        ("JSON object", "[1, 2]".into()),
        ("text_config", config_json(|v| v["text_config"] = "big".into())),
        ("hidden_act", config_json(|v| v["vision_config"]["hidden_act"] = "relu".into())),
        ("hidden_act", config_json(|v| v["text_config"]["hidden_act"] = "swish".into())),
        ("divisible", config_json(|v| v["vision_config"]["num_attention_heads"] = 5.into())),
        ("projection_dim", config_json(|v| v["projection_dim"] = 0.into())),
        ("projection_dim", config_json(|v| v["projection_dim"] = "wide".into())),
        ("patch_size", config_json(|v| v["vision_config"]["patch_size"] = 0.into())),
        ("patch_size", config_json(|v| v["vision_config"]["patch_size"] = 100.into())),
        ("vision_config", config_json(|v| v["vision_config"]["hidden_size"] = (-3).into())),
        ("model_type", config_json(|v| v["model_type"] = "siglip".into())),
    ];
    for (needle, json) in cases {
        let err = ClipModelConfig::from_json(&json, "bad/config.json").unwrap_err().to_string();
        assert!(err.contains(needle) && err.contains("bad/config.json"), "{needle}: {err}");
    }
}

#[test]
fn a_pickscore_vit_h_14_config_is_read() {
    // yuvalkirstain/PickScore_v1's shape (OpenCLIP ViT-H/14): exact GELU in both towers, with the
    // legacy `*_config_dict` entries older transformers wrote merged over `*_config`.
    let json = r#"{
        "architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": 1024,
        "logit_scale_init_value": 2.6592,
        "text_config": {"hidden_act": "gelu", "hidden_size": 1024, "intermediate_size": 4096,
                        "num_attention_heads": 16, "num_hidden_layers": 24, "projection_dim": 512,
                        "vocab_size": 49408, "eos_token_id": 2, "bad_words_ids": null},
        "text_config_dict": {"hidden_act": "gelu", "num_hidden_layers": 24},
        "vision_config": {"hidden_act": "gelu", "hidden_size": 1280, "intermediate_size": 5120,
                          "num_attention_heads": 16, "num_hidden_layers": 32, "patch_size": 14,
                          "image_size": 224, "layer_norm_eps": null},
        "vision_config_dict": {"patch_size": 14}
    }"#;
    let c = ClipModelConfig::from_json(json, "PickScore_v1/config.json").unwrap();
    assert_eq!(c.text_act, deradiff_sd::clip::ClipActivation::Gelu);
    assert_eq!(c.vision_act, deradiff_sd::clip::ClipActivation::Gelu);
    assert_eq!((c.vision.hidden_size, c.vision.num_hidden_layers, c.vision.patch_size), (1280, 32, 14));
    assert_eq!(c.vision.num_positions(), 257);
    assert_eq!(c.vision.layer_norm_eps, 1e-5);
    assert_eq!((c.text.hidden_size, c.text.projection_dim, c.projection_dim), (1024, 1024, 1024));
}

#[test]
fn preprocessor_configs() {
    let d = ClipPreprocessor::from_dir(fixtures().join("nowhere")).unwrap();
    assert_eq!(d, ClipPreprocessor::default());
    assert_eq!(d.image_mean, OPENAI_CLIP_MEAN);
    let g = ClipPreprocessor::from_dir(fixtures().join("clip-gelu")).unwrap();
    assert_eq!((g.size, g.crop_size, g.image_mean), (ResizeTo::ShortestEdge(26), (24, 24), [0.5; 3]));
    // The legacy integer form (`feature_extractor_type` era).
    let legacy = ClipPreprocessor::from_json(r#"{"size": 224, "crop_size": 224, "resample": 3}"#, "p.json").unwrap();
    assert_eq!((legacy.size, legacy.crop_size), (ResizeTo::ShortestEdge(224), (224, 224)));
    assert_eq!(legacy.resized_size(300, 200), (336, 224));
    assert_eq!(legacy.resized_size(200, 301), (224, 337));
    for (needle, json) in [
        ("resample", r#"{"resample": 0}"#),
        ("image_std", r#"{"image_std": [0.5, 0.0, 0.5]}"#),
        ("image_mean", r#"{"image_mean": [0.5, 0.5]}"#),
        ("size", r#"{"size": {"longest": 3}}"#),
        ("crop_size", r#"{"crop_size": -1}"#),
        ("do_resize", r#"{"do_resize": "yes"}"#),
        ("p.json", "{"),
    ] {
        let err = ClipPreprocessor::from_json(json, "p.json").unwrap_err().to_string();
        assert!(err.contains(needle), "{needle}: {err}");
    }
    // A crop larger than the image is zero-padded around it, as transformers' center_crop does.
    let p = ClipPreprocessor { do_resize: false, crop_size: (4, 5), ..Default::default() };
    let img = RgbImage::new(2, 3, (1..=18).collect()).unwrap();
    let out = p.resize_and_crop(&img).unwrap();
    assert_eq!((out.width(), out.height()), (5, 4));
    // top = ⌊(3 − 4) / 2⌋ = −1, left = ⌊(2 − 5) / 2⌋ = −2.
    assert_eq!(out.pixel(0, 0), Some([0, 0, 0]));
    assert_eq!(out.pixel(2, 1), Some([1, 2, 3]));
    assert_eq!(out.pixel(3, 3), Some([16, 17, 18]));
    assert_eq!(out.pixel(4, 3), Some([0, 0, 0]));
}

#[test]
fn rewards_reject_bad_inputs() {
    let clip = ClipScore::load(fixtures().join("clip-quick-gelu"), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(clip.name(), "clip_score");
    let batch = Tensor::zeros((2, 3, 8, 8), DType::F32, &Device::Cpu).unwrap();
    let err = clip.score(&batch, None).unwrap_err().to_string();
    assert!(err.contains("prompt"), "{err}");
    let err = clip.score(&batch, Some(&["one"])).unwrap_err().to_string();
    assert!(err.contains("one prompt per"), "{err}");
    let err = clip.score(&Tensor::zeros((2, 4, 8, 8), DType::F32, &Device::Cpu).unwrap(), Some(&["a", "b"]));
    assert!(err.is_err());
    let pick = PickScore::load(fixtures().join("clip-gelu"), DType::F32, &Device::Cpu).unwrap().with_name("pick");
    assert_eq!(pick.name(), "pick");
    // The same prompt twice is encoded once and scores the same image the same.
    let s = pick.score(&batch, Some(&["a cat", "a cat"])).unwrap();
    assert!((s[0] - s[1]).abs() < 1e-9 && s[0].is_finite());
}

#[test]
fn f16_weights_and_a_separate_processor() {
    let reference = reference();
    let meta = meta();
    let prompts = prompts(&meta);
    let prompts: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let imgs = images(&reference);
    let dir = fixtures().join("clip-gelu");
    // PickScore_v1's layout: the processor (tokenizer, preprocessor config) from another directory.
    let scorer = ClipScorer::load_with_processor(&dir, &dir, DType::F16, &Device::Cpu).unwrap();
    let pick = PickScore::new(scorer);
    let got = pick.score_images(&imgs, &prompts).unwrap();
    let want = flat(&reference["clip-gelu.images.pickscore"]);
    let err = max_err(&got, &want);
    eprintln!("clip-gelu in f16: PickScore off by {err:.2e}");
    assert!(err < 0.1, "f16 PickScore off by {err}: {got:?} vs {want:?}");
}
