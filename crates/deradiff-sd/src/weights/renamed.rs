//! The [`SimpleBackend`] handed to candle: a shared handle on the [`CheckedWeights`] (so that the
//! loader can read what went wrong afterwards), serving each tensor under its stored name or —
//! for a single-file checkpoint — under another: its original LDM / SGM tensors to a model that
//! asks for diffusers' names, each taken from the memory map as it is requested (no converted
//! copy of the checkpoint).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

use super::{CheckedWeights, Part};
use crate::error::Result;

/// Where a diffusers name is stored: the stored name and the part of it.
pub(crate) type Rename = dyn Fn(&str) -> Option<(String, Part)> + Send + Sync;

/// The backend: `rename` maps a requested (diffusers) name to the stored name and part (its
/// `None`: a name the checkpoint's layout has no place for); without `rename` names are served as
/// stored.
struct Renamed {
    weights: Arc<CheckedWeights>,
    rename: Option<Arc<Rename>>,
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
        let Some(rename) = &self.rename else {
            return self.weights.load_checked(name, expected, dtype, dev);
        };
        match rename(name) {
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
        match &self.rename {
            Some(rename) => rename(name).is_some_and(|(stored, _)| self.weights.contains(&stored)),
            None => self.weights.contains(name),
        }
    }
}

/// A `VarBuilder` over `weights` (renamed by `rename`, if given) converting to `dtype` on
/// `device`, and the map it fills with the tensors served by requested name and shape.
pub(super) fn backend(
    weights: &Arc<CheckedWeights>,
    rename: Option<Arc<Rename>>,
    dtype: DType,
    device: &Device,
) -> (VarBuilder<'static>, Arc<Mutex<HashMap<String, Shape>>>) {
    let used = Arc::new(Mutex::new(HashMap::new()));
    let backend = Renamed { weights: weights.clone(), rename, used: used.clone() };
    (VarBuilder::from_backend(Box::new(backend), dtype, device.clone()), used)
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
        let (vb, used) = backend(self, Some(rename), dtype, device);
        let model = self.build_with(vb, prefix, build)?;
        let shapes = used.lock().map(|u| u.clone()).unwrap_or_default();
        Ok((model, shapes))
    }
}
