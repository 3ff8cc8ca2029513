//! Hostile LoRA inputs: what peft and diffusers refuse is an error here too, naming the key and
//! the setting (`fixtures/lora/hostile/hostile.json` records what peft 0.21 and diffusers 0.42 do
//! with each case, `scripts/gen_lora_hostile_fixtures.py`); non-finite values are refused where
//! the reference tools load them and compute NaN; a folder with two adapters is refused; a valid
//! file is never called a pickle. Every case checks the error's variant and message and that no
//! input file changed.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::{DType, Device};
use common::edit::{pad_header, rewrite, Edit, Snapshot};
use common::*;
use deradiff_sd::lora::{LoraAdapter, LoraFormat};
use deradiff_sd::{Error, Unet};

fn lora_dir() -> PathBuf {
    fixtures().join("lora")
}

fn unet() -> &'static Unet {
    static U: OnceLock<Unet> = OnceLock::new();
    U.get_or_init(|| Unet::load(tiny_sd().join("unet"), None, DType::F32, &Device::Cpu).unwrap())
}

const Q: &str = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q";

/// What peft / diffusers did with a case (`hostile.json`).
fn reference_result(case: &str) -> String {
    static META: OnceLock<serde_json::Value> = OnceLock::new();
    let meta = META.get_or_init(|| {
        serde_json::from_str(&std::fs::read_to_string(lora_dir().join("hostile/hostile.json")).unwrap()).unwrap()
    });
    let c = &meta["cases"][case];
    assert!(c.is_object(), "hostile.json has no case {case}");
    match (c["result"].as_str().unwrap(), c["output_finite"].as_bool()) {
        ("loads", Some(false)) => "loads, computes NaN".into(),
        (r, _) => r.into(),
    }
}

/// sd-peft's adapter_config.json, parsed.
fn peft_config() -> serde_json::Map<String, serde_json::Value> {
    serde_json::from_str(&std::fs::read_to_string(lora_dir().join("sd-peft/adapter_config.json")).unwrap()).unwrap()
}

/// A peft folder `name` in `root`: sd-peft's weights (edited) with `config` (none if `None`).
fn peft_folder(root: &Path, name: &str, config: Option<serde_json::Value>, edits: &[(&str, Edit)]) -> PathBuf {
    let d = root.join(name);
    rewrite(&lora_dir().join("sd-peft/adapter_model.safetensors"), &d.join("adapter_model.safetensors"), edits, None);
    if let Some(c) = config {
        std::fs::write(d.join("adapter_config.json"), c.to_string()).unwrap();
    }
    d
}

/// sd-peft's config with `key` set to `value` (or removed if `value` is null).
fn config_with(key: &str, value: serde_json::Value) -> Option<serde_json::Value> {
    let mut c = peft_config();
    if value.is_null() {
        c.remove(key);
    } else {
        c.insert(key.into(), value);
    }
    Some(serde_json::Value::Object(c))
}

/// sd-diffusers-alpha's `lora_adapter_metadata`, parsed.
fn alpha_metadata() -> serde_json::Map<String, serde_json::Value> {
    let raw =
        common::edit::metadata(&lora_dir().join("sd-diffusers-alpha.safetensors"))["lora_adapter_metadata"].clone();
    serde_json::from_str(&raw).unwrap()
}

/// `from` copied to `root/name` with its header's `lora_adapter_metadata` set to `meta`.
fn with_metadata(root: &Path, name: &str, from: &str, meta: &str) -> PathBuf {
    let path = root.join(name);
    let m = HashMap::from([("format".into(), "pt".into()), ("lora_adapter_metadata".into(), meta.into())]);
    rewrite(&lora_dir().join(from), &path, &[], Some(Some(m)));
    path
}

/// What a case must give: an error whose text holds every one of the strings, or an adapter.
enum Want {
    Lora(Vec<String>),
    Config(Vec<String>),
    NonFinite(Vec<String>),
    Loads,
}

/// The strings an error must hold.
fn all(needles: &[&str]) -> Vec<String> {
    needles.iter().map(|n| n.to_string()).collect()
}

fn check(case: &str, path: &Path, want: &Want, inputs: &[&Path]) {
    let before = Snapshot::of(inputs);
    let got = LoraAdapter::load(path, unet());
    before.assert_unchanged(inputs, case);
    let (ok_variant, needles): (bool, &[String]) = match (&got, want) {
        (Ok(_), Want::Loads) => return,
        (Err(Error::Lora { .. }), Want::Lora(n)) => (true, n),
        (Err(Error::Config { .. } | Error::ConfigField { .. }), Want::Config(n)) => (true, n),
        (Err(Error::NonFiniteTensor { .. }), Want::NonFinite(n)) => (true, n),
        (Err(_), Want::Lora(n) | Want::Config(n) | Want::NonFinite(n)) => (false, n),
        (Err(e), Want::Loads) => panic!("{case}: {e}"),
        (Ok(_), _) => panic!("{case}: loaded"),
    };
    let msg = got.err().map(|e| e.to_string()).unwrap_or_default();
    println!("{case}: {msg}");
    assert!(ok_variant, "{case}: wrong variant: {msg}");
    for n in needles {
        assert!(msg.contains(n), "{case}: `{n}` not in: {msg}");
    }
}

#[test]
fn what_peft_and_diffusers_refuse_is_refused_naming_the_setting() {
    let root = scratch("lora-hostile-reference");
    let up_k = "base_model.model.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k.lora_B.weight";
    let d_up_k = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k.lora.up.weight";
    let meta = alpha_metadata();
    let meta_with = |k: &str, v: serde_json::Value| {
        let mut m = meta.clone();
        if v.is_null() {
            m.remove(k);
        } else {
            m.insert(k.into(), v);
        }
        serde_json::Value::Object(m).to_string()
    };
    let bare: serde_json::Map<String, serde_json::Value> =
        meta.iter().map(|(k, v)| (k.trim_start_matches("unet.").to_string(), v.clone())).collect();
    let two = root.join("two-adapters-in-a-folder");
    copy_dir(&lora_dir().join("sd-peft"), &two);
    std::fs::copy(lora_dir().join("sd-diffusers.safetensors"), two.join("pytorch_lora_weights.safetensors")).unwrap();
    let inf_up = root.join("inf-up.safetensors");
    rewrite(&lora_dir().join("sd-diffusers.safetensors"), &inf_up, &[(d_up_k, Edit::Set(34, f64::INFINITY))], None);

    let cases: Vec<(&str, PathBuf, Want)> = vec![
        (
            "peft-r-disagrees",
            peft_folder(&root, "r8", config_with("r", 8.into()), &[]),
            Want::Lora(all(&["has rank 4", "declares rank 8", "(its `r`)", "adapter_config.json", "lora_A.weight"])),
        ),
        (
            "peft-no-r",
            peft_folder(&root, "no-r", config_with("r", serde_json::Value::Null), &[]),
            Want::Lora(all(&["declares rank 8", "peft's default r = 8, as it gives no `r`"])),
        ),
        (
            "peft-rank-pattern-disagrees",
            peft_folder(&root, "rp", config_with("rank_pattern", serde_json::json!({"to_q": 2})), &[]),
            Want::Lora(all(&["declares rank 2", "`rank_pattern` entry `to_q`", "to_q.lora_A.weight"])),
        ),
        (
            "peft-anchored-rank-pattern-disagrees",
            peft_folder(
                &root,
                "rp-anchored",
                config_with("rank_pattern", serde_json::json!({format!("^{Q}"): 8})),
                &[],
            ),
            Want::Lora(all(&["declares rank 8", &format!("`rank_pattern` entry `^{Q}`")])),
        ),
        (
            "peft-rank-pattern-elsewhere",
            peft_folder(&root, "rp-elsewhere", config_with("rank_pattern", serde_json::json!({"to_x": 2})), &[]),
            Want::Loads,
        ),
        (
            "peft-no-config",
            peft_folder(&root, "no-config", None, &[]),
            Want::Lora(all(&["is a peft key", "no adapter_config.json beside", "base_model.model."])),
        ),
        (
            "peft-nan-up",
            peft_folder(
                &root,
                "nan-up",
                Some(serde_json::Value::Object(peft_config())),
                &[(up_k, Edit::Set(0, f64::NAN))],
            ),
            Want::NonFinite(all(&["adapter_model.safetensors", up_k, "holds NaN at element 0 of 128"])),
        ),
        (
            "metadata-r-disagrees",
            with_metadata(
                &root,
                "meta-r8.safetensors",
                "sd-diffusers-alpha.safetensors",
                &meta_with("unet.r", 8.into()),
            ),
            Want::Lora(all(&["has rank 4", "the header's `lora_adapter_metadata` declares rank 8", "(its `r`)"])),
        ),
        (
            "metadata-no-r",
            with_metadata(
                &root,
                "meta-no-r.safetensors",
                "sd-diffusers-alpha.safetensors",
                &meta_with("unet.r", serde_json::Value::Null),
            ),
            Want::Lora(all(&["declares rank 8", "peft's default r = 8"])),
        ),
        (
            "metadata-rank-pattern-disagrees",
            with_metadata(
                &root,
                "meta-rp.safetensors",
                "sd-diffusers-alpha.safetensors",
                &meta_with("unet.rank_pattern", serde_json::json!({"to_q": 2})),
            ),
            Want::Lora(all(&["declares rank 2", "`rank_pattern` entry `to_q`", "unet.down_blocks.0"])),
        ),
        (
            "metadata-without-unet-keys",
            with_metadata(
                &root,
                "meta-bare.safetensors",
                "sd-diffusers-alpha.safetensors",
                &serde_json::Value::Object(bare).to_string(),
            ),
            Want::Lora(all(&["`lora_adapter_metadata`", "no `unet.` entries"])),
        ),
        (
            "metadata-empty",
            with_metadata(&root, "meta-empty.safetensors", "sd-diffusers-alpha.safetensors", ""),
            Want::Loads,
        ),
        (
            "kohya-alpha-with-metadata",
            with_metadata(
                &root,
                "kohya-meta.safetensors",
                "sd-kohya.safetensors",
                &serde_json::Value::Object(meta.clone()).to_string(),
            ),
            Want::Lora(all(&["gives the layer's alpha, and so does the header's `lora_adapter_metadata`", ".alpha`"])),
        ),
        (
            "two-adapters-in-a-folder",
            two.clone(),
            Want::Lora(all(&[
                "holds 2 adapters' files",
                "adapter_model.safetensors, pytorch_lora_weights.safetensors",
            ])),
        ),
        ("diffusers-inf-up", inf_up.clone(), Want::NonFinite(all(&[d_up_k, "holds inf at element 34 of 256"]))),
    ];
    for (case, path, want) in &cases {
        // Ours against the reference tools': refused where they refuse (and where they load and
        // compute NaN, or disagree on the file), loaded where they load a finite model.
        let expected = match want {
            Want::Loads => "loads",
            Want::NonFinite(_) => "loads, computes NaN",
            _ if *case == "two-adapters-in-a-folder" => "the tools disagree",
            _ => "refuses",
        };
        assert_eq!(reference_result(case), expected, "{case}");
        check(case, path, want, &[&root, &lora_dir()]);
    }
    // The empty metadata is no metadata, as in diffusers: scale 1, not sd-diffusers-alpha's 2.
    let empty = LoraAdapter::load(root.join("meta-empty.safetensors"), unet()).unwrap();
    assert!(empty.layers().values().all(|l| l.scale() == 1.0));
}

#[test]
fn a_mixed_rank_adapter_with_anchored_pattern_keys_gives_diffusers_output() {
    // diffusers writes `^<module path>` keys; peft matches each as `(.*\.)?(KEY)$`, first in the
    // file's order. Before patterns were matched as regular expressions, `^…` matched nothing.
    let path = lora_dir().join("hostile/sd-rank-pattern.safetensors");
    let adapter = LoraAdapter::load(&path, unet()).unwrap();
    assert_eq!(adapter.format(), LoraFormat::Diffusers);
    let layer = |p: &str| &adapter.layers()[p];
    assert_eq!((layer(Q).rank(), layer(Q).scale()), (2, 4.0));
    let k2 = "up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k";
    assert_eq!((layer(k2).rank(), layer(k2).scale()), (6, 8.0 / 6.0));
    let v = "mid_block.attentions.0.transformer_blocks.0.attn1.to_v";
    assert_eq!((layer(v).rank(), layer(v).scale()), (4, 0.75));
    let refs = candle_core::safetensors::load(lora_dir().join("hostile/reference.safetensors"), &Device::Cpu).unwrap();
    let lora_refs = candle_core::safetensors::load(lora_dir().join("reference.safetensors"), &Device::Cpu).unwrap();
    let x = &lora_refs["sd.x"];
    let t = f64::from(lora_refs["sd.t"].to_scalar::<f32>().unwrap());
    let out = unet().merged_with(&adapter, 1.0).unwrap().forward(x, t, &lora_refs["sd.context"]).unwrap();
    let err = max_abs_diff(&out, &refs["sd-rank-pattern.output"]);
    assert!(err < 1e-5, "{err}");
}

#[test]
fn peft_files_folders_and_configs_that_no_tool_reads_as_one_adapter() {
    let root = scratch("lora-hostile-folders");
    let peft = lora_dir().join("sd-peft/adapter_model.safetensors");
    // A peft file given directly, with no config beside it; the same keys under another name.
    let alone = root.join("alone");
    std::fs::create_dir_all(&alone).unwrap();
    std::fs::copy(&peft, alone.join("adapter_model.safetensors")).unwrap();
    std::fs::copy(&peft, alone.join("my-lora.safetensors")).unwrap();
    // A folder with a peft adapter and another safetensors file; with a diffusers adapter and the
    // optimizer state saved beside it (not an adapter, as diffusers' loader says); adapters only
    // in subfolders (peft's save_pretrained of several adapters).
    let extra = peft_folder(&root, "extra", Some(serde_json::Value::Object(peft_config())), &[]);
    std::fs::copy(lora_dir().join("sd-kohya.safetensors"), extra.join("second.safetensors")).unwrap();
    let optim = root.join("optim");
    std::fs::create_dir_all(&optim).unwrap();
    std::fs::copy(lora_dir().join("sd-diffusers.safetensors"), optim.join("pytorch_lora_weights.safetensors")).unwrap();
    std::fs::copy(lora_dir().join("sd-kohya.safetensors"), optim.join("optimizer.safetensors")).unwrap();
    let nested = root.join("nested");
    copy_dir(&lora_dir().join("sd-peft"), &nested.join("style"));
    copy_dir(&lora_dir().join("sd-peft"), &nested.join("subject"));
    std::fs::write(nested.join("README.md"), "two adapters").unwrap();
    // Config and header metadata both present: agreeing, and not.
    let both = root.join("both");
    std::fs::create_dir_all(&both).unwrap();
    std::fs::copy(lora_dir().join("sd-diffusers-alpha.safetensors"), both.join("adapter_model.safetensors")).unwrap();
    let agree = root.join("agree");
    copy_dir(&both, &agree);
    let cfg = |r: u64, alpha: f64| serde_json::json!({"peft_type": "LORA", "r": r, "lora_alpha": alpha}).to_string();
    std::fs::write(both.join("adapter_config.json"), cfg(4, 2.0)).unwrap();
    std::fs::write(agree.join("adapter_config.json"), cfg(4, 8.0)).unwrap();
    let cases: Vec<(&str, PathBuf, Want)> = vec![
        (
            "peft file, no config beside it",
            alone.join("adapter_model.safetensors"),
            Want::Lora(all(&["is a peft key", "no adapter_config.json beside"])),
        ),
        ("peft keys in a file of another name", alone.join("my-lora.safetensors"), Want::Lora(all(&["is a peft key"]))),
        (
            "peft adapter and a second file",
            extra.clone(),
            Want::Lora(all(&["holds 2 adapters' files", "adapter_model.safetensors, second.safetensors"])),
        ),
        ("diffusers adapter and its optimizer state", optim.clone(), Want::Loads),
        (
            "adapters in subfolders only",
            nested.clone(),
            Want::Lora(all(&["no adapter of its own but several in its subfolders (style/, subject/)"])),
        ),
        (
            "config and metadata disagree",
            both.clone(),
            Want::Lora(all(&[
                "`lora_adapter_metadata` gives `down_blocks.0",
                "the scale 2 but",
                "gives it 0.5",
                "make them agree",
            ])),
        ),
        ("config and metadata agree", agree.clone(), Want::Loads),
    ];
    for (case, path, want) in &cases {
        check(case, path, want, &[&root, &lora_dir()]);
    }
}

#[test]
fn bad_peft_settings_are_config_errors_naming_the_setting() {
    let root = scratch("lora-hostile-settings");
    let cases: Vec<(&str, &str, Want)> = vec![
        ("r = 4.5", r#"{"peft_type": "LORA", "r": 4.5}"#, Want::Config(all(&["`r` is 4.5", "positive whole number"]))),
        ("r = -4", r#"{"r": -4, "lora_alpha": 2}"#, Want::Config(all(&["`r` is -4"]))),
        // Python's json writes NaN and Infinity; they are not JSON.
        ("lora_alpha NaN", r#"{"r": 4, "lora_alpha": NaN}"#, Want::Config(all(&["not a JSON object"]))),
        ("lora_alpha 1e400", r#"{"r": 4, "lora_alpha": 1e400}"#, Want::Config(all(&["not a JSON object"]))),
        (
            "a look-behind pattern",
            r#"{"r": 4, "rank_pattern": {"(?<=attn1\\.)to_q": 4}}"#,
            Want::Config(all(&["`rank_pattern` key `(?<=attn1\\.)to_q` is not a regular expression"])),
        ),
        (
            "an alpha of null",
            r#"{"r": 4, "alpha_pattern": {"to_q": null}}"#,
            Want::Config(all(&["entry `to_q` is null"])),
        ),
        ("use_rslora \"yes\"", r#"{"r": 4, "use_rslora": "yes"}"#, Want::Config(all(&["`use_rslora` is \"yes\""]))),
        ("rank_pattern a list", r#"{"r": 4, "rank_pattern": [4]}"#, Want::Config(all(&["not a JSON object"]))),
        ("peft_type 7", r#"{"r": 4, "peft_type": 7}"#, Want::Config(all(&["peft_type is 7"]))),
    ];
    for (i, (case, config, want)) in cases.iter().enumerate() {
        let d = peft_folder(&root, &format!("c{i}"), None, &[]);
        std::fs::write(d.join("adapter_config.json"), config).unwrap();
        check(case, &d, want, &[&root, &lora_dir()]);
    }
    // rsLoRA: alpha / √r, as peft.
    let d = peft_folder(&root, "rslora", config_with("use_rslora", true.into()), &[]);
    let adapter = LoraAdapter::load(&d, unet()).unwrap();
    assert!(adapter.layers().values().all(|l| (l.scale() - 2.0 / 2.0).abs() < 1e-12));
    // Header metadata that is not JSON.
    let bad = with_metadata(&root, "bad-meta.safetensors", "sd-diffusers-alpha.safetensors", "{\"unet.r\": 4");
    check("metadata not JSON", &bad, &Want::Lora(all(&["`lora_adapter_metadata`: not a JSON object"])), &[&root]);
}

#[test]
fn non_finite_and_overflowing_values_are_refused_naming_file_and_tensor() {
    let root = scratch("lora-hostile-values");
    let kohya = lora_dir().join("sd-kohya.safetensors");
    let kq = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q";
    let diffusers = lora_dir().join("sd-diffusers.safetensors");
    let d_down = format!("unet.{Q}.lora.down.weight");
    #[allow(clippy::type_complexity)]
    let cases: Vec<(&str, PathBuf, Vec<(String, Edit)>, Want)> = vec![
        (
            "kohya f16 down with -inf",
            kohya.clone(),
            vec![(format!("{kq}.lora_down.weight"), Edit::Set(5, f64::NEG_INFINITY))],
            Want::NonFinite(all(&["lora_down.weight", "holds -inf at element 5 of 128"])),
        ),
        (
            "kohya f16 alpha NaN",
            kohya.clone(),
            vec![(format!("{kq}.alpha"), Edit::Set(0, f64::NAN))],
            Want::NonFinite(all(&[".alpha`", "holds NaN at element 0 of 1"])),
        ),
        (
            "diffusers down NaN in its last element",
            diffusers.clone(),
            vec![(d_down.clone(), Edit::Set(255, f64::NAN))],
            Want::NonFinite(all(&["lora.down.weight", "holds NaN at element 255 of 256"])),
        ),
        (
            "diffusers up of 1e30 (finite)",
            diffusers.clone(),
            vec![(format!("unet.{Q}.lora.up.weight"), Edit::Set(3, 1e30))],
            Want::Loads,
        ),
    ];
    for (i, (case, from, edits, want)) in cases.iter().enumerate() {
        let path = root.join(format!("v{i}.safetensors"));
        let edits: Vec<(&str, Edit)> = edits
            .iter()
            .map(|(k, e)| {
                (
                    k.as_str(),
                    match e {
                        Edit::Set(i, v) => Edit::Set(*i, *v),
                        Edit::Scale(s) => Edit::Scale(*s),
                    },
                )
            })
            .collect();
        rewrite(from, &path, &edits, None);
        check(case, &path, want, &[&root, &lora_dir()]);
    }
    // A value finite in f32 that the UNet's f16 makes infinite.
    let path = root.join("big.safetensors");
    rewrite(&diffusers, &path, &[(d_down.as_str(), Edit::Set(7, 1e5))], None);
    let unet16 = Unet::load(tiny_sd().join("unet"), None, DType::F16, &Device::Cpu).unwrap();
    match LoraAdapter::load(&path, &unet16) {
        Err(e @ Error::NonFiniteTensor { .. }) => {
            let m = e.to_string();
            assert!(m.contains(&d_down) && m.contains("1e5 at element 7") && m.contains("infinite in F16"), "{m}")
        }
        other => panic!("{other:?}"),
    }
    // A multiplier so large that an `up` overflows: named, not a NaN image later.
    let adapter = LoraAdapter::load(&diffusers, unet()).unwrap();
    let m = adapter.clone().scaled(1e300).unwrap_err().to_string();
    assert!(m.contains("the multiplier 1e300 makes the up weight of") && m.contains("overflow F32"), "{m}");
    assert!(adapter.clone().scaled(f64::NAN).unwrap_err().to_string().contains("not finite"));
    // Saving in f16 what f16 cannot hold: an error, and no file.
    let huge = LoraAdapter::load(root.join("v3.safetensors"), unet()).unwrap();
    let out = root.join("saved-f16.safetensors");
    let before = Snapshot::of(&[&root, &lora_dir()]);
    let m = huge.save(&out, DType::F16).unwrap_err().to_string();
    assert!(m.contains("is not finite in F16") && m.contains("save the adapter in f32"), "{m}");
    // No file written, changed or removed: not the output, not a temporary beside it.
    before.assert_unchanged(&[&root, &lora_dir()], "saving in f16 what f16 cannot hold");
    huge.save(&out, DType::F32).unwrap();
}

#[test]
fn a_header_length_that_starts_like_a_signature_is_still_safetensors() {
    // 0x0280 = 640 starts `80 02`, a pickle's protocol-2 mark (up to 0x0580: protocol 5); 0x8b1f
    // starts `1f 8b`, gzip's magic. Each padded header is valid safetensors.
    let root = scratch("lora-hostile-header");
    let src = root.join("one-layer.safetensors");
    let d = format!("unet.{Q}");
    let all = lora_dir().join("sd-diffusers.safetensors");
    let keep = [format!("{d}.lora.down.weight"), format!("{d}.lora.up.weight")];
    // One layer of sd-diffusers: a header under 640 bytes.
    let st = candle_core::safetensors::load(&all, &Device::Cpu).unwrap();
    let one: HashMap<String, candle_core::Tensor> = keep.iter().map(|k| (k.clone(), st[k].clone())).collect();
    candle_core::safetensors::save(&one, &src).unwrap();
    let want = LoraAdapter::load(&src, unet()).unwrap();
    for len in [0x0280u64, 0x0380, 0x0480, 0x0580, 0x0100_0280, 0x8b1f] {
        let path = root.join(format!("header-{len:x}.safetensors"));
        pad_header(&src, &path, len);
        let head = std::fs::read(&path).unwrap();
        assert_eq!(&head[..2], &len.to_le_bytes()[..2]);
        deradiff_sd::sniff_safetensors(&path).unwrap_or_else(|e| panic!("{len:#x}: {e}"));
        let got = LoraAdapter::load(&path, unet()).unwrap_or_else(|e| panic!("{len:#x}: {e}"));
        let a = &got.layers()[Q];
        assert_eq!(max_abs_diff(&a.down, &want.layers()[Q].down), 0.0);
        assert_eq!(max_abs_diff(&a.up, &want.layers()[Q].up), 0.0);
    }
    // A real pickle is still called one.
    let pickle = root.join("pickle.safetensors");
    std::fs::write(&pickle, b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01K\x01u.").unwrap();
    let e = LoraAdapter::load(&pickle, unet()).unwrap_err();
    assert!(matches!(&e, Error::NotSafetensors { looks_like, .. } if looks_like.contains("pickle (protocol 2")), "{e}");
}
