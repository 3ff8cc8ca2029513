//! LoRA adapters in the UNet: one joint pass over the rows of the reference and several
//! LoRA-aligned models equals each model's merged-weight UNet run on its own rows (the merged
//! weights `W + m · scale · up · down` computed independently here, in f64, from the adapter's
//! tensors), for linear layers (attention, feed-forward, time embedding), 1×1 projections
//! (`proj_in` / `proj_out` as convolutions) and LoCon convolutions (3×3, strided), on the tiny
//! SD 1.x and SDXL UNets; and JointGuided equals Guided around the merged UNets.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use deradiff_core::Denoiser;
use deradiff_sd::lora::{LoraAdapter, LoraFormat, LoraLayer};
use deradiff_sd::{AddedConditioning, Error, Guided, JointGuided, PromptEmbeddings, RowGroup, Unet};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Deterministic pseudo-random values in [-1, 1) (a small LCG; no dependency on our noise code).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f64 / (1u64 << 24) as f64 * 2.0 - 1.0) as f32
        })
        .collect()
}

fn tensor(shape: &[usize], seed: u64, amplitude: f32) -> Tensor {
    let n = shape.iter().product();
    let v: Vec<f32> = values(n, seed).into_iter().map(|x| x * amplitude).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// A random adapter on `paths` of `unet` (rank `r`, alpha `alpha`).
fn adapter(unet: &Unet, paths: &[&str], r: usize, alpha: Option<f64>, seed: u64) -> LoraAdapter {
    let shapes = unet.layer_shapes();
    let mut layers = BTreeMap::new();
    for (i, p) in paths.iter().enumerate() {
        let w = shapes.get(*p).unwrap_or_else(|| panic!("no layer {p}: {:?}", shapes.keys().collect::<Vec<_>>()));
        let mut down_shape = vec![r];
        down_shape.extend_from_slice(&w[1..]);
        let mut up_shape = vec![w[0], r];
        up_shape.extend(std::iter::repeat_n(1, w.len() - 2));
        let s = seed * 1000 + i as u64 * 2;
        layers.insert(
            p.to_string(),
            LoraLayer {
                down: tensor(&down_shape, s, 0.3),
                up: tensor(&up_shape, s + 1, 0.3),
                alpha,
                origin: format!("test.{p}"),
            },
        );
    }
    LoraAdapter::from_layers(layers, LoraFormat::Diffusers, format!("adapter-{seed}"))
}

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn sd_unet() -> Unet {
    Unet::load(fixtures().join("tiny-sd/unet"), None, DType::F32, &Device::Cpu).unwrap()
}

fn sdxl_unet() -> Unet {
    Unet::load(fixtures().join("tiny-sdxl/unet"), None, DType::F32, &Device::Cpu).unwrap()
}

const SD_PATHS_A: &[&str] = &[
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_out.0",
    "down_blocks.0.attentions.0.proj_in",
    "mid_block.attentions.0.proj_out",
    "mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj",
    "up_blocks.1.attentions.0.transformer_blocks.0.ff.net.2",
    "down_blocks.0.resnets.0.conv1",
    "down_blocks.0.downsamplers.0.conv",
    "up_blocks.0.resnets.0.conv_shortcut",
    "time_embedding.linear_1",
    "up_blocks.1.resnets.1.time_emb_proj",
    "conv_in",
    "conv_out",
];

const SD_PATHS_B: &[&str] = &[
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_v",
    "up_blocks.1.attentions.1.transformer_blocks.0.attn2.to_q",
    "mid_block.resnets.1.conv2",
    "up_blocks.0.upsamplers.0.conv",
];

/// The merged weights of one layer, computed here in f64 from the adapter's tensors.
fn merged_reference(weight: &Tensor, layer: &LoraLayer, multiplier: f64) -> Vec<f64> {
    let w: Vec<f64> = weight.flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1().unwrap();
    let down: Vec<f64> = layer.down.flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1().unwrap();
    let up: Vec<f64> = layer.up.flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1().unwrap();
    let r = layer.rank();
    let inner = down.len() / r;
    let out = up.len() / r;
    let scale = multiplier * layer.alpha.map_or(1.0, |a| a / r as f64);
    let mut m = w.clone();
    for o in 0..out {
        for i in 0..inner {
            let d: f64 = (0..r).map(|k| up[o * r + k] * down[k * inner + i]).sum();
            m[o * inner + i] += scale * d;
        }
    }
    m
}

#[test]
fn layer_shapes_name_every_linear_and_convolution() {
    let unet = sd_unet();
    let shapes = unet.layer_shapes();
    assert_eq!(shapes["conv_in"], vec![32, 4, 3, 3]);
    // proj_in / proj_out of an SD 1.x UNet are 1×1 convolutions in the file.
    assert_eq!(shapes["down_blocks.0.attentions.0.proj_in"], vec![32, 32, 1, 1]);
    assert_eq!(shapes["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"], vec![32, 32]);
    assert_eq!(shapes["down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"], vec![32, 32]);
    assert_eq!(shapes["time_embedding.linear_1"], vec![128, 32]);
    // Every layer's shape is its weight's shape in the file (the loader recorded them).
    let st = candle_core::safetensors::load(
        fixtures().join("tiny-sd/unet/diffusion_pytorch_model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    for (path, shape) in shapes {
        let w = st.get(&format!("{path}.weight")).unwrap_or_else(|| panic!("{path}.weight not in the file"));
        assert_eq!(w.dims(), shape.as_slice(), "{path}");
    }
    let linear_or_conv = st.iter().filter(|(k, v)| k.ends_with(".weight") && (v.rank() == 2 || v.rank() == 4)).count();
    assert_eq!(shapes.len(), linear_or_conv);
    // SDXL: add_embedding and linear projections.
    let xl = sdxl_unet();
    assert!(xl.layer_shapes().contains_key("add_embedding.linear_1"));
}

#[test]
fn merged_weights_are_w_plus_scaled_up_down() {
    let unet = sd_unet();
    let a = adapter(&unet, SD_PATHS_A, 3, Some(6.0), 1);
    let merged = unet.merged_with(&a, 0.5).unwrap();
    // Through the forward pass: a UNet over weights merged here in f64 gives the same output.
    let st = candle_core::safetensors::load(
        fixtures().join("tiny-sd/unet/diffusion_pytorch_model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let mut tensors = st.clone();
    for (path, layer) in a.layers() {
        let w = &st[&format!("{path}.weight")];
        let m = merged_reference(w, layer, 0.5);
        tensors.insert(
            format!("{path}.weight"),
            Tensor::from_vec(m, w.dims(), &Device::Cpu).unwrap().to_dtype(DType::F32).unwrap(),
        );
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("lora-merged-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(fixtures().join("tiny-sd/unet/config.json"), dir.join("config.json")).unwrap();
    candle_core::safetensors::save(&tensors, dir.join("diffusion_pytorch_model.safetensors")).unwrap();
    let independent = Unet::load(&dir, None, DType::F32, &Device::Cpu).unwrap();
    let (x, ctx) = (tensor(&[2, 4, 8, 8], 7, 1.0), tensor(&[2, 5, 32], 8, 1.0));
    let got = merged.forward(&x, 500.0, &ctx).unwrap();
    let want = independent.forward(&x, 500.0, &ctx).unwrap();
    let diff = max_abs(&got, &want);
    assert!(diff < 1e-5, "merged UNet vs weights merged in f64: {diff}");
    // And the adapter changes the output (the test is not vacuous).
    assert!(max_abs(&got, &unet.forward(&x, 500.0, &ctx).unwrap()) > 1e-2);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn one_joint_pass_equals_merged_unets_run_separately() {
    let unet = sd_unet();
    let a = adapter(&unet, SD_PATHS_A, 3, Some(6.0), 1);
    let b = adapter(&unet, SD_PATHS_B, 2, None, 2);
    let joint = unet.with_adapters(&[(&a, 1.0), (&b, 0.7)]).unwrap();
    assert_eq!(joint.num_adapters(), 2);
    let x = tensor(&[6, 4, 8, 8], 11, 1.0);
    let ctx = tensor(&[6, 5, 32], 12, 1.0);
    let groups = [
        RowGroup { adapter: None, rows: 2 },
        RowGroup { adapter: Some(0), rows: 2 },
        RowGroup { adapter: Some(1), rows: 2 },
    ];
    let out = joint.forward_rows(&x, 321.0, &ctx, None, &groups).unwrap();
    let rows = |t: &Tensor, i: usize| t.narrow(0, 2 * i, 2).unwrap();
    let separate = [
        unet.forward(&rows(&x, 0), 321.0, &rows(&ctx, 0)).unwrap(),
        unet.merged_with(&a, 1.0).unwrap().forward(&rows(&x, 1), 321.0, &rows(&ctx, 1)).unwrap(),
        unet.merged_with(&b, 0.7).unwrap().forward(&rows(&x, 2), 321.0, &rows(&ctx, 2)).unwrap(),
    ];
    for (i, s) in separate.iter().enumerate() {
        let diff = max_abs(&rows(&out, i), s);
        assert!(diff < 1e-5, "group {i}: joint vs merged {diff}");
    }
    // The base rows equal the base UNet's up to the GEMMs' blocking, which depends on the batch
    // size (no adapter touches them).
    assert!(max_abs(&rows(&out, 0), &separate[0]) < 1e-5);
    // Groups in another order and the adapter views give the same rows.
    let view = joint.adapter_view(Some(1));
    let v = deradiff_sd::ConditionalModel::forward_conditional(&view, &rows(&x, 2), 321.0, &rows(&ctx, 2)).unwrap();
    assert!(max_abs(&v, &separate[2]) < 1e-5);
}

#[test]
fn sdxl_joint_pass_equals_merged_unets() {
    let unet = sdxl_unet();
    let shapes = unet.layer_shapes();
    let linear: Vec<&str> =
        shapes.iter().filter(|(p, s)| s.len() == 2 && p.contains("attn")).map(|(p, _)| p.as_str()).take(6).collect();
    let mut paths = linear.clone();
    paths.extend(["add_embedding.linear_1", "down_blocks.1.attentions.0.proj_in", "conv_in"]);
    let a = adapter(&unet, &paths, 2, Some(1.0), 3);
    let joint = unet.with_adapters(&[(&a, 1.0)]).unwrap();
    let tt = unet.text_time().unwrap();
    let (c, d) = (unet.in_channels(), unet.cross_attention_dim());
    let x = tensor(&[4, c, 8, 8], 21, 1.0);
    let ctx = tensor(&[4, 3, d], 22, 1.0);
    let added = AddedConditioning::new(tensor(&[4, tt.pooled_dim], 23, 1.0), tensor(&[4, 6], 24, 8.0)).unwrap();
    let groups = [RowGroup { adapter: None, rows: 2 }, RowGroup { adapter: Some(0), rows: 2 }];
    let out = joint.forward_rows(&x, 600.0, &ctx, Some(&added), &groups).unwrap();
    let half = |t: &Tensor, i: usize| t.narrow(0, 2 * i, 2).unwrap();
    let added_half =
        |i: usize| AddedConditioning::new(half(added.text_embeds(), i), half(added.time_ids(), i)).unwrap();
    let base = unet.forward_added(&half(&x, 0), 600.0, &half(&ctx, 0), Some(&added_half(0))).unwrap();
    let merged = unet.merged_with(&a, 1.0).unwrap();
    let aligned = merged.forward_added(&half(&x, 1), 600.0, &half(&ctx, 1), Some(&added_half(1))).unwrap();
    assert!(max_abs(&half(&out, 0), &base) < 1e-5);
    let diff = max_abs(&half(&out, 1), &aligned);
    assert!(diff < 1e-5, "SDXL joint vs merged: {diff}");
    assert!(
        max_abs(&aligned, &unet.forward_added(&half(&x, 1), 600.0, &half(&ctx, 1), Some(&added_half(1))).unwrap())
            > 1e-3
    );
}

#[test]
fn joint_guidance_equals_guided_merged_unets() {
    let unet = sd_unet();
    let a = adapter(&unet, SD_PATHS_A, 3, Some(3.0), 4);
    let b = adapter(&unet, SD_PATHS_B, 2, None, 5);
    let joint = unet.with_adapters(&[(&a, 1.0), (&b, 1.0)]).unwrap();
    let emb = PromptEmbeddings::new(tensor(&[2, 5, 32], 31, 1.0), Some(tensor(&[2, 5, 32], 32, 1.0))).unwrap();
    let guided = JointGuided::new(&joint, vec![None, Some(0), Some(1)], &emb, 7.5).unwrap();
    let denoisers = guided.denoisers();
    let (ma, mb) = (unet.merged_with(&a, 1.0).unwrap(), unet.merged_with(&b, 1.0).unwrap());
    let separate = [
        Guided::new(&unet, &emb, 7.5).unwrap(),
        Guided::new(&ma, &emb, 7.5).unwrap(),
        Guided::new(&mb, &emb, 7.5).unwrap(),
    ];
    let x = tensor(&[2, 4, 8, 8], 33, 1.0);
    let before = joint.forward_calls();
    for (d, s) in denoisers.iter().zip(&separate) {
        let want = s.predict(&x, 401.0).unwrap();
        let diff = max_abs(&d.predict(&x, 401.0).unwrap(), &want);
        // uncond + g (cond − uncond) amplifies the UNet outputs' differences (the 1e-5 bar of
        // the test above) by up to 2g + 1 = 16.
        assert!(diff < 16.0 * 1e-5, "joint guidance vs guided merged UNet: {diff}");
    }
    // One UNet pass served all three models.
    assert_eq!(joint.forward_calls() - before, 1);
    // Another latents tensor is another pass.
    let x2 = (&x * 0.5).unwrap();
    denoisers[2].predict(&x2, 401.0).unwrap();
    assert_eq!(joint.forward_calls() - before, 2);
}

#[test]
fn adapters_that_do_not_fit_are_errors_naming_the_key() {
    let unet = sd_unet();
    let mut layers = BTreeMap::new();
    layers.insert(
        "down_blocks.0.attentions.0.transformer_blocks.0.attn9.to_q".to_string(),
        LoraLayer {
            down: tensor(&[2, 32], 1, 1.0),
            up: tensor(&[32, 2], 2, 1.0),
            alpha: None,
            origin: "lora_unet_x_attn9".into(),
        },
    );
    let bad = LoraAdapter::from_layers(layers, LoraFormat::Diffusers, "bad.safetensors");
    let err = unet.merged_with(&bad, 1.0).unwrap_err();
    assert!(matches!(&err, Error::Lora { .. }) && err.to_string().contains("lora_unet_x_attn9"), "{err}");
    let err = unet.with_adapters(&[(&bad, 1.0)]).unwrap_err();
    assert!(err.to_string().contains("attn9"), "{err}");
    // Shapes that do not fit the layer.
    let mut layers = BTreeMap::new();
    layers.insert(
        "conv_in".to_string(),
        LoraLayer {
            down: tensor(&[2, 4, 1, 1], 1, 1.0),
            up: tensor(&[32, 2, 1, 1], 2, 1.0),
            alpha: None,
            origin: "conv_in_key".into(),
        },
    );
    let bad = LoraAdapter::from_layers(layers, LoraFormat::Diffusers, "bad2.safetensors");
    let err = unet.merged_with(&bad, 1.0).unwrap_err();
    assert!(err.to_string().contains("conv_in_key") && err.to_string().contains("[32, 4, 3, 3]"), "{err}");
    // Bad multipliers and groups.
    let a = adapter(&unet, SD_PATHS_B, 2, None, 9);
    assert!(unet.merged_with(&a, f64::NAN).is_err());
    let joint = unet.with_adapters(&[(&a, 1.0)]).unwrap();
    let (x, ctx) = (tensor(&[2, 4, 8, 8], 1, 1.0), tensor(&[2, 5, 32], 2, 1.0));
    let wrong_total = [RowGroup { adapter: None, rows: 1 }, RowGroup { adapter: Some(0), rows: 2 }];
    assert!(matches!(joint.forward_rows(&x, 1.0, &ctx, None, &wrong_total), Err(Error::ShapeMismatch { .. })));
    let unknown = [RowGroup { adapter: Some(3), rows: 2 }];
    assert!(matches!(joint.forward_rows(&x, 1.0, &ctx, None, &unknown), Err(Error::InvalidArgument(_))));
}
