//! Text as the reward references see it: open_clip's tokenizer ([`OpenClipTokenizer`], HPS v2's)
//! with its cleaning — a Rust port of `ftfy.fix_text` ([`fix_text`]; the module docs of `ftfy`
//! say what it covers) and Python's `html.unescape` ([`html_unescape`]).

mod ftfy;
mod html;
mod open_clip;
mod tables;

pub use self::ftfy::fix_text;
pub use html::html_unescape;
pub use open_clip::{open_clip_clean, OpenClipTokenizer};
