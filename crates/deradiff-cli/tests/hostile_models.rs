//! Hostile models through the command line: LoRA adapters and peft folders that peft or
//! diffusers refuse, models with NaN, infinite or overflowing weights (UNets, VAE, text encoder,
//! LoRA adapters, reward models), models whose output overflows while sampling, samples that
//! saturate, valid files whose header length starts like a pickle. Each case checks the exit
//! status (1 or 2 for an error — never a panic's 101 or a signal — or 0 where a warning is due),
//! what stderr says, that no input file changed, and that a failed run wrote nothing.

#[path = "../../deradiff-sd/tests/common/edit.rs"]
mod edit;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use edit::{copy_tree, pad_header, rewrite, Edit, Snapshot};

fn sd_fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deradiff-sd/tests/fixtures")
}

fn tune_fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deradiff-tune/tests/fixtures")
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

const UNET: &str = "diffusion_pytorch_model.safetensors";
const Q: &str = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q";

/// What a case must end in.
enum Want {
    /// A non-zero exit that is neither a panic nor a signal, stderr holding every string, and no
    /// file in the case's output folder.
    Error(Vec<String>),
    /// Exit 0 with stderr holding every string (a warning).
    Warns(Vec<String>),
    /// Exit 0.
    Succeeds,
}

fn error(needles: &[&str]) -> Want {
    Want::Error(needles.iter().map(|n| n.to_string()).collect())
}

fn warns(needles: &[&str]) -> Want {
    Want::Warns(needles.iter().map(|n| n.to_string()).collect())
}

/// The hostile inputs of every case, made from the real fixtures in a scratch folder.
struct Inputs {
    root: PathBuf,
}

impl Inputs {
    fn new(name: &str) -> Self {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("hostile-models-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("in")).unwrap();
        Self { root }
    }

    fn input(&self, name: &str) -> PathBuf {
        self.root.join("in").join(name)
    }

    fn out(&self, case: usize) -> PathBuf {
        self.root.join("out").join(format!("case-{case}"))
    }

    /// A copy of the fixture folder `from` as input `name`, with `edits` to its file `file`.
    fn broken(&self, name: &str, from: &Path, file: &str, edits: &[(&str, Edit)]) -> String {
        let to = self.input(name);
        copy_tree(from, &to);
        rewrite(&from.join(file), &to.join(file), edits, None);
        s(&to)
    }

    /// A peft folder: sd-peft's weights with its config changed by `config` (removed if it
    /// returns `None`).
    fn peft(&self, name: &str, config: impl Fn(&mut serde_json::Map<String, serde_json::Value>) -> bool) -> String {
        let to = self.input(name);
        copy_tree(&sd_fixtures().join("lora/sd-peft"), &to);
        let path = to.join("adapter_config.json");
        let mut c: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        if config(&mut c) {
            std::fs::write(&path, serde_json::Value::Object(c).to_string()).unwrap();
        } else {
            std::fs::remove_file(&path).unwrap();
        }
        s(&to)
    }

    /// `from` (a LoRA file of the fixtures) with its `lora_adapter_metadata` set to `meta`.
    fn with_metadata(&self, name: &str, from: &str, meta: &str) -> String {
        let to = self.input(name);
        let m = HashMap::from([("format".into(), "pt".into()), ("lora_adapter_metadata".into(), meta.into())]);
        rewrite(&sd_fixtures().join("lora").join(from), &to, &[], Some(Some(m)));
        s(&to)
    }

    /// Runs every case: exit status, stderr, no file changed, removed or created outside the
    /// case's own output folder (the scratch folder, which is the working directory and holds
    /// every input and the earlier cases' outputs, and the fixtures), nothing written by a failure.
    fn run(&self, cases: Vec<(&str, Vec<String>, Want)>) {
        let roots = [self.root.clone(), sd_fixtures(), tune_fixtures()];
        let roots: Vec<&Path> = roots.iter().map(PathBuf::as_path).collect();
        let mut failures = Vec::new();
        for (i, (name, args, want)) in cases.iter().enumerate() {
            let out = self.out(i);
            let args: Vec<String> = args.iter().map(|a| a.replace("{out}", &s(&out))).collect();
            let before = Snapshot::of(&roots);
            let o = Command::new(env!("CARGO_BIN_EXE_deradiff"))
                .args(&args)
                .current_dir(&self.root)
                .env("DERADIFF_TEST_NO_TTY", "1")
                .output()
                .expect("the binary runs");
            let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
            let changed = Snapshot::of(&roots).without(&out) != before.without(&out);
            let written = Snapshot::of(&[&out]).len();
            let problem = match (o.status.code(), want) {
                _ if changed => Some("changed, removed or created a file outside its output folder".to_string()),
                (None, _) => Some("killed by a signal".into()),
                (Some(101), _) => Some(format!("panicked: {stderr}")),
                (Some(0), Want::Error(_)) => Some(format!("exit 0: {stderr}")),
                (Some(c), Want::Warns(_) | Want::Succeeds) if c != 0 => Some(format!("exit {c}: {stderr}")),
                (Some(c), Want::Error(_)) if c != 1 && c != 2 => Some(format!("exit {c}: {stderr}")),
                (_, Want::Error(_)) if written > 0 => Some(format!("left {written} files in {}", out.display())),
                (_, Want::Error(n) | Want::Warns(n)) => {
                    n.iter().find(|n| !stderr.contains(n.as_str())).map(|n| format!("`{n}` not in: {stderr}"))
                }
                (_, Want::Succeeds) => None,
            };
            println!("{name}: exit {:?}\n{stderr}", o.status.code());
            if let Some(p) = problem {
                failures.push(format!("{name}: {p}"));
            }
        }
        assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
    }
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|x| x.to_string()).collect()
}

/// `deradiff sample` of the tiny SD checkpoint (or `reference`) with `aligned`, two steps.
fn sample(reference: &str, aligned: &str, extra: &[&str]) -> Vec<String> {
    let mut v = args(&["sample", "--reference", reference, "--aligned", aligned, "--prompt", "a cube", "--steps", "2"]);
    v.extend(args(extra));
    v.extend(args(&["--out", "{out}/s.png", "-q"]));
    v
}

#[test]
fn lora_adapters_that_peft_or_diffusers_refuse_are_errors_naming_the_setting() {
    let t = Inputs::new("lora");
    let sd = s(&sd_fixtures().join("tiny-sd"));
    let lora = sd_fixtures().join("lora");
    let meta: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&edit::metadata(&lora.join("sd-diffusers-alpha.safetensors"))["lora_adapter_metadata"])
            .unwrap();
    let mut r8 = meta.clone();
    r8.insert("unet.r".into(), 8.into());
    let bare: serde_json::Map<String, serde_json::Value> =
        meta.iter().map(|(k, v)| (k.trim_start_matches("unet.").to_string(), v.clone())).collect();
    let two = t.input("two");
    copy_tree(&lora.join("sd-peft"), &two);
    std::fs::copy(lora.join("sd-diffusers.safetensors"), two.join("pytorch_lora_weights.safetensors")).unwrap();
    let nested = t.input("nested");
    copy_tree(&lora.join("sd-peft"), &nested.join("style"));
    copy_tree(&lora.join("sd-peft"), &nested.join("subject"));
    let alone = t.input("alone");
    std::fs::create_dir_all(&alone).unwrap();
    std::fs::copy(lora.join("sd-peft/adapter_model.safetensors"), alone.join("adapter_model.safetensors")).unwrap();
    let header = t.input("one-layer.safetensors");
    let st = candle_core::safetensors::load(lora.join("sd-diffusers.safetensors"), &candle_core::Device::Cpu).unwrap();
    let one: HashMap<String, candle_core::Tensor> = st.into_iter().filter(|(k, _)| k.contains(Q)).collect();
    candle_core::safetensors::save(&one, &header).unwrap();
    let pickle_like = t.input("header-0280.safetensors");
    pad_header(&header, &pickle_like, 0x0280);
    let cases = vec![
        (
            "peft config r disagrees",
            sample(&sd, &t.peft("r8", |c| c.insert("r".into(), 8.into()).is_some()), &[]),
            error(&["has rank 4", "adapter_config.json declares rank 8", "(its `r`)"]),
        ),
        (
            "peft config without r",
            sample(&sd, &t.peft("no-r", |c| c.remove("r").is_some()), &[]),
            error(&["declares rank 8", "peft's default r = 8"]),
        ),
        (
            "peft rank_pattern disagrees",
            sample(
                &sd,
                &t.peft("rp", |c| c.insert("rank_pattern".into(), serde_json::json!({"to_q": 2})).is_some()),
                &[],
            ),
            error(&["declares rank 2", "`rank_pattern` entry `to_q`"]),
        ),
        (
            "peft rank_pattern not a regex deradiff reads",
            sample(
                &sd,
                &t.peft("rp-lookbehind", |c| {
                    c.insert("rank_pattern".into(), serde_json::json!({"(?<=attn1\\.)to_q": 4})).is_some()
                }),
                &[],
            ),
            error(&["`rank_pattern` key `(?<=attn1\\.)to_q` is not a regular expression"]),
        ),
        (
            "peft folder without its config",
            sample(&sd, &t.peft("no-config", |_| false), &[]),
            error(&["is a peft key", "no adapter_config.json beside"]),
        ),
        (
            "peft file without its config",
            sample(&sd, &s(&alone.join("adapter_model.safetensors")), &[]),
            error(&["is a peft key", "no adapter_config.json beside"]),
        ),
        (
            "metadata rank disagrees",
            sample(
                &sd,
                &t.with_metadata(
                    "meta-r8.safetensors",
                    "sd-diffusers-alpha.safetensors",
                    &serde_json::Value::Object(r8).to_string(),
                ),
                &[],
            ),
            error(&["the header's `lora_adapter_metadata` declares rank 8"]),
        ),
        (
            "metadata without unet. entries",
            sample(
                &sd,
                &t.with_metadata(
                    "meta-bare.safetensors",
                    "sd-diffusers-alpha.safetensors",
                    &serde_json::Value::Object(bare).to_string(),
                ),
                &[],
            ),
            error(&["no `unet.` entries"]),
        ),
        (
            "kohya alphas and metadata",
            sample(
                &sd,
                &t.with_metadata(
                    "kohya-meta.safetensors",
                    "sd-kohya.safetensors",
                    &serde_json::Value::Object(meta.clone()).to_string(),
                ),
                &[],
            ),
            error(&["gives the layer's alpha, and so does", "diffusers refuses a file with both"]),
        ),
        ("a folder holding two adapters", sample(&sd, &s(&two), &[]), error(&["holds 2 adapters' files"])),
        (
            "adapters only in subfolders",
            sample(&sd, &s(&nested), &[]),
            error(&["in its subfolders (style/, subject/)"]),
        ),
        (
            "sweep: peft config r disagrees",
            args(&[
                "sweep",
                "--reference",
                &sd,
                "--aligned",
                &t.input("r8").to_string_lossy(),
                "--prompt",
                "a cube",
                "--lambdas",
                "0,1",
                "--pickscore",
                &s(&tune_fixtures().join("clip/clip-quick-gelu")),
                "--steps",
                "2",
                "--samples",
                "1",
                "--out",
                "{out}",
                "-q",
            ]),
            error(&["declares rank 8"]),
        ),
        ("a LoRA whose header length starts `80 02`", sample(&sd, &s(&pickle_like), &[]), Want::Succeeds),
    ];
    t.run(cases);
}

#[test]
fn non_finite_weights_are_errors_naming_file_and_tensor() {
    let t = Inputs::new("weights");
    let sd_dir = sd_fixtures().join("tiny-sd");
    let (sd, aligned_dir) = (s(&sd_dir), sd_fixtures().join("tiny-aligned-unet"));
    let lora = sd_fixtures().join("lora");
    let kq = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight";
    let kohya_nan = t.input("kohya-nan.safetensors");
    rewrite(&lora.join("sd-kohya.safetensors"), &kohya_nan, &[(kq, Edit::Set(3, f64::NAN))], None);
    let d_up = format!("unet.{Q}.lora.up.weight");
    let diffusers_inf = t.input("diffusers-inf.safetensors");
    rewrite(&lora.join("sd-diffusers.safetensors"), &diffusers_inf, &[(&d_up, Edit::Set(0, f64::INFINITY))], None);
    let unet_nan =
        t.broken("unet-nan", &aligned_dir, UNET, &[("mid_block.resnets.0.conv2.weight", Edit::Set(11, f64::NAN))]);
    let ref_vae =
        t.broken("ref-vae", &sd_dir, &format!("vae/{UNET}"), &[("decoder.conv_in.bias", Edit::Set(0, f64::NAN))]);
    let ref_te = t.broken(
        "ref-te",
        &sd_dir,
        "text_encoder/model.safetensors",
        &[("text_model.final_layer_norm.weight", Edit::Set(1, f64::INFINITY))],
    );
    let big = t.broken("big", &aligned_dir, UNET, &[("conv_out.weight", Edit::Set(0, 1e12))]);
    let tune = tune_fixtures();
    let clip_nan = t.broken(
        "clip-nan",
        &tune.join("clip/clip-gelu"),
        "model.safetensors",
        &[("logit_scale", Edit::Set(0, f64::NAN))],
    );
    let mlp_nan = t.input("mlp-nan.safetensors");
    rewrite(&tune.join("aesthetic/mlp-16.safetensors"), &mlp_nan, &[("layers.4.weight", Edit::Set(0, f64::NAN))], None);
    let hps_nan = t.input("hps-nan.safetensors");
    rewrite(
        &tune.join("hps/open_clip_model.safetensors"),
        &hps_nan,
        &[("visual.proj", Edit::Set(0, f64::NEG_INFINITY))],
        None,
    );
    let ir_nan = t.broken(
        "ir-nan",
        &tune.join("image_reward"),
        "model.safetensors",
        &[("mlp.layers.0.bias", Edit::Set(0, f64::NAN))],
    );
    let images = t.input("images");
    std::fs::create_dir_all(&images).unwrap();
    deradiff_sd::RgbImage::new(4, 4, vec![128; 48]).unwrap().save_png(images.join("a.png")).unwrap();
    let score = |extra: &[&str]| {
        let mut v =
            args(&["score", "--images", &s(&images), "--prompt", "a cube", "--out", "{out}/scores.jsonl", "-q"]);
        v.extend(args(extra));
        v
    };
    let extract = |reference: &str, aligned: &str, extra: &[&str]| {
        let mut v = args(&["extract-lora", "--reference", reference, "--aligned", aligned, "--rank", "2"]);
        v.extend(args(extra));
        v.extend(args(&["--out", "{out}/lora.safetensors", "-q"]));
        v
    };
    let bad_shape = t.input("bad-shape");
    copy_tree(&aligned_dir, &bad_shape);
    edit::edit_header(
        &aligned_dir.join(UNET),
        &bad_shape.join(UNET),
        |h| h["conv_in.weight"]["shape"] = serde_json::json!([32, 4, 3, 4]),
        0,
    );
    let truncated = t.input("truncated.safetensors");
    edit::edit_header(&lora.join("sd-diffusers.safetensors"), &truncated, |_| {}, 16);
    let a = s(&aligned_dir);
    let cases = vec![
        (
            "sample: aligned UNet whose header misstates a shape",
            sample(&sd, &s(&bad_shape), &[]),
            error(&["tensor `conv_in.weight`: its data_offsets", "but shape [32, 4, 3, 4] of F16 needs"]),
        ),
        (
            "sample: a truncated LoRA",
            sample(&sd, &s(&truncated), &[]),
            error(&["reach past the end of the data", "the file is truncated"]),
        ),
        (
            "sample: LoRA NaN (kohya, f16)",
            sample(&sd, &s(&kohya_nan), &[]),
            error(&[kq, "holds NaN at element 3", "kohya-nan.safetensors"]),
        ),
        (
            "sample: LoRA +inf (diffusers)",
            sample(&sd, &s(&diffusers_inf), &[]),
            error(&[&d_up, "holds inf at element 0"]),
        ),
        (
            "sample: aligned UNet NaN",
            sample(&sd, &unet_nan, &[]),
            error(&["mid_block.resnets.0.conv2.weight", "holds NaN at element 11", "unet-nan"]),
        ),
        (
            "sample: reference VAE NaN",
            sample(&ref_vae, &a, &[]),
            error(&["decoder.conv_in.bias", "holds NaN", "ref-vae/vae"]),
        ),
        (
            "sample: reference text encoder inf",
            sample(&ref_te, &a, &[]),
            error(&["text_model.final_layer_norm.weight", "holds inf", "ref-te/text_encoder"]),
        ),
        (
            "sweep: aligned UNet NaN",
            args(&[
                "sweep",
                "--reference",
                &sd,
                "--aligned",
                &unet_nan,
                "--prompt",
                "a cube",
                "--lambdas",
                "0,1",
                "--pickscore",
                &s(&tune.join("clip/clip-quick-gelu")),
                "--steps",
                "2",
                "--samples",
                "1",
                "--out",
                "{out}",
                "-q",
            ]),
            error(&["mid_block.resnets.0.conv2.weight", "holds NaN"]),
        ),
        (
            "extract-lora: aligned NaN",
            extract(&sd, &unet_nan, &[]),
            error(&["mid_block.resnets.0.conv2.weight", "holds NaN"]),
        ),
        ("extract-lora: reference NaN", extract(&ref_vae, &unet_nan, &[]), error(&["holds NaN"])),
        (
            "extract-lora: f16 cannot hold the adapter",
            extract(&sd, &big, &["--save-dtype", "f16"]),
            error(&["is not finite in F16", "save the adapter in f32"]),
        ),
        (
            "score: CLIP logit_scale NaN",
            score(&["--clip", &clip_nan]),
            error(&["logit_scale", "holds NaN", "clip-nan"]),
        ),
        (
            "score: aesthetic MLP NaN",
            score(&["--aesthetic", &s(&tune.join("clip/clip-gelu")), "--aesthetic-mlp", &s(&mlp_nan)]),
            error(&["layers.4.weight", "holds NaN"]),
        ),
        (
            "score: HPS -inf",
            score(&[
                "--hps",
                &s(&hps_nan),
                "--hps-config",
                &s(&tune.join("hps/open_clip_config.json")),
                "--hps-tokenizer",
                &s(&tune.join("clip/clip-gelu")),
            ]),
            error(&["visual.proj", "holds -inf"]),
        ),
        ("score: ImageReward NaN", score(&["--image-reward", &ir_nan]), error(&["mlp.layers.0.bias", "holds NaN"])),
    ];
    t.run(cases);
}

#[test]
fn overflowing_models_are_named_and_saturated_samples_are_reported() {
    let t = Inputs::new("outputs");
    let sd_dir = sd_fixtures().join("tiny-sd");
    let (sd, aligned_dir) = (s(&sd_dir), sd_fixtures().join("tiny-aligned-unet"));
    let lora = sd_fixtures().join("lora");
    let huge_unet = t.broken("huge-unet", &aligned_dir, UNET, &[("conv_in.weight", Edit::Scale(1e37))]);
    let out_up = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0.lora.up.weight";
    let huge_lora = t.input("huge-lora.safetensors");
    rewrite(&lora.join("sd-diffusers.safetensors"), &huge_lora, &[(out_up, Edit::Scale(1e36))], None);
    let loud = t.broken("loud-vae", &sd_dir, &format!("vae/{UNET}"), &[("decoder.conv_out.weight", Edit::Scale(1e3))]);
    let a = s(&aligned_dir);
    let kohya = s(&lora.join("sd-kohya.safetensors"));
    let pick = s(&tune_fixtures().join("clip/clip-quick-gelu"));
    let cases = vec![
        (
            "sample: aligned UNet overflows",
            sample(&sd, &huge_unet, &[]),
            error(&["the output of aligned model 1 (the UNet", "huge-unet", "became non-finite at step 0"]),
        ),
        (
            "sample: LoRA overflows",
            sample(&sd, &s(&huge_lora), &[]),
            error(&["aligned model 1 (the LoRA adapter", "huge-lora.safetensors", "at step 0"]),
        ),
        (
            "sample: LoRA overflows, separate passes",
            sample(&sd, &s(&huge_lora), &["--separate-passes"]),
            error(&["aligned model 1 (the LoRA adapter", "at step 0"]),
        ),
        ("sample: --lora-scale 1e300", sample(&sd, &kohya, &["--lora-scale", "1e300"]), error(&["1e300"])),
        (
            "sample: weight space at λ = 1e8",
            sample(&sd, &kohya, &["--realign", "weights", "--lambda", "1e8"]),
            error(&["the weight-space model", "λ = [100000000.0]"]),
        ),
        (
            "sample: a saturated image",
            sample(&loud, &a, &[]),
            warns(&["warning: the image of λ = 0.5 is saturated: 100.0% of its pixels are clipped"]),
        ),
        (
            "sweep: a saturated row",
            args(&[
                "sweep",
                "--reference",
                &loud,
                "--aligned",
                &a,
                "--prompt",
                "a cube",
                "--lambdas",
                "0,1",
                "--pickscore",
                &pick,
                "--steps",
                "2",
                "--samples",
                "1",
                "--out",
                "{out}",
                "-q",
            ]),
            warns(&["warning: an image of λ = 0, prompt \"a cube\" is saturated: 100.0%", "an image of λ = 1,"]),
        ),
        ("sample: an ordinary image warns of nothing", sample(&sd, &a, &[]), Want::Succeeds),
    ];
    t.run(cases);
    // The sweep records each row's saturation; the ordinary run wrote its image.
    let rows = std::fs::read_to_string(t.out(6).join("sweep.jsonl")).unwrap();
    let sat: Vec<f64> = rows
        .lines()
        .skip(1)
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["saturation"].as_f64().unwrap())
        .collect();
    assert_eq!(sat, vec![1.0, 1.0], "{rows}");
    assert!(t.out(7).join("s.png").is_file());
}
