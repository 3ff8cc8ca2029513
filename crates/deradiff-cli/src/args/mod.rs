//! The option groups the commands share, each a clap `Args` struct (flattened into a command's
//! options) or a value enum, with the checks and loaders that turn its values into library
//! objects.

mod model;
mod model_path;
mod prompts;
mod realign;
mod rewards;
mod sampler;
mod sd;
mod sweep_model;
mod testbed;

pub(crate) use model::{device_option, ModelArgs};
pub(crate) use model_path::ModelPath;
pub(crate) use prompts::read_prompts_file;
pub(crate) use realign::{RealignArg, RealignArgs, Setting};
pub(crate) use rewards::RewardArgs;
pub(crate) use sampler::SamplerArgs;
pub(crate) use sd::SdArgs;
pub(crate) use sweep_model::{Built, LambdaCount, SweepModelArgs};
pub(crate) use testbed::{RewardArg, TestbedArgs};
