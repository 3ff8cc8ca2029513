//! The command line's own checks, end to end on the tiny fixtures of `deradiff-sd`: errors print
//! their cause chain and exit 1 (a failed run) or 2 (a bad option), never 101; `deradiff sample`
//! checks `--size`, `--weights`, `--out`, `--reference` and `--aligned` before loading anything,
//! in the words of its options, and leaves no file behind; `--quiet` silences the "wrote …"
//! lines; lists may start with a negative number.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn deradiff(args: &[&str]) -> Output {
    deradiff_in(Path::new("."), args)
}

fn deradiff_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_deradiff")).args(args).current_dir(dir).output().expect("the deradiff binary runs")
}

fn fixture(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deradiff-sd/tests/fixtures").join(name);
    p.to_str().unwrap().to_string()
}

/// An empty scratch folder.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("options-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `deradiff sample` on the tiny SD 1.x checkpoint, two steps, plus `extra`.
fn sample_args<'a>(out: &'a str, extra: &[&'a str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "sample",
        "--reference",
        &fixture("tiny-sd"),
        "--aligned",
        &fixture("tiny-aligned-unet"),
        "--prompt",
        "a red cube",
        "--steps",
        "2",
        "--out",
        out,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn run_sample(dir: &Path, out: &str, extra: &[&str]) -> Output {
    let args = sample_args(out, extra);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    deradiff_in(dir, &refs)
}

/// Asserts a failure with `code`, whose stderr contains every needle, and that `dir` holds no file.
fn assert_fails(out: &Output, code: i32, needles: &[&str], dir: &Path, case: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "{case}: exit status {:?}, stderr: {err}", out.status);
    assert!(err.starts_with("error: "), "{case}: {err}");
    for needle in needles {
        assert!(err.contains(needle), "{case}: stderr lacks {needle:?}: {err}");
    }
    assert!(!err.contains("panicked"), "{case}: {err}");
    let left = files_under(dir);
    assert!(left.is_empty(), "{case}: files left behind: {left:?}");
}

#[test]
fn errors_print_their_cause_chain_and_exit_1_or_2() {
    let dir = scratch("chain");
    // A run that fails: the command's words on top, the library's error below.
    let missing = dir.join("no-such-checkpoint");
    let out = deradiff_in(
        &dir,
        &[
            "sample",
            "--reference",
            missing.to_str().unwrap(),
            "--aligned",
            &fixture("tiny-aligned-unet"),
            "--prompt",
            "x",
        ],
    );
    assert_fails(
        &out,
        1,
        &["error: cannot load --reference", "\n  caused by: ", "no-such-checkpoint"],
        &dir,
        "missing",
    );
    // A bad option whose detail is a library's error: exit status 2, the detail as its cause.
    let out = run_sample(&dir, "x.png", &["--dtype", "f8"]);
    assert_fails(&out, 2, &["error: --dtype f8 is not a usable dtype\n  caused by: ", "f32"], &dir, "dtype");
    let out = run_sample(&dir, "x.png", &["--dtype", "bf16"]);
    assert_fails(&out, 2, &["--dtype bf16 cannot run on --device cpu\n  caused by: "], &dir, "bf16");
    // Usage errors of clap itself keep clap's status 2.
    let out = deradiff(&["sample", "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2));
    // Results files that do not parse: a runtime failure, status 1, with the file named.
    let junk = dir.join("junk.jsonl");
    std::fs::write(&junk, b"hello\n").unwrap();
    let cmp = dir.join("cmp");
    let out = deradiff(&["compare", junk.to_str().unwrap(), junk.to_str().unwrap(), "--out", cmp.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("junk.jsonl") && stderr(&out).contains("caused by: "), "{}", stderr(&out));
    assert!(!cmp.exists());
}

#[test]
fn size_is_checked_first_and_blamed_on_size() {
    let dir = scratch("size");
    let cases: &[(&str, &[&str])] = &[
        ("17x16", &["multiples of 8", "24x16"]),
        ("0x0", &["positive"]),
        ("16x", &["expected WxH"]),
        ("64by64", &["expected WxH"]),
        ("-8x8", &["expected WxH"]),
        ("100000x100000", &["4096×4096", "too large"]),
        ("4104x4096", &["4096×4096"]),
        ("4294967296x4294967296", &["too large"]),
        ("99999999999999999999999x8", &["too large"]),
    ];
    for (size, needles) in cases {
        let mut all = vec!["error: --size"];
        all.extend_from_slice(needles);
        let out = run_sample(&dir, "x.png", &["--size", size, "--lambda", "0,1"]);
        assert_fails(&out, 2, &all, &dir, size);
        assert!(!stderr(&out).contains('λ'), "{size}: the size is blamed on λ: {}", stderr(&out));
        // Before any model is loaded: the same message with a reference that does not exist
        // (spelled as a path: a bare `no-such-checkpoint` is a Hugging Face repo id, refused as
        // the option is read).
        let args = [
            "sample",
            "--reference",
            "./no-such-checkpoint",
            "--aligned",
            "./no-such-unet",
            "--prompt",
            "x",
            "--size",
            size,
        ];
        let out = deradiff_in(&dir, &args);
        assert_fails(&out, 2, &all, &dir, size);
    }
    // The help states the rule.
    let help = stdout(&deradiff(&["sample", "--help"]));
    assert!(help.contains("multiples of 8") && help.contains("4096×4096"), "{help}");
}

#[test]
fn weight_errors_speak_of_options() {
    let dir = scratch("weights");
    let cases: &[(&[&str], &[&str])] = &[
        (&["--weights", "0.2,0.2"], &["--weights 0.2,0.2 sum to 0.4", "--aligned", "--lambda"]),
        (&["--weights", "1"], &["--weights 1 has 1 value", "give 2", "--aligned"]),
        (&["--weights", "nan,1"], &["--weights", "finite"]),
        (&["--lambda", "nan"], &["--lambda", "finite"]),
        (&["--lambda", "0.5,0.5"], &["--lambda 0.5,0.5", "twice"]),
        (&["--aligned", &fixture("tiny-aligned-unet"), "--lambda", "0.5"], &["2 --aligned models", "--lambda"]),
    ];
    for (extra, needles) in cases {
        let out = run_sample(&dir, "x.png", extra);
        assert_fails(&out, 2, needles, &dir, &format!("{extra:?}"));
        let err = stderr(&out);
        assert!(!err.contains("Realigner") && !err.contains("two_model"), "{extra:?}: {err}");
    }
}

#[test]
fn out_directories_and_extensions() {
    let dir = scratch("out");
    // A missing extension: an error that says to add .png, before anything is loaded or written.
    for (out, needles) in [
        ("image", &["--out image has no extension", "add .png", "image.png"][..]),
        ("image.jpg", &["--out image.jpg", "image.png"][..]),
        ("/dev/null", &["--out /dev/null", "add .png"][..]),
    ] {
        let result = run_sample(&dir, out, &[]);
        assert_fails(&result, 2, needles, &dir, out);
    }
    // A path below a file: the output directory cannot be made, and nothing is written.
    std::fs::write(dir.join("a-file"), b"x").unwrap();
    let result = run_sample(&dir, "a-file/", &[]);
    assert_eq!(result.status.code(), Some(2), "{}", stderr(&result));
    assert!(stderr(&result).contains("output directory"), "{}", stderr(&result));
    std::fs::remove_file(dir.join("a-file")).unwrap();

    // `dir/` (missing, created) and an existing directory get sample.png inside.
    let result = run_sample(&dir, "new/", &["--quiet"]);
    assert!(result.status.success(), "{}", stderr(&result));
    assert!(dir.join("new/sample.png").is_file());
    std::fs::create_dir_all(dir.join("existing")).unwrap();
    let result = run_sample(&dir, "existing", &["--quiet", "--lambda", "0,1"]);
    assert!(result.status.success(), "{}", stderr(&result));
    for name in ["sample.png", "sample-l0.png", "sample-l1.png"] {
        assert!(dir.join("existing").join(name).is_file(), "{name}");
    }
    // An upper-case extension is a PNG too.
    let result = run_sample(&dir, "upper.PNG", &["--quiet"]);
    assert!(result.status.success(), "{}", stderr(&result));
    assert!(dir.join("upper.PNG").is_file());
    // Only PNGs were written, no probe or temporary file.
    let files = files_under(&dir);
    assert!(files.iter().all(|f| f.extension().is_some_and(|e| e.eq_ignore_ascii_case("png"))), "{files:?}");
}

#[test]
fn quiet_silences_the_wrote_lines() {
    let dir = scratch("quiet");
    let loud = run_sample(&dir, "loud.png", &[]);
    assert!(loud.status.success(), "{}", stderr(&loud));
    assert!(stderr(&loud).contains("wrote"), "{}", stderr(&loud));
    // Without --guidance the checkpoint's default scale is used (7.5 for SD 1.x / 2.x).
    assert!(stderr(&loud).contains("guidance scale 7.5"), "{}", stderr(&loud));
    for flag in ["-q", "--quiet"] {
        let quiet = run_sample(&dir, "quiet.png", &[flag, "--lambda", "0,1"]);
        assert!(quiet.status.success(), "{}", stderr(&quiet));
        assert!(stderr(&quiet).is_empty(), "{flag}: {}", stderr(&quiet));
        assert!(dir.join("quiet.png").is_file() && dir.join("quiet-l1.png").is_file());
    }

    let small = ["--components", "1", "--steps", "4", "--samples", "16"];
    let demo_out = dir.join("demo");
    let mut args = vec!["demo", "--lambdas", "0,1", "--out", demo_out.to_str().unwrap()];
    args.extend(small);
    let loud = deradiff(&args);
    assert!(loud.status.success() && stdout(&loud).contains("wrote"), "{}", stderr(&loud));
    args.push("-q");
    let quiet = deradiff(&args);
    assert!(quiet.status.success(), "{}", stderr(&quiet));
    assert!(stdout(&quiet).contains("DeRaDiff") && !stdout(&quiet).contains("wrote"), "{}", stdout(&quiet));

    let sweep_out = dir.join("sweep");
    let mut args = vec!["sweep", "--lambdas", "0,1", "--prompts", "1", "--out", sweep_out.to_str().unwrap()];
    args.extend(small);
    let loud = deradiff(&args);
    assert!(loud.status.success() && stdout(&loud).contains("wrote"), "{}", stderr(&loud));
    args.push("--quiet");
    let quiet = deradiff(&args);
    assert!(quiet.status.success() && !stdout(&quiet).contains("wrote"), "{}", stdout(&quiet));

    let tune_out = dir.join("tune");
    let mut args =
        vec!["tune", "--budget", "4", "--initial", "2", "--prompts", "1", "--out", tune_out.to_str().unwrap()];
    args.extend(small);
    let loud = deradiff(&args);
    assert!(loud.status.success(), "{}", stderr(&loud));
    assert!(stdout(&loud).contains("wrote") && stderr(&loud).contains("evaluation"), "{}", stdout(&loud));
    args.push("-q");
    let quiet = deradiff(&args);
    assert!(quiet.status.success() && stdout(&quiet).contains("λ* = "), "{}", stderr(&quiet));
    assert!(!stdout(&quiet).contains("wrote") && stderr(&quiet).is_empty(), "{}", stdout(&quiet));

    let results = sweep_out.join("sweep.jsonl");
    let results = results.to_str().unwrap();
    let cmp = dir.join("cmp");
    let args = ["compare", results, results, "--bootstrap", "50", "--out", cmp.to_str().unwrap()];
    let loud = deradiff(&args);
    assert!(loud.status.success() && stdout(&loud).contains("wrote"), "{}", stderr(&loud));
    let quiet = deradiff(&[&args[..], &["--quiet"]].concat());
    assert!(quiet.status.success() && stdout(&quiet).contains("RMSE"), "{}", stderr(&quiet));
    assert!(!stdout(&quiet).contains("wrote"), "{}", stdout(&quiet));
}

#[test]
fn lists_may_start_with_a_negative_number() {
    let dir = scratch("negative");
    let result = run_sample(&dir, "neg.png", &["--lambda", "-0.5,1", "--quiet"]);
    assert!(result.status.success(), "{}", stderr(&result));
    assert!(dir.join("neg-l-0.5.png").is_file() && dir.join("neg-l1.png").is_file() && dir.join("neg.png").is_file());
    let result = run_sample(&dir, "w.png", &["--weights", "-0.5,1.5", "--quiet"]);
    assert!(result.status.success(), "{}", stderr(&result));
    assert!(dir.join("w.png").is_file());

    // The demo parses the list and explains why a negative λ has no target β (not a clap error).
    let out = deradiff(&["demo", "--lambdas", "-0.5,1", "--out", dir.join("d1").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("λ = -0.5"), "{}", stderr(&out));
    let out = deradiff(&["demo", "--target-betas", "-1,2", "--out", dir.join("d2").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("target β = -1"), "{}", stderr(&out));

    let small = ["--components", "1", "--steps", "4", "--samples", "8", "--prompts", "1", "--quiet"];
    for grid in [["--lambdas", "-0.5,0.5"], ["--lambda-range", "-1:1:3"]] {
        let out_dir = dir.join(format!("sweep{}", grid[0]));
        let mut args = vec!["sweep", grid[0], grid[1], "--out", out_dir.to_str().unwrap()];
        args.extend(small);
        let out = deradiff(&args);
        assert!(out.status.success(), "{grid:?}: {}", stderr(&out));
        assert!(stdout(&out).contains("-0.5000") || stdout(&out).contains("-1.0000"), "{}", stdout(&out));
        // A negative λ emulates no KL strength: shown as "—", not ∞.
        assert!(stdout(&out).contains('—'), "{}", stdout(&out));
    }
}

#[test]
fn an_aligned_unet_of_the_other_architecture_is_named() {
    let dir = scratch("arch");
    let (sd, xl) = (fixture("tiny-sd"), fixture("tiny-sdxl"));
    let (sd_unet, xl_unet) = (fixture("tiny-aligned-unet"), fixture("tiny-sdxl-aligned-unet"));
    for (reference, aligned, needle) in [
        (&sd, &xl_unet, "is an SDXL UNet but the reference"),
        (&xl, &sd_unet, "is an SD 1.x / 2.x UNet but the reference"),
    ] {
        let args = [
            "sample",
            "--reference",
            reference,
            "--aligned",
            aligned,
            "--prompt",
            "x",
            "--steps",
            "2",
            "--out",
            "x.png",
        ];
        let out = deradiff_in(&dir, &args);
        let other = if reference == &sd { "is SD 1.x / 2.x" } else { "is SDXL" };
        assert_fails(&out, 2, &["the aligned model", aligned, needle, other], &dir, aligned);
    }
}

#[test]
fn a_reference_given_as_a_component_folder_is_explained() {
    let dir = scratch("reference");
    for (folder, kind) in [("unet", "unet/"), ("vae", "vae/"), ("text_encoder", "text_encoder/")] {
        let reference = format!("{}/{folder}", fixture("tiny-sd"));
        let args = [
            "sample",
            "--reference",
            &reference,
            "--aligned",
            &fixture("tiny-aligned-unet"),
            "--prompt",
            "x",
            "--out",
            "x.png",
        ];
        let out = deradiff_in(&dir, &args);
        let needles = [
            "--reference must be the pipeline directory (with model_index.json, unet/, vae/, text_encoder/",
            &format!("looks like its {kind} folder: pass its parent"),
        ];
        assert_fails(&out, 2, &needles, &dir, folder);
    }
    // A UNet folder without a config of its own (weights only) is recognised too.
    let bare = dir.join("unet");
    std::fs::create_dir_all(&bare).unwrap();
    std::fs::write(bare.join("diffusion_pytorch_model.safetensors"), b"").unwrap();
    let out = deradiff(&[
        "sample",
        "--reference",
        bare.to_str().unwrap(),
        "--aligned",
        &fixture("tiny-aligned-unet"),
        "--prompt",
        "x",
        "--out",
        dir.join("x.png").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("looks like its unet/ folder"), "{}", stderr(&out));
}

#[test]
fn every_model_option_takes_a_hugging_face_repo_id() {
    // An empty cache: each option reads its value as a repo id, and refuses it before anything
    // runs, naming the option, the folder looked in and the download command.
    let dir = scratch("hub");
    let hub = dir.join("hub");
    std::fs::create_dir_all(&hub).unwrap();
    let sd = fixture("tiny-sd");
    let cases: &[(&str, &[&str])] = &[
        ("--reference <REFERENCE>", &["sample", "--reference", "org/missing", "--prompt", "x"]),
        ("--aligned <ALIGNED>", &["sample", "--reference", &sd, "--aligned", "org/missing", "--prompt", "x"]),
        ("--reference <REFERENCE>", &["sweep", "--reference", "org/missing", "--aligned", &sd]),
        ("--aligned <ALIGNED>", &["tune", "--reference", &sd, "--aligned", "org/missing"]),
        ("--aligned <ALIGNED>", &["extract-lora", "--reference", &sd, "--aligned", "org/missing"]),
        ("--clip <CLIP>", &["score", "--images", ".", "--clip", "org/missing"]),
        ("--pickscore <PICKSCORE>", &["score", "--images", ".", "--pickscore", "org/missing"]),
        (
            "--pickscore-processor",
            &["score", "--images", ".", "--pickscore", &sd, "--pickscore-processor", "org/missing"],
        ),
        (
            "--hps <HPS>",
            &["score", "--images", ".", "--hps", "org/missing", "--hps-config", &sd, "--hps-tokenizer", &sd],
        ),
        (
            "--hps-config",
            &["score", "--images", ".", "--hps", &sd, "--hps-config", "org/missing", "--hps-tokenizer", &sd],
        ),
        (
            "--hps-tokenizer",
            &["score", "--images", ".", "--hps", &sd, "--hps-config", &sd, "--hps-tokenizer", "org/missing"],
        ),
        ("--aesthetic <AESTHETIC>", &["score", "--images", ".", "--aesthetic", "org/missing", "--aesthetic-mlp", &sd]),
        ("--aesthetic-mlp", &["score", "--images", ".", "--aesthetic", &sd, "--aesthetic-mlp", "org/missing"]),
        ("--image-reward", &["score", "--images", ".", "--image-reward", "org/missing"]),
    ];
    let folder = hub.join("models--org--missing").display().to_string();
    for (option, args) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_deradiff"))
            .args(*args)
            .current_dir(&dir)
            .env("HF_HUB_CACHE", &hub)
            .output()
            .expect("the deradiff binary runs");
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        for needle in [*option, folder.as_str(), "`huggingface-cli download org/missing`"] {
            assert!(err.contains(needle), "{args:?}: `{needle}` not in {err}");
        }
    }
}
