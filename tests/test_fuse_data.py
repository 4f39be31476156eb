"""mer/fuse/data.py: batches in both modes, cutting, training-split normalisation, dropped ids,
length buckets, workers. A small cache is built with the real FeatureWriter."""

import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mer.cache.reader import FeatureCache
from mer.cache.writer import FeatureWriter
from mer.data.protocols import Fold
from mer.cache.corpus import merge_corpus_manifest
from mer.data.utterance import Utterance
from mer.errors import MerError
from mer.extract.base import FeatureSpec
from mer.fuse.data import (TORCH_GRAIN, BucketBatchSampler, FusionCollate, FusionData, NormStats, as_float32,
                           padding_ratio, shard_lengths)

CORPUS = "mini"
LABELS = ("neutral", "happy", "angry", "sad")
TURNS = [3, 5, 2, 4, 6, 1, 3, 5, 4, 2, 3, 4]  # utterances per dialogue
SPLIT_OF_DIALOGUE = ["train"] * 8 + ["dev"] * 2 + ["test"] * 2
AUDIO_FAILED = {"mini/d1_u2": "clip shorter than one frame", "mini/d10_u0": "cannot decode"}
TEXT_NOT_EXTRACTED = "mini/d8_u1"


def utterances():
    out = []
    for d, n in enumerate(TURNS):
        for t in range(n):
            out.append(Utterance(id=f"mini/d{d}_u{t}", corpus=CORPUS, split=SPLIT_OF_DIALOGUE[d],
                                 dialogue=f"d{d}", turn=t, label=LABELS[(d + t) % 4]))
    return out


def rng_for(utt_id, salt):
    d, t = utt_id.split("/")[1].split("_")
    return np.random.default_rng([int(d[1:]), int(t[1:]), salt])


def audio_frames(utt_id):  # frame level, 4-d, 2..60 frames, values far from 0 mean
    rng = rng_for(utt_id, 1)
    return (3.0 + 2.0 * rng.standard_normal((int(rng.integers(2, 60)), 4))).astype(np.float32)


def text_words(utt_id):  # word level, 3-d, 1..15 words
    rng = rng_for(utt_id, 2)
    return rng.standard_normal((int(rng.integers(1, 15)), 3)).astype(np.float32) - 1.0


def utt_vector(utt_id):  # utterance level, 5-d
    return (10 + rng_for(utt_id, 3).standard_normal(5)).astype(np.float32)


def utt_vector2(utt_id):  # utterance level, 2-d
    return rng_for(utt_id, 4).standard_normal(2).astype(np.float32)


def layered(utt_id):  # frame level, (frames, 2 layers, 3)
    return rng_for(utt_id, 5).standard_normal((4, 2, 3)).astype(np.float32)


FEATURES = {  # name -> (spec, array function, ids to leave out, failures)
    "wav": (FeatureSpec("wav", "audio", "frame", 4, 100.0, "float16"), audio_frames, set(), AUDIO_FAILED),
    "words": (FeatureSpec("words", "text", "word", 3, None, "float32"), text_words, {TEXT_NOT_EXTRACTED}, {}),
    "utt": (FeatureSpec("utt", "audio", "utterance", 5, None, "float16"), utt_vector, set(), {}),
    "utt2": (FeatureSpec("utt2", "audio", "utterance", 2, None, "float32"), utt_vector2, set(), {}),
    "layered": (FeatureSpec("layered", "audio", "frame", 3, 50.0, "float16", inner_shape=(2, 3)), layered,
                set(), {}),
}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    utts = utterances()
    rng = np.random.default_rng(0)
    # manifest order is shuffled: dialogue order must come from `turn`, not from the file
    merge_corpus_manifest(root, CORPUS, [utts[i] for i in rng.permutation(len(utts))])
    ids = [u.id for u in utts]
    for name, (spec, make, skip, failed) in FEATURES.items():
        writer = FeatureWriter(root, CORPUS, spec)
        wanted = [i for i in ids if i not in skip]
        for start in range(0, len(wanted), 7):  # several shards
            claim = writer.claim(wanted[start:start + 7])
            arrays = {i: make(i) for i in claim.ids if i not in failed}
            writer.commit(claim, writer.write_temp(claim, arrays), {i: failed[i] for i in claim.ids if i in failed})
    return root


def make_fold():
    parts = {p: tuple(u.id for u in utterances() if u.split == p) for p in ("train", "dev", "test")}
    return Fold("split", parts["train"], parts["dev"], parts["test"])


def targets():
    return {u.id: u.label for u in utterances()}


def make_data(cache, audio="wav", text="words", **options):
    return FusionData(cache, CORPUS, audio, text, make_fold(), targets(), LABELS, **options)


def stored(cache, feature, utt_id):
    return FeatureCache(cache).open(CORPUS, feature).get(utt_id).astype(np.float32)


# ----------------------------------------------------------------------------- utterance mode

def test_utterance_batches_follow_the_contract(cache):
    data = make_data(cache, normalize=False)
    assert data.input_dims == {"audio": 4, "text": 3} and data.num_classes == 4
    seen = []
    for batch in data.loader("train", batch_size=5, shuffle=True, seed=1):
        assert set(batch) == {"audio", "audio_mask", "text", "text_mask", "label", "ids"}
        size = len(batch["ids"])
        assert batch["audio"].dtype == batch["text"].dtype == torch.float32
        assert batch["audio_mask"].dtype == batch["text_mask"].dtype == torch.bool
        assert batch["label"].dtype == torch.long and batch["label"].shape == (size,)
        assert batch["audio"].shape[:2] == batch["audio_mask"].shape and batch["audio"].shape[::2] == (size, 4)
        assert batch["text"].shape[:2] == batch["text_mask"].shape and batch["text"].shape[::2] == (size, 3)
        assert batch["audio_mask"].sum(1).max() == batch["audio"].shape[1]  # padded to the longest item
        for b, utt_id in enumerate(batch["ids"]):
            audio, text = stored(cache, "wav", utt_id), stored(cache, "words", utt_id)
            n, m = int(batch["audio_mask"][b].sum()), int(batch["text_mask"][b].sum())
            assert (n, m) == (len(audio), len(text))
            assert batch["audio_mask"][b, :n].all()  # real positions first
            np.testing.assert_array_equal(batch["audio"][b, :n].numpy(), audio)
            np.testing.assert_array_equal(batch["text"][b, :m].numpy(), text)
            assert not batch["audio"][b, n:].any() and not batch["text"][b, m:].any()
            assert LABELS[int(batch["label"][b])] == targets()[utt_id]
        seen += batch["ids"]
    assert sorted(seen) == sorted(data.ids["train"]) and len(seen) == len(set(seen))


def test_truncation_keeps_the_first_rows_and_is_reported(cache):
    data = make_data(cache, normalize=False, max_audio_frames=10, max_text_len=4)
    long_audio = [i for i in data.ids["train"] if len(stored(cache, "wav", i)) > 10]
    long_text = [i for i in data.ids["train"] if len(stored(cache, "words", i)) > 4]
    assert long_audio and long_text
    batch = next(iter(data.loader("train", batch_size=100)))
    assert batch["audio"].shape[1] == 10 and batch["text"].shape[1] == 4
    index = {utt_id: b for b, utt_id in enumerate(batch["ids"])}
    for utt_id in long_audio:
        np.testing.assert_array_equal(batch["audio"][index[utt_id]].numpy(), stored(cache, "wav", utt_id)[:10])
    for utt_id in long_text:
        np.testing.assert_array_equal(batch["text"][index[utt_id]].numpy(), stored(cache, "words", utt_id)[:4])
    every = [i for p in ("train", "dev", "test") for i in data.ids[p]]
    assert data.truncated["audio"] == sum(len(stored(cache, "wav", i)) > 10 for i in every)
    assert "cut to their first 10" in data.summary()


def test_unimodal_utterance_level_and_joined_features(cache):
    data = make_data(cache, audio="utt+utt2", text=None, normalize=False)
    assert data.input_dims == {"audio": 7, "text": None}
    batch = next(iter(data.loader("dev", batch_size=3)))
    assert set(batch) == {"audio", "audio_mask", "label", "ids"}
    assert batch["audio"].shape == (3, 1, 7) and batch["audio_mask"].all()  # a length-1 sequence
    utt_id = batch["ids"][0]
    np.testing.assert_array_equal(batch["audio"][0, 0].numpy(), np.concatenate(
        [stored(cache, "utt", utt_id), stored(cache, "utt2", utt_id)]))
    assert data.dropped == {}  # the text feature's missing id does not matter without text
    layered_data = make_data(cache, audio="layered", text=None, normalize=False)
    batch = next(iter(layered_data.loader("test", batch_size=2)))
    assert layered_data.input_dims["audio"] == 6 and batch["audio"].shape == (2, 4, 6)  # (layers, dim) flattened


def test_regression_labels_are_float(cache):
    fold = make_fold()
    scores = {u.id: float(k % 7 - 3) for k, u in enumerate(utterances())}
    data = FusionData(cache, CORPUS, "utt", "words", fold, scores, None, normalize=False)
    assert data.num_classes == 1
    batch = next(iter(data.loader("train", batch_size=4)))
    assert batch["label"].dtype == torch.float32
    assert batch["label"].tolist() == [scores[i] for i in batch["ids"]]


# ----------------------------------------------------------------------------- normalisation

@pytest.mark.parametrize("block", [1 << 22, 50])  # one float64 moment update, or many merged
def test_norm_stats_are_numpys_over_the_kept_training_ids_only(cache, monkeypatch, block):
    monkeypatch.setattr("mer.fuse.data.STATS_BLOCK_ELEMENTS", block)
    data = make_data(cache, max_audio_frames=30)
    train = data.ids["train"]
    audio = np.concatenate([stored(cache, "wav", i)[:30] for i in train]).astype(np.float64)
    text = np.concatenate([stored(cache, "words", i) for i in train]).astype(np.float64)
    np.testing.assert_allclose(data.norm_stats["audio"].mean, audio.mean(0), rtol=1e-10)
    np.testing.assert_allclose(data.norm_stats["audio"].std, audio.std(0), rtol=1e-10)
    np.testing.assert_allclose(data.norm_stats["text"].mean, text.mean(0), rtol=1e-10)
    np.testing.assert_allclose(data.norm_stats["text"].std, text.std(0), rtol=1e-10)
    assert data.norm_stats["audio"].count == len(audio)
    with_test = np.concatenate([audio] + [stored(cache, "wav", i)[:30] for i in data.ids["test"]])
    assert not np.allclose(data.norm_stats["audio"].mean, with_test.mean(0), rtol=1e-4)
    # applied per batch: (x - mean) / std at real positions, padding stays 0
    batch = next(iter(data.loader("test", batch_size=4)))
    for b, utt_id in enumerate(batch["ids"]):
        raw = stored(cache, "wav", utt_id)[:30]
        expected = (raw - data.norm_stats["audio"].mean) / data.norm_stats["audio"].std
        np.testing.assert_allclose(batch["audio"][b, :len(raw)].numpy(), expected, rtol=1e-5, atol=1e-5)
        assert not batch["audio"][b, len(raw):].any()


def test_normalisation_can_be_disabled_per_role(cache):
    data = make_data(cache, normalize={"audio": False})
    assert "audio" not in data.norm_stats and "text" in data.norm_stats
    batch = next(iter(data.loader("dev", batch_size=2)))
    np.testing.assert_array_equal(batch["audio"][0, :int(batch["audio_mask"][0].sum())].numpy(),
                                  stored(cache, "wav", batch["ids"][0]))


@pytest.mark.parametrize("suffix", [".npz", ".json"])
def test_norm_stats_round_trip_and_reuse(cache, tmp_path, suffix):
    data = make_data(cache)
    path = data.norm_stats.save(tmp_path / f"run/norm_stats{suffix}")
    loaded = NormStats.load(path)
    for role in ("audio", "text"):
        np.testing.assert_array_equal(loaded[role].mean, data.norm_stats[role].mean)
        np.testing.assert_array_equal(loaded[role].std, data.norm_stats[role].std)
        assert loaded[role].count == data.norm_stats[role].count and loaded[role].feature == data.sources[role].name
    # a later run (prediction) reuses them instead of computing: same batches
    reused = make_data(cache, norm_stats=loaded)
    first = next(iter(data.loader("test", batch_size=8)))
    again = next(iter(reused.loader("test", batch_size=8)))
    assert torch.equal(first["audio"], again["audio"]) and torch.equal(first["text"], again["text"])
    with pytest.raises(MerError, match="normalisation statistics for audio are of wav"):
        make_data(cache, audio="utt", norm_stats=loaded)


# ----------------------------------------------------------------------------- checks before training

def test_missing_feature_is_a_one_line_error_with_the_extract_command(cache):
    for audio in ("mfcc40", "utt+mfcc40"):
        with pytest.raises(MerError) as error:
            make_data(cache, audio=audio)
        message = str(error.value)
        assert "\n" not in message
        # this cache was written without source.json: the command says which parts are placeholders
        assert f"mer extract --dataset READER --root CORPUS_ROOT --features mfcc40 --cache {cache}" in message
        assert f"placeholders: this cache does not record how {CORPUS} was read" in message


def test_ids_missing_from_a_feature_are_dropped_from_every_split_and_reported(cache):
    data = make_data(cache)
    expected = set(AUDIO_FAILED) | {TEXT_NOT_EXTRACTED}
    assert set(data.dropped) == expected
    assert data.dropped["mini/d1_u2"] == "wav: extraction failed: clip shorter than one frame"
    # The same command as every other hint: from source.json, here placeholders (the cache has none).
    assert data.dropped[TEXT_NOT_EXTRACTED].startswith("words: not extracted (run `mer extract --dataset READER "
                                                       "--root CORPUS_ROOT --features words")
    assert data.dropped_by_split == {"train": ["mini/d1_u2"], "dev": [TEXT_NOT_EXTRACTED], "test": ["mini/d10_u0"]}
    for part in ("train", "dev", "test"):
        assert not expected & set(data.ids[part])
        assert data.counts()[part]["utterances"] == len(make_fold().part(part)) - len(data.dropped_by_split[part])
    summary = data.summary()
    assert "dropped 3 utterances missing from a feature (train 1, dev 1, test 1)" in summary
    assert "1 x wav: extraction failed: cannot decode" in summary
    assert data.to_dict()["dropped"] == data.dropped


# ----------------------------------------------------------------------------- sampler

def test_bucket_sampler_is_deterministic_covers_everything_and_pads_less():
    lengths = np.random.default_rng(3).integers(1, 500, size=1000).tolist()
    make = lambda seed: BucketBatchSampler(lengths, 16, shuffle=True, seed=seed)  # noqa: E731
    sampler, twin = make(7), make(7)
    epoch0, epoch1 = list(sampler), list(sampler)
    assert epoch0 == list(twin) and epoch1 == list(twin)  # same seed, same sequence of epochs
    assert epoch0 != epoch1 and epoch0 != list(make(8))
    assert sorted(i for b in epoch0 for i in b) == list(range(1000)) and len(epoch0) == len(sampler) == 63
    sampler.set_epoch(1)
    assert list(sampler) == epoch1
    random_batches = [list(range(1000))[i:i + 16] for i in range(0, 1000, 16)]
    assert padding_ratio(epoch0, lengths) < 0.1 < 0.4 < padding_ratio(random_batches, lengths)
    evaluation = BucketBatchSampler(lengths, 16)
    assert list(evaluation) == list(evaluation) == list(BucketBatchSampler(lengths, 16))
    flat = [lengths[i] for b in evaluation for i in b]
    assert flat == sorted(lengths, reverse=True)  # longest first
    dropping = BucketBatchSampler(lengths, 16, shuffle=True, drop_last=True)
    assert all(len(b) == 16 for b in dropping) and len(dropping) == 62


def test_loader_buckets_by_length(cache):
    data = make_data(cache, normalize=False)
    keys = data.dataset("train").sort_keys()
    audio_lengths = [k[0] for k in keys]
    sampler = data.sampler("train", batch_size=4, seed=0, batches_per_bucket=1)
    shuffled = np.random.default_rng(0).permutation(len(keys)).tolist()
    random_batches = [shuffled[i:i + 4] for i in range(0, len(keys), 4)]
    assert padding_ratio(list(sampler), audio_lengths) < padding_ratio(random_batches, audio_lengths)


# ----------------------------------------------------------------------------- dialogue mode

def test_dialogue_batches_keep_turn_order_and_pad_labels(cache):
    data = make_data(cache, audio="utt", text="words", sample_unit="dialogue", normalize=False)
    train_dialogues = data.samples["train"]
    assert len(train_dialogues) == 8
    for dialogue in train_dialogues:
        turns = [int(i.rsplit("_u", 1)[1]) for i in dialogue]
        assert turns == sorted(turns) and len({i.split("_")[0] for i in dialogue}) == 1
    assert ("mini/d8_u0", "mini/d8_u2", "mini/d8_u3") in data.samples["dev"]  # d8_u1 has no text: dropped
    for batch in data.loader("train", batch_size=3, shuffle=True, seed=0):
        size, longest = len(batch["ids"]), max(len(ids) for ids in batch["ids"])
        assert batch["audio"].shape == (size, longest, 5) and batch["text"].shape == (size, longest, 3)
        mask = batch["utterance_mask"]
        assert mask.dtype == torch.bool and mask.shape == (size, longest)
        assert batch["audio_mask"] is mask and batch["text_mask"] is mask
        assert batch["label"].dtype == torch.long
        for b, ids in enumerate(batch["ids"]):
            assert mask[b].tolist() == [True] * len(ids) + [False] * (longest - len(ids))
            assert batch["label"][b].tolist() == [LABELS.index(targets()[i]) for i in ids] + \
                [-100] * (longest - len(ids))
            for k, utt_id in enumerate(ids):
                np.testing.assert_array_equal(batch["audio"][b, k].numpy(), stored(cache, "utt", utt_id))
                # a word-level feature is mean-pooled per utterance
                np.testing.assert_allclose(batch["text"][b, k].numpy(), stored(cache, "words", utt_id).mean(0),
                                           rtol=1e-6)
            assert not batch["audio"][b, len(ids):].any()
    assert "mean-pooled per utterance" in data.summary()


def test_dialogue_stats_are_over_pooled_training_utterances(cache):
    data = make_data(cache, audio="wav", text=None, sample_unit="dialogue")
    pooled = np.stack([stored(cache, "wav", i).mean(0) for i in data.ids["train"]]).astype(np.float64)
    np.testing.assert_allclose(data.norm_stats["audio"].mean, pooled.mean(0), rtol=1e-6)
    np.testing.assert_allclose(data.norm_stats["audio"].std, pooled.std(0), rtol=1e-6)
    assert data.norm_stats["audio"].pooled and data.norm_stats["audio"].count == len(data.ids["train"])


# ----------------------------------------------------------------------------- access

def by_id(data, split, batch_size, seed):
    """Random access by id with the loader's batches (the shard-aware loader reads in its own order)."""
    return DataLoader(data.dataset(split), batch_sampler=data.sampler(split, batch_size, seed=seed),
                      collate_fn=data.collate)


def test_preload_gives_the_same_batches_as_reading_by_id(cache):
    for unit, audio in (("utterance", "wav"), ("dialogue", "utt")):
        lazy = make_data(cache, audio=audio, sample_unit=unit, max_audio_frames=20)
        eager = make_data(cache, audio=audio, sample_unit=unit, max_audio_frames=20, preload=True)
        if unit == "utterance":
            assert eager.memory["audio"]["mini/d0_u0"].dtype == np.float16  # kept as stored
        for a, b in zip(by_id(lazy, "train", 4, seed=2), eager.loader("train", 4, seed=2)):
            assert a["ids"] == b["ids"]
            assert torch.equal(a["audio"], b["audio"]) and torch.equal(a["text"], b["text"])


def test_shard_lengths_read_offsets(cache):
    store = FeatureCache(cache).open(CORPUS, "wav")
    lengths = shard_lengths(store)
    assert len(lengths) == len(store.ids()) and lengths["mini/d0_u0"] == len(audio_frames("mini/d0_u0"))


def test_dataloader_with_two_workers(cache):
    data = make_data(cache, max_audio_frames=25, preload=True)
    single = data.loader("train", 4, seed=5)
    dataset = make_data(cache, max_audio_frames=25).dataset("train")
    dataset[0]  # the parent opens shards before the workers fork
    assert dataset._stores._stores
    multi = DataLoader(dataset, batch_sampler=data.sampler("train", 4, seed=5), collate_fn=data.collate,
                       num_workers=2, persistent_workers=True)
    for epoch in range(2):  # the sampler's epoch advances once per pass, with or without workers
        a_epoch, b_epoch = list(single), list(multi)
        assert len(a_epoch) == len(b_epoch) == len(single.batch_sampler)
        for a, b in zip(a_epoch, b_epoch):
            assert a["ids"] == b["ids"]
            assert torch.equal(a["audio"], b["audio"]) and torch.equal(a["text"], b["text"])
            assert torch.equal(a["label"], b["label"])
    assert single.batch_sampler.epoch == multi.batch_sampler.epoch == 2
    dialogues = make_data(cache, audio="utt", sample_unit="dialogue")
    assert sum(len(b["ids"]) for b in dialogues.loader("train", 2, num_workers=2)) == 8


def test_stores_are_opened_per_process(cache):
    dataset = make_data(cache, normalize=False).dataset("test")
    first = dataset[0]["audio"]
    parent_stores = dataset._stores._stores
    dataset._stores._pid = -1  # what a forked worker sees: another pid
    np.testing.assert_array_equal(dataset[0]["audio"], first)
    assert dataset._stores._stores is not parent_stores and dataset._stores._inherited == [parent_stores]
    copy = pickle.loads(pickle.dumps(dataset))  # spawn: no HDF5 handle travels
    assert not copy._stores._stores
    np.testing.assert_array_equal(copy[0]["audio"], first)


def test_collate_without_stats_is_plain_padding():
    items = [{"id": "a", "label": 1, "audio": np.ones((2, 3), np.float16)},
             {"id": "b", "label": 0, "audio": np.ones((4, 3), np.float16)}]
    batch = FusionCollate("utterance", ("audio",))(items)
    assert batch["audio"].shape == (2, 4, 3) and batch["audio_mask"].sum().item() == 6
    assert batch["audio"].sum().item() == 18 and batch["label"].tolist() == [1, 0]


@pytest.fixture(params=[1, 2], ids=["one-call", "pieces"])
def torch_threads(request):
    """write_float32 converts in one call with one torch thread, in pieces of TORCH_GRAIN values with more."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@pytest.mark.parametrize("shape", [(0, 4), (3, 5), (TORCH_GRAIN // 7 + 3, 7 * 3)])  # empty, one piece, several
def test_as_float32_equals_numpys_conversion(shape, torch_threads):
    values = np.random.default_rng(0).standard_normal(shape).astype(np.float16)
    converted = as_float32(values[:, 1:])  # a non-contiguous view
    assert converted.dtype == np.float32 and converted.flags.c_contiguous
    np.testing.assert_array_equal(converted, values[:, 1:].astype(np.float32))
    special = np.array([np.inf, -np.inf, np.nan, 65504, 6e-8, -0.0], np.float16)
    np.testing.assert_array_equal(as_float32(special), special.astype(np.float32))
    same = np.ones((2, 3), np.float32)
    assert as_float32(same) is same  # float32 stays itself (the collate's concatenation is the copy)


@pytest.mark.parametrize("rows", [(1, 5, 0, 3), (TORCH_GRAIN // 4 + 9, 5, TORCH_GRAIN // 4)])  # words; frame-sized
def test_collate_normalises_real_rows_only(rows, torch_threads):
    """Both paths of the one-pass conversion + normalisation equal (x - mean) / std in float64, padding stays 0."""
    from mer.fuse.data import RoleStats
    rng = np.random.default_rng(1)
    dim = 8
    arrays = [(3 * rng.standard_normal((n, dim)) + 1).astype(np.float16) for n in rows]
    mean, std = rng.standard_normal(dim), rng.uniform(0.5, 2.0, dim)
    stats = NormStats({"audio": RoleStats("x", mean, std, 10)})
    items = [{"id": str(k), "label": 0, "audio": a} for k, a in enumerate(arrays)]
    assert (sum(rows) * dim >= len(rows) * TORCH_GRAIN) == (max(rows) > 5)  # the path each case takes
    batch = FusionCollate("utterance", ("audio",), stats=stats)(items)
    assert batch["audio"].dtype == torch.float32 and batch["audio"].shape == (len(rows), max(rows), dim)
    for k, array in enumerate(arrays):
        expected = (array.astype(np.float64) - mean) / std
        np.testing.assert_allclose(batch["audio"][k, :len(array)].numpy(), expected, rtol=1e-5, atol=1e-5)
        assert not batch["audio"][k, len(array):].any()


def test_a_fold_without_dev_utterances_is_refused_in_one_line(cache):
    fold = make_fold()
    with pytest.raises(MerError, match="fold split has no dev utterances"):
        FusionData(cache, CORPUS, "wav", "words", Fold(fold.name, fold.train_ids, (), fold.test_ids), targets(), LABELS)


def test_batch_bytes_is_the_mean_stored_input_of_a_batch(cache):
    data = make_data(cache)
    train = data.ids["train"]
    itemsize = {"audio": 2, "text": 4}  # the fixture's wav frames are float16, its words float32
    assert [data.sources[role].dtypes for role in itemsize] == [("float16",), ("float32",)]
    stored = [sum(data.lengths[role][i] * data.sources[role].dim * itemsize[role] for role in itemsize) for i in train]
    assert data.batch_bytes("train", 4) == 4 * sum(stored) // len(stored)


def test_a_batch_holds_at_most_the_whole_split(cache):
    """`--loader-workers auto` decides from this: a probe's batch of 4096 on a few dozen clips is those clips."""
    data = make_data(cache)
    train = len(data.ids["train"])
    assert data.batch_bytes("train", 10 ** 6) == data.batch_bytes("train", train)
    assert data.batch_bytes("train", 1) * train <= data.batch_bytes("train", train) < data.batch_bytes("train", 1) * (train + 1)
