//! transformers' `CLIPImageProcessor` with its PIL backend: resize of the shortest side with
//! PIL's own resampling (the same fixed-point arithmetic, so the resized 8-bit pixels are
//! bit-identical), center crop, rescale by 1/255, normalisation by the processor's mean and std.

use std::path::Path;

use candle_core::{Device, Tensor};
use deradiff_sd::fs::{probe_path, read_text, Kind};
use deradiff_sd::{Error, Result, RgbImage};
use serde_json::Value;

use crate::image::{resize_8bpc, resize_torch_u8, torch_aa_bicubic_f32, PilImage};

/// OpenAI CLIP's normalisation mean (transformers' `OPENAI_CLIP_MEAN`).
pub const OPENAI_CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
/// OpenAI CLIP's normalisation standard deviation (transformers' `OPENAI_CLIP_STD`).
pub const OPENAI_CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

/// PIL's resampling filters (the `resample` code of `preprocessor_config.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resample {
    /// `1`: Lanczos (support 3).
    Lanczos,
    /// `2`: bilinear (triangle, support 1).
    Bilinear,
    /// `3`: bicubic, a = −0.5 (CLIP's).
    Bicubic,
    /// `4`: box.
    Box,
    /// `5`: Hamming.
    Hamming,
}

impl Resample {
    /// From PIL's code (`0`, nearest, is not supported).
    pub fn from_pil(code: u64) -> Option<Self> {
        match code {
            1 => Some(Self::Lanczos),
            2 => Some(Self::Bilinear),
            3 => Some(Self::Bicubic),
            4 => Some(Self::Box),
            5 => Some(Self::Hamming),
            _ => None,
        }
    }

    pub(crate) fn support(self) -> f64 {
        match self {
            Self::Lanczos => 3.0,
            Self::Bilinear | Self::Hamming => 1.0,
            Self::Bicubic => 2.0,
            Self::Box => 0.5,
        }
    }

    /// PIL's `*_filter` functions (`libImaging/Resample.c`).
    pub(crate) fn filter(self, x: f64) -> f64 {
        let sinc = |x: f64| {
            if x == 0.0 {
                1.0
            } else {
                let x = x * std::f64::consts::PI;
                x.sin() / x
            }
        };
        match self {
            Self::Box => {
                if x > -0.5 && x <= 0.5 {
                    1.0
                } else {
                    0.0
                }
            }
            Self::Bilinear => {
                let x = x.abs();
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Self::Hamming => {
                let x = x.abs();
                if x == 0.0 {
                    1.0
                } else if x >= 1.0 {
                    0.0
                } else {
                    let x = x * std::f64::consts::PI;
                    x.sin() / x * (f64::from(0.54f32) + f64::from(0.46f32) * x.cos())
                }
            }
            Self::Bicubic => {
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            Self::Lanczos => {
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

/// Resizes planar float channels `[3, h, w]` as torch's `interpolate(..., mode="bicubic",
/// antialias=True)` does on a float32 tensor: width first, then height, f32 weights and sums
/// (no rounding to 8 bits, no clamp).
fn resize_planar(src: &[f32], w: usize, h: usize, out_w: usize, out_h: usize) -> Vec<f32> {
    let dot = |k: &[f32], at: &dyn Fn(usize) -> f32| -> f32 {
        let mut t = at(0) * k[0];
        for (j, &kj) in k.iter().enumerate().skip(1) {
            t += at(j) * kj;
        }
        t
    };
    let (mut cur, mut cur_w) = (src.to_vec(), w);
    if out_w != w {
        let cx = torch_aa_bicubic_f32(w, out_w);
        let mut tmp = vec![0f32; 3 * h * out_w];
        for c in 0..3 {
            for y in 0..h {
                let row = &cur[(c * h + y) * w..(c * h + y + 1) * w];
                for (xx, (xmin, k)) in cx.iter().enumerate() {
                    tmp[(c * h + y) * out_w + xx] = if k.is_empty() { 0.0 } else { dot(k, &|j| row[xmin + j]) };
                }
            }
        }
        (cur, cur_w) = (tmp, out_w);
    }
    if out_h != h {
        let cy = torch_aa_bicubic_f32(h, out_h);
        let mut out = vec![0f32; 3 * out_h * cur_w];
        for c in 0..3 {
            for (yy, (ymin, k)) in cy.iter().enumerate() {
                for x in 0..cur_w {
                    out[(c * out_h + yy) * cur_w + x] =
                        if k.is_empty() { 0.0 } else { dot(k, &|j| cur[(c * h + ymin + j) * cur_w + x]) };
                }
            }
        }
        cur = out;
    }
    cur
}

/// Resizes an image as PIL's `Image.resize((width, height), filter)` (bit-identical 8-bit
/// output for RGB images).
pub fn resize_like_pil(image: &RgbImage, width: usize, height: usize, filter: Resample) -> Result<RgbImage> {
    if width == 0 || height == 0 {
        return Err(Error::InvalidArgument(format!("cannot resize an image to {width}x{height}")));
    }
    let data = resize_8bpc(image.data(), (image.width(), image.height()), 3, (width, height), filter);
    RgbImage::new(width, height, data)
}

/// How images are resized before the crop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeTo {
    /// The shorter side becomes this many pixels, the longer one `⌊n · long / short⌋`
    /// (transformers' `{"shortest_edge": n}`; CLIP's).
    ShortestEdge(usize),
    /// Exactly this `height × width` (`{"height": h, "width": w}`).
    Exact {
        /// Height in pixels.
        height: usize,
        /// Width in pixels.
        width: usize,
    },
    /// The longer side becomes this many pixels (each side `round(side · n / long)`, Python's
    /// round), then the image is padded with zeros to an `n × n` square, centred (HPS v2's
    /// `ResizeMaxSize`). No crop follows. [`ClipPreprocessor::preprocess`] does it on float
    /// pixels as HPS v2 does; [`ClipPreprocessor::resize_and_crop`] gives the 8-bit
    /// approximation.
    LongestEdgePad(usize),
}

/// Whose arithmetic the crop offset and the rescaling follow: they differ in the last place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PixelConvention {
    /// transformers' image processors: the crop's top-left at `⌊(size − crop) / 2⌋`; rescaling
    /// in f64, then f32.
    #[default]
    Transformers,
    /// torchvision's transforms on PIL images (`CenterCrop`, `ToTensor`): the top-left at
    /// `int(round((size − crop) / 2))` (Python's round, half to even: a difference of 3 puts
    /// it at 2, not 1); `ToTensor` divides by 255 in f32. openai/CLIP's `_transform` and
    /// ImageReward use them.
    Torchvision,
    /// transformers 5's torchvision backend of the same processor (`CLIPImageProcessor`, the
    /// default of `AutoProcessor` when torchvision is installed): the resize on the uint8
    /// tensor with torch's antialiased bicubic (int16 weights, [`ImageBackend::Torchvision`]),
    /// the crop's top-left at `int((size − crop) / 2)` (a larger crop zero-pads `⌊(crop −
    /// size) / 2⌋` before), rescaling fused into the normalisation in f32 (`(x − mean · 255) /
    /// (std · 255)`).
    TransformersTorchvision,
}

/// transformers' two image-processor backends for a `preprocessor_config.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ImageBackend {
    /// The PIL backend (`CLIPImageProcessorPil`, `backend="pil"`): PIL's resize on the 8-bit
    /// image. deradiff's default for CLIP score and PickScore.
    #[default]
    Pil,
    /// The torchvision backend (`CLIPImageProcessor`, `backend="torchvision"`, transformers 5's
    /// default): torch's resize of the uint8 tensor. Its CLIP scores differ from the PIL
    /// backend's by up to ~2.5e-3 relative; bicubic (`resample: 3`) only.
    Torchvision,
}

/// transformers' `CLIPImageProcessor` (PIL backend): optional resize, center crop (zero-padded
/// when the image is smaller than the crop), rescale, normalise; channels first.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipPreprocessor {
    /// Whether to resize.
    pub do_resize: bool,
    /// The resize target.
    pub size: ResizeTo,
    /// The resampling filter.
    pub resample: Resample,
    /// Whether to crop the center.
    pub do_center_crop: bool,
    /// Crop `(height, width)`.
    pub crop_size: (usize, usize),
    /// Whether to multiply the 8-bit values by `rescale_factor`.
    pub do_rescale: bool,
    /// Usually 1/255.
    pub rescale_factor: f64,
    /// Whether to normalise by `image_mean` / `image_std`.
    pub do_normalize: bool,
    /// Per-channel mean.
    pub image_mean: [f64; 3],
    /// Per-channel standard deviation.
    pub image_std: [f64; 3],
    /// The crop's rounding and the rescaling's arithmetic.
    pub convention: PixelConvention,
}

impl Default for ClipPreprocessor {
    /// `CLIPImageProcessor()`: shortest edge 224 (bicubic), 224 × 224 crop, 1/255, OpenAI's
    /// mean and std.
    fn default() -> Self {
        Self {
            do_resize: true,
            size: ResizeTo::ShortestEdge(224),
            resample: Resample::Bicubic,
            do_center_crop: true,
            crop_size: (224, 224),
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            image_mean: OPENAI_CLIP_MEAN,
            image_std: OPENAI_CLIP_STD,
            convention: PixelConvention::Transformers,
        }
    }
}

/// The largest side (in pixels) a preprocessor config may ask for.
const MAX_SIDE: u64 = 1 << 16;

fn json_usize(v: &Value, field: &str, path: &Path) -> Result<usize> {
    v.as_u64()
        .filter(|&n| n > 0 && n <= MAX_SIDE)
        .map(|n| n as usize)
        .ok_or_else(|| Error::config(path, format!("`{field}` must be an integer from 1 to {MAX_SIDE}, got {v}")))
}

fn json_bool(o: &serde_json::Map<String, Value>, field: &str, default: bool, path: &Path) -> Result<bool> {
    match o.get(field) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(Error::config(path, format!("`{field}` must be true or false, got {v}"))),
    }
}

fn json_triple(o: &serde_json::Map<String, Value>, field: &str, default: [f64; 3], path: &Path) -> Result<[f64; 3]> {
    let bad = |v: &Value| Error::config(path, format!("`{field}` must be a number or a list of 3 numbers, got {v}"));
    match o.get(field) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Number(n)) => n.as_f64().map(|x| [x; 3]).ok_or_else(|| bad(&Value::Number(n.clone()))),
        Some(Value::Array(a)) if a.len() == 3 => {
            let mut out = [0.0; 3];
            for (slot, v) in out.iter_mut().zip(a) {
                *slot = v.as_f64().ok_or_else(|| bad(v))?;
            }
            Ok(out)
        }
        Some(v) => Err(bad(v)),
    }
}

/// torchvision's `ToTensor` of an 8-bit value: `x.float().div(255)` in f32 (a rescale factor
/// other than 1/255 multiplies that by `factor · 255`).
fn to_tensor(x: u8, factor: f64) -> f32 {
    f32::from(x) * (factor * 255.0) as f32 / 255.0
}

/// `image` padded with zeros to `n × n`, centred as torchvision's `F.pad(img, [left, top, right,
/// bottom])` with `left = ⌊(n − w) / 2⌋`, `top = ⌊(n − h) / 2⌋` places it.
fn pad_to_square(image: &RgbImage, n: usize) -> Result<RgbImage> {
    let (w, h) = (image.width(), image.height());
    if w > n || h > n {
        return Err(Error::InvalidArgument(format!("cannot pad a {w}x{h} image to {n}x{n}")));
    }
    let (left, top) = ((n - w) / 2, (n - h) / 2);
    let mut data = vec![0u8; n * n * 3];
    for y in 0..h {
        let dst = ((top + y) * n + left) * 3;
        data[dst..dst + w * 3].copy_from_slice(&image.data()[y * w * 3..(y + 1) * w * 3]);
    }
    RgbImage::new(n, n, data)
}

impl ClipPreprocessor {
    /// HPS v2's preprocessing (open_clip's `image_transform(..., resize_longest_max=True)` at
    /// evaluation): the longer side to `image_size` (bicubic), zero padding to a square, 1/255,
    /// OpenAI's mean and std.
    pub fn longest_edge_pad(image_size: usize) -> Self {
        Self {
            size: ResizeTo::LongestEdgePad(image_size),
            do_center_crop: false,
            crop_size: (image_size, image_size),
            convention: PixelConvention::Torchvision,
            ..Self::default()
        }
    }

    /// openai/CLIP's `_transform(n)`, which ImageReward uses: torchvision's `Resize(n,
    /// BICUBIC)` on the PIL image (the shorter side to `n`), `CenterCrop(n)` (torchvision's
    /// rounding), `ToTensor`, `Normalize` with OpenAI's mean and std
    /// ([`PixelConvention::Torchvision`]).
    pub fn openai_clip(n: usize) -> Self {
        Self {
            size: ResizeTo::ShortestEdge(n),
            crop_size: (n, n),
            convention: PixelConvention::Torchvision,
            ..Self::default()
        }
    }

    /// The same `preprocessor_config.json` with transformers' other backend (see
    /// [`ImageBackend`]). Only for a transformers processor (not HPS v2's or openai/CLIP's
    /// transforms); the torchvision backend needs bicubic resizing.
    pub fn with_backend(mut self, backend: ImageBackend) -> Result<Self> {
        if !matches!(self.convention, PixelConvention::Transformers | PixelConvention::TransformersTorchvision) {
            return Err(Error::InvalidArgument(format!(
                "ClipPreprocessor::with_backend: {backend:?} is a backend of transformers' processor, not of this \
                 {:?} transform",
                self.convention
            )));
        }
        if backend == ImageBackend::Torchvision && self.do_resize && self.resample != Resample::Bicubic {
            return Err(Error::InvalidArgument(format!(
                "ClipPreprocessor::with_backend: the torchvision backend is implemented for bicubic resizing \
                 (`resample: 3`), not {:?}",
                self.resample
            )));
        }
        self.convention = match backend {
            ImageBackend::Pil => PixelConvention::Transformers,
            ImageBackend::Torchvision => PixelConvention::TransformersTorchvision,
        };
        Ok(self)
    }

    /// Reads a `preprocessor_config.json` (fields missing take `CLIPImageProcessor`'s defaults).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = read_text(path, "image preprocessor config")?;
        Self::from_json(&text, path)
    }

    /// `dir/preprocessor_config.json` when present, CLIP's defaults otherwise.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let path = dir.as_ref().join("preprocessor_config.json");
        if probe_path(&path, Kind::File, "image preprocessor config", None)? {
            Self::from_file(path)
        } else {
            Ok(Self::default())
        }
    }

    /// Parses a `preprocessor_config.json` document (`path` is only used in error messages).
    pub fn from_json(json: &str, path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let o = match serde_json::from_str::<Value>(json) {
            Ok(Value::Object(o)) => o,
            Ok(_) => return Err(Error::config(path, "expected a JSON object")),
            Err(e) => return Err(Error::config(path, e.to_string())),
        };
        let d = Self::default();
        let size = match o.get("size") {
            None | Some(Value::Null) => d.size,
            Some(v @ Value::Number(_)) => ResizeTo::ShortestEdge(json_usize(v, "size", path)?),
            Some(Value::Object(s)) => {
                if let Some(n) = s.get("shortest_edge") {
                    if s.get("longest_edge").is_some_and(|v| !v.is_null()) {
                        return Err(Error::Unsupported {
                            path: path.to_path_buf(),
                            message: "`size.longest_edge` is not supported (CLIP uses `shortest_edge`)".into(),
                        });
                    }
                    ResizeTo::ShortestEdge(json_usize(n, "size.shortest_edge", path)?)
                } else if let (Some(h), Some(w)) = (s.get("height"), s.get("width")) {
                    ResizeTo::Exact {
                        height: json_usize(h, "size.height", path)?,
                        width: json_usize(w, "size.width", path)?,
                    }
                } else {
                    return Err(Error::config(path, "`size` needs `shortest_edge`, or `height` and `width`"));
                }
            }
            Some(v) => return Err(Error::config(path, format!("`size` must be an integer or an object, got {v}"))),
        };
        let crop_size = match o.get("crop_size") {
            None | Some(Value::Null) => d.crop_size,
            Some(v @ Value::Number(_)) => {
                let n = json_usize(v, "crop_size", path)?;
                (n, n)
            }
            Some(Value::Object(s)) => match (s.get("height"), s.get("width")) {
                (Some(h), Some(w)) => {
                    (json_usize(h, "crop_size.height", path)?, json_usize(w, "crop_size.width", path)?)
                }
                _ => return Err(Error::config(path, "`crop_size` needs `height` and `width`")),
            },
            Some(v) => {
                return Err(Error::config(path, format!("`crop_size` must be an integer or an object, got {v}")))
            }
        };
        let resample = match o.get("resample") {
            None | Some(Value::Null) => d.resample,
            Some(v) => v.as_u64().and_then(Resample::from_pil).ok_or_else(|| {
                Error::Unsupported {
                    path: path.to_path_buf(),
                    message: format!(
                        "`resample` = {v}: supported are PIL's 1 (Lanczos), 2 (bilinear), 3 (bicubic), 4 (box), 5 (Hamming)"
                    ),
                }
            })?,
        };
        let rescale_factor = match o.get("rescale_factor") {
            None | Some(Value::Null) => d.rescale_factor,
            Some(v) => v
                .as_f64()
                .filter(|x| x.is_finite() && *x > 0.0)
                .ok_or_else(|| Error::config(path, format!("`rescale_factor` must be a positive number, got {v}")))?,
        };
        let image_std = json_triple(&o, "image_std", d.image_std, path)?;
        if image_std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(Error::config(path, format!("`image_std` must be positive, got {image_std:?}")));
        }
        let image_mean = json_triple(&o, "image_mean", d.image_mean, path)?;
        if image_mean.iter().any(|m| !m.is_finite()) {
            return Err(Error::config(path, format!("`image_mean` must be finite, got {image_mean:?}")));
        }
        Ok(Self {
            do_resize: json_bool(&o, "do_resize", d.do_resize, path)?,
            size,
            resample,
            do_center_crop: json_bool(&o, "do_center_crop", d.do_center_crop, path)?,
            crop_size,
            do_rescale: json_bool(&o, "do_rescale", d.do_rescale, path)?,
            rescale_factor,
            do_normalize: json_bool(&o, "do_normalize", d.do_normalize, path)?,
            image_mean,
            image_std,
            convention: PixelConvention::Transformers,
        })
    }

    /// `(height, width)` after the resize, as transformers computes it.
    pub fn resized_size(&self, height: usize, width: usize) -> (usize, usize) {
        if !self.do_resize {
            return (height, width);
        }
        match self.size {
            ResizeTo::Exact { height, width } => (height, width),
            ResizeTo::LongestEdgePad(n) => {
                let scale = n as f64 / height.max(width) as f64;
                let side = |d: usize| ((d as f64 * scale).round_ties_even() as usize).max(1);
                (side(height), side(width))
            }
            ResizeTo::ShortestEdge(n) => {
                let (short, long) = if width <= height { (width, height) } else { (height, width) };
                // Python's `int(n * long / short)`; exact in f64 for any real image size.
                let new_long = (n as f64 * long as f64 / short as f64) as usize;
                if width <= height {
                    (new_long, n)
                } else {
                    (n, new_long)
                }
            }
        }
    }

    /// [`Self::resized_size`], or an [`Error::InvalidArgument`] naming `size` when it has more
    /// than [`Self::MAX_PIXELS`] pixels.
    fn checked_resized_size(&self, height: usize, width: usize) -> Result<(usize, usize)> {
        let (h, w) = self.resized_size(height, width);
        if h.checked_mul(w).is_none_or(|n| n > Self::MAX_PIXELS) {
            return Err(Error::InvalidArgument(format!(
                "ClipPreprocessor: resizing a {width}x{height} image to `size` {:?} gives {w}x{h} pixels, more than {} \
                 (ClipPreprocessor::MAX_PIXELS)",
                self.size,
                Self::MAX_PIXELS
            )));
        }
        Ok((h, w))
    }

    /// The most pixels a resize or a crop may make: 2^24 (4096 × 4096; CLIP takes 224 × 224 or
    /// 336 × 336). Checked before anything is allocated.
    pub const MAX_PIXELS: usize = 1 << 24;

    /// The resized and cropped 8-bit image (before rescaling and normalisation). A resize
    /// (`size`, for this image's aspect ratio) or a crop (`crop_size`) of more than
    /// [`Self::MAX_PIXELS`] pixels is an [`Error::InvalidArgument`] naming the field.
    pub fn resize_and_crop(&self, image: &RgbImage) -> Result<RgbImage> {
        let (h, w) = self.checked_resized_size(image.height(), image.width())?;
        if self.do_center_crop && self.crop_size.0.checked_mul(self.crop_size.1).is_none_or(|n| n > Self::MAX_PIXELS) {
            return Err(Error::InvalidArgument(format!(
                "ClipPreprocessor: `crop_size` {:?} is more than {} pixels (ClipPreprocessor::MAX_PIXELS)",
                self.crop_size,
                Self::MAX_PIXELS
            )));
        }
        let resized = if (h, w) != (image.height(), image.width()) {
            if self.convention == PixelConvention::TransformersTorchvision {
                if self.resample != Resample::Bicubic {
                    return Err(Error::InvalidArgument(format!(
                        "ClipPreprocessor: the torchvision backend is implemented for bicubic resizing, not {:?}",
                        self.resample
                    )));
                }
                let data = resize_torch_u8(image.data(), (image.width(), image.height()), 3, (w, h));
                RgbImage::new(w, h, data)?
            } else {
                resize_like_pil(image, w, h, self.resample)?
            }
        } else {
            image.clone()
        };
        if let (true, ResizeTo::LongestEdgePad(n)) = (self.do_resize, self.size) {
            return pad_to_square(&resized, n);
        }
        if !self.do_center_crop {
            return Ok(resized);
        }
        let (ch, cw) = self.crop_size;
        let (h, w) = (resized.height() as i64, resized.width() as i64);
        // transformers' `center_crop`: top-left at ⌊(size − crop) / 2⌋, torchvision's at
        // round_half_even((size − crop) / 2); outside the image (a crop larger than the image)
        // is zero.
        let offset = |d: i64| match self.convention {
            PixelConvention::Transformers => d.div_euclid(2),
            PixelConvention::Torchvision => (d as f64 / 2.0).round_ties_even() as i64,
            // `int((size − crop) / 2.0)`, or the left padding `(crop − size) // 2` of a larger crop:
            // both truncate toward zero.
            PixelConvention::TransformersTorchvision => d / 2,
        };
        let top = offset(h - ch as i64);
        let left = offset(w - cw as i64);
        let src = resized.data();
        let mut data = vec![0u8; ch * cw * 3];
        for y in 0..ch {
            let sy = top + y as i64;
            if sy < 0 || sy >= h {
                continue;
            }
            for x in 0..cw {
                let sx = left + x as i64;
                if sx < 0 || sx >= w {
                    continue;
                }
                let s = ((sy * w + sx) * 3) as usize;
                data[(y * cw + x) * 3..(y * cw + x) * 3 + 3].copy_from_slice(&src[s..s + 3]);
            }
        }
        RgbImage::new(cw, ch, data)
    }

    /// Pixel values `[3, H, W]` (f32) of one image.
    pub fn preprocess(&self, image: &RgbImage, device: &Device) -> Result<Tensor> {
        if let (true, ResizeTo::LongestEdgePad(n)) = (self.do_resize, self.size) {
            return self.preprocess_longest_edge_pad(image, n, device);
        }
        let img = self.resize_and_crop(image)?;
        let (h, w) = (img.height(), img.width());
        let mut out = self.rescaled_planar(&img);
        self.normalise(&mut out);
        Ok(Tensor::from_vec(out, (3, h, w), device)?)
    }

    /// The image's channels as planes `[3, H, W]`, rescaled in the [`PixelConvention`]'s
    /// arithmetic: transformers rescales in f64, then rounds to f32; torchvision's `ToTensor`
    /// divides by 255 in f32 (for another factor, x · factor · 255 / 255 in f32).
    fn rescaled_planar(&self, image: &RgbImage) -> Vec<f32> {
        let plane = image.height() * image.width();
        let mut out = vec![0f32; 3 * plane];
        for (i, px) in image.data().chunks_exact(3).enumerate() {
            for c in 0..3 {
                out[c * plane + i] = match (self.do_rescale, self.convention) {
                    (false, _) => f32::from(px[c]),
                    (true, PixelConvention::Transformers) => (f64::from(px[c]) * self.rescale_factor) as f32,
                    (true, PixelConvention::Torchvision) => to_tensor(px[c], self.rescale_factor),
                    // Fused into the normalisation; alone, `image * factor` in f32.
                    (true, PixelConvention::TransformersTorchvision) if self.do_normalize => f32::from(px[c]),
                    (true, PixelConvention::TransformersTorchvision) => f32::from(px[c]) * self.rescale_factor as f32,
                };
            }
        }
        out
    }

    /// `(x − mean) / std` per channel plane, in f32 (when `do_normalize`).
    fn normalise(&self, planar: &mut [f32]) {
        if !self.do_normalize {
            return;
        }
        let plane = planar.len() / 3;
        // transformers' torchvision backend folds the rescale into mean and std (f32 tensors
        // times 1 / factor).
        let fold = match self.convention {
            PixelConvention::TransformersTorchvision if self.do_rescale => (1.0 / self.rescale_factor) as f32,
            _ => 1.0,
        };
        for c in 0..3 {
            let (mean, std) = (self.image_mean[c] as f32 * fold, self.image_std[c] as f32 * fold);
            for v in &mut planar[c * plane..(c + 1) * plane] {
                *v = (*v - mean) / std;
            }
        }
    }

    /// HPS v2's float path (`hpsv2/src/open_clip/transform.py`): `ToTensor` (x / 255 in f32 with
    /// [`PixelConvention::Torchvision`], which [`Self::longest_edge_pad`] sets), then
    /// `ResizeMaxSize` on the float image — unless the longer side is already `n` (then nothing
    /// is done, as there), the sides `round_half_even(side · n / long)`, resized with antialiased
    /// bicubic weights without rounding or clamping, zero-padded to `n × n` with the extra pixel
    /// of an odd pad right / bottom — then the normalisation (padding becomes `−mean / std`).
    fn preprocess_longest_edge_pad(&self, image: &RgbImage, n: usize, device: &Device) -> Result<Tensor> {
        let (h, w) = (image.height(), image.width());
        let planar = self.rescaled_planar(image);
        let (nh, nw) = self.resized_size(h, w);
        let (oh, ow, data) = if h.max(w) == n {
            (h, w, planar)
        } else {
            if nh.checked_mul(nw).is_none_or(|p| p > Self::MAX_PIXELS)
                || n.checked_mul(n).is_none_or(|p| p > Self::MAX_PIXELS)
            {
                return Err(Error::InvalidArgument(format!(
                    "ClipPreprocessor: `size` {:?} is more than {} pixels (ClipPreprocessor::MAX_PIXELS)",
                    self.size,
                    Self::MAX_PIXELS
                )));
            }
            // HPS v2 resizes with torchvision's bicubic (antialiased on tensors).
            let resized = resize_planar(&planar, w, h, nw, nh);
            let (top, left) = ((n - nh) / 2, (n - nw) / 2);
            let mut padded = vec![0f32; 3 * n * n];
            for c in 0..3 {
                for y in 0..nh {
                    let dst = (c * n + top + y) * n + left;
                    padded[dst..dst + nw].copy_from_slice(&resized[(c * nh + y) * nw..(c * nh + y + 1) * nw]);
                }
            }
            (n, n, padded)
        };
        let mut out = data;
        self.normalise(&mut out);
        Ok(Tensor::from_vec(out, (3, oh, ow), device)?)
    }

    /// The 8-bit RGB image the reference's loader and transform make of a decoded file, before
    /// the crop and the arithmetic (each reward's choice, from its reference):
    ///
    /// * HPS v2 ([`ResizeTo::LongestEdgePad`]): PIL's `convert("RGB")` first — alpha dropped,
    ///   16-bit grey clipped at 255 (an `RGBA` file makes `hpsv2` itself fail: its transform
    ///   keeps the alpha band and the 3-channel model rejects it; the RGB bands are scored);
    /// * openai/CLIP's transform ([`PixelConvention::Torchvision`]: the aesthetic predictor,
    ///   ImageReward): torchvision's `Resize` on the PIL image in its own mode
    ///   ([`PilImage::resize`]: nearest for palette images, premultiplied alpha for `RGBA`),
    ///   then `convert("RGB")` (the crop commutes with it);
    /// * transformers ([`PixelConvention::Transformers`]: CLIP score, PickScore): transformers
    ///   5's `convert_to_rgb`, alpha and `tRNS` transparency composited on white
    ///   ([`PilImage::to_rgb_on_white`]).
    pub fn reference_rgb(&self, image: &PilImage) -> Result<RgbImage> {
        match (self.convention, self.size) {
            (_, ResizeTo::LongestEdgePad(_)) => Ok(image.to_rgb()),
            (PixelConvention::Torchvision, _) if self.do_resize => {
                let (h, w) = self.checked_resized_size(image.height(), image.width())?;
                Ok(image.resize(w, h, self.resample)?.to_rgb())
            }
            (PixelConvention::Torchvision, _) => Ok(image.to_rgb()),
            (PixelConvention::Transformers | PixelConvention::TransformersTorchvision, _) => {
                Ok(image.to_rgb_on_white())
            }
        }
    }

    /// Pixel values `[N, 3, H, W]` (f32) of decoded files, each made RGB as the reference does
    /// ([`Self::reference_rgb`]).
    pub fn preprocess_batch_pil(&self, images: &[PilImage], device: &Device) -> Result<Tensor> {
        let rgb = images.iter().map(|i| self.reference_rgb(i)).collect::<Result<Vec<_>>>()?;
        self.preprocess_batch(&rgb, device)
    }

    /// Pixel values `[N, 3, H, W]` (f32) of a batch (every image gives the same size after the
    /// crop, or an error).
    pub fn preprocess_batch(&self, images: &[RgbImage], device: &Device) -> Result<Tensor> {
        if images.is_empty() {
            return Err(Error::InvalidArgument("no images to preprocess".into()));
        }
        let each = images.iter().map(|i| self.preprocess(i, device)).collect::<Result<Vec<_>>>()?;
        let first = each[0].dims().to_vec();
        if let Some(other) = each.iter().find(|t| t.dims() != first.as_slice()) {
            return Err(Error::InvalidArgument(format!(
                "preprocessed images have different sizes ({first:?} and {:?}): enable the center crop",
                other.dims()
            )));
        }
        Ok(Tensor::stack(&each, 0)?)
    }
}
