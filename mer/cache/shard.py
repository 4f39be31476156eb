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
from typing import Iterator, Optional, Sequence

import h5py
import numpy as np

from mer import __version__
from mer.errors import CacheError
from mer.cache.spec import FeatureSpec

FLOAT16_MAX = float(np.finfo(np.float16).max)
_SOUND_SHARDS: dict[tuple, tuple] = {}  # file identity -> (ids, offsets, index) of a shard that passed the checks
DENSE_SPAN = 0.5  # get_many reads the whole span between the first and last wanted row when this share of it is wanted


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

    def __init__(self, path: Path, chunk_cache_bytes: Optional[int] = None,
                 expected_ids: Optional[list[str]] = None):
        """`chunk_cache_bytes`: the file's HDF5 chunk cache (HDF5's default when None: 1 MiB in 1.x,
        8 MiB in 2.x); a handle kept open for reads by id sets it, so memory does not depend on the
        HDF5 version. `expected_ids`: the manifest's record of this shard; the ids the file holds
        (which no checksum covers) must be exactly these, checked once here, not per read."""
        self.path = Path(path)
        cache = {} if chunk_cache_bytes is None else {"rdcc_nbytes": chunk_cache_bytes}
        try:
            self._file = h5py.File(self.path, "r", locking=False, **cache)
        except OSError as exc:
            raise self._damaged(exc) from exc
        try:
            self.ids, self.offsets, self.index = self._layout()
            self._data = self._file["data"]  # looked up once: h5py's lookup costs more than a small read
            if expected_ids is not None and self.ids != expected_ids:
                raise CacheError(f"{self.path}: {_ids_differ(self.ids, expected_ids)}; "
                                 f"{repair_command(self.path.parent)}")
        except (OSError, KeyError, UnicodeDecodeError) as exc:
            self._file.close()
            raise self._damaged(exc) from exc
        except CacheError:
            self._file.close()
            raise

    def _layout(self) -> tuple[list[str], np.ndarray, dict[str, int]]:
        """ids, offsets and id -> position, after the check for members that read other files. Both are
        remembered per file identity: a committed shard is never changed in place (a new one is a new
        file), and a training pass opens every shard again."""
        stat = os.fstat(self._file.id.get_vfd_handle())
        identity = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if identity not in _SOUND_SHARDS:
            foreign = foreign_member(self._file)
            if foreign:
                raise CacheError(f"{self.path}: refused: {foreign}; {repair_command(self.path.parent)}")
            ids = [s.decode() if isinstance(s, bytes) else s for s in self._file["ids"][()]]
            offsets = self._file["offsets"][()]
            offsets.setflags(write=False)  # shared by every reader of the file
            _SOUND_SHARDS[identity] = ids, offsets, {utt_id: i for i, utt_id in enumerate(ids)}
        return _SOUND_SHARDS[identity]

    def _damaged(self, exc: Exception) -> CacheError:
        reason = " ".join(str(exc).split())
        return CacheError(f"{self.path}: unreadable shard ({reason}); {repair_command(self.path.parent)}")

    def _not_here(self, utt_id: str) -> "IdNotStored":
        return IdNotStored(f"{self.path}: holds no utterance {utt_id!r}")

    def _position(self, utt_id: str) -> int:
        try:
            return self.index[utt_id]
        except KeyError:
            raise self._not_here(utt_id) from None

    def get(self, utt_id: str) -> np.ndarray:
        i = self._position(utt_id)
        return self._rows(int(self.offsets[i]), int(self.offsets[i + 1]))

    def get_many(self, utt_ids: Sequence[str]) -> list[np.ndarray]:
        """The rows of each of `utt_ids` (distinct ids), from ONE read: the whole span between the first
        and the last wanted row when they fill at least DENSE_SPAN of it (contiguous), else only their
        rows (one HDF5 selection of many blocks). The arrays are views of that read's buffer."""
        if not len(utt_ids):
            return []
        try:
            positions = np.fromiter((self.index[i] for i in utt_ids), np.int64, len(utt_ids))
        except KeyError as exc:
            raise self._not_here(exc.args[0]) from None
        starts, ends = self.offsets[positions], self.offsets[positions + 1]
        low, high = int(starts.min()), int(ends.max())
        if (ends - starts).sum() >= DENSE_SPAN * (high - low):
            span = self._rows(low, high)
            return [span[s:e] for s, e in zip((starts - low).tolist(), (ends - low).tolist())]  # ints: 2x faster
        rows, firsts = self._blocks(starts, ends)
        return [rows[f:f + n] for f, n in zip(firsts.tolist(), (ends - starts).tolist())]

    def _rows(self, start: int, end: int) -> np.ndarray:
        try:
            return self._data[start:end]
        except (OSError, KeyError) as exc:
            raise self._damaged(exc) from exc

    def _blocks(self, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows [starts[k], ends[k]) for every k in one read: (those rows in file order, where each k's begin)."""
        order = np.argsort(starts, kind="stable")
        sizes = (ends - starts)[order]
        firsts = np.empty(len(order), np.int64)
        firsts[order] = np.cumsum(sizes) - sizes
        row_shape = self._data.shape[1:]
        selection = self._data.id.get_space()
        selection.select_none()
        for start, end in _merged(starts[order], ends[order]):
            selection.select_hyperslab((start, *[0] * len(row_shape)), (end - start, *row_shape),
                                       op=h5py.h5s.SELECT_OR)
        rows = np.empty((int(sizes.sum()), *row_shape), self._data.dtype)
        try:
            if len(rows):
                self._data.id.read(h5py.h5s.create_simple(rows.shape), selection, rows)
        except (OSError, KeyError) as exc:
            raise self._damaged(exc) from exc
        return rows, firsts

    def extra(self, name: str, utt_id: str) -> np.ndarray:
        i = self._position(utt_id)
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
            return self._data[()]
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


class IdNotStored(CacheError, KeyError):
    """An id a store or shard does not hold: one line for the CLI, and still a KeyError for look-ups."""

    def __str__(self) -> str:
        return Exception.__str__(self)  # KeyError's would quote the line


def _ids_differ(found: list[str], expected: list[str]) -> str:
    """The first difference between the ids a shard holds and those its manifest record lists, in a few words."""
    if len(found) != len(expected):
        return f"holds {len(found)} ids, manifest.json records {len(expected)} for it (another shard's file?)"
    at = next(i for i, (a, b) in enumerate(zip(found, expected)) if a != b)
    return f"holds id {found[at]!r} where manifest.json records {expected[at]!r} (a changed or swapped file)"


def _merged(starts: np.ndarray, ends: np.ndarray) -> Iterator[tuple[int, int]]:
    """Sorted row ranges with the empty ones left out and the adjacent ones joined (fewer HDF5 blocks)."""
    current = None
    for start, end in zip(starts.tolist(), ends.tolist()):
        if start == end:
            continue
        if current and current[1] == start:
            current = (current[0], end)
            continue
        if current:
            yield current
        current = (start, end)
    if current:
        yield current
