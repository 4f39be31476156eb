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
import shlex
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
        _checked_dataset(f, "data", data, compression=compression, chunks=chunks)
        _checked_dataset(f, "offsets", offsets)
        # variable-length strings take no filters: verify's sha256 and id checks cover `ids`
        f.create_dataset("ids", data=np.array(ids, dtype=object), dtype=h5py.string_dtype("utf-8"))
        for name, values in _gather_extras(extras or []).items():
            group = f.create_group(f"extras/{name}")
            _checked_dataset(group, "data", np.concatenate(values))
            _checked_dataset(group, "offsets", np.concatenate([[0], np.cumsum([len(v) for v in values])]))
        f.attrs["spec"] = json.dumps(spec.to_dict(), sort_keys=True)
        f.attrs["mer_version"] = __version__
        f.flush()
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _checked_dataset(group: h5py.Group, name: str, data: np.ndarray, **options) -> None:
    """A dataset whose chunks carry HDF5's fletcher32 checksum, so a damaged chunk fails to read.
    An empty one stores no chunk to protect (and HDF5 cannot chunk a zero-size dataset)."""
    if len(data):
        options = {**options, "fletcher32": True, "chunks": options.get("chunks") or True}
    group.create_dataset(name, data=data, **options)


def _gather_extras(extras: list[dict]) -> dict[str, list[np.ndarray]]:
    names = sorted({name for item in extras for name in item})
    for name in names:
        if any(name not in item for item in extras):
            raise CacheError(f"extra {name!r} is missing for some utterances of a shard; the extractor is inconsistent")
    return {name: [np.asarray(item[name]) for item in extras] for name in names}


def verify_repair_command(feature_dir: Path) -> str:
    """`mer cache verify ... --repair` for exactly this feature, quoted to paste into a shell."""
    feature_dir = Path(feature_dir)
    root, corpus, feature = (shlex.quote(str(p)) for p in (os.path.abspath(feature_dir.parent.parent),
                                                            feature_dir.parent.name, feature_dir.name))
    return f"mer cache verify {root} --corpus {corpus} --feature {feature} --repair"


def repair_command(feature_dir: Path) -> str:
    """The fix for a damaged shard or record of `feature_dir`: drop it, then recompute what it held."""
    return f"run `{verify_repair_command(feature_dir)}`, then the same `mer extract` again to recompute what it drops"


def foreign_member(group: h5py.Group, prefix: str = "") -> Optional[str]:
    """The first member that reads from outside this file (a non-hard link, external storage, a
    virtual dataset), described; None when there is none. A shared cache must not be a way to read
    other files, so such a shard is refused."""
    for name in group:
        path = f"{prefix}{name}"
        link = group.get(name, getlink=True)
        if isinstance(link, h5py.ExternalLink):
            return f"{path!r} is an external link to {link.filename}:{link.path}"
        if not isinstance(link, h5py.HardLink):
            return f"{path!r} is a {type(link).__name__} (only hard links are allowed)"
        member = group[name]
        if isinstance(member, h5py.Group):
            found = foreign_member(member, f"{path}/")
            if found:
                return found
        elif isinstance(member, h5py.Dataset) and member.external:
            return f"{path!r} is stored in external file(s) {', '.join(str(e[0]) for e in member.external)}"
        elif isinstance(member, h5py.Dataset) and member.is_virtual:
            return f"{path!r} is a virtual dataset (it maps other files)"
    return None


class ShardReader:
    """Read access to one complete shard; opened without HDF5 file locks (safe on shared filesystems).
    A damaged chunk (fletcher32), a truncated file or a member that points outside the file is a
    one-line CacheError naming the shard and the repair, never a wrong value."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self._file = h5py.File(self.path, "r", locking=False)
        except OSError as exc:
            raise self._damaged(exc) from exc
        try:
            foreign = foreign_member(self._file)
            if foreign:
                raise CacheError(f"{self.path}: refused: {foreign}; {repair_command(self.path.parent)}")
            self.ids = [s.decode() if isinstance(s, bytes) else s for s in self._file["ids"][()]]
            self.offsets = self._file["offsets"][()]
        except (OSError, KeyError) as exc:
            self._file.close()
            raise self._damaged(exc) from exc
        except CacheError:
            self._file.close()
            raise
        self.index = {utt_id: i for i, utt_id in enumerate(self.ids)}

    def _damaged(self, exc: Exception) -> CacheError:
        reason = " ".join(str(exc).split())
        return CacheError(f"{self.path}: unreadable shard ({reason}); {repair_command(self.path.parent)}")

    def get(self, utt_id: str) -> np.ndarray:
        i = self.index[utt_id]
        try:
            return self._file["data"][self.offsets[i]:self.offsets[i + 1]]
        except (OSError, KeyError) as exc:
            raise self._damaged(exc) from exc

    def extra(self, name: str, utt_id: str) -> np.ndarray:
        i = self.index[utt_id]
        try:
            group = self._file[f"extras/{name}"]
            offsets = group["offsets"]
            return group["data"][offsets[i]:offsets[i + 1]]
        except OSError as exc:
            raise self._damaged(exc) from exc

    def extra_names(self) -> list[str]:
        return sorted(self._file["extras"]) if "extras" in self._file else []

    def read_all(self) -> np.ndarray:
        """Every row of the shard in one read (checksums checked)."""
        try:
            return self._file["data"][()]
        except (OSError, KeyError) as exc:
            raise self._damaged(exc) from exc

    def read_extras(self) -> None:
        """Read every extra array once, so a damaged chunk there fails here (verify)."""
        for name in self.extra_names():
            try:
                self._file[f"extras/{name}/data"][()]
                self._file[f"extras/{name}/offsets"][()]
            except (OSError, KeyError) as exc:
                raise self._damaged(exc) from exc

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        data = self.read_all()  # one read per shard: streaming iteration is sequential
        for i, utt_id in enumerate(self.ids):
            yield utt_id, data[self.offsets[i]:self.offsets[i + 1]]

    def close(self) -> None:
        self._file.close()
