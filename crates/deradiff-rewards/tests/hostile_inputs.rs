//! The fuzzers' findings in the CLIP image processor (`fuzz/findings/`, C4 / C5): sizes that
//! would allocate gigabytes are errors, never a panic or an abort (moved from deradiff-sd's
//! `tests/hostile_inputs.rs` with the processor).

use std::path::Path;

use candle_core::Device;
use deradiff_rewards::ClipPreprocessor;
use deradiff_sd::{Error, RgbImage};

#[test]
fn fuzz_findings_are_errors() {
    let path = Path::new("config.json");
    // C4 / C5: a 65536² crop (12.9 GB) and a 16384² resize.
    let image = RgbImage::new(5, 3, vec![7; 45]).unwrap();
    for (json, field) in
        [(r#"{"crop_size":65536}"#, "crop_size"), (r#"{"size":{"height":16384,"width":16384}}"#, "size")]
    {
        let p = ClipPreprocessor::from_json(json, path).unwrap();
        let err = p.preprocess(&image, &Device::Cpu).unwrap_err();
        println!("{err}");
        assert!(
            matches!(err, Error::InvalidArgument(ref m) if m.contains(field) && m.contains("MAX_PIXELS")),
            "{err:?}"
        );
    }
    // A resize that explodes with the aspect ratio.
    let tall = RgbImage::new(1, 4096, vec![0; 3 * 4096]).unwrap();
    assert!(matches!(ClipPreprocessor::default().preprocess(&tall, &Device::Cpu), Err(Error::InvalidArgument(_))));
}
