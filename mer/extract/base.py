"""What every extractor declares and does. Extractors are registered by name in EXTRACTORS;
a name may carry an argument after a colon (`hf-audio:/models/wavlm`, `opensmile-conf:/x.conf`)."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Callable, Optional

import numpy as np

from mer.cache.spec import CACHE_FORMAT_VERSION, GRANULARITIES, MODALITIES, FeatureSpec  # noqa: F401
from mer.data.utterance import Utterance
from mer.errors import MerError
from mer.options import OptionTypeError, typed_value
from mer.registry import Registry

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


def check_options(name: str, options: dict, known: set, error: type[MerError]) -> None:
    """One line naming the options an extractor does not know, and the ones it does."""
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise error(f"{name}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")


def with_options(name: str, preset, options: dict, error: type[MerError], fixed: tuple[str, ...] = ()):
    """`preset` (a dataclass of an extractor's options) with `options` (`--set NAME.KEY=VALUE` strings or
    Python values) of the fields' types; an unknown, fixed (`fixed`: set by the name) or mistyped
    option is one line."""
    known = {f.name: f for f in fields(preset) if f.name not in fixed}
    check_options(name, options, set(known), error)
    typed = {}
    for key, value in options.items():
        try:
            typed[key] = typed_value(known[key].type, value)
        except OptionTypeError as wrong:
            raise error(f"{name}: {key}={value!r} must be {wrong.expected} (e.g. --set {name}.{key}="
                        f"{getattr(preset, key)})") from None
    return replace(preset, **typed)


def check_all(checks: dict[str, bool], what: str, error: type[MerError]) -> None:
    """`checks`: message -> whether it holds; one line with every message that does not."""
    failed = [message for message, ok in checks.items() if not ok]
    if failed:
        raise error(f"{what}: {'; '.join(failed)}")


ExtractorFactory = Callable[..., Extractor]
EXTRACTORS: Registry[ExtractorFactory] = Registry("extractor")


def register_checkpoints(checkpoints: dict[str, str], build: Callable[..., Extractor], error: type[MerError],
                         alternative: str = "") -> None:
    """For each NAME -> hub id, two extractors: NAME (frames) and NAME-mean (pooled over time).
    `build(name, hub_id, options, defaults)` makes one; `alternative` ends the error for NAME:ARG."""
    for name, hub_id in checkpoints.items():
        for registered, defaults in ((name, {}), (f"{name}-mean", {"pool": "mean"})):
            EXTRACTORS.register(registered)(_checkpoint_factory(registered, hub_id, defaults, build, error, alternative))


def _checkpoint_factory(name: str, hub_id: str, defaults: dict, build: Callable[..., Extractor],
                        error: type[MerError], alternative: str) -> ExtractorFactory:
    def factory(arg: str = "", **options) -> Extractor:
        if arg:
            raise error(f"{name} takes no ':{arg}'; pass model={arg}{alternative.format(arg=arg)}")
        return build(name, hub_id, options, defaults)

    factory.__name__ = factory.__qualname__ = name.replace("-", "_")
    return factory


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
