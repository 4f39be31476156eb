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


@pytest.mark.parametrize("workers", [[], ["--decode-workers", "1"], ["--workers", "2"]])  # []: a decoder per spare core
def test_ctrl_c_exits_130_quietly_keeps_finished_shards_and_the_rerun_resumes(tmp_path, demo_root, workers):
    cache = tmp_path / "cache"
    args = ["extract", *DEMO, "--root", demo_root, "--features", "opensmile-egemaps", "--shard-size", "4",
            "--cache", cache, *workers]
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


# ---- the corpus report -------------------------------------------------------------------------
# the first 10 rows of a RAVDESS manifest (/work/shared/data/ravdess-strong), audio made here
RAVDESS_HEADER = "id,audio,text,label,speaker,fold"
RAVDESS_ROWS = [f"03-01-{emotion:02d}-02-{statement}-02-01,Actor_01/03-01-{emotion:02d}-02-{statement}-02-01.flac,"
                f"{text},{label},actor01,actors01"
                for emotion, label in ((2, "calm"), (3, "happy"), (4, "sad"), (5, "angry"), (6, "fearful"))
                for statement, text in (("01", "Kids are talking by the door."),
                                        ("02", "Dogs are sitting by the door."))]


def ravdess_manifest(folder: Path) -> Path:
    """13 rows: 10 RAVDESS rows with 48 kHz FLAC clips, then a row without id, one without audio and
    one whose audio is missing (CSV lines 12, 13, 14)."""
    for row in RAVDESS_ROWS:
        write_sndfile(folder / row.split(",")[1], seconds=1.0, rate=48000)
    rows = RAVDESS_ROWS + [",Actor_01/03-01-02-02-01-02-01.flac,No id here.,calm,actor01,actors01",
                           "noaudio,,No audio here.,calm,actor01,actors01",
                           "gone,Actor_99/gone.flac,The file is gone.,calm,actor99,actors99"]
    path = folder / "ravdess13.csv"
    path.write_text("\n".join([RAVDESS_HEADER, *rows]) + "\n")
    return path


def test_extract_reports_what_the_reader_skipped_before_the_work_and_in_json(tmp_path):
    manifest = ravdess_manifest(tmp_path)
    run = mer("extract", "--dataset", "manifest", "--root", manifest, "--features", "mfcc40",
              "--cache", tmp_path / "cache", "--json", check=0)
    report_lines = [
        "corpus ravdess13: 10 utterances",
        "  skipped 1: audio missing",
        "  skipped 1: row without audio",
        "  skipped 1: row without id",
        "  10 kept + 3 skipped = 13 records read",
        f"  warning: {manifest} line 12: empty id, row skipped",
        f"  warning: {manifest} line 13: id 'noaudio' has an empty audio path",
        f"  warning: {manifest} line 14: {tmp_path / 'Actor_99/gone.flac'} not found",
    ]
    stderr = run.stderr.splitlines()
    for line in report_lines:
        assert line in stderr, run.stderr
    progress = run.stderr.index("extract:")
    assert all(run.stderr.index(line) < progress for line in report_lines)  # before the work starts
    summary = json.loads(run.stdout)  # stdout stays the summary alone
    report = summary["corpus_report"]
    assert report["skipped"] == {"row without id": 1, "row without audio": 1, "audio missing": 1}
    assert report["counts"]["total"] == {"utterances": 10} and len(report["warnings"]) == 3
    assert summary["features"][0]["done"] == 10


# ---- an OSError that no layer caught -------------------------------------------------------------
@pytest.mark.parametrize("error,line", [
    (PermissionError(13, "Permission denied", "/data/cache/demo/x.h5"),
     "error: /data/cache/demo/x.h5: Permission denied"),
    (OSError(18, "Invalid cross-device link", "/a/tmp", None, "/b/shard.h5"),  # os.replace across disks
     "error: /a/tmp -> /b/shard.h5: Invalid cross-device link"),
    (OSError(28, "No space left on device"), "error: No space left on device"),
])
def test_an_oserror_that_escapes_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys, error, line):
    import mer.cli
    import mer.extract.runner

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(mer.extract.runner, "extract", fail)
    monkeypatch.setattr(sys, "argv", ["mer", "extract", *DEMO, "--features", "mfcc40", "--cache", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_:
        mer.cli.main()
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines() == [line]


# ---- memory: a task's audio is let go before the next one is awaited ---------------------------
def test_a_tasks_audio_is_freed_before_the_next_tasks_decoding_is_awaited(tmp_path, demo_root, monkeypatch):
    import weakref

    import mer.extract.runner as runner

    held, alive_while_waiting = [], []
    compute, result = runner.compute_task, runner.DecodePool.result

    def compute_and_watch(decoded, *args, **kwargs):
        held.extend(weakref.ref(wave) for wave in decoded.audio.values())
        return compute(decoded, *args, **kwargs)

    def result_after_check(pool, pending):
        alive_while_waiting.append(sum(ref() is not None for ref in held))
        return result(pool, pending)

    monkeypatch.setattr(runner, "compute_task", compute_and_watch)
    monkeypatch.setattr(runner.DecodePool, "result", result_after_check)
    summary = runner.extract(runner.ExtractConfig(dataset="demo", root=demo_root, corpus_options={"size": 40},
                                                  features=["mfcc40"], cache=tmp_path, shard_size=8,
                                                  decode_workers=0, progress=False))
    assert summary.features[0].done == 40 and len(held) == 40
    assert alive_while_waiting == [0] * 5
