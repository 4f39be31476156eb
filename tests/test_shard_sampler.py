"""Training reads the cache in its own order (mer.fuse.data.ShardStream): pools of whole shards,
shuffled per epoch, batched within the pool; each loader worker owns its shards; no row is
read twice; the batches hold what the preloaded path's hold. Random access keeps handles open
within a budget. A fold trained either way reaches the same metrics on the demo corpus."""

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch.utils.data import get_worker_info

import mer.cache.reader as reader_module
from mer.cache.corpus import merge_corpus_manifest
from mer.cache.reader import FeatureCache, open_file_budget
from mer.cache.shard import ShardReader, write_shard
from mer.cache.writer import FeatureWriter
from mer.data.protocols import Fold
from mer.data.utterance import Utterance
from mer.extract.base import FeatureSpec
from mer.fuse.data import FusionData, FusionLoader, PoolConfig

CORPUS = "pools"
LABELS = ("neutral", "happy", "angry", "sad")
TURNS = [4, 7, 3, 5, 6, 2, 8, 3, 5, 4, 6, 3, 5, 4]  # utterances per dialogue: dialogues cross shard boundaries
SPLIT_OF_DIALOGUE = ["train"] * 10 + ["dev"] * 2 + ["test"] * 2
FAILED = "pools/d3_u1"  # missing from `frames`: dropped everywhere


def utterances():
    return [Utterance(id=f"{CORPUS}/d{d}_u{t}", corpus=CORPUS, split=SPLIT_OF_DIALOGUE[d], dialogue=f"d{d}", turn=t,
                      label=LABELS[(d * 3 + t) % 4]) for d, n in enumerate(TURNS) for t in range(n)]


def rng_for(utt_id, salt):
    d, t = utt_id.split("/")[1].split("_")
    return np.random.default_rng([int(d[1:]), int(t[1:]), salt])


def frames(utt_id):  # frame level, 6-d, 10..40 rows: the primary feature (most bytes)
    rng = rng_for(utt_id, 1)
    return (2 + rng.standard_normal((int(rng.integers(10, 40)), 6))).astype(np.float32)


def words(utt_id):  # word level, 3-d, 1..8 rows
    rng = rng_for(utt_id, 2)
    return rng.standard_normal((int(rng.integers(1, 8)), 3)).astype(np.float32)


def vector(size, salt):
    return lambda utt_id: rng_for(utt_id, salt).standard_normal(size).astype(np.float32)


FEATURES = {  # name -> (spec, arrays, utterances per shard): the shard boundaries of the stores differ
    "frames": (FeatureSpec("frames", "audio", "frame", 6, 100.0, "float16"), frames, 6),
    "words": (FeatureSpec("words", "text", "word", 3, None, "float32"), words, 9),
    "u1": (FeatureSpec("u1", "audio", "utterance", 5, None, "float16"), vector(5, 3), 6),
    "u2": (FeatureSpec("u2", "audio", "utterance", 2, None, "float32"), vector(2, 4), 10),
}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("pools")
    utts = utterances()
    merge_corpus_manifest(root, CORPUS, utts)
    ids = [u.id for u in utts]
    for name, (spec, make, shard_size) in FEATURES.items():
        writer = FeatureWriter(root, CORPUS, spec)
        for start in range(0, len(ids), shard_size):
            claim = writer.claim(ids[start:start + shard_size])
            failed = {FAILED: "cannot decode"} if name == "frames" and FAILED in claim.ids else {}
            writer.commit(claim, writer.write_temp(claim, {i: make(i) for i in claim.ids if i not in failed}), failed)
    return root


def make_data(cache, audio="frames", text="words", pool=PoolConfig(shards=2), **options):
    parts = {p: tuple(u.id for u in utterances() if u.split == p) for p in ("train", "dev", "test")}
    fold = Fold("split", parts["train"], parts["dev"], parts["test"])
    return FusionData(cache, CORPUS, audio, text, fold, {u.id: u.label for u in utterances()}, LABELS, pool=pool,
                      **options)


def ids_of(batch):
    return [tuple(ids) if isinstance(ids, list) else ids for ids in batch["ids"]]


def passes(loader, count):
    return [[ids_of(batch) for batch in loader] for _ in range(count)]


# ----------------------------------------------------------------------------- the order of a pass

@pytest.mark.parametrize("unit", ["utterance", "dialogue"])
def test_every_training_sample_comes_once_per_epoch_whatever_the_workers(cache, unit):
    data = make_data(cache, sample_unit=unit)
    stream = data.stream("train", 4, seed=3)
    assert len(stream.units) > 4  # several pools of two shards
    for workers in (1, 2, 3):
        for epoch in (0, 1):
            seen = []
            for worker in range(workers):
                batches = [b for _, pool_batches in stream.plan(epoch, worker, workers) for b in pool_batches]
                assert all(len(b) == 4 for b in batches[:-1]) and 0 < len(batches[-1]) <= 4  # the short one last
                seen += [k for b in batches for k in b]
            assert sorted(seen) == list(range(len(data.samples["train"])))
    loader = data.loader("train", 4, seed=3)
    epoch = [sample for batch in loader for sample in ids_of(batch)]
    expected = data.samples["train"] if unit == "dialogue" else data.ids["train"]
    assert sorted(epoch) == sorted(expected) and len(loader) == len(list(loader))
    assert FAILED not in {i for sample in epoch for i in (sample if unit == "dialogue" else [sample])}


def test_one_seed_gives_one_sequence_of_epochs_and_epochs_differ(cache):
    data = make_data(cache)
    first, again = data.loader("train", 4, seed=3), data.loader("train", 4, seed=3)
    epochs = passes(first, 2)
    assert epochs == passes(again, 2)
    assert epochs[0] != epochs[1] and sorted(sum(epochs[0], [])) == sorted(sum(epochs[1], []))
    assert passes(data.loader("train", 4, seed=4), 1)[0] != epochs[0]
    first.set_epoch(1)
    assert passes(first, 1)[0] == epochs[1]
    pools = data.stream("train", 4, seed=3).pools(0)
    assert [u.shard for pool in pools for u in pool] != sorted(u.shard for pool in pools for u in pool)  # shuffled


def test_evaluation_reads_in_shard_order(cache):
    data = make_data(cache)
    stream = data.stream("train", 4, shuffle=False)
    shards = [u.shard for pool in stream.pools(0) for u in pool]
    assert shards == sorted(shards) and stream.pools(0) == stream.pools(7)
    loader = data.loader("dev", 3)
    assert passes(loader, 1) == passes(loader, 1)


def test_pools_hold_at_most_their_shards_and_bytes(cache):
    data = make_data(cache, pool=PoolConfig(shards=3, max_bytes=1500))
    pools = data.stream("train", 4, seed=0).pools(0)
    assert max(len(pool) for pool in pools) <= 3
    assert all(len(pool) == 1 or sum(u.nbytes for u in pool) <= 1500 for pool in pools)
    one_each = make_data(cache, pool=PoolConfig(shards=3, max_bytes=1)).stream("train", 4, seed=0).pools(0)
    assert all(len(pool) == 1 for pool in one_each)


# ----------------------------------------------------------------------------- loader workers

def worker_and_ids(items):
    return get_worker_info().id, list(items.ids)  # UtteranceRows


def test_each_loader_worker_owns_disjoint_shards(cache):
    data = make_data(cache)
    stream = data.stream("train", 4, seed=5)
    loader = FusionLoader(stream, batch_size=None, num_workers=2, collate_fn=worker_and_ids, persistent_workers=True)
    for epoch in (0, 1, 6):
        if epoch == 6:
            loader.set_epoch(6)  # reaches the persistent workers
        by_worker = {0: [], 1: []}
        for worker, ids in loader:
            by_worker[worker].append(ids)
        for worker in (0, 1):  # what worker w reads is what its plan says, epoch included
            expected = [[data.samples["train"][k][0] for k in b]
                        for _, batches in stream.plan(epoch, worker, 2) for b in batches]
            assert by_worker[worker] == expected
        shards = [{data.shard_of[i] for ids in by_worker[w] for i in ids} for w in (0, 1)]
        assert shards[0] and shards[1] and not shards[0] & shards[1]
        every = [i for w in (0, 1) for ids in by_worker[w] for i in ids]
        assert sorted(every) == sorted(data.ids["train"])


def test_a_loader_without_workers_gives_what_one_worker_gives(cache):
    """Without workers the loader collates the stream's batches itself (no DataLoader iterator): the same
    batches, epoch by epoch, as DataLoader's own path through one worker."""
    data = make_data(cache)
    here, worker = (data.loader("train", 4, seed=2, num_workers=n) for n in (0, 1))
    for _ in range(2):
        for ours, theirs in zip(list(here), list(worker), strict=True):
            assert ours["ids"] == theirs["ids"]
            for key in ("audio", "audio_mask", "text", "text_mask", "label"):
                assert torch.equal(ours[key], theirs[key])


# ----------------------------------------------------------------------------- reading

@pytest.fixture
def reads(monkeypatch):
    """(shard path, ids) of every ShardReader.get_many call."""
    calls = []
    original = ShardReader.get_many

    def recording(self, utt_ids):
        calls.append((self.path, tuple(utt_ids)))
        return original(self, utt_ids)

    monkeypatch.setattr(ShardReader, "get_many", recording)
    return calls


@pytest.mark.parametrize("unit,audio", [("utterance", "frames"), ("dialogue", "u1+u2")])
def test_no_row_is_read_twice_per_epoch(cache, reads, unit, audio):
    data = make_data(cache, audio=audio, sample_unit=unit)
    reads.clear()
    list(data.loader("train", 4, seed=1))
    by_store = {}
    for path, ids in reads:
        by_store.setdefault(path.parent, []).extend(ids)
    assert len(by_store) == len(audio.split("+")) + 1
    for ids in by_store.values():
        assert len(ids) == len(set(ids)) == len(data.ids["train"])
    if unit == "utterance":  # the primary feature's shards: each read once, in one call, whole
        primary = [path for path, _ in reads if path.parent.name.startswith("frames")]
        assert len(primary) == len(set(primary)) == len(data.stream("train", 4).units)


@pytest.mark.parametrize("unit,audio", [("utterance", "frames"), ("dialogue", "u1+u2")])
def test_batches_hold_what_the_preloaded_path_gives(cache, unit, audio):
    """Same padding, masks, labels and dialogue grouping, whatever order the batches come in."""
    lazy = make_data(cache, audio=audio, sample_unit=unit, max_audio_frames=25)
    eager = make_data(cache, audio=audio, sample_unit=unit, max_audio_frames=25, preload=True)
    assert lazy.memory is None and eager.memory is not None
    samples = [{}, {}]
    for side, data in enumerate((lazy, eager)):
        for batch in data.loader("train", 3, seed=2):
            for b, sample in enumerate(ids_of(batch)):
                samples[side][sample] = unpadded(batch, b, unit)
    assert samples[0].keys() == samples[1].keys()
    for sample, (inputs, labels) in samples[0].items():
        other_inputs, other_labels = samples[1][sample]
        assert torch.equal(labels, other_labels)
        for role in inputs:
            assert torch.equal(inputs[role], other_inputs[role])


def unpadded(batch, b, unit):
    """One sample's inputs and labels; checks that its padding is zero and its mask says where it is."""
    mask_key = "utterance_mask" if unit == "dialogue" else None
    inputs = {}
    for role in ("audio", "text"):
        mask = batch[mask_key or f"{role}_mask"][b]
        n = int(mask.sum())
        assert mask[:n].all() and not batch[role][b, n:].any()
        inputs[role] = batch[role][b, :n]
    if unit == "dialogue":
        n = int(batch["utterance_mask"][b].sum())
        assert (batch["label"][b, n:] == -100).all()
        return inputs, batch["label"][b, :n]
    return inputs, batch["label"][b]


def test_get_many_reads_once_and_matches_get(tmp_path):
    spec = FeatureSpec("x", "audio", "frame", 4, 100.0, "float32")
    ids = [f"x/u{i}" for i in range(12)]
    arrays = [np.full((0 if i == 5 else 3 + i, 4), i, np.float32) for i in range(12)]  # u5 has no rows
    write_shard(tmp_path / "shard.h5", spec, ids, arrays)
    reader = ShardReader(tmp_path / "shard.h5")
    for wanted in (ids, ids[::-1], ["x/u11", "x/u0"], ["x/u2", "x/u3", "x/u5", "x/u9"], ["x/u5"], []):
        got = reader.get_many(wanted)
        assert len(got) == len(wanted)
        for utt_id, array in zip(wanted, got):
            np.testing.assert_array_equal(array, reader.get(utt_id))


# ----------------------------------------------------------------------------- random access

def test_random_access_keeps_handles_open_within_the_budget(cache, monkeypatch):
    monkeypatch.setattr(reader_module._OPEN_SHARDS, "budget", 2)
    store = FeatureCache(cache).open(CORPUS, "frames")
    first_of_each = [FeatureCache(cache).open(CORPUS, "frames").manifest["shards"][k]["ids"][0] for k in range(4)]
    for utt_id in first_of_each + first_of_each[:1]:
        np.testing.assert_array_equal(store.get(utt_id), frames(utt_id).astype(np.float16))
    mine = [key for key in reader_module._OPEN_SHARDS._open if key[0] == store._number]
    assert len(mine) == 2
    store.close()
    assert not [key for key in reader_module._OPEN_SHARDS._open if key[0] == store._number]


@pytest.mark.parametrize("soft,expected", [(1024, 512), (300, 44), (100, 8), (1 << 20, 512)])
def test_open_file_budget_leaves_headroom(monkeypatch, soft, expected):
    monkeypatch.setattr(reader_module.resource, "getrlimit", lambda which: (soft, soft))
    assert open_file_budget() == expected


# ----------------------------------------------------------------------------- a fold, either way

@pytest.fixture(scope="module")
def demo_cache(tmp_path_factory, demo_root):
    """The 40-utterance demo's mfcc40 in shards of 4 utterances."""
    from mer.cli import cli

    cache = tmp_path_factory.mktemp("demo-pools")
    result = CliRunner().invoke(cli, ["extract", "--dataset", "demo", "--set", "corpus.size=40", "--root",
                                      str(demo_root), "--features", "mfcc40", "--cache", str(cache),
                                      "--shard-size", "4", "--no-progress"])
    assert result.exit_code == 0, result.output
    return cache


def test_a_fold_from_the_cache_matches_one_from_memory(demo_cache, tmp_path):
    from mer.fuse.run import FuseConfig, run_fuse
    from mer.fuse.trainer import TrainerConfig

    outcomes = {}
    for name, budget in (("streamed", 0), ("preloaded", 2 << 30)):
        lines = []
        cfg = FuseConfig("audio-only", "demo-n40-s0", demo_cache, out=tmp_path / name, preload_budget=budget,
                         trainer=TrainerConfig(device="cpu"))
        document, run_dir = run_fuse(cfg, log=lines.append)
        assert any(line.startswith("input:") and ("pools of whole shards" if budget == 0 else "into memory once")
                   in line for line in lines)
        outcomes[name] = document["folds"][0], (run_dir / "history.json").read_text()
    import json

    (streamed, streamed_history), (preloaded, preloaded_history) = outcomes["streamed"], outcomes["preloaded"]
    # within noise: the test split is 8 utterances, so one or two of them
    assert abs(streamed["test"]["accuracy"] - preloaded["test"]["accuracy"]) <= 0.25
    losses = [[epoch["train"]["total"] for epoch in json.loads(h)["split"]] for h in (streamed_history,
                                                                                      preloaded_history)]
    assert losses[0][-1] == pytest.approx(losses[1][-1], rel=0.25)
    assert losses[0][0] == pytest.approx(losses[1][0], rel=0.1)


def test_the_preload_budget_is_shared_by_the_folds_running_at_once(demo_cache):
    from mer.fuse.run import FuseConfig, _small_enough

    size = sum(p.stat().st_size for p in demo_cache.glob("demo-n40-s0/mfcc40*/shard-*.h5"))
    features = {"audio": "mfcc40", "text": None}
    for workers, preloads in ((1, True), (4, False)):
        lines = []
        cfg = FuseConfig("audio-only", "demo-n40-s0", demo_cache, workers=workers, preload_budget=2 * size)
        assert _small_enough(FeatureCache(demo_cache), cfg, features, lines.append) is preloads
        assert f"{workers} fold(s) at once" in lines[0]


def test_read_many_keeps_handles_open_without_a_chunk_cache(cache, monkeypatch):
    """A training pass opens every shard each epoch: read_many's handles stay open in the process's budget (no
    chunk cache, so they hold no rows), and closing the store closes them."""
    opened = []
    monkeypatch.setattr(reader_module, "ShardReader", lambda path, chunk_cache_bytes, **checks:
                        opened.append(chunk_cache_bytes) or ShardReader(path, chunk_cache_bytes=chunk_cache_bytes, **checks))
    store = FeatureCache(cache).open(CORPUS, "frames")
    ids = store.ids()
    for _ in range(2):
        got = dict(store.read_many(ids))
        assert sorted(got) == sorted(ids)
        np.testing.assert_array_equal(got[ids[0]], frames(ids[0]).astype(np.float16))
    assert opened == [reader_module.STREAM_CHUNK_CACHE] * len(store.shard_files())  # opened once, not per pass
    assert len([key for key in reader_module._OPEN_SHARDS._open if key[0] == store._number]) == len(opened)
    store.close()
    assert not [key for key in reader_module._OPEN_SHARDS._open if key[0] == store._number]
