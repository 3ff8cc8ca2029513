//! The tensor behind a malformed safetensors header. The `safetensors` crate refuses such a file
//! with a message that often names no tensor ("invalid tensor view", "metadata incomplete
//! buffer"); [`header_problem`] reads the header itself and says which entry is wrong and how.

use std::io::Read;
use std::path::Path;

/// The largest header read (the `safetensors` crate's own limit).
const MAX_HEADER: u64 = 100_000_000;

/// Bits per element of a safetensors dtype name, or `None` for a name the format does not have.
fn dtype_bits(name: &str) -> Option<u64> {
    Some(match name {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" => 8,
        "I16" | "U16" | "F16" | "BF16" => 16,
        "I32" | "U32" | "F32" => 32,
        "I64" | "U64" | "F64" | "C64" => 64,
        "F6_E2M3" | "F6_E3M2" => 6,
        "F4" => 4,
        _ => return None,
    })
}

/// The first entry of `file`'s safetensors header that is malformed, in words naming the tensor
/// ("tensor `x`: its data_offsets [0, 12] hold 12 bytes, but shape [2, 3] of F32 needs 24"), or
/// `None` when the header reads and every entry fits (or the file cannot be read at all).
pub(crate) fn header_problem(file: &Path) -> Option<String> {
    let mut f = std::fs::File::open(file).ok()?;
    let len = f.metadata().ok()?.len();
    let mut n = [0u8; 8];
    f.read_exact(&mut n).ok()?;
    let n = u64::from_le_bytes(n);
    if n > MAX_HEADER || n > len.saturating_sub(8) {
        return None;
    }
    let mut bytes = Vec::new();
    f.take(n).read_to_end(&mut bytes).ok()?;
    let header: serde_json::Map<String, serde_json::Value> = match serde_json::from_slice(&bytes) {
        Ok(h) => h,
        Err(e) => return Some(format!("its JSON header does not parse: {e}")),
    };
    let data = len - 8 - n;
    let mut spans: Vec<(u64, u64, &str)> = Vec::with_capacity(header.len());
    for (name, entry) in header.iter().filter(|(k, _)| *k != "__metadata__") {
        let bad = |what: String| Some(format!("tensor `{name}`: {what}"));
        let Some(dtype) = entry.get("dtype").and_then(|d| d.as_str()) else {
            return bad("no dtype".into());
        };
        let Some(bits) = dtype_bits(dtype) else {
            return bad(format!("unknown dtype {dtype:?}"));
        };
        let shape: Option<Vec<u64>> =
            entry.get("shape").and_then(|s| s.as_array()).and_then(|s| s.iter().map(|d| d.as_u64()).collect());
        let Some(shape) = shape else {
            return bad(format!(
                "its shape {} is not a list of sizes",
                entry.get("shape").unwrap_or(&serde_json::Value::Null)
            ));
        };
        let offsets: Option<Vec<u64>> =
            entry.get("data_offsets").and_then(|s| s.as_array()).and_then(|s| s.iter().map(|d| d.as_u64()).collect());
        let (begin, end) = match offsets.as_deref() {
            Some([b, e]) => (*b, *e),
            _ => return bad("its data_offsets are not two byte offsets [begin, end]".into()),
        };
        let needed = shape.iter().try_fold(bits, |a, &d| a.checked_mul(d)).map(|b| b.div_ceil(8));
        let Some(needed) = needed else {
            return bad(format!("its shape {shape:?} holds more elements than a file can"));
        };
        if begin > end {
            return bad(format!("its data_offsets [{begin}, {end}] end before they begin"));
        }
        if end > data {
            return bad(format!(
                "its data_offsets [{begin}, {end}] reach past the end of the data ({data} bytes after the header): the \
                 file is truncated"
            ));
        }
        if end - begin != needed {
            return bad(format!(
                "its data_offsets [{begin}, {end}] hold {} bytes, but shape {shape:?} of {dtype} needs {needed}",
                end - begin
            ));
        }
        spans.push((begin, end, name));
    }
    spans.sort();
    let mut at = (0u64, "the start of the data".to_string());
    for &(begin, end, name) in &spans {
        if begin != at.0 {
            let how = if begin < at.0 { "overlaps" } else { "leaves a gap after" };
            return Some(format!(
                "tensor `{name}`: its data begins at byte {begin}, so it {how} {} (at {})",
                at.1, at.0
            ));
        }
        at = (end, format!("`{name}`"));
    }
    if at.0 != data {
        return Some(format!(
            "the tensors' data ends at byte {} (after {}), but {data} bytes follow the header",
            at.0, at.1
        ));
    }
    None
}
