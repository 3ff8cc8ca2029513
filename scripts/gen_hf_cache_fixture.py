"""Lays out a Hugging Face hub cache with huggingface_hub's own cache-writing functions, checks
it with huggingface_hub's readers, and writes what deradiff's tests need to rebuild and check it:

    crates/deradiff-sd/tests/fixtures/hf-cache/manifest.json
    crates/deradiff-sd/tests/fixtures/hf-cache/files/…   (the few blobs not already fixtures)

The cache holds the repos (`deradiff-test/…`) the tests resolve: a pipeline (the tiny SD 1.5
fixture) on `main`, a tag, and a branch `fp16` of diffusers' fp16-variant file names; an
aligned-UNet repo (`unet/` only, as mhdang/dpo-sd1.5-text2image-v1 ships); a UNet saved sharded by
diffusers' `save_pretrained(max_shard_size=…)` (plain and fp16 variant); a CLIP model without a
namespace; a repo cached only by commit hash; a repo whose blob was deleted (a broken link); a
file whose absence huggingface_hub recorded in `.no_exist/`.

Blobs are written where `hf_hub_download` writes them (`blobs/{etag}`: the git hash of a small
file, the sha256 of an LFS file), snapshot files are links made by huggingface_hub's
`_create_symlink`, refs by `_cache_commit_hash_for_specific_revision`. The tree is then read back
(links as links) into the manifest with, as expectations, what huggingface_hub's
`snapshot_download(local_files_only=True)`, `try_to_load_from_cache` and `scan_cache_dir` say
about it, and what its `constants.HF_HUB_CACHE` is under several environments. The Rust tests
rebuild the tree in a temporary folder from the manifest and compare deradiff's resolver with
those answers.

Run: nice -n 10 /work/venv/bin/python scripts/gen_hf_cache_fixture.py
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import huggingface_hub
from huggingface_hub import scan_cache_dir, snapshot_download, try_to_load_from_cache
from huggingface_hub.file_download import (
    _CACHED_NO_EXIST,
    _cache_commit_hash_for_specific_revision,
    _create_symlink,
    _get_pointer_path,
    repo_folder_name,
)
from huggingface_hub.utils.sha import git_hash, sha_fileobj

ROOT = Path(__file__).resolve().parent.parent
SD = ROOT / "crates/deradiff-sd/tests/fixtures"
CLIP = ROOT / "crates/deradiff-tune/tests/fixtures/clip/clip-gelu"
OUT = SD / "hf-cache"
FILES = OUT / "files"


def commit_of(label: str) -> str:
    return hashlib.sha1(label.encode()).hexdigest()


def is_lfs(name: str) -> bool:
    return name.endswith(".safetensors")


def etag(path: Path) -> str:
    """The blob name hf_hub_download uses: sha256 for LFS files, the git blob hash otherwise."""
    if is_lfs(path.name):
        with open(path, "rb") as f:
            return sha_fileobj(f).hex()
    return git_hash(path.read_bytes())


def add_file(storage: Path, commit: str, rel: str, source: Path) -> None:
    """What hf_hub_download does for one file: the blob, then the snapshot link to it."""
    blob = storage / "blobs" / etag(source)
    blob.parent.mkdir(parents=True, exist_ok=True)
    if not blob.exists():
        shutil.copyfile(source, blob)
    pointer = Path(_get_pointer_path(str(storage), commit, rel))
    pointer.parent.mkdir(parents=True, exist_ok=True)
    _create_symlink(str(blob), str(pointer), new_blob=False)


def add_tree(storage: Path, commit: str, folder: Path, rename=lambda rel: rel) -> None:
    for source in sorted(p for p in folder.rglob("*") if p.is_file()):
        add_file(storage, commit, rename(source.relative_to(folder).as_posix()), source)


def fp16_name(rel: str) -> str:
    """diffusers' `_add_variant(name, "fp16")` for weight files."""
    if rel.endswith(".safetensors"):
        return rel[: -len(".safetensors")] + ".fp16.safetensors"
    return rel


def sharded_unets(tmp: Path) -> tuple[Path, Path]:
    """tiny-unet-groups8 saved sharded by diffusers, plain and as the fp16 variant."""
    import torch
    from diffusers import UNet2DConditionModel

    # In the fixture's own dtype (f16), so that the shards hold its very tensors.
    unet = UNet2DConditionModel.from_pretrained(SD / "tiny-unet-groups8", torch_dtype=torch.float16)
    plain, variant = tmp / "sharded", tmp / "sharded-fp16"
    unet.save_pretrained(plain, max_shard_size="100KB")
    unet.save_pretrained(variant, max_shard_size="100KB", variant="fp16")
    for folder in (plain, variant):
        index = [p.name for p in folder.iterdir() if ".index." in p.name]
        assert len(index) == 1, index
        assert len([p for p in folder.iterdir() if p.name.endswith(".safetensors")]) > 1, "not sharded"
    return plain, variant


def build(hub: Path, tmp: Path) -> dict:
    """The cache; returns the commits by label."""
    commits = {}

    def repo(repo_id: str) -> Path:
        storage = hub / repo_folder_name(repo_id=repo_id, repo_type="model")
        storage.mkdir(parents=True, exist_ok=True)
        return storage

    # A pipeline: main and a tag at one commit, a branch of fp16-variant file names.
    storage = repo("deradiff-test/tiny-sd")
    c = commits["tiny-sd main"] = commit_of("tiny-sd main")
    add_tree(storage, c, SD / "tiny-sd")
    _cache_commit_hash_for_specific_revision(str(storage), "main", c)
    _cache_commit_hash_for_specific_revision(str(storage), "v1.0", c)
    c = commits["tiny-sd fp16"] = commit_of("tiny-sd fp16")
    add_tree(storage, c, SD / "tiny-sd", fp16_name)
    _cache_commit_hash_for_specific_revision(str(storage), "fp16", c)
    # A pull-request ref, `refs/pr/1`, as the Hub names them.
    _cache_commit_hash_for_specific_revision(str(storage), "refs/pr/1", c)

    # An aligned UNet repo: unet/ only.
    storage = repo("deradiff-test/tiny-aligned-unet")
    c = commits["aligned main"] = commit_of("aligned main")
    add_tree(storage, c, SD / "tiny-aligned-unet", lambda rel: "unet/" + rel)
    _cache_commit_hash_for_specific_revision(str(storage), "main", c)

    # A UNet saved sharded, and as the sharded fp16 variant on a branch.
    plain, variant = sharded_unets(tmp)
    storage = repo("deradiff-test/tiny-unet-sharded")
    c = commits["sharded main"] = commit_of("sharded main")
    add_tree(storage, c, plain)
    _cache_commit_hash_for_specific_revision(str(storage), "main", c)
    c = commits["sharded fp16"] = commit_of("sharded fp16")
    add_tree(storage, c, variant)
    _cache_commit_hash_for_specific_revision(str(storage), "fp16", c)

    # A CLIP model whose id has no namespace.
    storage = repo("tiny-clip")
    c = commits["clip main"] = commit_of("clip main")
    add_tree(storage, c, CLIP)
    _cache_commit_hash_for_specific_revision(str(storage), "main", c)

    # Cached by commit hash only: no refs/.
    storage = repo("deradiff-test/pinned")
    c = commits["pinned"] = commit_of("pinned")
    add_tree(storage, c, SD / "tiny-aligned-unet")

    # A broken link: the UNet's blob was deleted after the download.
    storage = repo("deradiff-test/broken")
    c = commits["broken main"] = commit_of("broken main")
    add_tree(storage, c, SD / "tiny-aligned-unet")
    _cache_commit_hash_for_specific_revision(str(storage), "main", c)
    os.remove(storage / "blobs" / etag(SD / "tiny-aligned-unet/diffusion_pytorch_model.safetensors"))
    # A file the Hub said does not exist (hf_hub_download's `.no_exist/` marker).
    no_exist = storage / ".no_exist" / c / "model_index.json"
    no_exist.parent.mkdir(parents=True, exist_ok=True)
    no_exist.touch()

    # A ref whose snapshot is not in the cache (an interrupted download).
    storage = repo("deradiff-test/interrupted")
    c = commits["interrupted main"] = commit_of("interrupted main")
    _cache_commit_hash_for_specific_revision(str(storage), "main", c)
    (storage / "snapshots").mkdir()
    return commits


def hashes(path: Path) -> tuple:
    """Both names a blob of this content may have: its sha256 (LFS) and its git hash."""
    with open(path, "rb") as f:
        return sha_fileobj(f).hex(), git_hash(path.read_bytes())


def sources() -> dict:
    """Every fixture file a blob may be a copy of, by both its hashes."""
    found = {}
    for base in (SD / "tiny-sd", SD / "tiny-aligned-unet", CLIP, FILES):
        for p in sorted(base.rglob("*")):
            if p.is_file():
                for h in hashes(p):
                    found.setdefault(h, p.relative_to(ROOT).as_posix())
    return found


def read_tree(hub: Path, tmp: Path) -> list:
    """The cache as entries, links as links; blobs that are no fixture go to FILES."""
    known = sources()
    entries = []
    for p in sorted(hub.rglob("*")):
        rel = p.relative_to(hub).as_posix()
        if p.is_symlink():
            entries.append({"path": rel, "link": os.readlink(p)})
        elif p.is_dir():
            entries.append({"path": rel, "dir": True})
        elif "/blobs/" in "/" + rel:
            assert p.name in hashes(p), f"{rel}: the blob's name is not a hash of its content"
            if p.name not in known:
                FILES.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(p, FILES / p.name)
                known = sources()
            entries.append({"path": rel, "copy": known[p.name]})
        else:
            entries.append({"path": rel, "text": p.read_text()})
    return entries


def relative(hub: Path, path) -> str:
    return Path(path).relative_to(hub).as_posix()


def expectations(hub: Path, commits: dict) -> dict:
    snapshots = []
    for repo_id, revision in [
        ("deradiff-test/tiny-sd", None),
        ("deradiff-test/tiny-sd", "v1.0"),
        ("deradiff-test/tiny-sd", "fp16"),
        ("deradiff-test/tiny-sd", "refs/pr/1"),
        ("deradiff-test/tiny-sd", commits["tiny-sd fp16"]),
        ("deradiff-test/tiny-sd", "no-such-branch"),
        ("deradiff-test/tiny-sd", commit_of("never downloaded")),
        ("deradiff-test/tiny-aligned-unet", None),
        ("deradiff-test/tiny-unet-sharded", None),
        ("deradiff-test/tiny-unet-sharded", "fp16"),
        ("tiny-clip", None),
        ("deradiff-test/pinned", None),
        ("deradiff-test/pinned", commits["pinned"]),
        ("deradiff-test/broken", None),
        ("deradiff-test/interrupted", None),
        ("deradiff-test/not-cached", None),
    ]:
        try:
            found = relative(hub, snapshot_download(repo_id, revision=revision, cache_dir=hub, local_files_only=True))
        except Exception as e:  # noqa: BLE001 - the class is the expectation
            found = None
            print(f"snapshot_download({repo_id}@{revision}): {type(e).__name__}")
        snapshots.append({"repo_id": repo_id, "revision": revision, "found": found})
    files = []
    for repo_id, revision, filename in [
        ("deradiff-test/tiny-sd", None, "unet/config.json"),
        ("deradiff-test/tiny-sd", None, "unet/diffusion_pytorch_model.safetensors"),
        ("deradiff-test/tiny-sd", "fp16", "unet/diffusion_pytorch_model.fp16.safetensors"),
        ("deradiff-test/tiny-sd", "fp16", "unet/diffusion_pytorch_model.safetensors"),
        ("deradiff-test/tiny-sd", "v1.0", "vae/config.json"),
        ("deradiff-test/tiny-sd", None, "no/such/file.json"),
        ("deradiff-test/tiny-aligned-unet", None, "unet"),
        ("deradiff-test/tiny-unet-sharded", None, "diffusion_pytorch_model.safetensors.index.json"),
        ("deradiff-test/tiny-unet-sharded", "fp16", "diffusion_pytorch_model.safetensors.index.fp16.json"),
        ("tiny-clip", None, "config.json"),
        ("deradiff-test/pinned", commits["pinned"], "config.json"),
        ("deradiff-test/broken", None, "config.json"),
        ("deradiff-test/broken", None, "diffusion_pytorch_model.safetensors"),
        ("deradiff-test/broken", None, "model_index.json"),
        ("deradiff-test/not-cached", None, "config.json"),
    ]:
        found = try_to_load_from_cache(repo_id, filename, cache_dir=hub, revision=revision)
        if found is _CACHED_NO_EXIST:
            found = "no_exist"
        elif found is not None:
            found = relative(hub, found)
        files.append({"repo_id": repo_id, "revision": revision, "filename": filename, "found": found})
    return {"snapshot_download": snapshots, "try_to_load_from_cache": files}


def scan(hub: Path) -> dict:
    """scan_cache_dir's view: each repo's revisions and refs, and the warnings (broken links)."""
    info = scan_cache_dir(hub)
    repos = {}
    for r in sorted(info.repos, key=lambda r: r.repo_id):
        repos[r.repo_id] = {
            rev.commit_hash: sorted(rev.refs) for rev in sorted(r.revisions, key=lambda rev: rev.commit_hash)
        }
    # The cache's own folder (a temporary one) written as <hub>.
    return {"repos": repos, "warnings": sorted(str(w).replace(str(hub), "<hub>") for w in info.warnings)}


def env_cases() -> list:
    """huggingface_hub's constants.HF_HUB_CACHE under several environments (HOME=/home/u)."""
    cases = [
        {},
        {"HF_HOME": "/b"},
        {"HF_HUB_CACHE": "/a"},
        {"HF_HUB_CACHE": "/a", "HF_HOME": "/b"},
        {"HUGGINGFACE_HUB_CACHE": "/legacy"},
        {"HF_HUB_CACHE": "/a", "HUGGINGFACE_HUB_CACHE": "/legacy"},
        {"HUGGINGFACE_HUB_CACHE": "/legacy", "HF_HOME": "/b"},
        {"XDG_CACHE_HOME": "/x"},
        {"XDG_CACHE_HOME": "/x", "HF_HOME": "/b"},
        {"HF_HOME": "~/hf"},
        {"HF_HUB_CACHE": "~"},
        {"HF_HOME": "$FOO/hf", "FOO": "/foo"},
        {"HF_HUB_CACHE": "${BAR}/c", "BAR": "/bar"},
        {"HF_HOME": "$UNSET_VAR/hf"},
        {"XDG_CACHE_HOME": "$FOO/xdg", "FOO": "/foo"},
        {"HF_HOME": "relative/hf"},
        {"HF_HOME": "~user/hf"},
    ]
    out = []
    for env in cases:
        full = {"HOME": "/home/u", "PATH": os.environ["PATH"], **env}
        code = "from huggingface_hub import constants; print(constants.HF_HUB_CACHE)"
        found = subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True, check=True)
        out.append({"env": env, "hub_cache": found.stdout.strip()})
    return out


def main() -> None:
    if FILES.exists():
        shutil.rmtree(FILES)
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        hub = tmp / "hub"
        commits = build(hub, tmp)
        manifest = {
            "generator": f"scripts/gen_hf_cache_fixture.py, huggingface_hub {huggingface_hub.__version__}",
            "commits": commits,
            "entries": read_tree(hub, tmp),
            "expected": expectations(hub, commits),
            "scan_cache_dir": scan(hub),
            "hub_cache_env": env_cases(),
        }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"wrote {OUT / 'manifest.json'}: {len(manifest['entries'])} entries")


if __name__ == "__main__":
    main()
