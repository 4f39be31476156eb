"""mfcc40 / logmfb80-d2 against librosa, batch-vs-single invariance, shapes and frame counts.

Tolerances (float32, measured maxima in brackets, signals up to full scale):
  mfcc40 vs librosa.feature.mfcc:     abs < 5e-6 x max|librosa| [1.1e-6 x: 1.2e-3 at c0 = -1131 of silence]
  logmfb80 static vs ln(librosa mel + 1e-6):  abs < 1e-3   [1.3e-4] (natural-log units)
  its delta / delta-delta vs librosa.feature.delta:   abs < 1e-4   [2.1e-5]
  batch vs single item:                               abs < 1e-4 (mfcc), 1e-5 (logmfb)
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from mer.data.utterance import Utterance
from mer.errors import MerError
from mer.extract.base import ExtractItem, build_extractor
from mer.extract.spectral import poly_derivative_matrix

librosa = pytest.importorskip("librosa")

SR = 16000
STFT = dict(sr=SR, n_fft=400, hop_length=160)
MFCC_RTOL, MEL_TOL, DELTA_TOL = 5e-6, 1e-3, 1e-4
DURATIONS = (0.01, 0.05, 0.0999, 0.5, 2.0)  # 0.01 s is shorter than one 25 ms window


def make_signal(kind: str, seconds: float, seed: int = 0) -> np.ndarray:
    n = int(round(seconds * SR))
    t = np.arange(n) / SR
    if kind == "noise":
        return (0.1 * np.random.default_rng(seed).standard_normal(n)).astype(np.float32)
    if kind == "loud-sine":
        return (0.99 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    if kind == "silence":
        return np.zeros(n, dtype=np.float32)
    return (0.5 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 1234.5 * t)).astype(np.float32)


def items_of(signals: list[np.ndarray]) -> list[ExtractItem]:
    return [ExtractItem(Utterance(id=f"test/u{i}", corpus="test"), audio=a) for i, a in enumerate(signals)]


SIGNALS = [make_signal(kind, seconds, seed) for seed, kind in enumerate(("noise", "sine"))
           for seconds in DURATIONS] + [make_signal("loud-sine", 0.3), make_signal("silence", 0.2)]


@pytest.fixture(scope="module")
def mfcc():
    return build_extractor("mfcc40")


@pytest.fixture(scope="module")
def logmfb():
    return build_extractor("logmfb80-d2")


def librosa_log_mel(signal: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "n_fft too large" for the 0.01 s clip
        return np.log(librosa.feature.melspectrogram(y=signal, n_mels=80, **STFT) + 1e-6)  # (n_mels, frames)


def reference_deltas(log_mel: np.ndarray, order: int) -> np.ndarray:
    """librosa's delta, or for < 9 frames the documented rule: derivative of the least-squares
    polynomial of degree min(order, frames - 1) over all frames (np.polyfit), 0 above it."""
    frames = log_mel.shape[1]
    if frames >= 9:
        return librosa.feature.delta(log_mel, width=9, order=order, mode="interp")
    if frames - 1 < order:
        return np.zeros_like(log_mel)
    coefficients = np.polyfit(np.arange(frames), log_mel.T.astype(np.float64), order)  # (order + 1, n_mels)
    leading = coefficients[0] * (1 if order == 1 else 2)  # derivative of a degree-`order` polynomial
    return np.repeat(leading[:, None], frames, axis=1)


def assert_mfcc_close(got: np.ndarray, expected: np.ndarray) -> None:
    assert np.abs(got - expected).max() <= MFCC_RTOL * np.abs(expected).max()


def test_registered_specs(mfcc, logmfb):
    assert (mfcc.spec.dim, mfcc.spec.granularity, mfcc.spec.frame_rate) == (40, "frame", 100.0)
    assert (logmfb.spec.dim, logmfb.spec.granularity, logmfb.spec.frame_rate) == (240, "frame", 100.0)
    for key in ("n_fft", "hop_length", "n_mels", "fmin", "fmax", "log", "center"):
        assert key in mfcc.spec.config and key in logmfb.spec.config
    assert (mfcc.spec.config["log"], logmfb.spec.config["log"]) == ("db", "ln")
    assert build_extractor("mfcc40", n_mels=64).spec.config_hash != mfcc.spec.config_hash


@pytest.mark.parametrize("signal", SIGNALS, ids=lambda s: f"n{len(s)}")
def test_mfcc_equals_librosa(mfcc, signal):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = librosa.feature.mfcc(y=signal, n_mfcc=40, **STFT).T  # (frames, 40)
    (got,) = mfcc.extract(items_of([signal]))
    assert got.shape == expected.shape == (1 + len(signal) // 160, 40)
    assert_mfcc_close(got, expected)


@pytest.mark.parametrize("signal", SIGNALS, ids=lambda s: f"n{len(s)}")
def test_logmfb_equals_librosa(logmfb, signal):
    log_mel = librosa_log_mel(signal)
    (got,) = logmfb.extract(items_of([signal]))
    assert got.shape == (1 + len(signal) // 160, 240)
    assert np.abs(got[:, :80] - log_mel.T).max() < MEL_TOL
    assert np.abs(got[:, 80:160] - reference_deltas(log_mel, 1).T).max() < DELTA_TOL
    assert np.abs(got[:, 160:] - reference_deltas(log_mel, 2).T).max() < DELTA_TOL


@pytest.mark.parametrize("name,tolerance", [("mfcc40", 1e-4), ("logmfb80-d2", 1e-5)])
def test_batch_equals_single_items(name, tolerance):
    extractor = build_extractor(name)
    items = items_of(SIGNALS)
    batched = extractor.extract(items)
    for item, together in zip(items, batched):
        (alone,) = extractor.extract([item])
        assert together.shape == alone.shape
        assert np.abs(together - alone).max() < tolerance


@pytest.mark.parametrize("name", ["mfcc40", "logmfb80-d2"])
def test_a_clip_computed_in_stft_blocks_equals_one_piece_and_librosa(name, monkeypatch):
    """Long clips run the STFT in blocks of frames (bounded memory); block edges must not show."""
    import mer.extract.spectral as spectral

    signal = make_signal("noise", 5.0, seed=3)  # 501 frames: blocks of 64 put edges everywhere
    extractor = build_extractor(name)
    (whole,) = extractor.extract(items_of([signal]))
    monkeypatch.setattr(spectral, "STFT_BLOCK_FRAMES", 64)
    (blocked,) = extractor.extract(items_of([signal, signal[:SR]]))[:1]
    assert blocked.shape == whole.shape == (501, extractor.spec.dim)
    assert np.abs(blocked - whole).max() < 1e-5
    if name == "logmfb80-d2":
        assert np.abs(blocked[:, :80] - librosa_log_mel(signal).T).max() < MEL_TOL


def test_mixed_batch_matches_librosa(mfcc):
    signals = [make_signal("noise", s, seed=7) for s in (0.01, 1.3, 0.37)]
    for signal, got in zip(signals, mfcc.extract(items_of(signals))):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = librosa.feature.mfcc(y=signal, n_mfcc=40, **STFT).T
        assert_mfcc_close(got, expected)


def test_savgol_matrix_matches_scipy_interp():
    from scipy.signal import savgol_filter

    y = np.random.default_rng(3).standard_normal(9)
    for order in (1, 2):
        expected = savgol_filter(y, 9, polyorder=order, deriv=order, mode="interp")
        assert np.allclose(poly_derivative_matrix(9, order) @ y, expected, atol=1e-10)


def test_center_false_frames_and_values():
    extractor = build_extractor("mfcc40", center=False)
    signal = make_signal("noise", 0.2, seed=5)
    (got,) = extractor.extract(items_of([signal]))
    expected = librosa.feature.mfcc(y=signal, n_mfcc=40, center=False, **STFT).T
    assert got.shape == expected.shape == (1 + (len(signal) - 400) // 160, 40)
    assert_mfcc_close(got, expected)
    with pytest.raises(MerError, match="too short"):
        extractor.extract(items_of([make_signal("noise", 0.01)]))


def test_bad_options_and_audio_are_clear_errors():
    with pytest.raises(MerError, match="unknown option"):
        build_extractor("mfcc40", n_mfccs=13)
    with pytest.raises(MerError, match="log must be"):
        build_extractor("logmfb80-d2", log="log10")
    with pytest.raises(MerError, match="mono audio"):
        build_extractor("mfcc40").extract(items_of([np.zeros((2, 1600), np.float32)]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_equals_cpu():
    cpu, gpu = build_extractor("logmfb80-d2"), build_extractor("logmfb80-d2")
    gpu.load("cuda")
    for a, b in zip(cpu.extract(items_of(SIGNALS)), gpu.extract(items_of(SIGNALS))):
        assert np.abs(a - b).max() < MEL_TOL


@pytest.mark.parametrize("name, strings, values", [
    ("mfcc40", {"n_mels": "40", "n_mfcc": "20"}, {"n_mels": 40, "n_mfcc": 20}),
    ("logmfb80-d2", {"fmax": "8000", "center": "false", "top_db": "none"}, {"fmax": 8000.0, "center": False,
                                                                           "top_db": None}),
])
def test_command_line_strings_take_the_options_types(name, strings, values):
    """`--set mfcc40.n_mels=40` (docs/cli.md's own example) arrives as strings: the same config as Python values."""
    assert build_extractor(name, **strings).spec.config_hash == build_extractor(name, **values).spec.config_hash
    with pytest.raises(MerError, match=f"{name}: n_mels='lots' must be an integer \\(e.g. --set {name}.n_mels="):
        build_extractor(name, n_mels="lots")
