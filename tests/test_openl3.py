"""OpenL3: the front end against a numpy re-implementation of kapre 0.1.4, window counts and
framing against openl3 core.py, shapes, batch-vs-single, pooling, weight loading and errors, and
the Keras .h5 converter on a synthetic file in the Keras layout.

The network costs about 0.5 s per 1-s window on a 2-core CPU, so runs through the network use
hop_seconds=1.0 (12 windows in all); the default-hop counts are checked on the framing path.
Tolerances: front end vs the float64 reference < 1e-3 dB [measured 5e-4] where the reference is
above -40 dB (kapre's dB is 10 log10 of the AMPLITUDE, so -40 dB is a power ratio of 1e-8: below
that float32 cannot resolve a bin next to the window's peak, in kapre's float32 either); batch vs
single item < 1e-4 x the largest value (float32 convolutions over different batch sizes).
"""

from __future__ import annotations

import gzip
import itertools
import math
import pickle
import shutil
from collections import defaultdict

import h5py
import numpy as np
import pytest
import soxr
import torch
import torch.nn.functional as F

from mer.data.utterance import Utterance
from mer.errors import MerError
from mer.extract.base import ExtractItem, build_extractor
from mer.extract.openl3 import (FRONT_ENDS, WEIGHTS_ENV, L3AudioNet, OpenL3Config, Spectrogram, file_sha256,
                                htk_mel_filterbank, read_weights, save_weights)
from mer.extract.openl3_convert import convert, main as convert_main

librosa = pytest.importorskip("librosa")

SR, SR48 = 16000, 48000
FAST = dict(hop_seconds=1.0)  # 1 window per second of audio instead of 10
CLIP_SECONDS = (0.2, 1.0, 2.5)


def clip(seconds: float, seed: int = 0) -> np.ndarray:
    t = np.arange(int(round(seconds * SR))) / SR
    chirp = np.sin(2 * np.pi * (200 + 1500 * t) * t)
    noise = np.random.default_rng(seed).standard_normal(len(t))
    return (0.3 * chirp + 0.05 * noise).astype(np.float32)


def items_of(*signals: np.ndarray) -> list[ExtractItem]:
    return [ExtractItem(Utterance(id=f"test/u{i}", corpus="test"), audio=s) for i, s in enumerate(signals)]


def random_state_dict(seed: int) -> dict:
    torch.manual_seed(seed)
    network = L3AudioNet()
    with torch.no_grad():
        for norm in [network.input_norm, *network.norms]:
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.normal_(0, 0.1)
            norm.running_mean.normal_(0, 0.1)
            norm.running_var.uniform_(0.5, 2.0)
        network.input_norm.running_mean.fill_(-40.0)  # the dB input lies in [-80, 0]
        network.input_norm.running_var.fill_(400.0)
    return network.state_dict()


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("openl3-weights")
    metadata = {"input_repr": "mel256", "content_type": "env", "source": "random"}
    save_weights(random_state_dict(0), folder / "openl3_audio_mel256_env.safetensors", metadata)
    return folder


@pytest.fixture(scope="module")
def batch_6144(weights_dir):
    """openl3-6144 on the three clips in one call; window_batch=2 makes chunks span clips."""
    extractor = build_extractor("openl3-6144", weights=str(weights_dir), window_batch=2, **FAST)
    signals = [clip(seconds, seed) for seed, seconds in enumerate(CLIP_SECONDS)]
    return signals, extractor.extract(items_of(*signals))


# ----------------------------------------------------------------------------- front end


def kapre_reference(window: np.ndarray, n_fft: int, hop: int, n_mels, same_padding: bool) -> np.ndarray:
    """kapre 0.1.4 Spectrogram/Melspectrogram in float64: DFT kernels x periodic Hann, strided
    correlation with TF padding, librosa HTK mel (area norm), sqrt, amplitude_to_decibel."""
    if same_padding:  # TF 'same': ceil(in / stride) outputs, the extra zero on the right
        total = max((math.ceil(len(window) / hop) - 1) * hop + n_fft - len(window), 0)
        window = np.pad(window, (total // 2, total - total // 2))
    frames = np.lib.stride_tricks.sliding_window_view(window.astype(np.float64), n_fft)[::hop]  # (frames, n_fft)
    angles = np.outer(np.arange(n_fft // 2 + 1), np.arange(n_fft)) * 2 * np.pi / n_fft  # (freqs, n_fft)
    tapered = frames * librosa.filters.get_window("hann", n_fft, fftbins=True)
    power = (tapered @ np.cos(angles).T) ** 2 + (tapered @ -np.sin(angles).T) ** 2  # (frames, freqs)
    if n_mels:
        power = power @ librosa.filters.mel(sr=SR48, n_fft=n_fft, n_mels=n_mels, htk=True, norm="slaney").T
    db = 10 * np.log10(np.maximum(np.sqrt(power), 1e-10))
    return np.maximum(db - db.max(), -80.0).T  # (bins, frames)


@pytest.mark.filterwarnings("ignore:Empty filters")
def test_mel_filterbank_is_librosa_htk_with_area_norm():
    for n_mels in (256, 128):
        expected = librosa.filters.mel(sr=SR48, n_fft=2048, n_mels=n_mels, htk=True, norm="slaney")
        np.testing.assert_allclose(htk_mel_filterbank(SR48, 2048, n_mels), expected, rtol=1e-5, atol=1e-9)


@pytest.mark.filterwarnings("ignore:Empty filters")  # HTK bands narrower than a 23 Hz bin: kapre has them too
@pytest.mark.parametrize("input_repr, shape", [("mel256", (256, 199)), ("mel128", (128, 199)), ("linear", (257, 197))])
def test_front_end_matches_kapre_0_1_4(input_repr, shape):
    front = FRONT_ENDS[input_repr]
    window = soxr.resample(clip(1.0, seed=3), SR, SR48)
    got = Spectrogram(front)(torch.from_numpy(window)[None])[0, 0].numpy()  # (bins, frames)
    expected = kapre_reference(window, front.n_fft, front.hop_length, front.n_mels, front.same_padding)
    assert got.shape == expected.shape == shape and got.max() == 0.0 and got.min() >= -80.0
    audible = expected > -40
    assert audible.mean() > 0.25
    np.testing.assert_allclose(got[audible], expected[audible], atol=1e-3, rtol=0)


def test_silent_window_is_zero_db_not_nan():
    spectrum = Spectrogram(FRONT_ENDS["mel256"])(torch.zeros(2, SR48))
    assert torch.equal(spectrum, torch.zeros_like(spectrum))


# ----------------------------------------------------------------------------- windows


def openl3_windows(audio48: np.ndarray, center: bool, hop: int) -> np.ndarray:
    """openl3 core.py _preprocess_audio_batch after resampling: _center_audio, _pad_audio, frame."""
    if center:
        audio48 = np.pad(audio48, (SR48 // 2, 0))
    if len(audio48) < SR48:
        pad = SR48 - len(audio48)
    else:
        pad = int(np.ceil((len(audio48) - SR48) / float(hop))) * hop - (len(audio48) - SR48)
    audio48 = np.pad(audio48, (0, max(pad, 0)))
    n_frames = 1 + int((len(audio48) - SR48) / float(hop))
    return np.stack([audio48[i * hop: i * hop + SR48] for i in range(n_frames)])


@pytest.mark.parametrize("center, counts", [(True, (1, 6, 21)), (False, (1, 1, 16))])
def test_windows_are_openl3s_at_the_default_hop(weights_dir, center, counts):
    extractor = build_extractor("openl3-6144", weights=str(weights_dir), center=center)
    for seconds, count in zip(CLIP_SECONDS, counts):
        (item,) = items_of(clip(seconds))
        framed = extractor._framed(item).numpy()  # (windows, 48000)
        expected = openl3_windows(extractor._resampled(item), center, hop=4800)
        assert framed.shape == expected.shape == (count, SR48)
        assert extractor.config.num_windows(int(seconds * SR48)) == count
        np.testing.assert_array_equal(framed, expected)


# ----------------------------------------------------------------------------- embeddings


def test_6144_shapes_and_frame_counts(batch_6144):
    _, embeddings = batch_6144
    assert [e.shape for e in embeddings] == [(1, 6144), (2, 6144), (3, 6144)]  # hop 1 s, centred
    assert all(e.dtype == np.float32 and np.isfinite(e).all() for e in embeddings)
    assert embeddings[2].std(axis=0).max() > 0  # windows differ: the random network is not degenerate


def test_batch_equals_single_items(weights_dir, batch_6144):
    signals, batched = batch_6144
    extractor = build_extractor("openl3-6144", weights=str(weights_dir), **FAST)
    for signal, expected in zip(signals[:2], batched[:2]):
        (alone,) = extractor.extract(items_of(signal))
        np.testing.assert_allclose(alone, expected, atol=1e-4 * np.abs(expected).max(), rtol=0)


def test_512_is_the_max_over_6144_positions_and_mean_pools_frames(weights_dir, batch_6144):
    """512 pools the whole 32x24 map, 6144 pools 8x8 tiles into 4x3 positions: the 512 vector is
    the maximum over those positions when the 6144 vector is ordered like Keras (mel, frame, channel)."""
    signals, (short, one_second, _) = batch_6144
    as_512 = {key: rows.reshape(len(rows), 12, 512).max(axis=1) for key, rows in (("short", short), ("1s", one_second))}
    frames = build_extractor("openl3-512", weights=str(weights_dir), **FAST)
    (got,) = frames.extract(items_of(signals[0]))
    assert got.shape == (1, 512) and frames.spec.granularity == "frame"
    np.testing.assert_allclose(got, as_512["short"], atol=1e-4 * np.abs(got).max(), rtol=0)
    pooled = build_extractor("openl3-512-mean", weights=str(weights_dir), **FAST)
    (mean,) = pooled.extract(items_of(signals[1]))
    assert mean.shape == (512,) and (pooled.spec.granularity, pooled.spec.frame_rate) == ("utterance", None)
    np.testing.assert_allclose(mean, as_512["1s"].mean(axis=0), atol=1e-4 * np.abs(mean).max(), rtol=0)


# ----------------------------------------------------------------------------- spec, weights, errors


def test_spec_holds_every_option_and_the_weights_hash(weights_dir, tmp_path):
    extractor = build_extractor("openl3-6144", weights=str(weights_dir))
    spec, path = extractor.spec, weights_dir / "openl3_audio_mel256_env.safetensors"
    assert (spec.modality, spec.granularity, spec.dim, spec.dtype) == ("audio", "frame", 6144, "float16")
    assert spec.frame_rate == 10.0 and spec.model_revision == f"sha256:{file_sha256(path)}"
    assert spec.config == {"embedding_size": 6144, "content_type": "env", "input_repr": "mel256", "hop_seconds": 0.1,
                           "center": True, "pool": "none", "resample_quality": "HQ", "hop_samples": 4800,
                           "weights_sha256": file_sha256(path)}
    copy = tmp_path / "copy.safetensors"
    shutil.copy(path, copy)
    assert build_extractor("openl3-6144", weights=str(copy)).spec.config_hash == spec.config_hash  # same bytes
    other = tmp_path / "other.safetensors"
    save_weights(random_state_dict(1), other, {"input_repr": "mel256"})
    assert build_extractor("openl3-6144", weights=str(other)).spec.config_hash != spec.config_hash
    assert build_extractor("openl3-512", weights=str(copy)).spec.config_hash != spec.config_hash


def test_string_options_are_typed_and_env_var_is_read(weights_dir, monkeypatch):
    monkeypatch.setenv(WEIGHTS_ENV, str(weights_dir))
    extractor = build_extractor("openl3-512", center="false", hop_seconds="0.25", window_batch="4")
    assert extractor.config == OpenL3Config(embedding_size=512, center=False, hop_seconds=0.25, window_batch=4)
    assert extractor.spec.frame_rate == 4.0 and extractor.weights_path.parent == weights_dir


def one_line_error(build) -> str:
    with pytest.raises(MerError) as info:
        build()
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_weights_fail_at_construction_naming_the_option(weights_dir, tmp_path, monkeypatch):
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    message = one_line_error(lambda: build_extractor("openl3-6144"))
    assert "weights=" in message and WEIGHTS_ENV in message and "openl3_convert" in message
    message = one_line_error(lambda: build_extractor("openl3-6144", weights=str(tmp_path / "nope.pt")))
    assert "nope.pt (weights=)" in message
    message = one_line_error(lambda: build_extractor("openl3-6144", weights=str(weights_dir), content_type="music"))
    assert "openl3_audio_mel256_music.safetensors" in message
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "gone"))
    assert f"${WEIGHTS_ENV}=" in one_line_error(lambda: build_extractor("openl3-6144"))


def test_weights_that_do_not_fit_are_one_line_errors(weights_dir, tmp_path):
    state = random_state_dict(0)
    del state["convs.7.weight"]
    broken = tmp_path / "broken.pt"
    save_weights(state, broken, {})
    message = one_line_error(lambda: build_extractor("openl3-512", weights=str(broken)).load())
    assert "missing: convs.7.weight" in message
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a tensor file")
    assert "cannot read" in one_line_error(lambda: build_extractor("openl3-512", weights=str(garbage)).load())
    music = tmp_path / "music.safetensors"
    save_weights(random_state_dict(0), music, {"input_repr": "mel256", "content_type": "music", "source": "x.h5"})
    assert "content_type=music" in one_line_error(lambda: build_extractor("openl3-512", weights=str(music)).load())


def test_bad_options_and_audio_are_clear_errors(weights_dir):
    assert "unknown option" in one_line_error(lambda: build_extractor("openl3-512", embedding_size=6144))
    assert "input_repr must be" in one_line_error(lambda: build_extractor("openl3-512", input_repr="mel64"))
    assert "center='maybe' must be a boolean (true or false)" in one_line_error(lambda: build_extractor("openl3-512", center="maybe"))
    extractor = build_extractor("openl3-512", weights=str(weights_dir))
    assert "test/u0: " in one_line_error(lambda: extractor._resampled(items_of(np.zeros(0, np.float32))[0]))


def test_extractor_pickles_without_its_network(weights_dir):
    extractor = build_extractor("openl3-512", weights=str(weights_dir))
    extractor.load()
    clone = pickle.loads(pickle.dumps(extractor))
    assert clone._network is None and clone.spec == extractor.spec


# ----------------------------------------------------------------------------- converter


KERAS_BN = ("gamma", "beta", "moving_mean", "moving_variance")


def keras_audio_layers(rng: np.random.Generator, first_index: int = 9) -> list[tuple[str, dict]]:
    """(name, weights) of every layer of the openl3 audio model in model order, Keras 2 style:
    auto-numbered from first_index (so sorted group names differ from the model order), weightless
    layers in between, and the kapre Melspectrogram constants that the v0.2 files store."""
    numbers = defaultdict(lambda: itertools.count(first_index))

    def auto_name(kind: str) -> str:
        return f"{kind}_{next(numbers[kind])}"

    def batch_norm(channels: int) -> tuple[str, dict]:
        return auto_name("batch_normalization"), {key: rng.random(channels) + 0.5 for key in KERAS_BN}

    kapre = {"real_kernels": rng.standard_normal((8, 1, 1, 5)), "Variable": rng.random((5, 4))}  # any shape
    layers = [("input_1", {}), ("melspectrogram_1", kapre), batch_norm(1)]
    widths = [1, 64, 64, 128, 128, 256, 256, 512, 512]
    for index, (c_in, c_out) in enumerate(zip(widths, widths[1:])):
        last = index == len(widths) - 2
        conv = {"kernel": rng.standard_normal((3, 3, c_in, c_out)), "bias": rng.standard_normal(c_out)}
        layers.append(("audio_embedding_layer" if last else auto_name("conv2d"), conv))
        if not last:
            layers += [batch_norm(c_out), (auto_name("activation"), {})]
        if index in (1, 3, 5):
            layers.append((auto_name("max_pooling2d"), {}))
    return layers


def write_keras_h5(path, layers: list[tuple[str, dict]]) -> None:
    """The layout of Keras 2 `save_weights`: root attribute layer_names, one group per layer with
    attribute weight_names, datasets at <layer>/<layer>/<weight>:0."""
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([name.encode() for name, _ in layers])
        f.attrs["backend"], f.attrs["keras_version"] = b"tensorflow", b"2.2.4"
        for name, weights in layers:
            group = f.create_group(name)
            group.attrs["weight_names"] = np.array([f"{name}/{key}:0".encode() for key in weights])
            for key, value in weights.items():
                group.create_dataset(f"{name}/{key}:0", data=np.asarray(value, dtype=np.float32))


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory):
    """(path, the weight layers in order, as float32) of a synthetic official mel128/music file."""
    path = tmp_path_factory.mktemp("keras") / "openl3_audio_mel128_music.h5"
    layers = keras_audio_layers(np.random.default_rng(0))
    write_keras_h5(path, layers)
    weights = [(name, {key: np.float32(value) for key, value in values.items()}) for name, values in layers
               if values and "spectrogram" not in name]
    return path, weights


def test_converter_maps_keras_layers_in_model_order(keras_file, tmp_path):
    path, layers = keras_file
    state, metadata = read_weights(convert(path, tmp_path / "out.safetensors"))
    assert (metadata["input_repr"], metadata["content_type"], metadata["source"]) == ("mel128", "music", path.name)
    bns = [values for name, values in layers if "batch" in name]
    convs = [values for name, values in layers if "batch" not in name]
    assert (len(bns), len(convs)) == (8, 8)
    for prefix, values in zip(["input_norm"] + [f"norms.{i}" for i in range(7)], bns):
        for keras_key, torch_key in zip(KERAS_BN, ("weight", "bias", "running_mean", "running_var")):
            np.testing.assert_array_equal(state[f"{prefix}.{torch_key}"].numpy(), values[keras_key])
    for index, values in enumerate(convs):
        np.testing.assert_array_equal(state[f"convs.{index}.weight"].numpy(), values["kernel"].transpose(3, 2, 0, 1))
        np.testing.assert_array_equal(state[f"convs.{index}.bias"].numpy(), values["bias"])


def test_converted_conv_computes_what_keras_conv2d_computes(keras_file, tmp_path):
    """Keras Conv2D(padding='same') on channels-last (mels, frames, channels) input, written out."""
    path, layers = keras_file
    state, _ = read_weights(convert(path, tmp_path / "out.pt"))
    kernel, bias = layers[3][1]["kernel"], layers[3][1]["bias"]  # conv2d_10: 64 -> 64 channels
    x = np.random.default_rng(1).standard_normal((5, 4, 64)).astype(np.float32)  # (mels, frames, channels)
    padded = np.pad(x, ((1, 1), (1, 1), (0, 0)))
    keras = np.stack([np.stack([np.einsum("abi,abio->o", padded[h:h + 3, w:w + 3], kernel) for w in range(4)])
                      for h in range(5)]) + bias  # (mels, frames, out)
    torch_out = F.conv2d(torch.from_numpy(x).permute(2, 0, 1)[None], state["convs.1.weight"], state["convs.1.bias"],
                         padding=1)[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(torch_out, keras, rtol=1e-4, atol=1e-4)


def test_converter_reads_gzip_and_the_cli_writes_loadable_weights(keras_file, tmp_path, capsys):
    path, _ = keras_file
    zipped = tmp_path / "openl3_audio_mel128_music-v0_4_0.h5.gz"
    zipped.write_bytes(gzip.compress(path.read_bytes(), compresslevel=1))
    assert convert_main([str(zipped), str(tmp_path / "out.pt")]) == 0 and "wrote" in capsys.readouterr().out
    reference, _ = read_weights(convert(path, tmp_path / "ref.safetensors"))
    state, metadata = read_weights(tmp_path / "out.pt")
    assert metadata["source"] == zipped.name and all(torch.equal(state[k], reference[k]) for k in reference)
    build_extractor("openl3-512", weights=str(tmp_path / "out.pt"), input_repr="mel128", content_type="music").load()


def test_converter_rejects_files_that_are_not_openl3(tmp_path, capsys):
    short = tmp_path / "short.h5"
    write_keras_h5(short, keras_audio_layers(np.random.default_rng(0))[:-1])  # no audio_embedding_layer
    assert convert_main([str(short), str(tmp_path / "x.pt")]) == 1
    assert "15 layers with weights" in capsys.readouterr().err
    not_keras = tmp_path / "plain.h5"
    with h5py.File(not_keras, "w") as f:
        f["x"] = np.zeros(3)
    assert "layer_names" in one_line_error(lambda: convert(not_keras, tmp_path / "y.pt"))
    assert not (tmp_path / "x.pt").exists() and not (tmp_path / "y.pt").exists()
