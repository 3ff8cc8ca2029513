//! The `deradiff` binary: a small demo run writes its files, `--json` is machine-readable, and
//! bad options exit non-zero with a message on stderr, never a panic.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn deradiff(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_deradiff")).args(args).output().expect("the deradiff binary runs")
}

fn out_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn decode_png(path: &Path) -> (u32, u32) {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut reader = png::Decoder::new(std::io::BufReader::new(file)).read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    (info.width, info.height)
}

#[test]
fn small_demo_writes_files_and_json() {
    let dir = out_dir("json");
    let out = deradiff(&[
        "demo",
        "--samples",
        "64",
        "--steps",
        "8",
        "--seed",
        "3",
        "--json",
        "--quiet",
        "--out",
        dir.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}, stderr: {stderr}", out.status);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    let rows = json["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 5);
    let lambdas: Vec<f64> = rows.iter().map(|r| r["lambda"].as_f64().unwrap()).collect();
    assert_eq!(lambdas, vec![0.25, 0.5, 1.0, 2.0, 4.0]);
    assert_eq!(json["samples"], 64);
    assert_eq!(json["components"], 3);
    for r in rows {
        assert!(r["deradiff_mean_reward"].as_f64().unwrap().is_finite());
    }
    // The JSON on stdout is the JSON in the file.
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("study.json")).unwrap()).unwrap();
    assert_eq!(file, json);
    let csv = std::fs::read_to_string(dir.join("study.csv")).unwrap();
    assert_eq!(csv.lines().count(), 6);
    let (w, h) = decode_png(&dir.join("samples.png"));
    assert!(w >= 1000 && h >= 400, "{w}x{h}");
    let (w, h) = decode_png(&dir.join("reward_vs_lambda.png"));
    assert!(w >= 600 && h >= 400, "{w}x{h}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn exact_case_prints_a_table_with_zero_coupled_distance() {
    let dir = out_dir("exact");
    let out = deradiff(&[
        "demo",
        "--components",
        "1",
        "--scheduler",
        "ddim",
        "--eta",
        "1",
        "--samples",
        "32",
        "--steps",
        "6",
        "--lambdas",
        "0,0.5,2",
        "--out",
        dir.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("DeRaDiff") && stdout.contains("ddim(eta=1)"), "{stdout}");
    assert!(stdout.contains("study.csv") && stdout.contains("samples.png"), "{stdout}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("study.json")).unwrap()).unwrap();
    for r in json["rows"].as_array().unwrap() {
        assert!(r["coupled_distance"].as_f64().unwrap() <= 1e-10, "{r}");
    }
    assert!(json["rows"][0]["target_beta"].is_null(), "λ = 0 is β = ∞");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn every_sampler_realigns_the_exact_case_exactly() {
    let cases: &[&[&str]] = &[
        &["--scheduler", "euler", "--sigmas", "beta"],
        &["--scheduler", "heun", "--timestep-spacing", "trailing"],
        &["--scheduler", "dpm++-2m", "--sigmas", "karras"],
        &["--scheduler", "dpm++-2m-sde", "--sigmas", "karras"],
        &["--scheduler", "dpm++-3m", "--final-sigmas", "sigma-min"],
        &["--scheduler", "unipc", "--solver-order", "3"],
        &["--scheduler", "lcm"],
    ];
    for extra in cases {
        let dir = out_dir("samplers");
        let mut args =
            vec!["demo", "--components", "1", "--samples", "16", "--steps", "6", "--lambdas", "0.5,2", "--json"];
        args.extend_from_slice(extra);
        args.extend(["--quiet", "--out", dir.to_str().unwrap()]);
        let out = deradiff(&args);
        assert!(out.status.success(), "{extra:?}: {}", String::from_utf8_lossy(&out.stderr));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
        let scheduler = json["scheduler"].as_str().unwrap();
        for r in json["rows"].as_array().unwrap() {
            assert!(r["coupled_distance"].as_f64().unwrap() <= 1e-10, "{extra:?} ({scheduler}): {r}");
        }
        // The study names the sampler with the options given.
        let name = extra[1].trim_end_matches("-2m").trim_end_matches("-2m-sde").trim_end_matches("-3m");
        assert!(scheduler.starts_with(name), "{extra:?}: {scheduler}");
        if extra.contains(&"karras") {
            assert!(scheduler.contains("use_karras_sigmas true"), "{scheduler}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn bad_options_exit_nonzero_with_a_message() {
    let dir = out_dir("bad");
    let out_arg = dir.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["--anchor-beta", "-1"], "--anchor-beta is -1"),
        (&["--anchor-beta", "0"], "positive"),
        (&["--target-betas", "2,-1"], "target β = -1"),
        (&["--target-betas", "0"], "target β = 0"),
        (&["--lambdas", "-0.5"], "λ = -0.5"),
        (&["--lambdas", "1,inf"], "λ must be finite"),
        (&["--samples", "0"], "--samples must be at least 1"),
        (&["--steps", "0"], "--steps must be at least 1"),
        (&["--steps", "5000"], "training timesteps"),
        (&["--scheduler", "foo"], "invalid value 'foo'"),
        (&["--scheduler", "ddim", "--eta", "2"], "η must lie in [0, 1]"),
        (&["--eta", "0.5"], "--eta applies to --scheduler ddim only"),
        (&["--sigmas", "karras"], "--sigmas applies to euler, heun, dpm++ and unipc, not to --scheduler ddpm"),
        (&["--scheduler", "dpm++-2m", "--solver-order", "3"], "--solver-order conflicts with --scheduler dpm++-2m"),
        (&["--scheduler", "unipc", "--solver-order", "4"], "--solver-order is 4; it must be 1, 2 or 3"),
        (&["--scheduler", "heun", "--zero-snr"], "--zero-snr applies to every sampler but heun"),
        (&["--scheduler", "lcm", "--timestep-spacing", "trailing"], "applies to every sampler but lcm"),
        (&["--scheduler", "euler-a", "--final-sigmas", "zero"], "--final-sigmas applies to euler, dpm++ and unipc"),
        (&["--scheduler", "lcm", "--steps", "60"], "LCM steps"),
        (&["--zero-snr", "--timestep-spacing", "trailing"], "ε-prediction is undefined at ᾱ = 0"),
        (&["--components", "0"], "at least 1 component"),
        (&["--components", "99"], "1 to 16"),
        (&["--reward", "cubic"], "invalid value 'cubic'"),
        (&["--target-betas", "abc"], "invalid value 'abc'"),
        (&["--samples", "20000000"], "--samples 20000000 is more than 10000000"),
        (&["--samples", "-3"], "invalid value '-3' for '--samples"),
        (&["--target-betas", "2", "--lambdas", "1"], "cannot be used with"),
    ];
    for (args, needle) in cases {
        let mut all = vec!["demo", "--quiet", "--out", out_arg];
        all.extend_from_slice(args);
        let out = deradiff(&all);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(out.status.code().is_some(), "{args:?} was killed by a signal");
        assert!(stderr.contains(needle), "{args:?}: stderr {stderr:?} lacks {needle:?}");
        assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?} printed to stdout");
    }
    assert!(!dir.exists(), "a rejected run must not write anything");
    let out = deradiff(&["frobnicate"]);
    assert!(!out.status.success());
}
