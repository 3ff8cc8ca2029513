//! An SD-style UNet with 8 groups in its GroupNorms (SD uses 32) against diffusers
//! (`scripts/gen_unet_groups_fixture.py`): our blocks take `norm_num_groups` where
//! candle-transformers' down and up blocks always use 32.

use candle_core::{DType, Device};
use deradiff_sd::{Unet, UnetConfig};

fn fixtures() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

#[test]
fn a_unet_with_8_groups_matches_diffusers() {
    let dir = fixtures().join("tiny-unet-groups8");
    let config = UnetConfig::from_file(dir.join("config.json")).unwrap();
    assert_eq!(config.norm_num_groups, Some(8));
    let unet = Unet::load(&dir, None, DType::F32, &Device::Cpu).unwrap();
    let refs = candle_core::safetensors::load(fixtures().join("tiny-unet-groups8-reference.safetensors"), &Device::Cpu)
        .unwrap();
    let t = f64::from(refs["t"].to_vec1::<f32>().unwrap()[0]);
    let out = unet.forward(&refs["x"], t, &refs["context"]).unwrap();
    let expected = &refs["output"];
    assert_eq!(out.dims(), expected.dims());
    let diff = (out - expected).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
    let diff = diff.to_scalar::<f32>().unwrap();
    let scale = expected.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    assert!(diff < 1e-5, "max |ours - diffusers| = {diff} (output scale {scale})");
    // With 32 groups (what candle's blocks would use) the output is far off: the group count matters.
    let mut wrong = config.clone();
    wrong.norm_num_groups = Some(16);
    let weights = dir.join("diffusion_pytorch_model.safetensors");
    let unet16 = Unet::from_files(&[weights], wrong, &dir.join("config.json"), DType::F32, &Device::Cpu).unwrap();
    let off = (unet16.forward(&refs["x"], t, &refs["context"]).unwrap() - expected).unwrap();
    let off = off.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    assert!(off > 1e-2, "a different group count should change the output, max diff {off}");
}
