//! RGB images: the pipeline's output, PNG decoding, and PNG files written atomically through
//! deradiff-core's encoder ([`deradiff_core::io::encode_png_rgb8`], the workspace's one).

use std::path::Path;

use candle_core::{DType, Tensor};

use crate::error::{Error, Result};

/// An 8-bit RGB image, rows top to bottom, pixels interleaved `r, g, b`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    width: usize,
    height: usize,
    data: Vec<u8>,
}

impl RgbImage {
    /// The most pixels [`Self::load_png`] decodes (16384 × 16384).
    pub const MAX_PIXELS: u64 = 16384 * 16384;

    /// Reads a PNG file as 8-bit RGB, as PIL's `Image.open(path).convert("RGB")` gives it to
    /// CLIP processors: palette and grey images expanded, 16-bit samples reduced to their high
    /// byte, an alpha channel dropped (not composited). Not a regular file, not a PNG, a corrupt
    /// or truncated one, or one of more than [`Self::MAX_PIXELS`] pixels: an [`Error::Image`] or
    /// [`Error::Io`] naming the file.
    pub fn load_png(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bad = |message: String| Error::Image { path: path.to_path_buf(), message };
        crate::config::check_path(path, crate::config::Kind::File, "image", None)?;
        let file = std::fs::File::open(path).map_err(|e| Error::io("read", path, e))?;
        let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
        decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
        let mut reader = decoder.read_info().map_err(|e| bad(format!("not a readable PNG ({e})")))?;
        let (w, h) = (reader.info().width, reader.info().height);
        if u64::from(w) * u64::from(h) > Self::MAX_PIXELS {
            return Err(bad(format!("{w}x{h} pixels, more than {} (16384 × 16384)", Self::MAX_PIXELS)));
        }
        let size = reader.output_buffer_size().ok_or_else(|| bad("its decoded size overflows".into()))?;
        let mut buf = vec![0; size];
        let info = reader.next_frame(&mut buf).map_err(|e| bad(format!("corrupt or truncated PNG data ({e})")))?;
        buf.truncate(info.buffer_size());
        let channels = match info.color_type {
            png::ColorType::Grayscale => 1,
            png::ColorType::GrayscaleAlpha => 2,
            png::ColorType::Rgb => 3,
            png::ColorType::Rgba => 4,
            png::ColorType::Indexed => return Err(bad("an indexed PNG that did not expand".into())),
        };
        let (w, h) = (info.width as usize, info.height as usize);
        if info.bit_depth != png::BitDepth::Eight || buf.len() != w * h * channels {
            return Err(bad(format!("unexpected decoded layout ({:?}, {} bytes)", info.bit_depth, buf.len())));
        }
        let data = match channels {
            3 => buf,
            4 => buf.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect(),
            _ => buf.chunks_exact(channels).flat_map(|p| [p[0], p[0], p[0]]).collect(),
        };
        Self::new(w, h, data)
    }

    /// From raw interleaved RGB bytes (`width · height · 3` of them).
    pub fn new(width: usize, height: usize, data: Vec<u8>) -> Result<Self> {
        if width == 0 || height == 0 {
            return Err(Error::InvalidArgument(format!(
                "RgbImage::new: an image of {width}x{height} pixels; width and height must be at least 1"
            )));
        }
        if width.checked_mul(height).and_then(|n| n.checked_mul(3)) != Some(data.len()) {
            return Err(Error::shape(
                format!("the bytes given to RgbImage::new for a {width}x{height} image"),
                format!("[{}] (width × height × 3)", width.saturating_mul(height).saturating_mul(3)),
                &[data.len()],
            ));
        }
        Ok(Self { width, height, data })
    }

    /// Images from a decoded batch `[B, 3, H, W]` with values in `[-1, 1]`, exactly as diffusers'
    /// `VaeImageProcessor.postprocess` + `numpy_to_pil` do in float32:
    /// `round_half_even(clamp(x/2 + 1/2, 0, 1) · 255)`.
    pub fn from_tensor(images: &Tensor) -> Result<Vec<Self>> {
        let shape_error =
            || Error::shape("the images given to RgbImage::from_tensor", "[batch, 3, height, width]", images.dims());
        let (b, c, h, w) = images.dims4().map_err(|_| shape_error())?;
        if c != 3 {
            return Err(shape_error());
        }
        let hwc = images.to_dtype(DType::F32)?.permute((0, 2, 3, 1))?.contiguous()?;
        let values = hwc.flatten_all()?.to_vec1::<f32>()?;
        let per = h * w * 3;
        (0..b)
            .map(|i| {
                let data = values[i * per..(i + 1) * per]
                    .iter()
                    .map(|&x| {
                        let v = (x * 0.5f32 + 0.5f32).clamp(0.0, 1.0);
                        // NaN maps to 0 (`as` saturates).
                        (v * 255.0f32).round_ties_even() as u8
                    })
                    .collect();
                Self::new(w, h, data)
            })
            .collect()
    }

    /// Width in pixels.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> usize {
        self.height
    }

    /// The interleaved RGB bytes.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// The bytes, consuming the image.
    pub fn into_data(self) -> Vec<u8> {
        self.data
    }

    /// The pixel at column `x`, row `y` (`None` outside the image).
    pub fn pixel(&self, x: usize, y: usize) -> Option<[u8; 3]> {
        if x >= self.width || y >= self.height {
            return None;
        }
        let i = (y * self.width + x) * 3;
        Some([self.data[i], self.data[i + 1], self.data[i + 2]])
    }

    /// The most pixels [`Self::grid`] makes: 2^30 (3 GiB of RGB).
    pub const MAX_GRID_PIXELS: usize = 1 << 30;

    /// Images side by side in rows of `columns`, separated by `gap` pixels of `background`
    /// (all images must have the same size; the grid at most [`Self::MAX_GRID_PIXELS`] pixels).
    pub fn grid(images: &[RgbImage], columns: usize, gap: usize, background: [u8; 3]) -> Result<Self> {
        let first = images.first().ok_or_else(|| {
            Error::InvalidArgument("RgbImage::grid: `images` is empty; give at least one image".into())
        })?;
        if columns == 0 {
            return Err(Error::InvalidArgument("RgbImage::grid: `columns` must be at least 1".into()));
        }
        let (w, h) = (first.width, first.height);
        if let Some(other) = images.iter().find(|i| i.width != w || i.height != h) {
            return Err(Error::InvalidArgument(format!(
                "RgbImage::grid: the images must have one size, got {w}x{h} and {}x{}",
                other.width, other.height
            )));
        }
        let cols = columns.min(images.len());
        let rows = images.len().div_ceil(cols);
        let side = |n: usize, size: usize| n.checked_mul(size)?.checked_add((n - 1).checked_mul(gap)?);
        let too_large = || {
            Error::InvalidArgument(format!(
                "RgbImage::grid: {} images of {w}x{h} in {cols} columns with gaps of {gap} pixels make a grid of \
                 more than {} pixels (RgbImage::MAX_GRID_PIXELS); use a smaller gap or several grids",
                images.len(),
                Self::MAX_GRID_PIXELS
            ))
        };
        let (gw, gh) = side(cols, w).zip(side(rows, h)).ok_or_else(too_large)?;
        let pixels = gw.checked_mul(gh).filter(|&p| p <= Self::MAX_GRID_PIXELS).ok_or_else(too_large)?;
        let mut data: Vec<u8> = background.iter().copied().cycle().take(pixels * 3).collect();
        for (k, img) in images.iter().enumerate() {
            let (ox, oy) = ((k % cols) * (w + gap), (k / cols) * (h + gap));
            for y in 0..h {
                let src = &img.data[y * w * 3..(y + 1) * w * 3];
                let start = ((oy + y) * gw + ox) * 3;
                data[start..start + w * 3].copy_from_slice(src);
            }
        }
        Self::new(gw, gh, data)
    }

    /// The image as PNG bytes (8-bit RGB), encoded by [`deradiff_core::io::encode_png_rgb8`].
    pub fn encode_png(&self) -> Result<Vec<u8>> {
        let too_big = || {
            Error::InvalidArgument(format!(
                "RgbImage::encode_png: a {}x{} image is too large for PNG (at most 2^32 − 1 pixels a side)",
                self.width, self.height
            ))
        };
        let (w, h) =
            (u32::try_from(self.width).map_err(|_| too_big())?, u32::try_from(self.height).map_err(|_| too_big())?);
        deradiff_core::io::encode_png_rgb8(&self.data, w, h).map_err(|e| {
            Error::InvalidArgument(format!(
                "RgbImage::encode_png: cannot encode the {}x{} image: {e}",
                self.width, self.height
            ))
        })
    }

    /// Writes the image as a PNG file, atomically: into a temporary file beside `path`, then renamed
    /// over it, so that `path` is never half-written. A `path` that is a folder, a device, a FIFO,
    /// a socket or a link loop is an [`Error::InvalidArgument`] saying so (nothing is written);
    /// a failure to write an [`Error::Io`] naming the path.
    pub fn save_png(&self, path: impl AsRef<Path>) -> Result<()> {
        write_atomic(path, &self.encode_png()?)
    }
}

/// Writes `bytes` to `path` atomically ([`deradiff_core::io::write_atomic`]): into
/// `.<name>.<pid>.tmp` in the same directory (created if missing), flushed to disk, then renamed
/// over `path`. On failure the temporary file is removed and `path` is left as it was. A path the
/// core refuses (a folder, a device, a FIFO, a socket, a link loop, a path naming no file) is an
/// [`Error::InvalidArgument`] carrying the core's message, which names the path and what it is;
/// any other failure an [`Error::Io`] naming the path.
pub(crate) fn write_atomic(path: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
    let path = path.as_ref();
    deradiff_core::io::write_atomic(path, bytes).map_err(|e| match e.kind() {
        std::io::ErrorKind::InvalidInput => Error::InvalidArgument(format!("cannot write the file: {e}")),
        _ => Error::io("write", path, e),
    })
}
