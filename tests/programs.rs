//! A user's programs, written against the `deradiff` facade alone (no other crate of the
//! workspace, no candle pin): analytic realignment against the closed form, a sweep written to a
//! results file then read back and compared, and Stable Diffusion / SDXL on the tiny committed
//! checkpoints.

use std::path::PathBuf;

use deradiff::analytic::{demo_linear_reward, ExactDenoiser, GaussianMixture, Reward};
use deradiff::tune::{
    agreement, pair_rows, read_results, run_sweep, AgreementConfig, AnalyticModel, AnalyticSetup, NoSweepObserver,
    PairBy, Prompt, SweepConfig, SweepOutput, TrueReward,
};
use deradiff::{
    DType, Ddpm, DdpmConfig, Device, NoObserver, Realigner, Sampler, SeededNoise, Tensor, TimestepSpacing,
    TrainingConfig, VarianceType,
};

fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("deradiff-programs").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn mean_of_column(samples: &Tensor, column: usize) -> f64 {
    let rows: Vec<Vec<f64>> = samples.to_dtype(DType::F64).unwrap().to_vec2().unwrap();
    rows.iter().map(|r| r[column]).sum::<f64>() / rows.len() as f64
}

/// One Gaussian tilted by a linear reward stays Gaussian: aligned at β its mean moves by
/// `Σ w / β`. Realigning the model aligned at β = 1 with λ emulates β = 1/λ, so the sample mean
/// must move by `λ · Σ w` — the closed form.
#[test]
fn analytic_realignment_moves_the_mean_as_the_closed_form_says() {
    let (mu, var) = (0.3, 0.5);
    let data = GaussianMixture::new(vec![1.0], vec![vec![mu, 0.0]], vec![vec![var, var]]).unwrap();
    let reward = Reward::linear(vec![1.0, 0.0]).unwrap();
    let training = TrainingConfig::diffusers_default(TimestepSpacing::Leading);
    let config = DdpmConfig { training: training.clone(), variance_type: VarianceType::FixedSmall, clip_sample: None };
    let scheduler = Ddpm::new(config, 50).unwrap();
    let reference = ExactDenoiser::from_training(data.clone(), &training).unwrap();
    let aligned = ExactDenoiser::from_training(data.tilt(&reward, 1.0).unwrap(), &training).unwrap();
    for lambda in [0.0, 0.5, 1.0, 2.0] {
        let sampler =
            Sampler::new(&scheduler, vec![&reference, &aligned], Realigner::two_model(lambda).unwrap()).unwrap();
        let out =
            sampler.run(&[20_000, 2], DType::F64, &Device::Cpu, &mut SeededNoise::new(3), &mut NoObserver).unwrap();
        let mean = mean_of_column(&out.latent, 0);
        let expected = mu + lambda * var;
        // Standard error of a 20 000-sample mean of variance ≤ 0.5: 0.005.
        assert!((mean - expected).abs() < 0.025, "λ = {lambda}: mean {mean}, closed form {expected}");
    }
}

/// A sweep over λ on the analytic testbed, streamed to a results file; the file read back gives
/// the same rows; two sweeps (the exact models' and DeRaDiff's) paired and compared with the
/// agreement statistics.
#[test]
fn sweep_then_read_back_then_compare() {
    let dir = scratch("sweep");
    let data =
        GaussianMixture::new(vec![0.6, 0.4], vec![vec![-0.6, 0.0], vec![0.8, 0.4]], vec![vec![0.5, 0.4]; 2]).unwrap();
    let mut setup = AnalyticSetup::new(data.clone(), demo_linear_reward(), 1.0);
    setup.steps = 8;
    let model = AnalyticModel::new(setup).unwrap();
    let truth = TrueReward::new(
        "true",
        demo_linear_reward(),
        deradiff::tune::ManifoldPenalty::ReferenceLogDensity(data.clone()),
        2.0,
    )
    .unwrap();
    let lambdas = vec![0.0, 0.5, 1.0, 1.5];
    let mut config = SweepConfig::new(lambdas.clone(), Prompt::seeds(0..3), 32);
    config.output = Some(SweepOutput::jsonl(dir.join("a.jsonl")));
    let first = run_sweep(&model, &[&truth], &config, &mut NoSweepObserver).unwrap();
    assert_eq!(first.rows.len(), lambdas.len() * 3);
    let back = read_results(dir.join("a.jsonl")).unwrap();
    assert_eq!(back.rows, first.rows);
    assert!(!back.truncated_tail);

    // Resuming the finished sweep computes nothing and gives the same rows.
    let again = run_sweep(&model, &[&truth], &config, &mut NoSweepObserver).unwrap();
    assert_eq!((again.computed, again.resumed), (0, first.rows.len()));

    // A second sweep with other seeds, paired row by row with the first and compared.
    let mut other = SweepConfig::new(lambdas, Prompt::seeds(0..3), 32);
    other.output = Some(SweepOutput::jsonl(dir.join("b.jsonl")));
    let second =
        run_sweep(&AnalyticModel::new(model.setup().clone()).unwrap(), &[&truth], &other, &mut NoSweepObserver)
            .unwrap();
    let pairs = pair_rows(&first.rows, &second.rows, "true", PairBy::LambdaAndPrompt).unwrap();
    assert_eq!(pairs.original.len(), 12);
    let stats =
        agreement(&pairs.original, &pairs.approx, &AgreementConfig { bootstrap: 200, ..Default::default() }).unwrap();
    // The same model and seeds: the two sweeps agree exactly.
    assert_eq!(stats.mae.value, 0.0, "{stats:?}");
    assert_eq!(stats.n, 12);
}

/// The tiny committed checkpoints of deradiff-sd's tests.
fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("crates/deradiff-sd/tests/fixtures").join(name)
}

/// Stable Diffusion through the facade: λ = 0 of a realigned run is the reference alone, bit for
/// bit (the fusion with weights [1, 0] returns the reference's posterior), λ = 1 differs, and the
/// images are written and read back as PNG.
fn realigned_pipeline_keeps_its_endpoints(reference: &str, aligned: &str) {
    use deradiff::sd::{LoadOptions, Request, StableDiffusion};
    let options = LoadOptions::default();
    let both = StableDiffusion::load(fixture(reference), &[fixture(aligned)], &options).unwrap();
    let alone = StableDiffusion::load(fixture(reference), &[] as &[PathBuf], &options).unwrap();
    let request = Request { prompts: vec!["a red cube".into()], steps: 4, seed: 11, ..Default::default() };
    let at0 = both.generate(&request, &Realigner::two_model(0.0).unwrap(), &mut NoObserver).unwrap();
    let refr = alone.generate(&request, &Realigner::new(vec![1.0]).unwrap(), &mut NoObserver).unwrap();
    let at1 = both.generate(&request, &Realigner::two_model(1.0).unwrap(), &mut NoObserver).unwrap();
    let diff = |a: &Tensor, b: &Tensor| -> f64 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    assert_eq!(diff(&at0.latents, &refr.latents), 0.0, "{reference}: λ = 0 is the reference");
    assert!(diff(&at1.latents, &refr.latents) > 1e-4, "{reference}: λ = 1 moves the sample");
    let dir = scratch(reference);
    let png = dir.join("lambda1.png");
    at1.images[0].save_png(&png).unwrap();
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
}

#[test]
fn stable_diffusion_through_the_facade() {
    realigned_pipeline_keeps_its_endpoints("tiny-sd", "tiny-aligned-unet");
}

#[test]
fn sdxl_through_the_facade() {
    realigned_pipeline_keeps_its_endpoints("tiny-sdxl", "tiny-sdxl-aligned-unet");
}
