//! Hostile but ordinary inputs across the subcommands: every one must end in a clear error — a
//! non-zero exit that is not a panic (101) or a signal, a message on stderr — and leave no file
//! behind in the output folder it was given.

use std::path::{Path, PathBuf};
use std::process::Command;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deradiff-sd/tests/fixtures")
}

/// A scratch folder per case, with the files the cases refer to.
struct Scratch {
    root: PathBuf,
}

impl Scratch {
    fn new() -> Self {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("hostile-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let s = Self { root };
        s.write("empty.jsonl", b"");
        s.write("junk.jsonl", b"\x89PNG\r\n\x1a\n\0\0\0");
        s.write("notjson.jsonl", b"hello\nworld\n");
        s.write("prompts-empty.txt", b"\n\n");
        s.write("prompts-bad.csv", b"title\nx\n");
        s.write("prompts-bad.yaml", b"- [unclosed\n");
        s.write("pickle.safetensors", b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00}\x94.");
        s.write("random.safetensors", &[0xde, 0xad, 0xbe, 0xef, 0xff, 0xff, 0xff, 0xff, 1, 2, 3]);
        s.write("zip.safetensors", b"PK\x03\x04\x14\x00\x00\x00");
        s.write("a-file", b"not a folder");
        // A folder of "images" and ImageReward folders: empty, pickled, with a hostile config.
        for d in ["imgs", "ir-empty", "ir-pickle", "ir-config"] {
            std::fs::create_dir_all(s.root.join(d)).unwrap();
        }
        s.write("imgs/a.png", b"\x89PNG\r\n\x1a\n truncated");
        s.write("ir-pickle/med_config.json", br#"{"add_cross_attention": true}"#);
        s.write("ir-pickle/model.safetensors", b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00}\x94.");
        s.write("ir-config/med_config.json", br#"{"add_cross_attention": true, "hidden_size": 1e12}"#);
        // Results files whose rewards are ±1e308 and 1e200 (statistics and axes overflow).
        let header = r#"{"format":"deradiff-sweep","version":1,"model":"m","samples_per_prompt":1,"rewards":["true"]}"#;
        let row = |l: f64, p: &str, v: f64| {
            format!(
                r#"{{"lambda":{l},"prompt_index":0,"prompt":"{p}","seed":0,"samples":1,"rewards":[{{"name":"true","mean":{v},"std":0.0}}]}}"#
            )
        };
        let huge = format!("{header}\n{}\n{}\n", row(0.0, "a", 1e308), row(0.0, "b", -1e308));
        s.write("huge-a.jsonl", huge.as_bytes());
        let huge_b = format!("{header}\n{}\n{}\n", row(0.0, "a", -1e308), row(0.0, "b", 1e308));
        s.write("huge-b.jsonl", huge_b.as_bytes());
        let big = format!("{header}\n{}\n{}\n", row(0.0, "a", 1e200), row(0.0, "b", 3e200));
        s.write("big-a.jsonl", big.as_bytes());
        let big_b = format!("{header}\n{}\n{}\n", row(0.0, "a", -1e200), row(0.0, "b", 2e200));
        s.write("big-b.jsonl", big_b.as_bytes());
        #[cfg(unix)]
        {
            let _ = std::os::unix::fs::symlink(s.root.join("loop-b"), s.root.join("loop-a"));
            let _ = std::os::unix::fs::symlink(s.root.join("loop-a"), s.root.join("loop-b"));
            let _ = Command::new("mkfifo").arg(s.root.join("fifo")).status();
        }
        s
    }

    fn write(&self, name: &str, bytes: &[u8]) {
        std::fs::write(self.root.join(name), bytes).unwrap();
    }

    fn path(&self, name: &str) -> String {
        self.root.join(name).to_string_lossy().into_owned()
    }
}

/// Every regular file under `dir` (recursively).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn hostile_inputs_end_in_clear_errors() {
    let s = Scratch::new();
    let (sd, xl) = (fixtures().join("tiny-sd"), fixtures().join("tiny-sdxl"));
    let (sd, xl) = (sd.to_string_lossy().into_owned(), xl.to_string_lossy().into_owned());
    let aligned = fixtures().join("tiny-aligned-unet").to_string_lossy().into_owned();
    let xl_aligned = fixtures().join("tiny-sdxl-aligned-unet").to_string_lossy().into_owned();
    let unet_dir = fixtures().join("tiny-sd/unet").to_string_lossy().into_owned();
    // `sample` with the tiny SD checkpoints and one λ, plus what each case changes.
    let sample = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> =
            ["sample", "--reference", &sd, "--aligned", &aligned, "--prompt", "a cube", "--steps", "2"]
                .iter()
                .map(|x| x.to_string())
                .collect();
        v.extend(extra.iter().map(|x| x.to_string()));
        v
    };
    let args = |a: &[&str]| -> Vec<String> { a.iter().map(|x| x.to_string()).collect() };
    let p = |n: &str| s.path(n);
    let score = |extra: &[&str]| -> Vec<String> {
        let mut v = args(&["score", "--images", &p("imgs"), "--prompt", "x", "--out", &p("o-score.jsonl")]);
        v.extend(extra.iter().map(|x| x.to_string()));
        v
    };

    let cases: Vec<(&str, Vec<String>)> = vec![
        // demo
        ("demo: zero steps", args(&["demo", "--steps", "0"])),
        ("demo: zero samples", args(&["demo", "--samples", "0"])),
        ("demo: huge samples", args(&["demo", "--samples", "1000000000000"])),
        ("demo: negative steps", args(&["demo", "--steps", "-3"])),
        ("demo: zero components", args(&["demo", "--components", "0"])),
        ("demo: huge components", args(&["demo", "--components", "1000000000"])),
        ("demo: NaN anchor", args(&["demo", "--anchor-beta", "nan"])),
        ("demo: zero anchor", args(&["demo", "--anchor-beta", "0"])),
        ("demo: zero target", args(&["demo", "--target-betas", "0"])),
        ("demo: negative target", args(&["demo", "--target-betas", "-1"])),
        ("demo: eta without ddim", args(&["demo", "--eta", "0.5"])),
        ("demo: eta out of range", args(&["demo", "--scheduler", "ddim", "--eta", "2"])),
        ("demo: unknown scheduler", args(&["demo", "--scheduler", "pndm"])),
        ("demo: out is a file", args(&["demo", "--samples", "8", "--steps", "2", "--out", &p("a-file")])),
        ("demo: empty lambda list", args(&["demo", "--lambdas", ""])),
        // sample
        ("sample: missing reference", sample(&["--reference", &p("nowhere")])),
        ("sample: reference is a file", sample(&["--reference", &p("a-file")])),
        ("sample: reference is its unet folder", sample(&["--reference", &unet_dir])),
        ("sample: reference is a FIFO", sample(&["--reference", &p("fifo")])),
        ("sample: reference is a link loop", sample(&["--reference", &p("loop-a")])),
        ("sample: aligned is a pickle", sample(&["--aligned", &p("pickle.safetensors")])),
        ("sample: aligned is random bytes", sample(&["--aligned", &p("random.safetensors")])),
        ("sample: aligned is a zip", sample(&["--aligned", &p("zip.safetensors")])),
        ("sample: aligned of the other architecture", sample(&["--aligned", &xl_aligned])),
        ("sample: size overflows", sample(&["--size", "4294967296x4294967296"])),
        ("sample: size too large", sample(&["--size", "100000x100000"])),
        ("sample: size zero", sample(&["--size", "0x0"])),
        ("sample: size not a multiple of 8", sample(&["--size", "33x33"])),
        ("sample: size malformed", sample(&["--size", "64by64"])),
        ("sample: zero steps", sample(&["--steps", "0"])),
        ("sample: huge steps", sample(&["--steps", "1000000000"])),
        ("sample: NaN guidance", sample(&["--guidance", "nan"])),
        ("sample: negative guidance", sample(&["--guidance", "-2"])),
        ("sample: NaN lambda", sample(&["--lambda", "nan"])),
        ("sample: weights that do not sum to one", sample(&["--weights", "0.5,0.7"])),
        ("sample: weights of the wrong count", sample(&["--weights", "1"])),
        ("sample: unknown dtype", sample(&["--dtype", "f64x"])),
        ("sample: bf16 on the CPU", sample(&["--dtype", "bf16"])),
        ("sample: cuda without the feature", sample(&["--device", "cuda"])),
        ("sample: unknown device", sample(&["--device", "tpu"])),
        ("sample: out is a directory without a name", sample(&["--out", &format!("{}/", p("a-file"))])),
        ("sample: out is a device", sample(&["--out", "/dev/null"])),
        ("sample: eta without ddim", sample(&["--eta", "0.5"])),
        ("sample: bad micro-conditioning", sample(&["--original-size", "0x0"])),
        (
            "sample: SDXL crop out of range",
            args(&[
                "sample",
                "--reference",
                &xl,
                "--aligned",
                &xl_aligned,
                "--prompt",
                "x",
                "--steps",
                "1",
                "--crop-top-left",
                "a,b",
            ]),
        ),
        // sweep
        ("sweep: huge samples", args(&["sweep", "--samples", "1000000000000", "--out", &p("o-sweep1")])),
        ("sweep: huge prompt count", args(&["sweep", "--prompts", "1000000000000", "--out", &p("o-sweep2")])),
        ("sweep: huge lambda range", args(&["sweep", "--lambda-range", "0:2:1000000000", "--out", &p("o-sweep3")])),
        ("sweep: reversed lambda range", args(&["sweep", "--lambda-range", "2:0:5", "--out", &p("o-sweep4")])),
        ("sweep: malformed lambda range", args(&["sweep", "--lambda-range", "0:2", "--out", &p("o-sweep5")])),
        ("sweep: duplicate lambdas", args(&["sweep", "--lambdas", "0.5,0.5", "--out", &p("o-sweep6")])),
        ("sweep: NaN lambda", args(&["sweep", "--lambdas", "nan", "--out", &p("o-sweep7")])),
        ("sweep: zero steps", args(&["sweep", "--steps", "0", "--out", &p("o-sweep8")])),
        ("sweep: zero prompts", args(&["sweep", "--prompts", "0", "--out", &p("o-sweep9")])),
        ("sweep: out is a file", args(&["sweep", "--out", &p("a-file")])),
        (
            "sweep: prompts file missing",
            args(&[
                "sweep",
                "--reference",
                &sd,
                "--aligned",
                &aligned,
                "--prompts-file",
                &p("nowhere.txt"),
                "--out",
                &p("o-sweep10"),
            ]),
        ),
        (
            "sweep: prompts file empty",
            args(&[
                "sweep",
                "--reference",
                &sd,
                "--aligned",
                &aligned,
                "--prompts-file",
                &p("prompts-empty.txt"),
                "--out",
                &p("o-sweep11"),
            ]),
        ),
        (
            "sweep: SD without prompts",
            args(&["sweep", "--reference", &sd, "--aligned", &aligned, "--out", &p("o-sweep12")]),
        ),
        (
            "sweep: reward model missing",
            args(&[
                "sweep",
                "--reference",
                &sd,
                "--aligned",
                &aligned,
                "--prompt",
                "x",
                "--clip",
                &p("nowhere"),
                "--out",
                &p("o-sweep13"),
            ]),
        ),
        // tune
        ("tune: huge budget", args(&["tune", "--budget", "1000000000", "--out", &p("o-tune1")])),
        ("tune: zero budget", args(&["tune", "--budget", "0", "--out", &p("o-tune2")])),
        ("tune: initial above budget", args(&["tune", "--budget", "2", "--initial", "5", "--out", &p("o-tune3")])),
        ("tune: empty range", args(&["tune", "--lower", "1", "--upper", "1", "--out", &p("o-tune4")])),
        ("tune: infinite bound", args(&["tune", "--upper", "inf", "--out", &p("o-tune5")])),
        ("tune: unknown acquisition", args(&["tune", "--acquisition", "pi", "--out", &p("o-tune6")])),
        // compare
        (
            "compare: missing files",
            args(&["compare", &p("nowhere-a.jsonl"), &p("nowhere-b.jsonl"), "--out", &p("o-cmp1")]),
        ),
        ("compare: empty file", args(&["compare", &p("empty.jsonl"), &p("empty.jsonl"), "--out", &p("o-cmp2")])),
        ("compare: binary file", args(&["compare", &p("junk.jsonl"), &p("junk.jsonl"), "--out", &p("o-cmp3")])),
        ("compare: not JSON", args(&["compare", &p("notjson.jsonl"), &p("notjson.jsonl"), "--out", &p("o-cmp4")])),
        (
            "compare: a folder for a file",
            args(&["compare", &s.root.to_string_lossy(), &p("huge-a.jsonl"), "--out", &p("o-cmp5")]),
        ),
        (
            "compare: huge bootstrap",
            args(&[
                "compare",
                &p("big-a.jsonl"),
                &p("big-b.jsonl"),
                "--bootstrap",
                "1000000000000",
                "--out",
                &p("o-cmp6"),
            ]),
        ),
        (
            "compare: rewards of ±1e308",
            args(&["compare", &p("huge-a.jsonl"), &p("huge-b.jsonl"), "--out", &p("o-cmp7")]),
        ),
        ("compare: means of 1e200", args(&["compare", &p("big-a.jsonl"), &p("big-b.jsonl"), "--out", &p("o-cmp8")])),
        (
            "compare: unknown reward",
            args(&["compare", &p("big-a.jsonl"), &p("big-b.jsonl"), "--reward", "nope", "--out", &p("o-cmp9")]),
        ),
        (
            "compare: unknown pairing",
            args(&["compare", &p("big-a.jsonl"), &p("big-b.jsonl"), "--by", "nope", "--out", &p("o-cmp10")]),
        ),
        // score: hostile reward folders
        ("score: --image-reward a file", score(&["--image-reward", &p("a-file")])),
        ("score: --image-reward a FIFO", score(&["--image-reward", &p("fifo")])),
        ("score: --image-reward a link loop", score(&["--image-reward", &p("loop-a")])),
        ("score: --image-reward an empty folder", score(&["--image-reward", &p("ir-empty")])),
        ("score: --image-reward a pickle", score(&["--image-reward", &p("ir-pickle")])),
        ("score: --image-reward hidden_size 1e12", score(&["--image-reward", &p("ir-config")])),
        (
            "score: --image-reward without prompts",
            args(&["score", "--images", &p("imgs"), "--image-reward", &p("ir-empty")]),
        ),
        // no subcommand, unknown flags
        ("no subcommand", args(&[])),
        ("unknown subcommand", args(&["explode"])),
        ("unknown flag", args(&["demo", "--no-such-flag"])),
    ];
    assert!(cases.len() >= 60, "{} cases", cases.len());
    let mut failures = Vec::new();
    for (name, argv) in &cases {
        let before: Vec<PathBuf> = files_under(&s.root);
        let out = Command::new(env!("CARGO_BIN_EXE_deradiff"))
            .args(argv)
            .current_dir(&s.root)
            .env("DERADIFF_TEST_NO_TTY", "1")
            .output()
            .expect("the binary runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let after = files_under(&s.root);
        let new: Vec<&PathBuf> = after.iter().filter(|f| !before.contains(f)).collect();
        let problem = match out.status.code() {
            None => Some("killed by a signal".to_string()),
            Some(0) => Some("exit 0".to_string()),
            Some(101) => Some(format!("panicked: {stderr}")),
            Some(_) if stderr.trim().is_empty() => Some("no message".to_string()),
            Some(_) if !new.is_empty() => Some(format!("left files behind: {new:?}")),
            Some(_) => None,
        };
        if let Some(problem) = problem {
            failures.push(format!("{name}: {problem}"));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
}
