//! Checks over the whole command line: every option that takes a value names itself when given a
//! negative number, and every option that an error or an advice mentions exists on the command
//! that prints it (the messages of this crate and of the libraries, found in their sources).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use clap::error::ErrorKind;

use super::command;

/// The subcommands, as the command line spells them.
const ALL: [&str; 10] =
    ["demo", "sample", "sweep", "tune", "compare", "merge", "status", "report", "extract-lora", "score"];

/// The mark of a mention in advice that names its command (`deradiff sweep … --overwrite`).
const OTHER: &str = "deradiff ";

/// Options of other programs that messages mention (cargo's, when a feature is missing;
/// `huggingface-cli download`'s, when a model is not in the Hugging Face cache; sbatch's, in the
/// advice of a Slurm array whose environment does not give a shard).
const FOREIGN: [&str; 5] = ["--features", "--revision", "--force-download", "--include", "--array"];

#[test]
fn every_option_that_takes_a_value_names_itself_for_a_negative_number() {
    let cli = command();
    let mut checked = 0;
    for sub in cli.get_subcommands() {
        for arg in sub.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if !arg.get_action().takes_values() || arg.is_positional() {
                continue;
            }
            for value in ["-1", "-2.5"] {
                let argv = ["deradiff", sub.get_name(), &format!("--{long}"), value];
                if let Err(e) = command().try_get_matches_from(argv) {
                    let text = e.to_string();
                    assert_ne!(e.kind(), ErrorKind::UnknownArgument, "{argv:?}: {text}");
                    if matches!(e.kind(), ErrorKind::InvalidValue | ErrorKind::ValueValidation) {
                        assert!(text.contains(&format!("--{long}")), "{argv:?}: {text}");
                    }
                }
                checked += 1;
            }
        }
    }
    assert!(checked > 100, "{checked}");
}

/// The commands whose run can print the messages of `file` (relative to the crates folder),
/// function `function` (`""`: outside any function). Every function of a file that mentions an
/// option must be here; `None`: not mapped (the test then fails, naming it).
fn printed_by(file: &str, function: &str) -> Option<Vec<&'static str>> {
    let sd_models = vec!["sample", "sweep", "tune"];
    let with_rewards = vec!["sweep", "tune", "score"];
    let sweeps = vec!["sweep", "tune"];
    let name = file.strip_prefix("deradiff-cli/src/").unwrap_or(file);
    if let Some(cmd) = name.strip_prefix("commands/") {
        let cmd = cmd.split(['/', '.']).next().unwrap_or_default().replace('_', "-");
        return ALL.iter().find(|c| **c == cmd).map(|c| vec![*c]);
    }
    Some(match (name, function) {
        ("args/model.rs", "device_option") => vec!["sample", "sweep", "tune", "score", "extract-lora"],
        ("args/model.rs", _) => sd_models,
        ("args/prompts.rs" | "args/rewards.rs", _) => with_rewards,
        ("args/realign.rs", _) => vec!["sample"],
        ("args/sampler.rs", _) => vec!["demo", "sample", "sweep", "tune"],
        ("args/sd.rs" | "args/sweep_model.rs" | "args/testbed.rs", _) => sweeps,
        ("checks.rs", "check_steps") => vec!["demo", "sample", "sweep", "tune"],
        ("checks.rs", "check_guidance") => vec!["sample", "sweep", "tune"],
        ("checks.rs", "check_anchor_beta") => vec!["demo", "sweep", "tune"],
        ("checkpoint.rs", _) => sd_models,
        ("grid.rs", "sweep_lambdas" | "parse_range") => vec!["sweep"],
        ("grid.rs", "target_betas") => vec!["demo"],
        ("grid.rs", "parse_seeds") => sweeps,
        ("output.rs" | "guard.rs", _) => ALL.iter().copied().filter(|c| !matches!(*c, "status" | "report")).collect(),
        ("shards.rs", _) => vec!["sweep"],
        ("deradiff-rewards/src/prompts/mod.rs" | "deradiff-rewards/src/prompts/tree.rs", _) => with_rewards,
        ("deradiff-tune/src/spec.rs", _) => vec!["sweep"],
        // Single-file references: `--tokenizer`, `--model-config` and `--aligned` are options of
        // the commands that load Stable Diffusion models.
        ("deradiff-sd/src/error.rs", "")
        | ("deradiff-sd/src/pipeline/single.rs", _)
        | ("deradiff-sd/src/single_file/templates.rs", _) => sd_models,
        ("deradiff-tune/src/error.rs", "") => vec!["merge"],
        _ => return None,
    })
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let p = entry.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The options (`--name`) that the code of a file mentions, with the function each is in:
/// comments, clap attributes and the file's tests left out.
fn options_mentioned(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut function = String::new();
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]") {
            break;
        }
        if t.starts_with("//") || t.starts_with("#[") {
            continue;
        }
        if let Some(rest) = t.split("fn ").nth(1).filter(|_| t.starts_with("fn ") || t.starts_with("pub")) {
            function = rest.split(['(', '<']).next().unwrap_or_default().to_string();
        }
        let mut rest = line;
        while let Some(i) = rest.find("--") {
            let tail = &rest[i + 2..];
            let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '-')).unwrap_or(tail.len());
            let flag = tail[..end].trim_end_matches('-');
            if flag.starts_with(|c: char| c.is_ascii_lowercase()) {
                // Advice that spells out another command ("`deradiff sweep … --overwrite`") is
                // checked against that command.
                let before = &line[..line.len() - rest.len() + i];
                let other = before.rfind("deradiff ").and_then(|j| {
                    let word = before[j + 9..].split(|c: char| !(c.is_ascii_lowercase() || c == '-')).next()?;
                    ALL.iter().find(|c| **c == word)
                });
                let place = match other {
                    Some(cmd) => format!("{OTHER}{cmd}"),
                    None => function.clone(),
                };
                out.push((format!("--{flag}"), place));
            }
            rest = &tail[end..];
        }
    }
    out
}

#[test]
fn every_option_named_in_a_message_exists_on_the_command_that_prints_it() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for krate in
        ["deradiff-cli", "deradiff-core", "deradiff-sd", "deradiff-rewards", "deradiff-tune", "deradiff-analytic"]
    {
        rust_files(&crates.join(krate).join("src"), &mut files);
    }
    let cli = command();
    let has = |cmd: &str, flag: &str| {
        cli.find_subcommand(cmd)
            .is_some_and(|c| c.get_arguments().any(|a| a.get_long().is_some_and(|l| format!("--{l}") == flag)))
    };
    let mut problems = BTreeSet::new();
    let mut mentions = 0;
    for file in files {
        let rel = file.strip_prefix(&crates).unwrap().to_string_lossy().replace('\\', "/");
        let text = std::fs::read_to_string(&file).unwrap();
        for (flag, function) in options_mentioned(&text) {
            if FOREIGN.contains(&flag.as_str()) {
                continue;
            }
            mentions += 1;
            let named = function.strip_prefix(OTHER).map(|cmd| vec![ALL.into_iter().find(|c| *c == cmd).unwrap()]);
            match named.or_else(|| printed_by(&rel, &function)) {
                None => {
                    problems.insert(format!("{rel}, fn {function:?}: mentions {flag}; map it in printed_by"));
                }
                Some(commands) => {
                    for cmd in commands.iter().filter(|c| !has(c, &flag)) {
                        problems.insert(format!("{rel}, fn {function:?}: {flag} is not an option of `deradiff {cmd}`"));
                    }
                }
            }
        }
    }
    assert!(mentions > 100, "{mentions}");
    assert!(problems.is_empty(), "{}", problems.into_iter().collect::<Vec<_>>().join("\n"));
}
