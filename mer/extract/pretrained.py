"""Where pretrained weights come from: a local directory or a Hugging Face hub id (HF cache
conventions). Offline, a model that is not on disk fails at once with one line that names
the flag to pass, never with a retry loop. The resolved revision (hub commit, or a hash of
local weight files) goes into the feature spec, so two revisions never share a cache entry."""

from __future__ import annotations

import hashlib
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

from mer.errors import MerError
from mer.hashing import sha256_file

MODELS_DIR_ENV = "MER_MODELS_DIR"  # a folder holding local copies named like the hub id's last part
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack")


class ModelNotAvailable(MerError):
    """Pretrained weights are neither on disk nor reachable."""


@dataclass(frozen=True)
class ResolvedModel:
    model_id: str  # what the user named: a hub id or a local directory
    local_dir: Path  # where from_pretrained reads
    revision: str  # hub commit sha, or "sha256:<hash>" of local config + weights


def resolve_pretrained(name_or_path: str, revision: Optional[str] = None,
                       models_dir: Optional[str | Path] = None, feature: str = "") -> ResolvedModel:
    """Find `name_or_path` locally (a directory, `models_dir`/$MER_MODELS_DIR, the HF cache) or on the hub;
    `feature`, the extractor's name as `--features` gives it, goes into the hint when neither has it."""
    local = _find_local(name_or_path, models_dir)
    if local is not None:
        return ResolvedModel(name_or_path, local, "sha256:" + hash_local_weights(local))
    return _from_hub(name_or_path, revision, local_copy_hint(name_or_path, feature))


def local_copy_hint(model: str, feature: str = "", contents: str = "config.json and weights") -> str:
    """How to point `mer extract --features FEATURE` at a local copy of `model`, in forms that work when
    pasted: `--set FEATURE.models_dir=DIR`, $MER_MODELS_DIR, or the copy itself (`--set FEATURE.model=PATH`;
    for `hf-audio:ID` and the like, `--features hf-audio:PATH`). Without `feature`: $MER_MODELS_DIR only."""
    base = model.rstrip("/").split("/")[-1] or model
    ways = [*([f"pass --set {feature}.models_dir=DIR"] if feature else []), f"export {MODELS_DIR_ENV}=DIR"]
    hint = f"put a local copy in DIR/{base}/ ({contents}), then {' or '.join(ways)}"
    if not feature:
        return hint
    family, named, _ = feature.partition(":")
    itself = f"--features {family}:/path/to/{base}" if named else f"--set {feature}.model=/path/to/{base}"
    return f"{hint}; or name the copy itself: {itself}"


def _find_local(name: str, models_dir: Optional[str | Path]) -> Optional[Path]:
    candidate = Path(name).expanduser()
    if candidate.is_dir():
        if not (candidate / "config.json").is_file():
            raise ModelNotAvailable(f"{candidate}: no config.json; give a directory saved by save_pretrained")
        return candidate.resolve()
    if name.startswith(("/", "./", "../", "~")):
        raise ModelNotAvailable(f"{name}: model directory not found; check the path")
    for root in (models_dir, os.environ.get(MODELS_DIR_ENV)):
        if root:
            for sub in (name, name.split("/")[-1]):
                path = Path(root).expanduser() / sub
                if (path / "config.json").is_file():
                    return path.resolve()
    return None


HUB_PATTERNS = ("*.json", "*.txt", "*.model", "*.safetensors", "*.bin", "merges.txt")


def _from_hub(model_id: str, revision: Optional[str], hint: str, patterns: tuple = HUB_PATTERNS) -> ResolvedModel:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    offline = _hub_offline()
    try:
        path = snapshot_download(model_id, revision=revision, local_files_only=offline,
                                 allow_patterns=list(patterns))
    except LocalEntryNotFoundError:
        why = "the hub is unreachable" if offline else "the download failed"
        raise ModelNotAvailable(f"model {model_id!r} is not in the local HF cache and {why}; {hint}") from None
    except Exception as exc:  # a wrong id, a gated repo, a network error: one line with the cause
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelNotAvailable(f"model {model_id!r} could not be fetched ({reason}); {hint}") from None
    path = Path(path)
    return ResolvedModel(model_id, path, path.name)  # snapshots/<commit sha>


def _hub_offline(timeout: float = 2.0) -> bool:
    """True when HF_HUB_OFFLINE is set or the hub endpoint does not answer a TCP connect quickly."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return True
    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return False
    except OSError:
        return True


def hash_local_weights(directory: Path) -> str:
    """sha256 over config and weight files, memoised by (path, size, mtime) so large
    checkpoints are hashed once per machine."""
    files = sorted(p for p in Path(directory).rglob("*")
                   if p.is_file() and (p.suffix in _WEIGHT_SUFFIXES or p.name == "config.json"))
    stats = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    key = hashlib.sha256(json.dumps(stats).encode()).hexdigest()
    memo_path = Path(os.environ.get("MER_HOME", "~/.cache/mer")).expanduser() / "weight-hashes.json"
    memo = _read_json(memo_path)
    if key not in memo:
        digest = hashlib.sha256()
        for path in files:
            digest.update(path.relative_to(directory).as_posix().encode())
            sha256_file(path, digest)
        memo[key] = digest.hexdigest()[:16]
        _write_json(memo_path, memo)
    return memo[key]


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_json(path: Path, data: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)
    except OSError:
        pass  # the memo only saves time; without it the hash is recomputed next run


def quiet_transformers() -> None:
    """No per-load progress bars or warnings from transformers: a long extraction has its own bar."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
