//! The values of a stored tensor: every one finite, and none that its conversion to the model's
//! dtype would make infinite. One pass over the stored bytes (before the tensor is copied or
//! sent to a device), as the bit patterns: a float is NaN or infinite exactly when its exponent
//! bits are all ones, and for finite floats the order of `bits & !sign` is the order of `|x|`,
//! so one maximum gives both answers.

use candle_core::{DType, Device, Tensor};
use safetensors::Dtype as Stored;

/// Elements per block of the scan: a block is reduced without branches (so that it vectorizes),
/// and only a block with a bad value is searched element by element.
const BLOCK: usize = 4096;

/// What is wrong with a tensor's values: the first element that is NaN or infinite, or one whose
/// conversion to the target dtype overflows.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BadValue {
    /// Flat index of the element.
    pub(crate) element: usize,
    /// Its value (NaN, ±inf, or the finite value that overflows).
    pub(crate) value: f64,
    /// The dtype whose range it overflows (`None` for a value that is not finite as stored).
    pub(crate) overflows: Option<DType>,
}

impl BadValue {
    /// The problem in words, for an error naming the file and the tensor: "holds NaN at element
    /// 3 of 64: …".
    pub(crate) fn describe(&self, elements: usize) -> String {
        match self.overflows {
            None => format!(
                "holds {} at element {} of {elements}: weights must be finite (the file is damaged, or comes from a \
                 training run that diverged); use another copy of the model",
                show(self.value),
                self.element
            ),
            Some(dtype) => format!(
                "holds {} at element {} of {elements}, which is infinite in {dtype:?}: load the model in a wider \
                 dtype (f32)",
                show(self.value),
                self.element
            ),
        }
    }
}

fn show(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "inf" } else { "-inf" }.into()
    } else {
        format!("{v:e}")
    }
}

/// Checks the stored bytes `data` of a tensor of dtype `stored` that is to be converted to
/// `target`: the first NaN or infinite element, else the first element that overflows
/// `target`'s range, else `None`. Integer dtypes and the 4- and 6-bit floats (which have no NaN
/// or infinity) pass. Cost: one pass over `data`, plus a second over a block holding a bad value.
pub(crate) fn check_values(stored: Stored, data: &[u8], target: DType) -> Option<BadValue> {
    match stored {
        Stored::F64 => scan::<8>(data, 0x7ff0_0000_0000_0000, DType::F64, target),
        Stored::F32 => scan::<4>(data, 0x7f80_0000, DType::F32, target),
        Stored::F16 => scan::<2>(data, 0x7c00, DType::F16, target),
        Stored::BF16 => scan::<2>(data, 0x7f80, DType::BF16, target),
        // float8 e4m3fn: no infinity; NaN is S.1111.111.
        Stored::F8_E4M3 => {
            first_byte(data, |b| b & 0x7f == 0x7f).map(|element| BadValue { element, value: f64::NAN, overflows: None })
        }
        // float8 e5m2: IEEE-like, exponent 11111 is inf / NaN.
        Stored::F8_E5M2 => first_byte(data, |b| b & 0x7c == 0x7c).map(|element| {
            let b = data[element];
            let value = match (b & 0x03 == 0, b & 0x80 != 0) {
                (false, _) => f64::NAN,
                (true, false) => f64::INFINITY,
                (true, true) => f64::NEG_INFINITY,
            };
            BadValue { element, value, overflows: None }
        }),
        // e8m0 scales: 0xff is NaN.
        Stored::F8_E8M0 => {
            first_byte(data, |b| b == 0xff).map(|element| BadValue { element, value: f64::NAN, overflows: None })
        }
        _ => None,
    }
}

fn first_byte(data: &[u8], bad: impl Fn(u8) -> bool) -> Option<usize> {
    data.iter().position(|&b| bad(b))
}

/// An element of `W` bytes, little-endian, as a u64.
fn bits<const W: usize>(c: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b[..W].copy_from_slice(&c[..W]);
    u64::from_le_bytes(b)
}

/// The scan of an IEEE float type of `W` bytes whose exponent mask is `exp` (the sign bit is the
/// top bit): the largest `bits & !sign` over each block, compared with the exponent mask (≥ it:
/// NaN or inf) and with the largest value that survives the conversion to `target`.
fn scan<const W: usize>(data: &[u8], exp: u64, stored: DType, target: DType) -> Option<BadValue> {
    let sign = 1u64 << (W * 8 - 1);
    let magnitude = sign - 1;
    // The magnitudes (as bits) from which the conversion overflows; u64::MAX: none does.
    let limit = overflow_limit(stored, target, exp);
    for (b, block) in data.chunks(W * BLOCK).enumerate() {
        let max = block.chunks_exact(W).fold(0u64, |m, c| m.max(bits::<W>(c) & magnitude));
        if max < exp && max < limit {
            continue;
        }
        let (i, c) = block.chunks_exact(W).enumerate().find(|(_, c)| {
            let m = bits::<W>(c) & magnitude;
            m >= exp || m >= limit
        })?;
        let raw = bits::<W>(c);
        let value = to_f64(stored, raw);
        let overflows = value.is_finite().then_some(target);
        return Some(BadValue { element: b * BLOCK + i, value, overflows });
    }
    None
}

/// The stored float of bit pattern `raw` as f64 (exact: f64 holds every f32, f16 and bf16).
fn to_f64(stored: DType, raw: u64) -> f64 {
    match stored {
        DType::F64 => f64::from_bits(raw),
        DType::F32 => f64::from(f32::from_bits(raw as u32)),
        DType::BF16 => f64::from(f32::from_bits((raw as u32) << 16)),
        DType::F16 => {
            let (s, e, m) = ((raw >> 15) & 1, (raw >> 10) & 0x1f, raw & 0x3ff);
            let sign = if s == 1 { -1.0 } else { 1.0 };
            match e {
                0 => sign * (m as f64) * 2f64.powi(-24),
                0x1f if m == 0 => sign * f64::INFINITY,
                0x1f => f64::NAN,
                _ => sign * (1.0 + m as f64 / 1024.0) * 2f64.powi(e as i32 - 15),
            }
        }
        _ => f64::NAN,
    }
}

/// [`overflow_bits`], computed once per pair of dtypes.
fn overflow_limit(stored: DType, target: DType, exp: u64) -> u64 {
    type Limits = std::sync::Mutex<Vec<((DType, DType), u64)>>;
    static LIMITS: std::sync::OnceLock<Limits> = std::sync::OnceLock::new();
    let limits = LIMITS.get_or_init(Default::default);
    if let Some(&(_, l)) = limits.lock().ok().as_ref().and_then(|l| l.iter().find(|(k, _)| *k == (stored, target))) {
        return l;
    }
    let l = overflow_bits(stored, target, exp);
    if let Ok(mut limits) = limits.lock() {
        limits.push(((stored, target), l));
    }
    l
}

/// The smallest magnitude (as the stored dtype's bits without sign) that the conversion from
/// `stored` to `target` turns into infinity, or `u64::MAX` when none does. Found by bisection
/// over the finite bit patterns, converting each candidate with candle itself (so the rounding
/// is the one the load applies).
fn overflow_bits(stored: DType, target: DType, exp: u64) -> u64 {
    if !narrows(stored, target) {
        return u64::MAX;
    }
    let overflows = |m: u64| -> bool {
        let v = to_f64(stored, m);
        let t = Tensor::new(&[v], &Device::Cpu).and_then(|t| t.to_dtype(stored)).and_then(|t| t.to_dtype(target));
        match t.and_then(|t| t.to_dtype(DType::F64)).and_then(|t| t.to_vec1::<f64>()) {
            Ok(v) => v.first().is_none_or(|x| !x.is_finite()),
            Err(_) => true,
        }
    };
    // The largest finite pattern is exp - 1; find the first that overflows in [0, exp).
    let (mut lo, mut hi) = (0u64, exp);
    if !overflows(exp - 1) {
        return u64::MAX;
    }
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if overflows(mid) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    lo
}

/// Whether converting `stored` to `target` can overflow (the target's range is smaller).
fn narrows(stored: DType, target: DType) -> bool {
    let rank = |d: DType| match d {
        DType::F64 => 4,
        DType::F32 => 3,
        DType::BF16 => 2,
        DType::F16 => 1,
        _ => 0,
    };
    target != stored && target.is_float() && rank(target) > 0 && rank(target) < rank(stored)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn finds_the_first_non_finite_value_of_every_float_type() {
        let mut v = vec![0.5f32; 10_000];
        assert_eq!(check_values(Stored::F32, &f32_bytes(&v), DType::F32), None);
        v[9_000] = f32::NEG_INFINITY;
        v[9_500] = f32::NAN;
        let bad = check_values(Stored::F32, &f32_bytes(&v), DType::F32).unwrap();
        assert_eq!((bad.element, bad.value, bad.overflows), (9_000, f64::NEG_INFINITY, None));
        let d: Vec<u8> = [1.0f64, f64::NAN].iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(check_values(Stored::F64, &d, DType::F32).unwrap().element, 1);
        // f16: 0x7c00 is inf, 0x7e00 NaN, 0x7bff (65504) the largest finite.
        let h = |x: &[u16]| x.iter().flat_map(|b| b.to_le_bytes()).collect::<Vec<u8>>();
        assert_eq!(check_values(Stored::F16, &h(&[0x7bff, 0x3c00]), DType::F16), None);
        assert_eq!(check_values(Stored::F16, &h(&[0x3c00, 0xfc00]), DType::F32).unwrap().value, f64::NEG_INFINITY);
        assert!(check_values(Stored::BF16, &h(&[0x3f80, 0x7fc0]), DType::F32).unwrap().value.is_nan());
        assert_eq!(check_values(Stored::F8_E4M3, &[0x10, 0xff], DType::F32).unwrap().element, 1);
        assert_eq!(check_values(Stored::F8_E5M2, &[0x10, 0x7c], DType::F32).unwrap().value, f64::INFINITY);
        assert_eq!(check_values(Stored::I64, &[0xff; 16], DType::F32), None);
    }

    #[test]
    fn finds_values_that_overflow_the_target_dtype() {
        // 65504 is f16's largest; 65519 still rounds down to it, 65520 rounds to inf.
        let v = [1.0f32, 65504.0, 65519.0, -65520.0, 1e6];
        let bad = check_values(Stored::F32, &f32_bytes(&v), DType::F16).unwrap();
        assert_eq!((bad.element, bad.value, bad.overflows), (3, -65520.0, Some(DType::F16)));
        assert!(bad.describe(5).contains("infinite in F16"), "{}", bad.describe(5));
        // f32's largest survives bf16? It rounds up to inf there.
        assert!(check_values(Stored::F32, &f32_bytes(&[f32::MAX]), DType::BF16).is_some());
        assert_eq!(check_values(Stored::F32, &f32_bytes(&[3.0e38]), DType::BF16), None);
        assert_eq!(check_values(Stored::F32, &f32_bytes(&[f32::MAX]), DType::F64), None);
        let d: Vec<u8> = [1e300f64].iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(check_values(Stored::F64, &d, DType::F32).unwrap().overflows, Some(DType::F32));
        assert_eq!(check_values(Stored::F64, &d, DType::F64), None);
    }
}
