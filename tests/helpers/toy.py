"""A toy feature for cache tests: deterministic arrays of varying length."""

import numpy as np

from mer.extract.base import FeatureSpec

TOY_IDS = [f"toy/u{i}" for i in range(40)]


def toy_spec(dtype: str = "float16", granularity: str = "frame", name: str = "toy", **config) -> FeatureSpec:
    return FeatureSpec(name, "audio", granularity, 4, 100.0 if granularity == "frame" else None, dtype, config)


def toy_array(utt_id: str, granularity: str = "frame") -> np.ndarray:
    index = int(utt_id.rsplit("u", 1)[1])
    rng = np.random.default_rng(index)
    if granularity == "utterance":
        return rng.standard_normal(4).astype(np.float32)
    return rng.standard_normal((3 + index % 7, 4)).astype(np.float32)


def toy_arrays(ids, granularity: str = "frame") -> dict:
    return {i: toy_array(i, granularity) for i in ids}
