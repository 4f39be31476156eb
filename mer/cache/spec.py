"""FeatureSpec: the self-description of stored arrays that keys a cache directory. It lives in
the cache layer (the lowest that needs it); extractors build one, readers parse one."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Optional

CACHE_FORMAT_VERSION = 1
MODALITIES = ("audio", "text", "transcript")  # transcript: a text source made from audio (mer/cache/transcripts.py)
GRANULARITIES = ("frame", "token", "word", "utterance")


@dataclass(frozen=True)
class FeatureSpec:
    """Self-description stored with every cached feature; its hash keys the cache directory."""

    name: str  # the registered name the user typed, e.g. "mfcc40"
    modality: str  # "audio" | "text"
    granularity: str  # "frame" | "token" | "word" | "utterance"
    dim: int  # size of the last axis
    frame_rate: Optional[float] = None  # frames per second for frame granularity
    dtype: str = "float16"  # storage dtype
    config: dict = field(default_factory=dict)  # every option that changes the values
    model_id: Optional[str] = None  # hub id or local path of pretrained weights
    model_revision: Optional[str] = None  # hub revision, or a hash of local weights
    inner_shape: Optional[tuple] = None  # per-frame shape when not (dim,), e.g. (layers, dim)
    options: dict = field(default_factory=dict)  # the factory options it was built with (to rebuild it)
    # Keys of a stored spec this version does not know (written by a newer one): read, ignored, reported.
    ignored_keys: tuple = field(default=(), compare=False, repr=False)

    def __post_init__(self):
        if self.modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {self.modality!r}")
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {self.granularity!r}")

    @property
    def reads(self) -> str:
        """What the feature is computed from: "text" for text features, "audio" for the others."""
        return "text" if self.modality == "text" else "audio"

    @property
    def row_shape(self) -> tuple:
        return tuple(self.inner_shape) if self.inner_shape else (self.dim,)

    def hash_fields(self) -> dict:
        # Everything that changes stored values. Not the package version (a release must not
        # invalidate every cache), not `options` (two spellings of one config, layers=last and
        # layers=-1, share an entry), not frame_rate/dim (they follow from config).
        # Local weights are keyed by their content hash alone, so the same checkpoint at two
        # paths (two people's home directories) shares one cache entry.
        local = bool(self.model_revision and self.model_revision.startswith("sha256:"))
        return {"format": CACHE_FORMAT_VERSION, "name": self.name, "config": self.config, "dtype": self.dtype,
                "model_id": None if local else self.model_id, "model_revision": self.model_revision}

    @property
    def config_hash(self) -> str:
        blob = json.dumps(self.hash_fields(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def to_dict(self) -> dict:
        out = asdict(self)
        del out["ignored_keys"]
        out["inner_shape"] = list(self.inner_shape) if self.inner_shape else None
        out["config_hash"] = self.config_hash
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "FeatureSpec":
        known = {f.name for f in fields(cls)} - {"ignored_keys"}
        ignored = tuple(sorted(k for k in data if k not in known and k != "config_hash"))
        data = {k: v for k, v in data.items() if k in known}
        if data.get("inner_shape"):
            data["inner_shape"] = tuple(data["inner_shape"])
        return cls(**data, ignored_keys=ignored)
