//! Choosing a scheduler by name or from a `scheduler_config.json`, reading configs from values
//! and files with typed errors, and reading a boxed scheduler's schedule (ᾱ, σ).

use std::path::PathBuf;
use std::str::FromStr;

use deradiff_core::*;
use serde_json::json;

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("deradiff-core-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn scheduler_kind_parses_class_and_short_names() {
    for (name, kind) in [
        ("DDPMScheduler", SchedulerKind::Ddpm),
        ("DDIMScheduler", SchedulerKind::Ddim { eta: 0.0 }),
        ("EulerAncestralDiscreteScheduler", SchedulerKind::EulerAncestral),
        ("EulerDiscreteScheduler", SchedulerKind::Euler),
        ("HeunDiscreteScheduler", SchedulerKind::Heun),
        ("DPMSolverMultistepScheduler", SchedulerKind::DpmSolverMultistep),
        ("UniPCMultistepScheduler", SchedulerKind::UniPc),
        ("LCMScheduler", SchedulerKind::Lcm),
        ("ddpm", SchedulerKind::Ddpm),
        ("ddim", SchedulerKind::Ddim { eta: 0.0 }),
        ("euler-a", SchedulerKind::EulerAncestral),
        ("euler", SchedulerKind::Euler),
        ("heun", SchedulerKind::Heun),
        ("dpm++", SchedulerKind::DpmSolverMultistep),
        ("unipc", SchedulerKind::UniPc),
        ("lcm", SchedulerKind::Lcm),
    ] {
        assert_eq!(name.parse::<SchedulerKind>().unwrap(), kind, "{name}");
        assert_eq!(SchedulerKind::from_str(kind.class_name()).unwrap(), kind);
        assert_eq!(SchedulerKind::from_str(kind.short_name()).unwrap(), kind);
        assert!(SchedulerKind::ACCEPTED_NAMES.contains(&name));
    }
    assert_eq!(SchedulerKind::ALL.len() * 2, SchedulerKind::ACCEPTED_NAMES.len());
    for bad in ["PNDMScheduler", "KDPM2DiscreteScheduler", "Euler", "DDIM", "dpm++2m", ""] {
        match bad.parse::<SchedulerKind>() {
            Err(e @ Error::UnknownScheduler { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains(&format!("'{bad}'")), "{msg}");
                for accepted in SchedulerKind::ACCEPTED_NAMES {
                    assert!(msg.contains(accepted), "{msg} lacks {accepted}");
                }
            }
            other => panic!("{bad:?}: expected UnknownScheduler, got {other:?}"),
        }
    }
}

#[test]
fn scheduler_kind_from_a_config() {
    let v = json!({"_class_name": "EulerAncestralDiscreteScheduler", "num_train_timesteps": 1000});
    assert_eq!(SchedulerKind::from_config_value(&v).unwrap(), SchedulerKind::EulerAncestral);
    assert_eq!(
        SchedulerKind::from_config(&SchedulerConfig::stable_diffusion_v2_1()).unwrap(),
        SchedulerKind::Ddim { eta: 0.0 }
    );
    // SD 1.5 ships a PNDMScheduler config: named in the error.
    let err = SchedulerKind::from_config(&SchedulerConfig::stable_diffusion_v1_5()).unwrap_err();
    assert!(matches!(&err, Error::UnknownScheduler { name } if name == "PNDMScheduler"), "{err:?}");
    for v in [json!({"num_train_timesteps": 1000}), json!({"_class_name": 3}), json!([1, 2])] {
        assert!(matches!(SchedulerKind::from_config_value(&v), Err(Error::MissingSchedulerClass { path: None })));
    }
    assert!(matches!(
        SchedulerKind::from_config(&SchedulerConfig::default()),
        Err(Error::MissingSchedulerClass { path: None })
    ));

    let dir = TempDir::new("kind");
    let ok = dir.write("ok.json", r#"{"_class_name": "DDPMScheduler", "beta_schedule": "linear"}"#);
    assert_eq!(SchedulerKind::from_config_file(&ok).unwrap(), SchedulerKind::Ddpm);
    let pndm = dir.write("pndm.json", r#"{"_class_name": "PNDMScheduler"}"#);
    assert!(
        matches!(SchedulerKind::from_config_file(&pndm), Err(Error::UnknownScheduler { name }) if name == "PNDMScheduler")
    );
    let missing = dir.write("missing.json", r#"{"beta_schedule": "linear"}"#);
    match SchedulerKind::from_config_file(&missing) {
        Err(e @ Error::MissingSchedulerClass { path: Some(_) }) => {
            assert!(e.to_string().contains("missing.json") && e.to_string().contains("_class_name"), "{e}");
        }
        other => panic!("expected MissingSchedulerClass with the path, got {other:?}"),
    }
    let broken = dir.write("broken.json", "{ not json");
    assert!(
        matches!(SchedulerKind::from_config_file(&broken), Err(Error::ConfigFileParse { path, .. }) if path == broken)
    );
    let absent = dir.0.join("absent.json");
    assert!(matches!(SchedulerKind::from_config_file(&absent), Err(Error::Io { path, .. }) if path == absent));
}

#[test]
fn scheduler_config_from_value_and_file_keep_errors_apart() {
    let v = json!({"_class_name": "DDIMScheduler", "num_train_timesteps": 500, "prediction_type": "v_prediction"});
    let c = SchedulerConfig::from_value(&v).unwrap();
    assert_eq!(c, SchedulerConfig::from_json(&v.to_string()).unwrap());
    assert_eq!((c.num_train_timesteps, c.prediction_type.as_deref()), (Some(500), Some("v_prediction")));
    assert!(matches!(SchedulerConfig::from_value(&json!({"steps_offset": -1})), Err(Error::ConfigParse(_))));
    assert!(matches!(SchedulerConfig::from_value(&json!("text")), Err(Error::ConfigParse(_))));

    let dir = TempDir::new("config");
    let ok = dir.write("scheduler_config.json", &v.to_string());
    assert_eq!(SchedulerConfig::from_file(&ok).unwrap(), c);

    // Not there: an I/O error with its path and the io::Error as source.
    let absent = dir.0.join("nope.json");
    let err = SchedulerConfig::from_file(&absent).unwrap_err();
    match &err {
        Error::Io { path, source } => {
            assert_eq!(path, &absent);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected Io, got {other:?}"),
    }
    assert!(err.to_string().contains("nope.json"));
    let source = std::error::Error::source(&err).expect("the io::Error is the source");
    assert!(source.downcast_ref::<std::io::Error>().is_some());

    // There but malformed: a parse error with its path, line and column.
    let bad = dir.write("bad.json", "{\n  \"num_train_timesteps\": \"many\"\n}");
    let err = SchedulerConfig::from_file(&bad).unwrap_err();
    match &err {
        Error::ConfigFileParse { path, source } => {
            assert_eq!(path, &bad);
            assert_eq!(source.line(), 2);
        }
        other => panic!("expected ConfigFileParse, got {other:?}"),
    }
    assert!(err.to_string().contains("bad.json"), "{err}");
    assert!(std::error::Error::source(&err).unwrap().downcast_ref::<serde_json::Error>().is_some());
}

#[test]
fn a_boxed_scheduler_exposes_its_schedule() {
    let config = SchedulerConfig::stable_diffusion_v1_5();
    let training =
        NoiseSchedule::new(&BetaSchedule::ScaledLinear { beta_start: 0.00085, beta_end: 0.012 }, 1000).unwrap();
    for kind in [SchedulerKind::Ddpm, SchedulerKind::Ddim { eta: 0.5 }, SchedulerKind::EulerAncestral] {
        let s = kind.build(&config, 30).unwrap();
        assert_eq!(s.alphas_cumprod(), training.alphas_cumprod(), "{kind:?}");
        assert_eq!(s.noise_schedule().unwrap(), &training, "{kind:?}");
        assert_eq!(s.timesteps().len(), 30);
        match kind {
            SchedulerKind::EulerAncestral => {
                let sigmas = s.sigmas().expect("Euler ancestral has sigmas");
                assert_eq!(sigmas.len(), 31);
                assert_eq!(sigmas[30], 0.0);
                assert!(sigmas.windows(2).all(|w| w[0] > w[1]));
                // σ of each step is σ(t) of the training schedule, to float32 precision.
                for (&sigma, &t) in sigmas.iter().zip(s.timesteps()) {
                    assert_eq!(sigma, f64::from(sigma as f32));
                    let exact = training.sigma_at(t);
                    assert!((sigma - exact).abs() <= 1e-4 * exact, "σ({t}) = {sigma}, exact {exact}");
                }
                assert_eq!(s.init_noise_sigma(), sigmas[0]);
            }
            _ => assert!(s.sigmas().is_none(), "{kind:?}"),
        }
    }
}

/// A scheduler written outside the crate compiles without the new methods (they have defaults).
#[test]
fn scheduler_trait_defaults() {
    struct Identity(Vec<f64>);
    impl Scheduler for Identity {
        fn num_steps(&self) -> usize {
            self.0.len()
        }
        fn timesteps(&self) -> &[f64] {
            &self.0
        }
        fn init_noise_sigma(&self) -> f64 {
            1.0
        }
        fn scale_model_input(&self, x: &candle_core::Tensor, _step: usize) -> Result<candle_core::Tensor> {
            Ok(x.clone())
        }
        fn posterior(&self, x: &candle_core::Tensor, _o: &candle_core::Tensor, _step: usize) -> Result<Posterior> {
            Ok(Posterior::scalar(x.clone(), 0.0))
        }
        fn prediction_type(&self) -> PredictionType {
            PredictionType::Sample
        }
    }
    let s = Identity(vec![2.0, 1.0]);
    assert!(s.noise_schedule().is_none());
    assert!(s.alphas_cumprod().is_empty());
    assert!(s.sigmas().is_none());
}

/// diffusers' `EulerAncestralDiscreteScheduler.set_timesteps(n)` with linspace spacing keeps
/// float32 timesteps: `np.linspace(0, 999, n, dtype=np.float32)[::-1]`.
#[test]
fn euler_linspace_timesteps_are_float32() {
    let s = SchedulerKind::EulerAncestral.build(&SchedulerConfig::stable_diffusion_v1_5(), 30).unwrap();
    // numpy 2.4: [999.0, 964.5516967773438, 930.1034545898438, …]
    assert_eq!(&s.timesteps()[..3], &[999.0, 964.551_696_777_343_8, 930.103_454_589_843_8]);
    // diffusers 0.42.1 (torch 2.15, CPU): sigmas[:3] and init_noise_sigma, to the float32 ulp
    // (torch's float32 square root, MKL's, is not always correctly rounded; ours is).
    let sigmas = s.sigmas().unwrap();
    let ulps = |a: f64, b: f64| (a as f32).to_bits().abs_diff((b as f32).to_bits());
    assert_eq!(ulps(sigmas[0], 14.614_646_911_621_094), 0);
    assert!(ulps(sigmas[1], 11.917_562_484_741_211) <= 1);
    assert!(ulps(sigmas[2], 9.814_177_513_122_559) <= 1);
    assert_eq!(s.init_noise_sigma(), sigmas[0]);
    let s50 = SchedulerKind::EulerAncestral.build(&SchedulerConfig::stable_diffusion_v1_5(), 50).unwrap();
    assert_eq!(s50.timesteps()[1], 978.612_243_652_343_8);
}

#[test]
fn absurd_training_timesteps_are_an_error_before_allocation() {
    let json = r#"{"_class_name": "EulerAncestralDiscreteScheduler", "num_train_timesteps": 1000000000000}"#;
    let config = SchedulerConfig::from_json(json).unwrap();
    for kind in [SchedulerKind::Ddpm, SchedulerKind::Ddim { eta: 0.0 }, SchedulerKind::EulerAncestral] {
        let Err(err) = kind.build(&config, 10) else { panic!("{kind:?} built") };
        let err = err.to_string();
        assert!(err.contains(&MAX_TRAIN_TIMESTEPS.to_string()), "{err}");
    }
}

/// Found by fuzzing (fuzz/findings/scheduler-steps-offset-overflow.json): a leading-spacing
/// `steps_offset` near `usize::MAX` overflowed the timestep arithmetic. It is an error that names
/// the option.
#[test]
fn a_huge_steps_offset_is_an_error_not_an_overflow() {
    for offset in [usize::MAX, usize::MAX - 1, 1 << 40, 1000] {
        let err = inference_timesteps(TimestepSpacing::Leading, 1000, 50, offset, false).unwrap_err();
        assert!(matches!(&err, Error::InvalidConfig(m) if m.contains("steps_offset")), "{offset}: {err}");
    }
    assert_eq!(inference_timesteps(TimestepSpacing::Leading, 1000, 50, 1, false).unwrap()[0], 981.0);
    let v = json!({"_class_name": "EulerAncestralDiscreteScheduler", "timestep_spacing": "leading",
                   "steps_offset": u64::MAX});
    if let Ok(config) = SchedulerConfig::from_value(&v) {
        assert!(SchedulerKind::Ddpm.build(&config, 50).is_err());
    }
}
