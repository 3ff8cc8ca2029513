//! Models named by their Hugging Face repo id (`stabilityai/stable-diffusion-xl-base-1.0`),
//! found **offline** in the local Hugging Face cache the way `huggingface_hub` finds them: the
//! cache folder from `HF_HUB_CACHE`, else `HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`,
//! else `~/.cache/huggingface/hub` ([`HubCache::from_env`]); in it `models--{org}--{name}/`, a
//! branch or tag resolved through `refs/{name}` (`main` by default) to a commit, a commit hash
//! taken as it is, and the files under `snapshots/{commit}/` (links into `blobs/`). Nothing is
//! ever downloaded: a model that is not cached is an [`Error::NotCached`] naming the folder looked
//! in and the `huggingface-cli download` command that fetches it.
//!
//! The `hf-hub` crate's `Cache` was considered: its 1.x releases always build an HTTP client
//! (reqwest, tokio, hf-xet), and 0.4's offline `Cache` resolves single files only (not snapshot
//! folders), ignores `HF_HUB_CACHE` and `XDG_CACHE_HOME`, reads a commit hash as a ref name,
//! cannot tell a broken link from a missing file, and panics without a home folder. So the
//! layout is read here, from huggingface_hub's own functions (`constants.py`,
//! `try_to_load_from_cache`, `snapshot_download(local_files_only=True)`), and tested on a cache
//! laid out by huggingface_hub (`scripts/gen_hf_cache_fixture.py`).

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};

/// The longest part (namespace or name) of a repo id, as huggingface_hub validates it.
const MAX_REPO_PART: usize = 96;

/// At most this many entries of a snapshot are checked for broken links (a real pipeline has a
/// few dozen).
const MAX_SNAPSHOT_ENTRIES: usize = 100_000;

/// A ref file larger than this is not a ref (one holds a 40-character commit hash).
const MAX_REF_BYTES: u64 = 1024;

/// A model in the Hugging Face cache, as given on a command line:
/// `namespace/name[@revision][/path/in/repo]` or `name[@revision]`.
///
/// The revision is a branch or tag (resolved through the cache's `refs/`) or a 40-character
/// commit hash; a revision holding `/` (`refs/pr/1`) is written with `%2F`
/// (`org/name@refs%2Fpr%2F1`), as huggingface_hub's `hf://` paths write it. The path names a
/// file or folder inside the repo (`org/name/unet`, `org/name/sd_xl_base_1.0.safetensors`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoRef {
    /// `namespace/name` or `name`.
    pub repo_id: String,
    /// The branch, tag or commit hash; `None`: `main`.
    pub revision: Option<String>,
    /// A file or folder inside the repo (`/`-separated); `None`: the whole snapshot.
    pub path: Option<String>,
}

/// Whether `part` is a valid namespace or repo name: 1 to 96 of `A-Z a-z 0-9 _ - .`, neither
/// starting nor ending with `-` or `.`, without `--` or `..` (huggingface_hub's
/// `validate_repo_id`).
fn valid_part(part: &str) -> bool {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.';
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    (1..=MAX_REPO_PART).contains(&part.len())
        && part.chars().all(ok_char)
        && edge(part.chars().next())
        && edge(part.chars().last())
        && !part.contains("--")
        && !part.contains("..")
}

/// `%XX` escapes decoded (huggingface_hub's `hf://` paths quote a revision's `/` as `%2F`);
/// `None` when an escape is malformed or the result is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Whether `rel` is a relative `/`-separated path of plain components (no empty, `.` or `..`
/// component, no backslash or NUL): what may be joined under a cache folder.
fn plain_relative(rel: &str) -> bool {
    !rel.is_empty() && !rel.contains(['\\', '\0']) && rel.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

/// Whether `revision` is a commit hash: 40 lowercase hex digits (huggingface_hub's
/// `REGEX_COMMIT_HASH`).
fn is_commit_hash(revision: &str) -> bool {
    revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl RepoRef {
    /// Parses `spec` as a repo id: `Ok(None)` when it is not shaped like one (an absolute path,
    /// `./x`, characters a repo id cannot hold, …); an [`Error::InvalidArgument`] when it is one
    /// with an unusable revision (empty, or with `.` / `..` components).
    pub fn parse(spec: &str) -> Result<Option<RepoRef>> {
        let trimmed = spec.strip_suffix('/').unwrap_or(spec);
        let mut parts = trimmed.splitn(3, '/');
        let first = parts.next().unwrap_or_default();
        let (namespace, name_rev, path) = match (parts.next(), parts.next()) {
            (None, _) => (None, first, None),
            (Some(second), path) => (Some(first), second, path),
        };
        let (name, revision) = match name_rev.split_once('@') {
            Some((name, rev)) => (name, Some(rev)),
            None => (name_rev, None),
        };
        if !namespace.is_none_or(valid_part) || !valid_part(name) || name.ends_with(".git") {
            return Ok(None);
        }
        if path.is_some_and(|p| !plain_relative(p)) {
            return Ok(None);
        }
        let revision = match revision {
            None => None,
            Some(raw) => match percent_decode(raw) {
                Some(rev) if plain_relative(&rev) => Some(rev),
                _ => {
                    return Err(Error::InvalidArgument(format!(
                        "{spec}: `{raw}` is not a usable revision of a Hugging Face repo (a branch or tag \
                         name, `/` written as %2F, or a 40-character commit hash)"
                    )))
                }
            },
        };
        let repo_id = match namespace {
            Some(ns) => format!("{ns}/{name}"),
            None => name.to_string(),
        };
        Ok(Some(RepoRef { repo_id, revision, path: path.map(str::to_string) }))
    }

    /// The command that puts this into the cache:
    /// `huggingface-cli download REPO [PATH] [--revision R]`.
    pub fn download_command(&self) -> String {
        let mut command = format!("huggingface-cli download {}", self.repo_id);
        if let Some(path) = &self.path {
            command.push(' ');
            command.push_str(path);
        }
        if let Some(revision) = &self.revision {
            command.push_str(" --revision ");
            command.push_str(revision);
        }
        command
    }

    /// Errors ([`Error::InvalidArgument`]) unless the fields are what [`RepoRef::parse`] gives: a
    /// valid repo id, a revision and a path of plain `/`-separated components (nothing that
    /// would leave the cache folder).
    pub fn check(&self) -> Result<()> {
        let (namespace, name) = match self.repo_id.split_once('/') {
            Some((ns, name)) => (Some(ns), name),
            None => (None, self.repo_id.as_str()),
        };
        let id_ok = namespace.is_none_or(valid_part) && valid_part(name) && !name.ends_with(".git");
        let revision_ok = self.revision.as_deref().is_none_or(plain_relative);
        let path_ok = self.path.as_deref().is_none_or(plain_relative);
        if id_ok && revision_ok && path_ok {
            return Ok(());
        }
        Err(Error::InvalidArgument(format!(
            "{self:?} is not a Hugging Face repo reference: the repo id `namespace/name` (letters, digits, `-`, `_`, \
             `.`), a revision and a path of plain `/`-separated names"
        )))
    }

    /// The revision looked up: the one given, else `main`.
    pub fn revision_or_main(&self) -> &str {
        self.revision.as_deref().unwrap_or("main")
    }
}

impl fmt::Display for RepoRef {
    /// `namespace/name[@revision][/path]`, the revision's `/` as `%2F`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.repo_id)?;
        if let Some(revision) = &self.revision {
            write!(f, "@{}", revision.replace('%', "%25").replace('/', "%2F"))?;
        }
        if let Some(path) = &self.path {
            write!(f, "/{path}")?;
        }
        Ok(())
    }
}

/// The local Hugging Face hub cache: a folder of `models--{org}--{name}/` repos.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubCache {
    dir: PathBuf,
}

/// Python's `os.path.expanduser` for `~` and `~/…` (from `HOME`); `~user` is left as it is.
/// `None` when `HOME` is needed and not set.
fn expand_user(path: &OsStr, home: Option<&OsStr>) -> Option<OsString> {
    let Some(text) = path.to_str() else { return Some(path.to_os_string()) };
    let rest = match text.strip_prefix('~') {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
        _ => return Some(path.to_os_string()),
    };
    let home = home?.to_str().map(|h| h.trim_end_matches('/').to_string())?;
    let joined = format!("{home}{rest}");
    Some(OsString::from(if joined.is_empty() { "/".to_string() } else { joined }))
}

/// Python's `os.path.expandvars`: `$NAME` (ASCII letters, digits, `_`) and `${NAME}` replaced
/// by the variable's value where it is set (and is UTF-8), left as they are otherwise.
fn expand_vars(path: &OsStr, var: &dyn Fn(&str) -> Option<OsString>) -> OsString {
    let Some(text) = path.to_str() else { return path.to_os_string() };
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, len) = if let Some(braced) = after.strip_prefix('{') {
            match braced.find('}') {
                Some(end) => (&braced[..end], end + 2),
                None => ("", 0),
            }
        } else {
            let end = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
            (&after[..end], end)
        };
        match var(name).filter(|_| len > 0).and_then(|v| v.into_string().ok()) {
            Some(value) => out.push_str(&value),
            None => out.push_str(&rest[at..at + 1 + len]),
        }
        rest = &after[len..];
    }
    out.push_str(rest);
    OsString::from(out)
}

impl HubCache {
    /// The cache at `dir` (a folder of `models--{org}--{name}/` repos).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        HubCache { dir: dir.into() }
    }

    /// The cache huggingface_hub uses in this process's environment: see [`HubCache::from_vars`].
    pub fn from_env() -> Result<Self> {
        Self::from_vars(|name| std::env::var_os(name))
    }

    /// The cache huggingface_hub uses (its `constants.HF_HUB_CACHE`) given the environment
    /// variables `var`: `HF_HUB_CACHE`, else the legacy `HUGGINGFACE_HUB_CACHE`, else
    /// `HF_HOME/hub`, where `HF_HOME` defaults to `$XDG_CACHE_HOME/huggingface`, and
    /// `XDG_CACHE_HOME` to `~/.cache`; `~` and `$VAR` expanded as huggingface_hub expands them.
    /// An [`Error::InvalidArgument`] when the home folder is needed and `HOME` is not set.
    pub fn from_vars(var: impl Fn(&str) -> Option<OsString>) -> Result<Self> {
        let home = var("HOME");
        let no_home = || {
            Error::InvalidArgument(
                "cannot find the Hugging Face cache: HOME is not set; set HF_HUB_CACHE (or HF_HOME) to the cache \
                 folder"
                    .to_string(),
            )
        };
        let expand = |p: &OsStr| -> Result<OsString> {
            let user = expand_user(p, home.as_deref()).ok_or_else(no_home)?;
            Ok(expand_vars(&user, &var))
        };
        let hub = match var("HF_HUB_CACHE").or_else(|| var("HUGGINGFACE_HUB_CACHE")) {
            Some(dir) => dir,
            None => {
                let hf_home = match var("HF_HOME") {
                    Some(dir) => dir,
                    None => {
                        let cache = match var("XDG_CACHE_HOME") {
                            Some(dir) => PathBuf::from(dir),
                            None => PathBuf::from(expand(OsStr::new("~"))?).join(".cache"),
                        };
                        cache.join("huggingface").into_os_string()
                    }
                };
                PathBuf::from(expand(&hf_home)?).join("hub").into_os_string()
            }
        };
        Ok(HubCache::new(expand(&hub)?))
    }

    /// The cache folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The folder of a model repo: `models--{namespace}--{name}` in the cache.
    pub fn repo_dir(&self, repo_id: &str) -> PathBuf {
        self.dir.join(format!("models--{}", repo_id.replace('/', "--")))
    }

    /// The commit `repo`'s revision is cached at: a commit hash as it is, a branch or tag read
    /// from `refs/{revision}` (huggingface_hub's `snapshot_download(local_files_only=True)`).
    pub fn commit(&self, repo: &RepoRef) -> Result<String> {
        repo.check()?;
        let repo_dir = self.repo_dir(&repo.repo_id);
        if !repo_dir.is_dir() {
            return Err(Error::NotCached {
                repo: repo.to_string(),
                looked_in: repo_dir,
                download: repo.download_command(),
                not_a_path: false,
            });
        }
        let revision = repo.revision_or_main();
        if is_commit_hash(revision) {
            return Ok(revision.to_string());
        }
        let ref_file = repo_dir.join("refs").join(revision);
        if !ref_file.is_file() {
            return Err(Error::RevisionNotCached {
                repo: repo.to_string(),
                looked_in: ref_file,
                cached: cached_revisions(&repo_dir),
                download: repo.download_command(),
            });
        }
        let bad_ref = |message: String| Error::config(&ref_file, message);
        let size = std::fs::metadata(&ref_file).map_err(|e| Error::io("read", &ref_file, e))?.len();
        if size > MAX_REF_BYTES {
            return Err(bad_ref(format!("{size} bytes: a ref file holds one commit hash")));
        }
        let text = std::fs::read_to_string(&ref_file).map_err(|e| Error::io("read", &ref_file, e))?;
        let commit = text.trim();
        if !plain_relative(commit) || commit.contains('/') {
            return Err(bad_ref(format!("holds {commit:?}, not a commit hash")));
        }
        Ok(commit.to_string())
    }

    /// The cached snapshot of `repo` at its revision (or the file or folder of its `path` in it),
    /// every link in it checked: a repo, revision or file that is not cached is an
    /// [`Error::NotCached`], [`Error::RevisionNotCached`] or [`Error::NotInSnapshot`] with the
    /// command that downloads it; a link into `blobs/` whose blob is gone is an
    /// [`Error::BrokenCacheLink`] naming the file.
    pub fn resolve(&self, repo: &RepoRef) -> Result<PathBuf> {
        let commit = self.commit(repo)?;
        let snapshot = self.repo_dir(&repo.repo_id).join("snapshots").join(&commit);
        if !snapshot.is_dir() {
            return Err(Error::NotInSnapshot {
                repo: repo.to_string(),
                file: snapshot,
                note: format!("the revision is commit {commit}, whose snapshot is not in the cache"),
                download: repo.download_command(),
            });
        }
        let target = match &repo.path {
            None => snapshot,
            Some(path) => snapshot.join(path),
        };
        match std::fs::symlink_metadata(&target) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound || e.kind() == std::io::ErrorKind::NotADirectory => {
                let path = repo.path.as_deref().unwrap_or_default();
                let no_exist = self.repo_dir(&repo.repo_id).join(".no_exist").join(&commit).join(path);
                let note = if no_exist.is_file() {
                    format!("huggingface_hub recorded that commit {commit} of the repo has no such file")
                } else {
                    format!("not downloaded into the snapshot of commit {commit}")
                };
                return Err(Error::NotInSnapshot {
                    repo: repo.to_string(),
                    file: target,
                    note,
                    download: repo.download_command(),
                });
            }
            Err(e) => return Err(Error::io("inspect", &target, e)),
        }
        check_links(&target, repo)?;
        Ok(target)
    }
}

/// The revisions cached for the repo at `repo_dir`: its refs (`main`, tags, `refs/pr/1`), then the
/// commits of its snapshots; at most 20, comma-separated ("none" when there are none).
fn cached_revisions(repo_dir: &Path) -> String {
    let mut names = Vec::new();
    let refs = repo_dir.join("refs");
    let mut stack = vec![refs.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten().take(1000) {
            let path = entry.path();
            if path.is_dir() && stack.len() < 16 {
                stack.push(path);
            } else if let Ok(rel) = path.strip_prefix(&refs) {
                names.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    names.sort();
    let mut commits: Vec<String> = std::fs::read_dir(repo_dir.join("snapshots"))
        .into_iter()
        .flatten()
        .flatten()
        .take(1000)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    commits.sort();
    names.extend(commits.into_iter().map(|c| format!("commit {c}")));
    if names.is_empty() {
        return "none".to_string();
    }
    let more = names.len().saturating_sub(20);
    names.truncate(20);
    let mut list = names.join(", ");
    if more > 0 {
        list.push_str(&format!(", and {more} more"));
    }
    list
}

/// Errors with [`Error::BrokenCacheLink`] at the first symbolic link under `target` (or `target`
/// itself) whose target is gone; folders are walked without following links, at most
/// [`MAX_SNAPSHOT_ENTRIES`] entries.
fn check_links(target: &Path, repo: &RepoRef) -> Result<()> {
    let mut stack = vec![target.to_path_buf()];
    let mut seen = 0usize;
    while let Some(path) = stack.pop() {
        seen += 1;
        if seen > MAX_SNAPSHOT_ENTRIES {
            return Ok(());
        }
        let meta = std::fs::symlink_metadata(&path).map_err(|e| Error::io("inspect", &path, e))?;
        if meta.file_type().is_symlink() {
            if let Err(e) = std::fs::metadata(&path) {
                let link = std::fs::read_link(&path).unwrap_or_default();
                let blob = path.parent().map_or_else(|| link.clone(), |p| normalize(&p.join(&link)));
                let reason = e.to_string();
                return Err(Error::BrokenCacheLink {
                    file: path,
                    blob,
                    reason,
                    download: format!("{} --force-download", repo.download_command()),
                });
            }
        } else if meta.is_dir() {
            let entries = std::fs::read_dir(&path).map_err(|e| Error::io("list", &path, e))?;
            for entry in entries {
                stack.push(entry.map_err(|e| Error::io("list", &path, e))?.path());
            }
        }
    }
    Ok(())
}

/// `path` with its `.` and `..` components folded (lexically: for naming a link's target).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// What a model option's value names: a path that exists on disk (even as a broken link) as it
/// is; otherwise a Hugging Face repo id ([`RepoRef`]) resolved in the cache of [`HubCache::from_env`]
/// ([`HubCache::resolve`]); anything else (a path that does not exist, not shaped like a repo id)
/// as it is, for the loader to report.
///
/// ```no_run
/// let unet = deradiff_sd::resolve_model_path("mhdang/dpo-sd1.5-text2image-v1")?;
/// let pinned = deradiff_sd::resolve_model_path("stabilityai/stable-diffusion-xl-base-1.0@462165984030d82259a11f4367a4eed129e94a7b")?;
/// # Ok::<(), deradiff_sd::Error>(())
/// ```
pub fn resolve_model_path(spec: impl AsRef<OsStr>) -> Result<PathBuf> {
    resolve_model_path_with(spec, HubCache::from_env)
}

/// [`resolve_model_path`] with the cache of `cache` (called only when `spec` is a repo id).
pub fn resolve_model_path_with(spec: impl AsRef<OsStr>, cache: impl FnOnce() -> Result<HubCache>) -> Result<PathBuf> {
    let spec = spec.as_ref();
    let path = PathBuf::from(spec);
    if std::fs::symlink_metadata(&path).is_ok() {
        return Ok(path);
    }
    let Some(text) = spec.to_str() else { return Ok(path) };
    match RepoRef::parse(text)? {
        None => Ok(path),
        Some(repo) => cache()?.resolve(&repo).map_err(|e| match e {
            // Not cached: say that it is not a path either.
            Error::NotCached { repo, looked_in, download, .. } => {
                Error::NotCached { repo, looked_in, download, not_a_path: true }
            }
            other => other,
        }),
    }
}
