//! One module per subcommand, each with its options (`…Args`, a clap `Args` struct) and its
//! `run` function.

pub(crate) mod compare;
pub(crate) mod demo;
pub(crate) mod extract_lora;
pub(crate) mod merge;
pub(crate) mod report;
pub(crate) mod sample;
pub(crate) mod score;
pub(crate) mod status;
pub(crate) mod sweep;
pub(crate) mod tune;
