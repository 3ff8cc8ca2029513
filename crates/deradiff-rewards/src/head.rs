//! A chain of linear layers without activations, in f64 on the CPU: the head of the LAION
//! aesthetic predictor and of ImageReward. Both publish it as `nn.Sequential` of
//! `Linear(·, 1024) → Dropout → Linear(1024, 128) → Dropout → Linear(128, 64) → Dropout →
//! Linear(64, 16) → Linear(16, 1)` (dropout inactive at inference, no activation anywhere): the
//! state dict's `layers.{0,2,4,6,7}.{weight,bias}`.

use std::path::Path;

use candle_core::{DType, Device};

use crate::error::{Error, Result};

/// The most linear layers looked for (the published heads have 5, at indices 0–7).
const MAX_LAYER_INDEX: usize = 64;

/// The linear layers of a head, in order: `(weight [out][in], bias [out])`, and the width the
/// first one takes (kept as loaded: a layer with no units has no rows to read it from).
#[derive(Debug, Clone)]
pub(crate) struct LinearHead {
    layers: Vec<(Vec<Vec<f64>>, Vec<f64>)>,
    input: usize,
}

impl LinearHead {
    /// Reads `{prefix}layers.N.weight` / `.bias` of a safetensors `file` (`what` names it;
    /// `convert` is the command that converts the published pickle, named when the file is not
    /// safetensors). The layers must chain from `input_width` to one value; an error names the
    /// tensor otherwise.
    pub(crate) fn load(file: &Path, prefix: &str, input_width: usize, what: &str, convert: &str) -> Result<Self> {
        let bad = |m: String| Error::InvalidArgument(format!("{what} {}: {m}", file.display()));
        let tensors = deradiff_sd::load_checked_file(file, what, DType::F64, &Device::Cpu, |vb| {
            let mut out = Vec::new();
            for i in 0..=MAX_LAYER_INDEX {
                let w = format!("{prefix}layers.{i}.weight");
                if vb.contains_tensor(&w) {
                    out.push((i, vb.get_unchecked(&w)?, vb.get_unchecked(&format!("{prefix}layers.{i}.bias"))?));
                }
            }
            Ok(out)
        })
        .map_err(|e| e.with_conversion(&format!("the published {what}"), convert))?;
        if tensors.is_empty() {
            return Err(bad(format!("no `{prefix}layers.N.weight` tensors (is it the {what}?)")));
        }
        let mut width = input_width;
        let mut layers = Vec::with_capacity(tensors.len());
        for (i, w, b) in tensors {
            let (wd, bd) = (w.dims().to_vec(), b.dims().to_vec());
            if wd.len() != 2 || wd[1] != width || bd != [wd[0]] {
                return Err(bad(format!(
                    "`{prefix}layers.{i}.weight` {wd:?} and `{prefix}layers.{i}.bias` {bd:?} do not chain: expected \
                     weight [out, {width}] and bias [out]"
                )));
            }
            width = wd[0];
            layers.push((w.to_vec2::<f64>()?, b.to_vec1::<f64>()?));
        }
        if width != 1 {
            return Err(bad(format!("the last layer gives {width} values, not one score")));
        }
        Ok(Self { layers, input: input_width })
    }

    /// The width the first layer takes.
    pub(crate) fn input_width(&self) -> usize {
        self.input
    }

    /// The head's value at `x` (of [`Self::input_width`] values; `what` names the caller in the
    /// error for another width).
    pub(crate) fn apply(&self, x: &[f64], what: &str) -> Result<f64> {
        if x.len() != self.input_width() {
            return Err(Error::InvalidArgument(format!(
                "{what}: features of width {} for a head taking {}",
                x.len(),
                self.input_width()
            )));
        }
        let mut x = x.to_vec();
        for (w, b) in &self.layers {
            x = w.iter().zip(b).map(|(row, bias)| row.iter().zip(&x).map(|(a, v)| a * v).sum::<f64>() + bias).collect();
        }
        Ok(x[0])
    }
}
