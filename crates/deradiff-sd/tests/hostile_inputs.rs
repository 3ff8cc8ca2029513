//! Hostile inputs: absurd sizes, files that are not safetensors, paths of the wrong kind, output
//! paths that are not files. Each is a typed error whose message says what to fix; nothing
//! panics, aborts, hangs or clobbers a file.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use candle_core::{DType, Device, Tensor};
use common::*;
use deradiff_core::{NoObserver, Realigner};
use deradiff_sd::{Error, LoadOptions, Request, RgbImage, StableDiffusion, Unet, UnetConfig, Vae};

fn sd() -> &'static StableDiffusion {
    static SD: OnceLock<StableDiffusion> = OnceLock::new();
    SD.get_or_init(|| StableDiffusion::load(tiny_sd(), &[tiny_aligned()], &LoadOptions::default()).unwrap())
}

/// A fresh scratch directory of this test file.
fn dir(name: &str) -> PathBuf {
    scratch(&format!("hostile-{name}"))
}

/// A copy of the tiny checkpoint to break.
fn broken_copy(name: &str) -> PathBuf {
    let d = dir(name).join("sd");
    copy_dir(&tiny_sd(), &d);
    d
}

/// Runs `f` on another thread and fails (rather than hanging the test run) if it takes longer
/// than 60 s: a FIFO opened for reading blocks until a writer comes.
fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| panic!("{what} hung"))
}

fn load(reference: &Path, aligned: &[&Path]) -> Error {
    let (reference, aligned) = (reference.to_path_buf(), aligned.iter().map(|p| p.to_path_buf()).collect::<Vec<_>>());
    let err = within("StableDiffusion::load", move || {
        StableDiffusion::load(&reference, &aligned, &LoadOptions::default()).unwrap_err()
    });
    println!("{err}");
    err
}

fn tiny_request() -> Request {
    Request { prompts: vec!["a cat".into()], steps: 1, ..Default::default() }
}

// ---------------------------------------------------------------------------------------------
// 1. Sizes

#[test]
fn huge_sample_size_is_a_config_error_not_a_panic() {
    let d = broken_copy("sample-size");
    let cfg = d.join("unet/config.json");
    let text = std::fs::read_to_string(&cfg).unwrap().replace("\"sample_size\": 8", "\"sample_size\": 1000000000");
    std::fs::write(&cfg, text).unwrap();
    let sd = StableDiffusion::load(&d, &[] as &[&Path], &LoadOptions::default()).unwrap();
    // The default size saturates instead of overflowing.
    assert_eq!(sd.default_size(), (2_000_000_000, 2_000_000_000));
    let check = |err: Error| {
        println!("{err}");
        match &err {
            Error::ConfigField { path, field, message } => {
                assert_eq!(path, &cfg);
                assert_eq!(field, "sample_size");
                assert!(message.contains("8192") && message.contains("Request::height"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    };
    let realigner = Realigner::new(vec![1.0]).unwrap();
    check(sd.generate(&tiny_request(), &realigner, &mut NoObserver).unwrap_err());
    check(sd.check_request(&tiny_request()).unwrap_err());
    check(sd.latent_shape(&tiny_request(), 1).unwrap_err());
    // Giving the size works around it.
    let sized = Request { height: Some(16), width: Some(16), ..tiny_request() };
    assert_eq!(sd.latent_shape(&sized, 1).unwrap(), [1, 4, 8, 8]);
    sd.generate(&sized, &realigner, &mut NoObserver).unwrap();

    // A sample_size past u64 is refused when the config is read.
    let text = std::fs::read_to_string(&cfg).unwrap().replace("1000000000", "1e30");
    std::fs::write(&cfg, text).unwrap();
    let err = load(&d, &[]);
    assert!(matches!(err, Error::ConfigField { ref field, .. } if field == "sample_size"), "{err:?}");
}

#[test]
fn huge_image_sizes_are_refused_before_allocation() {
    let half = Realigner::two_model(0.5).unwrap();
    for (h, w, field) in [
        (Some(1usize << 32), Some(1usize << 32), "height"),
        (Some(16), Some(1 << 40), "width"),
        (Some(8194), None, "height"),
        (Some(usize::MAX - 1), Some(usize::MAX - 1), "height"),
    ] {
        let req = Request { height: h, width: w, ..tiny_request() };
        for err in [
            sd().generate(&req, &half, &mut NoObserver).unwrap_err(),
            sd().check_request(&req).unwrap_err(),
            sd().latent_shape(&req, 1).unwrap_err(),
        ] {
            println!("{err}");
            match &err {
                Error::InvalidRequest { field: f, message } => {
                    assert_eq!(*f, field);
                    assert!(message.contains("8192") && message.contains("MAX_IMAGE_SIDE"), "{message}");
                }
                other => panic!("{other:?}"),
            }
        }
    }
    // The largest side is accepted (only the shape is computed here).
    let req = Request { height: Some(8192), width: Some(8192), ..tiny_request() };
    assert_eq!(sd().latent_shape(&req, 1).unwrap(), [1, 4, 4096, 4096]);
}

#[test]
fn huge_batches_are_refused() {
    let field_of = |req: Request| match sd().check_request(&req).unwrap_err() {
        Error::InvalidRequest { field, message } => {
            println!("{message}");
            assert!(message.contains("MAX_BATCH"), "{message}");
            field
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(field_of(Request { images_per_prompt: usize::MAX, ..tiny_request() }), "images_per_prompt");
    let two =
        Request { prompts: vec!["a".into(), "b".into()], images_per_prompt: usize::MAX / 2 + 1, ..tiny_request() };
    assert_eq!(field_of(two), "images_per_prompt");
    assert_eq!(field_of(Request { images_per_prompt: 4097, ..tiny_request() }), "images_per_prompt");
    assert_eq!(field_of(Request { prompts: vec!["x".into(); 5000], ..tiny_request() }), "prompts");
    // encode checks it too (it repeats the embeddings).
    let err = sd().encode(&Request { images_per_prompt: usize::MAX, ..tiny_request() }).unwrap_err();
    assert!(matches!(err, Error::InvalidRequest { field: "images_per_prompt", .. }), "{err:?}");
    // latent_shape's own batch.
    for batch in [0, StableDiffusion::MAX_BATCH + 1, usize::MAX] {
        let err = sd().latent_shape(&tiny_request(), batch).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(ref m) if m.contains("MAX_BATCH")), "{err:?}");
    }
    // Many latents of the largest size are more latent elements than a run may have.
    let req = Request { height: Some(8192), width: Some(8192), ..tiny_request() };
    let err = sd().latent_shape(&req, 4096).unwrap_err();
    assert!(
        matches!(err, Error::InvalidRequest { field: "images_per_prompt", ref message } if message.contains("MAX_LATENT_ELEMENTS")),
        "{err:?}"
    );
}

#[test]
fn unet_refuses_latents_too_large_or_empty() {
    let unet = &sd().unets()[0];
    let cpu = Device::Cpu;
    let ctx = Tensor::zeros((1, 77, 32), DType::F32, &cpu).unwrap();
    let one = Tensor::zeros((1, 4, 1, 1), DType::F32, &cpu).unwrap();
    // Element counts past usize (a broadcast view: no memory behind it) and merely huge ones.
    for dims in [[1usize, 4, 1 << 32, 1 << 32], [1, 4, 1 << 20, 1 << 20], [1, 4, 1 << 31, 1]] {
        let x = one.broadcast_as(dims.to_vec()).unwrap();
        let err = unet.forward(&x, 10.0, &ctx).unwrap_err();
        println!("{err}");
        assert!(
            matches!(err, Error::ShapeMismatch { ref context, ref expected, ref got }
                if context.contains("Unet::forward") && expected.contains("MAX_LATENT_ELEMENTS") && got == &dims),
            "{err:?}"
        );
    }
    for dims in [[1usize, 4, 0, 8], [1, 4, 8, 0], [0, 4, 8, 8]] {
        let x = Tensor::zeros(dims.to_vec(), DType::F32, &cpu).unwrap();
        let c = Tensor::zeros((dims[0], 77, 32), DType::F32, &cpu).unwrap();
        let err = unet.forward(&x, 10.0, &c).unwrap_err();
        assert!(matches!(err, Error::ShapeMismatch { ref got, .. } if got == &dims), "{err:?}");
    }
    // A context without tokens.
    let x = Tensor::zeros((1, 4, 8, 8), DType::F32, &cpu).unwrap();
    let empty = Tensor::zeros((1, 0, 32), DType::F32, &cpu).unwrap();
    let err = unet.forward(&x, 10.0, &empty).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { ref expected, .. } if expected.contains("tokens ≥ 1")), "{err:?}");
    // Odd sizes are fine.
    assert_eq!(
        unet.forward(&Tensor::zeros((1, 4, 3, 5), DType::F32, &cpu).unwrap(), 10.0, &ctx).unwrap().dims(),
        [1, 4, 3, 5]
    );
}

#[test]
fn vae_refuses_latents_too_large_or_empty() {
    let vae: &Vae = sd().vae();
    let cpu = Device::Cpu;
    let one = Tensor::zeros((1, 4, 1, 1), DType::F32, &cpu).unwrap();
    // Zero sizes used to panic inside candle's convolution.
    let mut cases: Vec<(Tensor, Vec<usize>)> = [[1usize, 4, 0, 8], [1, 4, 8, 0], [0, 4, 8, 8]]
        .into_iter()
        .map(|d| (Tensor::zeros(d.to_vec(), DType::F32, &cpu).unwrap(), d.to_vec()))
        .collect();
    for d in [[1usize, 4, 1 << 32, 1 << 32], [1, 4, 4097, 1], [1, 4, 1, 1 << 40]] {
        cases.push((one.broadcast_as(d.to_vec()).unwrap(), d.to_vec()));
    }
    for (z, dims) in cases {
        for err in [vae.decode(&z).unwrap_err(), vae.decode_f32(&z).unwrap_err(), vae.decode_unscaled(&z).unwrap_err()]
        {
            println!("{err}");
            assert!(
                matches!(err, Error::ShapeMismatch { ref context, ref got, .. } if context.contains("VAE") && got == &dims),
                "{err:?}"
            );
        }
    }
    // At the limit it decodes (a 4096-latent side is 8192 pixels with this VAE's factor 2).
    assert_eq!(vae.decode_f32(&Tensor::zeros((1, 4, 2, 3), DType::F32, &cpu).unwrap()).unwrap().dims(), [1, 3, 4, 6]);
}

#[test]
fn image_grid_with_absurd_gap_is_an_error() {
    let img = RgbImage::new(2, 1, vec![0; 6]).unwrap();
    let images = vec![img.clone(), img.clone(), img];
    for (columns, gap) in [(1, usize::MAX), (2, usize::MAX / 2), (3, 1 << 40), (1, 1 << 29)] {
        let err = RgbImage::grid(&images, columns, gap, [0, 0, 0]).unwrap_err();
        println!("{err}");
        assert!(matches!(err, Error::InvalidArgument(ref m) if m.contains("MAX_GRID_PIXELS")), "{err:?}");
    }
    assert_eq!(RgbImage::grid(&images, 2, 1, [9, 9, 9]).unwrap().width(), 5);
}

// ---------------------------------------------------------------------------------------------
// 2. Files that are not safetensors

fn fallback() -> (UnetConfig, PathBuf) {
    let path = tiny_sd().join("unet/config.json");
    (UnetConfig::from_file(&path).unwrap(), path)
}

fn load_unet_file(file: &Path) -> Error {
    let (cfg, cfg_path) = fallback();
    let err = Unet::load(file, Some((&cfg, &cfg_path)), DType::F32, &Device::Cpu).unwrap_err();
    println!("{err}");
    err
}

#[test]
fn files_that_are_not_safetensors_say_what_they_are() {
    let d = dir("not-safetensors");
    let real = std::fs::read(tiny_aligned().join("diffusion_pytorch_model.safetensors")).unwrap();
    let mut pickle2 = vec![0x80, 0x02, b'c', b'c', b'o', b'l', b'l'];
    pickle2.extend_from_slice(&[0u8; 100]);
    let mut pickle5 = vec![0x80, 0x05, 0x95];
    pickle5.extend_from_slice(&[7u8; 50]);
    let mut zip = b"PK\x03\x04\x14\x00\x00\x00".to_vec();
    zip.extend_from_slice(b"archive/data.pkl");
    // xorshift bytes: no format, not text.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let random: Vec<u8> = (0..4096)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 56) as u8
        })
        .collect();
    let mut header_too_long = 1_000u64.to_le_bytes().to_vec();
    header_too_long.extend_from_slice(b"{\"a\":");
    let mut huge_header = u64::MAX.to_le_bytes().to_vec();
    huge_header.extend_from_slice(&[0xff; 16]);
    let cases: Vec<(&str, Vec<u8>, &[&str])> = vec![
        ("pickle2", pickle2, &["Python pickle", "protocol 2", "convert it"]),
        ("pickle5", pickle5, &["Python pickle", "protocol 5", "save_pretrained"]),
        ("zip", zip, &["zip archive", "PyTorch", "convert it"]),
        ("random", random, &["no weight format"]),
        ("empty", Vec::new(), &["empty file"]),
        ("short", vec![1, 2, 3], &["3-byte file", "too short"]),
        ("header-too-long", header_too_long, &["truncated safetensors file", "1000 bytes"]),
        ("huge-header", huge_header, &["no weight format", "more than the 16 bytes"]),
        ("truncated", real[..real.len().min(200)].to_vec(), &["truncated safetensors file"]),
        (
            "lfs",
            b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n".to_vec(),
            &["Git LFS pointer", "git lfs pull"],
        ),
        ("html", b"<!DOCTYPE html><html><body>Not found</body></html>".to_vec(), &["web page"]),
        ("json", b"{\"_class_name\": \"UNet2DConditionModel\"}".to_vec(), &["JSON text"]),
        ("text", b"this is not a safetensors file".to_vec(), &["a text file", "this is not a safetensors file"]),
        ("gguf", b"GGUF\x03\x00\x00\x00\x00\x00\x00\x00".to_vec(), &["GGUF"]),
    ];
    for (name, bytes, needles) in cases {
        let file = d.join(format!("{name}.safetensors"));
        std::fs::write(&file, &bytes).unwrap();
        let err = load_unet_file(&file);
        let message = err.to_string();
        assert!(message.starts_with(&format!("not a safetensors file: {}", file.display())), "{name}: {message}");
        assert!(matches!(err, Error::NotSafetensors { ref path, .. } if path == &file), "{name}: {err:?}");
        for needle in needles {
            assert!(message.contains(needle), "{name}: `{needle}` not in: {message}");
        }
    }
    // In a pipeline, the component's file is named.
    let sd = broken_copy("not-safetensors-vae");
    let file = sd.join("vae/diffusion_pytorch_model.safetensors");
    std::fs::write(&file, b"PK\x03\x04rest of a zip").unwrap();
    assert!(
        matches!(load(&sd, &[]), Error::NotSafetensors { ref path, ref looks_like } if path == &file && looks_like.contains("zip"))
    );
    // A weight index listing a shard outside its folder.
    let sd = broken_copy("index-escape");
    let unet = sd.join("unet");
    std::fs::remove_file(unet.join("diffusion_pytorch_model.safetensors")).unwrap();
    for bad in ["../vae/diffusion_pytorch_model.safetensors", "/dev/zero", ".."] {
        let index = serde_json::json!({ "weight_map": { "conv_in.weight": bad } });
        std::fs::write(unet.join("diffusion_pytorch_model.safetensors.index.json"), index.to_string()).unwrap();
        let err = load(&sd, &[]);
        assert!(
            matches!(err, Error::ConfigField { ref field, ref message, .. } if field == "weight_map" && message.contains("beside the index")),
            "{bad}: {err:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Paths of the wrong kind

fn wrong_kind(err: &Error) -> (&Path, &str, &str) {
    match err {
        Error::WrongKind { path, found, expected, .. } => (path, found, expected),
        other => panic!("expected WrongKind, got {other:?}"),
    }
}

#[test]
fn reference_of_the_wrong_kind() {
    // A file where the pipeline folder is expected.
    let file = tiny_sd().join("model_index.json");
    let err = load(&file, &[]);
    let (path, found, expected) = wrong_kind(&err);
    assert_eq!((path, found), (file.as_path(), "a file"));
    assert!(expected.contains("pipeline folder"), "{expected}");
    assert!(err.to_string().contains("is a file, expected the pipeline folder"), "{err}");

    // Its unet/ (or vae/, text_encoder/, tokenizer/) folder instead of the pipeline.
    for component in ["unet", "vae", "text_encoder", "tokenizer"] {
        let err = load(&tiny_sd().join(component), &[]);
        let (_, found, expected) = wrong_kind(&err);
        assert!(found.contains(&format!("the {component}/ folder of a pipeline")), "{found}");
        let parent = std::fs::canonicalize(tiny_sd()).unwrap();
        assert!(expected.contains(&format!("pass its parent, {}", parent.display())), "{expected}");
    }
    // A bare UNet folder that is not inside a pipeline.
    let err = load(&tiny_aligned(), &[]);
    let (_, found, expected) = wrong_kind(&err);
    assert!(found.contains("UNet or VAE folder"), "{found}");
    assert!(expected.contains("pipeline folder that holds it"), "{expected}");

    // A component that is a file, and a config that is a folder.
    let sd = broken_copy("unet-is-a-file");
    std::fs::remove_dir_all(sd.join("unet")).unwrap();
    std::fs::write(sd.join("unet"), b"x").unwrap();
    let err = load(&sd, &[]);
    assert_eq!(wrong_kind(&err).0, sd.join("unet"));
    assert_eq!(wrong_kind(&err).1, "a file");

    let sd = broken_copy("config-is-a-folder");
    std::fs::remove_file(sd.join("vae/config.json")).unwrap();
    std::fs::create_dir(sd.join("vae/config.json")).unwrap();
    let err = load(&sd, &[]);
    assert_eq!(wrong_kind(&err), (sd.join("vae/config.json").as_path(), "a folder", "a file"));

    let sd = broken_copy("weights-are-a-folder");
    let w = sd.join("text_encoder/model.safetensors");
    std::fs::remove_file(&w).unwrap();
    std::fs::create_dir(&w).unwrap();
    assert_eq!(wrong_kind(&load(&sd, &[])), (w.as_path(), "a folder", "a file"));

    let sd = broken_copy("tokenizer-is-a-file");
    std::fs::remove_dir_all(sd.join("tokenizer")).unwrap();
    std::fs::write(sd.join("tokenizer"), b"").unwrap();
    assert_eq!(wrong_kind(&load(&sd, &[])).1, "a file");

    // A scheduler/ that is a file: its config is unreachable, not missing.
    let sd = broken_copy("scheduler-is-a-file");
    std::fs::remove_dir_all(sd.join("scheduler")).unwrap();
    std::fs::write(sd.join("scheduler"), b"").unwrap();
    let err = load(&sd, &[]);
    assert!(wrong_kind(&err).1.contains("is a file, not a folder"), "{err}");
}

#[test]
fn aligned_unets_of_the_wrong_kind() {
    let d = dir("aligned-kinds");
    // Through a file.
    let file = d.join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let through = file.join("unet");
    let err = load(&tiny_sd(), &[&through]);
    assert!(wrong_kind(&err).1.contains(&format!("{} is a file, not a folder", file.display())), "{err}");
    // A pipeline whose unet/ is a file.
    let pipeline = d.join("pipeline");
    std::fs::create_dir_all(&pipeline).unwrap();
    std::fs::write(pipeline.join("unet"), b"x").unwrap();
    let err = load(&tiny_sd(), &[&pipeline]);
    assert_eq!(wrong_kind(&err), (pipeline.join("unet").as_path(), "a file", "a folder"));
    // Nothing there at all is still NotFound.
    let nowhere = d.join("nowhere");
    assert!(matches!(load(&tiny_sd(), &[&nowhere]), Error::NotFound { ref path, .. } if path == &nowhere));
}

#[cfg(unix)]
fn mkfifo(path: &Path) -> bool {
    std::process::Command::new("mkfifo").arg(path).status().map(|s| s.success()).unwrap_or(false)
}

#[cfg(unix)]
#[test]
fn fifos_devices_and_links_are_named_and_never_block() {
    use std::os::unix::fs::symlink;
    let d = dir("special");

    // /dev/null and /dev/zero as weights.
    for dev in ["/dev/null", "/dev/zero"] {
        let err = load(&tiny_sd(), &[Path::new(dev)]);
        assert!(wrong_kind(&err).1.contains("character device"), "{err}");
    }

    // A FIFO as the aligned UNet, as a config, as weights, as the scheduler config.
    let fifo = d.join("unet.safetensors");
    if mkfifo(&fifo) {
        let err = load(&tiny_sd(), &[&fifo]);
        assert_eq!(wrong_kind(&err).1, "a FIFO (named pipe)");
        assert!(err.to_string().contains("is a FIFO"), "{err}");

        for file in [
            "unet/config.json",
            "vae/diffusion_pytorch_model.safetensors",
            "scheduler/scheduler_config.json",
            "tokenizer/vocab.json",
            "tokenizer/tokenizer_config.json",
        ] {
            let sd = broken_copy(&format!("fifo-{}", file.replace('/', "-")));
            let path = sd.join(file);
            std::fs::remove_file(&path).unwrap();
            assert!(mkfifo(&path));
            let err = load(&sd, &[]);
            assert_eq!(wrong_kind(&err), (path.as_path(), "a FIFO (named pipe)", "a file"), "{file}");
        }
        // A link to a FIFO.
        let link = d.join("link-to-fifo.safetensors");
        symlink(&fifo, &link).unwrap();
        assert_eq!(wrong_kind(&load(&tiny_sd(), &[&link])).1, "a symbolic link to a FIFO (named pipe)");
    } else {
        println!("mkfifo is not available: FIFO cases skipped");
    }

    // A symbolic link loop, as the aligned UNet, as a config and on the way to a file.
    let a = d.join("loop-a");
    let b = d.join("loop-b");
    symlink(&b, &a).unwrap();
    symlink(&a, &b).unwrap();
    let err = load(&tiny_sd(), &[&a]);
    assert!(wrong_kind(&err).1.starts_with("a symbolic link loop"), "{err}");
    let err = load(&tiny_sd(), &[&a.join("unet")]);
    assert!(wrong_kind(&err).1.contains("symbolic link loop"), "{err}");
    let sd = broken_copy("loop-config");
    let cfg = sd.join("unet/config.json");
    std::fs::remove_file(&cfg).unwrap();
    symlink(&cfg, &cfg).unwrap();
    let err = load(&sd, &[]);
    assert_eq!(wrong_kind(&err).0, cfg.as_path());
    assert!(err.to_string().contains("is a symbolic link loop"), "{err}");

    // Dangling links.
    let dangling = d.join("dangling.safetensors");
    symlink(d.join("gone"), &dangling).unwrap();
    let err = load(&tiny_sd(), &[&dangling]);
    assert!(wrong_kind(&err).1.starts_with("a dangling symbolic link"), "{err}");
    let sd = broken_copy("dangling-weights");
    let w = sd.join("vae/diffusion_pytorch_model.safetensors");
    std::fs::remove_file(&w).unwrap();
    symlink(sd.join("nowhere.safetensors"), &w).unwrap();
    let err = load(&sd, &[]);
    assert_eq!(wrong_kind(&err).0, w.as_path());
    assert!(err.to_string().contains("dangling symbolic link"), "{err}");

    // Links to the right kind of thing are followed.
    let linked = d.join("linked-pipeline");
    symlink(tiny_sd(), &linked).unwrap();
    let unet_link = d.join("linked-unet.safetensors");
    symlink(tiny_aligned().join("diffusion_pytorch_model.safetensors"), &unet_link).unwrap();
    StableDiffusion::load(&linked, &[&unet_link], &LoadOptions::default()).unwrap();
}

#[cfg(unix)]
#[test]
fn unreadable_files_are_io_errors() {
    use std::os::unix::fs::PermissionsExt;
    let sd = broken_copy("no-permission");
    let cfg = sd.join("vae/config.json");
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o000)).unwrap();
    let unreadable = std::fs::read(&cfg).is_err();
    if unreadable {
        let err = load(&sd, &[]);
        assert!(matches!(err, Error::Io { action: "read", ref path, .. } if path == &cfg), "{err:?}");
        assert!(err.to_string().contains("ermission denied"), "{err}");
    } else {
        println!("running with the permission to read anything (root): unreadable-file case skipped");
    }
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).unwrap();
    let vae = sd.join("vae");
    std::fs::set_permissions(&vae, std::fs::Permissions::from_mode(0o000)).unwrap();
    if std::fs::read_dir(&vae).is_err() {
        let err = load(&sd, &[]);
        assert!(matches!(err, Error::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("ermission denied"), "{err}");
    }
    std::fs::set_permissions(&vae, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn oversized_and_binary_config_files() {
    let sd = broken_copy("huge-config");
    let cfg = sd.join("unet/config.json");
    // Sparse: no disk used.
    std::fs::OpenOptions::new().write(true).open(&cfg).unwrap().set_len(65 << 20).unwrap();
    let err = load(&sd, &[]);
    assert!(
        matches!(err, Error::Config { ref path, ref message } if path == &cfg && message.contains("64 MiB")),
        "{err:?}"
    );

    let sd = broken_copy("binary-config");
    let cfg = sd.join("vae/config.json");
    std::fs::write(&cfg, [0x7b, 0xff, 0xfe, 0x00]).unwrap();
    let err = load(&sd, &[]);
    assert!(
        matches!(err, Error::Config { ref path, ref message } if path == &cfg && message.contains("not UTF-8")),
        "{err:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Output paths

#[test]
fn save_png_refuses_what_is_not_a_file_and_clobbers_nothing() {
    let d = dir("save-png");
    let image = RgbImage::new(2, 1, vec![0, 0, 0, 255, 255, 255]).unwrap();
    let folder = d.join("a-folder");
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(folder.join("keep.txt"), b"keep").unwrap();
    let err = image.save_png(&folder).unwrap_err();
    println!("{err}");
    assert!(
        matches!(err, Error::InvalidArgument(ref m) if m.contains(&folder.display().to_string()) && m.contains("is a directory")),
        "{err:?}"
    );
    assert_eq!(std::fs::read(folder.join("keep.txt")).unwrap(), b"keep");
    let err = image.save_png("/").unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    // A regular file is replaced whole.
    let file = d.join("out.png");
    std::fs::write(&file, b"old").unwrap();
    image.save_png(&file).unwrap();
    assert!(std::fs::read(&file).unwrap().starts_with(b"\x89PNG"));

    #[cfg(unix)]
    {
        let fifo = d.join("fifo.png");
        if mkfifo(&fifo) {
            let (img, f) = (image.clone(), fifo.clone());
            let err = within("save_png to a FIFO", move || img.save_png(&f).unwrap_err());
            println!("{err}");
            assert!(matches!(err, Error::InvalidArgument(ref m) if m.contains("FIFO")), "{err:?}");
        }
        let err = image.save_png("/dev/null").unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(ref m) if m.contains("device")), "{err:?}");
        let a = d.join("loop-a.png");
        std::os::unix::fs::symlink(d.join("loop-b.png"), &a).unwrap();
        std::os::unix::fs::symlink(&a, d.join("loop-b.png")).unwrap();
        let err = image.save_png(&a).unwrap_err();
        println!("{err}");
        assert!(err.to_string().contains("symbolic link"), "{err:?}");
    }
    // Only the files made above are left (no temporaries).
    let mut left: Vec<String> =
        std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    left.sort();
    assert!(left.iter().all(|n| !n.ends_with(".tmp")), "{left:?}");
}

// ---------------------------------------------------------------------------------------------
// 5. The fuzzers' findings in this crate (`fuzz/findings/`)

#[test]
fn fuzz_findings_are_errors() {
    use deradiff_sd::clip::ClipModelConfig;
    use deradiff_sd::ClipTokenizer;
    let path = Path::new("config.json");
    // C1: `addition_time_embed_dim` × 6 overflowed.
    let cfg = UnetConfig::from_json(
        r#"{"addition_embed_type":"text_time","addition_time_embed_dim":4611686018427387904,"projection_class_embeddings_input_dim":1}"#,
        path,
    )
    .unwrap();
    let err = cfg.arch(path).unwrap_err();
    assert!(matches!(err, Error::Unsupported { ref message, .. } if message.contains("no room")), "{err:?}");
    // C2: `grid * grid + 1` overflowed.
    let err =
        ClipModelConfig::from_json(r#"{"vision_config":{"image_size":4294967296,"patch_size":1}}"#, path).unwrap_err();
    assert!(matches!(err, Error::Config { ref message, .. } if message.contains("MAX_IMAGE_SIZE")), "{err:?}");
    // C4 / C5 (the CLIP image processor's): deradiff-rewards' tests/hostile_inputs.rs.
    // A truncated tokenizer.json.
    let d = dir("tokenizer-json");
    std::fs::write(d.join("tokenizer.json"), br#"{"decoder":"#).unwrap();
    let err = ClipTokenizer::from_dir(&d).unwrap_err();
    println!("{err}");
    assert!(matches!(err, Error::Config { .. }), "{err:?}");
}
