//! Hostile copies of real safetensors files for the tests of several crates (deradiff-sd's
//! `tests/common`, and by `#[path]` deradiff-rewards' and deradiff-cli's tests): one value
//! replaced (NaN, ±inf, 1e30), a tensor scaled, the header padded to a chosen length, the
//! `__metadata__` replaced. Every other byte is the original's, and the original is not touched.
//! Also: a snapshot of files (size and contents hash) to check that nothing an error path was
//! given changed.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

/// What to do to one tensor's stored bytes.
pub enum Edit {
    /// Set element `index` to `value`. F16 and BF16 tensors keep their dtype for NaN and ±inf
    /// (their own bit patterns) and are stored as F32 for any other value.
    Set(usize, f64),
    /// Multiply every element by the factor (F16 and BF16 tensors are stored as F32).
    Scale(f64),
}

/// Copies `from` to `to` with `edits` applied (by tensor name) and the header's `__metadata__`
/// replaced by `metadata` when it is `Some`.
pub fn rewrite(from: &Path, to: &Path, edits: &[(&str, Edit)], metadata: Option<Option<HashMap<String, String>>>) {
    let bytes = std::fs::read(from).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let mut owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, view) in st.tensors() {
        let (mut dtype, mut data) = (view.dtype(), view.data().to_vec());
        for (target, edit) in edits {
            if *target == name {
                (dtype, data) = apply(dtype, data, edit);
            }
        }
        owned.push((name, dtype, view.shape().to_vec(), data));
    }
    for (target, _) in edits {
        assert!(owned.iter().any(|(n, ..)| n == target), "{} has no tensor {target}", from.display());
    }
    let views: Vec<(String, TensorView<'_>)> =
        owned.iter().map(|(n, d, s, data)| (n.clone(), TensorView::new(*d, s.clone(), data).unwrap())).collect();
    let metadata = metadata.unwrap_or_else(|| meta.metadata().clone());
    let out = safetensors::serialize(views, metadata).unwrap();
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(to, out).unwrap();
}

/// A tensor's values as f64 (F64, F32, F16, BF16).
fn values(dtype: Dtype, data: &[u8]) -> Vec<f64> {
    match dtype {
        Dtype::F64 => data.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect(),
        Dtype::F32 => data.chunks_exact(4).map(|c| f64::from(f32::from_le_bytes(c.try_into().unwrap()))).collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|c| f64::from(f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16)))
            .collect(),
        Dtype::F16 => data.chunks_exact(2).map(|c| f16_to_f64(u16::from_le_bytes([c[0], c[1]]))).collect(),
        d => panic!("no values of a {d:?} tensor"),
    }
}

fn f16_to_f64(bits: u16) -> f64 {
    let sign = if bits & 0x8000 != 0 { -1.0 } else { 1.0 };
    let (e, m) = (i32::from((bits >> 10) & 0x1f), f64::from(bits & 0x3ff));
    match e {
        0 => sign * m * 2f64.powi(-24),
        0x1f if m == 0.0 => sign * f64::INFINITY,
        0x1f => f64::NAN,
        _ => sign * (1.0 + m / 1024.0) * 2f64.powi(e - 15),
    }
}

fn apply(dtype: Dtype, mut data: Vec<u8>, edit: &Edit) -> (Dtype, Vec<u8>) {
    match (dtype, edit) {
        (Dtype::F16, Edit::Set(i, v)) if !v.is_finite() => {
            let bits: u16 = if v.is_nan() {
                0x7e00
            } else if *v > 0.0 {
                0x7c00
            } else {
                0xfc00
            };
            data[2 * i..2 * i + 2].copy_from_slice(&bits.to_le_bytes());
            (dtype, data)
        }
        (Dtype::BF16, Edit::Set(i, v)) if !v.is_finite() => {
            data[2 * i..2 * i + 2].copy_from_slice(&(((*v as f32).to_bits() >> 16) as u16).to_le_bytes());
            (dtype, data)
        }
        (Dtype::F64, Edit::Set(i, v)) => {
            data[8 * i..8 * i + 8].copy_from_slice(&v.to_le_bytes());
            (dtype, data)
        }
        (Dtype::F64, Edit::Scale(k)) => {
            let v: Vec<u8> = values(dtype, &data).iter().flat_map(|x| (x * k).to_le_bytes()).collect();
            (dtype, v)
        }
        (_, edit) => {
            let mut v = values(dtype, &data);
            match edit {
                Edit::Set(i, x) => v[*i] = *x,
                Edit::Scale(k) => v.iter_mut().for_each(|x| *x *= k),
            }
            (Dtype::F32, v.iter().flat_map(|x| (*x as f32).to_le_bytes()).collect())
        }
    }
}

/// Copies `from` to `to` with its JSON header padded with spaces to exactly `header_len` bytes
/// (the safetensors format allows trailing whitespace; the data offsets are relative to the end
/// of the header, so they stay right).
pub fn pad_header(from: &Path, to: &Path, header_len: u64) {
    let bytes = std::fs::read(from).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let json = String::from_utf8(bytes[8..8 + n].to_vec()).unwrap();
    let json = json.trim_end();
    assert!(json.len() as u64 <= header_len, "the header is {} bytes, more than {header_len}", json.len());
    let mut out = header_len.to_le_bytes().to_vec();
    out.extend_from_slice(json.as_bytes());
    out.resize(8 + header_len as usize, b' ');
    out.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(to, out).unwrap();
}

/// Copies `from` to `to` with its JSON header changed by `edit` (the data bytes kept, minus
/// `drop_tail` bytes cut from the end of the file).
pub fn edit_header(
    from: &Path,
    to: &Path,
    edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
    drop_tail: usize,
) {
    let bytes = std::fs::read(from).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    edit(&mut header);
    let json = serde_json::to_vec(&header).unwrap();
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&json);
    out.extend_from_slice(&bytes[8 + n..bytes.len() - drop_tail]);
    std::fs::write(to, out).unwrap();
}

/// The names of a safetensors file's tensors, sorted.
pub fn tensor_names(path: &Path) -> Vec<String> {
    let bytes = std::fs::read(path).unwrap();
    let mut names: Vec<String> =
        SafeTensors::deserialize(&bytes).unwrap().names().into_iter().map(String::from).collect();
    names.sort();
    names
}

/// The `__metadata__` of a safetensors file.
pub fn metadata(path: &Path) -> HashMap<String, String> {
    let bytes = std::fs::read(path).unwrap();
    SafeTensors::read_metadata(&bytes).unwrap().1.metadata().clone().unwrap_or_default()
}

/// Copies a directory tree (files and folders).
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Every regular file under `roots` (recursively) with its size and a hash of its contents.
#[derive(Debug, PartialEq, Eq)]
pub struct Snapshot(BTreeMap<PathBuf, (u64, u64)>);

impl Snapshot {
    /// The files under `roots` now.
    pub fn of(roots: &[&Path]) -> Self {
        let mut files = BTreeMap::new();
        for root in roots {
            walk(root, &mut files);
        }
        Self(files)
    }

    /// Panics naming `case` and what changed if the files under `roots` differ from `self`.
    pub fn assert_unchanged(&self, roots: &[&Path], case: &str) {
        let now = Self::of(roots);
        if now != *self {
            let changed: Vec<&PathBuf> =
                self.0.keys().chain(now.0.keys()).filter(|p| self.0.get(*p) != now.0.get(*p)).collect();
            panic!("{case}: input files changed: {changed:?}");
        }
    }

    /// The same files less those under `prefix` (what a case was allowed to write).
    pub fn without(&self, prefix: &Path) -> Self {
        Self(self.0.iter().filter(|(p, _)| !p.starts_with(prefix)).map(|(p, v)| (p.clone(), *v)).collect())
    }

    /// The number of files.
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

fn walk(path: &Path, out: &mut BTreeMap<PathBuf, (u64, u64)>) {
    let Ok(meta) = std::fs::symlink_metadata(path) else { return };
    if meta.is_dir() {
        for e in std::fs::read_dir(path).unwrap().flatten() {
            walk(&e.path(), out);
        }
    } else if meta.is_file() {
        let bytes = std::fs::read(path).unwrap_or_default();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        bytes.hash(&mut h);
        out.insert(path.to_path_buf(), (meta.len(), h.finish()));
    }
}
