//! LoRA adapters into a UNet: merged into its weights ([`Unet::merged_with`]) or attached
//! unmerged for joint passes ([`Unet::with_adapters`]). The UNet's own adapter machinery
//! (`unet/adapters.rs`) takes the per-layer deltas and low-rank factors computed here; it knows
//! nothing of LoRA, so this module depends on the UNet and never the other way round.

use candle_core::{DType, Tensor};

use super::LoraAdapter;
use crate::error::{Error, Result};
use crate::unet::{LowRank, Unet};

impl Unet {
    /// This UNet with `adapter` merged into its weights: every adapted layer's weight becomes
    /// `W + multiplier · scale · up · down` (computed in f32, stored in the UNet's dtype). The
    /// other weights are shared with `self`, not copied. A multiplier of 1 gives the aligned
    /// model; other values realign in weight space (the "rewarded soups" baseline). Attached
    /// adapters are not carried over. Errors when the adapter does not fit this UNet, naming its
    /// key.
    pub fn merged_with(&self, adapter: &LoraAdapter, multiplier: f64) -> Result<Unet> {
        if !multiplier.is_finite() {
            return Err(Error::InvalidArgument(format!(
                "Unet::merged_with: the multiplier {multiplier} is not finite"
            )));
        }
        adapter.check(self.layer_shapes())?;
        let delta = |path: &str| adapter.layers().get(path).map(|a| a.delta(multiplier)).transpose();
        self.merged_with_deltas(adapter.source().to_path_buf(), &delta)
    }

    /// This UNet with `adapters` attached, unmerged, for joint passes
    /// ([`Self::forward_rows`]): adapter `k` (with its multiplier) serves the rows of groups with
    /// `adapter: Some(k)`. The base weights are shared with `self`. Replaces adapters attached
    /// before. Errors when an adapter does not fit this UNet, naming its key.
    pub fn with_adapters(&self, adapters: &[(&LoraAdapter, f64)]) -> Result<Unet> {
        for (adapter, multiplier) in adapters {
            if !multiplier.is_finite() {
                return Err(Error::InvalidArgument(format!(
                    "Unet::with_adapters: the multiplier {multiplier} of {} is not finite",
                    adapter.source().display()
                )));
            }
            adapter.check(self.layer_shapes())?;
        }
        let (dtype, device) = (self.dtype(), self.device().clone());
        let low_rank = |path: &str, conv: bool| -> Result<Vec<Option<LowRank>>> {
            adapters
                .iter()
                .map(|(adapter, multiplier)| {
                    let Some(a) = adapter.layers().get(path) else { return Ok(None) };
                    let r = a.rank();
                    let up = a.up.to_dtype(DType::F32)?.affine(multiplier * a.scale(), 0.0)?;
                    let (down, up) = if conv {
                        (a.down.clone(), up.reshape((up.dims()[0], r, 1, 1))?)
                    } else {
                        (a.down.reshape((r, ()))?, up.reshape((up.dims()[0], r))?)
                    };
                    let prepare = |t: Tensor| -> Result<Tensor> { Ok(t.to_dtype(dtype)?.to_device(&device)?) };
                    Ok(Some(LowRank { down: prepare(down)?, up: prepare(up)? }))
                })
                .collect()
        };
        self.with_low_rank(adapters.len(), &low_rank)
    }
}
