//! `deradiff extract-lora`: a LoRA from the weight difference of two full UNets.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use deradiff_sd::lora::{extract_lora_with_progress, ExtractOptions, ExtractReport, LoraAdapter, SvdMethod};
use deradiff_sd::{parse_dtype, Unet};

use crate::args::{device_option, ModelPath};
use crate::error::{CliError, Context, Result};
use crate::guard::{check_out_file, check_outputs};
use crate::output::{print_stdout, progress_bar};

/// The largest rank `extract-lora` takes (the UNets' widest layers have 1280–2560 channels).
const MAX_RANK: usize = 4096;

/// Options of `deradiff extract-lora`.
#[derive(Debug, clap::Args)]
pub(crate) struct ExtractLoraArgs {
    /// The reference model: a diffusers pipeline folder (its unet/ is used) or a UNet folder; or
    /// a Hugging Face repo id (`org/name[@revision][/path]`) in the local cache.
    #[arg(long, value_parser = ModelPath)]
    reference: PathBuf,
    /// The aligned model of the same architecture: a pipeline folder, a UNet folder, or a bare
    /// UNet safetensors file (read with the reference's config); or a Hugging Face repo id in the
    /// local cache.
    #[arg(long, value_parser = ModelPath)]
    aligned: PathBuf,
    /// The rank of every layer's adapter (clipped to the layer's smaller side).
    #[arg(long, default_value_t = 16)]
    rank: usize,
    /// Output LoRA file (diffusers layout, `.safetensors`); written atomically.
    #[arg(long, default_value = "deradiff-out/extracted_lora.safetensors")]
    out: PathBuf,
    /// dtype of the written adapter: f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    save_dtype: String,
    /// Leave out layers whose relative change ‖ΔW‖/‖W‖ is at most this (0: only unchanged ones).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    min_change: f64,
    /// Randomized SVD (rank + 10 columns, 2 power iterations): much faster on full-size UNets,
    /// near-optimal when the spectrum decays; the reported errors stay exact.
    #[arg(long)]
    fast: bool,
    /// Device the models are loaded on (the SVD runs on the CPU): cpu, cuda[:N] or metal[:N].
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Print only the totals, not each layer; no progress bar.
    #[arg(long, short)]
    quiet: bool,
}

/// The UNet of a pipeline folder (`unet/`), else `path` itself.
fn unet_path(path: &Path) -> PathBuf {
    let inner = path.join("unet");
    if inner.join("config.json").is_file() {
        inner
    } else {
        path.to_path_buf()
    }
}

/// `--rank`, `--min-change`, `--save-dtype`, `--device` and `--out` (a .safetensors file that is
/// neither the reference's nor the aligned model's, however spelled), checked before anything is
/// loaded: the dtype of the written adapter and the device.
fn check(args: &ExtractLoraArgs) -> Result<(DType, Device)> {
    if args.rank == 0 || args.rank > MAX_RANK {
        return Err(CliError::usage(format!("--rank is {}; it must lie in 1..={MAX_RANK}", args.rank)));
    }
    if !(args.min_change >= 0.0 && args.min_change.is_finite()) {
        return Err(CliError::usage(format!("--min-change is {}; it must be a finite number >= 0", args.min_change)));
    }
    let save_dtype =
        parse_dtype(&args.save_dtype).usage_context(format!("--save-dtype {} is not a dtype", args.save_dtype))?;
    let device = device_option(&args.device)?;
    if args.out.extension().is_none_or(|e| e != "safetensors") {
        return Err(CliError::usage(format!(
            "--out {}: the LoRA file's name must end in .safetensors",
            args.out.display()
        )));
    }
    check_out_file("--out", &args.out)?;
    check_outputs(&[("--out", &args.out)], &[("--reference", &args.reference), ("--aligned", &args.aligned)])?;
    Ok((save_dtype, device))
}

/// The reference and the aligned UNet, in f32 on `device` (the aligned one read with the
/// reference's config where it has none of its own).
fn load(args: &ExtractLoraArgs, device: &Device) -> Result<(Unet, Unet)> {
    let dtype = DType::F32;
    let ref_dir = unet_path(&args.reference);
    let reference = Unet::load(&ref_dir, None, dtype, device)
        .with_context(|| format!("cannot load --reference {}", args.reference.display()))?;
    let ref_config = ref_dir.join("config.json");
    let aligned = Unet::load(unet_path(&args.aligned), Some((reference.config(), &ref_config)), dtype, device)
        .with_context(|| format!("cannot load --aligned {}", args.aligned.display()))?;
    Ok((reference, aligned))
}

/// The extraction's options: `--rank`, exact or randomized SVD (`--fast`), `--min-change`.
fn options(args: &ExtractLoraArgs) -> ExtractOptions {
    ExtractOptions {
        rank: args.rank,
        method: if args.fast {
            SvdMethod::Randomized { oversampling: 10, power_iterations: 2 }
        } else {
            SvdMethod::Exact
        },
        min_relative_change: args.min_change,
        ..Default::default()
    }
}

/// Runs `deradiff extract-lora`.
pub(crate) fn run(args: ExtractLoraArgs) -> Result<()> {
    let (save_dtype, device) = check(&args)?;
    let (reference, aligned) = load(&args, &device)?;
    let bar = progress_bar(args.quiet, "{elapsed_precise} [{bar:40}] {pos}/{len} layers")?;
    let (adapter, report) = extract_lora_with_progress(&reference, &aligned, &options(&args), &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })
    .context("cannot extract the LoRA")?;
    bar.finish_and_clear();
    if report.layers.is_empty() {
        return Err(CliError::runtime(
            "no layer differs between --reference and --aligned (beyond --min-change): there is no LoRA to extract",
        ));
    }
    adapter.save(&args.out, save_dtype).with_context(|| format!("cannot write {}", args.out.display()))?;
    // Read it back: the file must load as a LoRA of the reference.
    LoraAdapter::load(&args.out, &reference)
        .with_context(|| format!("the written {} does not load back", args.out.display()))?;
    print_stdout(&render(&report, args.quiet, save_dtype, &args.out))
}

/// The report as a table (per layer unless `quiet`) with the totals.
fn render(report: &ExtractReport, quiet: bool, dtype: DType, out: &Path) -> String {
    let mut s = String::new();
    if !quiet {
        let _ = writeln!(s, "{:<64} {:>18} {:>5} {:>10} {:>10}", "layer", "shape", "rank", "rel.change", "rel.error");
        for l in &report.layers {
            let shape = l.shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("x");
            let _ = writeln!(
                s,
                "{:<64} {:>18} {:>5} {:>10.3e} {:>10.3e}",
                l.path, shape, l.rank, l.relative_change, l.relative_error
            );
        }
    }
    if !report.not_representable.is_empty() {
        let shown: Vec<&str> = report.not_representable.iter().take(3).map(String::as_str).collect();
        let _ = writeln!(
            s,
            "note: {} biases / norm parameters differ and cannot be carried by a LoRA ({}{}): the adapter misses them",
            report.not_representable.len(),
            shown.join(", "),
            if report.not_representable.len() > 3 { ", …" } else { "" }
        );
    }
    let bytes = report.bytes(dtype);
    let _ = writeln!(
        s,
        "{} layers extracted ({} unchanged, left out); total relative Frobenius error {:.4e}; {} parameters, \
         {:.2} MiB as {:?}; wrote {}",
        report.layers.len(),
        report.unchanged.len(),
        report.total_relative_error,
        report.parameters,
        bytes as f64 / (1024.0 * 1024.0),
        dtype,
        out.display()
    );
    s
}
