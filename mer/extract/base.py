"""What every extractor declares and does. Extractors are registered by name in EXTRACTORS;
a name may carry an argument after a colon (`hf-audio:/models/wavlm`, `opensmile-conf:/x.conf`)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Optional

import numpy as np

from mer.data.utterance import Utterance
from mer.errors import MerError
from mer.registry import Registry

CACHE_FORMAT_VERSION = 1
MODALITIES = ("audio", "text")
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

    def __post_init__(self):
        if self.modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {self.modality!r}")
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {self.granularity!r}")

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
        out["inner_shape"] = list(self.inner_shape) if self.inner_shape else None
        out["config_hash"] = self.config_hash
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "FeatureSpec":
        data = {k: v for k, v in data.items() if k != "config_hash"}
        if data.get("inner_shape"):
            data["inner_shape"] = tuple(data["inner_shape"])
        return cls(**data)


@dataclass
class ExtractItem:
    """One utterance handed to an extractor: audio extractors get `audio`, text ones `utterance.text`."""

    utterance: Utterance
    audio: Optional[np.ndarray] = None  # mono float32, 16 kHz


class Extractor:
    """Base class. Subclasses set `spec` in __init__ and implement `extract`.

    `extract` returns one float array per item: (frames, *row_shape) for frame/token/word
    granularity, (*row_shape,) for utterance granularity. Heavy state (models) is created in
    `load`, which the runner calls once per process, so extractors stay cheap to pickle.
    `per_item_cpu` marks extractors whose work is per utterance on the CPU (openSMILE): the
    runner spreads those over worker processes instead of batching them.
    """

    spec: FeatureSpec
    per_item_cpu: bool = False

    @property
    def modality(self) -> str:
        return self.spec.modality

    def load(self, device: str = "cpu") -> None:
        """Create models or other heavy state. Default: nothing to load."""

    def extract(self, items: list[ExtractItem]) -> list[np.ndarray]:
        raise NotImplementedError  # noqa: abstract; every registered extractor overrides it


ExtractorFactory = Callable[..., Extractor]
EXTRACTORS: Registry[ExtractorFactory] = Registry("extractor")


def build_extractor(name: str, **options: Any) -> Extractor:
    """`mfcc40` -> EXTRACTORS['mfcc40'](); `hf-audio:/dir` -> EXTRACTORS['hf-audio'](arg='/dir')."""
    import mer.extract  # noqa: F401  (registers the built-in extractors)

    base, _, arg = name.partition(":")
    factory = EXTRACTORS.get(base)
    extractor = factory(arg=arg, **options) if arg else factory(**options)
    extractor.spec = replace(extractor.spec, options={"name": name, **options})
    return extractor


def rebuild_extractor(spec: FeatureSpec) -> Extractor:
    """The extractor that produced `spec` (from a cache or a run), checked by config hash."""
    options = dict(spec.options)
    name = options.pop("name", spec.name)
    extractor = build_extractor(name, **options)
    if extractor.spec.dtype != spec.dtype:
        extractor.spec = replace(extractor.spec, dtype=spec.dtype)
    if extractor.spec.config_hash != spec.config_hash:
        raise MerError(f"cannot rebuild {spec.name}@{spec.config_hash}: the same options now give config "
                       f"{extractor.spec.config_hash} (another package version or other weights); "
                       "re-extract with the current version")
    return extractor
