"""Reading a feature cache: list corpora and features, random access by id, streaming by
shard, look-up by config hash. Readers take no locks and see only committed shards."""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from mer.cache.corpus import extract_command
from mer.cache.layout import CORPUS_MANIFEST, MANIFEST_FILE, SPEC_FILE
from mer.cache.manifest import read_manifest
from mer.cache.shard import ShardReader
from mer.data.utterance import Utterance, read_utterances
from mer.errors import CacheError
from mer.cache.spec import FeatureSpec


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
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if p.is_dir() and ((p / CORPUS_MANIFEST).is_file() or any(p.glob(f"*/{SPEC_FILE}"))))

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

    def __init__(self, directory: Path, max_open_shards: int = 16):
        self.directory = Path(directory)
        self._max_open = max_open_shards
        self._open: OrderedDict[str, ShardReader] = OrderedDict()
        self.refresh()

    def refresh(self) -> None:
        """Re-read the manifest to see shards committed since this store was opened."""
        self.manifest = read_manifest(self.directory)
        self.spec = FeatureSpec.from_dict(self.manifest["spec"])
        self._shard_of = {utt_id: shard["file"] for shard in self.manifest["shards"] for utt_id in shard["ids"]}

    @property
    def failures(self) -> dict[str, str]:
        return self.manifest["failures"]

    def ids(self) -> list[str]:
        return list(self._shard_of)

    def __contains__(self, utt_id: str) -> bool:
        return utt_id in self._shard_of

    def __len__(self) -> int:
        return len(self._shard_of)

    def get(self, utt_id: str) -> np.ndarray:
        if utt_id not in self._shard_of:
            reason = self.failures.get(utt_id)
            detail = f"extraction failed: {reason}" if reason else "not extracted"
            raise KeyError(f"{utt_id}: {detail} ({self.directory})")
        return self._shape(self._shard(self._shard_of[utt_id]).get(utt_id))

    def extra(self, name: str, utt_id: str) -> np.ndarray:
        return self._shard(self._shard_of[utt_id]).extra(name, utt_id)

    def iter_shards(self) -> Iterator[tuple[str, ShardReader]]:
        for shard in self.manifest["shards"]:
            reader = ShardReader(self.directory / shard["file"])
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

    def _shard(self, file: str) -> ShardReader:
        if file in self._open:
            self._open.move_to_end(file)
            return self._open[file]
        reader = ShardReader(self.directory / file)
        self._open[file] = reader
        if len(self._open) > self._max_open:
            self._open.popitem(last=False)[1].close()
        return reader

    def close(self) -> None:
        for reader in self._open.values():
            reader.close()
        self._open.clear()
