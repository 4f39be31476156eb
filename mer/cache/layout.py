"""Where things live in a cache: CACHE/<corpus>/<feature>@<config hash>/."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from mer.cache.locks import READ_ONLY_ERRNOS, ReadOnlyCache
from mer.cache.spec import FeatureSpec
from mer.errors import CacheError

CORPUS_MANIFEST = "utterances.jsonl"
SPEC_FILE = "spec.json"
MANIFEST_FILE = "manifest.json"
LOCK_FILE = ".lock"


def is_plain_name(name: str) -> bool:
    """One visible path segment: nothing that climbs (`..`), hides (`.x`), nests (`/`, `\\`) or breaks a line."""
    return bool(name) and not name.startswith(".") and "/" not in name and "\\" not in name \
        and not any(ord(c) < 32 or ord(c) == 127 for c in name)


def check_corpus_name(name: str, cache_root: Path) -> str:
    """A corpus name becomes a folder of the cache: refuse one that would land anywhere else."""
    if not is_plain_name(name):
        raise CacheError(f"{cache_root}: corpus name {name!r} is not a plain folder name (no leading '.', "
                         "no '/', '\\' or control characters); pass --set corpus.name=NAME")
    return name


def check_cache_path(path: Path) -> None:
    """A cache path that is (or lies under) a file: one line, before any work is done."""
    blocker = next((p for p in [Path(path), *Path(path).parents] if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise CacheError(f"{blocker}: is a file, not a folder; pass --cache a folder path")


def existing_cache_folder(root: Path) -> Path:
    """`root` when it is a folder; else one line saying what it is, for a mistyped --cache."""
    if not Path(root).is_dir():
        what = "is a file, not a cache folder" if Path(root).exists() else "no such folder"
        raise CacheError(f"{root}: {what}; give the --cache folder of `mer extract`")
    return root


def make_cache_folder(path: Path) -> Path:
    """mkdir -p, with one line instead of a traceback when a part of the path is a file."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        check_cache_path(path)
        raise
    except OSError as exc:
        if exc.errno not in READ_ONLY_ERRNOS:
            raise
        raise ReadOnlyCache(f"{path}: cannot create it ({exc.strerror}); pass --cache a writable folder") from None
    return path


def feature_dir_name(spec: FeatureSpec) -> str:
    """`mfcc40@3f2a...`: the name a user reads, plus the config hash so two configs never collide."""
    safe = re.sub(r"[^A-Za-z0-9._+-]+", "_", spec.name).strip("_")[:80]
    return f"{safe}@{spec.config_hash}"


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def shard_index(path: Path) -> int | None:
    match = re.match(r"shard-(\d+)", Path(path).name)
    return int(match.group(1)) if match else None


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temporary name in the same folder, fsync, then rename: readers see old or new, never half."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True, default=str))
