//! Weight-space realignment in Stable Diffusion sweeps (the baseline `base + λ · up · down`,
//! the tiny SD checkpoint with the kohya LoRA fixture as its aligned model): every row equals the
//! pipeline's `sample_weight_space` at that λ and seed, scored by the same reward; batching λ
//! and prompts changes nothing; posterior fusion and weight space agree at λ = 0 and 1 and
//! differ in between; a full aligned UNet is refused.

use deradiff_core::{NoObserver, SchedulerKind, SeededNoise};
use deradiff_rewards::Reward;
use deradiff_sd::Request;
use deradiff_tune::{
    run_sweep, NoSweepObserver, Prompt, Realignment, SdModel, SdSetup, SweepConfig, SweepModel, SweepRow,
};
use std::path::{Path, PathBuf};

fn sd_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deradiff-sd/tests/fixtures").join(name)
}

fn setup(aligned: &str, realign: Realignment) -> SdSetup {
    let mut setup = SdSetup::new(sd_fixture("tiny-sd"), sd_fixture(aligned));
    setup.scheduler = SchedulerKind::EulerAncestral;
    setup.steps = 3;
    setup.guidance_scale = Some(5.0);
    setup.size = Some((16, 16));
    setup.realign = realign;
    setup
}

mod common;
use common::Pixels;

fn means(rows: &[SweepRow]) -> Vec<(f64, String, f64)> {
    rows.iter().map(|r| (r.lambda, r.prompt.clone(), r.rewards[0].mean)).collect()
}

#[test]
fn weight_space_rows_equal_the_pipeline_and_meet_the_posterior_fusion_at_the_ends() {
    let weights = SdModel::load(setup("lora/sd-kohya.safetensors", Realignment::Weights)).unwrap();
    assert!(weights.describe().ends_with("weight-space realignment"), "{}", weights.describe());
    let rewards: [&dyn Reward; 1] = [&Pixels];
    let prompts = vec![Prompt::text("cube", "a red cube", 5), Prompt::text("sphere", "a blue sphere", 9)];
    let lambdas = vec![0.0, 0.5, 1.0, 1.5];
    let mut config = SweepConfig::new(lambdas.clone(), prompts.clone(), 2);
    config.keep_scores = true;
    let result = run_sweep(&weights, &rewards, &config, &mut NoSweepObserver).unwrap();
    assert_eq!(result.rows.len(), 8);

    // Each row is the pipeline's weight-space sample at its λ and seed (merged weights there,
    // the adapter unmerged on its rows here: f32 rounding apart).
    let sd = weights.pipeline();
    for prompt in &prompts {
        let text = prompt.text.clone().unwrap();
        let request = Request {
            prompts: vec![text.clone()],
            images_per_prompt: 2,
            scheduler: SchedulerKind::EulerAncestral,
            steps: 3,
            guidance_scale: Some(5.0),
            seed: prompt.seed,
            height: Some(16),
            width: Some(16),
            ..Default::default()
        };
        let embeddings = sd.encode(&request).unwrap();
        for &lambda in &lambdas {
            let out = sd
                .sample_weight_space(
                    &request,
                    &embeddings,
                    &[lambda],
                    &mut SeededNoise::new(prompt.seed),
                    &mut NoObserver,
                )
                .unwrap();
            let expected = Pixels.score(&weights.decode(&out.latent).unwrap(), None).unwrap();
            let got = result.row(lambda, &prompt.id).unwrap().reward("pixels").unwrap().scores.clone().unwrap();
            for (g, e) in got.iter().zip(&expected) {
                assert!((g - e).abs() <= 1e-6 * e.abs(), "λ = {lambda}, {}: {g} vs {e}", prompt.id);
            }
        }
    }

    // All λ of both prompts in one batch: the same rows.
    let mut batched = config.clone();
    batched.prompts_per_batch = 2;
    let again = run_sweep(&weights, &rewards, &batched, &mut NoSweepObserver).unwrap();
    for (a, b) in means(&result.rows).iter().zip(means(&again.rows)) {
        assert!((a.2 - b.2).abs() <= 1e-6 * a.2.abs(), "{a:?} vs {b:?}");
    }

    // The posterior fusion of the same pair: equal at λ = 0 (the reference) and λ = 1 (the
    // aligned model), different in between and beyond (by 3.6e-5 to 1e-3 of this mean-pixel
    // reward, against 4e-8 at the ends).
    let posterior = SdModel::load(setup("lora/sd-kohya.safetensors", Realignment::Posterior)).unwrap();
    let fused = run_sweep(&posterior, &rewards, &config, &mut NoSweepObserver).unwrap();
    for (w, p) in means(&result.rows).iter().zip(means(&fused.rows)) {
        assert_eq!((w.0, &w.1), (p.0, &p.1));
        let rel = (w.2 - p.2).abs() / p.2.abs();
        if w.0 == 0.0 || w.0 == 1.0 {
            assert!(rel < 1e-6, "λ = {}, {}: weights {} vs posterior {}", w.0, w.1, w.2, p.2);
        } else {
            assert!(rel > 1e-5, "λ = {}, {}: weights {} vs posterior {}", w.0, w.1, w.2, p.2);
        }
    }
}

#[test]
fn weight_space_needs_a_lora_aligned_model() {
    let err = SdModel::load(setup("tiny-aligned-unet", Realignment::Weights)).unwrap_err().to_string();
    assert!(err.contains("needs LoRA-aligned models"), "{err}");
}
