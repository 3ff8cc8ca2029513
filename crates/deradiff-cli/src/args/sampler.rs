//! `--scheduler` and the sampler's options (`--eta`, `--sigmas`, `--timestep-spacing`,
//! `--steps-offset`, `--final-sigmas`, `--solver-order`, `--zero-snr`) of `demo`, `sample`,
//! `sweep` and `tune`. Without `--scheduler`, `sample` and Stable Diffusion sweeps use the
//! checkpoint's own scheduler (its `scheduler_config.json`: class and options); the analytic
//! testbed uses DDPM. The options override the config's fields, as diffusers names them.

use clap::ValueEnum;
use deradiff_core::{PredictionType, SchedulerConfig, SchedulerKind, TimestepSpacing, TrainingConfig};

use crate::error::{CliError, Result};

/// The sampler `--scheduler` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum SchedulerArg {
    /// DDPM ancestral sampling (fixed_small variance).
    Ddpm,
    /// DDIM (η from --eta; 0 = deterministic).
    Ddim,
    /// Euler ancestral.
    #[value(name = "euler-a")]
    EulerA,
    /// Euler (EulerDiscreteScheduler; SDXL's own).
    Euler,
    /// Heun (two model evaluations per step).
    Heun,
    /// DPM-Solver++ 2M (with --sigmas karras: "DPM++ 2M Karras").
    #[value(name = "dpm++-2m")]
    Dpm2m,
    /// DPM-Solver++ 2M SDE (with --sigmas karras: "DPM++ 2M SDE Karras").
    #[value(name = "dpm++-2m-sde")]
    Dpm2mSde,
    /// DPM-Solver++ 3M.
    #[value(name = "dpm++-3m")]
    Dpm3m,
    /// DPM-Solver++ 3M SDE.
    #[value(name = "dpm++-3m-sde")]
    Dpm3mSde,
    /// UniPC (bh2, order 2 unless --solver-order or the checkpoint's config says otherwise).
    Unipc,
    /// LCM (latent-consistency models, LCM-LoRA: 2–8 steps).
    Lcm,
}

impl SchedulerArg {
    /// The name `--scheduler` takes.
    pub(crate) fn name(self) -> &'static str {
        match self {
            SchedulerArg::Ddpm => "ddpm",
            SchedulerArg::Ddim => "ddim",
            SchedulerArg::EulerA => "euler-a",
            SchedulerArg::Euler => "euler",
            SchedulerArg::Heun => "heun",
            SchedulerArg::Dpm2m => "dpm++-2m",
            SchedulerArg::Dpm2mSde => "dpm++-2m-sde",
            SchedulerArg::Dpm3m => "dpm++-3m",
            SchedulerArg::Dpm3mSde => "dpm++-3m-sde",
            SchedulerArg::Unipc => "unipc",
            SchedulerArg::Lcm => "lcm",
        }
    }

    /// The scheduler class.
    fn kind(self, eta: f64) -> SchedulerKind {
        match self {
            SchedulerArg::Ddpm => SchedulerKind::Ddpm,
            SchedulerArg::Ddim => SchedulerKind::Ddim { eta },
            SchedulerArg::EulerA => SchedulerKind::EulerAncestral,
            SchedulerArg::Euler => SchedulerKind::Euler,
            SchedulerArg::Heun => SchedulerKind::Heun,
            SchedulerArg::Dpm2m | SchedulerArg::Dpm2mSde | SchedulerArg::Dpm3m | SchedulerArg::Dpm3mSde => {
                SchedulerKind::DpmSolverMultistep
            }
            SchedulerArg::Unipc => SchedulerKind::UniPc,
            SchedulerArg::Lcm => SchedulerKind::Lcm,
        }
    }

    /// The options a DPM-Solver++ preset fixes: `(algorithm_type, solver_order)`.
    fn dpm_preset(self) -> Option<(&'static str, usize)> {
        match self {
            SchedulerArg::Dpm2m => Some(("dpmsolver++", 2)),
            SchedulerArg::Dpm2mSde => Some(("sde-dpmsolver++", 2)),
            SchedulerArg::Dpm3m => Some(("dpmsolver++", 3)),
            SchedulerArg::Dpm3mSde => Some(("sde-dpmsolver++", 3)),
            _ => None,
        }
    }
}

/// `--sigmas`: where a σ-space sampler puts its noise levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum SigmasArg {
    /// Karras et al. (ρ = 7): use_karras_sigmas.
    Karras,
    /// Uniform in log σ: use_exponential_sigmas.
    Exponential,
    /// Beta(0.6, 0.6) quantiles: use_beta_sigmas.
    Beta,
    /// At the spacing's timesteps (none of the three).
    Timesteps,
}

/// `--timestep-spacing`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum SpacingArg {
    /// Leading.
    Leading,
    /// Trailing (starts at the last training timestep; for zero-SNR models).
    Trailing,
    /// Linspace.
    Linspace,
}

impl SpacingArg {
    fn spacing(self) -> TimestepSpacing {
        match self {
            SpacingArg::Leading => TimestepSpacing::Leading,
            SpacingArg::Trailing => TimestepSpacing::Trailing,
            SpacingArg::Linspace => TimestepSpacing::Linspace,
        }
    }
}

/// `--final-sigmas`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum FinalSigmasArg {
    /// The last step goes to σ = 0.
    Zero,
    /// The last step goes to the smallest σ of the schedule.
    #[value(name = "sigma-min")]
    SigmaMin,
}

/// The sampler and its options.
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct SamplerArgs {
    /// Sampler. Default: the checkpoint's own (its scheduler_config.json) for Stable Diffusion,
    /// ddpm on the analytic testbed.
    #[arg(long, value_enum)]
    pub(crate) scheduler: Option<SchedulerArg>,
    /// DDIM's η in [0, 1] (only with --scheduler ddim).
    #[arg(long, allow_negative_numbers = true)]
    pub(crate) eta: Option<f64>,
    /// Noise levels of euler, heun, dpm++ and unipc: karras, exponential, beta or timesteps.
    #[arg(long, value_enum)]
    sigmas: Option<SigmasArg>,
    /// Timestep spacing (default: the checkpoint's, else the sampler's).
    #[arg(long, value_enum)]
    timestep_spacing: Option<SpacingArg>,
    /// Offset of leading timesteps (default: the checkpoint's).
    #[arg(long)]
    steps_offset: Option<usize>,
    /// The σ after the last step of euler, dpm++ and unipc.
    #[arg(long, value_enum)]
    final_sigmas: Option<FinalSigmasArg>,
    /// Order of unipc (1, 2 or 3; dpm++ takes it from its name).
    #[arg(long)]
    solver_order: Option<usize>,
    /// Rescale the betas to zero terminal SNR (for v-prediction models trained that way).
    #[arg(long)]
    zero_snr: bool,
}

impl SamplerArgs {
    /// The options given, for messages.
    fn given(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        for (flag, given) in [
            ("--eta", self.eta.is_some()),
            ("--sigmas", self.sigmas.is_some()),
            ("--timestep-spacing", self.timestep_spacing.is_some()),
            ("--steps-offset", self.steps_offset.is_some()),
            ("--final-sigmas", self.final_sigmas.is_some()),
            ("--solver-order", self.solver_order.is_some()),
            ("--zero-snr", self.zero_snr),
        ] {
            if given {
                v.push(flag);
            }
        }
        v
    }

    /// The option checks that need no checkpoint: DDIM's η, the solver order, and every option
    /// against an explicitly chosen `--scheduler`.
    pub(crate) fn check(&self) -> Result<()> {
        if let Some(eta) = self.eta {
            if !(0.0..=1.0).contains(&eta) {
                return Err(CliError::usage(format!("--eta is {eta}; DDIM's η must lie in [0, 1]")));
            }
        }
        if let Some(o) = self.solver_order {
            if !(1..=3).contains(&o) {
                return Err(CliError::usage(format!("--solver-order is {o}; it must be 1, 2 or 3")));
            }
        }
        match self.scheduler {
            Some(arg) => self.check_for(arg.kind(0.0), Some(arg), ""),
            None => Ok(()),
        }
    }

    /// Every option given must apply to `kind`.
    fn check_for(&self, kind: SchedulerKind, arg: Option<SchedulerArg>, default: &str) -> Result<()> {
        use SchedulerKind as K;
        let sigma_space = matches!(kind, K::Euler | K::Heun | K::DpmSolverMultistep | K::UniPc);
        let name = arg.map_or_else(|| format!("{} ({default})", kind.short_name()), |a| a.name().to_string());
        let refuse = |flag: &str, applies: &str| {
            Err(CliError::usage(format!("{flag} applies to {applies}, not to --scheduler {name}")))
        };
        if self.eta.is_some() && !matches!(kind, K::Ddim { .. }) {
            return Err(CliError::usage("--eta applies to --scheduler ddim only"));
        }
        if self.sigmas.is_some() && !sigma_space {
            return refuse("--sigmas", "euler, heun, dpm++ and unipc");
        }
        if self.final_sigmas.is_some() && !matches!(kind, K::Euler | K::DpmSolverMultistep | K::UniPc) {
            return refuse("--final-sigmas", "euler, dpm++ and unipc");
        }
        if self.solver_order.is_some() {
            if arg.and_then(SchedulerArg::dpm_preset).is_some() {
                return Err(CliError::usage(format!(
                    "--solver-order conflicts with --scheduler {name}, whose name fixes the order"
                )));
            }
            if !matches!(kind, K::DpmSolverMultistep | K::UniPc) {
                return refuse("--solver-order", "unipc (and a checkpoint's DPMSolverMultistepScheduler)");
            }
        }
        if self.zero_snr && kind == K::Heun {
            return refuse("--zero-snr", "every sampler but heun (diffusers' Heun has no zero-SNR rescaling)");
        }
        if (self.timestep_spacing.is_some() || self.steps_offset.is_some()) && kind == K::Lcm {
            return refuse("--timestep-spacing and --steps-offset", "every sampler but lcm (which places its own)");
        }
        Ok(())
    }

    /// Writes the options into `config` (diffusers' field names); a `--scheduler dpm++-…`
    /// preset sets `algorithm_type` and `solver_order`.
    fn apply(&self, config: &mut SchedulerConfig) {
        if let Some((algorithm, order)) = self.scheduler.and_then(SchedulerArg::dpm_preset) {
            config.algorithm_type = Some(algorithm.into());
            config.solver_order = Some(order);
        }
        if let Some(s) = self.sigmas {
            config.use_karras_sigmas = Some(s == SigmasArg::Karras);
            config.use_exponential_sigmas = Some(s == SigmasArg::Exponential);
            config.use_beta_sigmas = Some(s == SigmasArg::Beta);
        }
        if let Some(s) = self.timestep_spacing {
            config.timestep_spacing = Some(s.spacing().name().into());
        }
        if let Some(o) = self.steps_offset {
            config.steps_offset = Some(o);
        }
        if let Some(f) = self.final_sigmas {
            config.final_sigmas_type = Some(if f == FinalSigmasArg::Zero { "zero" } else { "sigma_min" }.into());
        }
        if let Some(o) = self.solver_order {
            config.solver_order = Some(o);
        }
        if self.zero_snr {
            config.rescale_betas_zero_snr = Some(true);
        }
    }

    /// The sampler for a checkpoint whose `scheduler_config.json` is `checkpoint`: `--scheduler`,
    /// else the class the file names; the file's options with the given ones on top. A class
    /// deradiff does not implement (SD 1.5's `PNDMScheduler`) falls back to Euler ancestral, and
    /// the returned note says so.
    pub(crate) fn for_checkpoint(
        &self,
        checkpoint: &SchedulerConfig,
    ) -> Result<(SchedulerKind, SchedulerConfig, Option<String>)> {
        self.check()?;
        let (kind, note) = match self.scheduler {
            Some(arg) => (arg.kind(self.eta.unwrap_or(0.0)), None),
            None => match SchedulerKind::from_config(checkpoint) {
                Ok(kind) => (kind, None),
                Err(_) => {
                    let class = checkpoint.class_name.as_deref().unwrap_or("(no _class_name)");
                    let note = format!(
                        "the checkpoint's scheduler {class} is not implemented; sampling with euler-a (choose one \
                         with --scheduler)"
                    );
                    (SchedulerKind::EulerAncestral, Some(note))
                }
            },
        };
        let kind = match kind {
            SchedulerKind::Ddim { .. } => SchedulerKind::Ddim { eta: self.eta.unwrap_or(0.0) },
            k => k,
        };
        self.check_for(kind, self.scheduler, "the checkpoint's")?;
        let mut config = checkpoint.clone();
        self.apply(&mut config);
        Ok((kind, config, note))
    }

    /// The sampler of the analytic testbed: `--scheduler` (default `default`), its options, and
    /// the training schedule of the exact models (`default_training(kind)` with the prediction
    /// type, spacing, offset and zero-SNR rescaling given).
    pub(crate) fn for_testbed(
        &self,
        default: SchedulerKind,
        prediction: PredictionType,
        default_training: impl Fn(SchedulerKind) -> TrainingConfig,
    ) -> Result<(SchedulerKind, SchedulerConfig, TrainingConfig)> {
        self.check()?;
        let kind = self.scheduler.map_or(default, |a| a.kind(self.eta.unwrap_or(0.0)));
        self.check_for(kind, self.scheduler, "the default")?;
        let mut training = default_training(kind);
        training.prediction_type = prediction;
        if let Some(s) = self.timestep_spacing {
            training.timestep_spacing = s.spacing();
        }
        if let Some(o) = self.steps_offset {
            training.steps_offset = o;
        }
        training.rescale_betas_zero_snr = self.zero_snr;
        let mut options = SchedulerConfig::default();
        self.apply(&mut options);
        Ok((kind, options, training))
    }

    /// A short description of the sampler and the options given (`dpm++-2m --sigmas karras`).
    pub(crate) fn describe(&self) -> String {
        let mut s = self.scheduler.map_or("the checkpoint's scheduler", SchedulerArg::name).to_string();
        for flag in self.given() {
            s.push(' ');
            s.push_str(flag);
        }
        s
    }
}
