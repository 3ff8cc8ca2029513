//! LoRA adapters on the command line, on the tiny fixtures of `deradiff-sd`: `sample --aligned
//! <LoRA>` in the posterior fusion and the weight-space baseline, `--lora-scale`,
//! `--separate-passes`, refused adapters, `extract-lora` writing a LoRA that `sample` loads back,
//! `sweep --realign weights`; and a LoRA sweep scored by the aesthetic predictor and HPS v2.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn deradiff(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_deradiff")).args(args).output().expect("the deradiff binary runs")
}

fn fixture(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deradiff-sd/tests/fixtures").join(name);
    p.to_str().unwrap().to_string()
}

fn out_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("lora-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// `sample` of one λ with the tiny SD reference and `aligned`; the PNG's bytes.
fn sample(aligned: &str, extra: &[&str], out: &Path) -> Output {
    let reference = fixture("tiny-sd");
    let mut args = vec![
        "sample",
        "--reference",
        &reference,
        "--aligned",
        aligned,
        "--prompt",
        "a red cube on a table",
        "--steps",
        "3",
        "--guidance",
        "5",
        "--seed",
        "3",
        "--scheduler",
        "ddim",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    deradiff(&args)
}

#[test]
fn sample_takes_a_lora_as_the_aligned_model_in_both_realignments() {
    let dir = out_dir("sample");
    let kohya = fixture("lora/sd-kohya.safetensors");
    let png = |name: &str| dir.join(format!("{name}.png"));
    let read = |name: &str| std::fs::read(png(name)).unwrap();
    for (name, extra) in [
        ("posterior-0", vec!["--lambda", "0"]),
        ("posterior-1", vec!["--lambda", "1"]),
        ("weights-0", vec!["--lambda", "0", "--realign", "weights"]),
        ("weights-1", vec!["--lambda", "1", "--realign", "weights"]),
        ("scale-0", vec!["--lambda", "1", "--lora-scale", "0"]),
        ("peft-1", vec!["--lambda", "1"]),
        ("separate-05", vec!["--lambda", "0.5", "--separate-passes"]),
        ("joint-05", vec!["--lambda", "0.5"]),
    ] {
        let aligned = if name.starts_with("peft") { fixture("lora/sd-peft") } else { kohya.clone() };
        let o = sample(&aligned, &extra, &png(name));
        assert!(o.status.success(), "{name}: {}", text(&o));
    }
    // λ = 0 is the reference in both realignments, and so is a LoRA scaled by 0; λ = 1 is the
    // aligned model in both (the images of one model and seed are byte-identical).
    assert_eq!(read("posterior-0"), read("weights-0"));
    assert_eq!(read("posterior-0"), read("scale-0"));
    assert_eq!(read("posterior-1"), read("weights-1"));
    assert_ne!(read("posterior-0"), read("posterior-1"), "the LoRA changed nothing");
    assert_ne!(read("posterior-1"), read("peft-1"));
    // A UNet call per model instead of one joint call: the same image (f32 rounding apart).
    let (a, b) = (pixels(&png("separate-05")), pixels(&png("joint-05")));
    assert_eq!(a.len(), b.len());
    let worst = a.iter().zip(&b).map(|(x, y)| x.abs_diff(*y)).max().unwrap();
    assert!(worst <= 1, "separate vs joint passes: pixels differ by up to {worst}");
}

/// The RGB bytes of a PNG.
fn pixels(path: &Path) -> Vec<u8> {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut reader = png::Decoder::new(std::io::BufReader::new(file)).read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    buf
}

#[test]
fn unsupported_adapters_are_refused_by_sample_with_the_key() {
    let dir = out_dir("refused");
    for (file, key) in [
        ("lora/sd-dora", "lora_magnitude_vector"),
        ("lora/sd-kohya-te.safetensors", "lora_te_"),
        ("lora/sd-loha.safetensors", "hada_w"),
        ("lora/sd-unknown-key.safetensors", "unet.mystery_block.lora.down.weight"),
    ] {
        let o = sample(&fixture(file), &["--lambda", "1"], &dir.join("x.png"));
        assert_eq!(o.status.code(), Some(1), "{file}: {}", text(&o));
        assert!(text(&o).contains(key), "{file}: {}", text(&o));
    }
    // --realign weights needs LoRA-aligned models.
    let o = sample(&fixture("tiny-aligned-unet"), &["--lambda", "1", "--realign", "weights"], &dir.join("x.png"));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--realign weights"), "{}", text(&o));
}

#[test]
fn extract_lora_writes_a_lora_that_sample_loads() {
    let dir = out_dir("extract");
    std::fs::create_dir_all(&dir).unwrap();
    let lora = dir.join("extracted.safetensors");
    let (reference, aligned) = (fixture("tiny-sd"), fixture("tiny-aligned-unet"));
    let o = deradiff(&[
        "extract-lora",
        "--reference",
        &reference,
        "--aligned",
        &aligned,
        "--rank",
        "4",
        "--out",
        lora.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    // One line per layer, then the totals and the unrepresentable biases and norms.
    assert!(stdout.contains("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"), "{stdout}");
    assert!(stdout.contains("83 layers extracted"), "{stdout}");
    assert!(stdout.contains("total relative Frobenius error"), "{stdout}");
    assert!(stdout.contains("biases / norm parameters differ"), "{stdout}");
    assert!(lora.is_file());
    let o = sample(lora.to_str().unwrap(), &["--lambda", "0.5"], &dir.join("s.png"));
    assert!(o.status.success(), "{}", text(&o));

    // --fast (randomized SVD) and f16 output.
    let fast = dir.join("fast.safetensors");
    let o = deradiff(&[
        "extract-lora",
        "--reference",
        &reference,
        "--aligned",
        &aligned,
        "--rank",
        "2",
        "--fast",
        "--save-dtype",
        "f16",
        "--quiet",
        "--out",
        fast.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("as F16"), "{}", text(&o));

    // Bad options: exit 2 with the option named; a model pair of different architectures: 1.
    for (args, code, want) in [
        (vec!["--rank", "0"], 2, "--rank"),
        (vec!["--rank", "4", "--out", "x.bin"], 2, ".safetensors"),
        (vec!["--rank", "4", "--min-change", "-1"], 2, "--min-change"),
        (vec!["--rank", "4", "--save-dtype", "f8"], 2, "--save-dtype"),
    ] {
        let mut full = vec!["extract-lora", "--reference", &reference, "--aligned", &aligned];
        full.extend_from_slice(&args);
        if !args.contains(&"--out") {
            full.extend(["--out", lora.to_str().unwrap()]);
        }
        let o = deradiff(&full);
        assert_eq!(o.status.code(), Some(code), "{args:?}: {}", text(&o));
        assert!(text(&o).contains(want), "{args:?}: {}", text(&o));
    }
    let xl = fixture("tiny-sdxl");
    let o = deradiff(&["extract-lora", "--reference", &reference, "--aligned", &xl, "--out", lora.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("cannot"), "{}", text(&o));
}

#[test]
fn sweep_realigns_a_lora_in_weight_space_and_records_it() {
    let dir = out_dir("sweep");
    let (reference, kohya) = (fixture("tiny-sd"), fixture("lora/sd-kohya.safetensors"));
    let pick = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deradiff-tune/tests/fixtures/clip/clip-quick-gelu");
    let run = |aligned: &str, realign: &str, out: &Path| {
        deradiff(&[
            "sweep",
            "--reference",
            &reference,
            "--aligned",
            aligned,
            "--realign",
            realign,
            "--prompt",
            "a red cube",
            "--lambdas",
            "0,0.5",
            "--pickscore",
            pick.to_str().unwrap(),
            "--steps",
            "2",
            "--samples",
            "1",
            "--quiet",
            "--out",
            out.to_str().unwrap(),
        ])
    };
    let o = run(&kohya, "weights", &dir.join("weights"));
    assert!(o.status.success(), "{}", text(&o));
    let jsonl = std::fs::read_to_string(dir.join("weights/sweep.jsonl")).unwrap();
    assert_eq!(jsonl.lines().count(), 3, "{jsonl}");
    assert!(jsonl.lines().next().unwrap().contains("weight-space realignment"), "{jsonl}");
    // A results file of one realignment is not resumed by the other.
    let o = run(&kohya, "posterior", &dir.join("weights"));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    // A full aligned UNet has no LoRA to merge at λ; the analytic testbed has no --realign.
    let o = run(&fixture("tiny-aligned-unet"), "weights", &dir.join("full"));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("needs LoRA-aligned models"), "{}", text(&o));
    let o = deradiff(&["sweep", "--realign", "weights", "--quiet", "--out", dir.join("analytic").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--realign weights applies to Stable Diffusion sweeps"), "{}", text(&o));
}

#[test]
fn sweep_scores_with_the_aesthetic_predictor_hps_and_image_reward() {
    let dir = out_dir("aesthetic");
    let tune = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deradiff-tune/tests/fixtures");
    let (clip, mlp) = (tune.join("clip/clip-quick-gelu"), tune.join("aesthetic/mlp-16.safetensors"));
    let (reference, aligned) = (fixture("tiny-sd"), fixture("lora/sd-kohya.safetensors"));
    let out = dir.join("sweep");
    let o = deradiff(&[
        "sweep",
        "--reference",
        &reference,
        "--aligned",
        &aligned,
        "--prompt",
        "a red cube",
        "--lambdas",
        "0,1",
        "--aesthetic",
        clip.to_str().unwrap(),
        "--aesthetic-mlp",
        mlp.to_str().unwrap(),
        "--hps",
        tune.join("hps/open_clip_model.safetensors").to_str().unwrap(),
        "--hps-config",
        tune.join("hps/open_clip_config.json").to_str().unwrap(),
        "--hps-tokenizer",
        tune.join("clip/clip-gelu").to_str().unwrap(),
        "--image-reward",
        tune.join("image_reward").to_str().unwrap(),
        "--steps",
        "2",
        "--samples",
        "1",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let jsonl = std::fs::read_to_string(out.join("sweep.jsonl")).unwrap();
    assert_eq!(jsonl.lines().count(), 3, "{jsonl}");
    assert!(jsonl.lines().nth(1).unwrap().contains("\"aesthetic\""), "{jsonl}");
    assert!(jsonl.lines().nth(1).unwrap().contains("\"hps\""), "{jsonl}");
    assert!(jsonl.lines().nth(1).unwrap().contains("\"image_reward\""), "{jsonl}");
    // compare reads any reward column of a results file, ImageReward's too.
    let results = out.join("sweep.jsonl");
    let o = deradiff(&[
        "compare",
        results.to_str().unwrap(),
        results.to_str().unwrap(),
        "--reward",
        "image_reward",
        "--out",
        dir.join("compare").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let agreement: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("compare/agreement.json")).unwrap()).unwrap();
    assert_eq!(agreement["n"], 2, "{agreement}");
    assert_eq!(agreement["mae"]["value"], 0.0, "{agreement}");
    // Without its MLP: a usage error naming the missing option.
    let o =
        deradiff(&["sweep", "--reference", &reference, "--aligned", &aligned, "--aesthetic", clip.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--aesthetic-mlp"), "{}", text(&o));
}
