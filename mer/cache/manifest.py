"""The per-feature manifest: the committed shards (with sha256 and ids) and the failures,
rebuilt from the per-shard records (`shard-NNNNN.json`) that commits write."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from mer import __version__
from mer.cache.layout import MANIFEST_FILE, SPEC_FILE, atomic_write_json, shard_index
from mer.errors import CacheError
from mer.cache.spec import FeatureSpec


@dataclass
class ShardRecord:
    """What one commit wrote: `file` is None when every utterance of the claim failed."""

    index: int
    file: str | None
    sha256: str | None
    size: int
    ids: list[str]
    rows: int
    failures: dict[str, str] = field(default_factory=dict)
    created: float = 0.0
    host: str = ""

    @classmethod
    def load(cls, path: Path) -> "ShardRecord":
        return cls(**json.loads(Path(path).read_text()))


def read_shard_records(feature_dir: Path, memo: dict | None = None) -> list[ShardRecord]:
    """Every committed shard record, in index order. Records never change once written, so `memo` may keep them."""
    records = []
    for path in sorted(Path(feature_dir).glob("shard-*.json")):
        if memo is not None and path.name in memo:
            records.append(memo[path.name])
            continue
        record = ShardRecord.load(path)
        if memo is not None:
            memo[path.name] = record
        records.append(record)
    return records


def stored_and_failed(records: list[ShardRecord]) -> tuple[set[str], dict[str, str]]:
    stored = {utt_id for r in records for utt_id in r.ids}
    failed: dict[str, str] = {}
    for record in records:  # later records win: a retried failure keeps its newest reason
        failed.update(record.failures)
    return stored, {k: v for k, v in failed.items() if k not in stored}


def build_manifest(feature_dir: Path, corpus: str, spec: FeatureSpec, records: list[ShardRecord]) -> dict:
    stored, failed = stored_and_failed(records)
    shards = [{"file": r.file, "sha256": r.sha256, "size": r.size, "rows": r.rows, "ids": r.ids}
              for r in records if r.file]
    return {
        "format": 1, "corpus": corpus, "feature": spec.name, "config_hash": spec.config_hash,
        "spec": spec.to_dict(), "dims": list(spec.row_shape), "dtype": spec.dtype,
        "model_id": spec.model_id, "model_revision": spec.model_revision,
        "package_version": __version__, "num_utterances": len(stored), "num_failures": len(failed),
        "shards": shards, "failures": dict(sorted(failed.items())), "updated": time.time(),
    }


def write_manifest(feature_dir: Path, manifest: dict) -> None:
    atomic_write_json(Path(feature_dir) / MANIFEST_FILE, manifest)


def read_manifest(feature_dir: Path) -> dict:
    path = Path(feature_dir) / MANIFEST_FILE
    if not path.is_file():
        spec_path = Path(feature_dir) / SPEC_FILE
        if spec_path.is_file():  # created, nothing committed yet
            spec = FeatureSpec.from_dict(json.loads(spec_path.read_text()))
            return build_manifest(feature_dir, Path(feature_dir).parent.name, spec, [])
        raise CacheError(f"{feature_dir}: no {MANIFEST_FILE}; not a mer feature directory")
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise CacheError(f"{path}: unreadable manifest ({exc}); run `mer cache verify --repair`") from exc


def next_free_index(feature_dir: Path) -> int:
    used = [shard_index(p) for p in Path(feature_dir).glob("shard-*")]
    return max([i for i in used if i is not None], default=-1) + 1
