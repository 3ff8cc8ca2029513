//! A batched λ sweep over Stable Diffusion (the tiny committed checkpoints of `deradiff-sd`)
//! scored by CLIP: every (λ, prompt) row equals the plain pipeline run of that λ and seed, scored
//! by the same reward.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device};
use deradiff_core::{NoObserver, Realigner, SchedulerKind, SeededNoise};
use deradiff_rewards::{ClipScore, ClipScorer, PickScore, Reward};
use deradiff_sd::Request;
use deradiff_tune::{run_sweep, NoSweepObserver, Prompt, SdModel, SdSetup, SweepConfig};

fn sd_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deradiff-sd/tests/fixtures").join(name)
}

#[test]
fn batched_sd_sweep_matches_the_pipeline_per_lambda() {
    let mut setup = SdSetup::new(sd_fixture("tiny-sd"), sd_fixture("tiny-aligned-unet"));
    setup.scheduler = SchedulerKind::Ddim { eta: 0.0 };
    setup.steps = 3;
    setup.guidance_scale = Some(5.0);
    let model = SdModel::load(setup).unwrap();
    let clip_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/clip/clip-gelu");
    let scorer = Arc::new(ClipScorer::load(clip_dir, DType::F32, &Device::Cpu).unwrap());
    let (clip, pick) = (ClipScore::new(scorer.clone()), PickScore::new(scorer));

    let prompts = vec![Prompt::text("cube", "a red cube", 5), Prompt::text("sphere", "a blue sphere", 9)];
    let lambdas = vec![0.0, 1.5];
    let mut config = SweepConfig::new(lambdas.clone(), prompts.clone(), 2);
    config.keep_scores = true;
    let rewards: [&dyn Reward; 2] = [&clip, &pick];
    let result = run_sweep(&model, &rewards, &config, &mut NoSweepObserver).unwrap();
    assert_eq!(result.rows.len(), 4);

    let sd = model.pipeline();
    for prompt in &prompts {
        let text = prompt.text.clone().unwrap();
        let request = Request {
            prompts: vec![text.clone()],
            images_per_prompt: 2,
            scheduler: SchedulerKind::Ddim { eta: 0.0 },
            steps: 3,
            guidance_scale: Some(5.0),
            seed: prompt.seed,
            ..Default::default()
        };
        let embeddings = sd.encode(&request).unwrap();
        for &lambda in &lambdas {
            let out = sd
                .sample(
                    &request,
                    &embeddings,
                    &Realigner::two_model(lambda).unwrap(),
                    &mut SeededNoise::new(prompt.seed),
                    &mut NoObserver,
                )
                .unwrap();
            let images = deradiff_tune::SweepModel::decode(&model, &out.latent).unwrap();
            let row = result.row(lambda, &prompt.id).unwrap();
            for reward in rewards {
                let expected = reward.score(&images, Some(&[text.as_str(), text.as_str()])).unwrap();
                let got = row.reward(&reward.name()).unwrap().scores.clone().unwrap();
                for (g, e) in got.iter().zip(&expected) {
                    assert!((g - e).abs() < 1e-2, "{} λ = {lambda}, {}: {g} vs {e}", reward.name(), prompt.id);
                }
            }
        }
    }
    // The reference and extrapolated rows differ: λ acts.
    let score = |l: f64| result.row(l, "cube").unwrap().reward(&pick.name()).unwrap().mean;
    assert_ne!(score(0.0), score(1.5));
}

#[test]
fn sd_setup_errors_are_reported() {
    let mut setup = SdSetup::new(sd_fixture("tiny-sd"), sd_fixture("no-such-unet"));
    assert!(SdModel::load(setup.clone()).is_err());
    setup.aligned = sd_fixture("tiny-aligned-unet");
    setup.size = Some((17, 16));
    assert!(SdModel::load(setup.clone()).is_err());
    setup.size = None;
    setup.guidance_scale = Some(-1.0);
    assert!(SdModel::load(setup).is_err());
    // A prompt without text cannot condition Stable Diffusion.
    let model = SdModel::load(SdSetup::new(sd_fixture("tiny-sd"), sd_fixture("tiny-aligned-unet"))).unwrap();
    assert!(deradiff_tune::SweepModel::denoisers(&model, &Prompt::seeded(1)).is_err());
}

/// Without a guidance scale, a Stable Diffusion sweep samples with the checkpoint's, as a
/// `Request` without one does (the one rule of `sample` and sweeps): 5.0 for SDXL, 7.5 for
/// SD 1.x / 2.x; and with diffusers' 50 steps.
#[test]
fn an_sd_setup_defaults_to_the_checkpoints_guidance_and_50_steps() {
    use deradiff_tune::SweepModel;
    for (reference, aligned, guidance) in
        [("tiny-sdxl", "tiny-sdxl-aligned-unet", 5.0), ("tiny-sd", "tiny-aligned-unet", 7.5)]
    {
        let setup = SdSetup::new(sd_fixture(reference), sd_fixture(aligned));
        assert_eq!((setup.steps, setup.guidance_scale), (deradiff_sd::DEFAULT_STEPS, None));
        let model = SdModel::load(setup.clone()).unwrap();
        let request = Request { prompts: vec!["x".into()], ..Default::default() };
        assert_eq!(model.pipeline().guidance_scale(&request).unwrap(), guidance);
        let describe = model.describe();
        assert!(describe.contains(&format!("50 steps, guidance {guidance},")), "{describe}");
        let given = SdModel::load(SdSetup { guidance_scale: Some(3.0), ..setup }).unwrap().describe();
        assert!(given.contains("guidance 3,"), "{given}");
    }
}
