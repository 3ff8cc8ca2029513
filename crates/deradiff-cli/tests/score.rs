//! `deradiff score` on a folder of PNGs: the same scores as the library calls on the same
//! images (CLIP score, PickScore, HPS v2, the aesthetic predictor, ImageReward), JSON lines and CSV; bad images,
//! missing prompts and mismatched counts are errors that say what to fix.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{DType, Device, Tensor};
use deradiff_rewards::{
    AestheticScore, ClipScore, ClipScorer, HpsScore, ImageBackend, ImageRewardScore, ImageScorer, PickScore, PilImage,
};
use deradiff_sd::RgbImage;

fn deradiff(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_deradiff")).args(args).output().expect("the deradiff binary runs")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn tune_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deradiff-tune/tests/fixtures").join(name)
}

fn out_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("score-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The four test images of the CLIP fixtures (different sizes), written as PNGs `img-<i>.png`.
fn images(dir: &Path) -> Vec<RgbImage> {
    let refs: HashMap<String, Tensor> =
        candle_core::safetensors::load(tune_fixture("clip/reference.safetensors"), &Device::Cpu).unwrap();
    (0..4)
        .map(|i| {
            let t = &refs[&format!("image{i}")];
            let (h, w, _) = t.dims3().unwrap();
            let img = RgbImage::new(w, h, t.flatten_all().unwrap().to_vec1::<u8>().unwrap()).unwrap();
            img.save_png(dir.join(format!("img-{i}.png"))).unwrap();
            img
        })
        .collect()
}

/// The rows of a JSON-lines scores file.
fn jsonl_rows(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

const PROMPTS: [&str; 4] = ["a red cube", "a blue sphere, \"glossy\"", "a green cone", "a cat"];

#[test]
fn scores_equal_the_library_calls() {
    let dir = out_dir("ok");
    let imgs = images(&dir.join("images"));
    let prompts = dir.join("prompts.txt");
    std::fs::write(&prompts, PROMPTS.join("\n")).unwrap();
    let (clip, pick, mlp) = (
        tune_fixture("clip/clip-gelu"),
        tune_fixture("clip/clip-quick-gelu"),
        tune_fixture("aesthetic/mlp-16.safetensors"),
    );
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let out = dir.join("scores.jsonl");
    let base = [
        "score".to_string(),
        "--images".into(),
        s(&dir.join("images")),
        "--prompts-file".into(),
        s(&prompts),
        "--clip".into(),
        s(&clip),
        "--pickscore".into(),
        s(&pick),
        "--hps".into(),
        s(&tune_fixture("hps/open_clip_model.safetensors")),
        "--hps-config".into(),
        s(&tune_fixture("hps/open_clip_config.json")),
        "--hps-tokenizer".into(),
        s(&clip),
        "--aesthetic".into(),
        s(&pick),
        "--aesthetic-mlp".into(),
        s(&mlp),
        "--image-reward".into(),
        s(&tune_fixture("image_reward")),
        "--quiet".into(),
        "--out".into(),
    ];
    let run = |out: &Path| {
        let mut args: Vec<String> = base.to_vec();
        args.push(s(out));
        deradiff(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let o = run(&out);
    assert!(o.status.success(), "{}", text(&o));

    let prompt_refs: Vec<&str> = PROMPTS.to_vec();
    let want_clip =
        ClipScore::load(&clip, DType::F32, &Device::Cpu).unwrap().score_images(&imgs, &prompt_refs).unwrap();
    let want_pick = PickScore::new(ClipScorer::load(&pick, DType::F32, &Device::Cpu).unwrap())
        .score_images(&imgs, &prompt_refs)
        .unwrap();
    let want_hps = HpsScore::load_open_clip(
        tune_fixture("hps/open_clip_model.safetensors"),
        tune_fixture("hps/open_clip_config.json"),
        &clip,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap()
    .score_images(&imgs, &prompt_refs)
    .unwrap();
    let want_aes = AestheticScore::load(&pick, &mlp, DType::F32, &Device::Cpu).unwrap().score_images(&imgs).unwrap();
    let want_ir = ImageRewardScore::load(tune_fixture("image_reward"), DType::F32, &Device::Cpu)
        .unwrap()
        .score_images(&imgs, &prompt_refs)
        .unwrap();
    let rows = jsonl_rows(&out);
    assert_eq!(rows.len(), 4);
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row["image"], format!("img-{i}.png"));
        assert_eq!(row["prompt"], PROMPTS[i]);
        assert_eq!(row["clip_score"].as_f64().unwrap(), want_clip[i], "row {i}");
        assert_eq!(row["pickscore"].as_f64().unwrap(), want_pick[i], "row {i}");
        assert_eq!(row["hps"].as_f64().unwrap(), want_hps[i], "row {i}");
        assert_eq!(row["aesthetic"].as_f64().unwrap(), want_aes[i], "row {i}");
        assert_eq!(row["image_reward"].as_f64().unwrap(), want_ir[i], "row {i}");
    }
    // CSV: a header and a row per image, the quoted prompt intact.
    let csv_out = dir.join("scores.csv");
    assert!(run(&csv_out).status.success());
    let csv = std::fs::read_to_string(&csv_out).unwrap();
    assert_eq!(csv.lines().count(), 5, "{csv}");
    assert!(csv.starts_with("image,mode,prompt_id,prompt,clip_score,pickscore,hps,aesthetic,image_reward\n"), "{csv}");
    assert!(csv.lines().skip(1).all(|l| l.starts_with("\"img-") && l.contains(",\"RGB\",")), "{csv}");
    assert!(csv.contains("\"a blue sphere, \"\"glossy\"\"\""), "{csv}");
}

#[test]
fn an_rgba_or_grey_png_reads_as_pil_converts_it() {
    let dir = out_dir("modes");
    let rgb = RgbImage::new(2, 1, vec![10, 20, 30, 40, 50, 60]).unwrap();
    let write = |name: &str, color: png::ColorType, data: &[u8]| {
        let path = dir.join(name);
        let mut enc = png::Encoder::new(std::fs::File::create(&path).unwrap(), 2, 1);
        enc.set_color(color);
        enc.set_depth(png::BitDepth::Eight);
        enc.write_header().unwrap().write_image_data(data).unwrap();
        path
    };
    let rgba = write("rgba.png", png::ColorType::Rgba, &[10, 20, 30, 0, 40, 50, 60, 128]);
    assert_eq!(RgbImage::load_png(&rgba).unwrap(), rgb, "alpha dropped, not composited");
    let grey = write("grey.png", png::ColorType::Grayscale, &[7, 200]);
    assert_eq!(RgbImage::load_png(&grey).unwrap().data(), &[7, 7, 7, 200, 200, 200]);
}

#[test]
fn bad_inputs_are_errors_that_say_what_to_fix() {
    let dir = out_dir("bad");
    images(&dir.join("images"));
    let folder = dir.join("images");
    let mlp = tune_fixture("aesthetic/mlp-16.safetensors");
    let clip = tune_fixture("clip/clip-gelu");
    let prompts = dir.join("three.txt");
    std::fs::write(&prompts, "a\nb\nc\n").unwrap();
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out = dir.join("s.jsonl");
    let p = |x: &Path| x.to_str().unwrap().to_string();
    // A PickScore model folder without its tokenizer (PickScore_v1's processor is elsewhere).
    let bare = dir.join("pickscore-model");
    std::fs::create_dir_all(&bare).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(clip.join(f), bare.join(f)).unwrap();
    }
    let cases: Vec<(Vec<String>, i32, &str)> = vec![
        (
            vec!["--images".into(), p(&folder), "--prompts-file".into(), p(&prompts), "--clip".into(), p(&clip)],
            2,
            "3 prompts for the 4 PNG files",
        ),
        (vec!["--images".into(), p(&folder), "--clip".into(), p(&clip)], 2, "give --prompt or --prompts-file"),
        (
            vec!["--images".into(), p(&folder), "--image-reward".into(), p(&tune_fixture("image_reward"))],
            2,
            "--image-reward scores images against prompts",
        ),
        (
            vec!["--images".into(), p(&folder), "--prompt".into(), "x".into(), "--image-reward".into(), p(&clip)],
            1,
            "cannot load --image-reward",
        ),
        (
            vec!["--images".into(), p(&empty), "--prompt".into(), "x".into(), "--clip".into(), p(&clip)],
            2,
            "holds no .png files",
        ),
        (vec!["--images".into(), p(&folder), "--prompt".into(), "x".into()], 2, "give a reward"),
        (
            vec!["--images".into(), p(&folder), "--prompt".into(), "x".into(), "--pickscore".into(), p(&bare)],
            2,
            "give the folder of its tokenizer and preprocessor_config.json with --pickscore-processor",
        ),
        (
            vec!["--images".into(), p(&prompts), "--prompt".into(), "x".into(), "--clip".into(), p(&clip)],
            2,
            "is not a folder",
        ),
    ];
    for (args, code, want) in cases {
        let mut full = vec!["score".to_string()];
        full.extend(args.clone());
        full.extend(["--out".into(), p(&out)]);
        let o = deradiff(&full.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(o.status.code(), Some(code), "{args:?}: {}", text(&o));
        assert!(text(&o).contains(want), "{args:?}: {}", text(&o));
    }
    // A file named .png that is not one: exit 1, naming it; nothing written.
    std::fs::write(folder.join("img-9.png"), b"not a png at all").unwrap();
    let o = deradiff(&[
        "score",
        "--images",
        &p(&folder),
        "--aesthetic",
        &p(&clip),
        "--aesthetic-mlp",
        &p(&mlp),
        "--out",
        &p(&out),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("img-9.png") && text(&o).contains("not a readable PNG"), "{}", text(&o));
    assert!(!out.exists());
    let o = deradiff(&[
        "score",
        "--images",
        &p(&folder),
        "--prompt",
        "x",
        "--clip",
        &p(&clip),
        "--out",
        &p(&dir.join("s.txt")),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

/// The image fidelity fixtures (34 PNGs of odd sizes in every colour mode, hostile prompts):
/// `deradiff score` gives the library's scores of the decoded files and names each file's mode.
#[test]
fn every_png_mode_and_hostile_prompts_score_as_the_library() {
    let fidelity = tune_fixture("fidelity");
    let refs: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fidelity.join("scores.json")).unwrap()).unwrap();
    let dir = out_dir("modes-all");
    let folder = dir.join("images");
    std::fs::create_dir_all(&folder).unwrap();
    // Prompt files refuse empty prompts: the images whose prompt is blank stay out.
    let mut names = Vec::new();
    let mut prompts = Vec::new();
    for e in refs["images"].as_array().unwrap() {
        let (name, prompt) = (e["file"].as_str().unwrap(), e["prompt"].as_str().unwrap());
        if prompt.trim().is_empty() {
            continue;
        }
        std::fs::copy(fidelity.join("images").join(name), folder.join(name)).unwrap();
        names.push(name.to_string());
        prompts.push(prompt.to_string());
    }
    assert!(names.len() >= 30, "{}", names.len());
    let prompts_file = dir.join("prompts.jsonl");
    let lines: Vec<String> = prompts.iter().map(|p| serde_json::Value::from(p.as_str()).to_string()).collect();
    std::fs::write(&prompts_file, lines.join("\n")).unwrap();
    let (clip, mlp) = (tune_fixture("clip/clip-gelu"), tune_fixture("aesthetic/mlp-16.safetensors"));
    let (hps_w, hps_c) = (tune_fixture("hps/open_clip_model.safetensors"), tune_fixture("hps/open_clip_config.json"));
    let ir = tune_fixture("image_reward");
    let out = dir.join("scores.jsonl");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    // `deradiff score` on the folder with its prompts and --clip, then `extra`.
    let score = |extra: &[&str]| {
        let mut args = vec!["score", "--images", folder.to_str().unwrap(), "--prompts-file"];
        args.extend([prompts_file.to_str().unwrap(), "--clip", clip.to_str().unwrap(), "--quiet"]);
        args.extend(extra);
        deradiff(&args)
    };
    let o = score(&[
        "--pickscore",
        &s(&clip),
        "--hps",
        &s(&hps_w),
        "--hps-config",
        &s(&hps_c),
        "--hps-tokenizer",
        &s(&clip),
        "--aesthetic",
        &s(&clip),
        "--aesthetic-mlp",
        &s(&mlp),
        "--image-reward",
        &s(&ir),
        "--out",
        &s(&out),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let images: Vec<PilImage> = names.iter().map(|n| PilImage::load_png(folder.join(n)).unwrap()).collect();
    let texts: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let (cpu, f32) = (&Device::Cpu, DType::F32);
    let rewards: Vec<(&str, Box<dyn ImageScorer>)> = vec![
        ("clip_score", Box::new(ClipScore::load(&clip, f32, cpu).unwrap())),
        ("pickscore", Box::new(PickScore::load(&clip, f32, cpu).unwrap())),
        ("hps", Box::new(HpsScore::load_open_clip(&hps_w, &hps_c, &clip, f32, cpu).unwrap())),
        ("aesthetic", Box::new(AestheticScore::load(&clip, &mlp, f32, cpu).unwrap())),
        ("image_reward", Box::new(ImageRewardScore::load(&ir, f32, cpu).unwrap())),
    ];
    let rows = jsonl_rows(&out);
    assert_eq!(rows.len(), names.len());
    for (key, reward) in &rewards {
        let want = reward.score_pil(&images, Some(&texts)).unwrap();
        for (i, row) in rows.iter().enumerate() {
            assert_eq!(row[*key].as_f64().unwrap(), want[i], "{key}, {}", names[i]);
        }
    }
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row["image"], names[i].as_str());
        assert_eq!(row["prompt"], prompts[i].as_str());
        assert_eq!(row["mode"], images[i].description().as_str());
    }
    assert!(rows.iter().any(|r| r["mode"] == "RGBA"), "{rows:?}");
    // transformers 5's default image backend, on request.
    let tv_out = dir.join("torchvision.jsonl");
    let o = score(&["--clip-image-backend", "torchvision", "--out", &s(&tv_out)]);
    assert!(o.status.success(), "{}", text(&o));
    let tv = ClipScore::new(
        ClipScorer::load(&clip, f32, cpu).unwrap().with_image_backend(ImageBackend::Torchvision).unwrap(),
    );
    let want = tv.score_pil(&images, Some(&texts)).unwrap();
    let rows = jsonl_rows(&tv_out);
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row["clip_score"].as_f64().unwrap(), want[i], "torchvision backend, {}", names[i]);
    }
}
