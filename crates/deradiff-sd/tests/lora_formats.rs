//! LoRA files in the layouts people publish, made offline by diffusers 0.42 and peft
//! (`scripts/gen_lora_fixtures.py`): peft folders, diffusers' `save_lora_weights` (with and
//! without the `lora_adapter_metadata` alphas), the old attention-processor form, kohya LoCon
//! with diffusers names (mixed ranks, 1×1 and 3×3 convolutions, strided) and kohya SDXL with the
//! original SGM block names. Each loads to the same UNet output diffusers / peft computed with the
//! adapter loaded (within 1e-5, merged or in a joint pass), with the user multiplier as diffusers'
//! adapter weight; a realigned run with a LoRA-aligned model equals diffusers' loop; and every
//! unsupported or unknown key is an error that names it.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor};
use common::*;
use deradiff_core::{Flow, InjectedNoise, Realigner, SchedulerKind, StepEvent};
use deradiff_sd::lora::{looks_like_lora, LoraAdapter, LoraFormat};
use deradiff_sd::{AddedConditioning, Error, LoadOptions, Request, RowGroup, StableDiffusion, Unet};

fn dir() -> PathBuf {
    fixtures().join("lora")
}

fn lora_refs() -> &'static HashMap<String, Tensor> {
    static REFS: OnceLock<HashMap<String, Tensor>> = OnceLock::new();
    REFS.get_or_init(|| candle_core::safetensors::load(dir().join("reference.safetensors"), &Device::Cpu).unwrap())
}

fn lora_ref(name: &str) -> Tensor {
    lora_refs().get(name).unwrap_or_else(|| panic!("lora reference tensor {name} missing")).clone()
}

fn lora_meta() -> &'static serde_json::Value {
    static META: OnceLock<serde_json::Value> = OnceLock::new();
    META.get_or_init(|| serde_json::from_str(&std::fs::read_to_string(dir().join("reference.json")).unwrap()).unwrap())
}

fn unet(xl: bool) -> &'static Unet {
    static SD: OnceLock<Unet> = OnceLock::new();
    static XL: OnceLock<Unet> = OnceLock::new();
    let (cell, path) = if xl { (&XL, tiny_sdxl()) } else { (&SD, tiny_sd()) };
    cell.get_or_init(|| Unet::load(path.join("unet"), None, DType::F32, &Device::Cpu).unwrap())
}

/// The UNet output on the layout's reference inputs, with `u` (merged) or, given `adapter`,
/// the joint pass's aligned rows.
fn output(u: &Unet, xl: bool, joint: Option<usize>) -> Tensor {
    let p = if xl { "sdxl" } else { "sd" };
    let x = lora_ref(&format!("{p}.x"));
    let ctx = lora_ref(&format!("{p}.context"));
    let t = f64::from(lora_ref(&format!("{p}.t")).to_scalar::<f32>().unwrap());
    let added = xl.then(|| AddedConditioning::new(lora_ref("sdxl.text_embeds"), lora_ref("sdxl.time_ids")).unwrap());
    let Some(k) = joint else {
        return u.forward_added(&x, t, &ctx, added.as_ref()).unwrap();
    };
    // Reference rows first, then the adapter's: the adapter's half is the aligned output.
    let twice = |a: &Tensor| Tensor::cat(&[a, a], 0).unwrap();
    let added2 = added.map(|a| AddedConditioning::new(twice(a.text_embeds()), twice(a.time_ids())).unwrap());
    let b = x.dim(0).unwrap();
    let groups = [RowGroup { adapter: None, rows: b }, RowGroup { adapter: Some(k), rows: b }];
    let out = u.forward_rows(&twice(&x), t, &twice(&ctx), added2.as_ref(), &groups).unwrap();
    let base = out.narrow(0, 0, b).unwrap();
    let want_base = lora_ref(&format!("{p}.base"));
    assert!(max_abs_diff(&base, &want_base) < 1e-5, "joint pass: the reference rows changed");
    out.narrow(0, b, b).unwrap()
}

/// The path of a layout's file or folder.
fn layout_path(layout: &serde_json::Value) -> PathBuf {
    dir().join(layout["file"].as_str().unwrap().trim_end_matches('/'))
}

const EXPECTED_FORMAT: &[(&str, LoraFormat)] = &[
    ("sd-peft", LoraFormat::Peft),
    ("sd-diffusers", LoraFormat::Diffusers),
    ("sd-diffusers-alpha", LoraFormat::Diffusers),
    ("sd-attn-procs", LoraFormat::AttnProcessors),
    ("sd-kohya", LoraFormat::Kohya),
    ("sdxl-kohya-sgm", LoraFormat::KohyaSgm),
    ("sdxl-diffusers", LoraFormat::Diffusers),
];

#[test]
fn every_published_layout_gives_diffusers_output() {
    let layouts = lora_meta()["layouts"].as_object().unwrap();
    let mut seen = 0;
    for &(name, format) in EXPECTED_FORMAT {
        let layout = &layouts[name];
        let xl = layout["base"].as_str().unwrap().contains("sdxl");
        let base = unet(xl);
        let path = layout_path(layout);
        assert!(looks_like_lora(&path), "{name}: {} not recognised as a LoRA", path.display());
        let adapter = LoraAdapter::load(&path, base).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(adapter.format(), format, "{name}");
        // The adapted modules are diffusers' own list.
        let want: Vec<&str> =
            layout["adapted_modules"].as_array().unwrap().iter().map(|m| m.as_str().unwrap()).collect();
        let got: Vec<&str> = adapter.layers().keys().map(String::as_str).collect();
        assert_eq!(got, want, "{name}: adapted modules");
        // Each layer's scale: one for the layout, or per module (LoCon's own conv rank / alpha).
        for (path, layer) in adapter.layers() {
            let scale = match layout.get("modules") {
                Some(m) => m[path.as_str()]["scale"].as_f64().unwrap(),
                None => layout["scale"].as_f64().unwrap(),
            };
            assert!((layer.scale() - scale).abs() < 1e-6, "{name} {path}: scale {} vs {scale}", layer.scale());
        }
        let want = lora_ref(&format!("{name}.output"));
        let merged = output(&base.merged_with(&adapter, 1.0).unwrap(), xl, None);
        let err = max_abs_diff(&merged, &want);
        assert!(err < 1e-5, "{name}: merged UNet vs diffusers {err:.2e}");
        let joint = output(&base.with_adapters(&[(&adapter, 1.0)]).unwrap(), xl, Some(0));
        let err = max_abs_diff(&joint, &want);
        assert!(err < 1e-5, "{name}: joint pass vs diffusers {err:.2e}");
        // Not the base output: the adapter really acted.
        assert!(max_abs_diff(&want, &lora_ref(if xl { "sdxl.base" } else { "sd.base" })) > 1e-2);
        if lora_refs().contains_key(&format!("{name}.output_x0.5")) {
            let want = lora_ref(&format!("{name}.output_x0.5"));
            let merged = output(&base.merged_with(&adapter, 0.5).unwrap(), xl, None);
            assert!(max_abs_diff(&merged, &want) < 1e-5, "{name} x0.5: {:.2e}", max_abs_diff(&merged, &want));
            let scaled = adapter.clone().scaled(0.5).unwrap();
            let joint = output(&base.with_adapters(&[(&scaled, 1.0)]).unwrap(), xl, Some(0));
            assert!(max_abs_diff(&joint, &want) < 1e-5, "{name} x0.5 joint: {:.2e}", max_abs_diff(&joint, &want));
            seen += 1;
        }
    }
    assert_eq!(seen, 2, "the multiplier references of sd-kohya and sd-peft");
}

#[test]
fn two_layouts_in_one_joint_pass() {
    // The peft and the kohya adapter of one UNet, each on its own rows, in one call.
    let base = unet(false);
    let peft = LoraAdapter::load(dir().join("sd-peft"), base).unwrap();
    let kohya = LoraAdapter::load(dir().join("sd-kohya.safetensors"), base).unwrap();
    let joint = base.with_adapters(&[(&peft, 1.0), (&kohya, 0.5)]).unwrap();
    let x = lora_ref("sd.x");
    let ctx = lora_ref("sd.context");
    let t = f64::from(lora_ref("sd.t").to_scalar::<f32>().unwrap());
    let rows = |a| RowGroup { adapter: a, rows: 2 };
    let out = joint
        .forward_rows(
            &Tensor::cat(&[&x, &x, &x], 0).unwrap(),
            t,
            &Tensor::cat(&[&ctx, &ctx, &ctx], 0).unwrap(),
            None,
            &[rows(Some(1)), rows(None), rows(Some(0))],
        )
        .unwrap();
    assert!(max_abs_diff(&out.narrow(0, 0, 2).unwrap(), &lora_ref("sd-kohya.output_x0.5")) < 1e-5);
    assert!(max_abs_diff(&out.narrow(0, 2, 2).unwrap(), &lora_ref("sd.base")) < 1e-5);
    assert!(max_abs_diff(&out.narrow(0, 4, 2).unwrap(), &lora_ref("sd-peft.output")) < 1e-5);
}

/// The realigned loop of `tests/realigned.rs` with the aligned model a LoRA (sd-kohya) loaded
/// through `--aligned`, against diffusers' loop with `load_lora_weights`; in one joint UNet call
/// per step, and with a call per model (`LoadOptions::joint_pass` off).
fn check_lora_run(kind: &str) {
    for joint_pass in [true, false] {
        let options = LoadOptions { joint_pass, ..Default::default() };
        let sd = StableDiffusion::load(tiny_sd(), &[dir().join("sd-kohya.safetensors")], &options).unwrap();
        assert_eq!((sd.num_models(), sd.joint_pass()), (2, joint_pass));
        let run = &lora_meta()["runs"][kind];
        let req = Request {
            prompts: run["prompts"].as_array().unwrap().iter().map(|p| p.as_str().unwrap().to_string()).collect(),
            negative_prompt: run["negative_prompt"].as_str().map(str::to_string),
            scheduler: if kind == "ddim" { SchedulerKind::Ddim { eta: 0.0 } } else { SchedulerKind::EulerAncestral },
            steps: run["steps"].as_u64().unwrap() as usize,
            guidance_scale: run["guidance_scale"].as_f64(),
            ..Default::default()
        };
        let emb = sd.encode(&req).unwrap();
        let noise = reference(&format!("run.{kind}.noise"));
        let mut injected = InjectedNoise::new((0..noise.dim(0).unwrap()).map(|i| noise.get(i).unwrap()));
        let lambda = run["lambda"].as_f64().unwrap();
        let calls = sd.models()[0].unet().forward_calls();
        let mut observer = |_: &StepEvent<'_>| Flow::Continue;
        let out = sd.sample(&req, &emb, &Realigner::two_model(lambda).unwrap(), &mut injected, &mut observer).unwrap();
        // One UNet call per step serves both models; or one call per model.
        let per_step = if joint_pass { 1 } else { 2 };
        assert_eq!(sd.models()[0].unet().forward_calls() - calls, per_step * req.steps);
        let want = lora_ref(&format!("run.{kind}.final"));
        let err = max_abs_diff(&out.latent, &want);
        let scale = max_abs(&want);
        println!(
            "{kind} with a LoRA-aligned model (joint pass {joint_pass}): final latents max abs error {err:.3e} \
             (latents max {scale:.1})"
        );
        // The bar of tests/realigned.rs.
        assert!(err <= 1e-3 && err <= 5e-6 * scale, "{kind}: {err}");
        assert!(max_abs_diff(&out.latent, &reference(&format!("run.{kind}.final"))) > 0.1, "the LoRA changed nothing");
    }
}

#[test]
fn realigned_ddim_with_a_lora_aligned_model_matches_diffusers() {
    check_lora_run("ddim");
}

#[test]
fn realigned_euler_ancestral_with_a_lora_aligned_model_matches_diffusers() {
    check_lora_run("euler_a");
}

fn lora_error(path: &Path, xl: bool) -> String {
    match LoraAdapter::load(path, unet(xl)) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e @ Error::Lora { .. }) => e.to_string(),
        Err(e) => format!("(not Error::Lora) {e}"),
    }
}

#[test]
fn unsupported_adapters_from_the_reference_tools_are_refused_naming_the_key() {
    let cases = [
        ("sd-dora", "lora_magnitude_vector", "DoRA"),
        ("sd-loha.safetensors", "hada_w1_a", "LoHa"),
        ("sd-kohya-te.safetensors", "lora_te_text_model_encoder_layers_0", "text encoder"),
        ("sd-unknown-key.safetensors", "unet.mystery_block.lora.down.weight", "mystery_block"),
    ];
    for (file, key, what) in cases {
        let path = dir().join(file);
        assert!(looks_like_lora(&path), "{file}");
        let msg = lora_error(&path, false);
        assert!(msg.contains(key) && msg.contains(what), "{file}: {msg}");
        assert!(msg.starts_with(&format!("LoRA adapter {}", path.display())), "{file}: {msg}");
    }
}

/// Writes `tensors` as a safetensors file in a scratch folder.
fn write(name: &str, tensors: &[(&str, Tensor)]) -> PathBuf {
    let dir = scratch("lora_formats");
    let path = dir.join(name);
    let map: HashMap<String, Tensor> = tensors.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    candle_core::safetensors::save(&map, &path).unwrap();
    path
}

fn zeros(shape: &[usize]) -> Tensor {
    Tensor::zeros(shape, DType::F32, &Device::Cpu).unwrap()
}

/// A bad file: its name, its tensors and what the error must say.
type Case = (&'static str, Vec<(String, Tensor)>, &'static str);

#[test]
fn unknown_keys_bad_shapes_and_bad_values_are_errors_naming_the_key() {
    const Q: &str = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q";
    let kq = |s: &str| format!("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.{s}");
    let (down, up) = (zeros(&[4, 32]), zeros(&[32, 4]));
    let d = |s: &str| format!("unet.{Q}.{s}");
    let cases: Vec<Case> = vec![
        ("suffix.safetensors", vec![(format!("unet.{Q}.weight"), zeros(&[32, 32]))], "is not a LoRA key"),
        (
            "no-layer.safetensors",
            vec![
                ("lora_unet_bogus_layer.lora_down.weight".into(), down.clone()),
                ("lora_unet_bogus_layer.lora_up.weight".into(), up.clone()),
            ],
            "`lora_unet_bogus_layer.lora_down.weight` adapts `lora_unet_bogus_layer`, which names no linear",
        ),
        ("no-up.safetensors", vec![(kq("lora_down.weight"), down.clone())], "has no matching up"),
        (
            "alpha-only.safetensors",
            vec![(kq("alpha"), Tensor::new(4f32, &Device::Cpu).unwrap())],
            "has no matching down",
        ),
        (
            "bad-shape.safetensors",
            vec![(d("lora.down.weight"), zeros(&[4, 31])), (d("lora.up.weight"), up.clone())],
            "do not fit the layer",
        ),
        (
            "bad-rank.safetensors",
            vec![(d("lora.down.weight"), down.clone()), (d("lora.up.weight"), zeros(&[32, 3]))],
            "the rank (rows of down, columns of up) must agree",
        ),
        (
            "bad-alpha.safetensors",
            vec![
                (kq("lora_down.weight"), down.clone()),
                (kq("lora_up.weight"), up.clone()),
                (kq("alpha"), zeros(&[2])),
            ],
            "must be one finite number",
        ),
        (
            "nan-alpha.safetensors",
            vec![
                (kq("lora_down.weight"), down.clone()),
                (kq("lora_up.weight"), up.clone()),
                (kq("alpha"), Tensor::new(&[f32::NAN], &Device::Cpu).unwrap()),
            ],
            "holds NaN at element 0 of 1",
        ),
        (
            "int.safetensors",
            vec![(d("lora.down.weight"), down.to_dtype(DType::I64).unwrap()), (d("lora.up.weight"), up.clone())],
            "LoRA weights must be floats",
        ),
        (
            "mid.safetensors",
            vec![(kq("lora_down.weight"), down.clone()), (kq("lora_mid.weight"), zeros(&[4, 4, 3, 3]))],
            "lora_mid",
        ),
        (
            "te-diffusers.safetensors",
            vec![("text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight".into(), down.clone())],
            "adapts a text encoder",
        ),
        (
            "two-names.safetensors",
            vec![
                (d("lora.down.weight"), down.clone()),
                (d("lora.up.weight"), up.clone()),
                (kq("lora_down.weight"), down.clone()),
                (kq("lora_up.weight"), up.clone()),
            ],
            "both adapt the layer",
        ),
        ("empty.safetensors", vec![], "holds no tensors"),
    ];
    for (file, tensors, want) in cases {
        let refs: Vec<(&str, Tensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        let path = write(file, &refs);
        let msg = lora_error(&path, false);
        assert!(msg.contains(want), "{file}: {msg}");
    }
    // Not safetensors at all: what it looks like.
    let pickle = scratch("lora_formats").join("pickle.safetensors");
    std::fs::write(&pickle, b"\x80\x02}q\x00.").unwrap();
    let err = LoraAdapter::load(&pickle, unet(false)).unwrap_err();
    assert!(matches!(err, Error::NotSafetensors { .. }), "{err}");
    // A folder without a LoRA; a missing path.
    let empty = scratch("lora_formats_empty");
    assert!(matches!(LoraAdapter::load(&empty, unet(false)), Err(Error::NotFound { .. })));
    assert!(matches!(LoraAdapter::load(empty.join("nothing.safetensors"), unet(false)), Err(Error::NotFound { .. })));
    // A peft folder whose config asks for DoRA, or is another peft type.
    let folder = scratch("lora_formats_peft");
    std::fs::copy(dir().join("sd-peft/adapter_model.safetensors"), folder.join("adapter_model.safetensors")).unwrap();
    for (config, want) in [
        (r#"{"peft_type": "LOHA", "r": 4}"#, "peft_type is \"LOHA\""),
        (r#"{"peft_type": "LORA", "r": 4, "lora_alpha": 2, "use_dora": true}"#, "use_dora"),
        (r#"{"peft_type": "LORA", "r": 0, "lora_alpha": 2}"#, "`r` is 0; a rank must be a positive whole number"),
        (r#"{"peft_type": "LORA", "r": 4, "lora_alpha": "two"}"#, "lora_alpha"),
        ("not json", "adapter_config.json"),
    ] {
        std::fs::write(folder.join("adapter_config.json"), config).unwrap();
        let err = LoraAdapter::load(&folder, unet(false)).unwrap_err().to_string();
        assert!(err.contains(want), "{config}: {err}");
    }
}

#[test]
fn a_sgm_file_is_not_read_as_another_unet_and_full_unets_are_not_loras() {
    // The SDXL SGM file does not fit the SD UNet: an error, not a silent partial load.
    let msg = lora_error(&dir().join("sdxl-kohya-sgm.safetensors"), false);
    assert!(msg.contains("lora_unet_"), "{msg}");
    // Full UNets (a folder and its weight file) are not LoRAs.
    assert!(!looks_like_lora(&tiny_aligned()));
    assert!(!looks_like_lora(&tiny_aligned().join("diffusion_pytorch_model.safetensors")));
    assert!(!looks_like_lora(&tiny_sd()));
    assert!(!looks_like_lora(Path::new("/nonexistent/x.safetensors")));
}

#[test]
fn saved_adapters_load_back_identically() {
    let base = unet(false);
    let kohya = LoraAdapter::load(dir().join("sd-kohya.safetensors"), base).unwrap();
    let path = scratch("lora_formats_save").join("kohya-as-diffusers.safetensors");
    kohya.save(&path, DType::F32).unwrap();
    let back = LoraAdapter::load(&path, base).unwrap();
    assert_eq!(back.format(), LoraFormat::Diffusers);
    let x: BTreeMap<_, _> = kohya.layers().keys().zip(back.layers().keys()).collect();
    assert_eq!(x.len(), kohya.layers().len());
    let out = output(&base.merged_with(&back, 1.0).unwrap(), false, None);
    assert!(max_abs_diff(&out, &lora_ref("sd-kohya.output")) < 1e-5);
}

mod arbitrary_files {
    //! Arbitrary LoRA-like files: keys from the layouts' vocabularies (right and wrong), random
    //! shapes, ranks, dtypes and alphas. Loading never panics: an adapter that fits, or an error.

    use super::*;
    use proptest::prelude::*;

    const MODULES: &[&str] = &[
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
        "lora_unet_down_blocks_0_resnets_0_conv1",
        "lora_unet_input_blocks_1_1_proj_in",
        "lora_unet_middle_block_7_proj_in",
        "lora_unet_output_blocks_2_1_conv",
        "unet.down_blocks.0.attentions.0.proj_in",
        "unet.mid_block.attentions.0.transformer_blocks.0.ff.net.2",
        "base_model.model.conv_in",
        "down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor.to_out",
        "unet.nowhere",
        "",
    ];
    const SUFFIXES: &[&str] = &[
        ".lora_down.weight",
        ".lora_up.weight",
        ".alpha",
        ".lora.down.weight",
        ".lora.up.weight",
        ".lora_A.weight",
        ".lora_B.weight",
        "_lora.down.weight",
        ".weight",
        ".lora_mid.weight",
        ".hada_w1_a",
    ];

    fn tensor(shape: &[usize], dtype: DType) -> Tensor {
        Tensor::ones(shape, DType::F32, &Device::Cpu).unwrap().to_dtype(dtype).unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]
        #[test]
        fn loading_never_panics(
            entries in prop::collection::vec(
                (0..MODULES.len(), 0..SUFFIXES.len(), prop::collection::vec(0usize..40, 0..5), 0..3usize),
                0..8,
            ),
            case in 0u32..1_000_000,
        ) {
            let mut map = HashMap::new();
            for (m, s, shape, d) in entries {
                let dtype = [DType::F32, DType::F16, DType::U8][d];
                map.insert(format!("{}{}", MODULES[m], SUFFIXES[s]), tensor(&shape, dtype));
            }
            let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("lora-arbitrary-{case}.safetensors"));
            candle_core::safetensors::save(&map, &path).unwrap();
            let result = LoraAdapter::load(&path, unet(false));
            let _ = std::fs::remove_file(&path);
            if let Ok(adapter) = result {
                // What loads fits the UNet: merging and attaching it work.
                unet(false).merged_with(&adapter, 0.5).unwrap();
                unet(false).with_adapters(&[(&adapter, 1.0)]).unwrap();
            }
        }
    }
}
