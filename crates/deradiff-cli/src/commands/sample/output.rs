//! Where `deradiff sample` writes: the PNG file `--out` names (checked writable before anything
//! is loaded), one PNG per image beside it, and the labelled grid of them.

use std::path::{Path, PathBuf};

use deradiff_analytic::plot::{ensure_font, FONT};
use deradiff_sd::RgbImage;
use plotters::prelude::*;

use crate::args::Setting;
use crate::error::{CliError, Context, Result};

/// The file name `deradiff sample` uses when `--out` is a directory.
const DEFAULT_NAME: &str = "sample.png";

/// The smallest grid cell width: smaller images are enlarged (nearest neighbour, integer factor)
/// in the grid so that their labels fit; the individual PNGs keep their size.
const MIN_CELL_WIDTH: usize = 160;

/// Whether `path` was written with a trailing separator (`out/`): a directory by intent.
fn ends_with_separator(path: &Path) -> bool {
    let text = path.as_os_str().to_string_lossy();
    text.ends_with('/') || text.ends_with(std::path::MAIN_SEPARATOR)
}

/// The PNG file `--out` names: a directory (written `dir/`, or one that exists) gets
/// [`DEFAULT_NAME`] inside it; a file must end in `.png`.
pub(super) fn resolve_out(out: &Path) -> Result<PathBuf> {
    if ends_with_separator(out) || out.is_dir() {
        return Ok(out.join(DEFAULT_NAME));
    }
    match out.extension().and_then(|e| e.to_str()) {
        Some(ext) if ext.eq_ignore_ascii_case("png") => Ok(out.to_path_buf()),
        None => Err(CliError::usage(format!(
            "--out {} has no extension: deradiff sample writes PNG images, so add .png (e.g. --out {}.png), or end \
             the path with '/' to write {DEFAULT_NAME} into that directory",
            out.display(),
            out.display()
        ))),
        Some(ext) => Err(CliError::usage(format!(
            "--out {}: .{ext} is not written; deradiff sample writes PNG images, so give a name ending in .png \
             (e.g. --out {})",
            out.display(),
            out.with_extension("png").display()
        ))),
    }
}

/// Fails early (before anything is loaded or written) if `out` cannot be written: its nearest
/// existing ancestor must be a writable directory. Nothing is created here; the missing
/// directories are made just before the first image is saved.
pub(super) fn check_writable(out: &Path) -> Result<()> {
    if out.exists() && !out.is_file() {
        return Err(CliError::usage(format!("--out {} exists and is not a regular file", out.display())));
    }
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut existing = dir.as_path();
    while !existing.exists() {
        match existing.parent() {
            Some(p) if !p.as_os_str().is_empty() => existing = p,
            _ => {
                existing = Path::new(".");
                break;
            }
        }
    }
    if !existing.is_dir() {
        return Err(CliError::usage(format!(
            "cannot create the output directory {} of --out: {} is a file, not a directory",
            dir.display(),
            existing.display()
        )));
    }
    let probe = existing.join(format!(".deradiff-write-test-{}", std::process::id()));
    std::fs::write(&probe, b"")
        .and_then(|()| std::fs::remove_file(&probe))
        .with_context(|| format!("cannot write to the output directory {} of --out", existing.display()))
}

/// Makes the output directory (if missing) and writes `image` to `path`.
fn save(image: &RgbImage, path: &Path) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the output directory {}", dir.display()))?;
    }
    image.save_png(path).with_context(|| format!("cannot write {}", path.display()))
}

/// The most images one run makes (λ settings × prompts): every one is kept for the grid.
pub(super) const MAX_IMAGES: usize = 4096;

/// Errors (a bad option, before anything is loaded) when `settings` × `prompts` images are more
/// than [`MAX_IMAGES`].
pub(super) fn check_image_count(settings: usize, prompts: usize) -> Result<()> {
    if settings.checked_mul(prompts).is_none_or(|n| n > MAX_IMAGES) {
        return Err(CliError::usage(format!(
            "{settings} λ settings (--lambda) × {prompts} prompts (--prompt) is more than {MAX_IMAGES} images, the \
             most one run makes: give fewer λ or prompts, and run several times"
        )));
    }
    Ok(())
}

/// The size (width, height) of a grid cell of a `width` × `height` image: enlarged so that
/// its label fits, with the label's band above it (see `labelled`).
fn cell_size(width: usize, height: usize) -> Option<(usize, usize)> {
    let factor = MIN_CELL_WIDTH.div_ceil(width.max(1));
    Some((width.checked_mul(factor)?, height.checked_mul(factor)?.checked_add(LABEL_BAND)?))
}

/// Errors (a bad option, before sampling starts) when the grid of `settings` × `prompts`
/// images of `size` (width, height) would be larger than `RgbImage::MAX_GRID_PIXELS`: the images
/// are kept for it, so the run would fail only at its end.
pub(super) fn check_grid(settings: usize, prompts: usize, size: (usize, usize)) -> Result<()> {
    if settings * prompts == 1 {
        return Ok(());
    }
    let side = |n: usize, cell: usize| n.checked_mul(cell)?.checked_add((n - 1).checked_mul(GRID_GAP)?);
    let pixels = cell_size(size.0, size.1)
        .and_then(|(w, h)| side(settings, w)?.checked_mul(side(prompts, h)?))
        .filter(|&p| p <= RgbImage::MAX_GRID_PIXELS);
    if pixels.is_none() {
        return Err(CliError::usage(format!(
            "{settings} λ settings (--lambda) × {prompts} prompts (--prompt) of {}x{} pixels make a grid of more \
             than {} pixels: give fewer λ or prompts, or a smaller --size",
            size.0,
            size.1,
            RgbImage::MAX_GRID_PIXELS
        )));
    }
    Ok(())
}

/// Where each image goes: the output itself for one image, else `NAME-<tag>[-p<i>].EXT` beside
/// it (and the output is the grid).
pub(super) fn image_paths(out: &Path, settings: &[Setting], prompts: usize) -> Vec<PathBuf> {
    if settings.len() * prompts == 1 {
        return vec![out.to_path_buf()];
    }
    let mut paths = vec![out.to_path_buf()];
    for s in settings {
        paths.extend((0..prompts).map(|i| image_path(out, &s.tag, i, prompts)));
    }
    paths
}

/// Where each image goes: the output itself for one image, else `NAME-<tag>[-p<i>].EXT` beside
/// it (and the output is the grid).
fn image_path(out: &Path, tag: &str, prompt: usize, prompts: usize) -> PathBuf {
    let stem = out.file_stem().and_then(|s| s.to_str()).unwrap_or("sample");
    let ext = out.extension().and_then(|s| s.to_str()).unwrap_or("png");
    let name = if prompts > 1 { format!("{stem}-{tag}-p{prompt}.{ext}") } else { format!("{stem}-{tag}.{ext}") };
    out.with_file_name(name)
}

/// Nearest-neighbour enlargement by an integer factor.
fn enlarge(image: &RgbImage, factor: usize) -> Result<RgbImage> {
    if factor <= 1 {
        return Ok(image.clone());
    }
    let (w, h) = (image.width(), image.height());
    let src = image.data();
    let mut data = Vec::with_capacity(w * h * factor * factor * 3);
    for y in 0..h * factor {
        let row = &src[(y / factor) * w * 3..(y / factor + 1) * w * 3];
        for x in 0..w * factor {
            data.extend_from_slice(&row[(x / factor) * 3..(x / factor) * 3 + 3]);
        }
    }
    Ok(RgbImage::new(w * factor, h * factor, data)?)
}

/// The height of the band above each grid cell that carries its label.
const LABEL_BAND: usize = 28;

/// The gap between the cells of the grid, in pixels.
const GRID_GAP: usize = 4;

/// The image (enlarged if small) with a white band above it carrying `label`.
fn labelled(image: &RgbImage, label: &str) -> Result<RgbImage> {
    ensure_font()?;
    let image = &enlarge(image, MIN_CELL_WIDTH.div_ceil(image.width().max(1)))?;
    let (w, h) = (image.width(), image.height());
    let band = LABEL_BAND;
    let mut data = vec![255u8; w * (h + band) * 3];
    {
        let root = BitMapBackend::with_buffer(&mut data[..w * band * 3], (w as u32, band as u32)).into_drawing_area();
        let style = TextStyle::from((FONT, 18).into_font()).color(&BLACK);
        let drawn = root.draw_text(label, &style, (6, 4)).and_then(|()| root.present());
        drawn.map_err(|e| CliError::because(format!("cannot draw the grid label '{label}': {e}"), e))?;
    }
    data[w * band * 3..].copy_from_slice(image.data());
    Ok(RgbImage::new(w, h + band, data)?)
}

/// Writes the images of `deradiff sample` as they come and, with several, the labelled grid of
/// them at the end (rows are prompts, columns are settings: the same seed across a row).
pub(super) struct Writer {
    out: PathBuf,
    settings: usize,
    prompts: usize,
    quiet: bool,
    cells: Vec<(usize, RgbImage)>,
}

impl Writer {
    /// A writer to `out` of `settings` × `prompts` images.
    pub(super) fn new(out: PathBuf, settings: usize, prompts: usize, quiet: bool) -> Self {
        Self { out, settings, prompts, quiet, cells: Vec::new() }
    }

    /// One image in all: it is `--out` itself, and there is no grid.
    fn single(&self) -> bool {
        self.settings * self.prompts == 1
    }

    /// Writes the images of `setting` (one per prompt) and keeps their labelled grid cells.
    pub(super) fn add(&mut self, setting: &Setting, images: &[RgbImage]) -> Result<()> {
        for (i, image) in images.iter().enumerate() {
            let path =
                if self.single() { self.out.clone() } else { image_path(&self.out, &setting.tag, i, self.prompts) };
            save(image, &path)?;
            if !self.quiet {
                eprintln!("wrote {}", path.display());
            }
            let label = if self.prompts > 1 { format!("{}, prompt {i}", setting.label) } else { setting.label.clone() };
            self.cells.push((i, labelled(image, &label)?));
        }
        Ok(())
    }

    /// Writes the grid to `--out` (with several images).
    pub(super) fn finish(mut self) -> Result<()> {
        if self.single() {
            return Ok(());
        }
        // Rows are prompts, columns are settings (same seed across a row).
        self.cells.sort_by_key(|(prompt, _)| *prompt);
        let images: Vec<RgbImage> = self.cells.into_iter().map(|(_, c)| c).collect();
        let grid =
            RgbImage::grid(&images, self.settings, GRID_GAP, [255, 255, 255]).context("cannot assemble the grid")?;
        save(&grid, &self.out)?;
        if !self.quiet {
            eprintln!("wrote {} (grid)", self.out.display());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_directories_get_the_default_name_and_files_need_png() {
        assert_eq!(resolve_out(Path::new("runs/")).unwrap(), Path::new("runs/").join(DEFAULT_NAME));
        let tmp = std::env::temp_dir();
        assert_eq!(resolve_out(&tmp).unwrap(), tmp.join(DEFAULT_NAME));
        assert_eq!(resolve_out(Path::new("a/b.PNG")).unwrap(), Path::new("a/b.PNG"));
        let e = resolve_out(Path::new("a/b")).unwrap_err().to_string();
        assert!(e.contains("add .png"), "{e}");
        let e = resolve_out(Path::new("a/b.jpg")).unwrap_err().to_string();
        assert!(e.contains("a/b.png"), "{e}");
    }
}
