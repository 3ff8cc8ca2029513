//! Reward models with NaN or infinite weights, biases or scales (CLIP's `logit_scale`, a head's
//! bias), or values their dtype cannot hold: refused at load, naming the file and the tensor,
//! never a score of NaN. Every case checks the error's variant and message and that no input
//! file changed.

#[path = "../../deradiff-sd/tests/common/edit.rs"]
mod edit;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use deradiff_rewards::{AestheticScore, ClipScore, Error, HpsScore, ImageRewardScore};
use edit::{copy_tree, rewrite, Edit, Snapshot};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deradiff-tune/tests/fixtures")
}

fn scratch(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("rewards-hostile-models").join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A copy of the fixture folder `from` at `root/name` with `edit` applied to tensor `tensor` of
/// `file`.
fn broken(root: &Path, name: &str, from: &str, file: &str, tensor: &str, edit: Edit) -> PathBuf {
    let to = root.join(name);
    copy_tree(&fixtures().join(from), &to);
    rewrite(&fixtures().join(from).join(file), &to.join(file), &[(tensor, edit)], None);
    to
}

type Load = Box<dyn Fn(&Path) -> Result<(), Error>>;

#[test]
fn reward_models_with_non_finite_values_are_refused_naming_the_tensor() {
    let root = scratch("cases");
    let clip = |dtype: DType| -> Load { Box::new(move |d: &Path| ClipScore::load(d, dtype, &Device::Cpu).map(|_| ())) };
    let tokenizer = fixtures().join("clip/clip-gelu");
    let hps: Load = Box::new(move |d: &Path| {
        HpsScore::load_open_clip(
            d.join("open_clip_model.safetensors"),
            d.join("open_clip_config.json"),
            &tokenizer,
            DType::F32,
            &Device::Cpu,
        )
        .map(|_| ())
    });
    let aesthetic_mlp: Load = Box::new(|d: &Path| {
        AestheticScore::load(fixtures().join("clip/clip-gelu"), d.join("mlp-16.safetensors"), DType::F32, &Device::Cpu)
            .map(|_| ())
    });
    let aesthetic_clip: Load = Box::new(|d: &Path| {
        AestheticScore::load(d, fixtures().join("aesthetic/mlp-16.safetensors"), DType::F32, &Device::Cpu).map(|_| ())
    });
    let image_reward: Load = Box::new(|d: &Path| ImageRewardScore::load(d, DType::F32, &Device::Cpu).map(|_| ()));
    let m = "model.safetensors";
    let cases: Vec<(&str, PathBuf, &str, &str, Load)> = vec![
        (
            "CLIP score: logit_scale NaN",
            broken(&root, "clip-scale", "clip/clip-gelu", m, "logit_scale", Edit::Set(0, f64::NAN)),
            "logit_scale",
            "holds NaN at element 0 of 1",
            clip(DType::F32),
        ),
        (
            "CLIP score: a vision weight +inf",
            broken(
                &root,
                "clip-vision",
                "clip/clip-gelu",
                m,
                "vision_model.encoder.layers.0.mlp.fc1.weight",
                Edit::Set(7, f64::INFINITY),
            ),
            "vision_model.encoder.layers.0.mlp.fc1.weight",
            "holds inf at element 7",
            clip(DType::F32),
        ),
        (
            "CLIP score: a text bias -inf",
            broken(
                &root,
                "clip-text",
                "clip/clip-gelu",
                m,
                "text_model.encoder.layers.0.mlp.fc1.bias",
                Edit::Set(0, f64::NEG_INFINITY),
            ),
            "text_model.encoder.layers.0.mlp.fc1.bias",
            "holds -inf at element 0",
            clip(DType::F32),
        ),
        (
            "CLIP score in f16: a weight of 1e5",
            broken(
                &root,
                "clip-f16",
                "clip/clip-gelu",
                m,
                "text_model.encoder.layers.0.mlp.fc1.weight",
                Edit::Set(1, 1e5),
            ),
            "text_model.encoder.layers.0.mlp.fc1.weight",
            "infinite in F16",
            clip(DType::F16),
        ),
        (
            "HPS: logit_scale NaN",
            broken(&root, "hps-scale", "hps", "open_clip_model.safetensors", "logit_scale", Edit::Set(0, f64::NAN)),
            "logit_scale",
            "holds NaN",
            hps,
        ),
        (
            "aesthetic: the MLP's first bias NaN",
            broken(&root, "aesthetic-mlp", "aesthetic", "mlp-16.safetensors", "layers.0.bias", Edit::Set(2, f64::NAN)),
            "layers.0.bias",
            "holds NaN at element 2",
            aesthetic_mlp,
        ),
        (
            "aesthetic: its CLIP's visual projection inf",
            broken(
                &root,
                "aesthetic-clip",
                "clip/clip-gelu",
                m,
                "visual_projection.weight",
                Edit::Set(0, f64::INFINITY),
            ),
            "visual_projection.weight",
            "holds inf",
            aesthetic_clip,
        ),
        (
            "ImageReward: the head's weight NaN",
            broken(&root, "ir-head", "image_reward", m, "mlp.layers.0.weight", Edit::Set(5, f64::NAN)),
            "mlp.layers.0.weight",
            "holds NaN at element 5",
            Box::new(|d: &Path| ImageRewardScore::load(d, DType::F32, &Device::Cpu).map(|_| ())),
        ),
        (
            "ImageReward: a BERT layer norm inf",
            broken(
                &root,
                "ir-bert",
                "image_reward",
                m,
                "blip.text_encoder.embeddings.LayerNorm.weight",
                Edit::Set(0, f64::INFINITY),
            ),
            "blip.text_encoder.embeddings.LayerNorm.weight",
            "holds inf",
            image_reward,
        ),
    ];
    for (case, dir, tensor, what, load) in &cases {
        let before = Snapshot::of(&[&root, &fixtures()]);
        let result = load(dir);
        before.assert_unchanged(&[&root, &fixtures()], case);
        let e = match result {
            Ok(()) => panic!("{case}: loaded"),
            Err(e) => e,
        };
        let msg = e.to_string();
        println!("{case}: {msg}");
        let variant = matches!(&e, Error::Sd(deradiff_sd::Error::NonFiniteTensor { tensor: t, .. }) if t == tensor);
        assert!(variant, "{case}: wrong variant: {e:?}");
        assert!(msg.contains(what) && msg.contains(&dir.display().to_string()), "{case}: {msg}");
    }
    // The unedited copies load: the refusals are the values', not the copies'.
    ClipScore::load(fixtures().join("clip/clip-gelu"), DType::F16, &Device::Cpu).unwrap();
}
