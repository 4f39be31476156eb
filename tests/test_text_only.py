"""Text features need no audio: with only text features requested, every reader reads transcripts
and labels without clips (MELD's CSVs alone, IEMOCAP without wavs, a manifest without an audio
column), and `mer fuse --model text-only` trains from what `mer extract` wrote."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from mer.cli import cli
from mer.data.corpora import prepare
from mer.data.utterance import read_utterances
from mer.errors import CorpusError
from tests.fixtures.corpora import (
    IEMOCAP_MISSING_WAV, IEMOCAP_TEXT_COUNTS, MELD_TEXT_COUNTS, TEXT_MANIFEST_ROWS, iemocap_text, make_iemocap,
    make_manifest, make_meld, make_mosei, make_text_manifest,
)
from tests.test_corpora import one_line_error

TEXT_ONLY = False  # prepare(name, root, needs_audio, ...): what `mer extract` passes for text features only


def invoke(*args) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def extract(dataset, root, features, cache, *extra) -> str:
    return invoke("extract", "--dataset", dataset, "--root", root, "--features", features, "--cache", cache,
                  "--no-progress", *extra)


def fuse_text_only(cache, corpus, out) -> dict:
    invoke("fuse", "--model", "text-only", "--dataset", corpus, "--cache", cache, "--out", out, "--device", "cpu",
           "--set", "text_feature=minilm-l6", "--set", "max_epochs=2")
    return json.loads((Path(out) / "metrics.json").read_text())


@pytest.fixture(scope="module")
def meld_csvs(tmp_path_factory) -> Path:
    return make_meld(tmp_path_factory.mktemp("meld-csv"), clips=False)


@pytest.fixture(scope="module")
def iemocap_transcripts(tmp_path_factory) -> Path:
    return make_iemocap(tmp_path_factory.mktemp("iemocap-text"), wavs=False)


# ---------------------------------------------------------------------------- readers


def test_manifest_without_an_audio_column(tmp_path):
    for fmt in ("csv", "jsonl"):
        corpus = prepare("manifest", make_text_manifest(tmp_path, fmt), TEXT_ONLY)
        assert [u.id for u in corpus.utterances] == [f"talk/{row[0]}" for row in TEXT_MANIFEST_ROWS]
        first = corpus.utterances[0]
        assert (first.text, first.label, first.split, first.speaker, first.dialogue, first.turn) == \
            ("What a lovely day!", "joy", "train", "s0", "d0", 0)
        assert all(u.audio_path is None for u in corpus.utterances) and first.extra == {}
        assert not corpus.report.audio_read and "audio: not read (text features only)" in corpus.report.format()


def test_manifest_without_audio_read_for_audio_features_names_the_column(tmp_path):
    for fmt in ("csv", "jsonl"):
        path = make_text_manifest(tmp_path, fmt)
        one_line_error(lambda: prepare("manifest", path), path, "'audio'", "text features only")


def test_manifest_with_audio_read_for_text_keeps_rows_whose_audio_is_missing(tmp_path):
    corpus = prepare("manifest", make_manifest(tmp_path), TEXT_ONLY)
    assert [u.id for u in corpus.utterances] == ["emo/u1", "emo/u2", "emo/u3", "emo/u4"]
    assert not corpus.report.skipped and all(u.audio_path is None for u in corpus.utterances)
    assert "audio" not in corpus.utterances[0].extra


def test_meld_csvs_alone(meld_csvs):
    corpus = prepare("meld", meld_csvs, TEXT_ONLY)
    assert corpus.report.counts["split"] == MELD_TEXT_COUNTS
    assert not corpus.report.skipped and "clip header unreadable" not in corpus.report.counts.get("notes", {})
    assert all(u.audio_path is None for u in corpus.utterances)
    utt = corpus.by_id()["meld/dev/dia110_utt7"]  # the row whose clip MELD lacks is text all the same
    assert (utt.text, utt.label, utt.speaker, utt.turn) == ("Can’t believe it.", "fear", "Rachel", 1)
    assert "audio: not read (text features only)" in corpus.report.format()


def test_meld_csvs_alone_for_audio_features_name_the_clip_folder(meld_csvs):
    one_line_error(lambda: prepare("meld", meld_csvs), "train_splits", "text features only")


def test_meld_text_reads_equal_audio_reads_but_for_the_audio(meld_csvs, tmp_path):
    full = prepare("meld", make_meld(tmp_path), max_clip_seconds=None).by_id()
    text = prepare("meld", meld_csvs, TEXT_ONLY).by_id()
    assert set(full) == set(text) - {"meld/dev/dia110_utt7"}
    for utt_id, utt in full.items():
        assert (utt.text, utt.label, utt.turn, utt.dialogue, utt.extra) == \
            (text[utt_id].text, text[utt_id].label, text[utt_id].turn, text[utt_id].dialogue, text[utt_id].extra)


@pytest.mark.parametrize("labels", ["4class", "7class", "all"])
def test_iemocap_without_wavs(iemocap_transcripts, labels):
    corpus = prepare("iemocap", iemocap_transcripts, TEXT_ONLY, labels=labels)
    assert len(corpus.utterances) == IEMOCAP_TEXT_COUNTS[labels]
    assert "wav missing" not in corpus.report.skipped and all(u.audio_path is None for u in corpus.utterances)
    utt = corpus.by_id()[f"iemocap/{IEMOCAP_MISSING_WAV}"]
    assert utt.text == iemocap_text(IEMOCAP_MISSING_WAV) and utt.fold == "Session2"


def test_iemocap_without_wavs_for_audio_features_names_the_folder(iemocap_transcripts):
    one_line_error(lambda: prepare("iemocap", iemocap_transcripts), "sentences/wav", "text features only")


def test_mosei_without_audio(tmp_path):
    base = make_mosei(tmp_path) / "CMU_MOSEI"
    shutil.rmtree(base / "Audio")
    corpus = prepare("mosei", tmp_path, TEXT_ONLY)
    assert corpus.report.counts["split"] == {"train": 3, "dev": 2, "test": 2}  # noAudio0001 is text too
    utt = corpus.by_id()["mosei/-3g5yACwYnA_1"]
    assert (utt.audio_path, utt.start, utt.end, utt.text) == (None, 1.3, 2.5, "this movie was bad")
    one_line_error(lambda: prepare("mosei", tmp_path), "Audio/Full/WAV_16000", "text features only")


def test_demo_read_for_text_synthesises_no_audio(tmp_path):
    corpus = prepare("demo", tmp_path / "demo", TEXT_ONLY, size=20)
    assert len(corpus.utterances) == 20 and all(u.audio_path is None and u.text for u in corpus.utterances)
    assert not (tmp_path / "demo").exists() or not any((tmp_path / "demo").rglob("*.wav"))


@pytest.mark.parametrize("reader", ["meld", "manifest", "demo"])
def test_needs_audio_is_not_a_user_option(tmp_path, reader):
    message = one_line_error(lambda: prepare(reader, tmp_path, True, needs_audio="false"), "corpus.needs_audio")
    assert "needs_audio" not in message.split("its options:")[1]


# ---------------------------------------------------------------------------- mer extract, mer fuse


def test_extract_and_fuse_a_manifest_without_audio(tmp_path):
    cache = tmp_path / "cache"
    report = extract("manifest", make_text_manifest(tmp_path), "minilm-l6", cache)
    assert "audio: not read (text features only)" in report
    stored = read_utterances(cache / "talk" / "utterances.jsonl")
    assert len(stored) == len(TEXT_MANIFEST_ROWS) and all(u.audio_path is None for u in stored)
    metrics = fuse_text_only(cache, "talk", tmp_path / "run")
    assert metrics["corpus"] == "talk" and "accuracy" in metrics["summary"]["test"]


def test_extract_and_fuse_meld_from_the_csvs_alone(meld_csvs, tmp_path):
    cache = tmp_path / "cache"
    report = extract("meld", meld_csvs, "minilm-l6", cache)
    assert "audio: not read (text features only)" in report and "18 kept + 0 skipped" in report
    metrics = fuse_text_only(cache, "meld", tmp_path / "run")
    assert metrics["protocol"] == "meld" and "weighted_f1" in metrics["summary"]["test"]


def test_extract_iemocap_without_wavs(iemocap_transcripts, tmp_path):
    report = extract("iemocap", iemocap_transcripts, "minilm-l6", tmp_path / "cache")
    assert "audio: not read (text features only)" in report
    assert len(read_utterances(tmp_path / "cache" / "iemocap" / "utterances.jsonl")) == IEMOCAP_TEXT_COUNTS["4class"]


def test_an_audio_feature_on_csvs_alone_is_one_line_naming_the_folder(meld_csvs, tmp_path):
    result = CliRunner().invoke(cli, ["extract", "--dataset", "meld", "--root", str(meld_csvs), "--features",
                                      "minilm-l6,mfcc40", "--cache", str(tmp_path / "cache"), "--no-progress"])
    assert result.exit_code != 0 and isinstance(result.exception, CorpusError)
    assert "train_splits" in str(result.exception) and "\n" not in str(result.exception)


def test_text_then_audio_and_audio_then_text_share_one_corpus_manifest(tmp_path):
    root = make_meld(tmp_path / "corpus")
    text_first, audio_first = tmp_path / "text-first", tmp_path / "audio-first"
    extract("meld", root, "minilm-l6", text_first, "--set", "corpus.splits=test")
    extract("meld", root, "mfcc40", text_first, "--set", "corpus.splits=test")
    extract("meld", root, "mfcc40", audio_first, "--set", "corpus.splits=test")
    extract("meld", root, "minilm-l6", audio_first, "--set", "corpus.splits=test")
    for cache in (text_first, audio_first):
        stored = {u.id: u for u in read_utterances(cache / "meld" / "utterances.jsonl")}
        assert len(stored) == 6 and all(u.audio_path and Path(u.audio_path).is_file() for u in stored.values())


def test_fuse_without_the_default_text_feature_names_the_cached_one(meld_csvs, tmp_path):
    """MELD's default text feature (roberta-base) needs hub weights; a cache holding only minilm-l6 says so."""
    cache = tmp_path / "cache"
    extract("meld", meld_csvs, "minilm-l6", cache)
    result = CliRunner().invoke(cli, ["fuse", "--model", "text-only", "--dataset", "meld", "--cache", str(cache),
                                      "--out", str(tmp_path / "run")])
    assert result.exit_code != 0
    message = str(result.exception)
    assert "\n" not in message and "feature 'roberta-base' is not in the cache" in message
    assert message.endswith("or read one that is cached: --set text_feature=minilm-l6")
    assert fuse_text_only(cache, "meld", tmp_path / "run")["protocol"] == "meld"  # the suggested setting trains
