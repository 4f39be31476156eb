"""`mer extract` and `mer cache` end to end, as a user runs them: demo and MELD-layout corpora,
resume after SIGKILL, two concurrent runs on one cache, failures, --strict, bad input."""

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from mer.cache.reader import FeatureCache
from mer.errors import CacheError
from tests.fixtures.corpora import make_meld

REPO = Path(__file__).resolve().parents[1]
DEMO = ["--dataset", "demo", "--set", "corpus.size=40"]


def mer(*args, env_extra=None, check=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    proc = subprocess.run([sys.executable, "-m", "mer.cli", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    if check is not None:
        assert proc.returncode == check, proc.stdout + proc.stderr
    return proc


def start_mer(*args, env_extra=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-m", "mer.cli", *map(str, args)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def verify_json(cache):
    return json.loads(mer("cache", "verify", cache, "--json", check=0).stdout)


def stored_copies(cache):
    """How many times each id is stored, read from the shard files themselves (not the manifest)."""
    counts = Counter()
    for info in (f for c in FeatureCache(cache).corpora() for f in FeatureCache(cache).features(c)):
        store = FeatureCache(cache).open(info.corpus, info.name)
        for _, reader in store.iter_shards():
            counts.update(f"{info.name}|{i}" for i in reader.ids)
    return counts


def test_demo_extract_verify_and_rerun_is_all_cached(tmp_path, demo_root):
    cache = tmp_path / "cache"
    run = mer("extract", *DEMO, "--root", demo_root, "--features", "mfcc40,logmfb80-d2,opensmile-egemaps",
              "--cache", cache, "--shard-size", "16", check=0)
    assert "extract" in run.stderr and "item/s" in run.stderr  # the progress bar: items, rate
    report = verify_json(cache)
    dims = {f["feature"]: f["dims"] for f in report["features"]}
    assert dims == {"mfcc40": [40], "logmfb80-d2": [240], "opensmile-egemaps": [88]}
    assert all(f["stored"] == 40 and f["missing"] == 0 and f["failed"] == 0 for f in report["features"])
    again = json.loads(mer("extract", *DEMO, "--root", demo_root, "--features", "mfcc40,opensmile-egemaps",
                           "--cache", cache, "--json", "--no-progress", check=0).stdout)
    assert [(f["done"], f["cached"]) for f in again["features"]] == [(0, 40), (0, 40)]
    info = json.loads(mer("cache", "info", cache, "demo-n40-s0", "mfcc40", "--json", check=0).stdout)
    assert info[0]["dims"] == [40] and info[0]["spec"]["frame_rate"] == 100
    listing = json.loads(mer("cache", "ls", cache, "--json", check=0).stdout)
    assert {row["feature"] for row in listing} == {"mfcc40", "logmfb80-d2", "opensmile-egemaps"}


@pytest.mark.parametrize("kill_after", [1.5, 3.0, 5.0])
def test_sigkill_at_any_moment_then_rerun_gives_one_copy_of_everything(tmp_path, demo_root, kill_after):
    cache = tmp_path / "cache"
    args = ["extract", *DEMO, "--root", demo_root, "--features", "mfcc40,opensmile-egemaps", "--cache", cache,
            "--shard-size", "4", "--no-progress"]
    proc = start_mer(*args)
    time.sleep(kill_after)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    mer(*args, check=0)
    report = verify_json(cache)
    assert report["ok"] and all(f["stored"] == 40 for f in report["features"])
    copies = stored_copies(cache)
    assert len(copies) == 80 and set(copies.values()) == {1}


def test_two_concurrent_runs_share_the_work_without_duplicates(tmp_path, demo_root):
    cache = tmp_path / "cache"
    args = ["extract", *DEMO, "--root", demo_root, "--features", "mfcc40,opensmile-egemaps", "--cache", cache,
            "--shard-size", "4", "--no-progress", "--json"]
    procs = [start_mer(*args) for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    done = [sum(f["done"] for f in json.loads(out)["features"]) for out, _ in outputs]
    assert sum(done) == 80
    copies = stored_copies(cache)
    assert len(copies) == 80 and set(copies.values()) == {1}
    assert verify_json(cache)["ok"]


def test_workers_pool(tmp_path, demo_root):
    cache = tmp_path / "cache"
    mer("extract", *DEMO, "--root", demo_root, "--features", "mfcc40,opensmile-egemaps", "--cache", cache,
        "--workers", "2", "--shard-size", "8", "--no-progress", check=0)
    assert verify_json(cache)["ok"]


def test_meld_corrupt_clip_is_recorded_and_the_run_goes_on(tmp_path):
    root = make_meld(tmp_path / "meld")
    cache = tmp_path / "cache"
    run = mer("extract", "--dataset", "meld", "--root", root, "--features", "mfcc40", "--cache", cache,
              "--no-progress", "--json", check=0)
    (feature,) = json.loads(run.stdout)["features"]
    assert list(feature["failed"]) == ["meld/train/dia125_utt3"]
    assert "dia125_utt3" in feature["failed"]["meld/train/dia125_utt3"]
    assert feature["done"] > 0
    report = verify_json(cache)  # a recorded failure is reported, not a problem
    assert report["ok"] and report["features"][0]["failed"] == 1
    rerun = json.loads(mer("extract", "--dataset", "meld", "--root", root, "--features", "mfcc40", "--cache", cache,
                           "--no-progress", "--json", check=0).stdout)
    assert rerun["features"][0]["failed_before"] == 1 and rerun["features"][0]["done"] == 0


def test_strict_stops_at_the_first_failure_and_keeps_what_was_computed(tmp_path):
    root = make_meld(tmp_path / "meld")
    cache = tmp_path / "cache"
    run = mer("extract", "--dataset", "meld", "--root", root, "--features", "mfcc40", "--cache", cache,
              "--strict", "--shard-size", "2", "--no-progress", check=1)
    assert "--strict" in run.stdout and "dia125_utt3" in run.stdout
    kept = FeatureCache(cache).open("meld", "mfcc40")
    assert len(kept) > 0
    assert mer("cache", "verify", cache).returncode == 1  # the rest is missing, and verify says so


@pytest.mark.parametrize("args,expected", [
    (["--dataset", "nosuch", "--features", "mfcc40"], "unknown corpus 'nosuch'"),
    (["--dataset", "meld", "--root", "/no/such/dir", "--features", "mfcc40"], "/no/such/dir"),
    (["--dataset", "demo", "--features", "nosuch"], "unknown extractor 'nosuch'"),
    (["--dataset", "demo", "--features", "mfcc40", "--set", "bad"], "TARGET.KEY=VALUE"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, expected):
    run = mer("extract", *args, "--cache", tmp_path / "c", check=2)
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0] and "Traceback" not in run.stderr


def test_cache_rm(tmp_path, demo_root):
    cache = tmp_path / "cache"
    mer("extract", *DEMO, "--root", demo_root, "--features", "mfcc40,logmfb80-d2", "--cache", cache,
        "--no-progress", check=0)
    mer("cache", "rm", cache, "demo-n40-s0", "mfcc40", "--yes", check=0)
    assert [f.name for f in FeatureCache(cache).features("demo-n40-s0")] == ["logmfb80-d2"]


def test_readers_see_only_complete_shards_while_a_writer_adds_them(tmp_path, demo_root):
    cache = tmp_path / "cache"
    proc = start_mer("extract", *DEMO, "--root", demo_root, "--features", "mfcc40", "--cache", cache,
                     "--shard-size", "2", "--no-progress")
    seen, reads = 0, 0
    while proc.poll() is None or reads == 0:
        try:
            store = FeatureCache(cache).open("demo-n40-s0", "mfcc40")
        except CacheError:  # nothing committed yet: no feature directory or manifest
            time.sleep(0.05)
            continue
        for utt_id in store.ids():  # every listed utterance is readable and complete
            assert store.get(utt_id).shape[1] == 40
        seen = max(seen, len(store))
        reads += 1
        store.close()
    assert proc.returncode == 0 and reads > 1
    assert len(FeatureCache(cache).open("demo-n40-s0", "mfcc40")) == 40
