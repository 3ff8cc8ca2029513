//! The images a sweep saves beside its results file: their names, and their paths when a results
//! file is written into another folder (a merge).
//!
//! A row's images are PNG files in the folder [`IMAGES_DIR`] beside the results file, named by
//! [`sweep_image_name`]; the row lists them relative to the results file's folder
//! ([`SweepRow::images`]).

use std::path::{Component, Path, PathBuf};

use crate::results::SweepRow;

/// The folder, beside the results file, that a sweep's images are written into.
pub const IMAGES_DIR: &str = "images";

/// λ (or a weight vector, components joined by `_`) as a file-name part: three decimals where
/// they give the value back exactly (`0.500`, `-1.250`), else the shortest text that does
/// (`0.3333333333333333`, `1e-7`). Every part parses back to its value, so distinct values never
/// share a name; −0 is written as 0.
pub fn lambda_tag(weights: &[f64]) -> String {
    weights
        .iter()
        .map(|&w| {
            let w = w + 0.0;
            let fixed = format!("{w:.3}");
            if fixed.parse::<f64>().is_ok_and(|v| v.to_bits() == w.to_bits()) {
                fixed
            } else {
                format!("{w:?}")
            }
        })
        .collect::<Vec<_>>()
        .join("_")
}

/// The file name of one saved image: `p<prompt>-s<seed>-l<λ>.png`, the prompt's index
/// zero-padded to at least four digits (as wide as `prompts − 1` needs, so names sort in prompt
/// order), and with `-n<k>` (zero-padded) for sample `k` when a row has more than one sample.
///
/// ```
/// use deradiff_tune::sweep_image_name;
///
/// assert_eq!(sweep_image_name(3, 10, 42, &[0.5], 0, 1), "p0003-s42-l0.500.png");
/// assert_eq!(sweep_image_name(3, 10, 42, &[-0.25], 1, 2), "p0003-s42-l-0.250-n1.png");
/// assert_eq!(sweep_image_name(0, 1, 7, &[1.0 / 3.0], 0, 1), "p0000-s7-l0.3333333333333333.png");
/// ```
pub fn sweep_image_name(
    prompt_index: usize,
    prompts: usize,
    seed: u64,
    lambda: &[f64],
    sample: usize,
    samples: usize,
) -> String {
    let width = prompts.saturating_sub(1).to_string().len().max(4);
    let mut name = format!("p{prompt_index:0width$}-s{seed}-l{}", lambda_tag(lambda));
    if samples > 1 {
        let width = (samples - 1).to_string().len();
        name.push_str(&format!("-n{sample:0width$}"));
    }
    name.push_str(".png");
    name
}

/// `path` as seen from the process (absolute, `..` and `.` resolved through the folders that
/// exist, lexically beyond them).
fn absolute(path: &Path) -> PathBuf {
    let path =
        if path.is_absolute() { path.to_path_buf() } else { std::env::current_dir().unwrap_or_default().join(path) };
    // The longest existing ancestor, canonicalised (symbolic links resolved), then the rest.
    let mut existing = path.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(c) = existing.canonicalize() {
            let mut out = c;
            for part in rest.iter().rev() {
                out.push(part);
            }
            return normalise(&out);
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => return normalise(&path),
        }
    }
}

/// `.` and `..` removed lexically.
fn normalise(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// `target` relative to the folder `base` (both as the process sees them): `images/a.png`,
/// `../shards/images/a.png`.
pub(crate) fn relative_to(target: &Path, base: &Path) -> PathBuf {
    let (target, base) = (absolute(target), absolute(base));
    let t: Vec<Component<'_>> = target.components().collect();
    let b: Vec<Component<'_>> = base.components().collect();
    let common = t.iter().zip(&b).take_while(|(x, y)| x == y).count();
    if common == 0 {
        return target;
    }
    let mut out = PathBuf::new();
    for _ in common..b.len() {
        out.push("..");
    }
    for c in &t[common..] {
        out.push(c);
    }
    out
}

/// Rewrites the image paths of `rows`, relative to the folder `from`, as paths relative to the
/// folder `to` (what [`merge_results`](crate::merge_results) and a report do when rows move to a
/// results file in another folder). Paths already absolute stay as they are.
pub fn rebase_image_paths(rows: &mut [SweepRow], from: &Path, to: &Path) {
    if absolute(from) == absolute(to) {
        return;
    }
    for row in rows {
        for image in &mut row.images {
            if Path::new(image.as_str()).is_absolute() {
                continue;
            }
            let moved = relative_to(&from.join(image.as_str()), to);
            *image = moved.to_string_lossy().into_owned();
        }
    }
}

/// The folder of a results file (`.` for a bare file name).
pub(crate) fn folder_of(file: &Path) -> &Path {
    file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_lambdas_get_distinct_names() {
        let values = [0.0, -0.0, 0.5, -0.5, 0.5000001, 1e-7, -1e-7, 1.0 / 3.0, 2.0, 1e300, -1e-300, 0.1];
        let mut seen = std::collections::HashMap::new();
        for v in values {
            let tag = lambda_tag(&[v]);
            assert_eq!(tag.parse::<f64>().unwrap(), v + 0.0, "{tag}");
            if let Some(other) = seen.insert(tag.clone(), v + 0.0) {
                assert_eq!(other, v + 0.0, "{tag}");
            }
        }
        assert_eq!(lambda_tag(&[-0.0]), "0.000");
        assert_eq!(lambda_tag(&[0.2, 0.3, 0.5]), "0.200_0.300_0.500");
        assert_ne!(lambda_tag(&[0.2, 0.3]), lambda_tag(&[0.23]));
    }

    #[test]
    fn names_are_zero_padded_and_number_samples() {
        assert_eq!(sweep_image_name(12345, 20000, 0, &[1.0], 0, 1), "p12345-s0-l1.000.png");
        assert_eq!(sweep_image_name(2, 20000, 0, &[1.0], 0, 1), "p00002-s0-l1.000.png");
        assert_eq!(sweep_image_name(0, 1, 5, &[0.0], 3, 12), "p0000-s5-l0.000-n03.png");
    }

    #[test]
    fn paths_rebase_between_folders() {
        let base = std::env::temp_dir().join(format!("deradiff-rebase-{}", std::process::id()));
        std::fs::create_dir_all(base.join("a/b")).unwrap();
        assert_eq!(relative_to(&base.join("a/b/images/x.png"), &base.join("a")), Path::new("b/images/x.png"));
        assert_eq!(relative_to(&base.join("a/images/x.png"), &base.join("a/b")), Path::new("../images/x.png"));
        assert_eq!(relative_to(&base.join("a/./b/../images/x.png"), &base.join("a")), Path::new("images/x.png"));
        std::fs::remove_dir_all(&base).unwrap();
    }
}
