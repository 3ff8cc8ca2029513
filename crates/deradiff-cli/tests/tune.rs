//! `deradiff sweep`, `tune` and `compare` on the analytic testbed: files written, a rerun resumes
//! instead of recomputing, λ* lands near the exact optimum, and bad inputs exit non-zero.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn deradiff(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_deradiff")).args(args).output().expect("the deradiff binary runs")
}

fn out_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("tune-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const SMALL: [&str; 8] = ["--components", "1", "--steps", "8", "--prompts", "2", "--samples", "64"];

#[test]
fn sweep_resumes_and_compare_reports_agreement() {
    let dir = out_dir("sweep");
    let a = dir.join("ddpm");
    let mut args = vec!["sweep", "--lambdas", "0,0.5,1,2", "--quiet", "--out", a.to_str().unwrap()];
    args.extend(SMALL);
    let first = ok(&deradiff(&args));
    assert!(first.contains("8 rows computed, 0 resumed"), "{first}");
    let lines = std::fs::read_to_string(a.join("sweep.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 1 + 8, "header + one row per (λ, prompt)");
    assert!(a.join("sweep.csv").exists() && a.join("reward_vs_lambda.png").exists());
    // A rerun finds every row and computes nothing; the file is unchanged.
    let second = ok(&deradiff(&args));
    assert!(second.contains("0 rows computed, 8 resumed"), "{second}");
    assert_eq!(std::fs::read_to_string(a.join("sweep.jsonl")).unwrap(), lines);

    let b = dir.join("euler");
    let mut args =
        vec!["sweep", "--lambdas", "0,0.5,1,2", "--scheduler", "euler-a", "--quiet", "--out", b.to_str().unwrap()];
    args.extend(SMALL);
    ok(&deradiff(&args));
    let cmp = dir.join("cmp");
    let table = ok(&deradiff(&[
        "compare",
        a.join("sweep.jsonl").to_str().unwrap(),
        b.join("sweep.jsonl").to_str().unwrap(),
        "--bootstrap",
        "500",
        "--out",
        cmp.to_str().unwrap(),
    ]));
    assert!(table.contains("over 8 pairs") && table.contains("RMSE"), "{table}");
    let stats: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(cmp.join("agreement.json")).unwrap()).unwrap();
    assert_eq!(stats["n"], 8);
    assert!(cmp.join("bland_altman.png").exists() && cmp.join("abs_error_ecdf.png").exists());
}

#[test]
fn tune_finds_the_optimum_of_one_gaussian() {
    // One Gaussian, linear proxy, r_true = r_proxy + κ log p_ref: the best λ is β / κ = 0.4.
    let dir = out_dir("bo");
    let mut args = vec!["tune", "--upper", "1.5", "--quiet", "--out", dir.to_str().unwrap(), "--penalty", "2.5"];
    args.extend(["--components", "1", "--steps", "10", "--prompts", "2", "--samples", "256"]);
    let text = ok(&deradiff(&args));
    let lambda: f64 = text
        .split("λ* = ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no λ* in {text}"));
    assert!((lambda - 0.4).abs() < 0.1, "λ* = {lambda}");
    assert!(text.contains("equivalent KL strength"), "{text}");
    assert!(dir.join("bo.json").exists() && dir.join("bo_trace.png").exists());
}

#[test]
fn bad_inputs_exit_nonzero_with_a_message() {
    let dir = out_dir("bad");
    std::fs::create_dir_all(&dir).unwrap();
    let malformed = dir.join("malformed.jsonl");
    std::fs::write(&malformed, "not a results file\n").unwrap();
    let out = dir.join("o");
    let o = out.to_str().unwrap();
    let m = malformed.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["sweep", "--lambda-range", "2:0:5", "--out", o], "reversed"),
        (vec!["sweep", "--lambda-range", "nonsense", "--out", o], "FROM:TO:COUNT"),
        (vec!["sweep", "--lambdas", "0,nan", "--out", o], "λ"),
        (vec!["sweep", "--anchor-beta", "-1", "--out", o], "anchor-beta"),
        (vec!["tune", "--budget", "0", "--out", o], "budget"),
        (vec!["tune", "--lower", "2", "--upper", "1", "--out", o], "range"),
        (vec!["tune", "--acquisition", "pi", "--out", o], "acquisition"),
        (vec!["compare", m, m, "--out", o], "malformed"),
    ];
    for (args, needle) in cases {
        let result = deradiff(&args);
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert!(!result.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(needle), "{args:?}: stderr does not mention '{needle}': {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

fn fixture(path: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path).to_str().unwrap().to_string()
}

#[test]
fn stable_diffusion_sweep_and_tune_with_clip_rewards() {
    let dir = out_dir("sd");
    let (reference, aligned) =
        (fixture("deradiff-sd/tests/fixtures/tiny-sd"), fixture("deradiff-sd/tests/fixtures/tiny-aligned-unet"));
    let (clip, pick) = (
        fixture("deradiff-tune/tests/fixtures/clip/clip-gelu"),
        fixture("deradiff-tune/tests/fixtures/clip/clip-quick-gelu"),
    );
    let prompts = dir.join("prompts.txt");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(&prompts, "a red cube\n\na blue sphere\n").unwrap();
    let sd: Vec<&str> = vec![
        "--reference",
        &reference,
        "--aligned",
        &aligned,
        "--scheduler",
        "ddim",
        "--steps",
        "2",
        "--guidance",
        "4",
        "--samples",
        "1",
        "--quiet",
    ];
    let out = dir.join("sweep");
    let mut args = vec!["sweep", "--lambdas", "0,1", "--prompts-file", prompts.to_str().unwrap()];
    args.extend(["--clip", &clip, "--pickscore", &pick, "--out", out.to_str().unwrap()]);
    args.extend(sd.iter().copied());
    let text = ok(&deradiff(&args));
    assert!(text.contains("2 λ × 2 prompts × 1 samples (4 rows computed"), "{text}");
    assert!(text.contains("clip_score") && text.contains("pickscore"), "{text}");
    let jsonl = std::fs::read_to_string(out.join("sweep.jsonl")).unwrap();
    assert_eq!(jsonl.lines().count(), 5);
    assert!(jsonl.contains("a blue sphere"));
    let again = ok(&deradiff(&args));
    assert!(again.contains("0 rows computed, 4 resumed"), "{again}");

    let bo = dir.join("bo");
    let mut args = vec!["tune", "--budget", "3", "--initial", "2", "--upper", "1", "--prompt", "a red cube"];
    args.extend(["--pickscore", &pick, "--aligned-beta", "2000", "--out", bo.to_str().unwrap()]);
    args.extend(sd.iter().copied());
    let text = ok(&deradiff(&args));
    assert!(text.contains("λ* = ") && text.contains("pickscore") && text.contains("2000 /"), "{text}");
    assert!(bo.join("bo_trace.png").exists());

    // Stable Diffusion options without a checkpoint, and a checkpoint without reward or prompts.
    for (extra, needle) in [
        (vec!["sweep", "--clip", clip.as_str()], "--reference"),
        (vec!["sweep", "--reference", reference.as_str(), "--aligned", aligned.as_str(), "--prompt", "x"], "reward"),
        (
            vec!["sweep", "--reference", reference.as_str(), "--aligned", aligned.as_str(), "--clip", clip.as_str()],
            "prompts",
        ),
    ] {
        let result = deradiff(&extra);
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert!(!result.status.success() && stderr.contains(needle), "{extra:?}: {stderr}");
    }
}

/// A Stable Diffusion sweep without --scheduler, --guidance or --steps samples as `sample` does:
/// the checkpoint's scheduler (tiny SDXL: EulerDiscreteScheduler) and guidance (SDXL: 5.0), and
/// 50 steps — the results file's header records them.
#[test]
fn stable_diffusion_sweeps_take_their_defaults_from_the_checkpoint() {
    let dir = out_dir("sd-defaults");
    let (reference, aligned) =
        (fixture("deradiff-sd/tests/fixtures/tiny-sdxl"), fixture("deradiff-sd/tests/fixtures/tiny-sdxl-aligned-unet"));
    let clip = fixture("deradiff-tune/tests/fixtures/clip/clip-gelu");
    let out = dir.join("sweep");
    let mut args = vec!["sweep", "--reference", &reference, "--aligned", &aligned, "--prompt", "a red cube"];
    args.extend(["--lambdas", "1", "--samples", "1", "--clip", &clip, "--quiet", "--out", out.to_str().unwrap()]);
    // One step keeps the test fast; without --steps the header would say 50 (below).
    let mut one_step = args.clone();
    one_step.extend(["--steps", "1"]);
    ok(&deradiff(&one_step));
    let header = std::fs::read_to_string(out.join("sweep.jsonl")).unwrap();
    let header = header.lines().next().unwrap();
    assert!(header.contains(", Euler, 1 steps, guidance 5,"), "{header}");
    // Without --steps: 50, as `sample`; refused here only for the other step count (no sampling).
    let result = deradiff(&args);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(stderr.contains("1 steps") && stderr.contains("50 steps"), "{stderr}");
}
