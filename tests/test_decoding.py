"""Decoding ahead of compute: decoder processes give what decoding here gives, a decoder that
crashes costs only its file, and `mer extract` gives the same cache with or without them."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from mer.cache.reader import FeatureCache
from mer.data.corpora import prepare
from mer.data.decoding import CRASH_REASON, DecodePool, decode_utterances
from mer.data.utterance import Utterance
from mer.extract.runner import ExtractConfig, extract
from tests.fixtures.corpora import make_meld, write_sndfile
from tests.helpers.crashing_decoder import decode_or_die


@pytest.fixture(scope="module")
def meld_root(tmp_path_factory):
    return make_meld(tmp_path_factory.mktemp("meld"))


def test_decoder_processes_give_what_decoding_here_gives(meld_root):
    utterances = prepare("meld", meld_root).utterances
    here_audio, here_failures = decode_utterances(utterances)
    with DecodePool(processes=2, piece_size=3) as pool:
        first, second = pool.submit(utterances[:7]), pool.submit(utterances[7:])
        audio, failures = pool.result(first)
        more_audio, more_failures = pool.result(second)
    audio.update(more_audio)
    failures.update(more_failures)
    assert failures == here_failures and "meld/train/dia125_utt3" in failures  # the corrupt clip
    assert audio.keys() == here_audio.keys() and len(audio) > 10
    for utt_id, wave in audio.items():
        np.testing.assert_array_equal(wave, here_audio[utt_id])


def test_a_decoder_that_crashes_costs_only_its_file(tmp_path):
    utterances = [Utterance(id=f"u{i}", corpus="t", audio_path=str(write_sndfile(tmp_path / f"{name}.wav", 0.2 + 0.1 * i)))
                  for i, name in enumerate(["a", "b", "crash", "d", "e"])]
    with DecodePool(processes=2, piece_size=2, decode=decode_or_die) as pool:
        pending = pool.submit(utterances)
        audio, failures = pool.result(pending)
        assert sorted(audio) == ["u0", "u1", "u3", "u4"]
        assert failures == {"u2": f"{tmp_path / 'crash.wav'}: {CRASH_REASON}"}
        again, _ = pool.result(pool.submit(utterances[:2]))  # the restarted pool goes on working
        assert sorted(again) == ["u0", "u1"]


def test_extract_with_decoder_processes_equals_extract_without(tmp_path, meld_root):
    caches = {}
    for workers in (0, 2):
        caches[workers] = tmp_path / f"cache{workers}"
        summary = extract(ExtractConfig(dataset="meld", root=meld_root, features=["mfcc40"], cache=caches[workers],
                                        shard_size=4, decode_workers=workers, progress=False))
        assert list(summary.features[0].failed) == ["meld/train/dia125_utt3"]
    here, pooled = (FeatureCache(caches[w]).open("meld", "mfcc40") for w in (0, 2))
    assert sorted(here.ids()) == sorted(pooled.ids()) and len(here.ids()) > 10
    for utt_id in here.ids():
        np.testing.assert_array_equal(pooled.get(utt_id), here.get(utt_id))


KILLED_WITH_A_DECODER = """
import os, signal, sys
from mer.data.decoding import DecodePool
from mer.data.utterance import Utterance
pool = DecodePool(processes=1, piece_size=1).__enter__()
pool.result(pool.submit([Utterance(id="u0", corpus="t", audio_path=sys.argv[1])]))
print(*pool._executor._processes, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_decoder_processes_end_with_a_killed_parent(tmp_path):
    """A `kill -9` of `mer extract` (or a test that kills one) used to leave each decoder process
    behind for good, about 250 MB each, blocked on a pipe."""
    wav = write_sndfile(tmp_path / "a.wav", 0.3)
    pids = tmp_path / "pids"  # a file, not a pipe: a decoder left behind would hold a pipe open for good
    with open(pids, "w") as out:
        killed = subprocess.run([sys.executable, "-c", KILLED_WITH_A_DECODER, str(wav)], stdout=out, timeout=60)
    assert killed.returncode == -9
    decoders = [int(pid) for pid in pids.read_text().split()]
    assert decoders
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in decoders) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [pid for pid in decoders if _alive(pid)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False
