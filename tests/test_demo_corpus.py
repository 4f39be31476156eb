"""The synthetic `demo` corpus: deterministic, well-formed, and each modality carries part of the emotion."""

from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from mer.data.audio import SAMPLE_RATE, load_audio
from mer.data.corpora import CORPORA, prepare
from mer.data.corpora.demo import EMOTIONS, MARKER, DemoConfig, default_root, plan_corpus
from mer.errors import MerError

SMALL = 200  # big enough for the separability check, small enough to build in ~3 s


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return prepare("demo", tmp_path_factory.mktemp("demo"), size=SMALL, seed=0)


def _without_path(utterance) -> dict:
    return {k: v for k, v in dataclasses.asdict(utterance).items() if k != "audio_path"}


def test_registered():
    assert "demo" in CORPORA


def test_two_builds_are_identical(tmp_path):
    first = prepare("demo", tmp_path / "a", size=40, seed=3)
    second = prepare("demo", tmp_path / "b", size=40, seed=3)
    assert [_without_path(u) for u in first.utterances] == [_without_path(u) for u in second.utterances]
    for a, b in zip(first.utterances, second.utterances):
        assert Path(a.audio_path).read_bytes() == Path(b.audio_path).read_bytes()


def test_different_seed_gives_different_corpus():
    texts = [p.text for p in plan_corpus(DemoConfig(size=80, seed=0))]
    assert texts != [p.text for p in plan_corpus(DemoConfig(size=80, seed=1))]


def test_default_layout_counts():
    plan = plan_corpus(DemoConfig())
    assert len(plan) == 400
    assert len({p.session for p in plan}) == 5
    assert len({p.speaker for p in plan}) == 10
    assert set(Counter(p.emotion for p in plan)) == set(EMOTIONS)
    assert min(Counter(p.emotion for p in plan).values()) >= 60  # roughly balanced


def test_records(corpus):
    utts = corpus.utterances
    assert corpus.name == "demo-n200-s0"
    assert len(utts) == SMALL and len({u.id for u in utts}) == SMALL
    assert all(u.id.startswith("demo-n200-s0/") and u.corpus == corpus.name for u in utts)
    assert {u.label for u in utts} == set(EMOTIONS)
    assert {u.fold for u in utts} == {f"Ses{i:02d}" for i in range(1, 6)}
    assert all(u.text and Path(u.audio_path).is_absolute() for u in utts)
    assert corpus.report.counts["total"]["utterances"] == SMALL


def test_splits_are_speaker_independent(corpus):
    split_of_session = {u.fold: u.split for u in corpus.utterances}
    assert split_of_session == {"Ses01": "train", "Ses02": "train", "Ses03": "train", "Ses04": "dev", "Ses05": "test"}
    splits_of_speaker = defaultdict(set)
    for u in corpus.utterances:
        splits_of_speaker[u.speaker].add(u.split)
    assert len(splits_of_speaker) == 10
    assert all(len(splits) == 1 for splits in splits_of_speaker.values())


def test_dialogues_alternate_speakers_in_turn_order(corpus):
    dialogues = defaultdict(list)
    for u in corpus.utterances:
        dialogues[u.dialogue].append(u)
    for turns in dialogues.values():
        assert [u.turn for u in turns] == list(range(len(turns)))
        assert len(turns) >= 3
        speakers = [u.speaker for u in turns]
        assert all(a != b for a, b in zip(speakers, speakers[1:]))


def test_wavs_are_16k_mono_and_load(corpus):
    for u in corpus.utterances[:: SMALL // 20]:
        info = sf.info(u.audio_path)
        assert (info.samplerate, info.channels) == (16000, 1)
        wave = load_audio(u.audio_path)
        assert wave.dtype == np.float32 and 1.0 <= len(wave) / SAMPLE_RATE <= 4.0
        assert 0.01 < np.abs(wave).max() < 1.0


def test_names_and_default_root(monkeypatch, tmp_path):
    assert DemoConfig().name == "demo"
    assert DemoConfig(size=100, seed=7).name == "demo-n100-s7"
    assert DemoConfig(size=400, seed=1).name != DemoConfig(size=400, seed=2).name
    assert DemoConfig(sessions=6).name == "demo-n400-s0-ses6"
    monkeypatch.setenv("MER_HOME", str(tmp_path))
    assert default_root(DemoConfig()) == tmp_path / "demo" / "n400-s0"
    assert default_root(DemoConfig(size=100, seed=7)) == tmp_path / "demo" / "n100-s7"


def test_generated_once_and_redone_after_interruption(tmp_path):
    first = prepare("demo", tmp_path, size=20, seed=1)
    wav = Path(first.utterances[0].audio_path)
    original = wav.read_bytes()
    wav.write_bytes(b"partial")
    prepare("demo", tmp_path, size=20, seed=1)
    assert wav.read_bytes() == b"partial"  # complete corpus: not regenerated
    (tmp_path / MARKER).unlink()  # as if generation had stopped before the end
    prepare("demo", tmp_path, size=20, seed=1)
    assert wav.read_bytes() == original


def test_rejects_impossible_options(tmp_path):
    with pytest.raises(MerError, match="sessions"):
        prepare("demo", tmp_path, size=40, sessions=2)
    with pytest.raises(MerError, match="size"):
        prepare("demo", tmp_path, size=5)


# ------------------------------------------------------------------ separability smoke check

def _frame_features(wave: np.ndarray, frame: int = 400, hop: int = 160) -> np.ndarray:
    frames = np.lib.stride_tricks.sliding_window_view(wave, frame)[::hop]
    log_energy = np.log(np.mean(frames ** 2, axis=1) + 1e-10)
    zero_crossings = np.mean(np.abs(np.diff(np.sign(frames), axis=1)) > 0, axis=1)
    voiced = log_energy > log_energy.max() - 4
    return np.array([log_energy.mean(), log_energy.std(), log_energy.max(),
                     zero_crossings[voiced].mean(), zero_crossings[voiced].std(), voiced.mean()])


def _held_out_accuracy(features: np.ndarray, labels: np.ndarray, train: np.ndarray) -> float:
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    classifier.fit(features[train], labels[train])
    return float(classifier.score(features[~train], labels[~train]))


def test_each_modality_carries_part_of_the_emotion(corpus):
    utts = corpus.utterances
    audio = np.stack([_frame_features(load_audio(u.audio_path)) for u in utts])
    text = CountVectorizer().fit_transform([u.text for u in utts]).toarray().astype(float)
    labels = np.array([u.label for u in utts])
    train = np.array([u.split == "train" for u in utts])  # dev + test held out: 80 utterances
    audio_acc = _held_out_accuracy(audio, labels, train)
    text_acc = _held_out_accuracy(text, labels, train)
    fusion_acc = _held_out_accuracy(np.hstack([audio, text]), labels, train)
    for acc in (audio_acc, text_acc):
        assert 0.33 < acc < 0.9, (audio_acc, text_acc)
    assert fusion_acc > max(audio_acc, text_acc) + 0.05, (audio_acc, text_acc, fusion_acc)
