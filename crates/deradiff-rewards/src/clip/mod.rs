//! CLIP's image side and the whole model, for the CLIP-based rewards (CLIP score, PickScore,
//! HPS v2, the aesthetic predictor's CLIP), on deradiff-sd's text tower and encoder layer:
//!
//! * [`ClipVisionModel`] — `CLIPVisionTransformer` (`vision_model.*`);
//! * [`ClipModel`] — `CLIPModel`: both towers, `visual_projection` and `logit_scale`;
//! * [`ClipPreprocessor`] — `CLIPImageProcessor` with PIL's resampling ([`resize_like_pil`]), and
//!   HPS v2's longest-side-and-pad preprocessing ([`ClipPreprocessor::longest_edge_pad`]) and
//!   openai/CLIP's torchvision transform ([`ClipPreprocessor::openai_clip`], ImageReward's);
//! * open_clip checkpoints (HPS v2's ViT-H-14) mapped onto [`ClipModel`]
//!   ([`ClipModel::load_open_clip`], [`OpenClipConfig`]).
//!
//! Sizes and activations come from the checkpoint's `config.json`
//! ([`deradiff_sd::clip::ClipModelConfig`]). Checked against transformers 5 on tiny random models
//! (`scripts/gen_clip_fixtures.py`): embeddings within 1e-6, preprocessed pixels identical.

mod model;
mod open_clip;
mod processor;
mod vision;

pub use model::ClipModel;
pub use open_clip::OpenClipConfig;
pub use processor::{
    resize_like_pil, ClipPreprocessor, ImageBackend, PixelConvention, Resample, ResizeTo, OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
};
pub use vision::ClipVisionModel;
