//! Images as the reward references' loaders see them: a PNG decoded into the mode PIL's
//! `Image.open` gives it ([`PilImage`]), and the conversions each reference applies — PIL's
//! `convert("RGB")` (HPS v2, openai/CLIP's transform: alpha dropped, 16-bit grey clipped at 255
//! as PIL clips it), transformers 5's `convert_to_rgb` (alpha and `tRNS` transparency composited
//! on white, PIL's integer arithmetic), and PIL's `resize` in the image's own mode (nearest for
//! palette and bilevel images, premultiplied alpha for `RGBA` / `LA`, 16-bit for `I;16`).

mod resample;

use std::path::Path;

use deradiff_sd::{Error, Result, RgbImage};

pub(crate) use resample::{resize_8bpc, resize_torch_u8, torch_aa_bicubic_f32};

use crate::clip::Resample;

/// The mode PIL opens a PNG in (`PngImagePlugin._MODES`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PilMode {
    /// `1`: 1-bit grey (samples 0 or 255).
    Bilevel,
    /// `L`: 2-, 4- or 8-bit grey (scaled to 8 bits).
    L,
    /// `LA`: 8-bit grey and alpha.
    La,
    /// `P`: palette indices (1- to 8-bit).
    P,
    /// `RGB`: 8- or 16-bit colour (16-bit reduced to the high byte, as PIL's `RGB;16B`).
    Rgb,
    /// `RGBA`: colour and alpha (16-bit, and 16-bit grey + alpha, reduced to high bytes).
    Rgba,
    /// `I;16`: 16-bit grey.
    I16,
}

impl PilMode {
    /// PIL's name of the mode.
    pub fn name(self) -> &'static str {
        match self {
            Self::Bilevel => "1",
            Self::L => "L",
            Self::La => "LA",
            Self::P => "P",
            Self::Rgb => "RGB",
            Self::Rgba => "RGBA",
            Self::I16 => "I;16",
        }
    }

    fn bands(self) -> usize {
        match self {
            Self::Bilevel | Self::L | Self::P | Self::I16 => 1,
            Self::La => 2,
            Self::Rgb => 3,
            Self::Rgba => 4,
        }
    }
}

/// A PNG's `tRNS` chunk as PIL keeps it in `info["transparency"]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transparency {
    /// The transparent grey value of `1`, `L` and `I;16` images (the raw value of the chunk, as
    /// PIL compares it with the decoded samples).
    Grey(u16),
    /// The transparent colour of an `RGB` image (raw 16-bit values).
    Rgb([u16; 3]),
    /// Alpha per palette index (entries past the list are opaque).
    Palette(Vec<u8>),
}

/// A decoded image in PIL's mode for it, with its palette and transparency.
#[derive(Debug, Clone, PartialEq)]
pub struct PilImage {
    width: usize,
    height: usize,
    mode: PilMode,
    samples: Vec<u16>,
    palette: Vec<[u8; 3]>,
    transparency: Option<Transparency>,
    bit_depth: u8,
    interlaced: bool,
}

fn bad(path: &Path, message: String) -> Error {
    Error::Image { path: path.to_path_buf(), message }
}

/// Unpacks the raw rows of a PNG (`line` bytes a row) into samples at `depth` bits.
fn unpack(buf: &[u8], width: usize, height: usize, per_pixel: usize, depth: u8, line: usize) -> Vec<u16> {
    let n = width * per_pixel;
    let mut out = Vec::with_capacity(n * height);
    for row in buf.chunks(line).take(height) {
        match depth {
            16 => out.extend(row.chunks_exact(2).take(n).map(|b| u16::from_be_bytes([b[0], b[1]]))),
            8 => out.extend(row.iter().take(n).map(|&b| u16::from(b))),
            d => {
                let per_byte = 8 / d as usize;
                let mask = (1u16 << d) - 1;
                out.extend((0..n).map(|i| {
                    let byte = u16::from(row[i / per_byte]);
                    (byte >> (8 - d as usize * (i % per_byte + 1))) & mask
                }));
            }
        }
    }
    out
}

/// The data of the first chunk of type `kind` of a PNG file, if any (no CRC check: the decoder
/// has checked the file).
fn raw_chunk(png: &[u8], kind: &[u8; 4]) -> Option<Vec<u8>> {
    let mut at = 8;
    while at + 8 <= png.len() {
        let len = u32::from_be_bytes(png[at..at + 4].try_into().ok()?) as usize;
        let data = png.get(at + 8..(at + 8).checked_add(len)?)?;
        if &png[at + 4..at + 8] == kind {
            return Some(data.to_vec());
        }
        if &png[at + 4..at + 8] == b"IDAT" {
            return None;
        }
        at = at.checked_add(12 + len)?;
    }
    None
}

impl PilImage {
    /// Reads a PNG file as PIL's `Image.open` gives it: its mode ([`PilMode`]), palette and
    /// `tRNS` transparency; interlaced files de-interlaced. Not a regular file, not a PNG, a
    /// corrupt or truncated one, or one of more than [`RgbImage::MAX_PIXELS`] pixels: an
    /// [`Error::Image`] or [`Error::Io`] naming the file.
    pub fn load_png(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        deradiff_sd::fs::check_path(path, deradiff_sd::fs::Kind::File, "image", None)?;
        let bytes =
            std::fs::read(path).map_err(|source| Error::Io { action: "read", path: path.to_path_buf(), source })?;
        let mut decoder = png::Decoder::new(std::io::Cursor::new(&bytes[..]));
        decoder.set_transformations(png::Transformations::IDENTITY);
        let mut reader = decoder.read_info().map_err(|e| bad(path, format!("not a readable PNG ({e})")))?;
        let info = reader.info();
        let (w, h) = (info.width as usize, info.height as usize);
        if (w as u64) * (h as u64) > RgbImage::MAX_PIXELS {
            return Err(bad(path, format!("{w}x{h} pixels, more than {} (16384 × 16384)", RgbImage::MAX_PIXELS)));
        }
        let palette: Vec<[u8; 3]> =
            info.palette.as_ref().map(|p| p.chunks_exact(3).map(|c| [c[0], c[1], c[2]]).collect()).unwrap_or_default();
        // The tRNS chunk as written (the decoder keeps only the low bytes of an 8-bit image's
        // grey or colour key; PIL compares all 16 bits).
        let trns = raw_chunk(&bytes, b"tRNS").or_else(|| info.trns.as_ref().map(|t| t.to_vec()));
        let interlaced = info.interlaced;
        let size = reader.output_buffer_size().ok_or_else(|| bad(path, "its decoded size overflows".into()))?;
        let mut buf = vec![0; size];
        let out = reader.next_frame(&mut buf).map_err(|e| bad(path, format!("corrupt or truncated PNG data ({e})")))?;
        let depth = out.bit_depth as u8;
        let (color, per_pixel) = match out.color_type {
            png::ColorType::Grayscale => (0, 1),
            png::ColorType::Rgb => (2, 3),
            png::ColorType::Indexed => (3, 1),
            png::ColorType::GrayscaleAlpha => (4, 2),
            png::ColorType::Rgba => (6, 4),
        };
        if buf.len() < out.line_size * h {
            return Err(bad(path, format!("unexpected decoded layout ({} bytes)", buf.len())));
        }
        let raw = unpack(&buf, w, h, per_pixel, depth, out.line_size);
        let be16 = |t: &[u8], i: usize| t.get(2 * i..2 * i + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
        let high = |v: u16| v >> 8;
        let (mode, samples, transparency) = match (color, depth) {
            (0, 1) => (
                PilMode::Bilevel,
                raw.iter().map(|&v| v * 255).collect(),
                trns.as_deref().and_then(|t| be16(t, 0)).map(|v| Transparency::Grey(if v != 0 { 255 } else { 0 })),
            ),
            (0, 16) => (PilMode::I16, raw, trns.as_deref().and_then(|t| be16(t, 0)).map(Transparency::Grey)),
            (0, d) => (
                PilMode::L,
                raw.iter().map(|&v| v * (255 / ((1 << d) - 1))).collect(),
                trns.as_deref().and_then(|t| be16(t, 0)).map(Transparency::Grey),
            ),
            (2, d) => (
                PilMode::Rgb,
                if d == 16 { raw.iter().map(|&v| high(v)).collect() } else { raw },
                trns.as_deref().and_then(|t| Some(Transparency::Rgb([be16(t, 0)?, be16(t, 1)?, be16(t, 2)?]))),
            ),
            (3, _) => (PilMode::P, raw, trns.map(Transparency::Palette)),
            (4, 16) => (
                PilMode::Rgba,
                raw.chunks_exact(2).flat_map(|p| [high(p[0]), high(p[0]), high(p[0]), high(p[1])]).collect(),
                None,
            ),
            (4, _) => (PilMode::La, raw, None),
            (_, d) => (PilMode::Rgba, if d == 16 { raw.iter().map(|&v| high(v)).collect() } else { raw }, None),
        };
        Ok(Self { width: w, height: h, mode, samples, palette, transparency, bit_depth: depth, interlaced })
    }

    /// An 8-bit RGB image as a PIL `RGB` image.
    pub fn from_rgb(image: &RgbImage) -> Self {
        Self {
            width: image.width(),
            height: image.height(),
            mode: PilMode::Rgb,
            samples: image.data().iter().map(|&b| u16::from(b)).collect(),
            palette: Vec::new(),
            transparency: None,
            bit_depth: 8,
            interlaced: false,
        }
    }

    /// Width in pixels.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> usize {
        self.height
    }

    /// PIL's mode.
    pub fn mode(&self) -> PilMode {
        self.mode
    }

    /// The `tRNS` transparency, if any.
    pub fn transparency(&self) -> Option<&Transparency> {
        self.transparency.as_ref()
    }

    /// What the file was, for messages and `deradiff score`'s `mode` column: PIL's mode, then the
    /// PNG's bit depth where it is not 8, `tRNS` transparency and interlacing (`"RGBA"`,
    /// `"I;16 16-bit"`, `"P 4-bit tRNS"`, `"RGB interlaced"`).
    pub fn description(&self) -> String {
        let mut s = self.mode.name().to_string();
        if self.bit_depth != 8 {
            s.push_str(&format!(" {}-bit", self.bit_depth));
        }
        if self.transparency.is_some() {
            s.push_str(" tRNS");
        }
        if self.interlaced {
            s.push_str(" interlaced");
        }
        s
    }

    /// Whether transformers' `convert_to_rgb` composites this image (an alpha band or `tRNS`
    /// transparency).
    pub fn has_alpha(&self) -> bool {
        matches!(self.mode, PilMode::La | PilMode::Rgba) || self.transparency.is_some()
    }

    fn palette_rgb(&self, i: u16) -> [u8; 3] {
        self.palette.get(usize::from(i)).copied().unwrap_or([0, 0, 0])
    }

    /// PIL's `convert("RGBA")` of one pixel (transparency becoming alpha, as PIL's
    /// `convert_transparent` makes it).
    fn rgba_at(&self, i: usize) -> [u8; 4] {
        let b = self.mode.bands();
        let s = &self.samples[i * b..(i + 1) * b];
        let clip = |v: u16| v.min(255) as u8;
        match self.mode {
            PilMode::Bilevel | PilMode::L | PilMode::I16 => {
                let a = match self.transparency {
                    Some(Transparency::Grey(t)) if t == s[0] => 0,
                    _ => 255,
                };
                let v = clip(s[0]);
                [v, v, v, a]
            }
            PilMode::La => [clip(s[0]), clip(s[0]), clip(s[0]), clip(s[1])],
            PilMode::P => {
                let [r, g, b] = self.palette_rgb(s[0]);
                let a = match &self.transparency {
                    Some(Transparency::Palette(alpha)) => alpha.get(usize::from(s[0])).copied().unwrap_or(255),
                    _ => 255,
                };
                [r, g, b, a]
            }
            PilMode::Rgb => {
                let a = match self.transparency {
                    Some(Transparency::Rgb(t)) if t == [s[0], s[1], s[2]] => 0,
                    _ => 255,
                };
                [clip(s[0]), clip(s[1]), clip(s[2]), a]
            }
            PilMode::Rgba => [clip(s[0]), clip(s[1]), clip(s[2]), clip(s[3])],
        }
    }

    /// PIL's `convert("RGB")`: grey repeated, the palette looked up, alpha and transparency
    /// dropped, `I;16` clipped at 255 (PIL's `I16_RGB`).
    pub fn to_rgb(&self) -> RgbImage {
        let data = (0..self.width * self.height).flat_map(|i| {
            let [r, g, b, _] = self.rgba_at(i);
            [r, g, b]
        });
        RgbImage::new(self.width, self.height, data.collect()).expect("the sizes of a decoded image are valid")
    }

    /// transformers 5's `convert_to_rgb` (image_transforms.py): an image with alpha or `tRNS`
    /// transparency is converted to `RGBA` and alpha-composited on opaque white with PIL's
    /// `alpha_composite` (7 extra bits, rounded divisions); any other is [`Self::to_rgb`].
    pub fn to_rgb_on_white(&self) -> RgbImage {
        if !self.has_alpha() {
            return self.to_rgb();
        }
        let over = |v: u8, a: u32| -> u8 {
            let coef1 = a * 255 * 255 * 128 / (255 * 255);
            let coef2 = 255 * 128 - coef1;
            let t = u32::from(v) * coef1 + 255 * coef2 + (0x80 << 7);
            ((((t >> 8) + t) >> 8) >> 7) as u8
        };
        let data = (0..self.width * self.height).flat_map(|i| {
            let [r, g, b, a] = self.rgba_at(i);
            if a == 0 {
                [255, 255, 255]
            } else {
                [over(r, u32::from(a)), over(g, u32::from(a)), over(b, u32::from(a))]
            }
        });
        RgbImage::new(self.width, self.height, data.collect()).expect("the sizes of a decoded image are valid")
    }

    /// PIL's `Image.resize((width, height), filter)` in this image's mode: nearest for `P` and
    /// `1` (PIL forces it), through premultiplied alpha (`RGBa` / `La`) for `RGBA` and `LA`,
    /// 16-bit for `I;16`, the 8-bit filters otherwise. The palette and transparency are kept.
    pub fn resize(&self, width: usize, height: usize, filter: Resample) -> Result<Self> {
        if width == 0 || height == 0 {
            return Err(Error::InvalidArgument(format!("cannot resize an image to {width}x{height}")));
        }
        if (width, height) == (self.width, self.height) {
            return Ok(self.clone());
        }
        let (from, to, b) = ((self.width, self.height), (width, height), self.mode.bands());
        let samples = match self.mode {
            PilMode::P | PilMode::Bilevel => resample::resize_nearest(&self.samples, from, b, to),
            PilMode::I16 => resample::resize_16bpc(&self.samples, from, to, filter),
            PilMode::L | PilMode::Rgb => {
                let bytes: Vec<u8> = self.samples.iter().map(|&v| v as u8).collect();
                resample::resize_8bpc(&bytes, from, b, to, filter).into_iter().map(u16::from).collect()
            }
            PilMode::La | PilMode::Rgba => {
                // rgbA2rgba: MULDIV255 of each colour by alpha; rgba2rgbA after the resize.
                let mul = |v: u16, a: u16| -> u8 {
                    let t = u32::from(v) * u32::from(a) + 128;
                    (((t >> 8) + t) >> 8) as u8
                };
                let pre: Vec<u8> = self
                    .samples
                    .chunks_exact(b)
                    .flat_map(|p| {
                        let a = p[b - 1];
                        p.iter().enumerate().map(move |(c, &v)| if c == b - 1 { v as u8 } else { mul(v, a) })
                    })
                    .collect();
                let resized = resample::resize_8bpc(&pre, from, b, to, filter);
                resized
                    .chunks_exact(b)
                    .flat_map(|p| {
                        let a = u32::from(p[b - 1]);
                        p.iter().enumerate().map(move |(c, &v)| {
                            if c == b - 1 || a == 0 || a == 255 {
                                u16::from(v)
                            } else {
                                (255 * u32::from(v) / a).min(255) as u16
                            }
                        })
                    })
                    .collect()
            }
        };
        Ok(Self { width, height, samples, ..self.clone() })
    }
}
