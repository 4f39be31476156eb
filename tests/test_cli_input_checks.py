"""Bad input to `mer extract`, `mer cache` and `mer list` is one line (exit 2) naming the option or file
and the fix, checked before any work; every command a message suggests works when pasted."""

import csv
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from mer.data.corpora import prepare
from mer.errors import MerError
from mer.extract.base import build_extractor
from tests.fixtures.corpora import make_manifest
from tests.fixtures.tiny_models import save_tiny_speech_encoder

REPO = Path(__file__).resolve().parents[1]


def mer(*args, env=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "mer.cli", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def assert_one_line_error(proc, *names):
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    error = [line for line in proc.stderr.splitlines() if line.lower().startswith("error")]
    assert len(error) == 1, proc.stderr
    for name in names:
        assert name in error[0], error[0]
    return error[0]


def text_manifest(folder: Path, rows: int = 30, speakers: int = 3) -> Path:
    """id,text,label,speaker,fold: the layout of a text-only corpus without splits."""
    path = folder / "talk.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "text", "label", "speaker", "fold"])
        for i in range(rows):
            writer.writerow([f"u{i}", f"sentence number {i}", ("joy", "anger")[i % 2], f"s{i % speakers}",
                             f"f{i % 5}"])
    return path


@pytest.fixture(scope="module")
def demo_cache(tmp_path_factory, demo_root):
    cache = tmp_path_factory.mktemp("cache") / "cache"
    proc = mer("extract", "--dataset", "demo", "--set", "corpus.size=40", "--root", demo_root, "--features", "mfcc40",
               "--cache", cache, "--no-progress")
    assert proc.returncode == 0, proc.stderr
    return cache


# ---- 1, 2: run counts and --features, before any work -----------------------------------------

@pytest.mark.parametrize("option, value", [("--shard-size", "0"), ("--shard-size", "-3"), ("--workers", "0"),
                                           ("--batch-seconds", "-1"), ("--batch-seconds", "0")])
def test_bad_run_counts_fail_before_any_work(tmp_path, option, value):
    cache = tmp_path / "cache"
    proc = mer("extract", "--dataset", "manifest", "--root", text_manifest(tmp_path), "--features", "minilm-l6",
               "--cache", cache, option, value)
    assert_one_line_error(proc, option)
    assert not cache.exists()


def test_transcribe_shares_the_run_count_checks(tmp_path):
    proc = mer("transcribe", "--asr", "whisper-tiny", "--dataset", "demo", "--cache", tmp_path / "c",
               "--shard-size", "0")
    assert_one_line_error(proc, "--shard-size")


@pytest.mark.parametrize("features", ["", " ,", ",,"])
def test_no_feature_named_is_one_line(tmp_path, features):
    cache = tmp_path / "cache"
    proc = mer("extract", "--dataset", "manifest", "--root", text_manifest(tmp_path), "--features", features,
               "--cache", cache)
    line = assert_one_line_error(proc, "--features", "mer list extractors")
    assert not cache.exists()
    listing = re.search(r"`(mer list extractors)`", line).group(1)
    assert mer(*shlex.split(listing)[1:]).returncode == 0


# ---- 3: a mistyped corpus in `mer cache` ---------------------------------------------------------

def test_cache_info_names_the_corpora_for_an_unknown_one(demo_cache):
    line = assert_one_line_error(mer("cache", "info", demo_cache, "demoo"), "'demoo'", "it has demo")
    named = line.rsplit("it has ", 1)[1]
    assert mer("cache", "info", demo_cache, named).returncode == 0


@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_cache_verify_unknown_corpus_is_not_ok(demo_cache, json_flag):
    proc = mer("cache", "verify", demo_cache, "--corpus", "nosuch", *json_flag)
    assert_one_line_error(proc, "'nosuch'", "it has demo")
    assert '"ok": true' not in proc.stdout


# ---- 4: the missing-weights hint is a working command ---------------------------------------------

def test_missing_weights_hint_is_pasteable(tmp_path):
    root = make_manifest(tmp_path / "corpus")
    hub = {"HF_HUB_CACHE": str(tmp_path / "empty-hub"), "MER_MODELS_DIR": ""}
    args = ["extract", "--dataset", "manifest", "--root", root, "--features", "wavlm-base-plus",
            "--cache", tmp_path / "cache", "--no-progress"]
    line = assert_one_line_error(mer(*args, env=hub), "wavlm-base-plus")
    assert "--models-dir" not in line
    suggested = re.search(r"--set (\S+)=DIR", line)
    assert suggested and suggested.group(1) == "wavlm-base-plus.models_dir", line
    assert "DIR/wavlm-base-plus/" in line
    models = tmp_path / "models"
    save_tiny_speech_encoder(models / "wavlm-base-plus", "wavlm")
    proc = mer(*args, "--set", f"{suggested.group(1)}={models}", env=hub)
    assert proc.returncode == 0, proc.stderr
    exported = mer(*args, env={**hub, "MER_MODELS_DIR": str(models)})  # the other form the hint names
    assert "export MER_MODELS_DIR=DIR" in line and exported.returncode == 0, exported.stderr


# ---- 5: `mer list models --cache` of a folder that is not there ------------------------------------

def test_list_models_missing_cache_folder(tmp_path):
    proc = mer("list", "models", "--cache", tmp_path / "nosuch", "--dataset", "meld")
    assert_one_line_error(proc, "nosuch", "no such folder")


@pytest.mark.parametrize("given", [("--cache", "CACHE"), ("--dataset", "meld")])
def test_list_models_cache_and_dataset_go_together(tmp_path, given):
    option, value = given
    proc = mer("list", "models", option, tmp_path if value == "CACHE" else value)
    missing = "--dataset CORPUS" if option == "--cache" else "--cache DIR"
    assert_one_line_error(proc, f"{option} needs {missing} too")


# ---- 6: wording --------------------------------------------------------------------------------

@pytest.mark.parametrize("option, value", [("granularity", "bogus"), ("pool", "max"), ("max_tokens", "1"),
                                           ("context_turns", "-1")])
def test_text_option_errors_name_the_feature_and_set_form(option, value):
    with pytest.raises(MerError) as caught:
        build_extractor("minilm-l6", **{option: value})
    message = str(caught.value)
    assert f"--set minilm-l6.{option}=" in message and "text options" not in message, message


def test_manifest_without_audio_column_blames_the_header(tmp_path):
    proc = mer("extract", "--dataset", "manifest", "--root", text_manifest(tmp_path), "--features", "mfcc40",
               "--cache", tmp_path / "cache")
    line = assert_one_line_error(proc, "header", "'audio'")
    assert "line 2" not in line


def test_jsonl_manifest_without_audio_names_the_line(tmp_path):
    path = tmp_path / "talk.jsonl"
    path.write_text('{"id": "a", "text": "hi", "label": "joy"}\n')
    with pytest.raises(MerError, match=r"talk.jsonl: line 1 has no 'audio' key, which audio features need"):
        prepare("manifest", path)


# ---- 7: the reader's report counts speakers and folds ------------------------------------------------

@pytest.mark.parametrize("speakers", [3, 24])
def test_manifest_report_counts_speaker_and_fold(tmp_path, speakers):
    report = prepare("manifest", text_manifest(tmp_path, rows=48, speakers=speakers), False).report
    assert len(report.counts["speaker"]) == speakers and report.counts["fold"] == {f"f{i}": 48 // 5 + (i < 3)
                                                                                 for i in range(5)}
    text = report.format()
    speaker_line = "  speaker: s0=16, s1=16, s2=16" if speakers == 3 else "  speaker: 24 values, 2 each"
    assert speaker_line in text and "  fold: f0=10" in text and "split" not in text, text
