//! SDXL components against diffusers / transformers on the tiny SDXL fixtures
//! (`scripts/gen_sdxl_fixtures.py`): the UNet with `text_time` added conditioning and exact-GELU
//! transformer blocks (output within 1e-5; changing time_ids changes the output as in diffusers), both text encoders' prompt and
//! pooled embeddings within 1e-4 (including `force_zeros_for_empty_prompt`).

mod common;

use candle_core::{DType, Device, Tensor};
use common::*;
use deradiff_sd::{text::load_clip_with_projection, AddedConditioning, ClipTokenizer, Unet};

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
    assert!(matches!(unet.forward(&x, 10.0, &emb), Err(deradiff_sd::Error::InvalidArgument(_))));
    let short =
        AddedConditioning::new(xl_reference("unet.pooled"), xl_reference("unet.time_ids").narrow(1, 0, 5).unwrap())
            .unwrap();
    assert!(matches!(unet.forward_added(&x, 10.0, &emb, Some(&short)), Err(deradiff_sd::Error::InvalidArgument(_))));
    let sd = Unet::load(tiny_sd(), None, DType::F32, &Device::Cpu).unwrap();
    assert!(sd.text_time().is_none());
    let x8 = Tensor::zeros((2, 4, 8, 8), DType::F32, &Device::Cpu).unwrap();
    let ctx = Tensor::zeros((2, 77, 32), DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(
        sd.forward_added(&x8, 10.0, &ctx, Some(&added("unet.time_ids"))),
        Err(deradiff_sd::Error::InvalidArgument(_))
    ));
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
