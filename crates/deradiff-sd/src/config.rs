//! The `config.json` files of a diffusers-layout checkpoint's UNet and VAE, read with serde, and
//! their resolution into what the models build: [`UnetArch`] for our own UNet ([`crate::unet`]),
//! candle-transformers' `AutoEncoderKLConfig` for the VAE ([`crate::Vae`]). (The CLIP configs are
//! in [`crate::clip`].)
//!
//! Every field has diffusers' / transformers' default, so a real checkpoint's file and a tiny test
//! model's file load the same way. A field whose value is invalid is an
//! [`Error::ConfigField`] naming the file and the field; options that would change the numbers
//! and that the models do not implement (class embeddings, other block types, the SDXL refiner's
//! aesthetic-score conditioning, …) are an [`Error::Unsupported`] naming the file and the field —
//! never silently ignored.

use std::path::{Path, PathBuf};

use candle_transformers::models::stable_diffusion::vae;
use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};

/// Reads and parses a config file (`what` names it in errors): see [`read_text`]; text that is
/// not JSON, or JSON that is not an object of the config's shape, is an [`Error::Config`], a
/// field whose value has the wrong type an [`Error::ConfigField`] naming the field.
pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path, what: &str) -> Result<T> {
    let text = read_text(path, what)?;
    parse_json(&text, path)
}

/// The largest text file (config, tokenizer, weight index) this crate reads: 64 MiB. Real ones
/// are at most a few MiB (a CLIP `tokenizer.json` is about 2 MiB); a larger file is refused
/// before it is read rather than exhausting memory.
pub(crate) const MAX_TEXT_FILE_BYTES: u64 = 64 << 20;

/// What a path is expected to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A regular file (or a symbolic link to one).
    File,
    /// A directory (or a symbolic link to one).
    Dir,
}

impl Kind {
    fn expected(self) -> &'static str {
        match self {
            Kind::File => "a file",
            Kind::Dir => "a folder",
        }
    }
}

/// What [`inspect`] found at a path (symbolic links followed).
enum Found {
    Nothing,
    File,
    Dir,
    /// Anything else, in words ("a FIFO (named pipe)", "a symbolic link loop", …).
    Other(String),
}

/// `ELOOP`: too many levels of symbolic links (not an `io::ErrorKind` on stable Rust).
fn is_link_loop(e: &std::io::Error) -> bool {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    const ELOOP: i32 = 40;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    const ELOOP: i32 = 62;
    e.raw_os_error() == Some(ELOOP)
}

/// A file type that is neither a file, a folder nor a link, in words.
fn describe_special(ft: &std::fs::FileType) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if ft.is_fifo() {
            return "a FIFO (named pipe)".into();
        }
        if ft.is_socket() {
            return "a socket".into();
        }
        if ft.is_block_device() {
            return "a block device".into();
        }
        if ft.is_char_device() {
            return "a character device".into();
        }
    }
    let _ = ft;
    "neither a file nor a folder".into()
}

/// The nearest ancestor of `path` that exists but is not a folder (what makes a path fail with
/// "not a directory").
fn blocking_ancestor(path: &Path) -> Option<(PathBuf, String)> {
    path.ancestors().skip(1).find_map(|a| match std::fs::metadata(a) {
        Ok(m) if m.is_dir() => None,
        Ok(m) if m.is_file() => Some((a.to_path_buf(), "a file".to_string())),
        Ok(m) => Some((a.to_path_buf(), describe_special(&m.file_type()))),
        Err(_) => None,
    })
}

/// What is at `path`, following symbolic links, without opening it (so a FIFO does not block).
/// An [`Error::Io`] when the path cannot be inspected (no permission on a folder on the way).
fn inspect(path: &Path) -> Result<Found> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Found::Nothing),
        Err(e) if is_link_loop(&e) => return Ok(Found::Other("a path through a symbolic link loop".into())),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
            return Ok(Found::Other(match blocking_ancestor(path) {
                Some((a, what)) => format!("unreachable: {} is {what}, not a folder", a.display()),
                None => "unreachable: a folder on its way is not a folder".into(),
            }))
        }
        Err(e) => return Err(Error::io("inspect", path, e)),
    };
    let ft = meta.file_type();
    if ft.is_file() {
        return Ok(Found::File);
    }
    if ft.is_dir() {
        return Ok(Found::Dir);
    }
    if !ft.is_symlink() {
        return Ok(Found::Other(describe_special(&ft)));
    }
    let target = std::fs::read_link(path).map(|t| t.display().to_string()).unwrap_or_else(|_| "?".into());
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(Found::File),
        Ok(m) if m.is_dir() => Ok(Found::Dir),
        Ok(m) => Ok(Found::Other(format!("a symbolic link to {}", describe_special(&m.file_type())))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Ok(Found::Other(format!("a dangling symbolic link (its target {target} does not exist)")))
        }
        Err(e) if is_link_loop(&e) => Ok(Found::Other(format!("a symbolic link loop (it points to {target})"))),
        Err(e) => Err(Error::io("follow the symbolic link", path, e)),
    }
}

/// Whether `path` is of kind `kind` (symbolic links followed): `Ok(true)` if so, `Ok(false)` when
/// nothing is there (for optional files), an [`Error::WrongKind`] naming what is there otherwise
/// (`what` names the path, `expected` what it should be; `None`: "a file" / "a folder"), an
/// [`Error::Io`] when it cannot be inspected.
pub fn probe_path(path: &Path, kind: Kind, what: &str, expected: Option<&str>) -> Result<bool> {
    let found = match (inspect(path)?, kind) {
        (Found::Nothing, _) => return Ok(false),
        (Found::File, Kind::File) | (Found::Dir, Kind::Dir) => return Ok(true),
        (Found::File, Kind::Dir) => "a file".to_string(),
        (Found::Dir, Kind::File) => "a folder".to_string(),
        (Found::Other(s), _) => s,
    };
    Err(Error::WrongKind {
        what: what.to_string(),
        path: path.to_path_buf(),
        found,
        expected: expected.unwrap_or(kind.expected()).to_string(),
    })
}

/// Whether `path` is a file or a folder (symbolic links followed): `Ok(None)` when nothing is
/// there, an [`Error::WrongKind`] (`what` names the path, `expected` what it should be) when it is
/// something else (a FIFO, a device, a dangling link, a link loop, …).
pub(crate) fn probe_any(path: &Path, what: &str, expected: &str) -> Result<Option<Kind>> {
    match inspect(path)? {
        Found::Nothing => Ok(None),
        Found::File => Ok(Some(Kind::File)),
        Found::Dir => Ok(Some(Kind::Dir)),
        Found::Other(found) => Err(Error::WrongKind {
            what: what.to_string(),
            path: path.to_path_buf(),
            found,
            expected: expected.to_string(),
        }),
    }
}

/// Checks that `path` is of kind `kind` (symbolic links followed): an [`Error::NotFound`] when
/// nothing is there, an [`Error::WrongKind`] naming what is there when it is something else (see
/// [`probe_path`]).
pub fn check_path(path: &Path, kind: Kind, what: &str, expected: Option<&str>) -> Result<()> {
    if probe_path(path, kind, what, expected)? {
        Ok(())
    } else {
        Err(Error::NotFound { what: what.to_string(), path: path.to_path_buf() })
    }
}

/// Reads a whole UTF-8 text file (a config, tokenizer or weight index; `what` names it in
/// errors), after checking that it is a file ([`check_path`]) of at most 64 MiB
/// (`MAX_TEXT_FILE_BYTES`). Text that is not UTF-8 is an [`Error::Config`].
pub fn read_text(path: &Path, what: &str) -> Result<String> {
    use std::io::Read;
    check_path(path, Kind::File, what, None)?;
    let file = std::fs::File::open(path).map_err(|e| Error::io("read", path, e))?;
    let len = file.metadata().map_err(|e| Error::io("read", path, e))?.len();
    let too_large = |n: u64| {
        Error::config(
            path,
            format!(
                "the {what} is {n} bytes; this crate reads text files of at most {} MiB (is it the right file?)",
                MAX_TEXT_FILE_BYTES >> 20
            ),
        )
    };
    if len > MAX_TEXT_FILE_BYTES {
        return Err(too_large(len));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    // `take`: the file may grow while it is read.
    file.take(MAX_TEXT_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(|e| Error::io("read", path, e))?;
    if bytes.len() as u64 > MAX_TEXT_FILE_BYTES {
        return Err(too_large(bytes.len() as u64));
    }
    String::from_utf8(bytes).map_err(|e| {
        Error::config(
            path,
            format!(
                "the {what} is not UTF-8 text (invalid byte at offset {}): is it the right file?",
                e.utf8_error().valid_up_to()
            ),
        )
    })
}

/// Parses a config document (`path` names it in errors): text that is not JSON, or JSON that is
/// not an object of the config's shape, is an [`Error::Config`]; a field whose value has the
/// wrong type is an [`Error::ConfigField`] naming the field.
pub(crate) fn parse_json<T: for<'de> Deserialize<'de>>(text: &str, path: &Path) -> Result<T> {
    let value: Value = serde_json::from_str(text).map_err(|e| Error::config(path, e.to_string()))?;
    let whole = match T::deserialize(&value) {
        Ok(config) => return Ok(config),
        Err(e) => e,
    };
    // Every field has a default, so each field alone deserializes unless its own value is bad.
    if let Value::Object(fields) = &value {
        for (field, v) in fields {
            let alone = Value::Object(std::iter::once((field.clone(), v.clone())).collect());
            if let Err(e) = T::deserialize(&alone) {
                return Err(Error::config_field(path, field, e.to_string()));
            }
        }
    }
    Err(Error::config(path, whole.to_string()))
}

/// An integer or one integer per block (diffusers writes both forms).
fn per_block(value: &Value, n: usize, field: &str, path: &Path) -> Result<Vec<usize>> {
    let bad = || Error::config_field(path, field, format!("must be an integer or a list of {n} integers, got {value}"));
    match value {
        Value::Number(x) => {
            let v = x.as_u64().ok_or_else(bad)? as usize;
            Ok(vec![v; n])
        }
        Value::Array(items) => {
            if items.len() != n {
                return Err(Error::config_field(
                    path,
                    field,
                    format!("has {} entries but the model has {n} blocks (block_out_channels)", items.len()),
                ));
            }
            items.iter().map(|x| x.as_u64().map(|v| v as usize).ok_or_else(bad)).collect()
        }
        _ => Err(bad()),
    }
}

fn is_unset(v: &Value) -> bool {
    v.is_null()
}

/// A diffusers `unet/config.json` (`UNet2DConditionModel`). Unknown fields are ignored; missing
/// ones take diffusers' defaults.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct UnetConfig {
    /// Latent height and width the model was trained at: an integer or `[height, width]`.
    pub sample_size: Value,
    /// Latent channels in.
    pub in_channels: usize,
    /// Channels out (the model output: ε or v).
    pub out_channels: usize,
    /// Whether the input is mapped to `2x − 1` first.
    pub center_input_sample: bool,
    /// Timestep embedding: cos first.
    pub flip_sin_to_cos: bool,
    /// Timestep embedding frequency shift.
    pub freq_shift: f64,
    /// `CrossAttnDownBlock2D` or `DownBlock2D` per level.
    pub down_block_types: Vec<String>,
    /// `UNetMidBlock2DCrossAttn`.
    pub mid_block_type: Option<String>,
    /// The mirror of `down_block_types`.
    pub up_block_types: Vec<String>,
    /// Must be false.
    pub only_cross_attention: Value,
    /// Channels per level.
    pub block_out_channels: Vec<usize>,
    /// Resnets per down block (up blocks have one more).
    pub layers_per_block: Value,
    /// Padding of the downsampling convolutions.
    pub downsample_padding: usize,
    /// Output scale of the mid block.
    pub mid_block_scale_factor: f64,
    /// Must be `silu`.
    pub act_fn: String,
    /// Groups of every GroupNorm.
    pub norm_num_groups: Option<usize>,
    /// Epsilon of the resnets' GroupNorms.
    pub norm_eps: f64,
    /// Width of the text embeddings.
    pub cross_attention_dim: Value,
    /// Transformer blocks per cross-attention block: an integer or one per level.
    pub transformer_layers_per_block: Value,
    /// diffusers' legacy name for the **number of attention heads** (an integer or one per level).
    pub attention_head_dim: Value,
    /// Must be null (diffusers itself rejects it for this class).
    pub num_attention_heads: Value,
    /// Linear (SD 2.x) instead of 1×1-convolution projections in the transformers.
    pub use_linear_projection: bool,
    /// Attention in float32 (our UNet always computes attention in float32, so this is
    /// honoured); null (SDXL's file) means false.
    pub upcast_attention: Option<bool>,
    /// Must be false.
    pub dual_cross_attention: bool,
    /// Must be null (class-conditional models).
    pub class_embed_type: Value,
    /// Null, or `text_time` (SDXL: pooled text embedding and size/crop `time_ids`, see
    /// [`TextTimeArch`]).
    pub addition_embed_type: Value,
    /// Width of the sinusoidal embedding of each `time_ids` entry (SDXL: 256).
    pub addition_time_embed_dim: Option<usize>,
    /// Must be null.
    pub num_class_embeds: Value,
    /// Must be null.
    pub encoder_hid_dim: Value,
    /// Must be null.
    pub encoder_hid_dim_type: Value,
    /// Must be `default`.
    pub resnet_time_scale_shift: String,
    /// Must be false.
    pub resnet_skip_time_act: bool,
    /// Must be 1.
    pub resnet_out_scale_factor: f64,
    /// Must be `positional`.
    pub time_embedding_type: String,
    /// Must be null.
    pub time_embedding_dim: Value,
    /// Must be null.
    pub time_embedding_act_fn: Value,
    /// Must be null.
    pub timestep_post_act: Value,
    /// Must be null (LCM guidance embedding).
    pub time_cond_proj_dim: Value,
    /// Must be 3.
    pub conv_in_kernel: usize,
    /// Must be 3.
    pub conv_out_kernel: usize,
    /// Input width of `add_embedding` with `text_time`: pooled width + 6 × `addition_time_embed_dim`
    /// (SDXL: 1280 + 6 × 256 = 2816); otherwise null.
    pub projection_class_embeddings_input_dim: Value,
    /// Must be `default`.
    pub attention_type: String,
    /// Must be null.
    pub mid_block_only_cross_attention: Value,
    /// Must be null.
    pub reverse_transformer_layers_per_block: Value,
    /// Must be null.
    pub cross_attention_norm: Value,
}

impl Default for UnetConfig {
    /// diffusers' `UNet2DConditionModel()` defaults (SD 1.x-like, cross-attention dim 1280).
    fn default() -> Self {
        let s = |v: &str| v.to_string();
        Self {
            sample_size: Value::Null,
            in_channels: 4,
            out_channels: 4,
            center_input_sample: false,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            down_block_types: vec![
                s("CrossAttnDownBlock2D"),
                s("CrossAttnDownBlock2D"),
                s("CrossAttnDownBlock2D"),
                s("DownBlock2D"),
            ],
            mid_block_type: Some(s("UNetMidBlock2DCrossAttn")),
            up_block_types: vec![
                s("UpBlock2D"),
                s("CrossAttnUpBlock2D"),
                s("CrossAttnUpBlock2D"),
                s("CrossAttnUpBlock2D"),
            ],
            only_cross_attention: Value::Bool(false),
            block_out_channels: vec![320, 640, 1280, 1280],
            layers_per_block: Value::from(2),
            downsample_padding: 1,
            mid_block_scale_factor: 1.0,
            act_fn: s("silu"),
            norm_num_groups: Some(32),
            norm_eps: 1e-5,
            cross_attention_dim: Value::from(1280),
            transformer_layers_per_block: Value::from(1),
            attention_head_dim: Value::from(8),
            num_attention_heads: Value::Null,
            use_linear_projection: false,
            upcast_attention: None,
            dual_cross_attention: false,
            class_embed_type: Value::Null,
            addition_embed_type: Value::Null,
            addition_time_embed_dim: None,
            num_class_embeds: Value::Null,
            encoder_hid_dim: Value::Null,
            encoder_hid_dim_type: Value::Null,
            resnet_time_scale_shift: s("default"),
            resnet_skip_time_act: false,
            resnet_out_scale_factor: 1.0,
            time_embedding_type: s("positional"),
            time_embedding_dim: Value::Null,
            time_embedding_act_fn: Value::Null,
            timestep_post_act: Value::Null,
            time_cond_proj_dim: Value::Null,
            conv_in_kernel: 3,
            conv_out_kernel: 3,
            projection_class_embeddings_input_dim: Value::Null,
            attention_type: s("default"),
            mid_block_only_cross_attention: Value::Null,
            reverse_transformer_layers_per_block: Value::Null,
            cross_attention_norm: Value::Null,
        }
    }
}

/// A [`UnetConfig`] checked and resolved into what our UNet builds: every per-block list
/// expanded, every option that would change the numbers either honoured or refused.
#[derive(Debug, Clone, PartialEq)]
pub struct UnetArch {
    /// The levels, from the highest resolution down (`block_out_channels` with each level's
    /// cross-attention).
    pub blocks: Vec<UnetBlock>,
    /// Resnets per down level (up levels have one more).
    pub layers_per_block: usize,
    /// Padding of the downsamplers' strided 3×3 convolutions (0: pad right and bottom by one).
    pub downsample_padding: usize,
    /// Output scale factor of the mid block's resnets.
    pub mid_block_scale_factor: f64,
    /// Groups of every GroupNorm.
    pub norm_num_groups: usize,
    /// Epsilon of the resnets' and the output's GroupNorms.
    pub norm_eps: f64,
    /// Maps the input from `[0, 1]` to `[-1, 1]` first.
    pub center_input_sample: bool,
    /// Sinusoidal timestep embedding with cosines first.
    pub flip_sin_to_cos: bool,
    /// Frequency shift of the sinusoidal embedding.
    pub freq_shift: f64,
    /// The transformers' `proj_in` / `proj_out` are linears (SD 2.x, SDXL), not 1×1 convolutions.
    pub use_linear_projection: bool,
    /// Latent channels in.
    pub in_channels: usize,
    /// Channels out.
    pub out_channels: usize,
    /// Width of the text embeddings the model attends to.
    pub cross_attention_dim: usize,
    /// Default latent `(height, width)` (`sample_size`), if the config gives one.
    pub sample_size: Option<(usize, usize)>,
    /// SDXL's added conditioning (`addition_embed_type = "text_time"`), if the model has it.
    pub text_time: Option<TextTimeArch>,
}

/// One level of the UNet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnetBlock {
    /// Output channels of the level (`block_out_channels[i]`).
    pub out_channels: usize,
    /// Transformer layers of each of its attentions (`transformer_layers_per_block[i]`), `None`
    /// for a level without cross-attention (`DownBlock2D` / `UpBlock2D`).
    pub transformer_layers: Option<usize>,
    /// Attention heads (diffusers' legacy `attention_head_dim` is the number of heads).
    pub heads: usize,
}

/// SDXL's `text_time` added conditioning: the six `time_ids` (original size, crop top-left,
/// target size) through a sinusoidal projection of width `time_embed_dim` each, concatenated
/// after the pooled text embedding (width `pooled_dim`), through `add_embedding`
/// (linear, SiLU, linear) and added to the timestep embedding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextTimeArch {
    /// `addition_time_embed_dim`.
    pub time_embed_dim: usize,
    /// Width of the pooled text embedding (text encoder 2's projection dim).
    pub pooled_dim: usize,
    /// Number of `time_ids` per sample (6).
    pub num_time_ids: usize,
}

impl TextTimeArch {
    /// Input width of `add_embedding`: `pooled_dim + num_time_ids × time_embed_dim` (saturating:
    /// [`UnetConfig::arch`] only makes values whose sum fits).
    pub fn input_dim(&self) -> usize {
        self.pooled_dim.saturating_add(self.num_time_ids.saturating_mul(self.time_embed_dim))
    }
}

impl UnetConfig {
    /// Reads a `unet/config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        read_json(path.as_ref(), "UNet config")
    }

    /// Parses a `config.json` document (`path` is only used in error messages).
    pub fn from_json(json: &str, path: impl AsRef<Path>) -> Result<Self> {
        parse_json(json, path.as_ref())
    }

    /// Checks that our UNet computes what diffusers would for this config, and resolves it into
    /// a [`UnetArch`]. `path` names the config in errors.
    pub fn arch(&self, path: impl AsRef<Path>) -> Result<UnetArch> {
        let path = path.as_ref();
        let unsupported = |field: &str, value: &dyn std::fmt::Display, why: &str| {
            Error::unsupported(path, format!("`{field}` = {value}: {why}"))
        };
        let n = self.block_out_channels.len();
        if n == 0 {
            return Err(Error::config_field(path, "block_out_channels", "is empty"));
        }
        for (field, len) in
            [("down_block_types", self.down_block_types.len()), ("up_block_types", self.up_block_types.len())]
        {
            if len != n {
                return Err(Error::config_field(
                    path,
                    field,
                    format!("lists {len} block types but block_out_channels lists {n} blocks: they must agree"),
                ));
            }
        }
        let mut cross = Vec::with_capacity(n);
        for t in &self.down_block_types {
            cross.push(match t.as_str() {
                "CrossAttnDownBlock2D" => true,
                "DownBlock2D" => false,
                other => {
                    return Err(unsupported(
                        "down_block_types",
                        &other,
                        "only CrossAttnDownBlock2D and DownBlock2D are supported",
                    ))
                }
            });
        }
        for (i, t) in self.up_block_types.iter().enumerate() {
            let want = if cross[n - 1 - i] { "CrossAttnUpBlock2D" } else { "UpBlock2D" };
            if t != want {
                return Err(unsupported(
                    "up_block_types",
                    &format!("{:?}", self.up_block_types),
                    &format!("up block {i} must be {want}, the mirror of down block {}", n - 1 - i),
                ));
            }
        }
        match self.mid_block_type.as_deref() {
            Some("UNetMidBlock2DCrossAttn") => {}
            other => {
                return Err(unsupported(
                    "mid_block_type",
                    &format!("{other:?}"),
                    "only UNetMidBlock2DCrossAttn is supported",
                ))
            }
        }
        let layers = per_block(&self.layers_per_block, n, "layers_per_block", path)?;
        if layers.iter().any(|&l| l != layers[0]) {
            return Err(unsupported("layers_per_block", &self.layers_per_block, "must be the same for every block"));
        }
        let cross_dim = per_block(&self.cross_attention_dim, n, "cross_attention_dim", path)?;
        if cross_dim.iter().any(|&d| d != cross_dim[0]) {
            return Err(unsupported("cross_attention_dim", &self.cross_attention_dim, "must be one integer"));
        }
        let heads = per_block(&self.attention_head_dim, n, "attention_head_dim", path)?;
        let tlpb = per_block(&self.transformer_layers_per_block, n, "transformer_layers_per_block", path)?;
        let groups = self.norm_num_groups.ok_or_else(|| {
            unsupported("norm_num_groups", &"null", "a UNet without GroupNorm before its output is not supported")
        })?;
        if groups == 0 {
            return Err(Error::config_field(path, "norm_num_groups", "must be positive, got 0"));
        }
        for (i, &c) in self.block_out_channels.iter().enumerate() {
            if c == 0 || c % groups != 0 {
                return Err(Error::config_field(
                    path,
                    "block_out_channels",
                    format!("block {i} has {c} channels, not a positive multiple of norm_num_groups = {groups}"),
                ));
            }
            if heads[i] == 0 || c % heads[i] != 0 {
                return Err(Error::config_field(
                    path,
                    "attention_head_dim",
                    format!("{} heads for block {i}, whose {c} channels do not divide into them", heads[i]),
                ));
            }
            if tlpb[i] == 0 {
                return Err(Error::config_field(
                    path,
                    "transformer_layers_per_block",
                    format!("is 0 for block {i}; it must be at least 1"),
                ));
            }
        }
        if !cross[n - 1] && tlpb[n - 1] != 1 {
            return Err(unsupported(
                "transformer_layers_per_block",
                &self.transformer_layers_per_block,
                "the mid block must have one transformer layer when the last block has no cross-attention",
            ));
        }
        for (field, v) in [("in_channels", self.in_channels), ("out_channels", self.out_channels)] {
            if v == 0 {
                return Err(Error::config_field(path, field, "must be positive, got 0"));
            }
        }

        // Options our UNet does not have.
        let must_be_false = |field: &str, v: &Value| -> Result<()> {
            if v.is_null() || v == &Value::Bool(false) {
                return Ok(());
            }
            if let Value::Array(a) = v {
                if a.iter().all(|x| x == &Value::Bool(false)) {
                    return Ok(());
                }
            }
            Err(unsupported(field, v, "not implemented by our UNet"))
        };
        must_be_false("only_cross_attention", &self.only_cross_attention)?;
        must_be_false("mid_block_only_cross_attention", &self.mid_block_only_cross_attention)?;
        let text_time = self.text_time(path)?;
        let null_fields: [(&str, &Value); 11] = [
            ("num_attention_heads", &self.num_attention_heads),
            ("class_embed_type", &self.class_embed_type),
            ("num_class_embeds", &self.num_class_embeds),
            ("encoder_hid_dim", &self.encoder_hid_dim),
            ("encoder_hid_dim_type", &self.encoder_hid_dim_type),
            ("time_embedding_dim", &self.time_embedding_dim),
            ("time_embedding_act_fn", &self.time_embedding_act_fn),
            ("timestep_post_act", &self.timestep_post_act),
            ("time_cond_proj_dim", &self.time_cond_proj_dim),
            ("reverse_transformer_layers_per_block", &self.reverse_transformer_layers_per_block),
            ("cross_attention_norm", &self.cross_attention_norm),
        ];
        for (field, v) in null_fields {
            if !is_unset(v) {
                return Err(unsupported(field, v, "not implemented by our UNet; it must be null"));
            }
        }
        let checks: [(&str, bool, String); 8] = [
            ("act_fn", self.act_fn == "silu", self.act_fn.clone()),
            ("dual_cross_attention", !self.dual_cross_attention, self.dual_cross_attention.to_string()),
            (
                "resnet_time_scale_shift",
                self.resnet_time_scale_shift == "default",
                self.resnet_time_scale_shift.clone(),
            ),
            ("resnet_skip_time_act", !self.resnet_skip_time_act, self.resnet_skip_time_act.to_string()),
            ("resnet_out_scale_factor", self.resnet_out_scale_factor == 1.0, self.resnet_out_scale_factor.to_string()),
            ("time_embedding_type", self.time_embedding_type == "positional", self.time_embedding_type.clone()),
            ("attention_type", self.attention_type == "default", self.attention_type.clone()),
            (
                "conv_in_kernel / conv_out_kernel",
                self.conv_in_kernel == 3 && self.conv_out_kernel == 3,
                format!("{} / {}", self.conv_in_kernel, self.conv_out_kernel),
            ),
        ];
        for (field, ok, value) in checks {
            if !ok {
                return Err(unsupported(field, &value, "not implemented by our UNet"));
            }
        }
        for (field, v) in [("freq_shift", self.freq_shift), ("mid_block_scale_factor", self.mid_block_scale_factor)] {
            if !v.is_finite() {
                return Err(Error::config_field(path, field, format!("must be finite, got {v}")));
            }
        }
        if !(self.norm_eps.is_finite() && self.norm_eps > 0.0) {
            return Err(Error::config_field(
                path,
                "norm_eps",
                format!("must be a positive finite number, got {}", self.norm_eps),
            ));
        }

        let blocks = (0..n)
            .map(|i| UnetBlock {
                out_channels: self.block_out_channels[i],
                transformer_layers: if cross[i] { Some(tlpb[i]) } else { None },
                heads: heads[i],
            })
            .collect();
        let sample_size = match &self.sample_size {
            Value::Null => None,
            v => {
                let side = |x: &Value| x.as_u64().filter(|&s| s > 0).map(|s| s as usize);
                let size = match v {
                    Value::Array(a) if a.len() == 2 => side(&a[0]).zip(side(&a[1])),
                    x => side(x).map(|s| (s, s)),
                };
                Some(size.ok_or_else(|| {
                    Error::config_field(
                        path,
                        "sample_size",
                        format!("must be a positive integer or [height, width] of them, got {v}"),
                    )
                })?)
            }
        };
        Ok(UnetArch {
            blocks,
            layers_per_block: layers[0],
            downsample_padding: self.downsample_padding,
            mid_block_scale_factor: self.mid_block_scale_factor,
            norm_num_groups: groups,
            norm_eps: self.norm_eps,
            center_input_sample: self.center_input_sample,
            flip_sin_to_cos: self.flip_sin_to_cos,
            freq_shift: self.freq_shift,
            use_linear_projection: self.use_linear_projection,
            in_channels: self.in_channels,
            out_channels: self.out_channels,
            cross_attention_dim: cross_dim[0],
            sample_size,
            text_time,
        })
    }

    /// SDXL's added conditioning from `addition_embed_type`, `addition_time_embed_dim` and
    /// `projection_class_embeddings_input_dim`; `None` for SD 1.x / 2.x UNets.
    fn text_time(&self, path: &Path) -> Result<Option<TextTimeArch>> {
        let unsupported = |message: String| Error::unsupported(path, message);
        match &self.addition_embed_type {
            Value::Null => {
                if !self.projection_class_embeddings_input_dim.is_null() {
                    return Err(unsupported(format!(
                        "`projection_class_embeddings_input_dim` = {} without `addition_embed_type`: class \
                         embeddings are not implemented; it must be null",
                        self.projection_class_embeddings_input_dim
                    )));
                }
                Ok(None)
            }
            Value::String(s) if s == "text_time" => {
                let time = self.addition_time_embed_dim.filter(|&d| d > 0).ok_or_else(|| {
                    unsupported(
                        "`addition_embed_type` = \"text_time\" needs a positive `addition_time_embed_dim`".to_string(),
                    )
                })?;
                let input =
                    self.projection_class_embeddings_input_dim.as_u64().map(|v| v as usize).ok_or_else(|| {
                        unsupported(
                            "`addition_embed_type` = \"text_time\" needs an integer \
                         `projection_class_embeddings_input_dim` (pooled width + 6 × addition_time_embed_dim)"
                                .to_string(),
                        )
                    })?;
                let num_time_ids = 6usize;
                let time_width = num_time_ids.checked_mul(time).filter(|&w| w < input);
                let Some(time_width) = time_width else {
                    return Err(unsupported(format!(
                        "`addition_embed_type` = \"text_time\": projection_class_embeddings_input_dim = {input} \
                         leaves no room for a pooled text embedding beside {num_time_ids} time ids × {time} \
                         (SDXL base: 1280 + 6 × 256 = 2816; the refiner's aesthetic-score conditioning is not \
                         supported)"
                    )));
                };
                Ok(Some(TextTimeArch { time_embed_dim: time, pooled_dim: input - time_width, num_time_ids }))
            }
            other => Err(unsupported(format!(
                "`addition_embed_type` = {other}: only SDXL's \"text_time\" added conditioning is supported"
            ))),
        }
    }
}

/// A diffusers `vae/config.json` (`AutoencoderKL`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct VaeConfig {
    /// Image channels in.
    pub in_channels: usize,
    /// Image channels out.
    pub out_channels: usize,
    /// All `DownEncoderBlock2D`.
    pub down_block_types: Vec<String>,
    /// All `UpDecoderBlock2D`.
    pub up_block_types: Vec<String>,
    /// Channels per level; the spatial scale factor is `2^(len − 1)`.
    pub block_out_channels: Vec<usize>,
    /// Resnets per encoder block (decoder blocks have one more).
    pub layers_per_block: usize,
    /// Must be `silu`.
    pub act_fn: String,
    /// Latent channels.
    pub latent_channels: usize,
    /// GroupNorm groups.
    pub norm_num_groups: usize,
    /// The sampler works on latents × this; [`crate::Vae::decode`] divides by it before
    /// decoding (SD 1.x 0.18215, SDXL 0.13025).
    pub scaling_factor: f64,
    /// Whether fp16 checkpoints should decode in float32 (diffusers' `force_upcast`).
    pub force_upcast: bool,
    /// Whether the model has `quant_conv`.
    pub use_quant_conv: bool,
    /// Whether the model has `post_quant_conv`.
    pub use_post_quant_conv: bool,
    /// Must be true (candle-transformers' `AutoEncoderKL` always has the mid-block attention).
    pub mid_block_add_attention: bool,
}

impl Default for VaeConfig {
    /// diffusers' `AutoencoderKL()` defaults.
    fn default() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            down_block_types: vec!["DownEncoderBlock2D".into()],
            up_block_types: vec!["UpDecoderBlock2D".into()],
            block_out_channels: vec![64],
            layers_per_block: 1,
            act_fn: "silu".into(),
            latent_channels: 4,
            norm_num_groups: 32,
            scaling_factor: 0.18215,
            force_upcast: true,
            use_quant_conv: true,
            use_post_quant_conv: true,
            mid_block_add_attention: true,
        }
    }
}

impl VaeConfig {
    /// Reads a `vae/config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        read_json(path.as_ref(), "VAE config")
    }

    /// The spatial factor between latents and images: `2^(len(block_out_channels) − 1)`.
    pub fn scale_factor(&self) -> usize {
        1usize << self.block_out_channels.len().saturating_sub(1).min(16)
    }

    /// Checks the config against what candle-transformers' `AutoEncoderKL` implements and builds
    /// its config.
    pub(crate) fn arch(&self, path: impl AsRef<Path>) -> Result<vae::AutoEncoderKLConfig> {
        let path = path.as_ref();
        let n = self.block_out_channels.len();
        if n == 0 || n > 16 {
            return Err(Error::config_field(path, "block_out_channels", format!("must have 1 to 16 entries, got {n}")));
        }
        for (field, len) in
            [("down_block_types", self.down_block_types.len()), ("up_block_types", self.up_block_types.len())]
        {
            if len != n {
                return Err(Error::config_field(
                    path,
                    field,
                    format!("lists {len} block types but block_out_channels lists {n} blocks: they must agree"),
                ));
            }
        }
        if let Some(t) = self.down_block_types.iter().find(|t| *t != "DownEncoderBlock2D") {
            return Err(Error::unsupported(
                path,
                format!("`down_block_types` has {t}: only DownEncoderBlock2D is supported"),
            ));
        }
        if let Some(t) = self.up_block_types.iter().find(|t| *t != "UpDecoderBlock2D") {
            return Err(Error::unsupported(
                path,
                format!("`up_block_types` has {t}: only UpDecoderBlock2D is supported"),
            ));
        }
        if self.act_fn != "silu" {
            return Err(Error::unsupported(path, format!("`act_fn` = {}: only silu is supported", self.act_fn)));
        }
        if !self.mid_block_add_attention {
            return Err(Error::unsupported(
                path,
                "`mid_block_add_attention` = false is not implemented by candle-transformers' AutoEncoderKL",
            ));
        }
        let g = self.norm_num_groups;
        if g == 0 {
            return Err(Error::config_field(path, "norm_num_groups", "must be positive, got 0"));
        }
        if let Some(c) = self.block_out_channels.iter().find(|&&c| c == 0 || c % g != 0) {
            return Err(Error::config_field(
                path,
                "block_out_channels",
                format!("{c} channels are not a positive multiple of norm_num_groups = {g}"),
            ));
        }
        if !(self.scaling_factor.is_finite() && self.scaling_factor > 0.0) {
            return Err(Error::config_field(
                path,
                "scaling_factor",
                format!("must be a positive finite number, got {}", self.scaling_factor),
            ));
        }
        for (field, v) in [("latent_channels", self.latent_channels), ("in_channels", self.in_channels)] {
            if v == 0 {
                return Err(Error::config_field(path, field, "must be positive, got 0"));
            }
        }
        if self.out_channels != 3 {
            return Err(Error::unsupported(
                path,
                format!("`out_channels` = {}: the VAE must decode to 3 (RGB) channels", self.out_channels),
            ));
        }
        Ok(vae::AutoEncoderKLConfig {
            block_out_channels: self.block_out_channels.clone(),
            layers_per_block: self.layers_per_block,
            latent_channels: self.latent_channels,
            norm_num_groups: g,
            use_quant_conv: self.use_quant_conv,
            use_post_quant_conv: self.use_post_quant_conv,
        })
    }
}

/// The config file beside weights: `dir/config.json`.
pub fn config_path(dir: &Path) -> PathBuf {
    dir.join("config.json")
}
