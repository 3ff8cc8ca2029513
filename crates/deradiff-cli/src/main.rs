//! `deradiff`: the command line of deradiff.
//!
//! `deradiff demo` runs the realignment study on the exact analytic testbed (a built-in 2-D
//! Gaussian mixture) and writes its table (CSV, JSON) and figures (PNG); `deradiff sample`
//! realigns Stable Diffusion checkpoints and writes PNGs; `sweep`, `tune`, `compare`, `merge`,
//! `status`, `score` and `extract-lora` find and evaluate λ; `report` shows a results folder as a
//! web page.
//!
//! This file parses the command line and dispatches: each subcommand lives in
//! `commands/<name>.rs` (its options and its `run`), the option groups they share in `args/`.

mod args;
mod checkpoint;
mod checks;
mod commands;
mod error;
mod grid;
mod guard;
#[cfg(test)]
mod option_tests;
mod output;
mod shards;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::commands::{compare, demo, extract_lora, merge, report, sample, score, status, sweep, tune};
use crate::error::Result;

/// Denoising-time realignment of diffusion models (DeRaDiff).
#[derive(Debug, Parser)]
#[command(
    name = "deradiff",
    version,
    about,
    long_about = None,
    after_help = "Exit status: 0 on success, 1 when a run fails (the error and each of its causes are \
                  printed), 2 for bad options; `status` exits with 3 while a sweep has work items missing."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the realignment study on the exact analytic testbed (no weights, seconds on a CPU).
    ///
    /// Samples a built-in 2-D Gaussian mixture with the exact reference model, the exact model
    /// aligned at the anchor β, the exact models aligned at each target β ("from scratch"), and
    /// DeRaDiff (reference + anchor, λ = β_anchor / β_target), all from the same noise; prints
    /// the table and writes study.csv, study.json, samples.png and reward_vs_lambda.png.
    Demo(demo::DemoArgs),
    /// Realigned text-to-image sampling: a reference Stable Diffusion checkpoint (diffusers
    /// layout) and aligned UNets, fused at every step with weights [1 − λ, λ] (or K weights).
    ///
    /// Several λ give one image each (same seed) and a labelled grid.
    Sample(sample::SampleArgs),
    /// Sweep a λ grid on the analytic testbed or, with --reference, on Stable Diffusion: the mean
    /// of each reward per λ, streamed to sweep.jsonl / sweep.csv and resumed where an interrupted
    /// run stopped.
    ///
    /// The analytic testbed (the default) scores the proxy and the true reward; a Stable Diffusion
    /// pair (--reference and --aligned) the image rewards given (--clip, --pickscore, --hps,
    /// --aesthetic, --image-reward).
    Sweep(sweep::SweepArgs),
    /// Bayesian optimisation of λ on the analytic testbed or, with --reference, on Stable
    /// Diffusion (GP surrogate, EI or UCB): prints λ* and the KL strength β_anchor/λ* it emulates.
    ///
    /// The objective is the true reward on the analytic testbed (the default); with --reference
    /// and --aligned, the first image reward given (--clip, else --pickscore, --hps, --aesthetic,
    /// --image-reward); give --aligned-beta to print the KL strength it emulates.
    Tune(tune::TuneArgs),
    /// Agreement statistics (paper Table 5) between two sweep result files, with a
    /// Bland–Altman plot and the ECDF of |Δ|.
    Compare(compare::CompareArgs),
    /// Join the results files of a sharded sweep (sweep.shard-00003-of-00008.jsonl … in its output folder)
    /// into the file an unsharded run writes: same spec or an error, no duplicate or missing item
    /// (missing ones listed; --allow-partial to merge anyway).
    Merge(merge::MergeArgs),
    /// Progress of the sweeps in an output folder, across their shards: each shard done, running,
    /// dead (its process killed), stopped or not started; exit status 3 while items are missing.
    Status(status::StatusArgs),
    /// A static HTML report of an output folder (report.html, opening from disk, no network): a
    /// sweep's prompts × λ as images (--save-images) with their rewards, reward-vs-λ curves with
    /// bootstrap intervals, filter and sort; a tune run's evaluations and posterior; a compare's
    /// agreement statistics and Bland–Altman plot.
    Report(report::ReportArgs),
    /// Extract a LoRA from a full aligned UNet: per layer, the truncated SVD of the weight
    /// difference to the reference at --rank, written as a diffusers-layout LoRA that
    /// `--aligned` (and diffusers' load_lora_weights) loads; prints each layer's relative
    /// Frobenius error and the adapter's size.
    ExtractLora(extract_lora::ExtractLoraArgs),
    /// Score a folder of PNG images (made by any tool) against their prompts with CLIP score,
    /// PickScore, HPS v2, the LAION aesthetic predictor and/or ImageReward, one row per image
    /// (JSON lines or CSV).
    Score(score::ScoreArgs),
}

/// Runs the subcommand.
fn run(command: Command) -> Result<()> {
    match command {
        Command::Demo(args) => demo::run(args),
        Command::Sample(args) => sample::run(args),
        Command::Sweep(args) => sweep::run(args),
        Command::Tune(args) => tune::run(args),
        Command::Compare(args) => compare::run(args),
        Command::Merge(args) => merge::run(args),
        Command::Status(args) => status::run(args),
        Command::Report(args) => report::run(args),
        Command::ExtractLora(args) => extract_lora::run(args),
        Command::Score(args) => score::run(args),
    }
}

/// Every option that takes a value, in `command` and its subcommands, accepts a value that
/// starts with `-` and reads as a number: `--steps -1` is then refused by the option's own check,
/// naming the option, not by clap as an "unexpected argument '-1'" that names none.
fn allow_negative_numbers(command: clap::Command) -> clap::Command {
    let names: Vec<String> = command.get_subcommands().map(|c| c.get_name().to_string()).collect();
    let mut command = command.mut_args(|a| {
        if a.get_action().takes_values() && !a.is_positional() {
            a.allow_negative_numbers(true)
        } else {
            a
        }
    });
    for name in names {
        command = command.mut_subcommand(name, allow_negative_numbers);
    }
    command
}

/// The command line's definition: [`Cli`] with [`allow_negative_numbers`].
fn command() -> clap::Command {
    allow_negative_numbers(<Cli as clap::CommandFactory>::command())
}

/// Parses the command line (clap prints usage errors and exits with status 2), runs the
/// subcommand and prints a failure as its whole cause chain: exit status 1 for a failed run, 2
/// for a bad option. A panic (a bug) is reported as an internal error with status 1, not 101.
fn main() -> ExitCode {
    let cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&command().get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.format(&mut command()).exit(),
    };
    std::panic::set_hook(Box::new(|info| {
        eprintln!("error: internal error in deradiff (a bug; please report it): {info}");
    }));
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(cli.command))) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("{}", e.report());
            ExitCode::from(e.exit_code())
        }
        Err(_) => ExitCode::FAILURE,
    }
}
