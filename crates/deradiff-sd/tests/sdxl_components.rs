//! SDXL components against diffusers / transformers on the tiny SDXL fixtures
//! (`scripts/gen_sdxl_fixtures.py`): the UNet with `text_time` added conditioning and exact-GELU
//! transformer blocks (output within 1e-5; changing time_ids changes the output as in diffusers), both text encoders' prompt and
//! pooled embeddings within 1e-4 (including `force_zeros_for_empty_prompt`).

mod common;

use candle_core::{DType, Device, Tensor};
use common::*;
use deradiff_sd::{load_clip_with_projection, AddedConditioning, ClipTokenizer, Error, Unet};

fn timesteps() -> Vec<f64> {
    xl_meta()["unet_timesteps"].as_array().unwrap().iter().map(|t| t.as_f64().unwrap()).collect()
}

fn added(ids: &str) -> AddedConditioning {
    AddedConditioning::new(xl_reference("unet.pooled"), xl_reference(ids)).unwrap()
}

#[test]
fn sdxl_unets_match_diffusers() {
    let (x, emb) = (xl_reference("unet.x"), xl_reference("unet.emb"));
    for (name, path) in [("ref", tiny_sdxl()), ("aligned", tiny_sdxl_aligned())] {
        let unet = Unet::load(&path, None, DType::F32, &Device::Cpu).unwrap();
        let tt = unet.text_time().expect("text_time detected from unet/config.json");
        assert_eq!((tt.time_embed_dim, tt.pooled_dim, tt.num_time_ids), (8, 24, 6));
        for (k, &t) in timesteps().iter().enumerate() {
            let out = unet.forward_added(&x, t, &emb, Some(&added("unet.time_ids"))).unwrap();
            let exact = xl_reference(&format!("unet.{name}.out{k}"));
            let err = max_abs_diff(&out, &exact);
            let err_tanh = max_abs_diff(&out, &xl_reference(&format!("unet.{name}.out{k}_tanh")));
            println!(
                "SDXL UNet {name} t={t}: max abs error {err:.3e} vs diffusers (output max {:.2}); {err_tanh:.3e} vs \
                 diffusers with candle's tanh-GELU",
                max_abs(&exact)
            );
            assert!(err <= 1e-4, "{name} t={t}: {err}");
            // Exact GELU in the feed-forward: f32 rounding only, well below what candle's
            // tanh-approximate GELU would leave.
            assert!(err <= 1e-5 && err < err_tanh / 5.0, "{name} t={t}: {err} (tanh {err_tanh})");
        }
    }
}

#[test]
fn changing_time_ids_changes_the_output_as_in_diffusers() {
    let (x, emb) = (xl_reference("unet.x"), xl_reference("unet.emb"));
    let unet = Unet::load(tiny_sdxl(), None, DType::F32, &Device::Cpu).unwrap();
    for (k, &t) in timesteps().iter().enumerate() {
        let a = unet.forward_added(&x, t, &emb, Some(&added("unet.time_ids"))).unwrap();
        let b = unet.forward_added(&x, t, &emb, Some(&added("unet.time_ids_b"))).unwrap();
        let ours = (&b - &a).unwrap();
        let theirs = (xl_reference(&format!("unet.ref.out{k}_b")) - xl_reference(&format!("unet.ref.out{k}"))).unwrap();
        let err = max_abs_diff(&ours, &theirs);
        println!("t={t}: time_ids effect max {:.3}, error vs diffusers {err:.3e}", max_abs(&theirs));
        assert!(max_abs(&theirs) > 1e-2);
        assert!(err <= 1e-4, "t={t}: {err}");
        // Only row 0's time_ids changed: row 1 is bit-identical.
        assert_eq!(max_abs(&ours.get(1).unwrap()), 0.0);
        let b = unet.forward_added(&x, t, &emb, Some(&added("unet.time_ids_b"))).unwrap();
        let exact_b = xl_reference(&format!("unet.ref.out{k}_b"));
        assert!(max_abs_diff(&b, &exact_b) <= 1e-4);
    }
}

#[test]
fn sdxl_unet_refuses_missing_or_misshapen_added_conditioning() {
    let (x, emb) = (xl_reference("unet.x"), xl_reference("unet.emb"));
    let unet = Unet::load(tiny_sdxl(), None, DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(unet.forward(&x, 10.0, &emb), Err(Error::ModelMismatch(ref m)) if m.contains("text_time")));
    let short =
        AddedConditioning::new(xl_reference("unet.pooled"), xl_reference("unet.time_ids").narrow(1, 0, 5).unwrap())
            .unwrap();
    let err = unet.forward_added(&x, 10.0, &emb, Some(&short)).unwrap_err();
    assert!(
        matches!(err, Error::ShapeMismatch { ref context, ref got, .. } if context.contains("time_ids") && got[1] == 5),
        "{err:?}"
    );
    let sd = Unet::load(tiny_sd(), None, DType::F32, &Device::Cpu).unwrap();
    assert!(sd.text_time().is_none());
    let x8 = Tensor::zeros((2, 4, 8, 8), DType::F32, &Device::Cpu).unwrap();
    let ctx = Tensor::zeros((2, 77, 32), DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(sd.forward_added(&x8, 10.0, &ctx, Some(&added("unet.time_ids"))), Err(Error::ModelMismatch(_))));
}

#[test]
fn tokenizer_2_pads_with_bang() {
    let tok = ClipTokenizer::from_dir(tiny_sdxl().join("tokenizer_2")).unwrap();
    let t = &xl_meta()["tokenizer_2"];
    for (p, ids) in t["prompts"].as_array().unwrap().iter().zip(t["ids"].as_array().unwrap()) {
        let want: Vec<u32> = ids.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!(tok.encode(p.as_str().unwrap()).unwrap(), want);
    }
}

#[test]
fn text_encoder_2_penultimate_and_projected_pooled_match_transformers() {
    let model = load_clip_with_projection(&tiny_sdxl().join("text_encoder_2"), DType::F32, &Device::Cpu).unwrap();
    let rows = xl_meta()["tokenizer_2"]["ids"].as_array().unwrap();
    let flat: Vec<u32> =
        rows.iter().flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32)).collect();
    let ids = Tensor::from_vec(flat, (rows.len(), 77), &Device::Cpu).unwrap();
    let out = model.forward_all(&ids).unwrap();
    let e1 = max_abs_diff(&out.penultimate, &xl_reference("te2.penultimate"));
    let e2 = max_abs_diff(out.text_embeds.as_ref().unwrap(), &xl_reference("te2.pooled"));
    println!("text_encoder_2: penultimate {e1:.3e}, projected pooled {e2:.3e}");
    assert!(e1 <= 1e-4 && e2 <= 1e-4, "{e1} {e2}");
}

/// `stabilityai/stable-diffusion-xl-base-1.0`'s `unet/config.json`.
const SDXL_BASE_UNET: &str = r#"{
  "_class_name": "UNet2DConditionModel", "_diffusers_version": "0.19.0.dev0", "act_fn": "silu",
  "addition_embed_type": "text_time", "addition_embed_type_num_heads": 64, "addition_time_embed_dim": 256,
  "attention_head_dim": [5, 10, 20], "block_out_channels": [320, 640, 1280], "center_input_sample": false,
  "class_embed_type": null, "class_embeddings_concat": false, "conv_in_kernel": 3, "conv_out_kernel": 3,
  "cross_attention_dim": 2048, "cross_attention_norm": null,
  "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
  "downsample_padding": 1, "dual_cross_attention": false, "encoder_hid_dim": null, "encoder_hid_dim_type": null,
  "flip_sin_to_cos": true, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
  "mid_block_only_cross_attention": null, "mid_block_scale_factor": 1, "mid_block_type": "UNetMidBlock2DCrossAttn",
  "norm_eps": 1e-05, "norm_num_groups": 32, "num_attention_heads": null, "num_class_embeds": null,
  "only_cross_attention": false, "out_channels": 4, "projection_class_embeddings_input_dim": 2816,
  "resnet_out_scale_factor": 1.0, "resnet_skip_time_act": false, "resnet_time_scale_shift": "default",
  "sample_size": 128, "time_cond_proj_dim": null, "time_embedding_act_fn": null, "time_embedding_dim": null,
  "time_embedding_type": "positional", "timestep_post_act": null, "transformer_layers_per_block": [1, 2, 10],
  "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], "upcast_attention": null,
  "use_linear_projection": true
}"#;

#[test]
fn the_real_sdxl_base_unet_config_is_understood() {
    let cfg = deradiff_sd::UnetConfig::from_json(SDXL_BASE_UNET, "sdxl/unet/config.json").unwrap();
    let arch = cfg.arch("sdxl/unet/config.json").unwrap();
    let tt = arch.text_time.unwrap();
    assert_eq!((tt.time_embed_dim, tt.pooled_dim, tt.num_time_ids, tt.input_dim()), (256, 1280, 6, 2816));
    assert_eq!(arch.cross_attention_dim, 2048);
    assert_eq!(arch.sample_size, Some((128, 128)));
    let blocks: Vec<(usize, Option<usize>, usize)> =
        arch.blocks.iter().map(|b| (b.out_channels, b.transformer_layers, b.heads)).collect();
    assert_eq!(blocks, vec![(320, None, 5), (640, Some(2), 10), (1280, Some(10), 20)]);
    assert!(arch.use_linear_projection);
    // Another added-conditioning type is refused, naming the field.
    let other = SDXL_BASE_UNET.replace("\"text_time\"", "\"image\"");
    let err = deradiff_sd::UnetConfig::from_json(&other, "x.json").unwrap().arch("x.json").unwrap_err();
    assert!(err.to_string().contains("addition_embed_type"), "{err}");
    // Every UNet runs our own blocks, which take the config's groups: an SD-style UNet with 16
    // groups resolves to them (tests/unet_groups.rs runs one against diffusers), and the SDXL
    // fixture has 8.
    let sd16 = SDXL_BASE_UNET
        .replace("\"text_time\"", "null")
        .replace("\"projection_class_embeddings_input_dim\": 2816", "\"projection_class_embeddings_input_dim\": null")
        .replace("\"norm_num_groups\": 32", "\"norm_num_groups\": 16");
    let arch = deradiff_sd::UnetConfig::from_json(&sd16, "x.json").unwrap().arch("x.json").unwrap();
    assert_eq!((arch.norm_num_groups, arch.text_time), (16, None));
    let groups = deradiff_sd::UnetConfig::from_file(tiny_sdxl().join("unet/config.json")).unwrap().norm_num_groups;
    assert_eq!(groups, Some(8));
    // The refiner's aesthetic-score conditioning (5 ids: 2560 = 1280 + 5 × 256) is refused.
    let refiner = SDXL_BASE_UNET.replace("2816", "1536");
    let err = deradiff_sd::UnetConfig::from_json(&refiner, "x.json").unwrap().arch("x.json").unwrap_err();
    assert!(err.to_string().contains("projection_class_embeddings_input_dim"), "{err}");
}
