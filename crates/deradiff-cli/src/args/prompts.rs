//! `--prompts-file`: the prompt files `sweep`, `tune` and `score` read.

use std::path::Path;

use deradiff_rewards::{read_prompt_file, PromptEntry};

use crate::error::{Context, Result};

/// The prompts of `--prompts-file` (plain text, JSON lines, CSV or YAML), the text taken from
/// `--prompt-column` where given.
pub(crate) fn read_prompts_file(file: &Path, column: Option<&str>) -> Result<Vec<PromptEntry>> {
    read_prompt_file(file, column).with_context(|| format!("cannot read --prompts-file {}", file.display()))
}
