//! Models that would make a sample, a score or an extracted adapter NaN, and samples that
//! saturate: NaN or infinite weights are refused at load (one pass over each tensor), naming the
//! file and the tensor; a value the model's dtype cannot hold likewise; a model whose output
//! overflows while sampling is named (the reference, an aligned UNet, a LoRA adapter, the
//! weight-space model, the VAE) with the step; `extract_lora` never reports an error for a
//! difference that is not finite; a decoded image's saturation is measured. Every case checks
//! the error's variant and message, and that no input file changed.

mod common;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use common::edit::{copy_tree, pad_header, rewrite, Edit, Snapshot};
use common::*;
use deradiff_core::{NoObserver, Realigner};
use deradiff_sd::lora::{extract_lora, ExtractOptions};
use deradiff_sd::{Error, LoadOptions, Request, StableDiffusion, Unet, Vae};

const UNET_FILE: &str = "diffusion_pytorch_model.safetensors";

/// A copy of `from` (a folder) at `root/name` with `edits` applied to `file` inside it.
fn broken(root: &Path, name: &str, from: &Path, file: &str, edits: &[(&str, Edit)]) -> PathBuf {
    let to = root.join(name);
    copy_tree(from, &to);
    rewrite(&from.join(file), &to.join(file), edits, None);
    to
}

fn request() -> Request {
    Request { prompts: vec!["a cube".into()], steps: 2, ..Default::default() }
}

/// Loads a pipeline and samples one image; the error, with the inputs checked unchanged.
fn generate_err(case: &str, reference: &Path, aligned: &[&Path], options: &LoadOptions, inputs: &[&Path]) -> Error {
    let before = Snapshot::of(inputs);
    let result = StableDiffusion::load(reference, aligned, options)
        .and_then(|sd| sd.generate(&request(), &Realigner::two_model(0.5)?, &mut NoObserver));
    before.assert_unchanged(inputs, case);
    match result {
        Ok(_) => panic!("{case}: sampled"),
        Err(e) => {
            println!("{case}: {e}");
            e
        }
    }
}

fn expect(case: &str, e: &Error, variant_ok: bool, needles: &[&str]) {
    let m = e.to_string();
    assert!(variant_ok, "{case}: wrong variant: {e:?}");
    for n in needles {
        assert!(m.contains(n), "{case}: `{n}` not in: {m}");
    }
}

#[test]
fn non_finite_weights_are_refused_at_load_naming_file_and_tensor() {
    let root = scratch("nonfinite-load");
    let sd = tiny_sd();
    let aligned_nan = broken(
        &root,
        "aligned-nan",
        &tiny_aligned(),
        UNET_FILE,
        &[("down_blocks.0.resnets.0.conv1.weight", Edit::Set(3, f64::NAN))],
    );
    let aligned_inf =
        broken(&root, "aligned-inf", &tiny_aligned(), UNET_FILE, &[("conv_out.bias", Edit::Set(1, f64::INFINITY))]);
    let ref_unet = broken(
        &root,
        "ref-unet",
        &sd,
        &format!("unet/{UNET_FILE}"),
        &[("conv_in.weight", Edit::Set(0, f64::NEG_INFINITY))],
    );
    let ref_vae = broken(
        &root,
        "ref-vae",
        &sd,
        &format!("vae/{UNET_FILE}"),
        &[("decoder.conv_out.weight", Edit::Set(9, f64::NAN))],
    );
    let ref_te = broken(
        &root,
        "ref-te",
        &sd,
        "text_encoder/model.safetensors",
        &[("text_model.encoder.layers.0.mlp.fc1.weight", Edit::Set(2, f64::NAN))],
    );
    let aligned_file = root.join("aligned-file.safetensors");
    rewrite(
        &tiny_aligned().join(UNET_FILE),
        &aligned_file,
        &[("time_embedding.linear_1.bias", Edit::Set(0, f64::NAN))],
        None,
    );
    let o = LoadOptions::default();
    #[allow(clippy::type_complexity)]
    let cases: Vec<(&str, PathBuf, Vec<PathBuf>, PathBuf, &str, &str)> = vec![
        (
            "aligned UNet NaN",
            sd.clone(),
            vec![aligned_nan.clone()],
            aligned_nan.join(UNET_FILE),
            "down_blocks.0.resnets.0.conv1.weight",
            "holds NaN at element 3",
        ),
        (
            "aligned UNet +inf",
            sd.clone(),
            vec![aligned_inf.clone()],
            aligned_inf.join(UNET_FILE),
            "conv_out.bias",
            "holds inf at element 1 of 4",
        ),
        (
            "aligned bare UNet file NaN",
            sd.clone(),
            vec![aligned_file.clone()],
            aligned_file.clone(),
            "time_embedding.linear_1.bias",
            "holds NaN at element 0",
        ),
        (
            "reference UNet -inf",
            ref_unet.clone(),
            vec![tiny_aligned()],
            ref_unet.join("unet").join(UNET_FILE),
            "conv_in.weight",
            "holds -inf at element 0",
        ),
        (
            "reference VAE NaN",
            ref_vae.clone(),
            vec![tiny_aligned()],
            ref_vae.join("vae").join(UNET_FILE),
            "decoder.conv_out.weight",
            "holds NaN at element 9",
        ),
        (
            "reference text encoder NaN",
            ref_te.clone(),
            vec![tiny_aligned()],
            ref_te.join("text_encoder/model.safetensors"),
            "text_model.encoder.layers.0.mlp.fc1.weight",
            "holds NaN at element 2",
        ),
    ];
    for (case, reference, aligned, file, tensor, what) in &cases {
        let aligned: Vec<&Path> = aligned.iter().map(PathBuf::as_path).collect();
        let e = generate_err(case, reference, &aligned, &o, &[&root, &fixtures()]);
        let ok = matches!(&e, Error::NonFiniteTensor { file: f, tensor: t, .. } if f == file && t == tensor);
        expect(case, &e, ok, &[tensor, what, "weights must be finite"]);
    }
    // A value f32 holds and f16 does not: refused when the model is loaded in f16.
    let big = broken(&root, "big", &tiny_aligned(), UNET_FILE, &[("conv_out.weight", Edit::Set(4, 1e5))]);
    Unet::load(&big, None, DType::F32, &Device::Cpu).unwrap();
    let before = Snapshot::of(&[&root]);
    let e = Unet::load(&big, None, DType::F16, &Device::Cpu).unwrap_err();
    before.assert_unchanged(&[&root], "f16 overflow");
    let ok = matches!(&e, Error::NonFiniteTensor { tensor, .. } if tensor == "conv_out.weight");
    expect("f16 overflow", &e, ok, &["1e5 at element 4", "infinite in F16", "wider dtype (f32)"]);
}

#[test]
fn a_model_whose_output_overflows_is_named_with_the_step() {
    let root = scratch("nonfinite-output");
    let (sd, aligned) = (tiny_sd(), tiny_aligned());
    // Finite weights, so large that the activations overflow f32 (the first norm squares them).
    let huge_aligned =
        broken(&root, "huge-aligned", &tiny_aligned(), UNET_FILE, &[("conv_in.weight", Edit::Scale(1e37))]);
    let huge_ref =
        broken(&root, "huge-ref", &sd, &format!("unet/{UNET_FILE}"), &[("conv_in.weight", Edit::Scale(1e37))]);
    let q = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0.lora.up.weight";
    let lora = root.join("huge-lora.safetensors");
    rewrite(&fixtures().join("lora/sd-diffusers.safetensors"), &lora, &[(q, Edit::Scale(1e36))], None);
    let o = LoadOptions::default();
    let separate = LoadOptions { joint_pass: false, ..LoadOptions::default() };
    let cases: Vec<(&str, &Path, &Path, &LoadOptions, String)> = vec![
        (
            "aligned UNet",
            &sd,
            &huge_aligned,
            &o,
            format!("aligned model 1 (the UNet {})", huge_aligned.join(UNET_FILE).display()),
        ),
        (
            "reference UNet",
            &huge_ref,
            &aligned,
            &o,
            format!("the reference UNet ({})", huge_ref.join("unet").join(UNET_FILE).display()),
        ),
        (
            "LoRA, joint pass",
            &sd,
            &lora,
            &o,
            format!("aligned model 1 (the LoRA adapter {} on the reference UNet)", lora.display()),
        ),
        (
            "LoRA, separate passes",
            &sd,
            &lora,
            &separate,
            format!("aligned model 1 (the LoRA adapter {}", lora.display()),
        ),
    ];
    for (case, reference, aligned, options, model) in cases {
        let e = generate_err(case, reference, &[aligned], options, &[&root, &fixtures()]);
        let ok = matches!(&e, Error::NonFiniteOutput { at, .. } if at.starts_with("at step 0 (timestep"));
        expect(case, &e, ok, &[&model, "became non-finite at step 0"]);
    }
    // Weight space: the merged model is named, with its λ.
    let pipe = StableDiffusion::load(&sd, &[fixtures().join("lora/sd-diffusers.safetensors")], &o).unwrap();
    let r = request();
    let encoded = pipe.encode(&r).unwrap();
    let mut noise = deradiff_core::SeededNoise::new(0);
    let e = pipe.sample_weight_space(&r, &encoded, &[1e30], &mut noise, &mut NoObserver).unwrap_err();
    expect("weight space", &e, matches!(e, Error::NonFiniteOutput { .. }), &["the weight-space model", "λ = [1e30]"]);
}

#[test]
fn decoded_images_are_measured_and_a_non_finite_decode_is_named() {
    let root = scratch("nonfinite-vae");
    let sd_dir = tiny_sd();
    let loud = broken(&root, "loud", &sd_dir.join("vae"), UNET_FILE, &[("decoder.conv_out.weight", Edit::Scale(1e3))]);
    let inf = broken(&root, "inf", &sd_dir.join("vae"), UNET_FILE, &[("decoder.conv_in.weight", Edit::Scale(1e37))]);
    let sd = StableDiffusion::load(&sd_dir, &[tiny_aligned()], &LoadOptions::default()).unwrap();
    let out = sd.generate(&request(), &Realigner::two_model(0.5).unwrap(), &mut NoObserver).unwrap();
    let (images, normal) = sd.decode_with_saturation(&out.latents).unwrap();
    assert_eq!(images[0].data(), out.images[0].data());
    assert!(normal[0] < 0.2, "{normal:?}");
    let before = Snapshot::of(&[&root]);
    let vae = Vae::load(&loud, DType::F32, &Device::Cpu).unwrap();
    let (_, saturated) = vae.decode_with_saturation(&out.latents).unwrap();
    assert!(saturated[0] >= Vae::SATURATED, "{saturated:?}");
    // The measure: the fraction of pixels with a channel outside [-1, 1].
    let raw = vae.decode_unscaled(&vae.unscale(&out.latents).unwrap()).unwrap();
    let v = raw.permute((0, 2, 3, 1)).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let clipped = v.chunks(3).filter(|p| p.iter().any(|x| x.abs() > 1.0)).count() as f64 / (v.len() / 3) as f64;
    assert_eq!(saturated[0], clipped);
    let vae = Vae::load(&inf, DType::F32, &Device::Cpu).unwrap();
    let e = vae.decode(&out.latents).unwrap_err();
    let ok = matches!(&e, Error::NonFiniteOutput { at, .. } if at == "in image 1 of 1");
    expect("VAE overflow", &e, ok, &[&format!("the VAE decoder ({})", inf.display())]);
    assert!(vae.decode_f32(&out.latents).is_err());
    before.assert_unchanged(&[&root], "VAE");
}

#[test]
fn extract_lora_never_reports_an_error_for_a_difference_that_is_not_finite() {
    // f64 UNets whose difference overflows f64: ±1.5e308 in one weight.
    let root = scratch("nonfinite-extract");
    let to_f64 = |name: &str, v: f64| {
        let d = root.join(name);
        copy_tree(&tiny_aligned(), &d);
        let st = candle_core::safetensors::load(tiny_aligned().join(UNET_FILE), &Device::Cpu).unwrap();
        let mut st: std::collections::HashMap<String, Tensor> =
            st.into_iter().map(|(k, t)| (k, t.to_dtype(DType::F64).unwrap())).collect();
        let w = st["conv_in.weight"].flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let mut w2 = w.clone();
        w2[0] = v;
        let shape = st["conv_in.weight"].dims().to_vec();
        st.insert("conv_in.weight".into(), Tensor::from_vec(w2, shape, &Device::Cpu).unwrap());
        candle_core::safetensors::save(&st, d.join(UNET_FILE)).unwrap();
        Unet::load(&d, None, DType::F64, &Device::Cpu).unwrap()
    };
    let (a, b) = (to_f64("a", 1.5e308), to_f64("b", -1.5e308));
    let before = Snapshot::of(&[&root]);
    let e = extract_lora(&a, &b, &ExtractOptions { rank: 2, ..Default::default() }).unwrap_err();
    before.assert_unchanged(&[&root], "extract");
    expect(
        "extract",
        &e,
        matches!(e, Error::InvalidArgument(_)),
        &["`conv_in`", "is inf, not finite", "nothing was extracted"],
    );
}

#[test]
fn a_unet_file_whose_header_length_starts_like_a_pickle_loads() {
    // 0x010280: `80 02 01 …`, a pickle's protocol-2 mark by its first two bytes.
    let root = scratch("nonfinite-header");
    let d = root.join("unet");
    copy_tree(&tiny_aligned(), &d);
    pad_header(&tiny_aligned().join(UNET_FILE), &d.join(UNET_FILE), 0x0001_0280);
    assert_eq!(&std::fs::read(d.join(UNET_FILE)).unwrap()[..3], &[0x80, 0x02, 0x01]);
    let a = Unet::load(&d, None, DType::F32, &Device::Cpu).unwrap();
    let b = Unet::load(tiny_aligned(), None, DType::F32, &Device::Cpu).unwrap();
    let x = reference("unet.x");
    let ctx = reference("unet.emb");
    let (ya, yb) = (a.forward(&x, 500.0, &ctx).unwrap(), b.forward(&x, 500.0, &ctx).unwrap());
    assert_eq!(max_abs_diff(&ya, &yb), 0.0);
}

#[test]
fn a_malformed_safetensors_header_names_the_tensor() {
    let root = scratch("nonfinite-malformed");
    let unet_file = tiny_aligned().join(UNET_FILE);
    let lora_file = fixtures().join("lora/sd-diffusers.safetensors");
    let conv_in = "conv_in.weight";
    let lora_up = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora.up.weight";
    type HeaderEdit = Box<dyn Fn(&mut serde_json::Map<String, serde_json::Value>)>;
    let set = |tensor: &'static str, field: &'static str, value: serde_json::Value| -> HeaderEdit {
        Box::new(move |h| {
            h[tensor][field] = value.clone();
        })
    };
    let cases: Vec<(&str, &Path, HeaderEdit, usize, &str, &str)> = vec![
        (
            "UNet: a shape that its bytes do not hold",
            &unet_file,
            set(conv_in, "shape", serde_json::json!([32, 4, 3, 4])),
            0,
            conv_in,
            "bytes, but shape [32, 4, 3, 4] of F16 needs",
        ),
        (
            "UNet: an unknown dtype",
            &unet_file,
            set(conv_in, "dtype", "F12".into()),
            0,
            conv_in,
            "unknown dtype \"F12\"",
        ),
        ("UNet: truncated", &unet_file, Box::new(|_| {}), 64, "", "reach past the end of the data"),
        (
            "UNet: offsets that overlap",
            &unet_file,
            set(conv_in, "data_offsets", serde_json::json!([0, 2304])),
            0,
            "",
            "overlaps",
        ),
        (
            "LoRA: a shape that its bytes do not hold",
            &lora_file,
            set(lora_up, "shape", serde_json::json!([32, 5])),
            0,
            lora_up,
            "of F32 needs 640",
        ),
        ("LoRA: truncated", &lora_file, Box::new(|_| {}), 16, "", "the file is truncated"),
    ];
    let unet = Unet::load(tiny_sd().join("unet"), None, DType::F32, &Device::Cpu).unwrap();
    for (i, (case, from, edit, cut, tensor, what)) in cases.iter().enumerate() {
        let d = root.join(format!("c{i}"));
        copy_tree(&tiny_aligned(), &d);
        let file = d.join(if *from == unet_file { UNET_FILE } else { "lora.safetensors" });
        common::edit::edit_header(from, &file, edit, *cut);
        let before = Snapshot::of(&[&root]);
        let e = if *from == unet_file {
            Unet::load(&d, None, DType::F32, &Device::Cpu).unwrap_err()
        } else {
            deradiff_sd::lora::LoraAdapter::load(&file, &unet).unwrap_err()
        };
        before.assert_unchanged(&[&root], case);
        println!("{case}: {e}");
        let ok = matches!(&e, Error::Weights { file: f, .. } | Error::Lora { path: f, .. } if f == &file);
        expect(case, &e, ok, &[tensor, what]);
    }
}
