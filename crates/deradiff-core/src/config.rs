//! diffusers' `scheduler_config.json`, read with serde, and presets for the checkpoints people
//! load.
//!
//! A checkpoint's `scheduler/scheduler_config.json` carries the training schedule (betas,
//! `num_train_timesteps`, `prediction_type`, `steps_offset`, …) whatever sampler class it names.
//! As in diffusers' `Scheduler.from_config`, the sampler a user picks takes the fields it knows
//! from that file and its **own** defaults for the fields the file lacks (so an SD 1.5 config,
//! which has no `timestep_spacing`, gives `leading` to DDPM and DDIM but `linspace` to Euler
//! ancestral, exactly as in diffusers). Options that would change the numbers and that deradiff
//! does not implement (`thresholding`, `use_flow_sigmas`, `use_dynamic_shifting`, `solver_p`, …)
//! are rejected, never ignored.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::schedule::{BetaSchedule, PredictionType, TimestepSpacing};

/// The fields of a diffusers `scheduler_config.json` that matter to deradiff's samplers.
/// Unknown fields are ignored; every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SchedulerConfig {
    /// The scheduler class the checkpoint was saved with (informational).
    #[serde(rename = "_class_name", default, skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,
    /// Number of training timesteps `T`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_train_timesteps: Option<usize>,
    /// First beta.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beta_start: Option<f64>,
    /// Last beta.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beta_end: Option<f64>,
    /// `linear`, `scaled_linear` or `squaredcos_cap_v2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beta_schedule: Option<String>,
    /// Explicit betas (overrides `beta_schedule`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trained_betas: Option<Vec<f64>>,
    /// `epsilon`, `v_prediction` or `sample`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prediction_type: Option<String>,
    /// `leading`, `trailing` or `linspace`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestep_spacing: Option<String>,
    /// Offset added to leading timesteps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps_offset: Option<usize>,
    /// DDPM: `fixed_small`, `fixed_small_log`, `fixed_large`, `learned`, `learned_range`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variance_type: Option<String>,
    /// DDPM / DDIM: clamp the predicted `x₀` to `[-clip_sample_range, clip_sample_range]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip_sample: Option<bool>,
    /// Range of `clip_sample`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip_sample_range: Option<f64>,
    /// DDIM: use `ᾱ = 1` (instead of `ᾱ_0`) past the last step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_alpha_to_one: Option<bool>,
    /// Dynamic thresholding (Imagen); not implemented, rejected when true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thresholding: Option<bool>,
    /// Rescale the betas to zero terminal SNR (Lin et al. 2023).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rescale_betas_zero_snr: Option<bool>,
    /// Euler: `linear` or `log_linear` interpolation of σ.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interpolation_type: Option<String>,
    /// Euler: `discrete` (or `continuous`, refused with v-prediction).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestep_type: Option<String>,
    /// σ-space samplers: Karras et al.'s σ.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_karras_sigmas: Option<bool>,
    /// σ-space samplers: σ uniform in log σ.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_exponential_sigmas: Option<bool>,
    /// σ-space samplers: σ at Beta(0.6, 0.6) quantiles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_beta_sigmas: Option<bool>,
    /// Euler, UniPC: the smallest σ of a Karras / exponential / beta schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sigma_min: Option<f64>,
    /// Euler, UniPC: the largest σ of a Karras / exponential / beta schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sigma_max: Option<f64>,
    /// Euler, DPM-Solver, UniPC: `zero` or `sigma_min`, the σ after the last step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_sigmas_type: Option<String>,
    /// DPM-Solver, UniPC: the solver order (1, 2 or 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub solver_order: Option<usize>,
    /// DPM-Solver: `dpmsolver++` or `sde-dpmsolver++`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm_type: Option<String>,
    /// DPM-Solver: `midpoint` or `heun`; UniPC: `bh1` or `bh2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub solver_type: Option<String>,
    /// DPM-Solver, UniPC: lower the order at the last steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lower_order_final: Option<bool>,
    /// DPM-Solver: a first-order last step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub euler_at_final: Option<bool>,
    /// DPM-Solver: σ uniform in λ = −log σ (Lu et al.).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_lu_lambdas: Option<bool>,
    /// DPM-Solver: timesteps with λ below this are cut (`-Infinity` in diffusers' files: none).
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "non_finite_f64")]
    pub lambda_min_clipped: Option<f64>,
    /// UniPC: solve for x₀ (true) or ε.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predict_x0: Option<bool>,
    /// UniPC: steps whose corrector is skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_corrector: Option<Vec<usize>>,
    /// UniPC: an external predictor scheduler; not implemented, rejected when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub solver_p: Option<serde_json::Value>,
    /// DPM-Solver, UniPC: flow-matching σ; not implemented, rejected when true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_flow_sigmas: Option<bool>,
    /// DPM-Solver, UniPC: resolution-dependent shifting; not implemented, rejected when true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_dynamic_shifting: Option<bool>,
    /// LCM: the number of steps of the distillation schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_inference_steps: Option<usize>,
    /// LCM: the timestep scale of the consistency boundary condition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestep_scaling: Option<f64>,
}

/// `lambda_min_clipped`: a number, or the strings `"-Infinity"` / `"Infinity"` that
/// [`SchedulerConfig::from_json`] makes of Python's bare `-Infinity` / `Infinity` tokens.
fn non_finite_f64<'de, D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Option<f64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NumberOrToken {
        Number(f64),
        Token(String),
    }
    match Option::<NumberOrToken>::deserialize(deserializer)? {
        None => Ok(None),
        Some(NumberOrToken::Number(v)) => Ok(Some(v)),
        Some(NumberOrToken::Token(t)) => match t.as_str() {
            "-Infinity" => Ok(Some(f64::NEG_INFINITY)),
            "Infinity" => Ok(Some(f64::INFINITY)),
            other => Err(serde::de::Error::custom(format!("expected a number or -Infinity, got the string {other:?}"))),
        },
    }
}

/// Python's `json.dumps` writes non-finite floats as the bare tokens `-Infinity`, `Infinity` and
/// `NaN` (diffusers' DPM-Solver configs have `"lambda_min_clipped": -Infinity`), which are not
/// JSON. Outside strings they become the strings `"-Infinity"`, `"Infinity"`, `"NaN"`: a field
/// that accepts them says so, any other field fails to parse with a type error.
pub(crate) fn python_json(text: &str) -> std::borrow::Cow<'_, str> {
    if !(text.contains("Infinity") || text.contains("NaN")) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    let mut in_string = false;
    let mut escaped = false;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            rest = &rest[c.len_utf8()..];
            continue;
        }
        if c == '"' {
            in_string = true;
        }
        let token = ["-Infinity", "Infinity", "NaN"].into_iter().find(|t| rest.starts_with(t));
        if let Some(t) = token {
            out.push('"');
            out.push_str(t);
            out.push('"');
            rest = &rest[t.len()..];
        } else {
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Reads a whole text file, an I/O failure being [`Error::Io`] with the path.
pub(crate) fn read_text(path: &std::path::Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })
}

/// The presets' JSON: the `scheduler/scheduler_config.json` files of the public checkpoints.
const SD15_JSON: &str = r#"{"_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
  "beta_start": 0.00085, "clip_sample": false, "num_train_timesteps": 1000, "set_alpha_to_one": false,
  "skip_prk_steps": true, "steps_offset": 1, "trained_betas": null}"#;
const SD21_JSON: &str = r#"{"_class_name": "DDIMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
  "beta_start": 0.00085, "clip_sample": false, "num_train_timesteps": 1000, "prediction_type": "v_prediction",
  "set_alpha_to_one": false, "skip_prk_steps": true, "steps_offset": 1, "trained_betas": null}"#;
const SD21_BASE_JSON: &str = r#"{"_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
  "beta_start": 0.00085, "clip_sample": false, "num_train_timesteps": 1000, "prediction_type": "epsilon",
  "set_alpha_to_one": false, "skip_prk_steps": true, "steps_offset": 1, "trained_betas": null}"#;
const SDXL_JSON: &str = r#"{"_class_name": "EulerDiscreteScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
  "beta_start": 0.00085, "clip_sample": false, "interpolation_type": "linear", "num_train_timesteps": 1000,
  "prediction_type": "epsilon", "sample_max_value": 1.0, "set_alpha_to_one": false, "skip_prk_steps": true,
  "steps_offset": 1, "timestep_spacing": "leading", "trained_betas": null, "use_karras_sigmas": false}"#;

impl SchedulerConfig {
    /// Parses a `scheduler_config.json` document. A malformed document is
    /// [`Error::ConfigParse`].
    pub fn from_json(json: &str) -> Result<Self> {
        Ok(serde_json::from_str(&python_json(json))?)
    }

    /// Reads the config from an already parsed JSON value (for example one object of a larger
    /// document, or `model_index.json`-style tooling). A value of the wrong shape is
    /// [`Error::ConfigParse`].
    pub fn from_value(value: &serde_json::Value) -> Result<Self> {
        Ok(Self::deserialize(value)?)
    }

    /// Reads and parses a `scheduler_config.json` file.
    ///
    /// A file that cannot be read is [`Error::Io`]; one that is not a valid config is
    /// [`Error::ConfigFileParse`]; both carry the path and the underlying error as their
    /// `source`.
    pub fn from_file(path: impl AsRef<std::path::Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = read_text(path)?;
        serde_json::from_str(&python_json(&text))
            .map_err(|source| Error::ConfigFileParse { path: path.to_path_buf(), source })
    }

    fn preset(json: &str) -> Self {
        // The presets are constants of this crate, covered by tests.
        serde_json::from_str(json).expect("built-in scheduler preset is valid JSON")
    }

    /// `runwayml/stable-diffusion-v1-5` (scaled-linear 0.00085→0.012, ε, steps_offset 1).
    pub fn stable_diffusion_v1_5() -> Self {
        Self::preset(SD15_JSON)
    }

    /// `stabilityai/stable-diffusion-2-1` (768 px, v-prediction).
    pub fn stable_diffusion_v2_1() -> Self {
        Self::preset(SD21_JSON)
    }

    /// `stabilityai/stable-diffusion-2-1-base` (512 px, ε).
    pub fn stable_diffusion_v2_1_base() -> Self {
        Self::preset(SD21_BASE_JSON)
    }

    /// `stabilityai/stable-diffusion-xl-base-1.0` (leading spacing, steps_offset 1).
    pub fn stable_diffusion_xl() -> Self {
        Self::preset(SDXL_JSON)
    }

    pub(crate) fn reject_unsupported(&self) -> Result<()> {
        if self.thresholding == Some(true) {
            return Err(Error::Unsupported(
                "thresholding = true (dynamic thresholding) is not implemented; set it to false".into(),
            ));
        }
        if self.use_flow_sigmas == Some(true) {
            return Err(Error::Unsupported(
                "use_flow_sigmas = true (flow-matching σ) is not implemented; set it to false".into(),
            ));
        }
        if self.use_dynamic_shifting == Some(true) {
            return Err(Error::Unsupported("use_dynamic_shifting = true is not implemented; set it to false".into()));
        }
        if self.solver_p.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(Error::Unsupported(
                "solver_p (an external UniPC predictor) is not implemented; remove it".into(),
            ));
        }
        if self.timestep_type.as_deref().is_some_and(|t| t != "discrete" && t != "continuous") {
            return Err(Error::InvalidConfig(format!(
                "timestep_type '{}' is not one of 'discrete', 'continuous'",
                self.timestep_type.as_deref().unwrap_or_default()
            )));
        }
        Ok(())
    }

    /// The training schedule, filling missing fields with the given sampler class's defaults.
    pub(crate) fn training(&self, defaults: &TrainingConfig) -> Result<TrainingConfig> {
        self.reject_unsupported()?;
        let num_train_timesteps = self.num_train_timesteps.unwrap_or(defaults.num_train_timesteps);
        let (d_start, d_end) = match &defaults.beta_schedule {
            BetaSchedule::Linear { beta_start, beta_end } | BetaSchedule::ScaledLinear { beta_start, beta_end } => {
                (*beta_start, *beta_end)
            }
            _ => (1e-4, 0.02),
        };
        let beta_start = self.beta_start.unwrap_or(d_start);
        let beta_end = self.beta_end.unwrap_or(d_end);
        let beta_schedule = if let Some(betas) = &self.trained_betas {
            BetaSchedule::Trained(betas.clone())
        } else {
            match self.beta_schedule.as_deref() {
                None => defaults.beta_schedule.clone(),
                Some("linear") => BetaSchedule::Linear { beta_start, beta_end },
                Some("scaled_linear") => BetaSchedule::ScaledLinear { beta_start, beta_end },
                Some("squaredcos_cap_v2") => BetaSchedule::SquaredCosCapV2,
                Some(other) => {
                    return Err(Error::InvalidConfig(format!(
                        "beta_schedule '{other}' is not one of 'linear', 'scaled_linear', 'squaredcos_cap_v2'"
                    )))
                }
            }
        };
        Ok(TrainingConfig {
            num_train_timesteps,
            beta_schedule,
            prediction_type: match &self.prediction_type {
                Some(p) => PredictionType::from_name(p)?,
                None => defaults.prediction_type,
            },
            timestep_spacing: match &self.timestep_spacing {
                Some(s) => TimestepSpacing::from_name(s)?,
                None => defaults.timestep_spacing,
            },
            steps_offset: self.steps_offset.unwrap_or(defaults.steps_offset),
            rescale_betas_zero_snr: self.rescale_betas_zero_snr.unwrap_or(defaults.rescale_betas_zero_snr),
        })
    }

    /// The fields of a [`TrainingConfig`] as diffusers writes them (betas, `num_train_timesteps`,
    /// `prediction_type`, `timestep_spacing`, `steps_offset`, `rescale_betas_zero_snr`), every
    /// other field unset: with [`SchedulerKind::build`](crate::SchedulerKind::build) it gives
    /// any sampler on that training schedule.
    ///
    /// ```
    /// use deradiff_core::*;
    ///
    /// let training = TrainingConfig::stable_diffusion(PredictionType::Epsilon, TimestepSpacing::Leading, 1);
    /// let mut config = SchedulerConfig::from_training(&training);
    /// config.use_karras_sigmas = Some(true);
    /// let dpm = SchedulerKind::DpmSolverMultistep.build(&config, 20)?;
    /// assert_eq!(dpm.timesteps()[0], 999.0);
    /// # Ok::<(), deradiff_core::Error>(())
    /// ```
    pub fn from_training(training: &TrainingConfig) -> Self {
        let mut config = Self::default();
        config.set_training(training);
        config
    }

    /// Overwrites the training-schedule fields with `training`'s (see
    /// [`SchedulerConfig::from_training`]); the sampler options are kept.
    pub fn set_training(&mut self, training: &TrainingConfig) {
        self.num_train_timesteps = Some(training.num_train_timesteps);
        let (schedule, start, end, betas) = match &training.beta_schedule {
            BetaSchedule::Linear { beta_start, beta_end } => ("linear", Some(*beta_start), Some(*beta_end), None),
            BetaSchedule::ScaledLinear { beta_start, beta_end } => {
                ("scaled_linear", Some(*beta_start), Some(*beta_end), None)
            }
            BetaSchedule::SquaredCosCapV2 => ("squaredcos_cap_v2", None, None, None),
            BetaSchedule::Trained(b) => ("linear", None, None, Some(b.clone())),
        };
        self.beta_schedule = Some(schedule.into());
        self.beta_start = start;
        self.beta_end = end;
        self.trained_betas = betas;
        self.prediction_type = Some(training.prediction_type.name().into());
        self.timestep_spacing = Some(training.timestep_spacing.name().into());
        self.steps_offset = Some(training.steps_offset);
        self.rescale_betas_zero_snr = Some(training.rescale_betas_zero_snr);
    }

    /// The σ spacing named by `use_karras_sigmas` / `use_exponential_sigmas` / `use_beta_sigmas`.
    pub(crate) fn sigma_spacing(&self) -> Result<crate::sigmas::SigmaSpacing> {
        crate::sigmas::SigmaSpacing::from_flags(
            self.use_karras_sigmas.unwrap_or(false),
            self.use_exponential_sigmas.unwrap_or(false),
            self.use_beta_sigmas.unwrap_or(false),
        )
    }

    /// `final_sigmas_type` (default `zero`).
    pub(crate) fn final_sigma(&self) -> Result<crate::sigmas::FinalSigma> {
        self.final_sigmas_type
            .as_deref()
            .map_or(Ok(crate::sigmas::FinalSigma::Zero), crate::sigmas::FinalSigma::from_name)
    }

    /// A positive finite `sigma_min` / `sigma_max`, if given.
    pub(crate) fn sigma_bound(value: Option<f64>, name: &str) -> Result<Option<f64>> {
        match value {
            Some(v) if !(v > 0.0 && v.is_finite()) => {
                Err(Error::InvalidConfig(format!("{name} must be a positive number, got {v}")))
            }
            v => Ok(v),
        }
    }

    /// `solver_order` in 1..=3 (default `default`).
    pub(crate) fn order(&self, default: usize) -> Result<usize> {
        match self.solver_order.unwrap_or(default) {
            o @ 1..=3 => Ok(o),
            o => Err(Error::InvalidConfig(format!("solver_order must be 1, 2 or 3, got {o}"))),
        }
    }

    /// `Some(range)` if `clip_sample` is on (diffusers default given), else `None`.
    pub(crate) fn clip(&self, default_on: bool) -> Result<Option<f64>> {
        if !self.clip_sample.unwrap_or(default_on) {
            return Ok(None);
        }
        let range = self.clip_sample_range.unwrap_or(1.0);
        if !(range > 0.0 && range.is_finite()) {
            return Err(Error::InvalidConfig(format!("clip_sample_range must be positive, got {range}")));
        }
        Ok(Some(range))
    }
}

/// The part of a scheduler's configuration that describes the trained model and the placement of
/// inference steps; shared by every sampler.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingConfig {
    /// Number of training timesteps `T`.
    pub num_train_timesteps: usize,
    /// The betas.
    pub beta_schedule: BetaSchedule,
    /// What the model predicts.
    pub prediction_type: PredictionType,
    /// Where inference steps are placed.
    pub timestep_spacing: TimestepSpacing,
    /// Offset of leading timesteps.
    pub steps_offset: usize,
    /// Rescale the betas to zero terminal SNR (Lin et al. 2023; diffusers'
    /// `rescale_betas_zero_snr`): `ᾱ_{T−1} = 0`, so the first step starts from pure noise. Meant
    /// for v-prediction models trained that way; ε-prediction is undefined at `ᾱ = 0` (an error
    /// where a step reaches it).
    pub rescale_betas_zero_snr: bool,
}

impl TrainingConfig {
    /// diffusers' defaults: `T = 1000`, linear betas 1e-4 → 0.02, ε-prediction, the given spacing,
    /// no offset.
    pub fn diffusers_default(timestep_spacing: TimestepSpacing) -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_schedule: BetaSchedule::Linear { beta_start: 1e-4, beta_end: 0.02 },
            prediction_type: PredictionType::Epsilon,
            timestep_spacing,
            steps_offset: 0,
            rescale_betas_zero_snr: false,
        }
    }

    /// The Stable Diffusion training schedule (scaled-linear 0.00085 → 0.012, T = 1000).
    pub fn stable_diffusion(
        prediction_type: PredictionType,
        timestep_spacing: TimestepSpacing,
        steps_offset: usize,
    ) -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_schedule: BetaSchedule::ScaledLinear { beta_start: 0.00085, beta_end: 0.012 },
            prediction_type,
            timestep_spacing,
            steps_offset,
            rescale_betas_zero_snr: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_parse() {
        for c in [
            SchedulerConfig::stable_diffusion_v1_5(),
            SchedulerConfig::stable_diffusion_v2_1(),
            SchedulerConfig::stable_diffusion_v2_1_base(),
            SchedulerConfig::stable_diffusion_xl(),
        ] {
            assert_eq!(c.num_train_timesteps, Some(1000));
            assert_eq!(c.steps_offset, Some(1));
        }
        assert_eq!(SchedulerConfig::stable_diffusion_v2_1().prediction_type.as_deref(), Some("v_prediction"));
    }

    #[test]
    fn missing_fields_take_the_sampler_defaults() {
        let sd15 = SchedulerConfig::stable_diffusion_v1_5();
        let euler = sd15.training(&TrainingConfig::diffusers_default(TimestepSpacing::Linspace)).unwrap();
        assert_eq!(euler.timestep_spacing, TimestepSpacing::Linspace);
        let ddim = sd15.training(&TrainingConfig::diffusers_default(TimestepSpacing::Leading)).unwrap();
        assert_eq!(ddim.timestep_spacing, TimestepSpacing::Leading);
        assert_eq!(ddim.beta_schedule, BetaSchedule::ScaledLinear { beta_start: 0.00085, beta_end: 0.012 });
    }

    #[test]
    fn unsupported_and_malformed_options_are_errors() {
        let c = SchedulerConfig::from_json(r#"{"thresholding": true}"#).unwrap();
        assert!(matches!(c.reject_unsupported(), Err(Error::Unsupported(_))));
        let c = SchedulerConfig::from_json(r#"{"beta_schedule": "sigmoid"}"#).unwrap();
        assert!(c.training(&TrainingConfig::diffusers_default(TimestepSpacing::Leading)).is_err());
        assert!(SchedulerConfig::from_json("{ not json").is_err());
        assert!(SchedulerConfig::from_json(r#"{"steps_offset": -1}"#).is_err());
    }
}
