//! Every reward on 34 PNG files of odd sizes and every PNG colour mode, against its reference
//! package opening the same files (`scripts/gen_fidelity_image_fixtures.py`): transformers 5's
//! CLIP with its PIL image processor (CLIP score, PickScore), hpsv2's transform and tokenizer
//! (HPS v2), openai/CLIP's transform with the LAION MLP (aesthetic), and ImageReward's own
//! `score(prompt, path)`, all on the tiny random models of the other fixtures.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use deradiff_rewards::{
    AestheticScore, ClipPreprocessor, ClipScore, ClipScorer, HpsScore, ImageBackend, ImageRewardScore, ImageScorer,
    PickScore, PilImage, Resample,
};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deradiff-tune/tests/fixtures")
}

struct Case {
    image: PilImage,
    prompt: String,
    want: Value,
}

fn cases() -> Vec<Case> {
    let dir = fixtures().join("fidelity");
    let scores: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("scores.json")).unwrap()).unwrap();
    scores["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| Case {
            image: PilImage::load_png(dir.join("images").join(e["file"].as_str().unwrap())).unwrap(),
            prompt: e["prompt"].as_str().unwrap().to_string(),
            want: e.clone(),
        })
        .collect()
}

/// Scores every case with `reward` (one batch) and compares with the reference's `key`:
/// `|got − want| ≤ 1e-4 · max(|want|, 1)`.
fn check(reward: &dyn ImageScorer, key: &str) {
    let cases = cases();
    assert!(cases.len() >= 30);
    let images: Vec<PilImage> = cases.iter().map(|c| c.image.clone()).collect();
    let prompts: Vec<&str> = cases.iter().map(|c| c.prompt.as_str()).collect();
    let got = reward.score_pil(&images, Some(&prompts)).unwrap();
    let bad: Vec<String> = cases
        .iter()
        .zip(&got)
        .filter_map(|(c, &g)| {
            let w = c.want[key].as_f64().unwrap();
            ((g - w).abs() > 1e-4 * w.abs().max(1.0))
                .then(|| format!("{} ({}): got {g}, want {w}", c.want["file"], c.image.description()))
        })
        .collect();
    assert!(bad.is_empty(), "{key}: {} of {} images differ: {bad:#?}", bad.len(), cases.len());
}

#[test]
fn files_open_in_pil_s_modes() {
    let cases = cases();
    let mut modes: Vec<&str> = cases.iter().map(|c| c.image.mode().name()).collect();
    for c in &cases {
        assert_eq!(c.image.mode().name(), c.want["pil_mode"].as_str().unwrap(), "{}", c.want["file"]);
    }
    modes.sort_unstable();
    modes.dedup();
    assert_eq!(modes, ["1", "I;16", "L", "LA", "P", "RGB", "RGBA"]);
    assert!(cases.iter().any(|c| c.image.description().contains("interlaced")));
    assert!(cases.iter().any(|c| c.image.description().contains("tRNS")));
}

#[test]
fn clip_score_and_pickscore_match_transformers() {
    let dir = fixtures().join("clip/clip-gelu");
    check(&ClipScore::load(&dir, DType::F32, &Device::Cpu).unwrap(), "clip_score");
    check(&PickScore::load(&dir, DType::F32, &Device::Cpu).unwrap(), "pickscore");
}

#[test]
fn the_torchvision_backend_matches_transformers_default() {
    let dir = fixtures().join("clip/clip-gelu");
    let scorer =
        || ClipScorer::load(&dir, DType::F32, &Device::Cpu).unwrap().with_image_backend(ImageBackend::Torchvision);
    check(&ClipScore::new(scorer().unwrap()), "clip_score_torchvision");
    check(&PickScore::new(scorer().unwrap()), "pickscore_torchvision");
    // Only transformers' processors have backends; the torchvision one resizes bicubic only.
    let hps_like = ClipPreprocessor::longest_edge_pad(28).with_backend(ImageBackend::Torchvision).unwrap_err();
    assert!(hps_like.to_string().contains("backend of transformers' processor"), "{hps_like}");
    let bilinear = ClipPreprocessor { resample: Resample::Bilinear, ..ClipPreprocessor::default() };
    let err = bilinear.with_backend(ImageBackend::Torchvision).unwrap_err().to_string();
    assert!(err.contains("bicubic"), "{err}");
}

#[test]
fn hps_matches_hpsv2() {
    let hps = HpsScore::load_open_clip(
        fixtures().join("hps/open_clip_model.safetensors"),
        fixtures().join("hps/open_clip_config.json"),
        fixtures().join("clip/clip-gelu"),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    check(&hps, "hps");
}

#[test]
fn aesthetic_matches_simple_inference() {
    let a = AestheticScore::load(
        fixtures().join("clip/clip-gelu"),
        fixtures().join("aesthetic/mlp-16.safetensors"),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    check(&a, "aesthetic");
}

#[test]
fn image_reward_matches_the_package() {
    check(&ImageRewardScore::load(fixtures().join("image_reward"), DType::F32, &Device::Cpu).unwrap(), "image_reward");
}
