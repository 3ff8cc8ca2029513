//! Hostile files and folders (issue 25, part A), the CLI's table: bounds on products of counts,
//! FIFOs / devices / sockets / link loops where a regular file or a folder is expected (never
//! blocked on), outputs that would replace inputs, prompt files a reference reader would reject,
//! `status` on unreadable shard files, and messages that name the option to fix.
//!
//! Every case asserts its exit status, a part of its message, that it ends in time (a FIFO must
//! never block), and that no file outside the output changed: every regular file of the scratch
//! folder keeps its bytes and its modification time, and no file appears (except the outputs of
//! the cases that succeed). `DERADIFF_TEST_BIN` overrides the binary run (see `harness::bin`).

mod harness;

use std::path::Path;
use std::process::{Command, Stdio};

use harness::{bin, case, run_cases, scratch, Case, Scratch};

const S0: &str = "@sh/sweep.shard-00000-of-00003.jsonl";
const S1: &str = "@sh/sweep.shard-00001-of-00003.jsonl";
const S2: &str = "@sh/sweep.shard-00002-of-00003.jsonl";

/// `merge` of the three shard files into `out`, refused as a bad option.
fn merge3(s: &Scratch, name: &str, out: &str, needles: &[&str]) -> Case {
    case(s, name, &format!("merge {S0} {S1} {S2} --out {out}"), 2, needles)
}

/// `extract-lora` of the copied UNets into `out`, refused as a bad option.
fn extract(s: &Scratch, name: &str, out: &str, needles: &[&str]) -> Case {
    case(s, name, &format!("extract-lora --reference @ref --aligned @aligned --rank 2 --out {out}"), 2, needles)
}

/// `n` λ values, comma-separated.
fn lambdas(n: usize) -> String {
    (0..n).map(|i| i.to_string()).collect::<Vec<_>>().join(",")
}

#[test]
fn products_of_counts_and_file_sizes_are_bounded_before_anything_runs() {
    let s = scratch("bounds", true);
    let sd = |name: &str, file: &str, needles: &[&str]| {
        let args = format!("sweep --reference @sd --aligned @aligned --clip @clip --out @o --prompts-file @{file}");
        case(&s, name, &args, 1, needles)
    };
    #[rustfmt::skip]
    let cases = vec![
        case(&s, "sweep: prompts × seeds", "sweep --prompts 1000000 --seeds 0..1000000 --out @o", 2, &["× 1000000 seeds (--seeds)", "1000000 prompt entries"]),
        case(&s, "sweep: prompts × λ", "sweep --prompts 100000 --lambda-range 0:2:200 --out @o", 2, &["200 λ (--lambdas / --lambda-range)", "MAX_WORK_ITEMS"]),
        case(&s, "sweep: items × samples", "sweep --prompts 1000 --lambda-range 0:2:20 --samples 1000000 --out @o", 2, &["(--samples)", "MAX_SWEEP_SAMPLES"]),
        case(&s, "sweep: seeds × λ", "sweep --prompts 1 --seeds 0..600000 --lambda-range 0:1:20 --out @o", 2, &["600000 seeds (--seeds)", "MAX_WORK_ITEMS"]),
        case(&s, "sweep: more seeds than a run takes", "sweep --seeds 0..2000000 --out @o", 2, &["--seeds 0..2000000", "at most 1000000"]),
        case(&s, "tune: prompts × seeds", "tune --prompts 1000000 --seeds 0..20 --out @o", 2, &["(--seeds)", "prompt entries"]),
        case(&s, "tune: budget × prompts × samples", "tune --prompts 100000 --seeds 0..10 --samples 100000 --out @o", 2, &["(--budget)", "(--samples)"]),
        case(&s, "sweep: one batch of λ × samples", "sweep --prompts 1 --samples 1000000 --lambda-range 0:2:600 --out @o", 2, &["one batch would hold 600 λ", "--max-lambdas-per-batch N"]),
        case(&s, "sweep: one batch of prompts × λ", "sweep --prompts 4 --prompts-per-batch 4 --samples 1000000 --lambda-range 0:2:200 --out @o", 2, &["--prompts-per-batch", "--max-lambdas-per-batch N"]),
        case(&s, "sweep: a batch within --max-lambdas-per-batch", "sweep --prompts 1 --samples 1000000 --lambda-range 0:2:600 --max-lambdas-per-batch 600 --out @o", 2, &["600 λ (--max-lambdas-per-batch)"]),
        case(&s, "tune: one batch of the initial design", "tune --samples 1000000 --budget 700 --initial 600 --out @o", 2, &["600 λ (--initial)", "--max-lambdas-per-batch"]),
        case(&s, "sample: λ × prompts images", &format!("sample --reference @sd --aligned @aligned --prompt a --prompt b --lambda {} --out @o/s.png", lambdas(2100)), 2, &["2100 λ settings (--lambda) × 2 prompts (--prompt)", "4096 images"]),
        case(&s, "sample: a grid too large", &format!("sample --reference @sd --aligned @aligned --prompt a --prompt b --lambda {} --size 4096x4096 --steps 1 --out @o/s.png", lambdas(40)), 2, &["make a grid of more than", "--size"]),
        sd("prompt file: more than MAX_PROMPTS lines", "p-many.txt", &["p-many.txt", "more than 1000000 prompts"]),
        sd("prompt file: one line of 100 MB", "p-line.txt", &["104857600 bytes long", "MAX_PROMPT_BYTES"]),
        sd("prompt file: larger than the limit", "p-huge.txt", &["larger than 256 MiB", "MAX_PROMPT_FILE_BYTES"]),
        sd("prompt file: a YAML alias bomb", "p-bomb.yaml", &["alias bomb", "MAX_YAML_NODES"]),
        sd("prompt file: YAML nested 300 deep", "p-deep.yaml", &["more than 64 deep"]),
    ];
    run_cases(&s, &cases);
}

#[test]
fn fifos_devices_sockets_and_link_loops_are_named_never_opened() {
    let s = scratch("special", false);
    let sd = |name: &str, file: &str, needles: &[&str]| {
        let args = format!("sweep --reference @sd --aligned @aligned --clip @clip --out @o --prompts-file {file}");
        case(&s, name, &args, 1, needles)
    };
    let score = |name: &str, out: &str, needles: &[&str]| {
        case(&s, name, &format!("score --images @imgs --clip @clip --prompt x --out {out}"), 2, needles)
    };
    #[rustfmt::skip]
    let cases = vec![
        case(&s, "merge: a FIFO", &format!("merge @fifo.jsonl {S0}"), 1, &["fifo.jsonl is a FIFO (named pipe), not a results file"]),
        case(&s, "merge: a socket", &format!("merge @socket.jsonl {S0}"), 1, &["socket.jsonl is a socket"]),
        case(&s, "merge: a device", &format!("merge /dev/zero {S0}"), 1, &["/dev/zero is a character device"]),
        case(&s, "merge: a FIFO shard file in the folder", "merge @mg-fifo", 1, &["sweep.shard-00001-of-00002.jsonl", "FIFO"]),
        case(&s, "merge: a folder named as a shard file", "merge @mg-dir", 1, &["is a folder, not a regular file"]),
        case(&s, "merge: a folder among files", &format!("merge @sh {S0}"), 1, &["a folder goes alone"]),
        case(&s, "status: a FIFO shard file", "status @st-fifo", 1, &["sweep.shard-00002-of-00003.jsonl: ", "FIFO", "3/4 items"]),
        case(&s, "status: a foreign shard file", "status @st-foreign", 1, &["sweep.shard-00002-of-00003.jsonl: line 1", "header"]),
        case(&s, "status: a renamed shard file", "status @st-renamed", 1, &["its name says shard 2/3", "1 file in"]),
        case(&s, "status: an empty shard file", "status @st-empty", 1, &["the file is empty"]),
        case(&s, "status: a socket shard file", "status @st-socket", 1, &["is a socket, not a regular file"]),
        case(&s, "compare: a FIFO", &format!("compare @fifo.jsonl {S0} --out @o"), 1, &["FIFO"]),
        case(&s, "compare: a device", &format!("compare {S0} /dev/zero --out @o"), 1, &["character device"]),
        sd("sweep: prompt file a FIFO", "@p-fifo.txt", &["p-fifo.txt is a FIFO"]),
        sd("sweep: prompt file a device", "/dev/urandom", &["/dev/urandom is a character device"]),
        sd("sweep: prompt file a folder", "@imgs", &["is a folder, not a regular file"]),
        sd("sweep: prompt file a socket", "@socket.jsonl", &["is a socket"]),
        case(&s, "score: prompt file a FIFO", "score --images @imgs --clip @clip --prompts-file @p-fifo.txt --out @o/s.jsonl", 1, &["FIFO"]),
        case(&s, "score: a FIFO among the images", "score --images @imgs-fifo --clip @clip --prompt x --out @o/s.jsonl", 2, &["2.png is a FIFO (named pipe), not a PNG file"]),
        case(&s, "tune: prompt file a FIFO", "tune --reference @sd --aligned @aligned --clip @clip --prompts-file @p-fifo.txt --out @o", 1, &["FIFO"]),
        case(&s, "sweep: --out a FIFO", "sweep --out @fifo-dir", 2, &["is a FIFO (named pipe): give a folder"]),
        case(&s, "demo: --out a FIFO", "demo --samples 8 --steps 2 --out @fifo-dir", 2, &["FIFO"]),
        case(&s, "tune: --out a socket", "tune --out @socket.jsonl", 2, &["is a socket: give a folder"]),
        case(&s, "compare: --out a device", &format!("compare {S0} {S1} --out /dev/null"), 2, &["/dev/null is a character device"]),
        merge3(&s, "merge: --out a FIFO", "@fifo.jsonl", &["is a FIFO (named pipe): give the path of a file"]),
        merge3(&s, "merge: --out a socket", "@socket.jsonl", &["is a socket"]),
        extract(&s, "extract-lora: --out a FIFO", "@fifo.safetensors", &["FIFO"]),
        score("score: --out a FIFO", "@fifo.jsonl", &["FIFO"]),
        case(&s, "sample: --out a FIFO", "sample --reference @sd --aligned @aligned --prompt x --out @fifo.png", 2, &["not a regular file"]),
        case(&s, "demo: --out a link loop", "demo --samples 8 --steps 2 --out @loop-a", 2, &["symbolic link loop"]),
        case(&s, "sweep: --out a link loop", "sweep --out @loop-a", 2, &["symbolic link loop"]),
        case(&s, "tune: --out a link loop", "tune --out @loop-a", 2, &["symbolic link loop"]),
        case(&s, "compare: --out a dangling link", &format!("compare {S0} {S1} --out @dangling-dir"), 2, &["dangling symbolic link"]),
        merge3(&s, "merge: --out a link loop", "@loop-a.jsonl", &["symbolic link loop"]),
        extract(&s, "extract-lora: --out a link loop", "@loop-a.safetensors", &["symbolic link loop"]),
        score("score: --out a link loop", "@loop-a.jsonl", &["symbolic link loop"]),
        case(&s, "compare: a link loop to read", &format!("compare @loop-a.jsonl {S0} --out @o"), 1, &["symbolic link loop"]),
    ];
    run_cases(&s, &cases);
}

#[test]
fn no_output_replaces_an_input_however_spelled() {
    let s = scratch("outputs", false);
    let root = s.root.display().to_string();
    #[rustfmt::skip]
    let cases = vec![
        extract(&s, "extract-lora: --out the reference's weights", "@ref/unet/diffusion_pytorch_model.safetensors", &["same file as --reference", "its file"]),
        extract(&s, "extract-lora: --out the aligned weights", "@aligned/diffusion_pytorch_model.safetensors", &["same file as --aligned"]),
        extract(&s, "extract-lora: --out a link to them", "@soft.safetensors", &["same file as --aligned"]),
        extract(&s, "extract-lora: --out a hard link to them", "@hard.safetensors", &["same file as --aligned"]),
        extract(&s, "extract-lora: --out them spelled with ./ and ..", &format!("{root}/./aligned/../aligned/diffusion_pytorch_model.safetensors"), &["same file as --aligned"]),
        merge3(&s, "merge: --out an input spelled with ./ and ..", &format!("{root}/./sh/../sh/sweep.shard-00002-of-00003.jsonl"), &["same file as the input"]),
        merge3(&s, "merge: --out a link to an input", "@soft.jsonl", &["soft.jsonl, which is the same file as the input"]),
        merge3(&s, "merge: --out a hard link to an input", "@hard.jsonl", &["hard.jsonl, which is the same file as the input"]),
        merge3(&s, "merge: --out a CSV (over its own JSON lines)", "@o/merged.csv", &["must end in .jsonl", "merged.csv"]),
        case(&s, "merge: the CSV beside --out is an input", &format!("merge @shard1.csv {S0} {S2} --out @shard1.jsonl"), 2, &["shard1.csv", "an output must not replace an input"]),
        case(&s, "merge: --out is one of the inputs", "merge @sh/sweep.shard-00000-of-00003.jsonl @soft.jsonl --out @soft.jsonl", 2, &["same file as the input"]),
        case(&s, "sweep: --prompts-file is the CSV it writes", "sweep --reference @sd --aligned @aligned --clip @clip --prompts-file @o-sweep/sweep.csv --out @o-sweep", 2, &["same file as --prompts-file"]),
        case(&s, "sweep: --prompts-file on the testbed", "sweep --prompts-file @o-sweep/prompts.csv --out @o-sweep", 2, &["--prompts-file applies to Stable Diffusion"]),
        case(&s, "tune: --prompts-file is bo.json", "tune --reference @sd --aligned @aligned --clip @clip --prompts-file @o-tune/bo.json --out @o-tune", 2, &["same file as --prompts-file"]),
        case(&s, "compare: --out holds the original", &format!("compare @o-cmp/agreement.json {S1} --out @o-cmp"), 2, &["same file as original"]),
        case(&s, "score: --out is the prompt file", "score --images @imgs --clip @clip --prompts-file @scores.jsonl --out @scores.jsonl", 2, &["same file as --prompts-file"]),
        case(&s, "score: --out a link to an image", "score --images @imgs --clip @clip --prompt x --out @img-link.jsonl", 2, &["same file as --images"]),
        case(&s, "sample: --out a link to the aligned weights", "sample --reference @sd --aligned @aligned --prompt x --out @weights.png", 2, &["same file as --aligned"]),
    ];
    run_cases(&s, &cases);
}

#[test]
fn inputs_a_reference_reader_rejects_and_messages_that_name_the_option() {
    let s = scratch("inputs", false);
    let sd = |name: &str, extra: &str, needles: &[&str]| {
        let args = format!("sweep --reference @sd --aligned @aligned --clip @clip --out @o {extra}");
        case(&s, name, &args, 1, needles)
    };
    #[rustfmt::skip]
    let mut cases = vec![
        sd("prompt file: two YAML documents", "--prompts-file @p-docs.yaml", &["2 documents"]),
        sd("prompt file: two prompts with one id (JSON lines)", "--prompts-file @p-dup.jsonl", &["the id \"k\"", "give each prompt its own id"]),
        sd("prompt file: two prompts with one id (CSV)", "--prompts-file @p-dup.csv", &["the id \"1\""]),
        sd("prompt file: --prompt-column on plain text", "--prompts-file @p.txt --prompt-column caption", &["which has no columns"]),
        sd("prompt file: --prompt-column on bare strings", "--prompts-file @p-strings.jsonl --prompt-column caption", &["a bare string, but the prompt column \"caption\""]),
        sd("prompt file: --prompt-column not in the header", "--prompts-file @p-col.csv --prompt-column title", &["has no a field \"title\""]),
        sd("prompt file: an unknown extension", "--prompts-file @p.parquet", &[".parquet is not a prompt file format"]),
        sd("prompt file: UTF-16", "--prompts-file @p-utf16.txt", &["UTF-16", "save it as UTF-8"]),
        sd("prompt file: a NUL byte", "--prompts-file @p-nul.txt", &["NUL byte at offset 6"]),
        case(&s, "tune: --aligned-beta NaN", "tune --aligned-beta nan --out @o", 2, &["--aligned-beta is NaN", "positive finite"]),
        case(&s, "tune: --aligned-beta 0", "tune --aligned-beta 0 --out @o", 2, &["--aligned-beta is 0"]),
        case(&s, "tune: --aligned-beta negative", "tune --aligned-beta -1 --out @o", 2, &["--aligned-beta is -1"]),
        case(&s, "tune: --aligned-beta infinite", "tune --aligned-beta inf --out @o", 2, &["--aligned-beta is inf"]),
        case(&s, "tune: --aligned-beta on the testbed", "tune --aligned-beta 2 --out @o", 2, &["--aligned-beta applies to Stable Diffusion", "--anchor-beta"]),
        case(&s, "sweep: --prompt-seed on the testbed", "sweep --prompt-seed 5 --out @o", 2, &["--prompt-seed applies to Stable Diffusion"]),
        case(&s, "sweep: --guidance on the testbed", "sweep --guidance 3 --out @o", 2, &["--guidance applies to Stable Diffusion"]),
        case(&s, "sweep: --steps -1", "sweep --steps -1 --out @o", 2, &["'--steps <STEPS>'"]),
        case(&s, "tune: --budget -5", "tune --budget -5 --out @o", 2, &["--budget"]),
        case(&s, "compare: --bootstrap -1", &format!("compare {S0} {S1} --bootstrap -1 --out @o"), 2, &["--bootstrap"]),
        case(&s, "extract-lora: --rank -3", "extract-lora --reference @ref --aligned @aligned --rank -3", 2, &["--rank"]),
        case(&s, "sample: --seed -1", "sample --reference @sd --prompt x --seed -1", 2, &["--seed"]),
        case(&s, "sweep: --shards -2", "sweep --shards -2 --out @o", 2, &["--shards"]),
        case(&s, "sweep: --max-lambdas-per-batch -1", "sweep --max-lambdas-per-batch -1 --out @o", 2, &["--max-lambdas-per-batch"]),
        case(&s, "demo: --samples -5", "demo --samples -5", 2, &["--samples"]),
    ];
    // Handled and documented: CR-only line ends, a byte-order mark with CRLF.
    for (name, file) in [("a CR-only prompt file", "p-cr.txt"), ("a prompt file with a BOM and CRLF", "p-bom.txt")] {
        let out = format!("o-{file}.jsonl");
        let mut c: Case =
            case(&s, name, &format!("score --images @imgs --clip @clip --prompts-file @{file} --out @{out}"), 0, &[]);
        c.writes = vec![s.root.join(&out)];
        cases.push(c);
    }
    run_cases(&s, &cases);
    for file in ["p-cr.txt", "p-bom.txt"] {
        let rows = std::fs::read_to_string(s.root.join(format!("o-{file}.jsonl"))).unwrap();
        let prompts: Vec<String> = rows
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["prompt"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(prompts, ["a red cube", "a cat"], "{file}");
    }
}

/// Two `demo` runs on one `--out` at once leave the four files of one of them: the table of
/// study.csv is the one in study.json.
#[test]
fn concurrent_demos_on_one_out_leave_one_runs_files() {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("hostile-files-demos-{}", std::process::id()));
    for round in 0..2 {
        let _ = std::fs::remove_dir_all(&out);
        let children: Vec<_> = (0..3)
            .map(|k| {
                Command::new(bin())
                    .args(["demo", "--samples", "16", "--steps", "2", "--target-betas", "2,1", "-q", "--seed"])
                    .arg((k + 10 * round).to_string())
                    .arg("--out")
                    .arg(&out)
                    .stdout(Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for mut c in children {
            assert!(c.wait().unwrap().success());
        }
        let csv = std::fs::read_to_string(out.join("study.csv")).unwrap();
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("study.json")).unwrap()).unwrap();
        let first: Vec<f64> = csv.lines().nth(1).unwrap().split(',').map(|v| v.parse().unwrap()).collect();
        assert_eq!(json["rows"][0]["deradiff_mean_reward"].as_f64().unwrap(), first[4], "round {round}: {csv}");
        let names: Vec<String> =
            std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(names.len(), 4, "{names:?}");
    }
    std::fs::remove_dir_all(&out).unwrap();
}
