//! Hugging Face repo ids resolved in a cache that huggingface_hub laid out
//! (`scripts/gen_hf_cache_fixture.py`; rebuilt here from its manifest), against what
//! huggingface_hub itself answers on that cache: `snapshot_download(local_files_only=True)`,
//! `try_to_load_from_cache`, `scan_cache_dir` and `constants.HF_HUB_CACHE` under several
//! environments. Then the models found that way load: fp16-variant file names, sharded weights.
#![cfg(unix)]

#[path = "common/hf_cache.rs"]
mod hf_cache;

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use deradiff_sd::{resolve_model_path_with, Error, HubCache, LoadOptions, RepoRef, StableDiffusion, Unet};
use serde_json::Value;

/// The cache, built once per test in its own folder.
fn cache(name: &str) -> (HubCache, Value) {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("hub-{name}-{}", std::process::id()));
    let manifest = hf_cache::build(&hf_cache::workspace_root(env!("CARGO_MANIFEST_DIR")), &dir);
    (HubCache::new(dir), manifest)
}

fn repo(repo_id: &str, revision: Option<&str>, path: Option<&str>) -> RepoRef {
    RepoRef { repo_id: repo_id.into(), revision: revision.map(str::to_string), path: path.map(str::to_string) }
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

#[test]
fn snapshots_resolve_as_huggingface_hub_resolves_them() {
    let (hub, manifest) = cache("snapshots");
    let commit = |label: &str| manifest["commits"][label].as_str().unwrap().to_string();
    let mut checked = 0;
    for case in manifest["expected"]["snapshot_download"].as_array().unwrap() {
        let (id, revision) = (case["repo_id"].as_str().unwrap(), case["revision"].as_str());
        let got = hub.resolve(&repo(id, revision, None));
        let what = format!("{id}@{revision:?}");
        match (case["found"].as_str(), got) {
            // huggingface_hub returns the folder with a broken link in it; deradiff names the link.
            (Some(_), Err(Error::BrokenCacheLink { file, blob, download, .. })) if id == "deradiff-test/broken" => {
                let snapshot = hub.repo_dir(id).join("snapshots").join(commit("broken main"));
                assert_eq!(file, snapshot.join("diffusion_pytorch_model.safetensors"));
                assert_eq!(blob.parent().unwrap(), hub.repo_dir(id).join("blobs"));
                assert_eq!(download, "huggingface-cli download deradiff-test/broken --force-download");
            }
            (Some(found), Ok(path)) => assert_eq!(path, hub.dir().join(found), "{what}"),
            (None, Err(Error::NotCached { looked_in, download, not_a_path, .. })) => {
                assert_eq!(id, "deradiff-test/not-cached", "{what}");
                assert_eq!(looked_in, hub.dir().join("models--deradiff-test--not-cached"));
                assert_eq!(download, "huggingface-cli download deradiff-test/not-cached");
                assert!(!not_a_path);
            }
            (None, Err(Error::RevisionNotCached { looked_in, cached, download, .. })) => {
                assert_eq!(looked_in, hub.repo_dir(id).join("refs").join(revision.unwrap_or("main")), "{what}");
                if id == "deradiff-test/pinned" {
                    assert_eq!(cached, format!("commit {}", commit("pinned")));
                } else {
                    assert_eq!(revision, Some("no-such-branch"));
                    assert!(cached.starts_with("fp16, main, refs/pr/1, v1.0, commit "), "{cached}");
                    assert_eq!(download, "huggingface-cli download deradiff-test/tiny-sd --revision no-such-branch");
                }
            }
            (None, Err(Error::NotInSnapshot { file, note, .. })) => {
                let c = if id == "deradiff-test/interrupted" {
                    commit("interrupted main")
                } else {
                    revision.unwrap().into()
                };
                assert_eq!(file, hub.repo_dir(id).join("snapshots").join(&c), "{what}");
                assert!(note.contains(&c), "{note}");
            }
            (expected, got) => panic!("{what}: huggingface_hub found {expected:?}, deradiff {got:?}"),
        }
        checked += 1;
    }
    assert_eq!(checked, 16);
    // Every ref scan_cache_dir lists resolves to its commit's snapshot.
    for (id, revisions) in manifest["scan_cache_dir"]["repos"].as_object().unwrap() {
        for (commit, refs) in revisions.as_object().unwrap() {
            let snapshot = hub.repo_dir(id).join("snapshots").join(commit);
            for r in refs.as_array().unwrap() {
                let r = r.as_str().unwrap();
                assert_eq!(hub.resolve(&repo(id, Some(r), None)).unwrap(), snapshot, "{id}@{r}");
            }
            assert_eq!(hub.resolve(&repo(id, Some(commit), None)).unwrap(), snapshot, "{id}@{commit}");
        }
    }
    // scan_cache_dir's warnings are the two problems deradiff reports: the missing blob (the very
    // path it names) and the ref to a commit without a snapshot.
    let warnings: Vec<String> = manifest["scan_cache_dir"]["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap().replace("<hub>", hub.dir().to_str().unwrap()))
        .collect();
    assert_eq!(warnings.len(), 2);
    match hub.resolve(&repo("deradiff-test/broken", None, None)) {
        Err(Error::BrokenCacheLink { blob, .. }) => {
            assert_eq!(warnings[0], format!("Blob missing (broken symlink): {}", blob.display()))
        }
        other => panic!("{other:?}"),
    }
    let interrupted = commit("interrupted main");
    assert!(warnings[1].contains(&format!("{{'{interrupted}': {{'main'}}}}")), "{}", warnings[1]);
}

#[test]
fn files_resolve_as_try_to_load_from_cache_finds_them() {
    let (hub, manifest) = cache("files");
    for case in manifest["expected"]["try_to_load_from_cache"].as_array().unwrap() {
        let (id, revision) = (case["repo_id"].as_str().unwrap(), case["revision"].as_str());
        let file = case["filename"].as_str().unwrap();
        let got = hub.resolve(&repo(id, revision, Some(file)));
        let what = format!("{id}@{revision:?}/{file}");
        match (case["found"].as_str(), got) {
            (Some("no_exist"), Err(Error::NotInSnapshot { note, .. })) => {
                assert!(note.contains("recorded that commit"), "{what}: {note}")
            }
            (Some(found), Ok(path)) => assert_eq!(path, hub.dir().join(found), "{what}"),
            // A folder: huggingface_hub's lookup is for files, deradiff's also takes folders.
            (None, Ok(path)) if file == "unet" => assert!(path.join("config.json").is_file()),
            (None, Err(Error::BrokenCacheLink { file: link, .. })) => {
                assert_eq!(link.file_name().unwrap(), "diffusion_pytorch_model.safetensors", "{what}")
            }
            (None, Err(Error::NotInSnapshot { file: missing, note, download, .. })) => {
                assert!(missing.ends_with(file), "{what}: {}", missing.display());
                assert!(note.starts_with("not downloaded"), "{note}");
                let rev = revision.map(|r| format!(" --revision {r}")).unwrap_or_default();
                assert_eq!(download, format!("huggingface-cli download {id} {file}{rev}"));
            }
            (None, Err(Error::NotCached { .. })) => assert_eq!(id, "deradiff-test/not-cached"),
            (expected, got) => panic!("{what}: huggingface_hub found {expected:?}, deradiff {got:?}"),
        }
    }
}

#[test]
fn the_cache_folder_is_huggingface_hubs_in_every_environment() {
    let (_, manifest) = cache("env");
    for case in manifest["hub_cache_env"].as_array().unwrap() {
        let mut env: HashMap<String, OsString> =
            case["env"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.as_str().unwrap().into())).collect();
        env.insert("HOME".into(), "/home/u".into());
        let hub = HubCache::from_vars(|name| env.get(name).cloned()).unwrap();
        assert_eq!(hub.dir(), Path::new(case["hub_cache"].as_str().unwrap()), "{}", case["env"]);
    }
    // Without HOME, where it is needed: an error that says what to set.
    let err = HubCache::from_vars(|_| None).unwrap_err();
    assert!(err.to_string().contains("set HF_HUB_CACHE"), "{err}");
    assert_eq!(HubCache::from_vars(|n| (n == "HF_HUB_CACHE").then(|| "/c".into())).unwrap().dir(), Path::new("/c"));
}

#[test]
fn repo_ids_parse_as_the_hub_spells_them() {
    let ok = |s: &str| RepoRef::parse(s).unwrap().unwrap_or_else(|| panic!("{s} is a repo id"));
    assert_eq!(
        ok("stabilityai/stable-diffusion-xl-base-1.0"),
        repo("stabilityai/stable-diffusion-xl-base-1.0", None, None)
    );
    assert_eq!(ok("org/name@v1.0"), repo("org/name", Some("v1.0"), None));
    assert_eq!(ok("org/name@refs%2Fpr%2F1"), repo("org/name", Some("refs/pr/1"), None));
    assert_eq!(ok("org/name@fp16/unet/config.json"), repo("org/name", Some("fp16"), Some("unet/config.json")));
    assert_eq!(ok("gpt2"), repo("gpt2", None, None));
    assert_eq!(ok("org/name/"), repo("org/name", None, None));
    assert_eq!(ok("org/name@refs%2Fpr%2F1/unet").to_string(), "org/name@refs%2Fpr%2F1/unet");
    // Not repo ids: paths, and what the Hub refuses (huggingface_hub's validate_repo_id).
    for s in [
        "/abs/path",
        "./rel",
        "../up",
        "~/models",
        "a//b",
        "-org/name",
        "org/name.",
        "org--x/y",
        "a..b/c",
        "org/name.git",
        "org/na me",
        "",
        "org/name/../x",
        "org/name//x",
        "C:\\models",
    ] {
        assert_eq!(RepoRef::parse(s).unwrap(), None, "{s}");
    }
    for s in ["org/name@", "org/name@..", "org/name@a%2F..%2Fb", "org/name@%zz"] {
        assert!(matches!(RepoRef::parse(s), Err(Error::InvalidArgument(_))), "{s}");
    }
    // A reference built by hand is checked before the cache is read: nothing outside it.
    let hub = HubCache::new("/nonexistent-cache");
    for bad in [repo("a/../b", None, None), repo("a/b", Some("../../etc"), None), repo("a/b", None, Some("../x"))] {
        assert!(matches!(hub.resolve(&bad), Err(Error::InvalidArgument(_))), "{bad:?}");
    }
    assert_eq!(
        repo("a/b", Some("refs/pr/1"), Some("unet")).download_command(),
        "huggingface-cli download a/b unet --revision refs/pr/1"
    );
}

#[test]
fn a_path_on_disk_wins_and_a_repo_id_not_cached_says_how_to_fetch_it() {
    let (hub, _) = cache("paths");
    let never = || -> deradiff_sd::Result<HubCache> { panic!("the cache is not looked at for a path") };
    // Relative to the test's working folder (the crate), these exist: shaped like repo ids, they are paths.
    for p in ["tests/fixtures", "tests/fixtures/tiny-sd", "tests"] {
        assert_eq!(resolve_model_path_with(p, never).unwrap(), PathBuf::from(p));
    }
    // Not repo ids and not there: left for the loader to report.
    assert_eq!(resolve_model_path_with("/no/such/model", never).unwrap(), PathBuf::from("/no/such/model"));
    let got = resolve_model_path_with("deradiff-test/tiny-sd@v1.0", || Ok(hub.clone())).unwrap();
    assert_eq!(got.parent().unwrap(), hub.repo_dir("deradiff-test/tiny-sd").join("snapshots"));
    let err = resolve_model_path_with("deradiff-test/not-cached@v2", || Ok(hub.clone())).unwrap_err();
    let folder = hub.dir().join("models--deradiff-test--not-cached");
    assert_eq!(
        err.to_string(),
        format!(
            "deradiff-test/not-cached@v2 is not in the Hugging Face cache, nor a file or folder: {} does not exist; \
             fetch it with `huggingface-cli download deradiff-test/not-cached --revision v2` (`hf download \
             deradiff-test/not-cached --revision v2` with huggingface_hub 1.x), or give the model's folder",
            folder.display()
        )
    );
    let err = resolve_model_path_with("deradiff-test/broken", || Ok(hub.clone())).unwrap_err().to_string();
    assert!(err.starts_with("broken link in the Hugging Face cache: "), "{err}");
    assert!(err.contains("diffusion_pytorch_model.safetensors points to "), "{err}");
}

#[test]
fn variants_and_shards_found_through_the_cache_load() {
    let (hub, _) = cache("load");
    let cpu = Device::Cpu;
    // diffusers' fp16-variant names: a pipeline whose weights are all `*.fp16.safetensors`.
    let fp16 = hub.resolve(&repo("deradiff-test/tiny-sd", Some("fp16"), None)).unwrap();
    assert!(fp16.join("unet/diffusion_pytorch_model.fp16.safetensors").is_file());
    assert!(!fp16.join("unet/diffusion_pytorch_model.safetensors").exists());
    let aligned = hub.resolve(&repo("deradiff-test/tiny-aligned-unet", None, None)).unwrap();
    StableDiffusion::load(&fp16, &[&aligned], &LoadOptions::default()).unwrap();
    // Sharded (`*.safetensors.index.json`, diffusers' save_pretrained(max_shard_size=…)), plain and
    // fp16 variant: the UNet's output equals the unsharded fixture's (which `unet_groups` checks
    // against diffusers).
    let refs =
        candle_core::safetensors::load(fixtures().join("tiny-unet-groups8-reference.safetensors"), &cpu).unwrap();
    let t = f64::from(refs["t"].to_vec1::<f32>().unwrap()[0]);
    let whole = Unet::load(fixtures().join("tiny-unet-groups8"), None, DType::F32, &cpu).unwrap();
    let expected = whole.forward(&refs["x"], t, &refs["context"]).unwrap();
    for revision in [None, Some("fp16")] {
        let dir = hub.resolve(&repo("deradiff-test/tiny-unet-sharded", revision, None)).unwrap();
        let unet = Unet::load(&dir, None, DType::F32, &cpu).unwrap();
        let out = unet.forward(&refs["x"], t, &refs["context"]).unwrap();
        let diff = (out - &expected).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0, "{revision:?}");
    }
}
