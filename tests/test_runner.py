"""How the runner cuts work into batches."""

import numpy as np
import pytest

from mer.data.utterance import Utterance
from mer.extract.base import ExtractItem, build_extractor
from mer.extract.runner import CPU_BATCH_SECONDS, GPU_BATCH_SECONDS, ExtractConfig, make_batches


def items(seconds: list[float]) -> list[ExtractItem]:
    return [ExtractItem(Utterance(id=f"u{i}", corpus="t"), np.zeros(int(s * 16000), np.float32))
            for i, s in enumerate(seconds)]


@pytest.mark.parametrize("device,batch_seconds,expected", [
    ("cpu", None, CPU_BATCH_SECONDS), ("cuda", None, GPU_BATCH_SECONDS), ("cuda:1", None, GPU_BATCH_SECONDS),
    ("cpu", 60.0, 60.0)])
def test_padded_batches_are_capped_by_audio_seconds_per_device(device, batch_seconds, expected):
    config = ExtractConfig(dataset="x", features=[], cache="c", device=device, batch_seconds=batch_seconds)
    assert config.audio_batch_seconds == expected
    clips = items([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0] * 3)
    batches = make_batches(build_extractor("mfcc40"), clips, config)
    assert sorted(id(item) for batch in batches for item in batch) == sorted(id(item) for item in clips)
    for batch in batches:
        lengths = [len(item.audio) for item in batch]
        assert lengths == sorted(lengths)  # length-sorted: little padding
        assert len(batch) == 1 or max(lengths) * len(batch) <= expected * 16000
    assert max(len(batch) for batch in batches) > 1
