"""`batching` is a config choice: "bucket" batches hold similar lengths, "random" ones mix them
(MGCMA's default: its contrastive losses take their negatives from the batch); both seeded."""

import numpy as np
import pytest

from mer.errors import MerError
from mer.fuse.data import BucketBatchSampler
from mer.fuse.models import make_config, model_names
from tests.test_fuse_data import LABELS, cache, make_fold, targets  # noqa: F401 (cache: a fixture)

LENGTHS = [int(n) for n in np.random.default_rng(0).integers(1, 400, 256)]


def spread(batches):
    """Mean over batches of longest - shortest."""
    return float(np.mean([max(LENGTHS[i] for i in b) - min(LENGTHS[i] for i in b) for b in batches]))


def sampler(batching, seed=0):
    return BucketBatchSampler(LENGTHS, 16, shuffle=True, seed=seed, batches_per_bucket=1, batching=batching)


def test_random_batches_mix_lengths_and_bucket_batches_do_not():
    bucket, random = sampler("bucket").batches(0), sampler("random").batches(0)
    assert spread(bucket) < 40 < 250 < spread(random)  # lengths 1..400, 16 per batch
    for batches in (bucket, random):
        assert sorted(i for b in batches for i in b) == list(range(len(LENGTHS)))


@pytest.mark.parametrize("batching", ["bucket", "random"])
def test_the_same_seed_gives_the_same_batches(batching):
    assert sampler(batching, seed=3).batches(2) == sampler(batching, seed=3).batches(2)
    assert sampler(batching, seed=3).batches(2) != sampler(batching, seed=4).batches(2)
    assert sampler(batching).batches(0) != sampler(batching).batches(1)  # a new draw each epoch


def test_random_evaluation_keeps_the_sample_order():
    evaluation = BucketBatchSampler(LENGTHS, 16, batching="random")
    assert [i for b in evaluation.batches() for i in b] == list(range(len(LENGTHS)))


def test_every_model_has_batching_and_mgcma_defaults_to_random():
    assert {name: make_config(name).batching for name in model_names()} == {
        name: "random" if name == "mgcma" else "bucket" for name in model_names()}
    assert make_config("mgcma", "demo").batching == "random"
    assert make_config("mcsan", batching="random").batching == "random"
    with pytest.raises(MerError, match="--set batching=bucket"):
        make_config("mcsan", batching="sorted")
    with pytest.raises(MerError, match="batching"):
        BucketBatchSampler(LENGTHS, 16, batching="sorted")


def test_a_fold_trains_with_the_configs_batching(cache, monkeypatch):
    from dataclasses import replace

    from mer.data.protocols import FoldSet
    from mer.fuse import data as fuse_data
    from mer.fuse.models import tiny_config
    from mer.fuse.run import FoldJob, train_one_fold
    from mer.fuse.trainer import TrainerConfig

    used = []
    batches = fuse_data.BucketBatchSampler.batches

    def recording(self, epoch=None):
        used.append((self.shuffle, self.batching))
        return batches(self, epoch)

    monkeypatch.setattr(fuse_data.BucketBatchSampler, "batches", recording)
    fold_set = FoldSet("mini", [make_fold()], LABELS, False, "toy", targets())
    for batching in ("random", "bucket"):
        used.clear()
        config = replace(tiny_config("mgcma"), batching=batching, max_epochs=1, monitor="loss")
        train_one_fold(FoldJob("mgcma", config, TrainerConfig(device="cpu"), cache, "mini", {"audio": "wav",
                       "text": "words"}, fold_set, "split", False, 0), log=None)
        assert {b for shuffle, b in used if shuffle} == {batching}
