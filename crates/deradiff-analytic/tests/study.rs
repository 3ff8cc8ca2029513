//! The study: the shape of the paper's Table 2 for a 3-component mixture, and its outputs.

use deradiff_analytic::{demo_linear_reward, demo_mixture, run_study, StudyConfig, StudyResult, STUDY_FILES};
use deradiff_core::SchedulerKind;

fn config(samples: usize, steps: usize) -> StudyConfig {
    let mut c = StudyConfig::new(demo_mixture(3).unwrap(), demo_linear_reward(), 1.0, vec![4.0, 2.0, 1.0, 0.5, 0.25]);
    c.samples = samples;
    c.steps = steps;
    c.seed = 5;
    c
}

/// On the interpolation side (λ < 1) the error cannot grow forever: at λ = 0 DeRaDiff is the
/// exact reference again, so it rises from 0 at λ = 1, peaks (near λ ≈ 0.3–0.5 for this mixture)
/// and falls back to 0. The test therefore takes λ ∈ {0.5, 2/3} below the anchor and
/// λ ∈ {2, 4} above it, where it grows with |log(β_target / β_anchor)|.
#[test]
fn error_is_positive_and_grows_with_log_beta_ratio_on_both_sides_of_the_anchor() {
    for scheduler in [SchedulerKind::Ddpm, SchedulerKind::Ddim { eta: 0.0 }, SchedulerKind::EulerAncestral] {
        let mut c = config(400, 25);
        c.target_betas = vec![2.0, 1.5, 1.0, 0.5, 0.25];
        c.scheduler = scheduler;
        let out = run_study(&c).unwrap();
        println!("{}", out.result);
        let rows = &out.result.rows;
        let lambdas: Vec<f64> = rows.iter().map(|r| r.lambda).collect();
        assert_eq!(lambdas, vec![0.5, 1.0 / 1.5, 1.0, 2.0, 4.0]);
        let reward_err: Vec<f64> =
            rows.iter().map(|r| (r.deradiff_mean_reward - r.target_model_mean_reward).abs()).collect();
        let coupled: Vec<f64> = rows.iter().map(|r| r.coupled_distance).collect();
        for err in [&reward_err, &coupled] {
            // At the anchor (λ = 1) DeRaDiff is the anchor model: no error at all.
            assert_eq!(err[2], 0.0, "{scheduler:?}: {err:?}");
            // Away from it the error is positive and grows with |log(β_target / β_anchor)|
            // on both sides.
            assert!(err[1] > 0.0 && err[3] > 0.0, "{scheduler:?}: {err:?}");
            assert!(err[0] > err[1], "{scheduler:?}, below the anchor: {err:?}");
            assert!(err[4] > err[3], "{scheduler:?}, above the anchor: {err:?}");
        }
        // A few percent, not noise and not a blow-up.
        for r in rows.iter().filter(|r| r.lambda != 1.0) {
            let pct = r.abs_diff_pct.unwrap();
            assert!(pct > 0.5 && pct < 30.0, "{scheduler:?}: λ = {}: {pct}%", r.lambda);
            assert!(r.energy_distance > 0.0);
        }
        assert_eq!(rows[2].energy_distance, 0.0);
        // The exact target models track the closed-form mean reward (sampler and Monte-Carlo
        // error only), which rises as β falls.
        for (r, samples) in rows.iter().zip(&out.samples.target) {
            let values = c.reward.evaluate(samples).unwrap();
            let n = values.len() as f64;
            let sd = (values.iter().map(|v| (v - r.target_model_mean_reward).powi(2)).sum::<f64>() / n).sqrt();
            let tol = 4.0 * sd / n.sqrt() + 0.02;
            assert!((r.target_model_mean_reward - r.exact_mean_reward).abs() < tol, "{r:?} (tolerance {tol})");
        }
        assert!(rows.windows(2).all(|w| w[1].exact_mean_reward > w[0].exact_mean_reward));
    }
}

#[test]
fn study_writes_csv_json_and_pngs_that_read_back() {
    let mut c = config(120, 12);
    c.target_betas = vec![f64::INFINITY, 2.0, 0.5];
    let out = run_study(&c).unwrap();
    assert_eq!(out.result.rows[0].lambda, 0.0);
    assert_eq!(out.result.rows[0].coupled_distance, 0.0, "λ = 0 is the reference");
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("study-files-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let written = out.write_files(&dir).unwrap();
    assert_eq!(written.len(), 4);
    for name in STUDY_FILES {
        assert!(dir.join(name).is_file(), "{name} missing");
    }
    // No temporary files are left behind.
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    let json = std::fs::read_to_string(dir.join("study.json")).unwrap();
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(value["rows"].as_array().unwrap().len(), 3);
    assert!(value["rows"][0]["target_beta"].is_null(), "β = ∞ is written as null");
    assert_eq!(value["scheduler"], "ddpm");
    // Finite rows round-trip exactly.
    let mut finite = out.result.clone();
    finite.rows.remove(0);
    let back: StudyResult = serde_json::from_str(&finite.to_json().unwrap()).unwrap(); // float_roundtrip
    assert_eq!(back, finite);

    let csv = std::fs::read_to_string(dir.join("study.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 4);
    assert!(lines[0].starts_with("target_beta,lambda,exact_mean_reward"));
    assert!(lines[1].starts_with("inf,0,"));
    let cols: Vec<f64> = lines[2].split(',').map(|v| v.parse().unwrap()).collect();
    assert_eq!(cols.len(), 8);
    assert_eq!((cols[0], cols[1]), (2.0, 0.5));
    assert_eq!(cols[4], out.result.rows[1].deradiff_mean_reward);

    for (name, min_w) in [("samples.png", 1000), ("reward_vs_lambda.png", 800)] {
        let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(dir.join(name)).unwrap()));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert!(info.width >= min_w && info.height >= 400, "{name}: {}x{}", info.width, info.height);
        let pixels = &buf[..info.buffer_size()];
        // Not blank: white background plus a good share of drawn (non-white) pixels.
        let non_white = pixels.chunks(3).filter(|p| p.iter().any(|&c| c < 200)).count();
        let total = pixels.len() / 3;
        assert!(non_white > total / 100 && non_white < total / 2, "{name}: {non_white} of {total}");
    }

    let table = out.result.to_string();
    assert!(table.contains("DeRaDiff") && table.contains("inf") && table.lines().count() >= 8, "{table}");
    std::fs::remove_dir_all(&dir).unwrap();
}
