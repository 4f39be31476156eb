"""`mer cache verify`: checksums, coverage against the corpus manifest, dims, NaN/Inf,
duplicates and stray files. Every problem is one line naming the file and the fix."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from mer.cache.layout import CORPUS_MANIFEST
from mer.cache.manifest import read_manifest
from mer.cache.reader import FeatureCache
from mer.cache.shard import ShardReader
from mer.hashing import sha256_file
from mer.data.utterance import read_utterances
from mer.errors import CacheError
from mer.cache.spec import FeatureSpec


@dataclass
class FeatureReport:
    corpus: str
    feature: str
    config_hash: str
    directory: str
    dims: list[int]
    stored: int = 0
    failed: int = 0
    missing: int = 0
    problems: list[str] = field(default_factory=list)
    failure_reasons: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_cache(root: Path, corpus: Optional[str] = None, feature: Optional[str] = None) -> list[FeatureReport]:
    cache = FeatureCache(root)
    corpora = [corpus] if corpus else cache.corpora()
    if not corpora:
        raise CacheError(f"{root}: no corpora in this cache; check the path or run `mer extract`")
    reports = []
    for name in corpora:
        expected = _corpus_ids(Path(root) / name)
        infos = cache.features(name)
        if feature:
            infos = [cache.find(name, feature)]
        reports.extend(verify_feature(info.directory, name, expected) for info in infos)
    return reports


def _corpus_ids(corpus_dir: Path) -> Optional[set[str]]:
    path = corpus_dir / CORPUS_MANIFEST
    return {u.id for u in read_utterances(path)} if path.is_file() else None


def verify_feature(directory: Path, corpus: str, expected_ids: Optional[set[str]]) -> FeatureReport:
    manifest = read_manifest(directory)
    spec = FeatureSpec.from_dict(manifest["spec"])
    report = FeatureReport(corpus, spec.name, spec.config_hash, str(directory), list(spec.row_shape))
    seen: Counter = Counter()
    for shard in manifest["shards"]:
        _check_shard(Path(directory), shard, spec, report, seen)
    report.stored = len(seen)
    report.failure_reasons = dict(manifest["failures"])
    report.failed = len(report.failure_reasons)
    for utt_id, n in seen.items():
        if n > 1:
            report.problems.append(f"{directory}: {utt_id} is stored {n} times; remove the feature and re-extract")
    if expected_ids is not None:
        missing = expected_ids - set(seen) - set(report.failure_reasons)
        report.missing = len(missing)
        if missing:
            example = ", ".join(sorted(missing)[:3])
            report.problems.append(f"{directory}: {len(missing)} utterances of the corpus manifest are missing "
                                   f"(e.g. {example}); run `mer extract` again to fill them")
    _check_stray_files(Path(directory), manifest, report)
    return report


def _check_shard(directory: Path, shard: dict, spec: FeatureSpec, report: FeatureReport, seen: Counter) -> None:
    path = directory / shard["file"]
    if not path.is_file():
        report.problems.append(f"{path}: shard listed in the manifest is missing; remove the feature and re-extract")
        return
    if sha256_file(path) != shard["sha256"]:
        report.problems.append(f"{path}: checksum mismatch (the file changed after it was written); "
                               "delete it and its .json record, then run `mer extract` again")
        return
    try:
        reader = ShardReader(path)
    except CacheError as exc:
        report.problems.append(str(exc))
        return
    try:
        if reader.ids != shard["ids"]:
            report.problems.append(f"{path}: ids differ from the manifest; delete the shard and re-extract")
        seen.update(reader.ids)
        for utt_id, rows in reader:
            _check_rows(path, utt_id, rows, spec, report)
    finally:
        reader.close()


def _check_rows(path: Path, utt_id: str, rows: np.ndarray, spec: FeatureSpec, report: FeatureReport) -> None:
    if tuple(rows.shape[1:]) != spec.row_shape:
        report.problems.append(f"{path}: {utt_id} has rows of shape {rows.shape[1:]}, spec says {spec.row_shape}")
    elif rows.shape[0] == 0:
        report.problems.append(f"{path}: {utt_id} has no frames")
    elif not np.isfinite(rows).all():
        bad = int((~np.isfinite(rows)).sum())
        report.problems.append(f"{path}: {utt_id} holds {bad} NaN/Inf values; re-extract with --dtype float32 "
                               "or check the input audio")


def _check_stray_files(directory: Path, manifest: dict, report: FeatureReport) -> None:
    listed = {s["file"] for s in manifest["shards"]}
    active_claims = {p.name.split(".")[0] for p in directory.glob("shard-*.claim")}
    for path in directory.glob("shard-*.h5"):
        if path.name not in listed and path.name.split(".")[0] not in active_claims:
            report.problems.append(f"{path}: shard not in the manifest; run `mer extract` (it cleans up) or delete it")
