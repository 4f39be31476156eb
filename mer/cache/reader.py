"""Reading a feature cache: list corpora and features, random access by id, streaming by
shard, reading many ids with one call per shard, look-up by config hash. Readers take no locks
and see only committed shards.

Random access (`FeatureStore.get`) keeps shard handles open, up to `open_file_budget()` for
the whole process (every store shares it, least recently used closed first), each with a chunk
cache of HANDLE_CHUNK_CACHE: a read by id decodes a whole chunk (checksummed), and the cache
spares the next read of that chunk. So random access holds at most the budget's handles and
their caches (RANDOM_ACCESS_BYTES). `read_many` keeps its handles open in the same budget but
without a chunk cache (it reads whole rows in one call, so a cache would only hold memory):
opening a shard costs about 0.5 ms, as much as reading a MELD-sized shard, and a training pass
opens every shard again each epoch; what a pass leaves open is a handle's metadata, not rows.
`iter_shards` opens a shard for one read and closes it."""

from __future__ import annotations

import itertools
import os
import resource
import weakref
from collections import OrderedDict, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional

import numpy as np

from mer.cache.corpus import extract_command
from mer.cache.layout import CORPUS_MANIFEST, MANIFEST_FILE, SPEC_FILE
from mer.cache.manifest import read_manifest
from mer.cache.shard import IdNotStored, ShardReader
from mer.data.utterance import Utterance, read_utterances
from mer.errors import CacheError
from mer.cache.spec import FeatureSpec

FD_HEADROOM = 256  # descriptors left to everything else a process opens (sockets, logs, DataLoader pipes)
MIN_OPEN_SHARDS = 8
HANDLE_CHUNK_CACHE = 4 << 20  # per random-access handle: a MELD-sized shard's chunks, a few of a WavLM-frame shard's
STREAM_CHUNK_CACHE = 0  # per read_many handle: whole rows are read once, nothing to keep
RANDOM_ACCESS_BYTES = 2 << 30  # chunk caches of all open handles together, at most


def open_file_budget() -> int:
    """Shard files one process keeps open for random access: half the soft RLIMIT_NOFILE, at least
    FD_HEADROOM below it (a forked DataLoader worker inherits the parent's descriptors), and no more
    than RANDOM_ACCESS_BYTES of chunk caches."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 16
    return max(MIN_OPEN_SHARDS, min(soft // 2, soft - FD_HEADROOM, RANDOM_ACCESS_BYTES // HANDLE_CHUNK_CACHE))


class _OpenShards:
    """The process's shard handles for random access, least recently used closed first. Keyed by
    (store, file): a store never reads another store's handle, so a shard replaced on disk (a
    repair, a re-extraction) is opened afresh by the next store. A forked child starts empty and
    never touches the parent's handles (HDF5 state must not cross a fork); they are kept, unused."""

    def __init__(self):
        self.budget = open_file_budget()
        self._open: OrderedDict[tuple[int, str, int], ShardReader] = OrderedDict()
        self._inherited: list = []

    def get(self, key: tuple[int, str, int], store: "FeatureStore") -> ShardReader:
        """The handle of (store, file, chunk cache bytes), opened by `store` with that chunk cache if it is not open."""
        reader = self._open.get(key)
        if reader is not None:
            self._open.move_to_end(key)
            return reader
        reader = store.open_shard(key[1], chunk_cache_bytes=key[2])
        self._open[key] = reader
        if len(self._open) > self.budget:
            self._open.popitem(last=False)[1].close()
        return reader

    def close(self, store: int) -> None:
        for key in [key for key in self._open if key[0] == store]:
            self._open.pop(key).close()

    def forget(self) -> None:
        self._inherited.append(self._open)
        self._open = OrderedDict()


_OPEN_SHARDS = _OpenShards()
os.register_at_fork(after_in_child=_OPEN_SHARDS.forget)
_store_numbers = itertools.count()


@dataclass
class FeatureInfo:
    corpus: str
    directory: Path
    spec: FeatureSpec
    num_utterances: int
    num_failures: int
    num_shards: int

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def config_hash(self) -> str:
        return self.spec.config_hash


class FeatureCache:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def corpora(self) -> list[str]:
        """Folders with a corpus manifest or a feature (found by its spec.json, or its manifest.json when
        the spec is lost: verify finds and repairs it)."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and (
            (p / CORPUS_MANIFEST).is_file() or any(p.glob(f"*/{SPEC_FILE}")) or any(p.glob(f"*/{MANIFEST_FILE}"))))

    def corpus(self, corpus: str) -> str:
        """`corpus` when the cache has it; else one line naming the corpora it has (a mistyped name)."""
        corpora = self.corpora()
        if corpus not in corpora:
            has = f"it has {', '.join(corpora)}" if corpora else "it has none (mer extract --cache fills it)"
            raise CacheError(f"{self.root}: no corpus {corpus!r} in this cache; {has}")
        return corpus

    def utterances(self, corpus: str) -> list[Utterance]:
        path = self.root / corpus / CORPUS_MANIFEST
        if not path.is_file():
            raise CacheError(f"{path}: no corpus manifest; run {extract_command(self.root, corpus, 'FEATURE')} "
                             "with any FEATURE of `mer list extractors`")
        return read_utterances(path)

    def features(self, corpus: str) -> list[FeatureInfo]:
        infos = []
        for spec_path in sorted((self.root / corpus).glob(f"*/{SPEC_FILE}")):
            manifest = read_manifest(spec_path.parent)
            infos.append(FeatureInfo(corpus, spec_path.parent, FeatureSpec.from_dict(manifest["spec"]),
                                     manifest["num_utterances"], manifest["num_failures"], len(manifest["shards"])))
        return infos

    def find(self, corpus: str, feature: str, config_hash: Optional[str] = None) -> FeatureInfo:
        """The feature named `feature` (or `name@hash` directory); `config_hash` (a prefix) picks among configs."""
        name = feature.partition("@")[0]
        matches = self.configs(corpus, feature, config_hash)
        if not matches:
            raise CacheError(f"{self.root / corpus}: feature {feature!r} is not in the cache; run "
                             f"{extract_command(self.root, corpus, name)}")
        if len(matches) > 1:
            options = ", ".join(f"{f.name}@{f.config_hash}" for f in matches)
            raise CacheError(f"{self.root / corpus}: {feature!r} exists in several configs ({options}); name one as FEATURE@HASH")
        return matches[0]

    def configs(self, corpus: str, feature: str, config_hash: Optional[str] = None) -> list[FeatureInfo]:
        """Every cached config of `feature` (`name` or `name@hash`; `config_hash`, a prefix, narrows)."""
        name, _, hash_from_name = feature.partition("@")
        config_hash = config_hash or hash_from_name or None
        matches = [f for f in self.features(corpus) if f.name == name or f.directory.name.split("@")[0] == name]
        return [f for f in matches if f.config_hash.startswith(config_hash)] if config_hash else matches

    def by_hash(self, config_hash: str) -> list[FeatureInfo]:
        return [f for corpus in self.corpora() for f in self.features(corpus) if f.config_hash.startswith(config_hash)]

    def open(self, corpus: str, feature: str, config_hash: Optional[str] = None) -> "FeatureStore":
        return FeatureStore(self.find(corpus, feature, config_hash).directory)


class FeatureStore:
    """One feature of one corpus. Arrays come back in the stored dtype: (frames, *row_shape),
    or (*row_shape,) for utterance granularity."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self._number = next(_store_numbers)
        weakref.finalize(self, _OPEN_SHARDS.close, self._number)  # a dropped store's handles go with it
        self.refresh()

    def refresh(self) -> None:
        """Re-read the manifest to see shards committed since this store was opened."""
        _OPEN_SHARDS.close(self._number)
        self.manifest = read_manifest(self.directory)
        self.spec = FeatureSpec.from_dict(self.manifest["spec"])
        self._shard_of = {utt_id: shard["file"] for shard in self.manifest["shards"] for utt_id in shard["ids"]}
        self._ids_of = {shard["file"]: shard["ids"] for shard in self.manifest["shards"]}

    @property
    def failures(self) -> dict[str, str]:
        return self.manifest["failures"]

    def ids(self) -> list[str]:
        return list(self._shard_of)

    def shard_files(self) -> list[str]:
        """The shard files, in manifest order."""
        return [shard["file"] for shard in self.manifest["shards"]]

    def shard_of(self, utt_id: str) -> str:
        """The shard file holding `utt_id` (IdNotStored, a KeyError, naming why when none does)."""
        if utt_id not in self._shard_of:
            reason = self.failures.get(utt_id)
            detail = f"its extraction failed: {reason}" if reason else "not extracted"
            raise IdNotStored(f"{self.directory}: {self.spec.name} holds no utterance {utt_id!r} ({detail})")
        return self._shard_of[utt_id]

    def __contains__(self, utt_id: str) -> bool:
        return utt_id in self._shard_of

    def __len__(self) -> int:
        return len(self._shard_of)

    def get(self, utt_id: str) -> np.ndarray:
        return self._shape(self._shard(self.shard_of(utt_id)).get(utt_id))

    def read_many(self, utt_ids: Iterable[str]) -> Iterator[tuple[str, np.ndarray]]:
        """(id, array) for each distinct id, shard by shard in manifest order (read_rows). The arrays are
        views of a shard's read: copy what you keep."""
        for ids, arrays in self.read_rows(utt_ids):
            for utt_id, array in zip(ids, arrays):
                yield utt_id, self._shape(array)

    def read_rows(self, utt_ids: Iterable[str]) -> Iterator[tuple[list[str], list[np.ndarray]]]:
        """(ids, their (rows, *row_shape) arrays) per shard holding any of the distinct `utt_ids`, in manifest
        order: ONE read per shard (ShardReader.get_many) through a handle without a chunk cache, kept open in
        the process's budget, so memory is bounded by one shard's rows. The arrays are views of that read."""
        by_shard: dict[str, list[str]] = defaultdict(list)
        for utt_id in dict.fromkeys(utt_ids):
            by_shard[self._shard_of.get(utt_id) or self.shard_of(utt_id)].append(utt_id)  # shard_of: the KeyError
        for file in (f for f in self.shard_files() if f in by_shard):
            yield by_shard[file], self._shard(file, STREAM_CHUNK_CACHE).get_many(by_shard[file])

    def extra(self, name: str, utt_id: str) -> np.ndarray:
        return self._shard(self.shard_of(utt_id)).extra(name, utt_id)

    def iter_shards(self) -> Iterator[tuple[str, ShardReader]]:
        for shard in self.manifest["shards"]:
            reader = self.open_shard(shard["file"])
            try:
                yield shard["file"], reader
            finally:
                reader.close()

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        """Stream every (id, array) shard by shard: memory bounded by one shard."""
        for _, reader in self.iter_shards():
            for utt_id, array in reader:
                yield utt_id, self._shape(array)

    def _shape(self, array: np.ndarray) -> np.ndarray:
        return array[0] if self.spec.granularity == "utterance" else array

    def _shard(self, file: str, chunk_cache_bytes: int = HANDLE_CHUNK_CACHE) -> ShardReader:
        return _OPEN_SHARDS.get((self._number, file, chunk_cache_bytes), self)

    def open_shard(self, file: str, chunk_cache_bytes: Optional[int] = None) -> ShardReader:
        """A new reader of `file`, refused (one line) unless the ids it holds are those the manifest records."""
        return ShardReader(self.directory / file, chunk_cache_bytes, expected_ids=self._ids_of[file])

    def close(self) -> None:
        _OPEN_SHARDS.close(self._number)
