//! peft's `LoraConfig` as peft and diffusers read it: from a peft folder's `adapter_config.json`,
//! or from the `lora_adapter_metadata` entry diffusers' `save_lora_weights` writes into the
//! safetensors header (the UNet's settings under `unet.`-prefixed keys, which diffusers strips
//! before it builds the config; other keys are not the UNet's).
//!
//! As peft does (`LoraConfig` defaults, `LoraModel._create_and_replace`, `get_pattern_key`):
//!
//! * `r` and `lora_alpha` default to 8;
//! * a layer's rank is that of the first `rank_pattern` key (in the file's order) that matches
//!   its module path, else `r`; its alpha likewise from `alpha_pattern`, else `lora_alpha`;
//! * a pattern key is a regular expression, matched as `(.*\.)?(KEY)$` from the start of the
//!   path (diffusers writes keys like `^down_blocks.0.attentions.0.proj_in`);
//! * the scale is `alpha / r`, or `alpha / √r` with `use_rslora`.
//!
//! peft builds each adapted layer with the declared rank and then loads the tensors into it, so
//! a tensor of another rank is refused there ("size mismatch"); [`PeftConfig::check_rank`] refuses
//! it here, naming the key and the setting that declared the rank.

use std::fmt;
use std::path::Path;

use regex::Regex;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use crate::error::{Error, Result};

/// peft's default `r` and `lora_alpha`.
const PEFT_DEFAULT: usize = 8;

/// The most entries a `rank_pattern` or `alpha_pattern` may have: each is a regular expression
/// tried on every adapted layer, and an adapter has at most one entry per layer (SDXL's UNet has
/// about 2,300 linear and convolution layers).
const MAX_PATTERN_ENTRIES: usize = 10_000;

/// Where a config was read from, for messages.
#[derive(Debug, Clone)]
pub(super) enum ConfigSource {
    /// A peft folder's `adapter_config.json`.
    File(std::path::PathBuf),
    /// The `lora_adapter_metadata` entry of the safetensors header.
    Metadata,
}

impl fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigSource::File(p) => write!(f, "{}", p.display()),
            ConfigSource::Metadata => f.write_str("the header's `lora_adapter_metadata`"),
        }
    }
}

/// One `rank_pattern` / `alpha_pattern` entry.
#[derive(Debug, Clone)]
struct Pattern<T> {
    key: String,
    regex: Regex,
    value: T,
}

/// The settings of a peft `LoraConfig` that decide each layer's rank and scale.
#[derive(Debug, Clone)]
pub(super) struct PeftConfig {
    source: ConfigSource,
    /// `r`, and whether the config gave it (else peft's default 8).
    r: (usize, bool),
    /// `lora_alpha`, and whether the config gave it (else peft's default 8).
    alpha: (f64, bool),
    rslora: bool,
    rank_pattern: Vec<Pattern<usize>>,
    alpha_pattern: Vec<Pattern<f64>>,
}

/// A JSON object with its entries in the order of the text (serde_json's map sorts them; peft
/// takes the first matching pattern in the file's order). A repeated key keeps its first place
/// and its last value, as Python's `json` does.
#[derive(Debug, Default)]
struct Ordered(Vec<(String, serde_json::Value)>);

impl<'de> Deserialize<'de> for Ordered {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Ordered;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of module pattern → number, or null")
            }
            fn visit_unit<E>(self) -> std::result::Result<Ordered, E> {
                Ok(Ordered::default())
            }
            fn visit_none<E>(self) -> std::result::Result<Ordered, E> {
                Ok(Ordered::default())
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Ordered, A::Error> {
                let mut out: Vec<(String, serde_json::Value)> = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, serde_json::Value>()? {
                    match out.iter_mut().find(|(key, _)| *key == k) {
                        Some(slot) => slot.1 = v,
                        None => out.push((k, v)),
                    }
                }
                Ok(Ordered(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// The config's top level: every entry as a JSON value, and the pattern entries in order.
#[derive(Debug, Default)]
struct TopLevel {
    fields: serde_json::Map<String, serde_json::Value>,
    patterns: Vec<(String, Ordered)>,
}

impl<'de> Deserialize<'de> for TopLevel {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TopLevel;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object (a peft LoraConfig)")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<TopLevel, A::Error> {
                let mut top = TopLevel::default();
                while let Some(k) = map.next_key::<String>()? {
                    if k.ends_with("rank_pattern") || k.ends_with("alpha_pattern") {
                        let v: Ordered = map.next_value()?;
                        top.patterns.retain(|(key, _)| *key != k);
                        top.patterns.push((k.clone(), v));
                        top.fields.insert(k, serde_json::Value::Null);
                    } else {
                        let v: serde_json::Value = map.next_value()?;
                        top.fields.insert(k, v);
                    }
                }
                Ok(top)
            }
        }
        d.deserialize_map(V)
    }
}

impl PeftConfig {
    /// Reads the settings from the JSON text of a config whose keys carry `prefix` (`""` for
    /// `adapter_config.json`, `"unet."` for diffusers' metadata, whose other keys are ignored as
    /// diffusers ignores them). `err` makes the error for a bad value.
    pub(super) fn parse(text: &str, prefix: &str, source: ConfigSource, err: &dyn Fn(String) -> Error) -> Result<Self> {
        let top: TopLevel = serde_json::from_str(text).map_err(|e| err(format!("not a JSON object: {e}")))?;
        if !prefix.is_empty() && !top.fields.keys().any(|k| k.starts_with(prefix)) {
            return Err(err(format!(
                "it has no `{prefix}` entries (diffusers builds the UNet's LoraConfig from `{prefix}r`, \
                 `{prefix}lora_alpha`, `{prefix}target_modules`, … and refuses an adapter without them); save the \
                 adapter again with diffusers' save_lora_weights, or remove the entry"
            )));
        }
        let get = |k: &str| top.fields.get(&format!("{prefix}{k}")).filter(|v| !v.is_null());
        if let Some(v) = get("peft_type") {
            if v.as_str() != Some("LORA") {
                return Err(err(format!(
                    "peft_type is {v}; only LoRA adapters are supported (not LoHa, LoKr, OFT, IA3, …)"
                )));
            }
        }
        let flag = |k: &str| -> Result<bool> {
            match get(k) {
                None => Ok(false),
                Some(v) => v.as_bool().ok_or_else(|| err(format!("`{k}` is {v}, not true or false"))),
            }
        };
        if flag("use_dora")? {
            return Err(err("use_dora is true: DoRA adapters are not supported (only plain LoRA)".into()));
        }
        let rank = |what: &str, v: &serde_json::Value| -> Result<usize> {
            match v.as_u64().and_then(|r| usize::try_from(r).ok()) {
                Some(r) if r > 0 => Ok(r),
                _ => Err(err(format!("{what} is {v}; a rank must be a positive whole number"))),
            }
        };
        let alpha = |what: &str, v: &serde_json::Value| -> Result<f64> {
            match v.as_f64() {
                Some(x) if x.is_finite() => Ok(x),
                _ => Err(err(format!("{what} is {v}, not a finite number"))),
            }
        };
        let r = match get("r") {
            Some(v) => (rank("`r`", v)?, true),
            None => (PEFT_DEFAULT, false),
        };
        let lora_alpha = match get("lora_alpha") {
            Some(v) => (alpha("`lora_alpha`", v)?, true),
            None => (PEFT_DEFAULT as f64, false),
        };
        let ordered = |k: &str| top.patterns.iter().find(|(key, _)| *key == format!("{prefix}{k}")).map(|(_, o)| o);
        for field in ["rank_pattern", "alpha_pattern"] {
            if let Some(o) = ordered(field).filter(|o| o.0.len() > MAX_PATTERN_ENTRIES) {
                return Err(err(format!(
                    "`{field}` has {} entries; at most {MAX_PATTERN_ENTRIES} are read (one per adapted layer is the \
                     most an adapter needs)",
                    o.0.len()
                )));
            }
        }
        let mut rank_pattern = Vec::new();
        for (key, v) in ordered("rank_pattern").map_or(&[][..], |o| &o.0[..]) {
            let value = rank(&format!("`rank_pattern` entry `{key}`"), v)?;
            rank_pattern.push(Pattern { key: key.clone(), regex: pattern_regex("rank_pattern", key, err)?, value });
        }
        let mut alpha_pattern = Vec::new();
        for (key, v) in ordered("alpha_pattern").map_or(&[][..], |o| &o.0[..]) {
            let value = alpha(&format!("`alpha_pattern` entry `{key}`"), v)?;
            alpha_pattern.push(Pattern { key: key.clone(), regex: pattern_regex("alpha_pattern", key, err)?, value });
        }
        Ok(Self { source, r, alpha: lora_alpha, rslora: flag("use_rslora")?, rank_pattern, alpha_pattern })
    }

    /// The rank peft gives the layer at module path `path`, and the setting that declares it.
    fn rank(&self, path: &str) -> (usize, String) {
        match self.rank_pattern.iter().find(|p| p.regex.is_match(path)) {
            Some(p) => (p.value, format!("its `rank_pattern` entry `{}`", p.key)),
            None if self.r.1 => (self.r.0, "its `r`".into()),
            None => (self.r.0, format!("peft's default r = {PEFT_DEFAULT}, as it gives no `r`")),
        }
    }

    /// Refuses a layer whose tensors' rank is not the one the config declares for it (peft and
    /// diffusers refuse it too: the layer they build has the declared rank). `key` is the down
    /// weight's key, as the file spells it.
    pub(super) fn check_rank(&self, path: &str, tensor_rank: usize, key: &str, adapter: &Path) -> Result<()> {
        let (declared, why) = self.rank(path);
        if declared == tensor_rank {
            return Ok(());
        }
        Err(Error::Lora {
            path: adapter.to_path_buf(),
            message: format!(
                "`{key}` has rank {tensor_rank}, but {} declares rank {declared} for `{path}` ({why}); peft and \
                 diffusers refuse this adapter (a size mismatch when the tensors are loaded): use the config the \
                 adapter was saved with",
                self.source
            ),
        })
    }

    /// The scale of the layer at module path `path`: its alpha over its declared rank (or the
    /// rank's square root with rsLoRA).
    pub(super) fn scale(&self, path: &str) -> f64 {
        let r = self.rank(path).0 as f64;
        let alpha = self.alpha_pattern.iter().find(|p| p.regex.is_match(path)).map_or(self.alpha.0, |p| p.value);
        if self.rslora {
            alpha / r.sqrt()
        } else {
            alpha / r
        }
    }

    /// Where the config was read from.
    pub(super) fn source(&self) -> &ConfigSource {
        &self.source
    }
}

/// peft's `re.match(rf"(.*\.)?({key})$", path)` as an anchored regular expression. Python and
/// Rust regular expressions agree on what module patterns use (names, `.`, `^`, `|`, classes,
/// repetition); a key Rust cannot read (look-around, back-references) is an error naming it.
fn pattern_regex(field: &str, key: &str, err: &dyn Fn(String) -> Error) -> Result<Regex> {
    regex::RegexBuilder::new(&format!(r"^(?:.*\.)?(?:{key})$"))
        .size_limit(1 << 20)
        .build()
        .map_err(|e| err(format!("`{field}` key `{key}` is not a regular expression deradiff can match: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, prefix: &str) -> Result<PeftConfig> {
        PeftConfig::parse(text, prefix, ConfigSource::Metadata, &|m| Error::Lora { path: "x".into(), message: m })
    }

    #[test]
    fn patterns_defaults_and_rslora_scale_as_peft_does() {
        let p =
            parse(r#"{"r": 8, "lora_alpha": 16, "rank_pattern": {"to_k": 4}, "alpha_pattern": {"attn2.to_v": 2}}"#, "")
                .unwrap();
        assert_eq!(p.scale("a.attn1.to_q"), 2.0);
        assert_eq!(p.scale("a.attn1.to_k"), 4.0);
        assert_eq!(p.scale("a.attn2.to_v"), 0.25);
        assert_eq!(p.scale("a.attn1.to_v"), 2.0);
        // A pattern matches whole path components: `to_k` does not match `xto_k`.
        assert_eq!(p.rank("a.xto_k").0, 8);
        let p = parse(r#"{"unet.r": 4, "unet.lora_alpha": 8, "unet.use_rslora": true, "r": 99}"#, "unet.").unwrap();
        assert_eq!(p.scale("x"), 4.0);
        // peft's defaults: r = lora_alpha = 8.
        let p = parse(r#"{"unet.peft_type": "LORA"}"#, "unet.").unwrap();
        assert_eq!((p.rank("x").0, p.scale("x")), (8, 1.0));
        assert!(p.rank("x").1.contains("default"));
    }

    #[test]
    fn diffusers_anchored_keys_and_the_files_order_decide() {
        // diffusers writes `^<full module path>`; the first match in the file's order wins.
        let p = parse(r#"{"r": 4, "rank_pattern": {"^down_blocks.0.proj_in": 2, "proj_in": 6, "a": 1}}"#, "").unwrap();
        assert_eq!(p.rank("down_blocks.0.proj_in").0, 2);
        assert_eq!(p.rank("up_blocks.0.down_blocks.0.proj_in").0, 6);
        assert_eq!(p.rank("mid.proj_in").0, 6);
        let p = parse(r#"{"r": 4, "rank_pattern": {"proj_in": 6, "^down_blocks.0.proj_in": 2}}"#, "").unwrap();
        assert_eq!(p.rank("down_blocks.0.proj_in").0, 6);
        // A repeated key keeps its first place and its last value.
        let p = parse(r#"{"rank_pattern": {"x": 1, "y": 2, "x": 3}}"#, "").unwrap();
        assert_eq!((p.rank_pattern[0].key.as_str(), p.rank_pattern[0].value), ("x", 3));
    }

    #[test]
    fn bad_settings_are_errors_naming_them() {
        let entries: Vec<String> = (0..10_001).map(|i| format!("\"m{i}\": 4")).collect();
        let huge = format!("{{\"rank_pattern\": {{{}}}}}", entries.join(", "));
        for (text, prefix, want) in [
            (r#"{"r": 0}"#, "", "`r` is 0"),
            (r#"{"r": 4.5}"#, "", "`r` is 4.5"),
            (r#"{"r": -4}"#, "", "`r` is -4"),
            (r#"{"lora_alpha": "two"}"#, "", "`lora_alpha` is \"two\""),
            (r#"{"rank_pattern": {"to_q": 0}}"#, "", "`rank_pattern` entry `to_q` is 0"),
            (r#"{"rank_pattern": [1]}"#, "", "not a JSON object"),
            (r#"{"alpha_pattern": {"to_q": null}}"#, "", "`alpha_pattern` entry `to_q` is null"),
            (r#"{"rank_pattern": {"(?<=a)b": 2}}"#, "", "not a regular expression"),
            (r#"{"use_rslora": "yes"}"#, "", "`use_rslora` is \"yes\""),
            (r#"{"peft_type": "LOHA"}"#, "", "peft_type is \"LOHA\""),
            (r#"{"r": 4, "lora_alpha": 4}"#, "unet.", "no `unet.` entries"),
            (huge.as_str(), "", "`rank_pattern` has 10001 entries; at most 10000"),
            ("[1, 2]", "", "not a JSON object"),
        ] {
            let e = parse(text, prefix).unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
    }
}
