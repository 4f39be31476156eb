"""Where things live in a cache: CACHE/<corpus>/<feature>@<config hash>/."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from mer.cache.spec import FeatureSpec

CORPUS_MANIFEST = "utterances.jsonl"
SPEC_FILE = "spec.json"
MANIFEST_FILE = "manifest.json"
LOCK_FILE = ".lock"


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
