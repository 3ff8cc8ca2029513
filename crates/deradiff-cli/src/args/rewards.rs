//! The image rewards of `sweep`, `tune` and `score`: one set of options, one loader.

use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{DType, Device};
use deradiff_rewards::{
    AestheticScore, ClipScore, ClipScorer, HpsScore, ImageBackend, ImageRewardScore, ImageScorer, PickScore,
};

use crate::args::ModelPath;
use crate::error::{CliError, Context, Result};

/// What to say when no reward is given.
const GIVE_A_REWARD: &str = "--clip DIR, --pickscore DIR, --hps FILE (with --hps-config and \
     --hps-tokenizer), --aesthetic DIR --aesthetic-mlp FILE and/or --image-reward DIR";

/// Image rewards, each from its published checkpoint (converted to safetensors where it ships as
/// a pickle: scripts/convert_to_safetensors.py). Every path may also be a Hugging Face repo id in
/// the local cache (`openai/clip-vit-large-patch14`, `org/name[@revision][/file]`), as
/// [`ModelPath`] resolves it.
///
/// The help heading is set where the group is flattened (clap keeps a group's heading for the
/// options that follow it: flatten it last).
#[derive(Debug, clap::Args)]
pub(crate) struct RewardArgs {
    /// CLIP score from a Hugging Face CLIPModel directory, or its repo id in the local Hugging Face
    /// cache (e.g. openai/clip-vit-large-patch14; `org/name[@revision][/path]`).
    #[arg(long, value_parser = ModelPath)]
    clip: Option<PathBuf>,
    /// PickScore from a CLIPModel directory or cached repo id (e.g. yuvalkirstain/PickScore_v1).
    #[arg(long, value_parser = ModelPath)]
    pickscore: Option<PathBuf>,
    /// The tokenizer/preprocessor directory of --pickscore, if it is not in the model directory
    /// (PickScore_v1 uses laion/CLIP-ViT-H-14-laion2B-s32B-b79K's).
    #[arg(long, value_parser = ModelPath, requires = "pickscore")]
    pickscore_processor: Option<PathBuf>,
    /// The transformers image-processor backend --clip and --pickscore preprocess with: pil
    /// (`CLIPImageProcessorPil`) or torchvision (`CLIPImageProcessor`, transformers 5's default;
    /// scores ~1e-3 apart).
    #[arg(long, value_parser = ["pil", "torchvision"], default_value = "pil")]
    clip_image_backend: String,
    /// HPS v2 / v2.1 from its open_clip checkpoint as safetensors (scripts/convert_to_safetensors.py
    /// hps); with --hps-config and --hps-tokenizer.
    #[arg(long, value_parser = ModelPath, requires_all = ["hps_config", "hps_tokenizer"])]
    hps: Option<PathBuf>,
    /// The open_clip_config.json of --hps (ViT-H-14's).
    #[arg(long, value_parser = ModelPath, requires = "hps")]
    hps_config: Option<PathBuf>,
    /// CLIP's BPE merges for --hps: a tokenizer folder holding merges.txt (e.g.
    /// laion/CLIP-ViT-H-14-laion2B-s32B-b79K) or open_clip's bpe_simple_vocab_16e6.txt; prompts
    /// are tokenized as open_clip does (ftfy, HTML unescaping), as hpsv2 does.
    #[arg(long, value_parser = ModelPath, requires = "hps")]
    hps_tokenizer: Option<PathBuf>,
    /// The LAION aesthetic predictor's CLIP model (openai/clip-vit-large-patch14, a CLIPModel
    /// directory); give its MLP with --aesthetic-mlp.
    #[arg(long, value_parser = ModelPath, requires = "aesthetic_mlp")]
    aesthetic: Option<PathBuf>,
    /// The aesthetic predictor's MLP as safetensors (convert the published
    /// sac+logos+ava1-l14-linearMSE.pth with scripts/convert_to_safetensors.py aesthetic).
    #[arg(long, value_parser = ModelPath, requires = "aesthetic")]
    aesthetic_mlp: Option<PathBuf>,
    /// ImageReward from a folder: model.safetensors (ImageReward.pt converted with
    /// scripts/convert_to_safetensors.py image-reward), the Hub's med_config.json and
    /// bert-base-uncased's vocab.txt or tokenizer.json.
    #[arg(long, value_parser = ModelPath)]
    image_reward: Option<PathBuf>,
}

impl RewardArgs {
    /// The reward options given (to refuse them where no images are made).
    pub(crate) fn given(&self) -> Vec<&'static str> {
        [
            ("--clip", self.clip.is_some()),
            ("--pickscore", self.pickscore.is_some()),
            ("--hps", self.hps.is_some()),
            ("--aesthetic", self.aesthetic.is_some()),
            ("--image-reward", self.image_reward.is_some()),
        ]
        .into_iter()
        .filter_map(|(flag, given)| given.then_some(flag))
        .collect()
    }

    /// The files and folders the rewards are read from, each with its option (what no output
    /// may replace).
    pub(crate) fn inputs(&self) -> Vec<(&'static str, &std::path::Path)> {
        [
            ("--clip", &self.clip),
            ("--pickscore", &self.pickscore),
            ("--pickscore-processor", &self.pickscore_processor),
            ("--hps", &self.hps),
            ("--hps-config", &self.hps_config),
            ("--hps-tokenizer", &self.hps_tokenizer),
            ("--aesthetic", &self.aesthetic),
            ("--aesthetic-mlp", &self.aesthetic_mlp),
            ("--image-reward", &self.image_reward),
        ]
        .into_iter()
        .filter_map(|(flag, p)| p.as_deref().map(|p| (flag, p)))
        .collect()
    }

    /// Errors (a bad option) when no reward is given: `{request}: --clip DIR, …`.
    pub(crate) fn require(&self, request: &str) -> Result<()> {
        if self.given().is_empty() {
            return Err(CliError::usage(format!("{request}: {GIVE_A_REWARD}")));
        }
        Ok(())
    }

    /// The first reward given that scores images against prompts (all but the aesthetic
    /// predictor), as its option.
    pub(crate) fn needing_prompts(&self) -> Option<&'static str> {
        self.given().into_iter().find(|&flag| flag != "--aesthetic")
    }

    /// The image-processor backend of --clip and --pickscore.
    fn image_backend(&self) -> ImageBackend {
        match self.clip_image_backend.as_str() {
            "torchvision" => ImageBackend::Torchvision,
            _ => ImageBackend::Pil,
        }
    }

    /// Loads every reward given, in a fixed order (clip_score, pickscore, hps, aesthetic,
    /// image_reward: the results files' columns).
    pub(crate) fn load(&self, dtype: DType, device: &Device) -> Result<Vec<Box<dyn ImageScorer>>> {
        let mut rewards: Vec<Box<dyn ImageScorer>> = Vec::new();
        if let Some(dir) = &self.clip {
            let scorer = ClipScorer::load(dir, dtype, device)
                .and_then(|s| s.with_image_backend(self.image_backend()))
                .with_context(|| format!("cannot load the --clip model {}", dir.display()))?;
            rewards.push(Box::new(ClipScore::new(Arc::new(scorer))));
        }
        if let Some(dir) = &self.pickscore {
            let processor = self.pickscore_processor.as_deref().unwrap_or(dir);
            let has_tokenizer = ["tokenizer.json", "vocab.json"].iter().any(|f| processor.join(f).is_file());
            if self.pickscore_processor.is_none() && dir.is_dir() && !has_tokenizer {
                return Err(CliError::usage(format!(
                    "--pickscore {} has no tokenizer (tokenizer.json, or vocab.json + merges.txt): give the folder of \
                     its tokenizer and preprocessor_config.json with --pickscore-processor (PickScore_v1's model card \
                     uses laion/CLIP-ViT-H-14-laion2B-s32B-b79K's)",
                    dir.display()
                )));
            }
            let scorer = ClipScorer::load_with_processor(dir, processor, dtype, device)
                .and_then(|s| s.with_image_backend(self.image_backend()))
                .with_context(|| format!("cannot load the --pickscore model {}", dir.display()))?;
            rewards.push(Box::new(PickScore::new(Arc::new(scorer))));
        }
        if let (Some(file), Some(config), Some(tokenizer)) = (&self.hps, &self.hps_config, &self.hps_tokenizer) {
            let reward = HpsScore::load_open_clip(file, config, tokenizer, dtype, device)
                .with_context(|| format!("cannot load the HPS model --hps {}", file.display()))?;
            rewards.push(Box::new(reward));
        }
        if let (Some(dir), Some(mlp)) = (&self.aesthetic, &self.aesthetic_mlp) {
            let reward = AestheticScore::load(dir, mlp, dtype, device).with_context(|| {
                format!(
                    "cannot load the aesthetic predictor (--aesthetic {} --aesthetic-mlp {})",
                    dir.display(),
                    mlp.display()
                )
            })?;
            rewards.push(Box::new(reward));
        }
        if let Some(dir) = &self.image_reward {
            let reward = ImageRewardScore::load(dir, dtype, device)
                .with_context(|| format!("cannot load --image-reward {}", dir.display()))?;
            rewards.push(Box::new(reward));
        }
        Ok(rewards)
    }
}
