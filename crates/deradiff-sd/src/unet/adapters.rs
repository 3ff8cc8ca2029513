//! The adapter machinery of a UNet, which knows nothing of LoRA files: low-rank deltas merged
//! into its weights ([`Unet::merged_with_deltas`]) or attached unmerged for joint passes
//! ([`Unet::with_low_rank`]; `crate::lora` supplies both from an adapter), and the views that run
//! one model's rows of a joint batch ([`AdapterView`], [`GroupedView`], [`RowGroup`]).

use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;

use candle_core::{DType, Tensor};

use super::layers::{LayerMut, LowRank};
use super::model::UnetModel;
use super::Unet;
use crate::conditioning::{AddedConditioning, ConditionalModel};
use crate::error::{Error, Result};

/// The low-rank factors [`Unet::with_low_rank`] gives a layer, from its module path and whether
/// it is a convolution: one entry per adapter, `None` where that adapter leaves the layer alone.
pub(crate) type LowRankOf<'f> = dyn Fn(&str, bool) -> Result<Vec<Option<LowRank>>> + 'f;

impl Unet {
    /// This UNet with `delta(path)` (a layer's delta in the shape of its weight, any dtype and
    /// device) added to the weight of every linear and convolution layer it gives one for:
    /// `W + delta` computed in f32, stored in the UNet's dtype. The other weights are shared with
    /// `self`, not copied; attached adapters are not carried over. `source` names the result.
    pub(crate) fn merged_with_deltas(
        &self,
        source: PathBuf,
        delta: &dyn Fn(&str) -> Result<Option<Tensor>>,
    ) -> Result<Unet> {
        let mut model = (*self.model).clone();
        let (dtype, device) = (self.dtype, self.device.clone());
        model.visit(&mut |path, layer| {
            let adapters = match layer {
                LayerMut::Linear(l) => {
                    if let Some(delta) = delta(&path)? {
                        let delta = delta.to_device(&device)?.reshape(l.weight.shape())?;
                        l.weight = merge(&l.weight, &delta, dtype)?;
                    }
                    &mut l.adapters
                }
                LayerMut::Conv(c) => {
                    if let Some(delta) = delta(&path)? {
                        let delta = delta.to_device(&device)?;
                        c.weight = merge(&c.weight, &delta, dtype)?;
                    }
                    &mut c.adapters
                }
                LayerMut::Norm { .. } => return Ok(()),
            };
            adapters.clear();
            Ok(())
        })?;
        let mut unet = self.derived(model, source);
        unet.adapters = 0;
        Ok(unet)
    }

    /// This UNet with `count` adapters attached, unmerged, for joint passes
    /// ([`Self::forward_rows`]): `low_rank(path, conv)` gives every linear (`conv` false) and
    /// convolution layer its low-rank factors, one entry per adapter (`None` where that adapter
    /// leaves the layer alone), in the UNet's dtype and on its device. The base weights are
    /// shared with `self`; adapters attached before are replaced.
    pub(crate) fn with_low_rank(&self, count: usize, low_rank: &LowRankOf<'_>) -> Result<Unet> {
        let mut model = (*self.model).clone();
        model.visit(&mut |path, layer| {
            match layer {
                LayerMut::Linear(l) => l.adapters = low_rank(&path, false)?,
                LayerMut::Conv(c) => c.adapters = low_rank(&path, true)?,
                LayerMut::Norm { .. } => {}
            }
            Ok(())
        })?;
        let mut unet = self.derived(model, self.source.clone());
        unet.adapters = count;
        Ok(unet)
    }

    /// A view running the rows of one model of a joint UNet: the base weights (`None`) or
    /// attached adapter `k`, as a [`ConditionalModel`] (for [`crate::Guided`]).
    pub fn adapter_view(&self, adapter: Option<usize>) -> AdapterView<'_> {
        AdapterView { unet: self, adapter }
    }

    /// A UNet sharing this one's config with another model.
    fn derived(&self, model: UnetModel, source: PathBuf) -> Unet {
        Unet {
            model: Box::new(model),
            layers: self.layers.clone(),
            adapters: self.adapters,
            config: self.config.clone(),
            arch: self.arch.clone(),
            source,
            config_path: self.config_path.clone(),
            shapes: self.shapes.clone(),
            dtype: self.dtype,
            device: self.device.clone(),
            forward_calls: AtomicUsize::new(0),
        }
    }
}

/// One model's consecutive rows in a joint batch ([`Unet::forward_rows`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowGroup {
    /// The attached adapter these rows run ([`Unet::with_adapters`]); `None`: the base weights.
    pub adapter: Option<usize>,
    /// How many consecutive rows.
    pub rows: usize,
}

/// One model of a joint UNet ([`Unet::adapter_view`]): every row runs the base weights or one
/// attached adapter.
#[derive(Clone, Copy, Debug)]
pub struct AdapterView<'a> {
    unet: &'a Unet,
    adapter: Option<usize>,
}

impl<'a> AdapterView<'a> {
    /// The UNet.
    pub fn unet(&self) -> &'a Unet {
        self.unet
    }

    /// The attached adapter its rows run (`None`: the UNet's own weights).
    pub fn adapter(&self) -> Option<usize> {
        self.adapter
    }
}

impl ConditionalModel for AdapterView<'_> {
    fn forward_conditional(&self, x: &Tensor, timestep: f64, context: &Tensor) -> Result<Tensor> {
        self.forward_added(x, timestep, context, None)
    }

    fn forward_added(
        &self,
        x: &Tensor,
        timestep: f64,
        context: &Tensor,
        added: Option<&AddedConditioning>,
    ) -> Result<Tensor> {
        let rows = x.dims().first().copied().unwrap_or(0);
        self.unet.forward_rows(x, timestep, context, added, &[RowGroup { adapter: self.adapter, rows }])
    }
}

/// Consecutive row groups of a joint UNet, each running the base weights or one attached adapter
/// ([`Unet::grouped_view`]), as a [`ConditionalModel`]: a batch of `n · Σ rows` rows runs the
/// groups `n` times over (classifier-free guidance stacks `[uncond; cond]`, each in the groups'
/// order). The weight-space sweep runs one λ per group this way.
#[derive(Clone, Debug)]
pub struct GroupedView<'a> {
    unet: &'a Unet,
    groups: Vec<RowGroup>,
    rows: usize,
}

impl Unet {
    /// A [`GroupedView`] of `groups` (each `adapter` attached, each `rows > 0`).
    pub fn grouped_view(&self, groups: Vec<RowGroup>) -> Result<GroupedView<'_>> {
        if groups.is_empty() || groups.iter().any(|g| g.rows == 0) {
            return Err(Error::InvalidArgument(
                "Unet::grouped_view: give at least one group, each of at least one row".into(),
            ));
        }
        if let Some(k) = groups.iter().filter_map(|g| g.adapter).find(|&k| k >= self.adapters) {
            return Err(Error::InvalidArgument(format!(
                "Unet::grouped_view: adapter {k} is not attached ({} attached)",
                self.adapters
            )));
        }
        let rows = groups
            .iter()
            .try_fold(0usize, |n, g| n.checked_add(g.rows))
            .ok_or_else(|| Error::InvalidArgument("Unet::grouped_view: the groups' rows overflow".into()))?;
        Ok(GroupedView { unet: self, groups, rows })
    }
}

impl ConditionalModel for GroupedView<'_> {
    fn forward_conditional(&self, x: &Tensor, timestep: f64, context: &Tensor) -> Result<Tensor> {
        self.forward_added(x, timestep, context, None)
    }

    fn forward_added(
        &self,
        x: &Tensor,
        timestep: f64,
        context: &Tensor,
        added: Option<&AddedConditioning>,
    ) -> Result<Tensor> {
        let batch = x.dims().first().copied().unwrap_or(0);
        if batch == 0 || !batch.is_multiple_of(self.rows) {
            return Err(Error::shape(
                "the latents given to a grouped view of a joint UNet",
                format!("[a multiple of {} rows (its groups), channels, height, width]", self.rows),
                x.dims(),
            ));
        }
        let groups: Vec<RowGroup> = (0..batch / self.rows).flat_map(|_| self.groups.iter().copied()).collect();
        self.unet.forward_rows(x, timestep, context, added, &groups)
    }
}

/// `weight + delta` in f32, stored as `dtype`.
fn merge(weight: &Tensor, delta: &Tensor, dtype: DType) -> Result<Tensor> {
    Ok((weight.to_dtype(DType::F32)? + delta.to_dtype(DType::F32)?)?.to_dtype(dtype)?)
}
