//! candle-transformers' stock `UNet2DConditionModel` configuration of a UNet we load, for the
//! before / after comparisons of `benches/unet_cpu.rs` and `examples/unet_full_size.rs` (our
//! public API has its own [`UnetArch`] and no candle-transformers types).

use candle_transformers::models::stable_diffusion::unet_2d::{BlockConfig, UNet2DConditionModelConfig};
use deradiff_sd::UnetArch;

/// candle-transformers' configuration of the same UNet.
pub fn candle_config(arch: &UnetArch) -> UNet2DConditionModelConfig {
    UNet2DConditionModelConfig {
        center_input_sample: arch.center_input_sample,
        flip_sin_to_cos: arch.flip_sin_to_cos,
        freq_shift: arch.freq_shift,
        blocks: arch
            .blocks
            .iter()
            .map(|b| BlockConfig {
                out_channels: b.out_channels,
                use_cross_attn: b.transformer_layers,
                attention_head_dim: b.heads,
            })
            .collect(),
        layers_per_block: arch.layers_per_block,
        downsample_padding: arch.downsample_padding,
        mid_block_scale_factor: arch.mid_block_scale_factor,
        norm_num_groups: arch.norm_num_groups,
        norm_eps: arch.norm_eps,
        cross_attention_dim: arch.cross_attention_dim,
        sliced_attention_size: None,
        use_linear_projection: arch.use_linear_projection,
    }
}
