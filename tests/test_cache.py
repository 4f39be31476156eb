"""The cache contract: ragged shards, self-description, atomic commits, resume after SIGKILL,
concurrent writers, verify."""

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from mer.cache.reader import FeatureCache
from mer.cache.verify import verify_cache
from mer.cache.writer import FeatureWriter
from mer.errors import CacheError
from tests.helpers.toy import TOY_IDS, toy_array, toy_arrays, toy_spec

REPO = Path(__file__).resolve().parents[1]


def write_all(cache: Path, spec, ids, shard_size=8, granularity="frame", compression=None):
    writer = FeatureWriter(cache, "toy", spec, compression)
    for start in range(0, len(ids), shard_size):
        claim = writer.claim(ids[start:start + shard_size])
        if claim is not None:
            writer.commit(claim, writer.write_temp(claim, toy_arrays(claim.ids, granularity)), {})
    return writer


@pytest.mark.parametrize("dtype,compression", [("float16", None), ("float32", "gzip")])
def test_round_trip_random_access_and_streaming(tmp_path, dtype, compression):
    write_all(tmp_path, toy_spec(dtype), TOY_IDS, compression=compression)
    store = FeatureCache(tmp_path).open("toy", "toy")
    assert sorted(store.ids()) == sorted(TOY_IDS)
    tolerance = 2e-3 if dtype == "float16" else 0
    for utt_id in ["toy/u0", "toy/u17", "toy/u39"]:
        got = store.get(utt_id)
        assert got.dtype == np.dtype(dtype)
        np.testing.assert_allclose(got, toy_array(utt_id), atol=tolerance, rtol=tolerance)
    streamed = dict(iter(store))
    assert len(streamed) == len(TOY_IDS)
    np.testing.assert_allclose(streamed["toy/u5"], toy_array("toy/u5"), atol=tolerance, rtol=tolerance)


def test_shards_are_ragged_and_self_describing(tmp_path):
    writer = write_all(tmp_path, toy_spec(), TOY_IDS[:8])
    with h5py.File(writer.dir / "shard-00000.h5", "r") as f:
        assert set(f) == {"data", "offsets", "ids"}  # one dataset for all utterances, not one each
        lengths = np.diff(f["offsets"][()])
        assert list(lengths) == [len(toy_array(i)) for i in TOY_IDS[:8]]
        assert json.loads(f.attrs["spec"])["name"] == "toy"
    manifest = json.loads((writer.dir / "manifest.json").read_text())
    for key in ("spec", "config_hash", "dims", "dtype", "model_id", "model_revision", "package_version",
                "shards", "failures"):
        assert key in manifest
    assert manifest["shards"][0]["sha256"] and manifest["shards"][0]["ids"] == TOY_IDS[:8]


def test_utterance_granularity_and_extras(tmp_path):
    spec = toy_spec(granularity="utterance")
    writer = FeatureWriter(tmp_path, "toy", spec)
    claim = writer.claim(TOY_IDS[:3])
    extras = {i: {"word_ids": np.arange(len(i), dtype=np.int32)} for i in claim.ids}
    writer.commit(claim, writer.write_temp(claim, toy_arrays(claim.ids, "utterance"), extras), {})
    store = FeatureCache(tmp_path).open("toy", "toy")
    assert store.get("toy/u1").shape == (4,)
    assert list(store.extra("word_ids", "toy/u2")) == list(range(len("toy/u2")))


def test_two_configs_never_collide_and_lookup_by_hash(tmp_path):
    write_all(tmp_path, toy_spec(window=25), TOY_IDS[:4])
    write_all(tmp_path, toy_spec(window=50), TOY_IDS[:4])
    cache = FeatureCache(tmp_path)
    infos = cache.features("toy")
    assert len(infos) == 2 and infos[0].config_hash != infos[1].config_hash
    with pytest.raises(CacheError, match="several configs"):
        cache.open("toy", "toy")
    wanted = toy_spec(window=50).config_hash
    assert cache.open("toy", "toy", wanted[:6]).spec.config == {"window": 50}
    assert cache.open("toy", f"toy@{wanted}").spec.config_hash == wanted
    assert [f.config_hash for f in cache.by_hash(wanted)] == [wanted]


def test_missing_feature_error_names_the_extract_command(tmp_path):
    write_all(tmp_path, toy_spec(), TOY_IDS[:2])
    with pytest.raises(CacheError, match="mer extract --dataset READER --root CORPUS_ROOT --features mfcc40 --cache "):
        FeatureCache(tmp_path).open("toy", "mfcc40")


def test_float16_overflow_is_an_error_not_inf(tmp_path):
    writer = FeatureWriter(tmp_path, "toy", toy_spec())
    claim = writer.claim(TOY_IDS[:1])
    with pytest.raises(CacheError, match="float16 range"):
        writer.write_temp(claim, {TOY_IDS[0]: np.full((2, 4), 1e6, np.float32)})


def test_claims_are_exclusive_and_resume_skips_complete_shards(tmp_path):
    writer = FeatureWriter(tmp_path, "toy", toy_spec())
    first = writer.claim(TOY_IDS[:10])
    second = writer.claim(TOY_IDS[:20])
    assert set(first.ids).isdisjoint(second.ids) and len(second.ids) == 10
    writer.commit(first, writer.write_temp(first, toy_arrays(first.ids)), {})
    writer.release(second)  # an interrupted run gives its claim back
    assert writer.pending(TOY_IDS[:20]) == TOY_IDS[10:20]


def test_failures_are_recorded_and_skipped_unless_retried(tmp_path):
    writer = FeatureWriter(tmp_path, "toy", toy_spec())
    claim = writer.claim(TOY_IDS[:4])
    arrays = toy_arrays(claim.ids[:3])
    writer.commit(claim, writer.write_temp(claim, arrays), {TOY_IDS[3]: "cannot decode"})
    assert writer.pending(TOY_IDS[:4]) == []
    assert writer.pending(TOY_IDS[:4], retry_failed=True) == [TOY_IDS[3]]
    store = FeatureCache(tmp_path).open("toy", "toy")
    assert store.failures == {TOY_IDS[3]: "cannot decode"}
    with pytest.raises(KeyError, match="cannot decode"):
        store.get(TOY_IDS[3])
    retry = writer.claim(TOY_IDS[:4], retry_failed=True)
    writer.commit(retry, writer.write_temp(retry, toy_arrays(retry.ids)), {})
    store.refresh()
    assert store.failures == {} and len(store) == 4


@pytest.mark.parametrize("stage", ["after-claim", "mid-temp", "after-rename"])
def test_writer_killed_at_any_step_leaves_a_cache_that_resumes_cleanly(tmp_path, stage):
    proc = subprocess.run([sys.executable, "-m", "tests.helpers.crash_writer", str(tmp_path), stage],
                          cwd=REPO, capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()
    writer = write_all(tmp_path, toy_spec(), TOY_IDS[:16])  # the next run reaps the dead claim
    leftovers = sorted(p.name for p in writer.dir.iterdir() if ".tmp" in p.name or p.suffix == ".claim")
    assert leftovers == []
    store = FeatureCache(tmp_path).open("toy", "toy")
    assert sorted(store.ids()) == sorted(TOY_IDS[:16])
    (report,) = verify_cache(tmp_path)
    assert report.ok, report.problems


def test_verify_catches_a_flipped_byte_and_a_missing_utterance(tmp_path):
    writer = write_all(tmp_path, toy_spec(), TOY_IDS[:16])
    corpus_manifest = tmp_path / "toy" / "utterances.jsonl"
    corpus_manifest.write_text("".join(json.dumps({"id": i, "corpus": "toy"}) + "\n" for i in TOY_IDS[:17]))
    (report,) = verify_cache(tmp_path)
    assert report.missing == 1 and "toy/u16" in report.problems[0]
    shard = writer.dir / "shard-00001.h5"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    (report,) = verify_cache(tmp_path)
    assert any("checksum mismatch" in p and "shard-00001.h5" in p for p in report.problems)
