//! Each component against diffusers / transformers on the tiny fixtures
//! (`scripts/gen_sd_fixtures.py`): token ids equal, text-encoder hidden states within 1e-4, UNet
//! outputs within 1e-5 (our blocks use diffusers' exact GELU), VAE decode within 1e-3.

mod common;

use candle_core::{DType, Device, Tensor};
use common::*;
use deradiff_sd::{load_clip, ClipTokenizer, TextEncoder, Unet, Vae};

fn expected_ids() -> (Vec<String>, Vec<Vec<u32>>) {
    let t = &meta()["tokenizer"];
    let prompts = t["prompts"].as_array().unwrap().iter().map(|p| p.as_str().unwrap().to_string()).collect();
    let ids = t["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect())
        .collect();
    (prompts, ids)
}

#[test]
fn token_ids_equal_transformers_from_vocab_and_merges() {
    let tok = ClipTokenizer::from_dir(tiny_sd().join("tokenizer")).unwrap();
    let (prompts, ids) = expected_ids();
    assert_eq!(tok.max_length(), 77);
    assert_eq!(tok.bos_id() as u64, meta()["tokenizer"]["bos_id"].as_u64().unwrap());
    assert_eq!(tok.eos_id() as u64, meta()["tokenizer"]["eos_id"].as_u64().unwrap());
    assert_eq!(tok.pad_id() as u64, meta()["tokenizer"]["pad_id"].as_u64().unwrap());
    for (p, want) in prompts.iter().zip(&ids) {
        assert_eq!(&tok.encode(p).unwrap(), want, "prompt {p:?}");
    }
    // The long prompt is truncated, the others are not.
    let truncated: Vec<bool> = prompts.iter().map(|p| tok.is_truncated(p).unwrap()).collect();
    assert_eq!(truncated.iter().filter(|&&t| t).count(), 1);
}

#[test]
fn token_ids_equal_transformers_from_tokenizer_json() {
    let tok = ClipTokenizer::from_dir(fixtures().join("tokenizer-json")).unwrap();
    let (prompts, ids) = expected_ids();
    for (p, want) in prompts.iter().zip(&ids) {
        assert_eq!(&tok.encode(p).unwrap(), want, "prompt {p:?}");
    }
}

#[test]
fn padding_and_truncation_in_tokenizer_json_are_ignored() {
    // Some tokenizer.json files carry their own fixed padding / truncation; SD's is applied here.
    let dir = scratch("tokenizer-json-padded");
    copy_dir(&fixtures().join("tokenizer-json"), &dir);
    let path = dir.join("tokenizer.json");
    let mut json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    json["truncation"] =
        serde_json::json!({"direction": "Right", "max_length": 77, "strategy": "LongestFirst", "stride": 0});
    json["padding"] = serde_json::json!({"strategy": {"Fixed": 77}, "direction": "Right", "pad_to_multiple_of": null,
        "pad_id": 0, "pad_type_id": 0, "pad_token": "!"});
    std::fs::write(&path, serde_json::to_string(&json).unwrap()).unwrap();
    let tok = ClipTokenizer::from_dir(&dir).unwrap();
    let (prompts, ids) = expected_ids();
    for (p, want) in prompts.iter().zip(&ids) {
        assert_eq!(&tok.encode(p).unwrap(), want, "prompt {p:?}");
    }
}

#[test]
fn pad_token_from_special_tokens_map() {
    // SD 2.x pads with "!": special_tokens_map.json overrides tokenizer_config.json.
    let dir = scratch("pad-bang");
    copy_dir(&tiny_sd().join("tokenizer"), &dir);
    let map = r#"{"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "!", "unk_token": "<|endoftext|>"}"#;
    std::fs::write(dir.join("special_tokens_map.json"), map).unwrap();
    let tok = ClipTokenizer::from_dir(&dir).unwrap();
    let bang = tok.tokens("!").unwrap();
    assert_eq!(bang.len(), 1);
    assert_eq!(tok.pad_id(), bang[0]);
    let ids = tok.encode("a cat").unwrap();
    assert_eq!(*ids.last().unwrap(), bang[0]);
    assert_eq!(ids.iter().filter(|&&i| i == tok.eos_id()).count(), 1);
}

fn hidden_states(dir: &std::path::Path) -> Tensor {
    let model = load_clip(dir, DType::F32, &Device::Cpu).unwrap();
    let (_, ids) = expected_ids();
    let flat: Vec<u32> = ids.iter().flatten().copied().collect();
    let ids = Tensor::from_vec(flat, (ids.len(), 77), &Device::Cpu).unwrap();
    model.forward(&ids).unwrap()
}

#[test]
fn text_encoder_matches_transformers_quick_gelu() {
    let ours = hidden_states(&tiny_sd().join("text_encoder"));
    let err = max_abs_diff(&ours, &reference("text.hidden"));
    println!("text encoder (quick_gelu) max abs error vs transformers: {err:.3e}");
    assert!(err <= 1e-4, "{err}");
}

#[test]
fn text_encoder_matches_transformers_exact_gelu() {
    let ours = hidden_states(&fixtures().join("text-encoder-gelu"));
    let err = max_abs_diff(&ours, &reference("text_gelu.hidden"));
    println!("text encoder (gelu) max abs error vs transformers: {err:.3e}");
    assert!(err <= 1e-4, "{err}");
}

#[test]
fn text_encoder_encodes_prompts_like_the_pipeline() {
    let te = TextEncoder::load(tiny_sd().join("text_encoder"), tiny_sd().join("tokenizer"), DType::F32, &Device::Cpu)
        .unwrap();
    let (prompts, _) = expected_ids();
    let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let ours = te.encode(&refs).unwrap();
    let err = max_abs_diff(&ours, &reference("text.hidden"));
    assert!(err <= 1e-4, "{err}");
    assert_eq!((te.forward_calls(), te.prompts_encoded()), (1, prompts.len()));
}

#[test]
fn unets_match_diffusers() {
    let x = reference("unet.x");
    let emb = reference("unet.emb");
    let timesteps: Vec<f64> =
        meta()["unet_timesteps"].as_array().unwrap().iter().map(|t| t.as_f64().unwrap()).collect();
    for (name, path) in [("ref", tiny_sd()), ("aligned", tiny_aligned())] {
        let unet = Unet::load(&path, None, DType::F32, &Device::Cpu).unwrap();
        for (k, &t) in timesteps.iter().enumerate() {
            let out = unet.forward(&x, t, &emb).unwrap();
            let exact = reference(&format!("unet.{name}.out{k}"));
            let tanh = reference(&format!("unet.{name}.out{k}_tanh"));
            let err = max_abs_diff(&out, &exact);
            let err_tanh = max_abs_diff(&out, &tanh);
            println!(
                "UNet {name} t={t}: max abs error {err:.3e} vs diffusers (output max {:.2}); \
                 {err_tanh:.3e} vs diffusers with candle's tanh-GELU",
                max_abs(&exact)
            );
            assert!(err <= 1e-5, "{name} t={t}: {err}");
            // The exact GELU is what makes the difference: the tanh-GELU reference is further off.
            assert!(err_tanh > 10.0 * err, "{name} t={t}: {err_tanh} vs {err}");
        }
    }
}

#[test]
fn vae_decode_matches_diffusers() {
    let vae = Vae::load(tiny_sd().join("vae"), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(vae.scale_factor(), 2);
    assert_eq!(vae.scaling_factor(), meta()["vae_scaling_factor"].as_f64().unwrap());
    // diffusers' `vae.decode(z)` of unscaled latents z.
    let z = reference("vae.z");
    let want = reference("vae.decoded");
    let decoded = vae.decode_unscaled(&z).unwrap();
    let err = max_abs_diff(&decoded, &want);
    println!("VAE decode max abs error vs diffusers: {err:.3e}");
    assert!(err <= 1e-3, "{err}");
    assert_eq!(decoded.dims(), &[1, 3, 16, 16]);

    // The sampler's latents are z × scaling_factor: `decode_f32` and `decode` divide themselves.
    let latents = (&z * vae.scaling_factor()).unwrap();
    let unit = vae.decode_f32(&latents).unwrap();
    assert_eq!((unit.dims(), unit.dtype()), (&[1usize, 3, 16, 16][..], DType::F32));
    // diffusers' postprocess (output_type="pt"): clamp(x / 2 + 0.5, 0, 1).
    let want_unit = ((&want * 0.5).unwrap() + 0.5).unwrap().clamp(0f32, 1f32).unwrap();
    let err = max_abs_diff(&unit, &want_unit);
    assert!(err <= 0.5e-3 + 1e-6, "{err}");
    // In [0, 1]: clamping changes nothing.
    assert_eq!(max_abs_diff(&unit, &unit.clamp(0f32, 1f32).unwrap()), 0.0);
    // `decode` is the same image rounded to 8 bits.
    let images = vae.decode(&latents).unwrap();
    let bytes: Vec<u8> = (unit.permute((0, 2, 3, 1)).unwrap() * 255.0)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|v| v.round_ties_even() as u8)
        .collect();
    assert_eq!(images.len(), 1);
    assert_eq!(images[0].data(), &bytes[..]);
    // `unscale` is the division `decode_unscaled` expects.
    assert!(max_abs_diff(&vae.unscale(&latents).unwrap(), &z) <= 1e-6);

    // A latent of the wrong channel count is a shape error naming the decoder.
    let bad = Tensor::zeros((1, 3, 8, 8), DType::F32, &Device::Cpu).unwrap();
    for err in
        [vae.decode_f32(&bad).unwrap_err(), vae.decode(&bad).unwrap_err(), vae.decode_unscaled(&bad).unwrap_err()]
    {
        assert!(matches!(err, deradiff_sd::Error::ShapeMismatch { ref got, .. } if got == &[1, 3, 8, 8]), "{err:?}");
    }
}
