"""The per-feature manifest: the committed shards (with sha256 and ids) and the failures,
rebuilt from the per-shard records (`shard-NNNNN.json`) that commits write."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

from mer import __version__
from mer.cache.layout import MANIFEST_FILE, SPEC_FILE, atomic_write_json, shard_index, shard_name
from mer.cache.shard import repair_command, verify_repair_command
from mer.errors import CacheError
from mer.cache.spec import FeatureSpec

SHARD_FILE = re.compile(r"shard-\d+\.h5")


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
        path = Path(path)
        try:
            data = json.loads(path.read_text())
            known = {f.name for f in fields(cls)}
            record = cls(**{k: v for k, v in data.items() if k in known})  # keys of a newer version: ignored
        except (ValueError, TypeError, AttributeError) as exc:
            raise CacheError(f"{path}: corrupt commit record ({_one_line(exc)}); "
                             f"{repair_command(path.parent)}") from exc
        wrong = (f"it names file {record.file!r}" if record.file not in (None, f"{path.stem}.h5")
                 else None if isinstance(record.ids, list) else "its ids are not a list")
        if wrong:  # a record names only its own shard: never a path elsewhere
            raise CacheError(f"{path}: corrupt commit record ({wrong}); {repair_command(path.parent)}")
        return record


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def read_shard_records(feature_dir: Path, memo: dict | None = None) -> list[ShardRecord]:
    """Every committed shard record, in index order. A record never changes once written, but a
    damaged one may be dropped and its index reused: `memo` keeps records by file identity."""
    records = []
    for path in sorted(Path(feature_dir).glob("shard-*.json")):
        try:
            stat = path.stat()
        except FileNotFoundError:  # dropped this instant by a repair
            continue
        stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if memo is not None and memo.get(path.name, (None,))[0] == stamp:
            records.append(memo[path.name][1])
            continue
        record = ShardRecord.load(path)
        if memo is not None:
            memo[path.name] = (stamp, record)
        records.append(record)
    return records


def drop_shard(feature_dir: Path, stem: str) -> None:
    """Remove the commit record `stem`.json and its shard (call under the feature's lock): its ids
    become pending. The shard goes first: killed in between, a record without its file is dropped
    again by the next writer."""
    (Path(feature_dir) / f"{stem}.h5").unlink(missing_ok=True)
    (Path(feature_dir) / f"{stem}.json").unlink(missing_ok=True)


def stray_shards(feature_dir: Path) -> list[Path]:
    """Shard files without a commit record or a claim (live, or dead and not yet reaped by a writer):
    under the feature's lock, leftovers that no reader sees and that only take an index."""
    directory = Path(feature_dir)
    accounted = {p.name.split(".")[0] for pattern in ("shard-*.json", "shard-*.claim") for p in directory.glob(pattern)}
    return [p for p in sorted(directory.glob("shard-*.h5")) if p.stem not in accounted]


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
        manifest = json.loads(path.read_text())
        foreign = [s["file"] for s in manifest["shards"] if not SHARD_FILE.fullmatch(str(s["file"]))]
    except (ValueError, TypeError, KeyError) as exc:
        raise CacheError(f"{path}: unreadable manifest ({_one_line(exc)}); run `{verify_repair_command(feature_dir)}` "
                         "(it rebuilds the manifest from the shard records)") from exc
    if foreign:  # a shard is a file of this folder, never a path elsewhere
        raise CacheError(f"{path}: lists {foreign[0]!r}, not a shard of this folder; run "
                         f"`{verify_repair_command(feature_dir)}` (it rebuilds the manifest from the shard records)")
    return manifest


def next_free_index(feature_dir: Path) -> int:
    used = [shard_index(p) for p in Path(feature_dir).glob("shard-*")]
    return max([i for i in used if i is not None], default=-1) + 1
