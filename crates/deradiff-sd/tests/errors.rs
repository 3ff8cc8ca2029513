//! Bad checkpoints and bad arguments give errors that say what is wrong (file, tensor, argument),
//! never panics.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use common::*;
use deradiff_core::{NoObserver, Realigner};
use deradiff_sd::{Error, Guided, LoadOptions, Request, RgbImage, StableDiffusion, Unet, UnetConfig};

fn sd() -> &'static StableDiffusion {
    static SD: OnceLock<StableDiffusion> = OnceLock::new();
    SD.get_or_init(|| StableDiffusion::load(tiny_sd(), &[tiny_aligned()], &LoadOptions::default()).unwrap())
}

fn load(reference: &Path, aligned: &[&Path]) -> Error {
    let err = StableDiffusion::load(reference, aligned, &LoadOptions::default()).unwrap_err();
    println!("{err}");
    err
}

/// A copy of the tiny checkpoint to break.
fn broken_copy(name: &str) -> std::path::PathBuf {
    let dir = scratch(name);
    copy_dir(&tiny_sd(), &dir);
    dir
}

fn unet_tensors() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(tiny_sd().join("unet/diffusion_pytorch_model.safetensors"), &Device::Cpu).unwrap()
}

#[test]
fn missing_directory_and_files() {
    let nowhere = scratch("missing").join("nope");
    assert!(matches!(load(&nowhere, &[]), Error::NotFound { ref path, .. } if path == &nowhere));

    let dir = broken_copy("missing-vae");
    std::fs::remove_dir_all(dir.join("vae")).unwrap();
    assert!(matches!(load(&dir, &[]), Error::NotFound { ref path, .. } if path.ends_with("vae")));

    let dir = broken_copy("missing-scheduler");
    std::fs::remove_file(dir.join("scheduler/scheduler_config.json")).unwrap();
    assert!(
        matches!(load(&dir, &[]), Error::NotFound { ref path, .. } if path.ends_with("scheduler/scheduler_config.json"))
    );

    let dir = broken_copy("missing-unet-weights");
    std::fs::remove_file(dir.join("unet/diffusion_pytorch_model.safetensors")).unwrap();
    let err = load(&dir, &[]);
    assert!(
        matches!(err, Error::NotFound { ref path, .. } if path.ends_with("unet/diffusion_pytorch_model.safetensors"))
    );

    let dir = broken_copy("missing-vocab");
    std::fs::remove_file(dir.join("tokenizer/merges.txt")).unwrap();
    assert!(matches!(load(&dir, &[]), Error::NotFound { ref path, .. } if path.ends_with("tokenizer/merges.txt")));

    let missing_aligned = scratch("missing-aligned").join("dpo-unet");
    assert!(
        matches!(load(&tiny_sd(), &[&missing_aligned]), Error::NotFound { ref path, .. } if path == &missing_aligned)
    );
}

#[test]
fn pickle_weights_are_refused() {
    let dir = broken_copy("pickle");
    let unet = dir.join("unet");
    std::fs::rename(unet.join("diffusion_pytorch_model.safetensors"), unet.join("diffusion_pytorch_model.bin"))
        .unwrap();
    assert!(
        matches!(load(&dir, &[]), Error::Unsupported { ref path, .. } if path.ends_with("diffusion_pytorch_model.bin"))
    );
}

#[test]
fn malformed_files_are_named() {
    let dir = broken_copy("malformed-safetensors");
    let file = dir.join("vae/diffusion_pytorch_model.safetensors");
    std::fs::write(&file, b"this is not a safetensors file").unwrap();
    assert!(matches!(load(&dir, &[]), Error::NotSafetensors { ref path, .. } if path == &file));
    // One that starts like safetensors but whose header is not valid is a weights error.
    let mut bytes = 8u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{\"a\": 1}");
    std::fs::write(&file, &bytes).unwrap();
    assert!(matches!(load(&dir, &[]), Error::Weights { file: ref f, .. } if f == &file));

    let dir = broken_copy("malformed-config");
    let cfg = dir.join("unet/config.json");
    std::fs::write(&cfg, "{\"block_out_channels\": [32, 64],").unwrap();
    assert!(matches!(load(&dir, &[]), Error::Config { ref path, .. } if path == &cfg));

    let dir = broken_copy("malformed-scheduler");
    std::fs::write(dir.join("scheduler/scheduler_config.json"), "[1, 2").unwrap();
    let err = load(&dir, &[]);
    assert!(err.to_string().contains("scheduler_config.json"), "{err}");
}

#[test]
fn missing_tensor_is_named() {
    let dir = broken_copy("missing-tensor");
    let mut tensors = unet_tensors();
    tensors.remove("mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight").unwrap();
    let file = dir.join("unet/diffusion_pytorch_model.safetensors");
    candle_core::safetensors::save(&tensors, &file).unwrap();
    let err = load(&dir, &[]);
    assert!(
        matches!(err, Error::MissingTensor { file: ref f, ref tensor, .. }
            if f == &file && tensor == "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight"),
        "{err:?}"
    );
}

#[test]
fn prefixed_tensor_names_get_a_hint() {
    let dir = scratch("prefixed");
    let tensors: HashMap<String, Tensor> = unet_tensors().into_iter().map(|(k, v)| (format!("unet.{k}"), v)).collect();
    let file = dir.join("aligned.safetensors");
    candle_core::safetensors::save(&tensors, &file).unwrap();
    let err = load(&tiny_sd(), &[&file]);
    assert!(matches!(err, Error::MissingTensor { ref hint, .. } if hint.contains("prefix `unet.`")), "{err:?}");
}

#[test]
fn wrong_channels_are_caught_at_load() {
    // A config that says 9 input channels (an inpainting UNet) over 4-channel weights.
    let dir = broken_copy("wrong-channels");
    let cfg = dir.join("unet/config.json");
    let text = std::fs::read_to_string(&cfg).unwrap().replace("\"in_channels\": 4", "\"in_channels\": 9");
    std::fs::write(&cfg, text).unwrap();
    let err = load(&dir, &[]);
    match err {
        Error::TensorShape { file, tensor, expected, got } => {
            assert!(file.ends_with("unet/diffusion_pytorch_model.safetensors"));
            assert_eq!(tensor, "conv_in.weight");
            assert_eq!(expected.dims(), &[32, 9, 3, 3]);
            assert_eq!(got.dims(), &[32, 4, 3, 3]);
        }
        other => panic!("{other:?}"),
    }
    // And a 3-channel latent into a 4-channel UNet at run time.
    let unet = &sd().unets()[0];
    let x = Tensor::zeros((1, 3, 8, 8), DType::F32, &Device::Cpu).unwrap();
    let ctx = Tensor::zeros((1, 77, 32), DType::F32, &Device::Cpu).unwrap();
    let err = unet.forward(&x, 10.0, &ctx).unwrap_err();
    println!("{err}");
    assert!(
        matches!(err, Error::ShapeMismatch { ref context, ref expected, ref got }
            if context.contains("Unet::forward") && expected == "[batch, 4, height, width]" && got == &[1, 3, 8, 8]),
        "{err:?}"
    );
    // Text embeddings of the wrong width.
    let x = Tensor::zeros((1, 4, 8, 8), DType::F32, &Device::Cpu).unwrap();
    let ctx = Tensor::zeros((1, 77, 31), DType::F32, &Device::Cpu).unwrap();
    let err = unet.forward(&x, 10.0, &ctx).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { ref got, .. } if got == &[1, 77, 31]), "{err:?}");
}

#[test]
fn integer_weights_are_named_with_their_stored_dtype() {
    let dir = broken_copy("integer-weights");
    let mut tensors = unet_tensors();
    let bias = tensors["conv_in.bias"].to_dtype(DType::I64).unwrap();
    tensors.insert("conv_in.bias".into(), bias);
    let file = dir.join("unet/diffusion_pytorch_model.safetensors");
    candle_core::safetensors::save(&tensors, &file).unwrap();
    let err = load(&dir, &[]);
    assert!(
        matches!(err, Error::TensorDType { file: ref f, ref tensor, ref dtype }
            if f == &file && tensor == "conv_in.bias" && dtype == "I64"),
        "{err:?}"
    );
    assert!(err.to_string().contains("I64"), "{err}");
}

/// A copy of the tiny checkpoint whose `file` (a JSON object) is edited by `edit`.
fn with_json(
    name: &str,
    file: &str,
    edit: impl FnOnce(&mut serde_json::Value),
) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = broken_copy(name);
    let path = dir.join(file);
    let mut json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut json);
    std::fs::write(&path, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    (dir, path)
}

#[test]
fn config_field_errors_name_the_field() {
    let cases: [(&str, &str, serde_json::Value, &str); 6] = [
        // A value of the wrong type (found by serde).
        ("unet/config.json", "in_channels", serde_json::json!("four"), "in_channels"),
        // Values of the right type that cannot work.
        ("unet/config.json", "norm_num_groups", serde_json::json!(0), "norm_num_groups"),
        ("unet/config.json", "layers_per_block", serde_json::json!([1, 1, 1]), "layers_per_block"),
        ("unet/config.json", "sample_size", serde_json::json!("large"), "sample_size"),
        ("vae/config.json", "scaling_factor", serde_json::json!(-1.0), "scaling_factor"),
        ("vae/config.json", "up_block_types", serde_json::json!(["UpDecoderBlock2D"]), "up_block_types"),
    ];
    for (i, (file, key, value, field)) in cases.into_iter().enumerate() {
        let (dir, path) = with_json(&format!("config-field-{i}"), file, |j| j[key] = value);
        let err = load(&dir, &[]);
        assert!(
            matches!(err, Error::ConfigField { path: ref p, field: ref f, .. } if p == &path && f == field),
            "{file} {key}: {err:?}"
        );
    }
    // Not JSON at all is a parse error of the whole file.
    let (dir, path) = with_json("config-not-json", "vae/config.json", |_| {});
    std::fs::write(&path, "{\"scaling_factor\": ").unwrap();
    assert!(matches!(load(&dir, &[]), Error::Config { path: ref p, .. } if p == &path));
}

/// A random UNet of another architecture (blocks 32/32), saved as a UNet directory.
fn other_architecture(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let cfg = std::fs::read_to_string(tiny_aligned().join("config.json")).unwrap();
    let cfg = cfg.replace("\"block_out_channels\": [\n    32,\n    64\n  ]", "\"block_out_channels\": [32, 32]");
    assert!(cfg.contains("[32, 32]"));
    std::fs::write(dir.join("config.json"), &cfg).unwrap();
    let config = UnetConfig::from_json(&cfg, dir.join("config.json")).unwrap();
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    // Every tensor the UNet asks for is created in `varmap` (randomly initialised).
    Unet::from_var_builder(vb, config, dir, DType::F32, &Device::Cpu).unwrap();
    varmap.save(dir.join("diffusion_pytorch_model.safetensors")).unwrap();
}

#[test]
fn mismatched_unets_are_caught_before_sampling() {
    let dir = scratch("other-arch").join("unet");
    other_architecture(&dir);
    // Loads on its own...
    Unet::load(&dir, None, DType::F32, &Device::Cpu).unwrap();
    // ...but is not the reference's architecture.
    let err = load(&tiny_sd(), &[&dir]);
    assert!(matches!(err, Error::ModelMismatch(ref m) if m.contains("different architectures")), "{err:?}");

    // The same weights as a bare file take the reference's config: a shape error naming the file.
    let file = dir.join("diffusion_pytorch_model.safetensors");
    let err = load(&tiny_sd(), &[&file]);
    assert!(matches!(err, Error::TensorShape { file: ref f, .. } if f == &file), "{err:?}");
}

#[test]
fn unsupported_config_is_named() {
    let dir = broken_copy("sdxl-config");
    let cfg = dir.join("unet/config.json");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("\"addition_embed_type\": null", "\"addition_embed_type\": \"text_time\"");
    std::fs::write(&cfg, text).unwrap();
    let err = load(&dir, &[]);
    assert!(
        matches!(err, Error::Unsupported { ref path, ref message } if path == &cfg && message.contains("addition_embed_type"))
    );
}

fn generate(req: &Request, realigner: &Realigner) -> Error {
    let err = sd().generate(req, realigner, &mut NoObserver).unwrap_err();
    println!("{err}");
    err
}

fn tiny_request() -> Request {
    Request { prompts: vec!["a cat".into()], steps: 1, ..Default::default() }
}

#[test]
fn bad_arguments() {
    let half = Realigner::two_model(0.5).unwrap();
    for g in [-1.0, f64::NAN, f64::INFINITY] {
        let req = Request { guidance_scale: Some(g), ..tiny_request() };
        assert!(matches!(generate(&req, &half), Error::InvalidGuidance(_)));
    }
    let emb = sd().encode(&tiny_request()).unwrap();
    assert!(matches!(Guided::new(&sd().unets()[0], emb.embeddings(), -0.5), Err(Error::InvalidGuidance(_))));

    let field_of = |req: Request| match generate(&req, &half) {
        Error::InvalidRequest { field, .. } => field,
        other => panic!("{other:?}"),
    };
    assert_eq!(field_of(Request { steps: 0, ..tiny_request() }), "steps");
    assert_eq!(field_of(Request { prompts: vec![], ..tiny_request() }), "prompts");
    assert_eq!(field_of(Request { images_per_prompt: 0, ..tiny_request() }), "images_per_prompt");
    assert_eq!(field_of(Request { height: Some(15), ..tiny_request() }), "height");
    assert_eq!(field_of(Request { width: Some(0), ..tiny_request() }), "width");
    assert_eq!(field_of(Request { original_size: Some((64, 64)), ..tiny_request() }), "original_size");
    assert_eq!(
        field_of(Request { force_zeros_for_empty_prompt: Some(true), ..tiny_request() }),
        "force_zeros_for_empty_prompt"
    );
    // SD 1.x / 2.x encode the empty prompt: asking for that explicitly is fine.
    sd().encode(&Request { force_zeros_for_empty_prompt: Some(false), ..tiny_request() }).unwrap();
    let three = Realigner::multi_reward(&[0.3, 0.3]).unwrap();
    assert!(matches!(generate(&tiny_request(), &three), Error::InvalidArgument(ref m) if m.contains("2 UNets")));
    // A λ that makes no sense is the core's error, passed through.
    assert!(Realigner::two_model(f64::NAN).is_err());
}

#[test]
fn unwritable_output() {
    let dir = scratch("unwritable");
    let blocker = dir.join("a-file");
    std::fs::write(&blocker, b"x").unwrap();
    let image = RgbImage::new(2, 1, vec![0, 0, 0, 255, 255, 255]).unwrap();
    let target = blocker.join("out.png");
    let err = image.save_png(&target).unwrap_err();
    println!("{err}");
    assert!(matches!(err, Error::Io { .. }));
    assert!(matches!(err, Error::Io { ref path, .. } if path == &target), "{err}");
    // Nothing half-written is left behind.
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    assert!(RgbImage::new(2, 2, vec![0; 3]).is_err());
}

#[test]
fn bf16_on_cpu_is_an_error_not_a_crash() {
    let options = LoadOptions { dtype: DType::BF16, device: Device::Cpu, ..Default::default() };
    match StableDiffusion::load(tiny_sd(), &[tiny_aligned()], &options) {
        Err(Error::UnsupportedDType { dtype, message, .. }) => {
            assert_eq!(dtype, DType::BF16);
            println!("{message}");
        }
        // A later candle may implement it; then it must work.
        Ok(sd) => {
            sd.generate(&tiny_request(), &Realigner::two_model(0.5).unwrap(), &mut NoObserver).unwrap();
        }
        Err(other) => panic!("{other:?}"),
    }
    assert!(deradiff_sd::parse_dtype("f8").is_err());
    assert!(matches!(deradiff_sd::parse_device("tpu"), Err(Error::Device { .. })));
}
