//! Reading LoRA files: the layouts people ship, their key names mapped to diffusers module paths.
//!
//! | layout | keys (one adapted layer) | scale |
//! | --- | --- | --- |
//! | diffusers (`save_lora_weights`, the DPO script) | `unet.<path>.lora.down.weight`, `.lora.up.weight` (or peft's `lora_A` / `lora_B`) | `<path>.alpha` tensors, or the peft config in the `lora_adapter_metadata` header entry, else 1 |
//! | attention processors (diffusers ≤ 0.20) | `<path>.processor.to_q_lora.down.weight`, … `to_out_lora` | 1 |
//! | peft (`save_pretrained`) | `base_model.model.<path>.lora_A.weight`, `.lora_B.weight` + `adapter_config.json` | `lora_alpha / r` (`alpha_pattern`, `rank_pattern`, rsLoRA's `/ √r`) |
//! | kohya / LyCORIS LoCon, diffusers names (SD 1.x, 2.x) | `lora_unet_down_blocks_0_…_to_q.lora_down.weight`, `.lora_up.weight`, `.alpha` | `alpha / r` |
//! | kohya, SGM names (SDXL) | `lora_unet_input_blocks_4_1_…`, `middle_block_…`, `output_blocks_…` | `alpha / r` |
//!
//! DoRA, LoHa, LoKr, LoCon's CP decomposition (`lora_mid`), text-encoder adapters and any key that
//! is none of the above are refused with an error that names the key: an adapter is never
//! applied in part. The peft settings are read as peft reads them (`super::peft`), and what peft
//! or diffusers refuse — ranks the settings do not declare, two sources of one alpha, peft keys
//! without their config, two adapters in one folder — is refused here too.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Tensor};

use super::peft::{ConfigSource, PeftConfig};
use super::{LoraAdapter, LoraLayer};
use crate::error::{Error, Result};
use crate::fs::{check_path, probe_path, read_text, Kind};
use crate::unet::Unet;
use crate::weights::{check_values, header_problem, sniff_safetensors};

/// The layout a LoRA file was written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LoraFormat {
    /// diffusers: `unet.<path>.lora.down.weight` / `.lora.up.weight` (what `save_lora_weights`
    /// and diffusers' DPO training script write), or the same with peft's `lora_A` / `lora_B`.
    Diffusers,
    /// diffusers' older attention-processor form: `<path>.processor.to_q_lora.down.weight`.
    AttnProcessors,
    /// A peft folder: `adapter_model.safetensors` (`base_model.model.<path>.lora_A.weight`) with
    /// `adapter_config.json`.
    Peft,
    /// kohya-ss / LyCORIS LoCon with diffusers block names (`lora_unet_down_blocks_0_…`), as
    /// SD 1.x / 2.x LoRAs are published.
    Kohya,
    /// kohya with the original Stability (SGM) block names (`lora_unet_input_blocks_4_1_…`,
    /// `middle_block_…`, `output_blocks_…`), as SDXL LoRAs are published.
    KohyaSgm,
}

impl fmt::Display for LoraFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LoraFormat::Diffusers => "diffusers",
            LoraFormat::AttnProcessors => "diffusers attention processors",
            LoraFormat::Peft => "peft",
            LoraFormat::Kohya => "kohya",
            LoraFormat::KohyaSgm => "kohya (SGM block names)",
        })
    }
}

/// The largest safetensors header read when sniffing (the `safetensors` crate's own limit).
const MAX_HEADER: u64 = 100_000_000;

/// File names of a LoRA inside a folder, in the order they are looked for.
const FOLDER_FILES: [&str; 2] = ["adapter_model.safetensors", "pytorch_lora_weights.safetensors"];

/// Whether `path` looks like a LoRA adapter (a file or folder) rather than a full UNet: a folder
/// with `adapter_config.json`, `adapter_model.safetensors` or `pytorch_lora_weights.safetensors`,
/// or with subfolders holding them (and no UNet `config.json`), or a safetensors file whose tensor names are those of an adapter
/// (`lora_…`, `….lora.down.…`, `lora_A`, LyCORIS' `hada_` / `lokr_`, DoRA's magnitudes). Anything
/// unreadable is "not a LoRA", so that the UNet loader reports it.
pub fn looks_like_lora(path: &Path) -> bool {
    if path.is_dir() {
        if path.join("config.json").is_file() {
            return false;
        }
        return path.join("adapter_config.json").is_file()
            || FOLDER_FILES.iter().any(|f| path.join(f).is_file())
            || !adapter_subfolders(path).is_empty();
    }
    match header(path) {
        Ok((names, _)) => names.iter().any(|n| is_adapter_name(n)),
        Err(_) => false,
    }
}

fn is_adapter_name(n: &str) -> bool {
    const MARKERS: [&str; 12] = [
        "lora_down",
        "lora_up",
        "lora.down",
        "lora.up",
        "lora_A",
        "lora_B",
        "lora_unet_",
        "lora_te",
        "hada_w",
        "lokr_w",
        "lora_magnitude_vector",
        "dora_scale",
    ];
    MARKERS.iter().any(|m| n.contains(m))
}

/// The tensor names and the `__metadata__` entries of a safetensors file, from its header alone.
fn header(path: &Path) -> std::io::Result<(Vec<String>, BTreeMap<String, String>)> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    // Checked before opening: opening a FIFO blocks until someone writes to it.
    if !std::fs::metadata(path)?.is_file() {
        return Err(bad("not a file"));
    }
    let mut file = std::fs::File::open(path)?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len)?;
    let n = u64::from_le_bytes(len);
    if n > MAX_HEADER {
        return Err(bad("header too large"));
    }
    let mut bytes = Vec::new();
    file.take(n).read_to_end(&mut bytes)?;
    if bytes.len() as u64 != n {
        return Err(bad("truncated header"));
    }
    let json: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes).map_err(|e| bad(&e.to_string()))?;
    let mut names = Vec::with_capacity(json.len());
    let mut metadata = BTreeMap::new();
    for (k, v) in json {
        if k == "__metadata__" {
            if let Some(m) = v.as_object() {
                for (mk, mv) in m {
                    if let Some(s) = mv.as_str() {
                        metadata.insert(mk.clone(), s.to_string());
                    }
                }
            }
        } else {
            names.push(k);
        }
    }
    Ok((names, metadata))
}

/// Where an adapter's weights (and peft config) are.
struct Located {
    weights: PathBuf,
    config: Option<PathBuf>,
}

/// Names of safetensors files that are no adapter (diffusers' `_best_guess_weight_name` passes
/// over them too): training state saved beside a LoRA.
const NOT_ADAPTERS: [&str; 3] = ["scheduler", "optimizer", "checkpoint"];

fn locate(path: &Path) -> Result<Located> {
    if !probe_path(path, Kind::Dir, "LoRA adapter", Some("a LoRA file or folder")).unwrap_or(false) {
        check_path(path, Kind::File, "LoRA adapter", Some("a LoRA file or folder"))?;
        let config = path
            .parent()
            .map(|d| d.join("adapter_config.json"))
            .filter(|c| path.file_name().is_some_and(|n| n == "adapter_model.safetensors") && c.is_file());
        return Ok(Located { weights: path.to_path_buf(), config });
    }
    let config = path.join("adapter_config.json");
    let config = probe_path(&config, Kind::File, "peft adapter config", None)?.then_some(config);
    for name in FOLDER_FILES {
        probe_path(&path.join(name), Kind::File, "LoRA weights", None)?;
    }
    // Every adapter file of the folder: one is the adapter; two are two adapters, and which one
    // the reference tools load depends on the tool (peft: adapter_model.safetensors, diffusers:
    // pytorch_lora_weights.safetensors, else the first file the folder lists).
    let mut found: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| Error::io("list", path, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .filter(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            !NOT_ADAPTERS.iter().any(|n| name.contains(n))
        })
        .collect();
    found.sort();
    let names = |files: &[PathBuf]| {
        files.iter().filter_map(|p| p.file_name()).map(|n| n.to_string_lossy()).collect::<Vec<_>>().join(", ")
    };
    match found.len() {
        1 => {
            let weights = found.remove(0);
            check_path(&weights, Kind::File, "LoRA weights", None)?;
            Ok(Located { weights, config })
        }
        0 => {
            for name in ["adapter_model.bin", "pytorch_lora_weights.bin"] {
                let p = path.join(name);
                if std::fs::symlink_metadata(&p).is_ok() {
                    return Err(Error::unsupported(
                        p,
                        "only safetensors LoRA files are loaded (pickle files can run code); save it again with \
                         `save_pretrained(..., safe_serialization=True)` or convert it with safetensors.torch.save_file",
                    ));
                }
            }
            let inner = adapter_subfolders(path);
            if !inner.is_empty() {
                return Err(Error::Lora {
                    path: path.to_path_buf(),
                    message: format!(
                        "the folder holds no adapter of its own but {} in its subfolders ({}): give one of them",
                        if inner.len() == 1 { "one" } else { "several" },
                        inner.join(", ")
                    ),
                });
            }
            Err(Error::NotFound {
                what: "LoRA weights (adapter_model.safetensors or pytorch_lora_weights.safetensors)".into(),
                path: path.join(FOLDER_FILES[0]),
            })
        }
        n => Err(Error::Lora {
            path: path.to_path_buf(),
            message: format!(
                "the folder holds {n} adapters' files ({}): peft would load adapter_model.safetensors, diffusers \
                 pytorch_lora_weights.safetensors or the first file it lists; give the file of the adapter you \
                 mean (or move the others out)",
                names(&found)
            ),
        }),
    }
}

/// The subfolders of `dir` that hold an adapter (peft's `save_pretrained` of several adapters
/// writes each but the default one to `<dir>/<adapter name>/`), by name.
fn adapter_subfolders(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter(|e| {
            let p = e.path();
            p.join("adapter_config.json").is_file() || FOLDER_FILES.iter().any(|f| p.join(f).is_file())
        })
        .map(|e| format!("{}/", e.file_name().to_string_lossy()))
        .collect();
    out.sort();
    out
}

/// The part of a key that names what it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Down,
    Up,
    Alpha,
}

/// Splits a key into (module name as the file spells it, role).
fn split_key(key: &str) -> Option<(&str, Role)> {
    const SUFFIXES: [(&str, Role); 11] = [
        (".lora_down.weight", Role::Down),
        (".lora_up.weight", Role::Up),
        (".lora.down.weight", Role::Down),
        (".lora.up.weight", Role::Up),
        (".lora_A.weight", Role::Down),
        (".lora_B.weight", Role::Up),
        (".lora_linear_layer.down.weight", Role::Down),
        (".lora_linear_layer.up.weight", Role::Up),
        ("_lora.down.weight", Role::Down),
        ("_lora.up.weight", Role::Up),
        (".alpha", Role::Alpha),
    ];
    SUFFIXES.iter().find_map(|(s, role)| key.strip_suffix(s).filter(|m| !m.is_empty()).map(|m| (m, *role)))
}

/// Why a key is refused outright (an adapter kind or part deradiff does not apply), if it is.
fn refused(key: &str) -> Option<&'static str> {
    let has = |m: &str| key.contains(m);
    if has("lora_magnitude_vector") || has("dora_scale") {
        Some("is a DoRA magnitude: DoRA adapters are not supported (only plain LoRA, whose delta is scale · up · down)")
    } else if has("hada_w") || has("hada_t") {
        Some("is a LoHa (LyCORIS Hadamard) weight: LoHa adapters are not supported (only plain LoRA / LoCon)")
    } else if has("lokr_w") || has("lokr_t") {
        Some("is a LoKr (LyCORIS Kronecker) weight: LoKr adapters are not supported (only plain LoRA / LoCon)")
    } else if has(".lora_mid.") {
        Some(
            "is a LoCon CP-decomposition (`lora_mid`) weight: only LoCon without `use_tucker` / CP is supported \
             (down [r, in, kh, kw], up [out, r, 1, 1])",
        )
    } else if has("oft_") || key.ends_with(".diff") || key.ends_with(".diff_b") || has(".w_norm") || has(".b_norm") {
        Some("is a LyCORIS weight (OFT, full diff or norm) that is not a low-rank delta: not supported")
    } else if key.starts_with("lora_te")
        || key.starts_with("text_encoder.")
        || key.starts_with("text_encoder_2.")
        || key.starts_with("te.")
        || key.starts_with("te1.")
        || key.starts_with("te2.")
        || key.starts_with("base_model.model.text_model.")
    {
        Some(
            "adapts a text encoder: deradiff applies UNet adapters only (the prompt is encoded once for all \
             models); keep only the UNet's keys (`lora_unet_…`, `unet.…`) in a copy of the file",
        )
    } else {
        None
    }
}

/// The pieces of one adapted layer as read from the file.
#[derive(Default)]
struct Parts {
    down: Option<String>,
    up: Option<String>,
    alpha: Option<String>,
}

/// Reads a LoRA adapter for `unet` from a file or folder; see [`LoraAdapter::load`].
pub(crate) fn load(path: &Path, unet: &Unet) -> Result<LoraAdapter> {
    let source = path.to_path_buf();
    let lora_err = |message: String| Error::Lora { path: source.clone(), message };
    let located = locate(path)?;
    let weights = &located.weights;
    sniff_safetensors(weights)?;
    let (names, metadata) = header(weights).map_err(|e| Error::io("read", weights, e))?;

    // Refusals first: one DoRA or text-encoder key anywhere refuses the whole file.
    let mut sorted = names.clone();
    sorted.sort();
    for key in &sorted {
        if let Some(why) = refused(key) {
            return Err(lora_err(format!("`{key}` {why}")));
        }
    }

    // The peft settings, from the folder's adapter_config.json and / or the header's diffusers
    // metadata (diffusers ignores an empty entry); when both are there they must agree.
    let mut configs = Vec::new();
    if let Some(c) = &located.config {
        let text = read_text(c, "peft adapter config")?;
        let cfg_err = |m: String| Error::config(c, m);
        configs.push(PeftConfig::parse(&text, "", ConfigSource::File(c.clone()), &cfg_err)?);
    }
    if let Some(raw) = metadata.get("lora_adapter_metadata").filter(|m| !m.is_empty()) {
        let meta_err = |m: String| lora_err(format!("the header's `lora_adapter_metadata`: {m}"));
        configs.push(PeftConfig::parse(raw, "unet.", ConfigSource::Metadata, &meta_err)?);
    }
    if located.config.is_none() {
        if let Some(key) = sorted.iter().find(|k| k.starts_with("base_model.model.")) {
            return Err(lora_err(format!(
                "`{key}` is a peft key, but there is no adapter_config.json beside {}: peft reads the adapter's \
                 rank and alpha (its scale alpha / r) from that file and refuses an adapter without it; put the \
                 adapter_config.json it was saved with in the same folder",
                weights.display()
            )));
        }
    }

    // Group the keys by module.
    let mut groups: BTreeMap<&str, Parts> = BTreeMap::new();
    for key in &sorted {
        let Some((module, role)) = split_key(key) else {
            return Err(lora_err(format!(
                "`{key}` is not a LoRA key deradiff knows (expected `….lora_down.weight` / `.lora_up.weight` / \
                 `.alpha`, `….lora.down.weight` / `.lora.up.weight`, or `….lora_A.weight` / `.lora_B.weight`)"
            )));
        };
        let parts = groups.entry(module).or_default();
        let slot = match role {
            Role::Down => &mut parts.down,
            Role::Up => &mut parts.up,
            Role::Alpha => &mut parts.alpha,
        };
        if let Some(other) = slot.replace(key.clone()) {
            return Err(lora_err(format!("`{key}` and `{other}` both give the same part of one layer")));
        }
    }
    if groups.is_empty() {
        return Err(lora_err(format!("{} holds no tensors", weights.display())));
    }

    let layer_shapes = unet.layer_shapes();
    let underscored: HashMap<String, &String> = layer_shapes.keys().map(|p| (p.replace('.', "_"), p)).collect();
    let lpb = unet.arch().layers_per_block;
    // SAFETY: the file is mapped read-only; as everywhere with mmap, it must not be truncated by
    // another process while it is read (the tensors are copied out before this returns).
    let st = unsafe { MmapedSafetensors::new(weights) }.map_err(|e| match header_problem(weights) {
        Some(problem) => lora_err(format!("{} is not valid safetensors ({e}): {problem}", weights.display())),
        None => lora_err(format!("cannot map the file: {e}")),
    })?;
    let (dtype, device) = (unet.dtype(), unet.device());
    // Each tensor: a float, every value finite and finite in `target` (one pass over its bytes).
    let load_tensor = |key: &str, target: DType| -> Result<Tensor> {
        let view = st.get(key).map_err(|e| lora_err(format!("`{key}`: {e}")))?;
        match DType::try_from(view.dtype()) {
            Ok(d) if d.is_float() => {}
            _ => return Err(lora_err(format!("`{key}` is stored as {:?}; LoRA weights must be floats", view.dtype()))),
        }
        if let Some(bad) = check_values(view.dtype(), view.data(), target) {
            let elements = view.shape().iter().product::<usize>();
            return Err(Error::NonFiniteTensor {
                file: weights.clone(),
                tensor: key.to_string(),
                problem: bad.describe(elements),
            });
        }
        Ok(st.load(key, device)?)
    };

    let mut layers = BTreeMap::new();
    let mut formats = Vec::new();
    for (module, parts) in &groups {
        let (Some(down_key), Some(up_key)) = (&parts.down, &parts.up) else {
            let have = parts.down.as_ref().or(parts.up.as_ref()).or(parts.alpha.as_ref()).cloned().unwrap_or_default();
            let missing = if parts.down.is_none() { "down (lora_A / lora_down)" } else { "up (lora_B / lora_up)" };
            return Err(lora_err(format!("`{have}` has no matching {missing} weight for `{module}`")));
        };
        let (path, format) = module_path(module, &underscored, layer_shapes, lpb, located.config.is_some())
            .ok_or_else(|| {
                lora_err(format!(
                    "`{down_key}` adapts `{module}`, which names no linear or convolution layer of this UNet \
                     ({} such layers; e.g. `{}`)",
                    layer_shapes.len(),
                    layer_shapes.keys().find(|k| k.contains("to_q")).or(layer_shapes.keys().next()).map_or("", |k| k)
                ))
            })?;
        formats.push(format);
        let mut down = load_tensor(down_key, dtype)?;
        let mut up = load_tensor(up_key, dtype)?;
        // 1×1 convolutions and linear layers are the same map: fit the adapter to the layer's
        // weight (SD 1.x's proj_in / proj_out are 1×1 convolutions, SD 2.x's are linear).
        if let Some(weight) = layer_shapes.get(&path) {
            let r = down.dims().first().copied().unwrap_or(0);
            if weight.len() == 4 && weight[2..] == [1, 1] && down.rank() == 2 && up.rank() == 2 {
                down = down.reshape((r, weight[1], 1, 1)).map_err(|_| shape_err(&lora_err, down_key, &down, weight))?;
                up = up.reshape((weight[0], r, 1, 1)).map_err(|_| shape_err(&lora_err, up_key, &up, weight))?;
            } else if weight.len() == 2 && down.rank() == 4 && down.dims()[2..] == [1, 1] && up.rank() == 4 {
                down = down.reshape((r, weight[1])).map_err(|_| shape_err(&lora_err, down_key, &down, weight))?;
                up = up.reshape((weight[0], r)).map_err(|_| shape_err(&lora_err, up_key, &up, weight))?;
            }
        }
        let rank = down.dims().first().copied().unwrap_or(0);
        if rank == 0 || up.rank() < 2 || up.dims()[1] != rank {
            return Err(lora_err(format!(
                "`{down_key}` {:?} and `{up_key}` {:?}: the rank (rows of down, columns of up) must agree and be > 0",
                down.dims(),
                up.dims()
            )));
        }
        let scale = match (&parts.alpha, configs.first()) {
            (Some(alpha_key), Some(config)) => {
                return Err(lora_err(format!(
                    "`{alpha_key}` gives the layer's alpha, and so does {}: diffusers refuses a file with both, \
                     peft ignores the tensor; keep one of them",
                    config.source()
                )))
            }
            (Some(alpha_key), None) => {
                let t = load_tensor(alpha_key, DType::F64)?.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
                match t.as_slice() {
                    [a] if a.is_finite() => a / rank as f64,
                    _ => {
                        return Err(lora_err(format!(
                            "`{alpha_key}` must be one finite number (the layer's alpha), got {} values",
                            t.len()
                        )))
                    }
                }
            }
            (None, Some(_)) => peft_scale(&configs, &path, rank, down_key, &source)?,
            (None, None) => 1.0,
        };
        if !scale.is_finite() {
            return Err(lora_err(format!("`{down_key}`: the scale alpha / r is not finite")));
        }
        let layer = LoraLayer {
            down: down.to_dtype(dtype)?,
            up: up.to_dtype(dtype)?,
            alpha: Some(scale * rank as f64),
            origin: module.to_string(),
        };
        if let Some(previous) = layers.insert(path.clone(), layer) {
            return Err(lora_err(format!("`{module}` and `{}` both adapt the layer `{path}`", previous.origin)));
        }
    }
    formats.sort_by_key(|f| *f as u8);
    formats.dedup();
    // SDXL kohya files may name a few layers (conv_in, …) without SGM blocks.
    if formats == [LoraFormat::Kohya, LoraFormat::KohyaSgm] {
        formats = vec![LoraFormat::KohyaSgm];
    }
    let format = match formats.as_slice() {
        [one] => *one,
        _ => {
            return Err(lora_err(format!(
                "the file mixes layouts ({}); an adapter is written in one",
                formats.iter().map(|f| f.to_string()).collect::<Vec<_>>().join(", ")
            )))
        }
    };
    let adapter = LoraAdapter::from_layers(layers, format, path);
    adapter.check(layer_shapes)?;
    Ok(adapter)
}

/// The scale of the layer at `path` from the peft settings (each must declare the tensors' rank
/// for it, and two must agree on its scale).
fn peft_scale(configs: &[PeftConfig], path: &str, rank: usize, key: &str, source: &Path) -> Result<f64> {
    let mut scale: Option<(f64, &PeftConfig)> = None;
    for config in configs {
        config.check_rank(path, rank, key, source)?;
        let s = config.scale(path);
        match scale {
            Some((t, other)) if t != s => {
                return Err(Error::Lora {
                    path: source.to_path_buf(),
                    message: format!(
                        "{} gives `{path}` the scale {s} but {} gives it {t}: peft reads the one, diffusers the \
                         other; make them agree",
                        config.source(),
                        other.source()
                    ),
                })
            }
            _ => scale = Some((s, config)),
        }
    }
    Ok(scale.map_or(1.0, |(s, _)| s))
}

fn shape_err(lora_err: &dyn Fn(String) -> Error, key: &str, t: &Tensor, weight: &[usize]) -> Error {
    lora_err(format!("`{key}` of shape {:?} does not fit a layer of weight shape {weight:?}", t.dims()))
}

/// The diffusers module path (and the layout) of a module name as a file spells it; `None` when
/// it names no layer of the UNet.
fn module_path(
    module: &str,
    underscored: &HashMap<String, &String>,
    layers: &BTreeMap<String, Vec<usize>>,
    layers_per_block: usize,
    peft_folder: bool,
) -> Option<(String, LoraFormat)> {
    if let Some(rest) = module.strip_prefix("lora_unet_") {
        if let Some(mapped) = sgm_to_diffusers(rest, layers_per_block) {
            return underscored.get(&mapped).map(|p| ((*p).clone(), LoraFormat::KohyaSgm));
        }
        return underscored.get(rest).map(|p| ((*p).clone(), LoraFormat::Kohya));
    }
    let (rest, peft) = match module.strip_prefix("base_model.model.") {
        Some(r) => (r.strip_prefix("unet.").unwrap_or(r), true),
        None => (module.strip_prefix("unet.").unwrap_or(module), peft_folder),
    };
    if let Some((block, proj)) = rest.rsplit_once(".processor.") {
        let proj = match proj {
            "to_q" | "to_k" | "to_v" => proj,
            "to_out" => "to_out.0",
            _ => return None,
        };
        let path = format!("{block}.{proj}");
        return layers.contains_key(&path).then_some((path, LoraFormat::AttnProcessors));
    }
    let format = if peft { LoraFormat::Peft } else { LoraFormat::Diffusers };
    layers.contains_key(rest).then(|| (rest.to_string(), format))
}

/// A kohya SDXL name in the original SGM block layout (after `lora_unet_`) as diffusers'
/// underscored module path, for a UNet with `lpb` resnets per down block (diffusers'
/// `_maybe_map_sgm_blocks_to_diffusers` and `_convert_unet_lora_key`, plus `conv_in`,
/// `conv_out`, the time and added embeddings, and up blocks without attention, which those
/// leave out). `None` when the name is not in SGM form.
fn sgm_to_diffusers(name: &str, lpb: usize) -> Option<String> {
    let fixed = [
        ("time_embed_0", "time_embedding_linear_1"),
        ("time_embed_2", "time_embedding_linear_2"),
        ("label_emb_0_0", "add_embedding_linear_1"),
        ("label_emb_0_2", "add_embedding_linear_2"),
        ("out_2", "conv_out"),
        ("input_blocks_0_0", "conv_in"),
    ];
    if let Some((_, to)) = fixed.iter().find(|(from, _)| *from == name) {
        return Some(to.to_string());
    }
    // "<N>_<M>_<tail>" → (N, M, tail)
    fn indices(s: &str) -> Option<(usize, usize, &str)> {
        let (n, s) = s.split_once('_')?;
        let (m, tail) = s.split_once('_').unwrap_or((s, ""));
        Some((n.parse().ok()?, m.parse().ok()?, tail))
    }
    fn resnet(tail: &str) -> String {
        for (from, to) in [
            ("in_layers_0", "norm1"),
            ("in_layers_2", "conv1"),
            ("emb_layers_1", "time_emb_proj"),
            ("out_layers_0", "norm2"),
            ("out_layers_3", "conv2"),
            ("skip_connection", "conv_shortcut"),
        ] {
            if tail == from {
                return to.to_string();
            }
        }
        tail.to_string()
    }
    let per = lpb.checked_add(1)?;
    if let Some(rest) = name.strip_prefix("input_blocks_") {
        let (n, m, tail) = indices(rest)?;
        let block = n.checked_sub(1)? / per;
        let layer = (n - 1) % per;
        return Some(match (m, tail) {
            (0, "op") => format!("down_blocks_{block}_downsamplers_0_conv"),
            (0, _) => format!("down_blocks_{block}_resnets_{layer}_{}", resnet(tail)),
            (1, _) => format!("down_blocks_{block}_attentions_{layer}_{tail}"),
            _ => return None,
        });
    }
    if let Some(rest) = name.strip_prefix("middle_block_") {
        let (m, tail) = rest.split_once('_')?;
        return Some(match m {
            "0" => format!("mid_block_resnets_0_{}", resnet(tail)),
            "1" => format!("mid_block_attentions_0_{tail}"),
            "2" => format!("mid_block_resnets_1_{}", resnet(tail)),
            _ => return None,
        });
    }
    if let Some(rest) = name.strip_prefix("output_blocks_") {
        let (n, m, tail) = indices(rest)?;
        let (block, layer) = (n / per, n % per);
        return Some(match (m, tail) {
            (0, _) => format!("up_blocks_{block}_resnets_{layer}_{}", resnet(tail)),
            (_, "conv") => format!("up_blocks_{block}_upsamplers_0_conv"),
            (1, _) => format!("up_blocks_{block}_attentions_{layer}_{tail}"),
            _ => return None,
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sgm_names_map_to_diffusers_paths() {
        // SDXL: two resnets per down block.
        let cases = [
            (
                "input_blocks_4_1_transformer_blocks_0_attn1_to_q",
                "down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q",
            ),
            ("input_blocks_5_0_in_layers_2", "down_blocks_1_resnets_1_conv1"),
            ("input_blocks_3_0_op", "down_blocks_0_downsamplers_0_conv"),
            ("input_blocks_4_0_skip_connection", "down_blocks_1_resnets_0_conv_shortcut"),
            ("middle_block_1_proj_in", "mid_block_attentions_0_proj_in"),
            ("middle_block_2_emb_layers_1", "mid_block_resnets_1_time_emb_proj"),
            ("output_blocks_2_2_conv", "up_blocks_0_upsamplers_0_conv"),
            ("output_blocks_2_1_conv", "up_blocks_0_upsamplers_0_conv"),
            (
                "output_blocks_5_1_transformer_blocks_1_ff_net_2",
                "up_blocks_1_attentions_2_transformer_blocks_1_ff_net_2",
            ),
            ("output_blocks_3_0_out_layers_3", "up_blocks_1_resnets_0_conv2"),
            ("time_embed_2", "time_embedding_linear_2"),
            ("label_emb_0_0", "add_embedding_linear_1"),
        ];
        for (sgm, diffusers) in cases {
            assert_eq!(sgm_to_diffusers(sgm, 2).as_deref(), Some(diffusers), "{sgm}");
        }
        assert_eq!(sgm_to_diffusers("down_blocks_0_attentions_0_proj_in", 2), None);
        assert_eq!(sgm_to_diffusers("input_blocks_x_1_proj_in", 2), None);
        assert_eq!(sgm_to_diffusers("middle_block_7_proj_in", 2), None);
    }

    #[test]
    fn keys_split_into_module_and_role() {
        assert_eq!(split_key("lora_unet_conv_in.lora_down.weight"), Some(("lora_unet_conv_in", Role::Down)));
        assert_eq!(split_key("unet.a.to_q.lora.up.weight"), Some(("unet.a.to_q", Role::Up)));
        assert_eq!(split_key("a.processor.to_out_lora.down.weight"), Some(("a.processor.to_out", Role::Down)));
        assert_eq!(split_key("base_model.model.a.lora_B.weight"), Some(("base_model.model.a", Role::Up)));
        assert_eq!(split_key("x.alpha"), Some(("x", Role::Alpha)));
        assert_eq!(split_key("x.weight"), None);
        assert_eq!(split_key(".alpha"), None);
    }
}
