"""`mer cache verify`: commit records, checksums, links, coverage against the corpus manifest,
dims, NaN/Inf, duplicates and stray files. Every problem is one line naming the file and the fix.

`--repair` drops what cannot be trusted (a corrupt record, a shard that is missing, truncated,
changed, unreadable, or reads from other files) together with its record, removes stray shard
files and rebuilds manifest.json, all under the feature's lock; the next `mer extract`
recomputes the dropped utterances."""

from __future__ import annotations

import itertools
import json
import os
import shlex
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import h5py
import numpy as np

from mer.cache.layout import CORPUS_MANIFEST, LOCK_FILE, MANIFEST_FILE, SPEC_FILE, atomic_write_json
from mer.cache.locks import ReadOnlyCache, lock, try_lock
from mer.cache.manifest import (ShardRecord, build_manifest, drop_shard, read_manifest, stored_and_failed,
                                stray_shards, write_manifest)
from mer.cache.reader import FeatureCache
from mer.cache.shard import ShardReader, repair_command, verify_repair_command
from mer.cache.spec import FeatureSpec
from mer.cache.writer import reap_claim
from mer.data.utterance import read_utterances
from mer.errors import CacheError
from mer.hashing import sha256_file

MISSING = "utterances of the corpus manifest are missing"
RowCheck = Callable[[Path, str, np.ndarray], None]


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
    damaged: dict[str, str] = field(default_factory=dict)  # record stem -> problem line: what --repair drops
    stale_manifest: bool = False  # manifest.json unreadable or not what the records say: --repair rebuilds it
    strays: list[str] = field(default_factory=list)  # shard files no record lists: --repair removes them
    leftovers: list[str] = field(default_factory=list)  # a dead writer's claims and temporary files: --repair removes them
    lost_spec: Optional[dict] = None  # spec.json is missing; --repair writes this copy (manifest's or a shard's)
    dropped: list[str] = field(default_factory=list)  # what --repair removed, one line each
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_cache(root: Path, corpus: Optional[str] = None, feature: Optional[str] = None,
                 repair: bool = False) -> list[FeatureReport]:
    root = Path(root)
    corpora = [FeatureCache(root).corpus(corpus)] if corpus else FeatureCache(root).corpora()
    if not corpora:
        raise CacheError(f"{root}: no corpora in this cache; check the path (mer extract --cache fills a cache)")
    reports = []
    for name in corpora:
        expected = _corpus_ids(root / name)
        for directory in feature_dirs(root, name, feature):
            reports.append(verify_feature(directory, name, expected, repair))
    return reports


def feature_dirs(root: Path, corpus: str, feature: Optional[str] = None) -> list[Path]:
    """Feature folders: those with a spec.json, and those that lost it but hold a manifest, records or
    shards, so a feature whose manifest or spec is damaged is still found (and repaired). `feature`
    is NAME or NAME@HASH (a prefix of the hash)."""
    dirs = sorted({p.parent for pattern in (SPEC_FILE, MANIFEST_FILE, "shard-*")
                   for p in (Path(root) / corpus).glob(f"*/{pattern}")})
    if not feature:
        return dirs
    name, _, config_hash = feature.partition("@")
    matches = [d for d in dirs if d.name.split("@")[0] == name and d.name.partition("@")[2].startswith(config_hash)]
    if not matches:
        raise CacheError(f"{Path(root) / corpus}: feature {feature!r} is not in the cache; "
                         f"see `mer cache ls {shlex.quote(str(root))}`")
    if len(matches) > 1:
        options = ", ".join(d.name for d in matches)
        raise CacheError(f"{Path(root) / corpus}: {feature!r} exists in several configs ({options}); "
                         "name one as --feature FEATURE@HASH")
    return matches


def _corpus_ids(corpus_dir: Path) -> Optional[set[str]]:
    path = corpus_dir / CORPUS_MANIFEST
    return {u.id for u in read_utterances(path)} if path.is_file() else None


def verify_feature(directory: Path, corpus: str, expected_ids: Optional[set[str]],
                   repair: bool = False) -> FeatureReport:
    report = inspect_feature(directory, corpus, expected_ids)
    if not repair:
        return report
    if not (report.damaged or report.stale_manifest or report.strays or report.lost_spec or report.leftovers):
        return _after_repair(report)
    dropped = repair_feature(Path(directory), corpus, report)
    before, report = report, inspect_feature(directory, corpus, expected_ids)
    report.dropped = dropped
    report.notes += [f"{Path(directory) / SPEC_FILE}: restored; the feature is readable again"] if before.lost_spec else []
    return _after_repair(report, recompute=bool(before.damaged))


def _after_repair(report: FeatureReport, recompute: bool = False) -> FeatureReport:
    """After --repair, utterances not stored are the next `mer extract`'s work, not a fault of the cache.
    `recompute`: the repair dropped shards with their records (not only stray files no record listed)."""
    if report.missing:
        report.problems = [p for p in report.problems if MISSING not in p]
        report.notes.append(f"{report.missing} utterances to compute: run the same `mer extract` again")
    elif report.dropped and recompute:
        report.notes.append("run the same `mer extract` again to recompute the dropped utterances")
    return report


# ---- inspection (no lock: readers never take one) ----------------------------------------------

def inspect_feature(directory: Path, corpus: str, expected_ids: Optional[set[str]],
                    spec: Optional[FeatureSpec] = None) -> FeatureReport:
    """Everything verify checks in one feature folder; `spec` replaces a missing spec.json."""
    directory = Path(directory)
    if spec is None and not (directory / SPEC_FILE).is_file():
        return _inspect_specless(directory, corpus, expected_ids)
    spec = spec or _read_spec(directory)
    report = FeatureReport(corpus, spec.name, spec.config_hash, str(directory), list(spec.row_shape))
    if spec.ignored_keys:
        report.notes.append(f"spec keys from a newer mer ignored: {', '.join(spec.ignored_keys)}")
    records, corrupt = load_records(directory)
    for stem, problem in corrupt.items():
        report.problems.append(problem)
        report.damaged[stem] = problem
    _check_manifest(directory, corpus, spec, records, report)
    seen: Counter = Counter()
    in_damaged: set[str] = set()
    row_check = _row_checker(spec, report)
    for record in (r for r in records if r.file):
        reason = shard_damage(directory, record, spec, row_check)
        if reason:
            problem = f"{directory / record.file}: {reason}, so its {len(record.ids)} utterances are lost; " \
                      f"{repair_command(directory)}"
            report.problems.append(problem)
            report.damaged[Path(record.file).stem] = problem
            in_damaged.update(record.ids)
        else:
            seen.update(record.ids)
    report.stored = len(seen)
    report.failure_reasons = stored_and_failed(records)[1]
    report.failed = len(report.failure_reasons)
    _note_failures(directory, report)
    _check_duplicates(directory, seen, report)
    _check_coverage(directory, expected_ids, set(seen), in_damaged, report)
    _check_stray_files(directory, report)
    _check_dead_writers(directory, report)
    return report


def _read_spec(directory: Path) -> FeatureSpec:
    path = directory / SPEC_FILE
    try:
        return FeatureSpec.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError) as exc:
        raise CacheError(f"{path}: unreadable spec ({' '.join(str(exc).split())}); restore it from the "
                         "\"spec\" of manifest.json next to it") from exc


def spec_copy(directory: Path) -> Optional[dict]:
    """The copy of a lost spec.json that manifest.json or a shard (its `spec` attribute) holds, when one
    is readable and of this folder's config hash; else None."""
    for copy in itertools.chain([_manifest_spec(directory)], map(_shard_spec, sorted(directory.glob("shard-*.h5")))):
        try:
            if copy and FeatureSpec.from_dict(copy).config_hash == directory.name.rpartition("@")[2]:
                return copy
        except (TypeError, ValueError):
            continue
    return None


def _manifest_spec(directory: Path) -> Optional[dict]:
    try:
        return dict(json.loads((directory / MANIFEST_FILE).read_text())["spec"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _shard_spec(path: Path) -> Optional[dict]:
    try:
        with h5py.File(path, "r", locking=False) as f:
            return dict(json.loads(f.attrs["spec"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _inspect_specless(directory: Path, corpus: str, expected_ids: Optional[set[str]]) -> FeatureReport:
    """A folder without spec.json: readers do not see it. Inspected with the copy the manifest or a shard
    holds, which --repair writes back."""
    copy = spec_copy(directory)
    if copy is None:
        return _specless_report(directory, corpus)
    report = inspect_feature(directory, corpus, expected_ids, FeatureSpec.from_dict(copy))
    report.lost_spec = copy
    report.problems.insert(0, f"{directory / SPEC_FILE}: missing, so readers (`mer fuse`, `mer cache ls`) do not "
                              f"see this feature; run `{verify_repair_command(directory)}` (it restores spec.json "
                              "from the copy in manifest.json or a shard)")
    return report


def _specless_report(directory: Path, corpus: str) -> FeatureReport:
    """A folder without spec.json and without a readable copy of it: nothing in it can be read."""
    name, _, config_hash = directory.name.rpartition("@")
    report = FeatureReport(corpus, name or directory.name, config_hash, str(directory), [])
    report.problems.append(f"{directory}: no {SPEC_FILE}, and neither {MANIFEST_FILE} nor a shard holds a copy of "
                           f"it, so nothing here can be read; remove the folder (`rm -r {shlex.quote(str(directory))}`), "
                           "then run the same `mer extract` again")
    return report


def load_records(directory: Path) -> tuple[list[ShardRecord], dict[str, str]]:
    """The readable commit records, and a problem line for each corrupt one (by stem)."""
    records, corrupt = [], {}
    for path in sorted(directory.glob("shard-*.json")):
        try:
            records.append(ShardRecord.load(path))
        except CacheError as exc:
            corrupt[path.stem] = str(exc)
    return records, corrupt


def _check_manifest(directory: Path, corpus: str, spec: FeatureSpec, records: list[ShardRecord],
                    report: FeatureReport) -> None:
    try:
        manifest = read_manifest(directory)
    except CacheError as exc:
        report.problems.append(str(exc))
        report.stale_manifest = True
        return
    wanted = build_manifest(directory, corpus, spec, records)
    if manifest["shards"] != wanted["shards"] or manifest["failures"] != wanted["failures"]:
        report.problems.append(f"{directory / 'manifest.json'}: disagrees with the shard records; run "
                               f"`{verify_repair_command(directory)}` (it rebuilds the manifest from them)")
        report.stale_manifest = True


def shard_damage(directory: Path, record: ShardRecord, spec: FeatureSpec,
                 row_check: Optional[RowCheck] = None) -> Optional[str]:
    """What is wrong with the record's shard, in a few words; None when it is sound. The cheap
    checks come first, and links are refused before the sha256, so that they are named as such."""
    path = directory / record.file
    if not path.is_file():
        return "shard file is missing"
    size = path.stat().st_size
    if size != record.size:
        return f"{size} bytes, its record says {record.size} (truncated)"
    try:
        reader = ShardReader(path)  # refuses links, external storage and virtual datasets
    except CacheError as exc:
        return _reason(exc, path)
    try:
        if sha256_file(path) != record.sha256:
            return "checksum mismatch (the file changed after it was written)"
        if reader.ids != record.ids:
            return "ids differ from its commit record"
        reader.read_extras()
        for utt_id, rows in reader:
            if tuple(rows.shape[1:]) != spec.row_shape:
                return f"{utt_id} has rows of shape {rows.shape[1:]}, the spec says {spec.row_shape}"
            if row_check:
                row_check(path, utt_id, rows)
    except CacheError as exc:
        return _reason(exc, path)
    finally:
        reader.close()
    return None


def _reason(exc: CacheError, path: Path) -> str:
    """The middle of a ShardReader message: without the shard's name and the repair command."""
    return str(exc).removeprefix(f"{path}: ").removesuffix(f"; {repair_command(path.parent)}")


def _row_checker(spec: FeatureSpec, report: FeatureReport) -> RowCheck:
    def check(path: Path, utt_id: str, rows: np.ndarray) -> None:
        if rows.shape[0] == 0:
            report.problems.append(f"{path}: {utt_id} has no frames")
        elif not np.isfinite(rows).all():
            bad = int((~np.isfinite(rows)).sum())
            report.problems.append(f"{path}: {utt_id} holds {bad} NaN/Inf values; re-extract with --dtype float32 "
                                   "or check the input audio")
    return check


def _check_duplicates(directory: Path, seen: Counter, report: FeatureReport) -> None:
    for utt_id, n in seen.items():
        if n > 1:
            root, corpus, feature = (shlex.quote(str(p)) for p in (os.path.abspath(directory.parent.parent),
                                                                    directory.parent.name, directory.name))
            report.problems.append(f"{directory}: {utt_id} is stored {n} times; run `mer cache rm {root} {corpus} "
                                   f"{feature} --yes`, then the same `mer extract` again")


def _note_failures(directory: Path, report: FeatureReport) -> None:
    """Recorded failures are not a problem of the cache, but --strict counts them: say which."""
    if report.failed:
        utt_id, reason = min(report.failure_reasons.items())
        report.notes.append(f"{directory}: {report.failed} utterances recorded as failed (e.g. {utt_id}: "
                            f"{' '.join(str(reason).split())}); --strict counts them as problems; the same "
                            "`mer extract` with --retry-failed tries them again")


def _check_coverage(directory: Path, expected_ids: Optional[set[str]], stored: set[str], in_damaged: set[str],
                    report: FeatureReport) -> None:
    """`missing` counts every utterance neither stored nor failed (with those of damaged shards, so the
    counts add up to the corpus); the problem line names the ones no damaged shard explains."""
    if expected_ids is None:
        return
    report.missing = len(expected_ids - stored - set(report.failure_reasons))
    missing = expected_ids - stored - in_damaged - set(report.failure_reasons)
    if missing:
        example = ", ".join(sorted(missing)[:3])
        report.problems.append(f"{directory}: {len(missing)} {MISSING} (e.g. {example}); "
                               "run the same `mer extract` again to fill them")


def _check_stray_files(directory: Path, report: FeatureReport) -> None:
    for path in stray_shards(directory):
        report.strays.append(str(path))
        report.problems.append(f"{path}: no commit record lists this shard file (its record was lost, or a writer "
                               f"died before writing it); run `{verify_repair_command(directory)}` to remove it "
                               "(the next `mer extract` removes it too)")


def _check_dead_writers(directory: Path, report: FeatureReport) -> None:
    for path in dead_claims(directory) + orphan_temps(directory):
        report.leftovers.append(str(path))
        report.problems.append(f"{path}: left by a writer that died; run `{verify_repair_command(directory)}` to "
                               "remove it (the next `mer extract` removes it too)")


def dead_claims(directory: Path) -> list[Path]:
    """Claims whose lock is free: their writer died (a live writer keeps its claim locked)."""
    dead = []
    for path in sorted(directory.glob("shard-*.claim")):
        held = try_lock(path, create=False)
        if held is not None:
            held.release()
            dead.append(path)
    return dead


def orphan_temps(directory: Path) -> list[Path]:
    """Temporary shard files of no claim at all (a dead claim's go with it)."""
    claims = {p.name.split(".")[0] for p in directory.glob("shard-*.claim")}
    return [p for p in sorted(directory.glob("shard-*.h5.tmp-*")) if p.name.split(".")[0] not in claims]


# ---- repair (under the feature's lock, like every writer) -----------------------------------------

def repair_feature(directory: Path, corpus: str, report: FeatureReport) -> list[str]:
    """Drop what `report` found damaged (checked again under the lock: a writer may have replaced it
    meanwhile), remove stray shards, rebuild manifest.json. Returns one line per thing removed."""
    dropped = []
    with _repair_lock(directory):
        dropped += _remove_leftovers(directory)
        if report.lost_spec and not (directory / SPEC_FILE).exists():
            atomic_write_json(directory / SPEC_FILE, report.lost_spec)
        spec = _read_spec(directory)
        for stem in report.damaged:
            line = _drop_if_still_damaged(directory, stem, spec)
            if line:
                dropped.append(line)
        for path in stray_shards(directory):
            path.unlink(missing_ok=True)
            dropped.append(f"{path}: removed (no commit record lists it)")
        records, _ = load_records(directory)  # a record corrupted meanwhile waits for the next repair
        manifest = build_manifest(directory, corpus, spec, records)
        manifest["spec"] = json.loads((directory / SPEC_FILE).read_text())  # keeps a newer version's keys
        write_manifest(directory, manifest)
    return dropped


def _repair_lock(directory: Path):
    """The feature's lock, which --repair needs like every writer; one line when the cache is read-only here."""
    try:
        return lock(directory / LOCK_FILE)
    except ReadOnlyCache:
        raise CacheError(f"{directory}: cannot write here, and --repair must (it removes and rewrites files under "
                         "the feature's lock); run it as a user who can write the cache, or where it is mounted "
                         "read-write") from None


def _remove_leftovers(directory: Path) -> list[str]:
    """A dead writer's claims (with their temporary and unrecorded files) and temporary files of no claim."""
    removed = []
    for path in dead_claims(directory):
        held = try_lock(path, create=False)
        if held is not None:  # still dead: its lock is ours now
            removed.append(f"{path}: removed (its writer died) with {reap_claim(directory, path, held)} files it left")
    for path in orphan_temps(directory):
        path.unlink(missing_ok=True)
        removed.append(f"{path}: removed (a temporary file of a writer that died)")
    return removed


def _drop_if_still_damaged(directory: Path, stem: str, spec: FeatureSpec) -> Optional[str]:
    path = directory / f"{stem}.json"
    if not path.is_file():
        return None
    try:
        record = ShardRecord.load(path)
    except CacheError:
        drop_shard(directory, stem)
        return f"{path}: dropped (corrupt record) with {stem}.h5"
    reason = shard_damage(directory, record, spec) if record.file else None
    if not reason:
        return None
    drop_shard(directory, stem)
    return f"{directory / record.file}: dropped ({reason}) with its record; {len(record.ids)} utterances to recompute"
