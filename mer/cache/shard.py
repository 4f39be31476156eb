"""One shard file: utterances stored RAGGED (one concatenated dataset + offsets + ids).

Layout of shard-NNNNN.h5:
  data     (total_rows, *row_shape)  every utterance's rows, concatenated
  offsets  (n + 1,) int64            utterance i is data[offsets[i]:offsets[i+1]]
  ids      (n,) utf-8 strings
  extras/<name>/data, extras/<name>/offsets   optional ragged per-utterance side arrays
  attrs: spec (JSON), mer_version
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator, Optional

import h5py
import numpy as np

from mer import __version__
from mer.errors import CacheError
from mer.cache.spec import FeatureSpec

FLOAT16_MAX = float(np.finfo(np.float16).max)


def to_storage(array: np.ndarray, spec: FeatureSpec, utt_id: str) -> np.ndarray:
    """Check one utterance's array against the spec and cast it to the storage dtype (2-D rows)."""
    array = np.asarray(array)
    if spec.granularity == "utterance":
        array = array.reshape(1, *array.shape)
    if tuple(array.shape[1:]) != spec.row_shape:
        raise CacheError(f"{utt_id}: {spec.name} produced rows of shape {array.shape[1:]}, "
                         f"the spec says {spec.row_shape}; the extractor is inconsistent")
    if spec.dtype == "float16" and array.size and np.nanmax(np.abs(array)) > FLOAT16_MAX:
        raise CacheError(f"{utt_id}: {spec.name} values exceed the float16 range; "
                         "extract with --dtype float32")
    return array.astype(spec.dtype, copy=False)


def write_shard(path: Path, spec: FeatureSpec, ids: list[str], arrays: list[np.ndarray],
                extras: Optional[list[dict]] = None, compression: Optional[str] = None) -> None:
    """Write a complete shard at `path` (the caller renames it into place afterwards)."""
    rows = [len(a) for a in arrays]
    offsets = np.concatenate([[0], np.cumsum(rows)]).astype(np.int64)
    data = np.concatenate(arrays) if arrays else np.zeros((0, *spec.row_shape), spec.dtype)
    with h5py.File(path, "w", locking=False) as f:
        chunks = (max(1, min(len(data), 4096 * 64 // max(1, int(np.prod(spec.row_shape))))), *spec.row_shape) \
            if len(data) else None
        f.create_dataset("data", data=data, compression=compression, chunks=chunks)
        f.create_dataset("offsets", data=offsets)
        f.create_dataset("ids", data=np.array(ids, dtype=object), dtype=h5py.string_dtype("utf-8"))
        for name, values in _gather_extras(extras or []).items():
            group = f.create_group(f"extras/{name}")
            group.create_dataset("data", data=np.concatenate(values))
            group.create_dataset("offsets", data=np.concatenate([[0], np.cumsum([len(v) for v in values])]))
        f.attrs["spec"] = json.dumps(spec.to_dict(), sort_keys=True)
        f.attrs["mer_version"] = __version__
        f.flush()
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _gather_extras(extras: list[dict]) -> dict[str, list[np.ndarray]]:
    names = sorted({name for item in extras for name in item})
    for name in names:
        if any(name not in item for item in extras):
            raise CacheError(f"extra {name!r} is missing for some utterances of a shard; the extractor is inconsistent")
    return {name: [np.asarray(item[name]) for item in extras] for name in names}


class ShardReader:
    """Read access to one complete shard; opened without HDF5 file locks (safe on shared filesystems)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self._file = h5py.File(self.path, "r", locking=False)
            self.ids = [s.decode() if isinstance(s, bytes) else s for s in self._file["ids"][()]]
            self.offsets = self._file["offsets"][()]
        except (OSError, KeyError) as exc:
            raise CacheError(f"{self.path}: unreadable shard ({exc}); run `mer cache verify` and re-extract") from exc
        self.index = {utt_id: i for i, utt_id in enumerate(self.ids)}

    def get(self, utt_id: str) -> np.ndarray:
        i = self.index[utt_id]
        return self._file["data"][self.offsets[i]:self.offsets[i + 1]]

    def extra(self, name: str, utt_id: str) -> np.ndarray:
        i = self.index[utt_id]
        group = self._file[f"extras/{name}"]
        offsets = group["offsets"]
        return group["data"][offsets[i]:offsets[i + 1]]

    def extra_names(self) -> list[str]:
        return sorted(self._file["extras"]) if "extras" in self._file else []

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        data = self._file["data"][()]  # one read per shard: streaming iteration is sequential
        for i, utt_id in enumerate(self.ids):
            yield utt_id, data[self.offsets[i]:self.offsets[i + 1]]

    def close(self) -> None:
        self._file.close()
