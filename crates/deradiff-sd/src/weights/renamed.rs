//! A [`SimpleBackend`] that serves a model's tensors under other names: a single-file
//! checkpoint's tensors (original LDM / SGM names) to a model that asks for diffusers' names,
//! each taken from the memory map as it is requested (no converted copy of the checkpoint).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

use super::{CheckedWeights, Part};
use crate::error::Result;

/// Where a diffusers name is stored: the stored name and the part of it.
pub(crate) type Rename = dyn Fn(&str) -> Option<(String, Part)> + Send + Sync;

/// The renaming backend: `rename` maps a requested (diffusers) name to the stored name and part;
/// `None` is a name the checkpoint's layout has no place for.
struct Renamed {
    weights: Arc<CheckedWeights>,
    rename: Arc<Rename>,
    /// The tensors served, by diffusers name, with their shapes as served.
    used: Arc<Mutex<HashMap<String, Shape>>>,
}

impl Renamed {
    fn get_part(
        &self,
        name: &str,
        expected: Option<&Shape>,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        match (self.rename)(name) {
            Some((stored, part)) => {
                if !self.weights.contains(&stored) {
                    self.weights.record_missing(&stored, format!(" (diffusers' `{name}`)"));
                    return Err(candle_core::Error::CannotFindTensor { path: stored });
                }
                let t = self.weights.load_part(&stored, part, expected, dtype, dev)?;
                if let Ok(mut u) = self.used.lock() {
                    u.insert(name.to_string(), t.shape().clone());
                }
                Ok(t)
            }
            None => {
                self.weights.record_missing(
                    name,
                    " (a diffusers name with no counterpart in the original layout: the checkpoint's layout is not \
                     the one inferred)"
                        .into(),
                );
                Err(candle_core::Error::CannotFindTensor { path: name.to_string() })
            }
        }
    }
}

impl SimpleBackend for Renamed {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.get_part(name, Some(&s), dtype, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.get_part(name, None, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        (self.rename)(name).is_some_and(|(stored, _)| self.weights.contains(&stored))
    }
}

impl CheckedWeights {
    /// [`Self::build`] over the renaming backend: `build` asks for diffusers' names (under
    /// `prefix`), `rename` says where each is stored. Also returns the tensors served, by
    /// diffusers name, with their shapes (the stored names used are in [`Self::used`]).
    pub(crate) fn build_renamed<T>(
        self: &Arc<Self>,
        rename: Arc<Rename>,
        dtype: DType,
        device: &Device,
        prefix: Option<&str>,
        build: impl FnOnce(VarBuilder<'static>) -> candle_core::Result<T>,
    ) -> Result<(T, HashMap<String, Shape>)> {
        let used = Arc::new(Mutex::new(HashMap::new()));
        let backend = Renamed { weights: self.clone(), rename, used: used.clone() };
        let vb = VarBuilder::from_backend(Box::new(backend), dtype, device.clone());
        let model = self.build_with(vb, prefix, build)?;
        let shapes = used.lock().map(|u| u.clone()).unwrap_or_default();
        Ok((model, shapes))
    }
}
