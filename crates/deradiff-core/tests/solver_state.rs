//! The multistep API: `SolverState` driven in order and out of order, `posterior` alone where a
//! step needs history, the fused step as the solver on the weighted outputs, and every new
//! scheduler option that is refused (never ignored).

use candle_core::{DType, Device, Tensor};
use deradiff_core::*;

fn t(v: &[f64]) -> Tensor {
    Tensor::from_vec(v.to_vec(), (1, v.len()), &Device::Cpu).unwrap()
}

fn values(x: &Tensor) -> Vec<f64> {
    x.flatten_all().unwrap().to_vec1::<f64>().unwrap()
}

fn config(json: &str) -> SchedulerConfig {
    SchedulerConfig::from_json(json).unwrap()
}

fn dpm(json: &str, steps: usize) -> Box<dyn Scheduler> {
    SchedulerKind::DpmSolverMultistep.build(&config(json), steps).unwrap()
}

#[test]
fn solver_state_must_be_driven_in_order() {
    let s = dpm("{}", 5);
    let mut state = SolverState::new(s.as_ref(), 2).unwrap();
    let (x, o) = (t(&[0.5, -1.0]), t(&[0.1, 0.2]));
    assert!(matches!(state.advance(&[0.5, 0.5]), Err(Error::StepOrder { expected: 0, .. })));
    assert!(matches!(state.posteriors(&x, &[o.clone(), o.clone()], 1), Err(Error::StepOrder { expected: 0, .. })));
    assert!(matches!(state.posteriors(&x, std::slice::from_ref(&o), 0), Err(Error::WeightCountMismatch { .. })));
    state.posteriors(&x, &[o.clone(), o.clone()], 0).unwrap();
    let e = state.posteriors(&x, &[o.clone(), o.clone()], 0).unwrap_err();
    assert!(matches!(e, Error::StepOrder { expected: 0, .. }), "{e}");
    assert!(e.to_string().contains("before advance()"), "{e}");
    assert!(matches!(state.advance(&[1.0]), Err(Error::WeightCountMismatch { .. })));
    state.advance(&[0.5, 0.5]).unwrap();
    assert_eq!(state.next_step(), 1);
    state.posteriors(&x, &[o.clone(), o.clone()], 1).unwrap();
    state.advance(&[0.5, 0.5]).unwrap();
    assert_eq!(state.next_step(), 2);
    assert!(SolverState::new(s.as_ref(), 0).is_err());
    assert!(SolverState::weighted_mean(&[1.0, -1.0], &[x.clone(), x.clone()]).is_err());
    assert_eq!(values(&SolverState::weighted_mean(&[0.0, 2.0], &[o.clone(), x.clone()]).unwrap()), values(&x));
}

#[test]
fn posterior_alone_is_exact_at_step_zero_and_an_error_where_history_is_needed() {
    let (x, o) = (t(&[0.5, -1.0]), t(&[0.1, 0.2]));
    let s = dpm("{}", 5);
    let at0 = s.posterior(&x, &o, 0).unwrap();
    let mut state = SolverState::new(s.as_ref(), 1).unwrap();
    assert_eq!(values(&state.posteriors(&x, std::slice::from_ref(&o), 0).unwrap()[0].mean), values(&at0.mean));
    let e = s.posterior(&x, &o, 1).unwrap_err();
    assert!(matches!(e, Error::MissingHistory { scheduler: "DPMSolverMultistepScheduler", step: 1, .. }), "{e}");
    assert!(e.to_string().contains("SolverState"), "{e}");
    for kind in [SchedulerKind::UniPc, SchedulerKind::Heun] {
        let s = kind.build(&SchedulerConfig::default(), 4).unwrap();
        s.posterior(&x, &o, 0).unwrap();
        assert!(matches!(s.posterior(&x, &o, 1), Err(Error::MissingHistory { .. })), "{kind:?}");
    }
    // A history of the wrong shape is a typed error, not a panic.
    let wrong = t(&[1.0, 2.0, 3.0]);
    let context = StepContext { history: std::slice::from_ref(&wrong), shared: None };
    assert!(matches!(s.step(&x, &o, 1, context), Err(Error::ShapeMismatch { .. })));
    // The stateless schedulers need no state.
    for kind in [SchedulerKind::Ddpm, SchedulerKind::Euler, SchedulerKind::EulerAncestral, SchedulerKind::Lcm] {
        let s = kind.build(&SchedulerConfig::default(), 4).unwrap();
        assert_eq!(s.history_len(), 0, "{kind:?}");
        s.posterior(&x, &o, 2).unwrap();
    }
}

#[test]
fn the_fused_multistep_step_is_the_solver_on_the_weighted_outputs() {
    // Two models whose outputs are affine in x; their weighted output is a third such model.
    let a = FnDenoiser(|x: &Tensor, t: f64| Ok(x.affine(0.3, t / 1000.0)?));
    let b = FnDenoiser(|x: &Tensor, t: f64| Ok(x.affine(-0.2, 0.5 - t / 2000.0)?));
    let w = 0.3;
    let mixed = FnDenoiser(move |x: &Tensor, t: f64| {
        let (oa, ob) = (x.affine(0.3, t / 1000.0)?, x.affine(-0.2, 0.5 - t / 2000.0)?);
        Ok((oa.affine(1.0 - w, 0.0)? + ob.affine(w, 0.0)?)?)
    });
    let configs = [
        (SchedulerKind::DpmSolverMultistep, r#"{"solver_order": 3, "use_karras_sigmas": true}"#),
        (SchedulerKind::UniPc, r#"{"solver_order": 3, "solver_type": "bh1"}"#),
        (SchedulerKind::UniPc, r#"{"predict_x0": false, "disable_corrector": [1]}"#),
        (SchedulerKind::Heun, r#"{"use_exponential_sigmas": true}"#),
    ];
    for (kind, json) in configs {
        let s = kind.build(&config(json), 7).unwrap();
        let run = |models: Vec<&dyn Denoiser>, r: Realigner| {
            Sampler::new(s.as_ref(), models, r)
                .unwrap()
                .run(&[3, 2], DType::F64, &Device::Cpu, &mut SeededNoise::new(9), &mut NoObserver)
                .unwrap()
                .latent
        };
        let fused = run(vec![&a, &b], Realigner::two_model(w).unwrap());
        let single = run(vec![&mixed], Realigner::new(vec![1.0]).unwrap());
        let d = values(&(fused - single).unwrap()).iter().fold(0.0f64, |m, v| m.max(v.abs()));
        assert!(d < 1e-12, "{kind:?} {json}: {d:e}");
    }
}

#[test]
fn options_deradiff_does_not_implement_are_refused() {
    let cases: &[(SchedulerKind, &str, &str)] = &[
        (SchedulerKind::Euler, r#"{"use_karras_sigmas": true, "use_beta_sigmas": true}"#, "only one of"),
        (SchedulerKind::Euler, r#"{"interpolation_type": "cubic"}"#, "interpolation_type"),
        (SchedulerKind::Euler, r#"{"timestep_type": "continuous", "prediction_type": "v_prediction"}"#, "continuous"),
        (SchedulerKind::Euler, r#"{"final_sigmas_type": "one"}"#, "final_sigmas_type"),
        (SchedulerKind::Euler, r#"{"use_karras_sigmas": true, "sigma_min": 5.0, "sigma_max": 1.0}"#, "sigma_min"),
        (SchedulerKind::Euler, r#"{"sigma_min": -1.0}"#, "sigma_min must be a positive number"),
        (SchedulerKind::DpmSolverMultistep, r#"{"solver_order": 4}"#, "solver_order must be 1, 2 or 3"),
        (SchedulerKind::DpmSolverMultistep, r#"{"algorithm_type": "dpmsolver"}"#, "deprecated"),
        (SchedulerKind::DpmSolverMultistep, r#"{"algorithm_type": "dpm"}"#, "algorithm_type"),
        (SchedulerKind::DpmSolverMultistep, r#"{"solver_type": "rk4"}"#, "solver_type"),
        (SchedulerKind::DpmSolverMultistep, r#"{"use_flow_sigmas": true}"#, "use_flow_sigmas"),
        (SchedulerKind::DpmSolverMultistep, r#"{"variance_type": "learned_range"}"#, "learned"),
        (SchedulerKind::DpmSolverMultistep, r#"{"thresholding": true}"#, "thresholding"),
        (SchedulerKind::UniPc, r#"{"solver_p": {"_class_name": "DDIMScheduler"}}"#, "solver_p"),
        (SchedulerKind::UniPc, r#"{"use_dynamic_shifting": true}"#, "use_dynamic_shifting"),
        (SchedulerKind::UniPc, r#"{"lower_order_final": false}"#, "lower_order_final"),
        (SchedulerKind::UniPc, r#"{"solver_type": "bh3"}"#, "solver_type"),
        (SchedulerKind::Heun, r#"{"rescale_betas_zero_snr": true}"#, "rescale_betas_zero_snr"),
        (SchedulerKind::Lcm, r#"{"original_inference_steps": 5000}"#, "original_inference_steps"),
        (SchedulerKind::Lcm, r#"{"timestep_scaling": 0}"#, "timestep_scaling"),
        (
            SchedulerKind::Ddim { eta: 0.0 },
            r#"{"rescale_betas_zero_snr": true, "timestep_spacing": "trailing"}"#,
            "ε-prediction is undefined at ᾱ = 0",
        ),
    ];
    for (kind, json, needle) in cases {
        let e = match SchedulerConfig::from_json(json).and_then(|c| kind.build(&c, 10)) {
            Ok(_) => panic!("{kind:?} {json}: accepted"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains(needle), "{kind:?} {json}: {e}");
    }
    // LCM takes at most original_inference_steps steps.
    assert!(SchedulerKind::Lcm.build(&SchedulerConfig::default(), 51).is_err());
    // UniPC's multistep last step to σ = 0 is fine with sigma_min, or with order 1.
    SchedulerKind::UniPc
        .build(&config(r#"{"lower_order_final": false, "final_sigmas_type": "sigma_min"}"#), 5)
        .unwrap();
    SchedulerKind::UniPc.build(&config(r#"{"lower_order_final": false, "solver_order": 1}"#), 5).unwrap();
}

#[test]
fn python_non_finite_tokens_in_a_config_are_read_where_allowed() {
    // diffusers writes DPM-Solver's default lambda_min_clipped as the bare token -Infinity.
    let c = config(r#"{"_class_name": "DPMSolverMultistepScheduler", "lambda_min_clipped": -Infinity, "x": "NaN"}"#);
    assert_eq!(c.lambda_min_clipped, Some(f64::NEG_INFINITY));
    SchedulerKind::from_config(&c).unwrap().build(&c, 10).unwrap();
    // In a string it is text, and elsewhere it is a type error, not a silent default.
    assert!(SchedulerConfig::from_json(r#"{"beta_start": NaN}"#).is_err());
    assert!(SchedulerConfig::from_json(r#"{"lambda_min_clipped": Infinity}"#)
        .and_then(|c| SchedulerKind::DpmSolverMultistep.build(&c, 10))
        .is_err());
    let clipped = dpm(r#"{"beta_schedule": "squaredcos_cap_v2", "lambda_min_clipped": -5.1}"#, 10);
    let unclipped = dpm(r#"{"beta_schedule": "squaredcos_cap_v2"}"#, 10);
    assert!(clipped.timesteps()[0] < unclipped.timesteps()[0]);
}

#[test]
fn zero_terminal_snr_starts_from_pure_noise_where_diffusers_would_take_nan() {
    // DDIM η = 1 at ᾱ_t = 0: 1 − ᾱ_prev − σ_t² is 0 exactly, which diffusers' float arithmetic
    // may round below 0 (its √ is then NaN); deradiff takes the direction term as 0.
    let c = config(
        r#"{"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "clip_sample": false,
            "rescale_betas_zero_snr": true, "prediction_type": "v_prediction", "timestep_spacing": "trailing"}"#,
    );
    let ddim = SchedulerKind::Ddim { eta: 1.0 }.build(&c, 10).unwrap();
    assert_eq!(ddim.timesteps()[0], 999.0);
    let ac = ddim.alphas_cumprod();
    assert_eq!(ac[999], 0.0);
    let (x, v) = (t(&[0.7, -1.3]), t(&[0.2, 0.4]));
    let p = ddim.posterior(&x, &v, 0).unwrap();
    // x̂₀ = √ᾱ x − √(1−ᾱ) v = −v at ᾱ = 0; μ = √ᾱ_prev x̂₀; σ² = 1 − ᾱ_prev.
    let prev = ac[899];
    let want: Vec<f64> = [0.2, 0.4].iter().map(|v| -v * prev.sqrt()).collect();
    for (a, b) in values(&p.mean).iter().zip(&want) {
        assert!((a - b).abs() < 1e-15, "{a} vs {b}");
    }
    assert!((p.variance.as_scalar().unwrap() - (1.0 - prev)).abs() < 1e-15);
    // Every scheduler with zero-SNR rescaling samples to a finite latent.
    for kind in [
        SchedulerKind::Ddpm,
        SchedulerKind::Ddim { eta: 1.0 },
        SchedulerKind::EulerAncestral,
        SchedulerKind::Euler,
        SchedulerKind::DpmSolverMultistep,
        SchedulerKind::UniPc,
        SchedulerKind::Lcm,
    ] {
        let s = kind.build(&c, 8).unwrap();
        let model = FnDenoiser(|x: &Tensor, _t: f64| Ok(x.affine(0.1, 0.05)?));
        let out = Sampler::new(s.as_ref(), vec![&model], Realigner::new(vec![1.0]).unwrap())
            .unwrap()
            .run(&[2, 3], DType::F64, &Device::Cpu, &mut SeededNoise::new(1), &mut NoObserver)
            .unwrap();
        assert!(values(&out.latent).iter().all(|v| v.is_finite()), "{kind:?}");
    }
}
