//! The image size of `deradiff sample` (`--size WxH`) and SDXL's micro-conditioning
//! (`--original-size`, `--crop-top-left`, `--target-size`).

use crate::error::{CliError, Result};

/// The largest image `deradiff sample` makes: W·H ≤ 4096 × 4096 pixels.
const MAX_PIXELS: u64 = 4096 * 4096;

/// Image sides must be multiples of this: Stable Diffusion's VAE maps 8×8 pixels to one latent.
const SIZE_MULTIPLE: usize = 8;

/// SDXL's micro-conditioning options of `deradiff sample`.
#[derive(Debug, clap::Args)]
pub(crate) struct MicroArgs {
    /// SDXL micro-conditioning: the original image size WxH (default: the image size).
    #[arg(long, allow_hyphen_values = true)]
    original_size: Option<String>,
    /// SDXL micro-conditioning: the crop's top-left corner as TOP,LEFT in pixels (default 0,0).
    #[arg(long, allow_hyphen_values = true)]
    crop_top_left: Option<String>,
    /// SDXL micro-conditioning: the target size WxH (default: the image size).
    #[arg(long, allow_hyphen_values = true)]
    target_size: Option<String>,
}

/// The micro-conditioning, in the request's order (height, width).
pub(super) struct Micro {
    /// The original size (height, width).
    pub(super) original_size: Option<(usize, usize)>,
    /// The crop's top-left corner (top, left).
    pub(super) crop_top_left: (usize, usize),
    /// The target size (height, width).
    pub(super) target_size: Option<(usize, usize)>,
    /// Whether any micro-conditioning option was given (SDXL only).
    pub(super) given: bool,
}

impl MicroArgs {
    /// The options parsed: (width, height) on the command line, (height, width) in the request
    /// (diffusers' order).
    pub(super) fn parse(&self) -> Result<Micro> {
        let size = |option: &str, text: &Option<String>| -> Result<Option<(usize, usize)>> {
            Ok(text.as_deref().map(|s| parse_size_option(option, s)).transpose()?.map(|(w, h)| (h, w)))
        };
        let original_size = size("--original-size", &self.original_size)?;
        let target_size = size("--target-size", &self.target_size)?;
        let crop_top_left = self.crop_top_left.as_deref().map(parse_crop).transpose()?.unwrap_or((0, 0));
        let given = original_size.is_some() || target_size.is_some() || self.crop_top_left.is_some();
        Ok(Micro { original_size, crop_top_left, target_size, given })
    }
}

/// `WxH` → `(width, height)`, both positive integers.
fn parse_size_option(option: &str, size: &str) -> Result<(usize, usize)> {
    let bad = || CliError::usage(format!("{option} {size}: expected WxH in pixels, e.g. 512x512"));
    let (w, h) = size.split_once(['x', 'X']).ok_or_else(bad)?;
    let parse = |s: &str| -> Result<usize> {
        let s = s.trim();
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        // All digits: the only failure left is a number too large for the machine.
        s.parse::<usize>().map_err(|_| {
            CliError::usage(format!("{option} {size}: {s} is too large (images are at most 4096x4096 pixels, W·H)"))
        })
    };
    let (w, h) = (parse(w)?, parse(h)?);
    if w == 0 || h == 0 {
        return Err(CliError::usage(format!("{option} {size}: W and H must be positive")));
    }
    Ok((w, h))
}

/// `--size WxH`: positive multiples of 8 with W·H ≤ [`MAX_PIXELS`] (checked without overflow).
pub(super) fn parse_image_size(size: &str) -> Result<(usize, usize)> {
    let (w, h) = parse_size_option("--size", size)?;
    if w % SIZE_MULTIPLE != 0 || h % SIZE_MULTIPLE != 0 {
        let round = |x: usize| x.div_ceil(SIZE_MULTIPLE).max(1) * SIZE_MULTIPLE;
        return Err(CliError::usage(format!(
            "--size {size}: W and H must be positive multiples of {SIZE_MULTIPLE} (the VAE works on \
             {SIZE_MULTIPLE}×{SIZE_MULTIPLE} pixel blocks), e.g. {}x{}",
            round(w),
            round(h)
        )));
    }
    match (w as u64).checked_mul(h as u64) {
        Some(pixels) if pixels <= MAX_PIXELS => Ok((w, h)),
        _ => Err(CliError::usage(format!(
            "--size {size}: {w}x{h} is too large; images are limited to W·H ≤ 4096×4096 = {MAX_PIXELS} pixels"
        ))),
    }
}

/// `TOP,LEFT` → `(top, left)`.
fn parse_crop(crop: &str) -> Result<(usize, usize)> {
    let bad = || CliError::usage(format!("--crop-top-left {crop}: expected TOP,LEFT in pixels, e.g. 0,0"));
    let (t, l) = crop.split_once(',').ok_or_else(bad)?;
    let parse = |s: &str| s.trim().parse::<usize>().map_err(|_| bad());
    Ok((parse(t)?, parse(l)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_checked_without_overflow() {
        assert_eq!(parse_image_size("512x768").unwrap(), (512, 768));
        assert_eq!(parse_image_size("4096X4096").unwrap(), (4096, 4096));
        assert_eq!(parse_image_size("8192x2048").unwrap(), (8192, 2048));
        for (bad, needle) in [
            ("17x16", "multiples of 8"),
            ("0x0", "positive"),
            ("-8x8", "expected WxH"),
            ("big", "expected WxH"),
            ("8x", "expected WxH"),
            ("4104x4096", "W·H ≤ 4096×4096"),
            ("4294967296x4294967296", "too large"),
            ("99999999999999999999999x8", "too large"),
        ] {
            let e = parse_image_size(bad).unwrap_err();
            assert!(e.to_string().starts_with(&format!("--size {bad}")), "{e}");
            assert!(e.to_string().contains(needle), "{bad}: {e}");
            assert_eq!(e.exit_code(), 2);
        }
    }
}
