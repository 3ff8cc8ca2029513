//! The value of every model option (`--reference`, `--aligned`, the reward models): a path, or a
//! Hugging Face repo id (`org/name[@revision][/path/in/repo]`) resolved offline in the local
//! Hugging Face cache by [`deradiff_sd::resolve_model_path`]. Parsed here, once, as clap reads the
//! option, so that every command sees a path.

use std::ffi::OsStr;
use std::path::PathBuf;

use clap::builder::TypedValueParser;
use clap::error::ErrorKind;

/// clap's value parser of the model options: an existing path as it is, a repo id as its cached
/// snapshot (or the file or folder named in it); a repo id that is not cached is a usage error
/// naming the folder looked in and the `huggingface-cli download` command that fetches it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ModelPath;

impl TypedValueParser for ModelPath {
    type Value = PathBuf;

    fn parse_ref(&self, cmd: &clap::Command, arg: Option<&clap::Arg>, value: &OsStr) -> Result<PathBuf, clap::Error> {
        deradiff_sd::resolve_model_path(value).map_err(|e| {
            let arg = arg.map_or_else(|| "the model".to_string(), |a| format!("'{a}'"));
            let message = format!("invalid value '{}' for {arg}: {e}\n", value.to_string_lossy());
            clap::Error::raw(ErrorKind::ValueValidation, message).with_cmd(cmd)
        })
    }
}
