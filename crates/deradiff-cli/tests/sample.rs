//! `deradiff sample` end to end on the tiny Stable Diffusion fixtures of `deradiff-sd`: real PNGs
//! that decode, one per λ plus a labelled grid, and bad options that exit non-zero with a message.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

#[cfg(unix)]
#[path = "../../deradiff-sd/tests/common/hf_cache.rs"]
mod hf_cache;

fn deradiff(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_deradiff")).args(args).output().expect("the deradiff binary runs")
}

fn fixture(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deradiff-sd/tests/fixtures").join(name);
    p.to_str().unwrap().to_string()
}

fn out_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("sample-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Decodes a PNG: (width, height, RGB bytes).
fn decode_png(path: &Path) -> (u32, u32, Vec<u8>) {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut reader = png::Decoder::new(std::io::BufReader::new(file)).read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}

fn base_args<'a>(reference: &'a str, aligned: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "sample",
        "--reference",
        reference,
        "--aligned",
        aligned,
        "--prompt",
        "a red cube on a table",
        "--steps",
        "3",
        "--guidance",
        "5",
        "--seed",
        "11",
        "--quiet",
        "--out",
        out,
    ]
}

#[test]
fn lambda_row_writes_one_png_per_lambda_and_a_grid() {
    let dir = out_dir("row");
    let out = dir.join("row.png");
    let (reference, aligned) = (fixture("tiny-sd"), fixture("tiny-aligned-unet"));
    let mut args = base_args(&reference, &aligned, out.to_str().unwrap());
    args.extend(["--lambda", "0,1", "--scheduler", "ddim"]);
    let result = deradiff(&args);
    assert!(result.status.success(), "stderr: {}", String::from_utf8_lossy(&result.stderr));

    let (w0, h0, l0) = decode_png(&dir.join("row-l0.png"));
    let (w1, h1, l1) = decode_png(&dir.join("row-l1.png"));
    assert_eq!((w0, h0), (w1, h1));
    assert!(w0 > 0 && h0 > 0);
    assert_ne!(l0, l1, "λ = 0 (reference) and λ = 1 (aligned) give different images");
    let (gw, gh, _) = decode_png(&out);
    assert!(gw > 2 * w0 && gh > h0, "the grid holds both images and their labels: {gw}x{gh}");
    // No temporary files are left behind (PNGs are written atomically).
    let names: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(names.iter().all(|n| n.ends_with(".png")), "{names:?}");

    // λ = 0 through the CLI is the reference model alone: the same image as weights [1, 0].
    let single = dir.join("weights.png");
    let mut args = base_args(&reference, &aligned, single.to_str().unwrap());
    args.extend(["--weights", "1,0", "--scheduler", "ddim"]);
    let result = deradiff(&args);
    assert!(result.status.success(), "stderr: {}", String::from_utf8_lossy(&result.stderr));
    assert_eq!(decode_png(&single).2, l0);

    // Without --aligned the reference alone is sampled (one UNet per step): the same image again.
    let alone = dir.join("alone.png");
    let mut args = base_args(&reference, &aligned, alone.to_str().unwrap());
    args.drain(3..5);
    args.extend(["--scheduler", "ddim"]);
    let result = deradiff(&args);
    assert!(result.status.success(), "stderr: {}", String::from_utf8_lossy(&result.stderr));
    assert_eq!(decode_png(&alone).2, l0);
    // λ or weights without an aligned model: a usage error.
    args.extend(["--lambda", "0.5"]);
    let result = deradiff(&args);
    assert_eq!(result.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&result.stderr).contains("give --aligned"));
}

#[test]
fn bad_options_exit_nonzero_with_a_message() {
    let dir = out_dir("bad");
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("x.png");
    let blocker = dir.join("a-file");
    std::fs::write(&blocker, b"not a directory").unwrap();
    let unwritable = blocker.join("x.png");
    let (reference, aligned) = (fixture("tiny-sd"), fixture("tiny-aligned-unet"));
    let missing = dir.join("no-such-checkpoint");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--guidance", "-1"], "guidance"),
        (vec!["--steps", "0"], "steps"),
        (vec!["--lambda", "0.5", "--weights", "0.5,0.5"], "cannot be used with"),
        (vec!["--weights", "0.2,0.2"], "sum"),
        (vec!["--weights", "1"], "--weights"),
        (vec!["--lambda", "nan"], "λ"),
        (vec!["--size", "17x16"], "size"),
        (vec!["--size", "big"], "--size"),
        (vec!["--eta", "0.5"], "--eta"),
        // The checkpoint's own scheduler (here PNDM, sampled with euler-a) takes no Karras σ.
        (vec!["--sigmas", "karras"], "--sigmas applies to euler, heun, dpm++ and unipc"),
        // ε-prediction cannot start at ᾱ = 0: refused before sampling, naming the options.
        (vec!["--scheduler", "ddim", "--timestep-spacing", "trailing", "--zero-snr"], "ε-prediction is undefined"),
        (vec!["--dtype", "f8"], "dtype"),
        (vec!["--original-size", "64"], "--original-size"),
        (vec!["--crop-top-left", "3"], "--crop-top-left"),
        // Micro-conditioning on an SD 1.5 checkpoint is refused, not ignored.
        (vec!["--target-size", "32x32"], "SDXL"),
    ];
    for (extra, needle) in cases {
        let mut args = base_args(&reference, &aligned, out.to_str().unwrap());
        args.extend(extra.iter().copied());
        let result = deradiff(&args);
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert!(!result.status.success(), "{extra:?} succeeded");
        assert!(stderr.contains(needle), "{extra:?}: stderr does not mention '{needle}': {stderr}");
        assert!(!stderr.contains("panicked"), "{extra:?} panicked: {stderr}");
    }
    // A missing checkpoint and an unwritable output: errors naming the path.
    let result = deradiff(&base_args(missing.to_str().unwrap(), &aligned, out.to_str().unwrap()));
    assert!(!result.status.success());
    assert!(String::from_utf8_lossy(&result.stderr).contains("no-such-checkpoint"));
    let result = deradiff(&base_args(&reference, &aligned, unwritable.to_str().unwrap()));
    assert!(!result.status.success());
    assert!(String::from_utf8_lossy(&result.stderr).contains("output directory"));
    assert!(!out.exists());
}

#[test]
fn sdxl_is_detected_and_takes_micro_conditioning() {
    let dir = out_dir("sdxl");
    let (reference, aligned) = (fixture("tiny-sdxl"), fixture("tiny-sdxl-aligned-unet"));
    let run = |name: &str, extra: &[&str]| -> Vec<u8> {
        let out = dir.join(name);
        let mut args = base_args(&reference, &aligned, out.to_str().unwrap());
        args.retain(|a| *a != "--quiet");
        args.extend(["--size", "24x16"]);
        args.extend(extra.iter().copied());
        let result = deradiff(&args);
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert!(result.status.success(), "stderr: {stderr}");
        assert!(stderr.contains("SDXL checkpoint"), "{stderr}");
        let (w, h, data) = decode_png(&out);
        assert_eq!((w, h), (24, 16));
        data
    };
    let default = run("default.png", &[]);
    // The defaults spelled out (original = target = the image size, crop 0,0) change nothing.
    let explicit =
        run("explicit.png", &["--original-size", "24x16", "--target-size", "24x16", "--crop-top-left", "0,0"]);
    assert_eq!(default, explicit);
    let cropped = run("cropped.png", &["--original-size", "48x32", "--crop-top-left", "8,4"]);
    assert_ne!(default, cropped);
    // A size the VAE cannot produce.
    let out = dir.join("bad.png");
    let mut args = base_args(&reference, &aligned, out.to_str().unwrap());
    args.extend(["--size", "15x16"]);
    let result = deradiff(&args);
    assert!(!result.status.success());
    assert!(String::from_utf8_lossy(&result.stderr).contains("size"));
}

#[test]
fn the_checkpoints_own_scheduler_is_the_default_and_every_sampler_runs() {
    let dir = out_dir("schedulers");
    let (reference, aligned) = (fixture("tiny-sd"), fixture("tiny-aligned-unet"));
    let run = |name: &str, extra: &[&str]| -> (String, Vec<u8>) {
        let out = dir.join(name);
        let mut args = base_args(&reference, &aligned, out.to_str().unwrap());
        args.retain(|a| *a != "--quiet");
        args.extend(["--lambda", "0.5"]);
        args.extend(extra.iter().copied());
        let result = deradiff(&args);
        let stderr = String::from_utf8_lossy(&result.stderr).to_string();
        assert!(result.status.success(), "{extra:?}: {stderr}");
        (stderr, decode_png(&out).2)
    };
    // SD 1.5 ships a PNDMScheduler config: sampled with Euler ancestral, and said so.
    let (stderr, default) = run("default.png", &[]);
    assert!(stderr.contains("PNDMScheduler is not implemented; sampling with euler-a"), "{stderr}");
    let (stderr, euler_a) = run("euler-a.png", &["--scheduler", "euler-a"]);
    assert!(!stderr.contains("not implemented"), "{stderr}");
    assert_eq!(default, euler_a);
    let mut images = vec![default];
    for extra in [
        &["--scheduler", "euler"][..],
        &["--scheduler", "heun"],
        &["--scheduler", "dpm++-2m", "--sigmas", "karras"],
        &["--scheduler", "dpm++-2m-sde", "--sigmas", "karras"],
        &["--scheduler", "unipc"],
        &["--scheduler", "lcm"],
        &["--scheduler", "ddim", "--timestep-spacing", "trailing", "--eta", "1"],
    ] {
        let name = format!("{}.png", extra[1]);
        let (_, image) = run(&name, extra);
        assert!(!images.contains(&image), "{extra:?} gives another sampler's image");
        images.push(image);
    }
    // SDXL's own: EulerDiscreteScheduler.
    let out = dir.join("sdxl.png");
    let (xl, xl_aligned) = (fixture("tiny-sdxl"), fixture("tiny-sdxl-aligned-unet"));
    let mut args = base_args(&xl, &xl_aligned, out.to_str().unwrap());
    args.extend(["--size", "24x16"]);
    let own = deradiff(&args);
    assert!(own.status.success(), "{}", String::from_utf8_lossy(&own.stderr));
    let explicit = dir.join("sdxl-euler.png");
    let mut args = base_args(&xl, &xl_aligned, explicit.to_str().unwrap());
    args.extend(["--size", "24x16", "--scheduler", "euler"]);
    assert!(deradiff(&args).status.success());
    assert_eq!(decode_png(&out).2, decode_png(&explicit).2, "SDXL's default is its own Euler");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `deradiff` with the Hugging Face cache environment set to `env` (and nothing else of it).
#[cfg(unix)]
fn deradiff_with_cache(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_deradiff"));
    for var in ["HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"] {
        command.env_remove(var);
    }
    command.envs(env.iter().copied()).args(args).output().expect("the deradiff binary runs")
}

#[cfg(unix)]
#[test]
fn hugging_face_repo_ids_give_the_images_of_their_paths() {
    let dir = out_dir("hub");
    // The cache huggingface_hub laid out (scripts/gen_hf_cache_fixture.py), as HF_HOME/hub.
    let home = dir.join("hf-home");
    let hub = home.join("hub");
    hf_cache::build(&hf_cache::workspace_root(env!("CARGO_MANIFEST_DIR")), &hub);
    let run = |reference: &str, aligned: &str, name: &str, env: &[(&str, &Path)]| {
        let out = dir.join(format!("{name}.png"));
        let args = ["sample", "--reference", reference, "--aligned", aligned, "--prompt", "a red cube"];
        let mut args = args.to_vec();
        args.extend(["--steps", "2", "--lambda", "0.5", "--seed", "3", "--quiet", "--out", out.to_str().unwrap()]);
        let result = deradiff_with_cache(&args, env);
        assert!(result.status.success(), "{name}: {}", String::from_utf8_lossy(&result.stderr));
        std::fs::read(&out).unwrap()
    };
    let by_path = run(&fixture("tiny-sd"), &fixture("tiny-aligned-unet"), "path", &[]);
    // Repo ids in HF_HUB_CACHE: the pipeline's main branch, the aligned UNet repo (unet/ only).
    let by_id =
        run("deradiff-test/tiny-sd", "deradiff-test/tiny-aligned-unet", "id", &[("HF_HUB_CACHE", hub.as_path())]);
    assert_eq!(by_id, by_path, "repo ids give the image of their paths");
    // Found through HF_HOME; the fp16-variant branch's file names (the same weights), the aligned
    // UNet pinned by its commit hash.
    let commit = hf_cache::manifest(&hf_cache::workspace_root(env!("CARGO_MANIFEST_DIR")))["commits"]["aligned main"]
        .as_str()
        .unwrap()
        .to_string();
    let aligned = format!("deradiff-test/tiny-aligned-unet@{commit}/unet");
    let variant = run("deradiff-test/tiny-sd@fp16", &aligned, "variant", &[("HF_HOME", home.as_path())]);
    assert_eq!(variant, by_path, "the fp16-variant names and a commit hash resolve to the same models");
    // Not cached: a usage error naming the folder looked in and the command that fetches it.
    let out = dir.join("never.png");
    let aligned = fixture("tiny-aligned-unet");
    let args = base_args("deradiff-test/not-cached@v2", &aligned, out.to_str().unwrap());
    let result = deradiff_with_cache(&args, &[("HF_HUB_CACHE", hub.as_path())]);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert_eq!(result.status.code(), Some(2), "{stderr}");
    for needle in [
        "--reference <REFERENCE>",
        &hub.join("models--deradiff-test--not-cached").display().to_string(),
        "`huggingface-cli download deradiff-test/not-cached --revision v2`",
        "nor a file or folder",
    ] {
        assert!(stderr.contains(needle), "`{needle}` not in: {stderr}");
    }
    assert!(!out.exists());
}

#[test]
fn single_file_checkpoints_sample_as_their_folders() {
    let dir = out_dir("single-file");
    let run = |name: &str, reference: &str, aligned: &str, extra: &[&str]| -> Output {
        let out = dir.join(name);
        let mut args = base_args(reference, aligned, out.to_str().unwrap());
        args.extend(["--size", "32x32", "--lambda", "0.5"]);
        args.extend(extra.iter().copied());
        deradiff(&args)
    };
    let png = |name: &str, result: &Output| {
        assert!(result.status.success(), "stderr: {}", String::from_utf8_lossy(&result.stderr));
        decode_png(&dir.join(name)).2
    };
    let folder = run("folder.png", &fixture("single-file/sdxl"), &fixture("single-file/sdxl-aligned-unet"), &[]);
    let folder = png("folder.png", &folder);
    // The SDXL single file (its tiny heads need the folder's configs) with a single-file aligned UNet.
    let config = fixture("single-file/sdxl");
    let single = run(
        "single.png",
        &fixture("single-file/sdxl.safetensors"),
        &fixture("single-file/sdxl-aligned.safetensors"),
        &["--model-config", &config],
    );
    assert_eq!(png("single.png", &single), folder);
    // Without tokenizers: a usage-level message naming --tokenizer and the folders it needs.
    let result = run(
        "none.png",
        &fixture("single-file/sd15.safetensors"),
        &fixture("single-file/sd15-aligned.safetensors"),
        &[],
    );
    assert!(!result.status.success());
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(stderr.contains("--tokenizer") && stderr.contains("tokenizer/"), "{stderr}");
    // The single-file options with a pipeline folder would be ignored: an error.
    let result = run(
        "ignored.png",
        &fixture("single-file/sdxl"),
        &fixture("single-file/sdxl-aligned-unet"),
        &["--tokenizer", &config],
    );
    assert_eq!(result.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&result.stderr).contains("drop --tokenizer"));
    // --prediction-type takes epsilon or v_prediction only.
    let result = run(
        "bad.png",
        &fixture("single-file/sd15.safetensors"),
        &fixture("single-file/sd15-aligned.safetensors"),
        &["--prediction-type", "sample"],
    );
    assert_eq!(result.status.code(), Some(2));
}

/// A single-file SD 1.x reference without `--tokenizer` takes the tokenizer of its family's
/// diffusers pipeline (`stable-diffusion-v1-5/stable-diffusion-v1-5`) from the Hugging Face cache,
/// as diffusers' `from_single_file` does: the same image as with `--tokenizer`.
#[cfg(unix)]
#[test]
fn a_single_file_takes_its_tokenizers_from_the_hugging_face_cache() {
    let dir = out_dir("single-file-hub");
    // The cache layout of huggingface_hub: refs/main naming a commit, its snapshot holding the
    // pipeline's tokenizer/ (the tiny SD 1.5 fixture's).
    let hub = dir.join("hub");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let repo = hub.join("models--stable-diffusion-v1-5--stable-diffusion-v1-5");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    let tokenizer = repo.join("snapshots").join(commit).join("tokenizer");
    std::fs::create_dir_all(&tokenizer).unwrap();
    let fixture_tokenizer = PathBuf::from(fixture("single-file/sd15")).join("tokenizer");
    for entry in std::fs::read_dir(&fixture_tokenizer).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), tokenizer.join(entry.file_name())).unwrap();
    }
    let (reference, aligned) =
        (fixture("single-file/sd15.safetensors"), fixture("single-file/sd15-aligned.safetensors"));
    let run = |name: &str, extra: &[&str], env: &[(&str, &Path)]| {
        let out = dir.join(name);
        let mut args = base_args(&reference, &aligned, out.to_str().unwrap());
        args.extend(["--size", "32x32", "--lambda", "0.5"]);
        args.extend(extra.iter().copied());
        let result = deradiff_with_cache(&args, env);
        (result, out)
    };
    let folder = fixture("single-file/sd15");
    let (given, out) = run("given.png", &["--tokenizer", &folder], &[]);
    assert!(given.status.success(), "{}", String::from_utf8_lossy(&given.stderr));
    let given = decode_png(&out).2;
    let (cached, out) = run("cached.png", &[], &[("HF_HUB_CACHE", hub.as_path())]);
    assert!(cached.status.success(), "{}", String::from_utf8_lossy(&cached.stderr));
    assert_eq!(decode_png(&out).2, given, "the cached pipeline's tokenizer is the one given");
    // An empty cache: the error names --tokenizer, the pipeline and the command that fetches it.
    let empty = dir.join("empty-hub");
    std::fs::create_dir_all(&empty).unwrap();
    let (none, _) = run("none.png", &[], &[("HF_HUB_CACHE", empty.as_path())]);
    let stderr = String::from_utf8_lossy(&none.stderr);
    assert!(!none.status.success(), "{stderr}");
    for needle in ["--tokenizer", "stable-diffusion-v1-5/stable-diffusion-v1-5", "huggingface-cli download"] {
        assert!(stderr.contains(needle), "`{needle}` not in: {stderr}");
    }
}
