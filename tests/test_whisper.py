"""Whisper encoder features (mer/extract/whisper.py) on a tiny random-initialised Whisper saved with
save_pretrained and loaded through WhisperModel.from_pretrained like a real checkpoint.

Tolerances (float32; measured maxima in brackets):
  a clip batched with others vs alone, every layer:          abs < 1e-4  [0.0 on the CPU]
  a 70 s clip vs its three windows run one at a time:        abs < 1e-4  [0.0 on the CPU]
"""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mer.errors import MerError
from mer.extract.base import EXTRACTORS, build_extractor
from mer.extract.whisper import CHECKPOINTS, WhisperError
from tests.test_ssl import items_of, max_abs_diff, speech_like
from tests.test_ssl import offline_env  # noqa: F401  (autouse: HF_HUB_OFFLINE, a private MER_HOME)

SR = 16000
TOL = 1e-4
TINY_WHISPER = dict(d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64, decoder_layers=1,
                    decoder_attention_heads=2, decoder_ffn_dim=64, vocab_size=64, num_mel_bins=80,
                    max_source_positions=1500, max_target_positions=32, pad_token_id=0, bos_token_id=1,
                    eos_token_id=2, decoder_start_token_id=1)


def save_tiny_whisper(directory: Path, seed: int = 0, preprocessor: bool = True) -> Path:
    """A tiny random WhisperModel (real 30 s / 80-mel geometry, 2 encoder layers x 32) in `directory`."""
    import transformers

    torch.manual_seed(seed)
    transformers.WhisperModel(transformers.WhisperConfig(**TINY_WHISPER)).eval().save_pretrained(directory)
    if preprocessor:
        transformers.WhisperFeatureExtractor(feature_size=80).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return save_tiny_whisper(tmp_path_factory.mktemp("whisper") / "tiny-whisper")


def test_registered_names_and_spec(tiny_dir):
    assert set(CHECKPOINTS) | {f"{n}-mean" for n in CHECKPOINTS} | {"hf-whisper"} <= set(EXTRACTORS.names())
    frames = build_extractor(f"hf-whisper:{tiny_dir}", layers="all")
    assert frames.spec.name == "hf-whisper:tiny-whisper"
    assert (frames.spec.granularity, frames.spec.frame_rate, frames.spec.dim) == ("frame", 50.0, 32)
    assert frames.spec.inner_shape == (3, 32) and frames.spec.config["layers"] == [0, 1, 2]
    assert frames.spec.model_revision.startswith("sha256:")
    pooled = build_extractor("whisper-base-mean", model=str(tiny_dir))
    assert (pooled.spec.granularity, pooled.spec.frame_rate, pooled.spec.inner_shape) == ("utterance", None, None)
    assert pooled.spec.config_hash != build_extractor("whisper-base", model=str(tiny_dir)).spec.config_hash
    assert frames.spec.config_hash == build_extractor(f"hf-whisper:{tiny_dir}", layers="all",
                                                      window_batch="2").spec.config_hash


@pytest.mark.parametrize("n_samples", [1, 159, 160, 161, 320, 321, 16000, 16001, 479_999, 480_000])
def test_frame_count_is_ceil_samples_over_320_by_the_feature_extractors_own_mask(tiny_dir, n_samples):
    """Mel frames of a clip = the feature extractor's attention mask (centres 160 t < n) = ceil(n / 160);
    conv2 (stride 2, padding 1) keeps encoder frames centred on mel frames 2 j < that: ceil(n / 320)."""
    extractor = build_extractor(f"hf-whisper:{tiny_dir}")
    extractor.load("cpu")
    mask = extractor.feature_extractor([np.zeros(n_samples, np.float32)], sampling_rate=SR, padding="max_length",
                                       return_attention_mask=True, return_tensors="np")["attention_mask"][0]
    assert mask.sum() == math.ceil(n_samples / 160) and mask[: mask.sum()].all()
    assert extractor.frame_count(n_samples) == math.ceil(n_samples / 320)
    (out,) = extractor.extract(items_of([speech_like(n_samples / SR, 1)]))
    assert out.shape == (math.ceil(n_samples / 320), 32)


def test_a_clips_features_do_not_depend_on_its_batch(tiny_dir):
    extractor = build_extractor(f"hf-whisper:{tiny_dir}", layers="all", window_batch=3)
    waves = [speech_like(seconds, seed) for seed, seconds in enumerate((0.02, 0.5, 1.0, 2.3, 4.0))]
    alone = [extractor.extract(items_of([wave]))[0] for wave in waves]
    together = extractor.extract(items_of(waves))
    reversed_order = extractor.extract(items_of(waves[::-1]))[::-1]
    assert [out.shape for out in together] == [(math.ceil(len(w) / 320), 3, 32) for w in waves]
    assert max_abs_diff(together, alone) < TOL and max_abs_diff(reversed_order, alone) < TOL
    # a clip's frames are its own: zero-padding stands for the rest of the 30 s, not a neighbour
    assert not np.allclose(alone[0][:, 2], together[1][: len(alone[0]), 2], atol=1e-3)


def test_a_70_second_clip_gives_its_three_windows_frames_in_order(tiny_dir):
    extractor = build_extractor(f"hf-whisper:{tiny_dir}", layers="0,2")
    extractor.load("cpu")
    window_inputs = []
    extractor._encoder.register_forward_pre_hook(lambda module, args: window_inputs.append(args[0].shape))
    wave = speech_like(70.0, 4)
    (joined,) = extractor.extract(items_of([wave]))
    assert joined.shape == (3500, 2, 32) and extractor.frame_count(len(wave)) == 3500
    assert [shape[-1] for shape in window_inputs] == [3000]  # the 3 windows in one pass of 30 s inputs
    pieces = [extractor.extract(items_of([wave[start : start + 30 * SR]]))[0] for start in (0, 30 * SR, 60 * SR)]
    assert [len(piece) for piece in pieces] == [1500, 1500, 500]
    assert float(np.abs(joined - np.concatenate(pieces)).max()) < TOL


def test_layers_and_mean_pool(tiny_dir):
    wave = speech_like(1.3, 2)
    every = build_extractor(f"hf-whisper:{tiny_dir}", layers="all").extract(items_of([wave]))[0]
    last = build_extractor(f"hf-whisper:{tiny_dir}").extract(items_of([wave]))[0]
    assert np.allclose(last, every[:, 2], atol=1e-6)
    assert np.allclose(build_extractor(f"hf-whisper:{tiny_dir}", layers=1).extract(items_of([wave]))[0],
                       every[:, 1], atol=1e-6)
    pooled = build_extractor("whisper-small-mean", model=str(tiny_dir), layers="last2").extract(items_of([wave]))[0]
    assert pooled.shape == (2, 32) and np.allclose(pooled, every[:, 1:].mean(axis=0), atol=1e-6)


def test_without_preprocessor_config_the_default_feature_extractor_is_used(tiny_dir, tmp_path):
    bare = save_tiny_whisper(tmp_path / "bare", preprocessor=False)
    wave = speech_like(0.7, 3)
    with_config = build_extractor(f"hf-whisper:{tiny_dir}").extract(items_of([wave]))[0]
    assert np.allclose(build_extractor(f"hf-whisper:{bare}").extract(items_of([wave]))[0], with_config, atol=1e-6)


def test_bad_options_and_inputs_are_one_line_errors(tiny_dir, tmp_path):
    name = f"hf-whisper:{tiny_dir}"
    for options, pattern in [({"colour": "red"}, "unknown option"), ({"dtype": "fp8"}, "dtype"),
                             ({"pool": "max"}, "pool"), ({"layers": "3"}, "layers"), ({"window_batch": "0"}, "window_batch")]:
        with pytest.raises(MerError, match=pattern):
            build_extractor(name, **options)
    with pytest.raises(WhisperError, match="unknown option"):
        build_extractor("whisper-base-mean", model=str(tiny_dir), pool="none")
    with pytest.raises(MerError, match="CUDA"):
        build_extractor(name, dtype="fp16").load("cpu")
    with pytest.raises(WhisperError, match="test/u0: .*non-empty"):
        build_extractor(name).extract(items_of([np.zeros(0, np.float32)]))
    with pytest.raises(WhisperError, match="takes no"):
        build_extractor("whisper-base:/x")
    from tests.fixtures.tiny_models import save_tiny_speech_encoder

    with pytest.raises(WhisperError, match="not Whisper"):
        build_extractor(f"hf-whisper:{save_tiny_speech_encoder(tmp_path / 'wavlm', 'wavlm')}")


def test_pickles_without_the_encoder(tiny_dir):
    extractor = build_extractor(f"hf-whisper:{tiny_dir}")
    wave = speech_like(0.4, 5)
    before = extractor.extract(items_of([wave]))[0]
    clone = pickle.loads(pickle.dumps(extractor))
    assert clone._encoder is None and clone.spec == extractor.spec
    assert np.array_equal(clone.extract(items_of([wave]))[0], before)


def test_mer_extract_hf_whisper_through_the_cli(tiny_dir, tmp_path, demo_root):
    from mer.cli import cli

    cache = tmp_path / "cache"
    features = f"hf-whisper:{tiny_dir},whisper-base-mean"
    result = CliRunner().invoke(cli, ["extract", "--dataset", "demo", "--set", "corpus.size=40", "--root",
                                      str(demo_root), "--features", features, "--cache", str(cache),
                                      "--set", f"whisper-base-mean.model={tiny_dir}", "--no-progress", "--json"])
    assert result.exit_code == 0, result.output
    assert [f["done"] for f in json.loads(result.stdout)["features"]] == [40, 40]
    info = CliRunner().invoke(cli, ["cache", "info", str(cache), "--json"])
    by_name = {item["spec"]["name"]: item for item in json.loads(info.stdout)}
    assert by_name["hf-whisper:tiny-whisper"]["spec"]["granularity"] == "frame"
    assert by_name["hf-whisper:tiny-whisper"]["spec"]["frame_rate"] == 50.0
    assert by_name["whisper-base-mean"]["spec"]["granularity"] == "utterance"
