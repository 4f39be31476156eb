"""Batches for the fusion models, read from the feature cache with bounded memory.

    data = FusionData(cache_root, "meld", "mfcc40", "bert-base-uncased", fold_set.folds[0],
                      fold_set.targets, fold_set.labels, sample_unit="utterance",
                      max_audio_frames=1000, max_text_len=None, normalize=True)
    print(data.summary())                          # features, sizes, dropped ids and why, cuts
    data.norm_stats.save(run_dir / "norm_stats.npz")
    model = build_model(name, data.num_classes, data.input_dims, config)
    for batch in data.loader("train", batch_size=32, shuffle=True, seed=seed, num_workers=2): ...

What happens, in order (all of it at construction, BEFORE any training):

* Features. `audio_feature` / `text_feature` name cache features of `corpus` (`name`,
  `name@hash`, or `a+b`: features of one granularity joined on the last axis, CM-RoBERTa's
  openSMILE + OpenL3). Either may be None (unimodal baselines): the batch then has no
  `audio`/`audio_mask` (or `text`/`text_mask`) keys and `input_dims` gives None for it. A
  feature that is not in the cache raises the cache's one-line CacheError (a MerError) that
  names the `mer extract --dataset <corpus> --features <name> --cache <root>` command.
  Rows of shape (layers, dim) (multi-layer SSL/text features) are flattened to layers*dim.
* Lengths come from the shards' `offsets` alone (`shard_lengths`; no feature data is read).
* Dropping. A fold utterance missing from any feature (extraction failed, not extracted, or
  stored with zero rows) is dropped from its split; `dropped` maps id -> reason and
  `summary()` counts them per split and reason. A split left empty by dropping is an error.
* Cutting. A sequence longer than `max_audio_frames` / `max_text_len` keeps its FIRST rows
  (the start of the utterance); how many were cut is reported. For `a+b` features of
  frame/word/token level the parts are cut to the shorter one (a frame-rate rounding
  difference) and the count of such utterances is reported.
* Dialogue mode (`sample_unit="dialogue"`, CM-RoBERTa): one sample is the utterances of one
  dialogue that are in the split, in turn order (then manifest order), from the corpus
  manifest `CACHE/<corpus>/utterances.jsonl`. A frame/word/token-level feature is cut as
  above and MEAN-POOLED per utterance. An utterance without a dialogue is a dialogue of one.
  A dialogue split between two parts of a fold (IEMOCAP leave-one-speaker-out) gives each
  part only its own utterances.
* Normalisation. Per-dimension mean and (population) std of exactly what the model receives
  before normalisation (the cut rows; in dialogue mode the pooled vectors), over the KEPT
  TRAINING utterances only, streamed shard by shard with float64 moments (never the whole
  feature in memory). Dimensions with std < 1e-6 are only centred. `normalize` is a bool or
  {"audio": bool, "text": bool}; `norm_stats=` reuses saved statistics (`NormStats.load`)
  instead of computing them (prediction). Applied per batch in `FusionCollate`; padding
  stays exactly 0.
* Access. `FusionDataset` reads items by id through FeatureStore.get (random access; an LRU
  of open shards); stores are opened lazily in each process, so DataLoader workers never
  share an HDF5 handle with the parent (fork or spawn). `preload=True` reads the needed ids
  once, streaming, into memory in the stored dtype (float16 usually; pooled vectors float32)
  for small caches such as the demo.
* Batching. `BucketBatchSampler`: training batches come from length-sorted buckets, shuffled
  within buckets and in batch order by a generator seeded with (seed, epoch); evaluation
  order is deterministic (longest first). `batching="random"` (a model's config.batching)
  draws training batches from a seeded permutation instead, lengths mixed.
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections import Counter, OrderedDict, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler, get_worker_info

from mer.cache.corpus import extract_command
from mer.cache.reader import FeatureCache, FeatureStore
from mer.data.protocols import PARTS, Fold, FoldSet
from mer.data.utterance import Label, Utterance
from mer.errors import MerError

ROLES = ("audio", "text")
SAMPLE_UNITS = ("utterance", "dialogue")
BATCHINGS = ("bucket", "random")  # as mer.fuse.models.base.BATCHINGS
IGNORE_LABEL = -100  # as mer.fuse.models.base.IGNORE_LABEL (CrossEntropyLoss's ignore_index)
MIN_STD = 1e-6  # dims whose training std is below this are centred, not scaled
TARGET_ROLE = "target"  # the NormStats entry of dimensional targets' z-normalisation
STATS_BLOCK_ELEMENTS = 1 << 22  # rows x dim gathered before one float64 moment update (32 MiB)
TORCH_GRAIN = 32768  # elements: torch runs a copy of at most this many on the calling thread (at::internal::GRAIN_SIZE)


# ----------------------------------------------------------------------------- lengths


def shard_lengths(store: FeatureStore) -> dict[str, int]:
    """Rows stored per id, read from each shard's `offsets` (and `ids`) only: no feature data
    is read. Utterance-level features give 1."""
    lengths: dict[str, int] = {}
    for _, reader in store.iter_shards():
        for utt_id, rows in zip(reader.ids, np.diff(reader.offsets)):
            lengths[utt_id] = int(rows)
    return lengths


def _flat(array: np.ndarray) -> np.ndarray:
    """(rows, *row_shape) or (*row_shape,) of an utterance-level store -> (rows, dim)."""
    if array.ndim == 2:
        return array
    return array.reshape(1, -1) if array.ndim == 1 else array.reshape(len(array), -1)


# ----------------------------------------------------------------------------- features


@dataclass(frozen=True)
class FeatureSource:
    """One input of the model: a cache feature, or several joined on the last axis (`a+b`)."""

    role: str  # "audio" | "text"
    name: str  # as given: "mfcc40", "opensmile-egemaps+openl3-6144-mean"
    components: tuple[str, ...]
    directories: tuple[Path, ...]
    dims: tuple[int, ...]  # flattened dim of each component
    granularity: str
    config_hashes: tuple[str, ...]
    dtypes: tuple[str, ...]

    @property
    def dim(self) -> int:
        return sum(self.dims)

    def to_dict(self) -> dict:
        return {"name": self.name, "components": list(self.components), "dims": list(self.dims), "dim": self.dim,
                "granularity": self.granularity, "config_hashes": list(self.config_hashes),
                "dtypes": list(self.dtypes)}


def open_source(cache: FeatureCache, corpus: str, role: str, name: str) -> tuple[FeatureSource, list[FeatureStore]]:
    """Resolve a feature name (`a+b` joins features); a missing one raises the cache's
    CacheError naming the `mer extract` command that would produce it."""
    components = tuple(part.strip() for part in name.split("+"))
    if not all(components):
        raise MerError(f"{role} feature {name!r}: empty name between '+' signs; write e.g. a+b")
    stores = [cache.open(corpus, component) for component in components]
    granularities = {store.spec.granularity for store in stores}
    if len(granularities) > 1:
        listed = ", ".join(f"{c} ({s.spec.granularity})" for c, s in zip(components, stores))
        raise MerError(f"{role} feature {name!r} joins features of different granularity ({listed}); "
                       "join features of one granularity only")
    source = FeatureSource(role, name, components, tuple(s.directory for s in stores),
                           tuple(int(np.prod(s.spec.row_shape)) for s in stores), granularities.pop(),
                           tuple(s.spec.config_hash for s in stores), tuple(s.spec.dtype for s in stores))
    return source, stores


# ----------------------------------------------------------------------------- normalisation


@dataclass
class RoleStats:
    feature: str
    mean: np.ndarray  # (dim,) float64
    std: np.ndarray  # (dim,) float64, dims below MIN_STD set to 1
    count: int  # rows (frames / words / utterances) the statistics were computed from
    config_hashes: tuple[str, ...] = ()
    pooled: bool = False  # computed over per-utterance mean-pooled vectors (dialogue mode)


@dataclass
class NormStats:
    """Per-dimension z-normalisation statistics of each input role, from a training split."""

    roles: dict[str, RoleStats] = field(default_factory=dict)

    def __contains__(self, role: str) -> bool:
        return role in self.roles

    def __getitem__(self, role: str) -> RoleStats:
        return self.roles[role]

    def _meta(self) -> dict:
        return {role: {"feature": s.feature, "count": s.count, "config_hashes": list(s.config_hashes),
                       "pooled": s.pooled, "dim": int(len(s.mean))} for role, s in self.roles.items()}

    def save(self, path: Union[str, Path]) -> Path:
        """`.json` writes JSON; anything else an .npz (float64 arrays + a JSON `meta` string)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = self._meta()
        if path.suffix == ".json":
            for role, s in self.roles.items():
                meta[role].update(mean=s.mean.tolist(), std=s.std.tolist())
            path.write_text(json.dumps({"format": 1, "roles": meta}, indent=1))
            return path
        arrays = {f"{role}.{k}": getattr(s, k).astype(np.float64) for role, s in self.roles.items()
                  for k in ("mean", "std")}
        with open(path, "wb") as f:  # a file object: numpy appends no .npz suffix
            np.savez(f, meta=np.array(json.dumps({"format": 1, "roles": meta})), **arrays)
        return path

    @classmethod
    def load(cls, path: Union[str, Path]) -> "NormStats":
        path = Path(path)
        try:
            if path.suffix == ".json":
                data = json.loads(path.read_text())
                arrays = {f"{role}.{k}": np.asarray(m[k], np.float64) for role, m in data["roles"].items()
                          for k in ("mean", "std")}
            else:
                with np.load(path, allow_pickle=False) as npz:
                    data = json.loads(str(npz["meta"]))
                    arrays = {k: npz[k] for k in npz.files if k != "meta"}
            roles = {role: RoleStats(m["feature"], arrays[f"{role}.mean"], arrays[f"{role}.std"], int(m["count"]),
                                     tuple(m.get("config_hashes", ())), bool(m.get("pooled", False)))
                     for role, m in data["roles"].items()}
        except (OSError, ValueError, KeyError) as exc:
            raise MerError(f"{path}: unreadable normalisation statistics ({exc}); retrain the run") from exc
        return cls(roles)

    def check(self, source: FeatureSource, pooled: bool) -> None:
        """Statistics loaded from a run must describe the feature they are applied to."""
        stats = self.roles[source.role]
        if stats.feature != source.name or len(stats.mean) != source.dim or stats.pooled != pooled or \
                (stats.config_hashes and tuple(stats.config_hashes) != source.config_hashes):
            raise MerError(f"normalisation statistics for {source.role} are of {stats.feature} "
                           f"({len(stats.mean)}-d, config {','.join(stats.config_hashes)}, pooled={stats.pooled}); "
                           f"the data is {source.name} ({source.dim}-d, config {','.join(source.config_hashes)}, "
                           f"pooled={pooled}); use the run's own features")


class _Moments:
    """Count, mean and sum of squared deviations per dim, merged block by block (Chan et al.)
    in float64: exact enough even where |mean| >> std (openSMILE functionals)."""

    def __init__(self, dim: int):
        self.count = 0
        self.mean = np.zeros(dim, np.float64)
        self.m2 = np.zeros(dim, np.float64)

    def update(self, block: np.ndarray) -> None:
        if not len(block):
            return
        block = as_float32(block).astype(np.float64)
        n = len(block)
        mean = block.mean(0)
        m2 = ((block - mean) ** 2).sum(0)
        total = self.count + n
        delta = mean - self.mean
        self.mean += delta * (n / total)
        self.m2 += m2 + delta ** 2 * (self.count * n / total)
        self.count = total

    def std(self) -> np.ndarray:
        return np.sqrt(self.m2 / max(self.count, 1))


# ----------------------------------------------------------------------------- per-process stores


class _LazyStores:
    """FeatureStores opened on first use in each process. A forked DataLoader worker sees a
    different pid and opens its own; the parent's (and their HDF5 handles) are never used or
    closed there. Pickling (spawn) carries only the directories."""

    def __init__(self, directories: Mapping[str, Sequence[Path]]):
        self.directories = {role: tuple(dirs) for role, dirs in directories.items()}
        self._pid: Optional[int] = None
        self._stores: dict[str, list[FeatureStore]] = {}
        self._inherited: list = []

    def __getitem__(self, role: str) -> list[FeatureStore]:
        if self._pid != os.getpid():
            if self._stores:
                self._inherited.append(self._stores)  # a fork's copy: leave its handles alone
            self._stores, self._pid = {}, os.getpid()
        if role not in self._stores:
            self._stores[role] = [FeatureStore(d) for d in self.directories[role]]
        return self._stores[role]

    def by_role(self) -> dict[str, list[FeatureStore]]:
        return {role: self[role] for role in self.directories}

    def close(self) -> None:
        if self._pid == os.getpid():
            for stores in self._stores.values():
                for store in stores:
                    store.close()
        self._stores = {}

    def __getstate__(self) -> dict:
        return {"directories": self.directories}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["directories"])


def read_inputs(stores: Mapping[str, Sequence[FeatureStore]], ids: Sequence[str], lengths: Mapping[str, Mapping],
                pooled: bool) -> dict[str, dict[str, np.ndarray]]:
    """role -> id -> the input as the model gets it before normalisation: rows cut to `lengths`
    (flattened, in the stored dtype), the parts of `a+b` joined, and with `pooled` (dialogue
    mode) the float32 mean per utterance. One read per shard of each store (read_many). An array
    kept whole is a view of that read (a copy is one more pass over every byte: on WavLM frames
    the largest cost after the read itself), so a read's buffer lives while any of its arrays is
    held, a pool's worth; a cut array is copied, so the rows it drops are not held."""
    inputs = {}
    for role, role_stores in stores.items():
        parts = [_read_cut(store, ids, lengths[role]) for store in role_stores]
        if len(parts) == 1 and not pooled:  # one feature, as read (most runs: no per-id join to make)
            inputs[role] = parts[0]
            continue
        inputs[role] = {i: _joined([part[i] for part in parts], pooled) for i in ids}
    return inputs


def _read_cut(store: FeatureStore, ids: Sequence[str], cut: Mapping[str, int]) -> dict[str, np.ndarray]:
    """id -> (rows, dim) of `store`, cut to `cut[id]` rows (a copy) or whole (a view of the shard's read)."""
    rows: dict[str, np.ndarray] = {}
    for shard_ids, arrays in store.read_rows(ids):
        rows.update(zip(shard_ids, arrays))
    if len(store.spec.row_shape) > 1:
        rows = {i: _flat(a) for i, a in rows.items()}
    return {i: a if len(a) == cut[i] else a[:cut[i]].copy() for i, a in rows.items()}


def _joined(parts: Sequence[np.ndarray], pooled: bool) -> np.ndarray:
    array = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
    return _pool(array) if pooled else array


# ----------------------------------------------------------------------------- dataset


class FusionDataset(Dataset):
    """Samples of one split. Utterance mode: item i = {"id", "<role>": (rows, dim) in the stored
    dtype, "label"}; dialogue mode: {"ids", "<role>": (utterances, dim) float32, "labels"}.
    Normalisation and float32 conversion happen per batch in FusionCollate. `dataset[i]` reads
    by id (random access); `items(indices)` reads many samples with one read per shard."""

    def __init__(self, samples: Sequence[tuple[str, ...]], sample_unit: str, sources: Mapping[str, FeatureSource],
                 lengths: Mapping[str, Mapping[str, int]], label_of: Mapping[str, Union[int, float]],
                 memory: Optional[Mapping[str, Mapping[str, np.ndarray]]] = None):
        self.samples = [tuple(s) for s in samples]
        self.sample_unit = sample_unit
        self.sources = dict(sources)
        self.lengths = lengths  # role -> id -> rows after cutting
        self.label_of = label_of
        self.memory = memory  # role -> id -> preloaded array (None: read from the cache)
        self._stores = _LazyStores({r: s.directories for r, s in self.sources.items()})

    def __len__(self) -> int:
        return len(self.samples)

    def rows(self, role: str, utt_id: str) -> np.ndarray:
        """One utterance's input for `role`: (rows, dim) cut, in the stored dtype; in dialogue
        mode the (dim,) float32 mean over those rows."""
        if self.memory is not None:
            return self.memory[role][utt_id]
        n = self.lengths[role][utt_id]
        return _joined([_flat(store.get(utt_id))[:n] for store in self._stores[role]], self.sample_unit == "dialogue")

    def __getitem__(self, index: int) -> dict:
        return self._item(self.samples[index], self.rows)

    def items(self, indices: Sequence[int]) -> dict[int, dict]:
        """index -> item for the samples `indices`, their inputs read together (inputs)."""
        inputs = self.inputs(indices)
        return {k: self._item(self.samples[k], lambda role, utt_id: inputs[role][utt_id]) for k in indices}

    def inputs(self, indices: Sequence[int]) -> dict[str, dict[str, np.ndarray]]:
        """role -> id -> input (as `rows` gives it) of every utterance of the samples `indices`: preloaded, or
        read with one read per shard of each store (read_inputs)."""
        if self.memory is not None:
            return self.memory
        ids = [utt_id for k in indices for utt_id in self.samples[k]]
        return read_inputs(self._stores.by_role(), ids, self.lengths, self.sample_unit == "dialogue")

    def _item(self, ids: tuple[str, ...], rows) -> dict:
        if self.sample_unit == "utterance":
            item = {"id": ids[0], "label": self.label_of[ids[0]]}
            for role in self.sources:
                item[role] = rows(role, ids[0])
            return item
        item = {"ids": list(ids), "labels": [self.label_of[i] for i in ids]}
        for role in self.sources:
            item[role] = np.stack([rows(role, i) for i in ids])
        return item

    def sort_keys(self) -> list[tuple[int, ...]]:
        """Per sample: (audio rows, text rows) in utterance mode, (utterances,) in dialogue mode."""
        if self.sample_unit == "dialogue":
            return [(len(s),) for s in self.samples]
        return [tuple(self.lengths[role][s[0]] for role in self.sources) or (1,) for s in self.samples]

    def close(self) -> None:
        self._stores.close()


def _pool(array: np.ndarray) -> np.ndarray:
    return as_float32(array).mean(0) if len(array) > 1 else as_float32(array[0])


def write_float32(out: np.ndarray, rows: np.ndarray, affine: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> None:
    """out[...] = rows as float32 (times scale plus shift when `affine` = (scale, shift) over the last axis) in one
    pass. torch converts float16 vectorised (numpy 2.4 one element at a time: 10 to 15x slower, the largest cost
    of a word-level batch) and addcmul fuses the normalisation; in pieces of whole rows of at most TORCH_GRAIN
    values, so each runs on this thread: torch splits a larger copy over its threads, and on busy cores that
    hand-off took 12 ms for a batch the thread converts in 20 us. With one torch thread (a loader worker's, or
    `torch.set_num_threads(1)`) nothing is handed off: one call, half the time of a word-level batch's pieces."""
    source, target = torch.from_numpy(np.ascontiguousarray(rows)), torch.from_numpy(out)
    piece = len(rows) if torch.get_num_threads() == 1 else max(1, TORCH_GRAIN // max(1, math.prod(rows.shape[1:])))
    if piece >= len(rows):  # one call: split() would only add two tuples of views
        return _convert(target, source, affine)
    for source_part, target_part in zip(source.split(piece), target.split(piece)):
        _convert(target_part, source_part, affine)


def _convert(target: torch.Tensor, source: torch.Tensor, affine: Optional[tuple[torch.Tensor, torch.Tensor]]) -> None:
    if affine is None:
        target.copy_(source)
    else:
        torch.addcmul(affine[1], source, affine[0], out=target)


def as_float32(array: np.ndarray) -> np.ndarray:
    """`array` as float32: itself when it is float32 already, else a copy (write_float32)."""
    if array.dtype != np.float16:
        return array.astype(np.float32, copy=False)
    out = np.empty(array.shape, np.float32)
    write_float32(out, array)
    return out


# ----------------------------------------------------------------------------- collate


@dataclass
class UtteranceRows:
    """A batch of utterance samples before collation: ids, labels and, per role, each one's input rows."""

    ids: list[str]
    labels: list
    inputs: dict[str, list[np.ndarray]]  # role -> (rows, dim) per id, in the stored dtype


class FusionCollate:
    """Items -> the batch contract of mer/fuse/models/base.py (float32 tensors, bool masks
    True = real, labels long or float32, -100 at padded dialogue positions), z-normalising
    each role with `stats` when given; padded positions stay 0."""

    def __init__(self, sample_unit: str, roles: Sequence[str], regression: bool = False,
                 stats: Optional[NormStats] = None, dimensions: int = 0):
        if sample_unit not in SAMPLE_UNITS:
            raise MerError(f"sample_unit must be one of {SAMPLE_UNITS}, got {sample_unit!r}")
        self.sample_unit = sample_unit
        self.roles = tuple(roles)
        self.regression = regression
        self.label_shape = (dimensions,) if dimensions else ()  # an utterance's label: a scalar or D targets
        # z = x * scale + shift with scale = 1 / std, shift = -mean / std (float64, then float32): one fused pass
        self.affine = {role: (torch.from_numpy((1 / stats[role].std).astype(np.float32)),
                              torch.from_numpy((-stats[role].mean / stats[role].std).astype(np.float32)))
                       for role in self.roles if stats is not None and role in stats}

    def __call__(self, items: Union[Sequence[dict], UtteranceRows]) -> dict:
        if isinstance(items, UtteranceRows):
            return self._utterances(items)
        if self.sample_unit == "utterance":
            return self._utterances(UtteranceRows([item["id"] for item in items], [item["label"] for item in items],
                                                  {role: [item[role] for item in items] for role in self.roles}))
        batch = {"ids": [item["ids"] for item in items]}
        mask = None
        for role in self.roles:
            batch[role], mask = self._pad(role, [item[role] for item in items])
        if mask is None:  # no input at all (never in practice): the mask still says which turns exist
            mask = torch.from_numpy(_lengths_mask([len(item["ids"]) for item in items]))
        batch["utterance_mask"] = mask
        for role in self.roles:
            batch[f"{role}_mask"] = mask
        labels = torch.full((*mask.shape, *self.label_shape), IGNORE_LABEL,
                            dtype=torch.float32 if self.regression else torch.long)
        for b, item in enumerate(items):
            labels[b, :len(item["labels"])] = self._labels(item["labels"])
        batch["label"] = labels
        return batch

    def _utterances(self, rows: UtteranceRows) -> dict:
        batch = {"ids": rows.ids, "label": self._labels(rows.labels)}
        for role in self.roles:
            batch[role], batch[f"{role}_mask"] = self._pad(role, rows.inputs[role])
        return batch

    def _labels(self, values: list) -> torch.Tensor:
        return torch.from_numpy(np.asarray(values, dtype=np.float32 if self.regression else np.int64))

    def _pad(self, role: str, arrays: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded float32 (batch, longest, dim) and its mask; only real rows are normalised, padding stays 0.
        Conversion and normalisation are one pass (write_float32). Items of a TORCH_GRAIN of values or more
        (frames) are written straight into their padded rows; smaller ones (words) are concatenated,
        converted in a few calls and scattered by one indexed assignment: a call per item costs more than a
        word-level item's arithmetic (a slice copy per item took 2x as long)."""
        lengths = [len(a) for a in arrays]
        mask = _lengths_mask(lengths)
        dim = arrays[0].shape[-1] if arrays else 0
        padded = np.zeros((*mask.shape, dim), np.float32)
        affine = self.affine.get(role)
        if sum(lengths) * dim >= len(arrays) * TORCH_GRAIN:
            for item, array in enumerate(arrays):
                write_float32(padded[item, :len(array)], array, affine)
        else:
            rows = np.empty((sum(lengths), dim), np.float32)  # (rows of the batch, dim)
            write_float32(rows, np.concatenate(arrays), affine)
            padded.reshape(-1, dim)[np.flatnonzero(mask)] = rows  # the mask's True cells, in row-major order
        return torch.from_numpy(padded), torch.from_numpy(mask)


def _lengths_mask(lengths: Sequence[int]) -> np.ndarray:
    lengths = np.asarray(lengths, dtype=np.int64)
    return np.arange(lengths.max(initial=0))[None, :] < lengths[:, None]


# ----------------------------------------------------------------------------- sampler


class BucketBatchSampler(Sampler):
    """Batches of indices of similar length (`batching="bucket"`), or of any lengths (`"random"`).

    `lengths`: one int or tuple per sample (tuples sort lexicographically: (audio, text)).
    Evaluation (`shuffle=False`): sorted longest first (ties by index), cut into batches:
    the same order every time, and a batch that does not fit in memory fails at once.
    Training: a generator seeded with (seed, epoch) breaks length ties at random, the sorted
    order is cut into buckets of `batches_per_bucket` batches, ids are shuffled within each
    bucket, the result is cut into batches and the batch order shuffled. Each pass advances
    the epoch when it starts (`set_epoch` sets it: call it each epoch to be explicit), so the
    same seed gives the same sequence of epochs. `drop_last` (training only) leaves out
    len % batch_size random samples each epoch so that every batch is full.
    `batching="random"` (MGCMA: its contrastive losses take negatives from the batch): training
    batches are a seeded permutation cut in order, lengths mixed; evaluation keeps sample order."""

    def __init__(self, lengths: Sequence, batch_size: int, shuffle: bool = False, seed: int = 0,
                 batches_per_bucket: int = 4, drop_last: bool = False, batching: str = "bucket"):
        if batch_size < 1 or batches_per_bucket < 1:
            raise MerError(f"batch_size ({batch_size}) and batches_per_bucket ({batches_per_bucket}) must be >= 1")
        if batching not in BATCHINGS:
            raise MerError(f"batching must be one of {', '.join(BATCHINGS)}, got {batching!r}")
        self.batching = batching
        keys = np.array([tuple(k) if isinstance(k, (tuple, list)) else (k,) for k in lengths], dtype=np.int64)
        self.keys = keys.reshape(len(keys), -1) if len(keys) else np.zeros((0, 1), np.int64)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.batches_per_bucket = batches_per_bucket
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def subset(self, indices: Sequence[int], seed: int) -> "BucketBatchSampler":
        """The same batching over the samples `indices` only (its batches hold positions in
        `indices`), seeded with `seed`, never dropping (ShardStream drops, once per pass)."""
        subset = copy.copy(self)  # the keys taken as they are: rebuilding them from tuples cost more than batching
        subset.keys = self.keys[np.asarray(indices, dtype=np.int64)]
        subset.seed, subset.drop_last, subset.epoch = seed, False, 0
        return subset

    def __len__(self) -> int:
        n = len(self.keys)
        if self.shuffle and self.drop_last:
            return n // self.batch_size
        return -(-n // self.batch_size)

    def _sorted(self, order: np.ndarray, descending: bool) -> np.ndarray:
        """`order` stably sorted by the keys (the first column is the primary key)."""
        keys = self.keys[order]
        ranks = np.lexsort(keys.T[::-1] * (-1 if descending else 1))
        return order[ranks]

    def batches(self, epoch: Optional[int] = None) -> list[list[int]]:
        n = len(self.keys)
        size = self.batch_size
        if not self.shuffle:
            order = self._sorted(np.arange(n), descending=True) if self.batching == "bucket" else np.arange(n)
            return [order[i:i + size].tolist() for i in range(0, n, size)]
        rng = np.random.default_rng([self.seed, self.epoch if epoch is None else epoch])
        order = rng.permutation(n)
        if self.batching == "bucket":
            order = self._sorted(order, descending=False)
            bucket = size * self.batches_per_bucket
            order = np.concatenate([rng.permutation(order[i:i + bucket]) for i in range(0, n, bucket)]) if n else order
        if self.drop_last and n % size:  # leave out n % size ids drawn uniformly (not the longest bucket's)
            order = np.delete(order, rng.choice(n, n % size, replace=False))
        batches = [order[i:i + size].tolist() for i in range(0, len(order), size)]
        return [batches[i] for i in rng.permutation(len(batches))]

    def __iter__(self) -> Iterator[list[int]]:
        # a generator: the epoch advances when iteration STARTS, not when iter() is called
        # (DataLoader's multi-process iterator calls iter() twice and uses the second)
        epoch = self.epoch
        self.epoch += 1
        yield from self.batches(epoch)


def padding_ratio(batches: Iterable[Sequence[int]], lengths: Sequence[int]) -> float:
    """Padded share of a batch list's (batch x longest) cells: 0 = no padding."""
    cells = real = 0
    for batch in batches:
        lens = [lengths[i] for i in batch]
        cells += max(lens) * len(lens)
        real += sum(lens)
    return 1.0 - real / cells if cells else 0.0


# ----------------------------------------------------------------------------- reading the cache in its own order


@dataclass(frozen=True)
class PoolConfig:
    """How training reads a cache it does not preload: pools of whole shards (ShardStream)."""

    shards: int = 4  # shards of the primary feature read and shuffled together
    max_bytes: int = 256 << 20  # fewer shards when their inputs would take more memory (never fewer than one)


@dataclass(frozen=True)
class ShardUnit:
    """The samples of a split whose first utterance one shard of the primary feature holds."""

    shard: int  # the shard's position in the primary feature's manifest
    samples: tuple[int, ...]  # indices into the split's samples
    nbytes: int  # their inputs in memory


class ShardStream(IterableDataset):
    """One split read in the cache's own order: yields batches (lists of items) for FusionCollate.

    Each pass: the units (shards of the primary feature, the one with the most bytes) in a
    seeded (seed, epoch) order for training, in manifest order for evaluation; consecutive
    units form pools of up to `pool.shards` shards and `pool.max_bytes`; a pool's samples
    are read with one read per shard of every store (FusionDataset.items: the primary
    feature's shards whole, the other features' and modalities' rows grouped by their own
    shards), then batched by `batcher.subset` (length buckets or random, shuffled with a seed
    of (seed, epoch, pool)). The one short batch of a pool is carried into the next pool, so
    every batch but a pass's last is full (that one `drop_last` drops). Memory is bounded by
    a pool and a batch, whatever the size of the cache.

    Why an IterableDataset: with DataLoader workers, worker w of W takes pools w, w + W, ...,
    so each worker owns whole shards (disjoint from the others') and reads each of them
    contiguously; a batch sampler would hand a worker indices whose shards another worker
    also reads. The batch sequence depends on (seed, epoch, W). The epoch lives in shared
    memory: `FusionLoader` sets it when a pass starts, persistent workers read it then.
    Without workers, or with them, every sample of the split comes exactly once per pass and
    no row is read twice (a shard is opened by a second pool only for the rows of a dialogue
    that crosses into it, or of a feature whose shard boundaries differ)."""

    def __init__(self, dataset: FusionDataset, units: Sequence[ShardUnit], batcher: BucketBatchSampler,
                 pool: PoolConfig):
        self.dataset = dataset
        self.units = list(units)
        self.batcher = batcher
        self.pool = pool
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()  # the pass in progress, for workers
        self.next_epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.next_epoch = epoch

    def start_pass(self) -> None:
        """Called by FusionLoader when a pass starts: the pass gets the next epoch."""
        self._epoch.fill_(self.next_epoch)
        self.next_epoch += 1

    def __iter__(self) -> Iterator[list[dict]]:
        info = get_worker_info()
        yield from self.batches(int(self._epoch), *((info.id, info.num_workers) if info else (0, 1)))

    def batches(self, epoch: int, worker: int = 0, workers: int = 1) -> Iterator[Union[list[dict], "UtteranceRows"]]:
        """The batches `worker` of `workers` makes in `epoch`, reading pool by pool: UtteranceRows in
        utterance mode (no dict per utterance: at word level those cost more than the rows), lists of
        items in dialogue mode."""
        if self.dataset.sample_unit == "dialogue":
            held: dict[int, dict] = {}  # items read and not yet batched: a pool's and the carried ones
            for pool, batches in self.plan(epoch, worker, workers):
                held.update(self.dataset.items([k for unit in pool for k in unit.samples]))
                for batch in batches:
                    yield [held.pop(k) for k in batch]
            return
        samples, label_of = self.dataset.samples, self.dataset.label_of
        inputs: dict[str, dict[str, np.ndarray]] = {role: {} for role in self.dataset.sources}  # read, not yet batched
        for pool, batches in self.plan(epoch, worker, workers):
            for role, read in self.dataset.inputs([k for unit in pool for k in unit.samples]).items():
                inputs[role].update(read)
            for batch in batches:
                ids = [samples[k][0] for k in batch]
                yield UtteranceRows(ids, [label_of[i] for i in ids],
                                    {role: [held.pop(i) for i in ids] for role, held in inputs.items()})

    def plan(self, epoch: int, worker: int = 0, workers: int = 1) -> Iterator[tuple[list[ShardUnit], list[list[int]]]]:
        """(pool, the batches of sample indices complete once it is read) for `worker`'s pools; nothing is read."""
        size = self.batcher.batch_size
        mine = [(number, pool) for number, pool in enumerate(self.pools(epoch)) if number % workers == worker]
        carried: list[int] = []
        for position, (number, pool) in enumerate(mine):
            members = carried + [k for unit in pool for k in unit.samples]
            batches = self._batches(members, epoch, number)
            full = [batch for batch in batches if len(batch) == size]
            carried = [k for batch in batches if len(batch) < size for k in batch]
            last = position == len(mine) - 1
            yield pool, full + ([carried] if last and carried and not self.batcher.drop_last else [])

    def pools(self, epoch: int) -> list[list[ShardUnit]]:
        """Every pool of `epoch`, in reading order."""
        units = self.units
        if self.batcher.shuffle:
            units = [units[k] for k in np.random.default_rng([self.batcher.seed, epoch]).permutation(len(units))]
        pools: list[list[ShardUnit]] = []
        for unit in units:
            if not pools or len(pools[-1]) == self.pool.shards or \
                    sum(u.nbytes for u in pools[-1]) + unit.nbytes > self.pool.max_bytes:
                pools.append([])
            pools[-1].append(unit)
        return pools

    def _batches(self, members: list[int], epoch: int, number: int) -> list[list[int]]:
        seed = int(np.random.SeedSequence([self.batcher.seed, epoch, number]).generate_state(1)[0])
        return [[members[j] for j in batch] for batch in self.batcher.subset(members, seed).batches(0)]

    def close(self) -> None:
        self.dataset.close()


class FusionLoader(DataLoader):
    """A DataLoader whose passes are epochs, over a FusionDataset and its BucketBatchSampler
    (preloaded inputs) or over a ShardStream (inputs read from the cache): `set_epoch(e)` sets
    the epoch of the next pass, and each pass advances it."""

    def set_epoch(self, epoch: int) -> None:
        (self.dataset if isinstance(self.dataset, ShardStream) else self.batch_sampler).set_epoch(epoch)

    def __iter__(self):
        if not isinstance(self.dataset, ShardStream):
            return super().__iter__()
        self.dataset.start_pass()
        if self.num_workers == 0 and not self.pin_memory:
            # the stream's batches collated here: DataLoader's single-process iterator adds nothing to
            # that but about 30 us a batch (7 % of a word-level epoch read from the cache)
            return (self.collate_fn(items) for items in self.dataset)
        return super().__iter__()

    def __len__(self) -> int:
        """Batches in the next pass (a stream's count depends on how many workers split its pools)."""
        if not isinstance(self.dataset, ShardStream):
            return super().__len__()
        workers = max(1, self.num_workers)
        return sum(len(batches) for worker in range(workers)
                   for _, batches in self.dataset.plan(self.dataset.next_epoch, worker, workers))


# ----------------------------------------------------------------------------- the data of one fold


class FusionData:
    """The inputs, labels and batches of one fold; everything checked before training.

    Arguments: the cache root and corpus; `audio_feature` / `text_feature` (None for a
    unimodal model); the `fold` (mer.data.protocols.Fold) and the protocol's `targets`
    (id -> label UNDER THE PROTOCOL; None: unlabeled, labels are -100) and `labels` (class
    order; None = regression); `sample_unit` "utterance" | "dialogue"; `max_audio_frames` /
    `max_text_len` (keep the first rows; None = no limit); `normalize` (bool or per role
    dict); `norm_stats` (reuse saved statistics instead of computing them); `preload`;
    `utterances` (the corpus manifest, read from the cache when dialogue mode needs it and
    none is given); `pool` (how a split that is not preloaded is read: PoolConfig).

    Attributes: `sources` (role -> FeatureSource), `input_dims` ({"audio": dim or None, "text":
    ...}), `num_classes` (1 for regression), `samples` (split -> list of id tuples: one id per
    sample in utterance mode, the dialogue's ids in turn order in dialogue mode), `ids` (split
    -> kept utterance ids), `dropped` (id -> reason), `dropped_by_split` (split -> ids),
    `truncated` (role -> number of utterances cut), `norm_stats` (NormStats, empty when no role
    is normalised), `primary` (the feature whose shards make a ShardStream's pools), `shard_of`
    (kept id -> position of its shard in that feature), `notes` (lines for the console)."""

    def __init__(self, cache_root: Union[str, Path], corpus: str, audio_feature: Optional[str],
                 text_feature: Optional[str], fold: Fold, targets: Optional[Mapping[str, Label]],
                 labels: Optional[Sequence[str]], sample_unit: str = "utterance",
                 max_audio_frames: Optional[int] = None, max_text_len: Optional[int] = None,
                 normalize: Union[bool, Mapping[str, bool]] = True, norm_stats: Optional[NormStats] = None,
                 preload: bool = False, utterances: Optional[Sequence[Utterance]] = None,
                 pool: PoolConfig = PoolConfig(), dimensions: Sequence[str] = ()):
        if sample_unit not in SAMPLE_UNITS:
            raise MerError(f"sample_unit must be one of {SAMPLE_UNITS}, got {sample_unit!r}")
        if audio_feature is None and text_feature is None:
            raise MerError("no input feature: give an audio feature, a text feature, or both")
        self.cache_root = Path(cache_root)
        self.corpus = corpus
        self.fold = fold
        self.sample_unit = sample_unit
        self.labels = tuple(labels) if labels is not None else None
        self.regression = labels is None and targets is not None
        self.dimensions = tuple(dimensions)  # dimensional labels: targets are tuples in this order
        self.max_len = {"audio": _limit(max_audio_frames, "max_audio_frames"),
                        "text": _limit(max_text_len, "max_text_len")}
        self.preload = preload
        self.pool = pool
        self.notes: list[str] = []

        cache = FeatureCache(self.cache_root)
        self.sources: dict[str, FeatureSource] = {}
        stores: dict[str, list[FeatureStore]] = {}
        for role, name in (("audio", audio_feature), ("text", text_feature)):
            if name is not None:
                self.sources[role], stores[role] = open_source(cache, corpus, role, name)
        self.normalize = _normalize_roles(normalize, self.sources)

        self.label_of = self._label_index(targets)
        raw = {role: [shard_lengths(s) for s in stores[role]] for role in self.sources}
        self.lengths, self.dropped, self.truncated, self.mismatched = self._lengths(raw, stores)
        self.ids = {part: [i for i in fold.part(part) if i not in self.dropped] for part in PARTS}
        self.dropped_by_split = {part: [i for i in fold.part(part) if i in self.dropped] for part in PARTS}
        for part in PARTS:
            if not fold.part(part):  # the trainer selects and reports on dev and test: an empty one has nothing to say
                raise MerError(f"fold {fold.name} has no {part} utterances: the corpus is too small for this "
                               "protocol's split (see docs/protocols.md for its options)")
            if not self.ids[part]:
                reason = Counter(self.dropped[i] for i in fold.part(part)).most_common(1)[0][0]
                raise MerError(f"fold {fold.name}: every {part} utterance was dropped (e.g. {reason})")
        self.samples = self._samples(utterances, cache)
        self.primary, self.shard_of = self._primary_shards(raw, stores)

        self.norm_stats = self._stats(norm_stats, stores)
        if self.dimensions and targets is not None:
            self._normalise_targets(norm_stats)
        self.memory = self._preload(stores) if preload else None
        if not preload:
            self.notes.append(f"input: read from the cache in pools of up to {pool.shards} whole shards of "
                              f"{self.primary} ({pool.max_bytes / 2 ** 20:.0f} MiB at most), shuffled per epoch")
        self.collate = FusionCollate(sample_unit, tuple(self.sources), self.regression, self.norm_stats,
                                     len(self.dimensions))

    @classmethod
    def from_fold_set(cls, cache_root: Union[str, Path], corpus: str, audio_feature: Optional[str],
                      text_feature: Optional[str], fold_set: FoldSet, fold: Union[int, str] = 0,
                      **options) -> "FusionData":
        """The same, with the fold picked from a FoldSet by index or name."""
        if isinstance(fold, str):
            matches = [f for f in fold_set.folds if f.name == fold]
            if not matches:
                raise MerError(f"protocol {fold_set.protocol} has no fold {fold!r}; its folds: "
                               f"{', '.join(f.name for f in fold_set.folds)}")
            chosen = matches[0]
        elif -len(fold_set.folds) <= fold < len(fold_set.folds):
            chosen = fold_set.folds[fold]
        else:
            raise MerError(f"protocol {fold_set.protocol} has {len(fold_set.folds)} folds; there is no fold {fold}")
        return cls(cache_root, corpus, audio_feature, text_feature, chosen, fold_set.targets, fold_set.labels,
                   dimensions=fold_set.dimensions, **options)

    # ---- what the trainer reads ----------------------------------------------------------
    @property
    def input_dims(self) -> dict[str, Optional[int]]:
        return {role: (self.sources[role].dim if role in self.sources else None) for role in ROLES}

    @property
    def num_classes(self) -> int:
        """Classes; 1 for one regression value; RegressionTargets(D) for D dimensional targets."""
        if self.dimensions:
            from mer.fuse.models.base import RegressionTargets  # the loader imports no model otherwise

            return RegressionTargets(len(self.dimensions))
        return len(self.labels) if self.labels is not None else 1

    @property
    def target_scale(self) -> Optional[tuple[np.ndarray, np.ndarray]]:
        """(mean, std) of the dimensional targets' z-normalisation; None when there is none."""
        stats = self.norm_stats.roles.get(TARGET_ROLE)
        return None if stats is None else (stats.mean, stats.std)

    def dataset(self, split: str) -> FusionDataset:
        """The samples of `split` ("train", "dev", "test" or parts joined by "+": "train+dev"), read by id."""
        return FusionDataset(self._split_samples(split), self.sample_unit, self.sources, self.lengths, self.label_of,
                             self.memory)

    def sampler(self, split: str, batch_size: int, shuffle: Optional[bool] = None, seed: int = 0,
                batches_per_bucket: int = 4, drop_last: bool = False, batching: str = "bucket") -> BucketBatchSampler:
        """Bucketed (or `batching="random"`) batches of `split`; shuffled (seeded) by default when it holds "train"."""
        shuffle = ("train" in _parts(split)) if shuffle is None else shuffle
        return BucketBatchSampler(self.dataset(split).sort_keys(), batch_size, shuffle, seed,
                                  batches_per_bucket, drop_last, batching)

    def stream(self, split: str, batch_size: int, shuffle: Optional[bool] = None, seed: int = 0,
               batches_per_bucket: int = 4, drop_last: bool = False, batching: str = "bucket") -> ShardStream:
        """`split` read in the cache's own order, batched as `sampler(...)` would within each pool."""
        samples = self._split_samples(split)
        return ShardStream(self.dataset(split), self._units(samples),
                           self.sampler(split, batch_size, shuffle, seed, batches_per_bucket, drop_last, batching),
                           self.pool)

    def loader(self, split: str, batch_size: int, shuffle: Optional[bool] = None, seed: int = 0,
               num_workers: int = 0, batches_per_bucket: int = 4, drop_last: bool = False,
               pin_memory: bool = False, persistent_workers: bool = True, batching: str = "bucket",
               **loader_options) -> FusionLoader:
        """A FusionLoader over `split` with this data's collate: over `stream(...)` when the inputs
        are not preloaded, else over `dataset(split)` with `sampler(...)` as its batch_sampler.
        Create it once and iterate it every epoch (`set_epoch` sets the epoch, each pass advances
        it). Workers open the cache themselves."""
        options = dict(collate_fn=self.collate, num_workers=num_workers, pin_memory=pin_memory,
                       persistent_workers=persistent_workers and num_workers > 0, **loader_options)
        batching_options = (batch_size, shuffle, seed, batches_per_bucket, drop_last, batching)
        if self.memory is None:
            return FusionLoader(self.stream(split, *batching_options), batch_size=None, **options)
        return FusionLoader(self.dataset(split), batch_sampler=self.sampler(split, *batching_options), **options)

    def counts(self) -> dict[str, dict[str, int]]:
        return {part: {"utterances": len(self.ids[part]), "samples": len(self.samples[part]),
                       "dropped": len(self.dropped_by_split[part])} for part in PARTS}

    def dropped_reasons(self) -> dict[str, int]:
        return dict(Counter(self.dropped.values()).most_common())

    def summary(self) -> str:
        """Lines for the console: inputs, split sizes, and every drop, cut and choice made."""
        lines = []
        for role, source in self.sources.items():
            how = [f"{source.granularity} level", f"{source.dim}-d"]
            if self.max_len[role] is not None:
                how.append(f"first {self.max_len[role]} rows kept")
            if self.sample_unit == "dialogue" and source.granularity != "utterance":
                how.append("mean-pooled per utterance")
            how.append("z-normalised (train split)" if role in self.norm_stats else "not normalised")
            lines.append(f"{role}: {source.name} ({', '.join(how)})")
        unit = "dialogues" if self.sample_unit == "dialogue" else "utterances"
        sizes = " / ".join(f"{p} {len(self.ids[p])}" + (f" in {len(self.samples[p])} {unit}"
                                                         if self.sample_unit == "dialogue" else "")
                           for p in PARTS)
        lines.append(f"fold {self.fold.name}: {sizes} utterances")
        if self.dropped:
            per_split = ", ".join(f"{p} {len(self.dropped_by_split[p])}" for p in PARTS if self.dropped_by_split[p])
            lines.append(f"dropped {len(self.dropped)} utterances missing from a feature ({per_split}):")
            lines += [f"  {n} x {reason}" for reason, n in self.dropped_reasons().items()]
        for role, n in self.truncated.items():
            if n:
                lines.append(f"{role}: {n} utterances longer than {self.max_len[role]} rows cut to their first "
                             f"{self.max_len[role]}")
        for role, n in self.mismatched.items():
            if n:
                lines.append(f"{role}: {n} utterances whose joined features differ in length, cut to the shorter")
        lines += self.notes
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """For the run's config.json."""
        return {"corpus": self.corpus, "fold": self.fold.name, "sample_unit": self.sample_unit,
                "features": {role: s.to_dict() for role, s in self.sources.items()},
                "max_audio_frames": self.max_len["audio"], "max_text_len": self.max_len["text"],
                "normalized": sorted(self.norm_stats.roles), "counts": self.counts(),
                "dropped": dict(sorted(self.dropped.items())), "truncated": dict(self.truncated),
                "preload": self.preload}

    # ---- construction steps --------------------------------------------------------------
    def _label_index(self, targets: Optional[Mapping[str, Label]]) -> dict[str, Union[int, float]]:
        every = [i for part in PARTS for i in self.fold.part(part)]
        if targets is None:
            return {i: [IGNORE_LABEL] * len(self.dimensions) if self.dimensions else IGNORE_LABEL for i in every}
        out: dict[str, Union[int, float]] = {}
        index = {label: k for k, label in enumerate(self.labels)} if self.labels is not None else None
        for utt_id in every:
            if utt_id not in targets:
                raise MerError(f"fold {self.fold.name}: {utt_id} has no target under the protocol "
                               "(pass the FoldSet's targets)")
            target = targets[utt_id]
            if self.dimensions:
                out[utt_id] = [float(value) for value in target]
            elif index is None:
                out[utt_id] = float(target)
            elif target not in index:
                raise MerError(f"{utt_id}: label {target!r} is not one of the protocol's classes "
                               f"({', '.join(map(str, self.labels))})")
            else:
                out[utt_id] = index[target]
        return out

    def _normalise_targets(self, given: Optional[NormStats]) -> None:
        """Dimensional targets as z-scores of the kept training utterances' ratings (or of the `given`
        run's), recorded in norm_stats: the heads start near 0 with unit spread, so the model begins at
        the mean rating whatever the scale (1-5, 1-7), and an MSE weighs each dimension alike. CCC and r
        are unchanged by the shared affine map; the trainer maps outputs back before any metric."""
        if given is not None and TARGET_ROLE in given:
            stats = given[TARGET_ROLE]
        else:
            train = np.array([self.label_of[i] for i in self.ids["train"]], dtype=np.float64)
            std = train.std(axis=0)
            stats = RoleStats(",".join(self.dimensions), train.mean(axis=0), np.where(std < MIN_STD, 1.0, std),
                              len(train))
        self.norm_stats.roles[TARGET_ROLE] = stats
        self.label_of = {i: ((np.asarray(v) - stats.mean) / stats.std).tolist() for i, v in self.label_of.items()}
        self.notes.append(f"targets: {', '.join(self.dimensions)}, z-normalised with the training split's mean "
                          f"{np.round(stats.mean, 3).tolist()} and std {np.round(stats.std, 3).tolist()}")

    def _lengths(self, raw: dict[str, list[dict[str, int]]], stores: dict[str, list[FeatureStore]]):
        """Cut lengths per role and id; drop reasons; counts of cut and length-mismatched ids."""
        lengths: dict[str, dict[str, int]] = {role: {} for role in self.sources}
        dropped: dict[str, str] = {}
        truncated = {role: 0 for role in self.sources}
        mismatched = {role: 0 for role in self.sources}
        for part in PARTS:
            for utt_id in self.fold.part(part):
                reason = self._missing(utt_id, raw, stores)
                if reason:
                    dropped[utt_id] = reason
                    continue
                for role, source in self.sources.items():
                    rows = [component[utt_id] for component in raw[role]]
                    n = 1 if source.granularity == "utterance" else min(rows)
                    mismatched[role] += len(set(rows)) > 1 and source.granularity != "utterance"
                    limit = self.max_len[role]
                    if limit is not None and n > limit:
                        truncated[role] += 1
                        n = limit
                    lengths[role][utt_id] = n
        return lengths, dropped, truncated, mismatched

    def _missing(self, utt_id: str, raw, stores) -> Optional[str]:
        for role, source in self.sources.items():
            for component, found, store in zip(source.components, raw[role], stores[role]):
                if utt_id not in found:
                    failure = store.failures.get(utt_id)
                    if failure:
                        return f"{component}: extraction failed: {failure}"
                    return f"{component}: not extracted (run {self._extract_again(store)})"
                if found[utt_id] == 0:
                    return f"{component}: stored with no rows"
        return None

    def _extract_again(self, store: FeatureStore) -> str:
        """The `mer extract` command that adds what is missing to this very config, as the corpus was read."""
        options = {key: value for key, value in store.spec.options.items() if key != "name"}
        return extract_command(self.cache_root, self.corpus, store.spec.options.get("name", store.spec.name), options)

    def _samples(self, utterances: Optional[Sequence[Utterance]], cache: FeatureCache) -> dict[str, list[tuple]]:
        if self.sample_unit == "utterance":
            return {part: [(i,) for i in self.ids[part]] for part in PARTS}
        records = list(utterances) if utterances is not None else cache.utterances(self.corpus)
        where = {u.id: (u.dialogue, u.turn, k) for k, u in enumerate(records)}
        alone = 0
        samples = {}
        for part in PARTS:
            groups: OrderedDict = OrderedDict()
            for utt_id in self.ids[part]:
                dialogue, turn, position = where.get(utt_id, (None, None, len(where)))
                if dialogue is None:
                    alone += 1
                    key = ("utterance", utt_id)
                else:
                    key = ("dialogue", str(dialogue))
                groups.setdefault(key, []).append((turn is None, turn or 0, position, utt_id))
            samples[part] = [tuple(entry[-1] for entry in sorted(members)) for members in groups.values()]
        if alone:
            self.notes.append(f"{alone} utterances have no dialogue in the corpus manifest: each is a dialogue of one")
        return samples

    def _stats(self, given: Optional[NormStats], stores: dict[str, list[FeatureStore]]) -> NormStats:
        pooled = self.sample_unit == "dialogue"
        if given is not None:
            for role, source in self.sources.items():
                if self.normalize[role]:
                    if role not in given:
                        raise MerError(f"the given normalisation statistics have no {role} entry; the run "
                                       f"was trained without normalising {role}")
                    given.check(source, pooled)
            return NormStats({r: s for r, s in given.roles.items() if r in self.sources and self.normalize[r]})
        roles = [role for role in self.sources if self.normalize[role]]
        if roles and not self.ids["train"]:
            raise MerError(f"fold {self.fold.name}: no training utterances to compute normalisation statistics "
                           "from; pass the run's saved statistics (norm_stats) or normalize=False")
        train = set(self.ids["train"])
        stats = {}
        for role in roles:
            source = self.sources[role]
            parts = [self._component_moments(role, store, dim, train, pooled)
                     for store, dim in zip(stores[role], source.dims)]
            mean = np.concatenate([m.mean for m in parts])
            std = np.concatenate([m.std() for m in parts])
            if not (np.isfinite(mean).all() and np.isfinite(std).all()):
                raise MerError(f"{source.name}: NaN or Inf in the training data; run "
                               f"`mer cache verify --cache {self.cache_root}` and re-extract")
            std = np.where(std < MIN_STD, 1.0, std)
            stats[role] = RoleStats(source.name, mean, std, parts[0].count, source.config_hashes, pooled)
        return NormStats(stats)

    def _component_moments(self, role: str, store: FeatureStore, dim: int, train: set, pooled: bool) -> _Moments:
        """Moments of one component over the training ids, one shard at a time."""
        moments = _Moments(dim)
        cut = self.lengths[role]
        block, size = [], 0
        for _, reader in store.iter_shards():
            wanted = [i for i in reader.ids if i in train]
            if not wanted:
                continue
            # most of the shard: one sequential read of it; a few ids: their slices only
            items = ((i, a) for i, a in reader if i in train) if 4 * len(wanted) >= len(reader.ids) \
                else ((i, reader.get(i)) for i in wanted)
            for utt_id, array in items:
                rows = _flat(array)[:cut[utt_id]]
                if pooled:
                    rows = _pool(rows)[None]
                block.append(rows)
                size += rows.size
                if size >= STATS_BLOCK_ELEMENTS:
                    moments.update(np.concatenate(block))
                    block, size = [], 0
        if block:
            moments.update(np.concatenate(block))
        return moments

    def _preload(self, stores: dict[str, list[FeatureStore]]) -> dict[str, dict[str, np.ndarray]]:
        """Every kept id's input, read once (one read per shard), in the stored dtype (pooled: float32)."""
        needed = [i for part in PARTS for i in self.ids[part]]
        memory = read_inputs(stores, needed, self.lengths, self.sample_unit == "dialogue")
        size = sum(a.nbytes for role in memory.values() for a in role.values())
        self.notes.append(f"preloaded {len(needed)} utterances ({size / 2 ** 20:.1f} MiB)")
        return memory

    def _primary_shards(self, raw: dict[str, list[dict[str, int]]],
                        stores: dict[str, list[FeatureStore]]) -> tuple[str, dict[str, int]]:
        """The feature whose shards define the pools of a ShardStream, the one with the most bytes
        (its reads are the whole-shard ones), and for each kept id the position of its shard there."""
        sized = [(sum(rows.values()) * _row_bytes(store), store) for role in self.sources
                 for rows, store in zip(raw[role], stores[role])]
        primary = max(sized, key=lambda entry: entry[0])[1]
        position = {file: k for k, file in enumerate(primary.shard_files())}
        kept = (i for part in PARTS for i in self.ids[part])
        return primary.spec.name, {i: position[primary.shard_of(i)] for i in kept}

    def _units(self, samples: Sequence[tuple[str, ...]]) -> list[ShardUnit]:
        """Each sample goes to the shard of its first utterance."""
        members: dict[int, list[int]] = defaultdict(list)
        for k, sample in enumerate(samples):
            members[self.shard_of[sample[0]]].append(k)
        return [ShardUnit(shard, tuple(ks), sum(self._input_bytes(samples[k]) for k in ks))
                for shard, ks in sorted(members.items())]

    def batch_bytes(self, split: str, batch_size: int) -> int:
        """Stored bytes of the inputs of an average batch of `split` (before float32 conversion and padding);
        a batch holds at most the whole split (a probe's batch of 4096 on 224 clips is 224 clips)."""
        samples = self._split_samples(split)
        total = sum(self._input_bytes(sample) for sample in samples)
        return min(batch_size, len(samples)) * total // max(1, len(samples))

    def _input_bytes(self, sample: tuple[str, ...]) -> int:
        if self.sample_unit == "dialogue":
            return len(sample) * sum(4 * source.dim for source in self.sources.values())
        return sum(self.lengths[role][sample[0]] * sum(dim * np.dtype(dtype).itemsize
                                                       for dim, dtype in zip(source.dims, source.dtypes))
                   for role, source in self.sources.items())

    def _split_samples(self, split: str) -> list[tuple[str, ...]]:
        return [sample for part in _parts(split) for sample in self.samples[part]]


def _row_bytes(store: FeatureStore) -> int:
    return int(np.prod(store.spec.row_shape)) * np.dtype(store.spec.dtype).itemsize


def _parts(split: str) -> list[str]:
    return [_part(part) for part in split.split("+")]


def _part(split: str) -> str:
    if split not in PARTS:
        raise MerError(f"split {split!r} is not one of {', '.join(PARTS)}")
    return split


def _limit(value: Optional[int], name: str) -> Optional[int]:
    if value is None:
        return None
    if int(value) < 1:
        raise MerError(f"{name} must be >= 1 or None (no limit), got {value!r}")
    return int(value)


def _normalize_roles(normalize: Union[bool, Mapping[str, bool]], sources: Mapping[str, FeatureSource]) -> dict:
    if isinstance(normalize, Mapping):
        unknown = sorted(set(normalize) - set(ROLES))
        if unknown:
            raise MerError(f"normalize: unknown role {unknown[0]!r}; use audio and/or text")
        return {role: bool(normalize.get(role, True)) for role in sources}
    return {role: bool(normalize) for role in sources}
