"""`mer extract` under faults a user meets: Ctrl-C mid-run, an OSError nobody expected, and a
corpus reader that drops records (the report must say so before the work starts)."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import wait
from pathlib import Path

import numpy as np
import pytest

from mer.cache.reader import FeatureCache
from mer.data.decoding import CRASH_REASON, DecodePool
from mer.data.utterance import Utterance
from mer.extract.base import ExtractItem, build_extractor
from mer.extract.interrupts import interrupts_deferred
from tests.fixtures.corpora import write_sndfile
from tests.helpers.crashing_decoder import decode_or_die

REPO = Path(__file__).resolve().parents[1]
DEMO = ["--dataset", "demo", "--set", "corpus.size=40"]
RESUME = "interrupted; run the same command again to resume"


def mer_command(*args) -> list[str]:
    return [sys.executable, "-m", "mer.cli", *map(str, args)]


def mer(*args, check=None) -> subprocess.CompletedProcess:
    proc = subprocess.run(mer_command(*args), cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                          capture_output=True, text=True, timeout=600)
    if check is not None:
        assert proc.returncode == check, proc.stdout + proc.stderr
    return proc


# ---- Ctrl-C ------------------------------------------------------------------------------------
def test_a_sigint_inside_the_block_is_raised_after_it():
    steps = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # the handler has run by now: it recorded the signal, raised nothing
            steps.append("finished")
    assert steps == ["finished"]


def test_a_ctrl_c_while_opensmile_runs_is_not_swallowed_by_its_callback():
    extractor = build_extractor("opensmile-egemaps")
    extractor.load()
    clip = (0.1 * np.random.default_rng(0).standard_normal(16000 * 30)).astype(np.float32)  # about 1 s of work
    timer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            extractor.extract([ExtractItem(Utterance(id="t/long", corpus="t"), clip)])
    finally:
        timer.cancel()


def test_pieces_submitted_after_a_decoder_crash_and_before_its_result_is_read_still_decode(tmp_path):
    # decoding ahead submits the next task while an earlier one may have broken the pool
    utterances = [Utterance(id=name, corpus="t", audio_path=str(write_sndfile(tmp_path / f"{name}.wav", 0.3)))
                  for name in ("crash", "b", "c")]
    with DecodePool(processes=1, piece_size=1, decode=decode_or_die) as pool:
        crashing = pool.submit(utterances[:1])
        wait([p[1] for p in crashing.pieces])  # the pool is broken now
        later = pool.submit(utterances[1:])
        assert pool.result(crashing) == ({}, {"crash": f"{tmp_path / 'crash.wav'}: {CRASH_REASON}"})
        audio, failures = pool.result(later)
    assert sorted(audio) == ["b", "c"] and failures == {}


def wait_for_a_commit(cache: Path, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while not list(cache.glob("*/*/shard-*.json")):
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "no shard committed in time"
        time.sleep(0.05)


@pytest.mark.parametrize("decode_workers", [None, "1"])  # the default: a process per spare core
def test_ctrl_c_exits_130_quietly_keeps_finished_shards_and_the_rerun_resumes(tmp_path, demo_root, decode_workers):
    cache = tmp_path / "cache"
    args = ["extract", *DEMO, "--root", demo_root, "--features", "opensmile-egemaps", "--shard-size", "4",
            "--cache", cache, *(["--decode-workers", decode_workers] if decode_workers else [])]
    # a new session: the process group gets the SIGINT, as a terminal's Ctrl-C sends it to every process
    proc = subprocess.Popen(mer_command(*args), cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        wait_for_a_commit(cache, proc)
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, out + err
    assert RESUME in out
    assert "Traceback" not in err and "Exception ignored" not in err, err
    kept = set(FeatureCache(cache).open("demo-n40-s0", "opensmile-egemaps").ids())
    assert 4 <= len(kept) < 40

    rerun = mer(*args, "--json", check=0)
    feature = json.loads(rerun.stdout)["features"][0]
    assert (feature["cached"], feature["done"], feature["failed"]) == (len(kept), 40 - len(kept), {})
    verified = json.loads(mer("cache", "verify", cache, "--json", check=0).stdout)
    assert [(f["stored"], f["missing"], f["failed"]) for f in verified["features"]] == [(40, 0, 0)]
