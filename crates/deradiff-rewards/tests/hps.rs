//! HPS v2 against open_clip (`scripts/gen_hps_fixtures.py`): a tiny random open_clip CLIP saved
//! in open_clip's own layout and config loads onto our CLIP towers; HPS v2's preprocessing
//! (longer side resized, zero-padded square) gives hpsv2's pixel values (to f32 rounding); image and text
//! features and the score (the normalised features' dot product, as `hpsv2` computes it) match.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use deradiff_rewards::{ClipModel, ClipPreprocessor, HpsScore, OpenClipConfig, Reward};
use deradiff_sd::RgbImage;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deradiff-tune/tests/fixtures/hps")
}

fn reference() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir().join("reference.safetensors"), &Device::Cpu).unwrap()
}

fn rows(t: &Tensor) -> Vec<Vec<f64>> {
    t.to_dtype(DType::F64).unwrap().to_vec2().unwrap()
}

fn max_err(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    let d = (a.to_dtype(DType::F64).unwrap() - b.to_dtype(DType::F64).unwrap()).unwrap();
    d.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap()
}

fn normalise(t: &Tensor) -> Tensor {
    t.broadcast_div(&t.sqr().unwrap().sum_keepdim(1).unwrap().sqrt().unwrap()).unwrap()
}

fn images(r: &HashMap<String, Tensor>) -> Vec<RgbImage> {
    (0..4)
        .map(|i| {
            let t = &r[&format!("image{i}")];
            let (h, w, _) = t.dims3().unwrap();
            RgbImage::new(w, h, t.flatten_all().unwrap().to_vec1::<u8>().unwrap()).unwrap()
        })
        .collect()
}

#[test]
fn open_clip_checkpoints_give_open_clip_features_and_hps() {
    let r = reference();
    let config = OpenClipConfig::from_file(dir().join("open_clip_config.json")).unwrap();
    let model = ClipModel::load_open_clip(dir().join("open_clip_model.safetensors"), &config, DType::F32, &Device::Cpu)
        .unwrap();
    // HPS v2's preprocessing (float ToTensor, round-half-even sizes — image 1 has a 12.5 —,
    // antialiased bicubic on floats, padding split left/right): torch's pixel values to f32
    // rounding (2.9e-6 here, in normalised units: torch's kernel sums in another order).
    let pre = ClipPreprocessor::longest_edge_pad(config.image_size);
    let pixels = pre.preprocess_batch(&images(&r), &Device::Cpu).unwrap();
    let err = max_err(&pixels, &r["pixel_values"]);
    assert!(err < 1e-5, "pixel values differ by {err}");
    // Features (unnormalised and normalised) from open_clip's own pixels and token ids.
    let img = model.image_features(&r["pixel_values"]).unwrap();
    let ids = r["input_ids"].to_dtype(DType::U32).unwrap();
    let txt = model.text_features(&ids).unwrap();
    let (e_img, e_txt) = (max_err(&img, &r["image_embeds_raw"]), max_err(&txt, &r["text_embeds_raw"]));
    assert!(e_img < 1e-5 && e_txt < 1e-5, "image {e_img}, text {e_txt}");
    assert!(max_err(&normalise(&img), &r["image_features"]) < 1e-5);
    assert!(max_err(&normalise(&txt), &r["text_features"]) < 1e-5);
    // The score: the normalised features' dot product, pair by pair.
    let (a, b) = (rows(&normalise(&img)), rows(&normalise(&txt)));
    let want: Vec<f64> = r["hps"].to_dtype(DType::F64).unwrap().to_vec1().unwrap();
    for i in 0..4 {
        let got: f64 = a[i].iter().zip(&b[i]).map(|(x, y)| x * y).sum();
        assert!((got - want[i]).abs() < 1e-5, "pair {i}: {got} vs {}", want[i]);
    }
}

#[test]
fn the_hps_reward_scores_images_with_its_own_preprocessing() {
    let r = reference();
    // A CLIP tokenizer whose ids fit the tiny text tower (the CLIP fixtures' BPE, 822 ids).
    let tokenizer = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deradiff-tune/tests/fixtures/clip/clip-gelu");
    let hps = HpsScore::load_open_clip(
        dir().join("open_clip_model.safetensors"),
        dir().join("open_clip_config.json"),
        &tokenizer,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(hps.name(), "hps");
    let prompts = ["a red cube", "a blue sphere", "a cat", "a cat"];
    let scores = hps.score_images(&images(&r), &prompts).unwrap();
    // The same as the library's parts: cosines of our features of HPS-preprocessed pixels.
    let scorer = hps.scorer();
    let cos = scorer.cosine(&images(&r), &prompts).unwrap();
    assert_eq!(scores, cos);
    assert!(scores.iter().all(|s| s.abs() <= 1.0 + 1e-9));
    // A pickle named .safetensors points to the conversion script.
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("hps-pickle.safetensors");
    std::fs::write(&tmp, b"\x80\x02}q\x00.").unwrap();
    let err = HpsScore::load_open_clip(&tmp, dir().join("open_clip_config.json"), &tokenizer, DType::F32, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("convert_to_safetensors.py hps"), "{err}");
    assert!(!err.contains("diffusers"), "only the reward's own conversion: {err}");
}

#[test]
fn the_real_vit_h_14_config_parses() {
    // open_clip's `model_configs/ViT-H-14.json` (HPS v2's architecture), inside the
    // `open_clip_config.json` wrapper the Hub checkpoints use.
    let json = r#"{"model_cfg": {"embed_dim": 1024, "vision_cfg": {"image_size": 224, "layers": 32, "width": 1280,
        "head_width": 80, "patch_size": 14}, "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 1024,
        "heads": 16, "layers": 24}}, "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073],
        "std": [0.26862954, 0.26130258, 0.27577711]}}"#;
    let c = OpenClipConfig::from_json(json, "ViT-H-14/open_clip_config.json").unwrap();
    let clip = c.clip_config();
    assert_eq!((clip.vision.num_attention_heads, clip.vision.intermediate_size, clip.vision.grid()), (16, 5120, 16));
    assert_eq!(
        (clip.text.num_attention_heads, clip.text.intermediate_size, clip.text.num_hidden_layers),
        (16, 4096, 24)
    );
    assert_eq!((clip.projection_dim, clip.text.hidden_act.as_str()), (1024, "gelu"));
    // Towers open_clip builds from timm or Hugging Face models are not mapped: an error.
    let timm = json.replace(r#""patch_size": 14}"#, r#""patch_size": 14, "timm_model_name": "vit_huge"}"#);
    let err = OpenClipConfig::from_json(&timm, "x.json").unwrap_err().to_string();
    assert!(err.contains("timm_model_name"), "{err}");
    let err = OpenClipConfig::from_json(r#"{"embed_dim": 4}"#, "x.json").unwrap_err().to_string();
    assert!(err.contains("vision_cfg"), "{err}");
}
