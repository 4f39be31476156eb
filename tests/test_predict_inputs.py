"""`mer predict --audio`: a folder or a missing file is one line worded for predict (it has no corpus root or
manifest); a silent or very short clip is still predicted, with a one-line warning naming the file."""

import json

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from mer.cli import cli
from mer.errors import MerError

CORPUS = "demo-n40-s0"


def mer(*args):
    """The command in-process; a MerError comes back as `result.exception` (main() prints it as one line)."""
    return CliRunner().invoke(cli, list(args), standalone_mode=False)


@pytest.fixture(scope="module")
def run(tmp_path_factory, demo_root):
    """An audio-only run on mfcc40, one fold, one epoch."""
    cache, out = tmp_path_factory.mktemp("predict-cache"), tmp_path_factory.mktemp("predict-run") / "run"
    extracted = mer("extract", "--dataset", "demo", "--set", "corpus.size=40", "--root", str(demo_root),
                    "--features", "mfcc40", "--cache", str(cache), "--no-progress")
    assert extracted.exception is None, extracted.output
    trained = mer("fuse", "--model", "audio-only", "--dataset", CORPUS, "--cache", str(cache), "--out", str(out),
                  "--device", "cpu", "--protocol", "iemocap-loso", "--folds", "Ses01", "--set", "hidden=8",
                  "--set", "batch_size=4", "--set", "max_epochs=1")
    assert trained.exception is None, trained.output
    return out


def clip(tmp_path, name, seconds, amplitude):
    """A 220 Hz tone with a little noise, `amplitude` peak."""
    t = np.arange(int(seconds * 16000)) / 16000
    wave = np.sin(2 * np.pi * 220 * t) + 0.1 * np.random.default_rng(0).standard_normal(t.size)
    path = tmp_path / name
    sf.write(path, (amplitude * wave / np.abs(wave).max()).astype(np.float32), 16000, subtype="FLOAT")
    return path


def predicted(run, audio):
    """The class probabilities and the lines on stderr."""
    result = mer("predict", "--run", str(run), "--audio", str(audio), "--json")
    assert result.exception is None, result.output
    return json.loads(result.stdout), result.stderr.splitlines()


@pytest.mark.parametrize("seconds, amplitude, flaw", [
    (2.0, 0.0, "silent (peak below -60 dBFS)"),
    (2.0, 0.0005, "silent (peak below -60 dBFS)"),
    (0.1, 0.5, "0.10 s long, shorter than the 0.5 s the audio features need"),
    (0.1, 0.0, "silent (peak below -60 dBFS) and 0.10 s long, shorter than the 0.5 s the audio features need"),
])
def test_a_silent_or_short_clip_is_predicted_with_a_warning_naming_it(run, tmp_path, seconds, amplitude, flaw):
    path = clip(tmp_path, "clip.wav", seconds, amplitude)
    probabilities, lines = predicted(run, path)
    assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-4)
    assert lines == [f"warning: {path}: the clip is {flaw}: its prediction means little"]


def test_speech_level_clip_of_a_second_gets_no_warning(run, tmp_path):
    assert predicted(run, clip(tmp_path, "tone.wav", 1.0, 0.3))[1] == []


@pytest.mark.parametrize("make, message", [
    (lambda tmp: tmp, "{}: is a folder, not an audio file; pass a file (--audio FILE)"),
    (lambda tmp: tmp / "missing.wav", "{}: no such file; check the --audio path"),
])
def test_a_folder_or_missing_audio_is_one_line_for_predict(run, tmp_path, make, message):
    result = mer("predict", "--run", str(run), "--audio", str(make(tmp_path)), "--json")
    assert isinstance(result.exception, MerError), repr(result.exception) + result.output
    assert str(result.exception) == message.format(make(tmp_path))
