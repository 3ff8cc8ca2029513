//! `deradiff compare`: the paper's agreement statistics (Table 5) between two sweep results
//! files, with a Bland–Altman plot and the ECDF of |Δ|.

use std::path::{Path, PathBuf};

use deradiff_tune::{
    agreement, pair_rows, plot, read_results, AgreementConfig, AgreementStats, PairBy, Pairs, Stat, SweepRow,
};

use crate::error::{CliError, Context, Result};
use crate::guard::{check_out_dir, check_outputs, lock_dir};
use crate::output::{create_out_dir, print_stdout, write_file};

/// Options of `deradiff compare`.
#[derive(Debug, clap::Args)]
pub(crate) struct CompareArgs {
    /// Results of the originals (e.g. models aligned from scratch), a sweep's JSONL file.
    original: PathBuf,
    /// Results of the approximation (e.g. DeRaDiff), a sweep's JSONL file.
    approx: PathBuf,
    /// The reward to compare (a name in both files).
    #[arg(long, default_value = "true")]
    reward: String,
    /// Pair rows by λ and prompt (`lambda-prompt`) or by prompt only (`prompt`).
    #[arg(long, default_value = "lambda-prompt")]
    by: String,
    /// Bootstrap resamples of the MAE.
    #[arg(long, default_value_t = 10_000)]
    bootstrap: usize,
    /// Bootstrap seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output directory (agreement.json, bland_altman.png, abs_error_ecdf.png).
    #[arg(long, default_value = "deradiff-out/compare")]
    out: PathBuf,
    /// No "wrote …" line after the table.
    #[arg(long, short)]
    quiet: bool,
}

/// The rows of a results file.
fn read(path: &Path) -> Result<Vec<SweepRow>> {
    Ok(read_results(path).with_context(|| format!("cannot read the results file {}", path.display()))?.rows)
}

/// Runs `deradiff compare`.
pub(crate) fn run(args: CompareArgs) -> Result<()> {
    let by = match args.by.as_str() {
        "lambda-prompt" => PairBy::LambdaAndPrompt,
        "prompt" => PairBy::Prompt,
        other => return Err(CliError::usage(format!("--by '{other}' is not one of 'lambda-prompt', 'prompt'"))),
    };
    check_out_dir("--out", &args.out)?;
    let outputs = OUTPUTS.map(|name| args.out.join(name));
    check_outputs(
        &outputs.iter().map(|p| ("--out", p.as_path())).collect::<Vec<_>>(),
        &[("original", &args.original), ("approx", &args.approx)],
    )?;
    let pairs = pair_rows(&read(&args.original)?, &read(&args.approx)?, &args.reward, by).with_context(|| {
        format!("cannot pair the rows of {} and {}", args.original.display(), args.approx.display())
    })?;
    let config = AgreementConfig { bootstrap: args.bootstrap, seed: args.seed, ..AgreementConfig::default() };
    let stats = agreement(&pairs.original, &pairs.approx, &config).context("cannot compute the agreement")?;
    create_out_dir(&args.out)?;
    write_files(&args, &pairs, &stats)?;
    print_stdout(&table(&args, &stats))
}

/// The files `compare` writes into `--out`.
const OUTPUTS: [&str; 3] = ["agreement.json", "bland_altman.png", "abs_error_ecdf.png"];

/// Writes agreement.json, bland_altman.png and abs_error_ecdf.png into `--out` (its lock held:
/// two runs on one folder leave one run's files, not a mix).
fn write_files(args: &CompareArgs, pairs: &Pairs, stats: &AgreementStats) -> Result<()> {
    let _lock = lock_dir(&args.out);
    let json = serde_json::to_string_pretty(stats)?;
    write_file(&args.out.join("agreement.json"), json.as_bytes())?;
    let title = format!("{} vs {}", args.approx.display(), args.original.display());
    let png = plot::bland_altman_png(&pairs.original, &pairs.approx, stats, &title)
        .context("cannot plot bland_altman.png")?;
    write_file(&args.out.join("bland_altman.png"), &png)?;
    let png = plot::abs_error_ecdf_png(&pairs.original, &pairs.approx, stats, &title)
        .context("cannot plot abs_error_ecdf.png")?;
    write_file(&args.out.join("abs_error_ecdf.png"), &png)
}

/// The statistics as a table, each also as a percentage of the originals' mean.
fn table(args: &CompareArgs, stats: &AgreementStats) -> String {
    let pct = |s: &Stat| s.percent.map(|p| format!("{p:.3} %")).unwrap_or("—".into());
    let mut text = format!(
        "agreement on '{}' over {} pairs (mean of the originals {:.4})\n\n{:<28} {:>12} {:>12}\n",
        args.reward, stats.n, stats.reference_mean, "statistic", "value", "% of mean"
    );
    for (name, s) in [
        ("MAE", &stats.mae),
        ("MAE, bootstrap mean", &stats.mae_bootstrap_mean),
        ("MAE, 95% CI low", &stats.mae_ci_low),
        ("MAE, 95% CI high", &stats.mae_ci_high),
        ("RMSE", &stats.rmse),
        ("median |Δ|", &stats.median_abs),
        ("max |Δ|", &stats.max_abs),
        ("Bland–Altman bias", &stats.bias),
        ("SD of differences", &stats.sd_diff),
        ("limit of agreement, low", &stats.loa_low),
        ("limit of agreement, high", &stats.loa_high),
    ] {
        text.push_str(&format!("{name:<28} {:>12.5} {:>12}\n", s.value, pct(s)));
    }
    if !args.quiet {
        text.push_str(&format!(
            "\nwrote {}/{{agreement.json, bland_altman.png, abs_error_ecdf.png}}\n",
            args.out.display()
        ));
    }
    text
}
