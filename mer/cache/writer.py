"""Writing one feature of one corpus into a shared cache, safely from many processes at once.

Protocol (every step that reads or changes the set of shards runs under the feature's
`.lock`, a POSIX lock the kernel drops when its owner dies):
  claim   pick utterances that are neither stored, failed, nor claimed by a live writer;
          create `shard-NNNNN.claim` and keep it locked for as long as the work runs.
  work    (no lock) write `shard-NNNNN.h5.tmp-<token>`: any process may do this.
  commit  rename the temporary file to `shard-NNNNN.h5`, write `shard-NNNNN.json` (the
          commit record), delete the claim, rebuild `manifest.json` atomically.
A claim whose lock is free belongs to a dead writer: the next writer removes it and its
temporary or uncommitted files, and the utterances become pending again. So a writer
killed at any moment leaves no partial shard and no utterance stored twice."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from mer.cache.layout import (LOCK_FILE, SPEC_FILE, atomic_write_json, check_corpus_name, feature_dir_name,
                              make_cache_folder, shard_name)
from mer.cache.locks import READ_ONLY_ERRNOS, FolderRemoved, HeldLock, ReadOnlyCache, is_held_here, lock, try_lock
from mer.cache.manifest import (ShardRecord, build_manifest, drop_shard, next_free_index, read_shard_records,
                                stored_and_failed, stray_shards, write_manifest)
from mer.cache.shard import to_storage, write_shard
from mer.hashing import sha256_file
from mer.errors import CacheError
from mer.cache.spec import FeatureSpec

# Claims this process holds, by path: their ids count as claimed, and their files must never
# be opened here through a second descriptor (that would drop the POSIX lock).
_own_claims: dict[str, list[str]] = {}


@dataclass
class Claim:
    feature_dir: Path
    index: int
    ids: list[str]
    held: HeldLock

    @property
    def name(self) -> str:
        return shard_name(self.index)


@dataclass
class CacheState:
    stored: set[str]
    failed: dict[str, str]
    claimed: set[str]
    records: list[ShardRecord]


class FeatureWriter:
    def __init__(self, cache_root: Path, corpus: str, spec: FeatureSpec, compression: Optional[str] = None):
        self.corpus = corpus
        self.spec = spec
        self.compression = compression
        check_corpus_name(corpus, cache_root)
        self.dir = Path(cache_root) / corpus / feature_dir_name(spec)
        self._lock_path = self.dir / LOCK_FILE
        self._records_memo: dict[str, ShardRecord] = {}
        try:
            make_cache_folder(self.dir)
            self._ensure_spec()
        except OSError as exc:
            if exc.errno not in READ_ONLY_ERRNOS:
                raise
            raise CacheError(f"{self.dir}: cannot write here ({exc.strerror}) and the cache does not hold "
                             f"{spec.name}; pass --cache a writable folder") from None

    def _ensure_spec(self) -> None:
        path = self.dir / SPEC_FILE
        wanted = self.spec.to_dict()
        if path.is_file():
            found = json.loads(path.read_text())
            if found.get("config_hash") != wanted["config_hash"]:
                raise CacheError(f"{path}: holds config {found.get('config_hash')}, expected "
                                 f"{wanted['config_hash']}; the folder was renamed by hand: remove it")
            return
        atomic_write_json(path, wanted)

    # ---- state -------------------------------------------------------------------------
    def state(self) -> CacheState:
        """Stored, failed and claimed ids. Call under the lock to act on it."""
        records = self._intact_records()
        stored, failed = stored_and_failed(records)
        claimed: set[str] = set()
        for claim_path in sorted(self.dir.glob("shard-*.claim")):
            ids = self._live_claim_ids(claim_path)
            if ids is not None:
                claimed.update(ids)
        if is_held_here(self._lock_path):  # after the reaping: a shard whose record was lost, recomputed anew
            for path in stray_shards(self.dir):
                path.unlink(missing_ok=True)
        return CacheState(stored, failed, claimed, records)

    def _intact_records(self) -> list[ShardRecord]:
        """The records whose shard is present at its recorded size (a cheap check, every run; verify
        --repair does the sha256). The others count as pending, and under the lock they are dropped,
        record and file, so the next claim recomputes their ids."""
        records = read_shard_records(self.dir, self._records_memo)
        damaged = [r for r in records if r.file and not _has_size(self.dir / r.file, r.size)]
        if damaged and is_held_here(self._lock_path):
            for record in damaged:
                drop_shard(self.dir, shard_name(record.index))
            self._write_manifest()
        return [r for r in records if r not in damaged]

    def _live_claim_ids(self, claim_path: Path) -> Optional[list[str]]:
        if str(claim_path) in _own_claims:
            return _own_claims[str(claim_path)]
        held = try_lock(claim_path, create=False)
        if held is None:  # locked by a live writer (or already gone)
            try:
                return json.loads(claim_path.read_text())["ids"]
            except (OSError, ValueError, KeyError):
                return []  # being created this instant (we hold .lock, so it cannot be) or gone
        reap_claim(self.dir, claim_path, held)
        return None

    def pending(self, ids: Iterable[str], retry_failed: bool = False) -> list[str]:
        state = self.state()
        return [i for i in ids if i not in state.stored and i not in state.claimed
                and (retry_failed or i not in state.failed)]

    # ---- claim, commit, release ----------------------------------------------------------
    def claim(self, ids: list[str], retry_failed: bool = False) -> Optional[Claim]:
        """Claim the pending subset of `ids` as one new shard; None when nothing is pending (also
        on a read-only cache, where anything pending is an error)."""
        try:
            held = self._lock()
        except ReadOnlyCache as exc:
            self._check_nothing_pending(ids, retry_failed, exc)
            return None
        with held, self._removed_meanwhile():
            state = self.state()
            todo = [i for i in ids if i not in state.stored and i not in state.claimed
                    and (retry_failed or i not in state.failed)]
            if not todo:
                return None
            index = next_free_index(self.dir)
            claim_path = self.dir / f"{shard_name(index)}.claim"
            held = try_lock(claim_path)
            if held is None and str(claim_path) in _own_claims:  # our own claim vanished: the folder is going
                raise feature_removed(self.dir)
            if held is None:
                raise CacheError(f"{claim_path}: could not lock a new claim file; the filesystem does not support locks")
            held.write(json.dumps({"ids": todo, "host": socket.gethostname(), "pid": os.getpid(),
                                   "created": time.time()}).encode())
            _own_claims[str(claim_path)] = todo
            return Claim(self.dir, index, todo, held)

    def write_temp(self, claim: Claim, arrays: dict[str, np.ndarray],
                   extras: Optional[dict[str, dict]] = None) -> Optional[Path]:
        """Write the claim's successful utterances to a temporary shard (no lock: the heavy part)."""
        return write_temp_shard(self.dir, claim.index, self.spec, claim.ids, arrays, extras, self.compression)

    def commit(self, claim: Claim, temp_path: Optional[Path], failures: dict[str, str]) -> ShardRecord:
        """Make the shard visible: rename, record, drop the claim, rebuild the manifest."""
        unknown = set(failures) - set(claim.ids)
        if unknown:
            raise CacheError(f"{claim.name}: failures for ids outside the claim: {sorted(unknown)[:3]}")
        with self._lock(), self._removed_meanwhile():
            ids, rows, size, sha = [], 0, 0, None
            final = None
            if temp_path is not None:
                final = self.dir / f"{claim.name}.h5"
                sha = sha256_file(temp_path)
                size = temp_path.stat().st_size
                ids, rows = _ids_and_rows(temp_path)
                os.replace(temp_path, final)
            record = ShardRecord(index=claim.index, file=final.name if final else None, sha256=sha, size=size,
                                 ids=ids, rows=rows, failures=dict(failures), created=time.time(),
                                 host=socket.gethostname())
            atomic_write_json(self.dir / f"{claim.name}.json", record.__dict__)
            self._drop_claim(claim)
            self._write_manifest()
        return record

    def release(self, claim: Claim) -> None:
        """Give a claim back uncommitted (an interrupted run): its ids become pending again.
        In a removed feature folder there is nothing left to give back but the lock."""
        try:
            held = self._lock()
        except FolderRemoved:
            self._drop_claim(claim)
            return
        with held:
            for tmp in self.dir.glob(f"{claim.name}.h5.tmp-*"):
                tmp.unlink(missing_ok=True)
            self._drop_claim(claim)

    def _drop_claim(self, claim: Claim) -> None:
        claim_path = self.dir / f"{claim.name}.claim"
        claim_path.unlink(missing_ok=True)
        _own_claims.pop(str(claim_path), None)
        claim.held.release()

    def _write_manifest(self) -> None:
        records = read_shard_records(self.dir, self._records_memo)
        write_manifest(self.dir, build_manifest(self.dir, self.corpus, self.spec, records))

    def refresh_manifest(self) -> None:
        """Reap dead claims and rebuild the manifest; nothing to do in a removed or read-only folder."""
        try:
            held = self._lock()
        except (FolderRemoved, ReadOnlyCache):
            return
        with held, contextlib.suppress(FolderRemoved), self._removed_meanwhile():
            self.state()  # reaps dead claims
            self._write_manifest()

    def _lock(self) -> HeldLock:
        """The feature's `.lock`, in a folder that still exists (it is never recreated: `mer cache rm`
        may have removed it, or renamed it away while this process waited)."""
        try:
            held = lock(self._lock_path)
        except FolderRemoved:
            raise feature_removed(self.dir) from None
        if not self.dir.is_dir():
            held.release()
            raise feature_removed(self.dir)
        return held

    @contextlib.contextmanager
    def _removed_meanwhile(self):
        """A file vanishing under the lock means the folder went (removed by other means than `cache rm`)."""
        try:
            yield
        except OSError:
            if not self.dir.is_dir():
                raise feature_removed(self.dir) from None
            raise

    def _check_nothing_pending(self, ids: list[str], retry_failed: bool, read_only: ReadOnlyCache) -> None:
        stored, failed = stored_and_failed(self._intact_records())  # a truncated or missing shard is pending
        todo = [i for i in ids if i not in stored and (retry_failed or i not in failed)]
        if todo:
            raise ReadOnlyCache(f"{self.dir}: cannot write here, and some utterances (e.g. {todo[0]}) still need "
                                f"{self.spec.name}; pass --cache a writable folder") from read_only


def write_temp_shard(feature_dir: Path, index: int, spec: FeatureSpec, claim_ids: list[str],
                     arrays: dict[str, np.ndarray], extras: Optional[dict[str, dict]] = None,
                     compression: Optional[str] = None) -> Optional[Path]:
    """Any process may call this for a claim another process holds. Each call writes its own
    temporary file, so a retried task never shares one with a lost worker."""
    ids = [i for i in claim_ids if i in arrays]
    if not ids:
        return None
    path = Path(feature_dir) / f"{shard_name(index)}.h5.tmp-{uuid.uuid4().hex[:8]}"
    stored = [to_storage(arrays[i], spec, i) for i in ids]
    try:
        write_shard(path, spec, ids, stored, [extras[i] for i in ids] if extras else None, compression)
    except OSError:
        if not Path(feature_dir).is_dir():
            raise feature_removed(feature_dir) from None
        raise
    return path


def reap_claim(feature_dir: Path, claim_path: Path, held: HeldLock) -> int:
    """The claim's owner died (`held`: its free lock, taken; call under the feature's lock): remove its
    temporary files and any shard it renamed but never recorded. Returns how many files went with it."""
    name = claim_path.name[: -len(".claim")]
    leftovers = list(Path(feature_dir).glob(f"{name}.h5.tmp-*"))
    if not (Path(feature_dir) / f"{name}.json").exists():
        leftovers += [p for p in [Path(feature_dir) / f"{name}.h5"] if p.exists()]
    for path in leftovers:
        path.unlink(missing_ok=True)
    claim_path.unlink(missing_ok=True)
    held.release()
    return len(leftovers)


def feature_removed(feature_dir: Path) -> FolderRemoved:
    return FolderRemoved(f"{feature_dir}: feature folder removed (by `mer cache rm`?) while this run wrote it; "
                         "run the same `mer extract` again to recompute it")


def _has_size(path: Path, size: int) -> bool:
    try:
        return path.stat().st_size == size
    except FileNotFoundError:
        return False


def _ids_and_rows(path: Path) -> tuple[list[str], int]:
    import h5py

    with h5py.File(path, "r", locking=False) as f:
        ids = [s.decode() if isinstance(s, bytes) else s for s in f["ids"][()]]
        return ids, int(f["offsets"][-1])
