"""SSL speech encoders (mer/extract/ssl.py) on tiny random WavLM / wav2vec2 / HuBERT checkpoints,
each in its group-norm (base) and layer-norm (large / lv60) flavour, loaded from disk through
AutoModel.from_pretrained like real ones.

Tolerances (float32; measured maxima over the six models in brackets):
  batched (padded) vs one clip at a time, every layer:               abs < 1e-4  [3.1e-6]
  chunked (7 s clip) vs one pass, layer 0, default 1.5 s overlap:    abs < 1e-4  [2.1e-6], every frame
  the same with 0.1 s overlap, frames > 8 from a window border:      abs < 1e-4  [2.1e-6]
    (frames at the borders do differ then: up to 0.49)
  chunked vs one pass, transformer layers, away from borders:        < 3 % of max |value|  [1.6 %]
    (attention sees the window only; with the default overlap 0.9 % at every frame)
"""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from mer.data.utterance import Utterance
from mer.errors import MerError
from mer.extract.base import EXTRACTORS, ExtractItem, build_extractor
from mer.extract.ssl import CHECKPOINTS, SslError, hf_audio_name, plan_chunks
from tests.fixtures.tiny_models import SPEECH_FAMILIES, SPEECH_NORMS, save_tiny_speech_encoder

SR = 16000
MODELS = [(family, norm) for family in SPEECH_FAMILIES for norm in SPEECH_NORMS]
MODEL_IDS = [f"{family}-{norm}" for family, norm in MODELS]
BATCH_TOL, LAYER0_TOL, DEEP_RTOL = 1e-4, 1e-4, 0.03
POSITIONAL_HALF_WIDTH = 8  # frames: num_conv_pos_embeddings 16 // 2 in the tiny models
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def offline_env(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("MER_HOME", str(tmp_path_factory.mktemp("mer-home")))
        patch.delenv("MER_MODELS_DIR", raising=False)
        yield


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory) -> dict[tuple[str, str], Path]:
    root = tmp_path_factory.mktemp("ssl-models")
    return {(family, norm): save_tiny_speech_encoder(root / f"{family}-{norm}", family, norm)
            for family, norm in MODELS}


def speech_like(seconds: float, seed: int) -> np.ndarray:
    """Noise plus a tone with a DC offset and a level unlike 1, so normalisation matters."""
    n = int(round(seconds * SR))
    t = np.arange(n, dtype=np.float32) / SR
    noise = np.random.default_rng(seed).standard_normal(n, dtype=np.float32)
    return 0.05 + 0.2 * noise + 0.3 * np.sin(np.float32(2 * np.pi * (150 + 40 * seed)) * t)


def items_of(waves: list[np.ndarray]) -> list[ExtractItem]:
    return [ExtractItem(Utterance(id=f"test/u{i}", corpus="test"), audio=w) for i, w in enumerate(waves)]


def max_abs_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b))


# ----------------------------------------------------------------------------- registry, spec


def test_registered_names():
    assert set(CHECKPOINTS) | {"hf-audio"} <= set(EXTRACTORS.names())
    assert CHECKPOINTS["wavlm-base-plus"] == "microsoft/wavlm-base-plus"
    assert hf_audio_name("microsoft/wavlm-large") == "hf-audio:microsoft/wavlm-large"


def test_spec_describes_frames_layers_and_weights(tiny_dirs):
    directory = tiny_dirs[("wavlm", "layer")]
    single = build_extractor(f"hf-audio:{directory}")
    several = build_extractor(f"hf-audio:{directory}", layers="all")
    spec = several.spec
    assert spec.name == "hf-audio:wavlm-layer"  # basename: the key follows the content, not the path
    assert (spec.modality, spec.granularity, spec.frame_rate, spec.dim) == ("audio", "frame", 50.0, 32)
    assert single.spec.inner_shape is None and spec.inner_shape == (3, 32)
    assert spec.config["layers"] == [0, 1, 2] and spec.config["norm"] == "layer"
    assert spec.config["normalize"] is True and spec.config["compute_dtype"] == "fp32"
    assert spec.model_revision.startswith("sha256:") and several.pads_safely


def test_config_hash_follows_layers_and_weights(tiny_dirs, tmp_path):
    directory = tiny_dirs[("hubert", "group")]

    def config_hash(path, **options):
        return build_extractor(f"hf-audio:{path}", **options).spec.config_hash

    base = config_hash(directory)
    assert config_hash(directory, layers="2") == base  # "last" of 2 layers is layer 2: same values
    assert len({base, config_hash(directory, layers="all"), config_hash(directory, layers=1)}) == 3
    assert config_hash(directory, chunk_seconds=10) != base
    moved = shutil.copytree(directory, tmp_path / "elsewhere" / directory.name)
    assert config_hash(moved) == base  # same weights at another path share the cache entry
    reseeded = save_tiny_speech_encoder(tmp_path / "reseeded" / directory.name, "hubert", "group", seed=1)
    assert config_hash(reseeded) != base


def test_named_checkpoint_from_local_copy(tiny_dirs, tmp_path):
    local = shutil.copytree(tiny_dirs[("wavlm", "group")], tmp_path / "wavlm-base-plus")
    by_path = build_extractor("wavlm-base-plus", model=str(local))
    by_models_dir = build_extractor("wavlm-base-plus", models_dir=str(tmp_path))
    assert by_path.spec.name == by_models_dir.spec.name == "wavlm-base-plus"
    assert by_path.spec.config_hash == by_models_dir.spec.config_hash
    assert by_path.spec.config["norm"] == "group"


def test_offline_missing_model_fails_fast_in_one_line(tmp_path):
    script = textwrap.dedent("""
        import time
        import mer.extract
        from mer.extract.base import build_extractor
        from mer.errors import MerError
        start = time.monotonic()
        try:
            build_extractor("wavlm-base-plus")
        except MerError as exc:
            print(f"{time.monotonic() - start:.3f}")
            print(exc)
    """)
    env = {key: value for key, value in os.environ.items()
           if key not in ("MER_MODELS_DIR", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE")}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "empty-hf-home"), MER_HOME=str(tmp_path / "mer"),
               PYTHONPATH=str(REPO_ROOT))
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 2, f"want a time and ONE message line; stdout={done.stdout!r} stderr={done.stderr[-500:]!r}"
    seconds, message = float(lines[0]), lines[1]
    assert seconds < 5, f"offline failure took {seconds:.1f} s"
    assert "microsoft/wavlm-base-plus" in message and "--set wavlm-base-plus.models_dir=DIR" in message


# ----------------------------------------------------------------------------- batching


@pytest.mark.parametrize("family,norm", MODELS, ids=MODEL_IDS)
def test_batched_equals_one_at_a_time(tiny_dirs, family, norm):
    extractor = build_extractor(f"hf-audio:{tiny_dirs[(family, norm)]}", layers="all")
    assert extractor.pads_safely  # group norm too: its first GroupNorm takes each item's own statistics
    # 325 samples = one receptive field (1 frame) next to 1.47 s of padding
    waves = [speech_like(seconds, seed) for seed, seconds in enumerate((325 / SR, 0.07, 0.5, 1.0, 1.0, 1.4661))]
    batched = extractor.extract(items_of(waves))
    single = [extractor.extract(items_of([wave]))[0] for wave in waves]
    expected_frames = extractor._model._get_feat_extract_output_lengths(torch.tensor([len(w) for w in waves]))
    assert [out.shape for out in batched] == [(int(n), 3, 32) for n in expected_frames]
    diff = max_abs_diff(batched, single)
    assert diff < BATCH_TOL, f"{family}-{norm}: batched vs single max abs diff {diff:.2e}"


@pytest.mark.parametrize("family", list(SPEECH_FAMILIES))
@pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask")
def test_plain_group_norm_model_is_changed_by_padding(tiny_dirs, family):
    """Why the extractor hooks the first GroupNorm: without it, zero padding moves its statistics."""
    extractor = build_extractor(f"hf-audio:{tiny_dirs[(family, 'group')]}")
    extractor.load("cpu")
    wave = torch.from_numpy(speech_like(0.5, 0))
    padded = torch.cat([wave, torch.zeros(SR)])[None]
    mask = (torch.arange(padded.shape[1]) < len(wave)).long()[None]
    with torch.inference_mode():
        alone = extractor._model(wave[None]).last_hidden_state
        in_batch = extractor._model(padded, attention_mask=mask).last_hidden_state[:, : alone.shape[1]]
    assert float((alone - in_batch).abs().max()) > 1e-2


def test_encoder_without_norm_field_batches_equal_lengths_only(tmp_path):
    """Any transformers CNN speech encoder loads through hf-audio:; data2vec-audio's saved config
    has no feat_extract_norm, so it is not padded (groups of equal length, else one by one)."""
    import transformers

    config = transformers.Data2VecAudioConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, conv_dim=(32, 32, 32),
        conv_kernel=(10, 8, 8), conv_stride=(5, 8, 8), num_conv_pos_embeddings=2, conv_pos_kernel_size=5)
    torch.manual_seed(0)
    transformers.Data2VecAudioModel(config).save_pretrained(tmp_path / "data2vec")
    transformers.Wav2Vec2FeatureExtractor(do_normalize=True).save_pretrained(tmp_path / "data2vec")
    extractor = build_extractor(f"hf-audio:{tmp_path / 'data2vec'}", layers="all")
    assert not extractor.pads_safely and extractor.spec.config["norm"] == "unknown"
    waves = [speech_like(seconds, seed) for seed, seconds in enumerate((0.07, 0.5, 0.5, 1.4661))]
    batched = extractor.extract(items_of(waves))
    single = [extractor.extract(items_of([wave]))[0] for wave in waves]
    assert [out.shape[0] for out in batched] == [3, 24, 24, 73]
    assert max_abs_diff(batched, single) < BATCH_TOL


# ----------------------------------------------------------------------------- layers


@pytest.mark.parametrize("family", list(SPEECH_FAMILIES))
def test_layers_option_shapes_and_values(tmp_path, family):
    directory = save_tiny_speech_encoder(tmp_path / family, family, "layer", num_hidden_layers=4)
    wave = speech_like(0.6, 3)
    frames = 1 + (len(wave) - 325) // 320

    def run(layers):
        return build_extractor(f"hf-audio:{directory}", layers=layers).extract(items_of([wave]))[0]

    every = run("all")
    assert every.shape == (frames, 5, 32)
    assert run("last4").shape == (frames, 4, 32)
    assert np.allclose(run("last"), every[:, 4], atol=1e-5)
    assert np.allclose(run(2), every[:, 2], atol=1e-5)
    assert np.allclose(run("1,3"), every[:, [1, 3]], atol=1e-5)
    assert np.allclose(run([0, 4]), every[:, [0, 4]], atol=1e-5)
    for bad in ("5", "last6", "1,1", "middle"):
        with pytest.raises(SslError, match="layers"):
            build_extractor(f"hf-audio:{directory}", layers=bad)


# ----------------------------------------------------------------------------- chunking


def frames_near_borders(chunks, total: int, width: int) -> np.ndarray:
    """Mask of frames within `width` frames of a boundary between two windows' kept frames."""
    near = np.zeros(total, dtype=bool)
    kept_starts = np.cumsum([0] + [c.keep_to - c.keep_from for c in chunks])[1:-1]
    for border in kept_starts:
        near[max(0, border - width) : border + width] = True
    return near


@pytest.mark.parametrize("family,norm", MODELS, ids=MODEL_IDS)
def test_chunked_equals_one_pass_away_from_borders(tiny_dirs, family, norm):
    name = f"hf-audio:{tiny_dirs[(family, norm)]}"
    wave = speech_like(7.02, 5)
    one_pass = build_extractor(name, layers="all", chunk_seconds=60).extract(items_of([wave]))[0]
    # 0.1 s overlap (5 frames) is narrower than the positional convolution: borders do differ
    chunked_extractor = build_extractor(name, layers="all", chunk_seconds=2, chunk_overlap_seconds=0.1)
    chunked = chunked_extractor.extract(items_of([wave]))[0]
    assert chunked.shape == one_pass.shape == (chunked_extractor.frame_count(len(wave)), 3, 32)
    chunks = plan_chunks(len(one_pass), chunked_extractor._window_frames, chunked_extractor._overlap_frames,
                         chunked_extractor.geometry)
    assert len(chunks) == 4
    away = ~frames_near_borders(chunks, len(one_pass), POSITIONAL_HALF_WIDTH)
    layer0 = float(np.abs(chunked[away, 0] - one_pass[away, 0]).max())
    deep = np.abs(chunked[away, 1:] - one_pass[away, 1:]).max() / np.abs(one_pass[:, 1:]).max()
    assert layer0 < LAYER0_TOL, f"{family}-{norm}: layer 0 chunked vs one pass max abs diff {layer0:.2e}"
    assert deep < DEEP_RTOL, f"{family}-{norm}: transformer layers differ by {100 * deep:.2f} % of max |value|"
    # the default overlap (1.5 s) covers the positional convolution: layer 0 is exact at every frame
    default_overlap = build_extractor(name, layers=0, chunk_seconds=4).extract(items_of([wave]))[0]
    layer0_everywhere = float(np.abs(default_overlap - one_pass[:, 0]).max())
    assert layer0_everywhere < LAYER0_TOL, f"{family}-{norm}: layer 0 with default overlap {layer0_everywhere:.2e}"


def test_305_second_clip_runs_in_bounded_windows(tiny_dirs):
    extractor = build_extractor(f"hf-audio:{tiny_dirs[('wav2vec2', 'group')]}")
    extractor.load("cpu")
    longest_input = []
    extractor._model.register_forward_pre_hook(lambda module, args: longest_input.append(args[0].shape[-1]))
    wave = speech_like(305.0, 7)
    (out,) = extractor.extract(items_of([wave]))
    assert out.shape == (extractor.frame_count(len(wave)), 32) == (15249, 32)
    assert np.isfinite(out).all()
    windows = plan_chunks(len(out), extractor._window_frames, extractor._overlap_frames, extractor.geometry)
    assert max(longest_input) <= 30 * SR and len(longest_input) == len(windows) == 12


# ----------------------------------------------------------------------------- options and errors


def test_bad_options_and_clips_fail_with_one_line(tiny_dirs):
    name = f"hf-audio:{tiny_dirs[('wav2vec2', 'layer')]}"
    for options, pattern in [({"colour": "red"}, "unknown option"), ({"dtype": "fp8"}, "dtype"),
                             ({"chunk_seconds": "2", "chunk_overlap_seconds": "1"}, "chunk_seconds")]:
        with pytest.raises(SslError, match=pattern):
            build_extractor(name, **options)
    with pytest.raises(SslError, match="CUDA"):
        build_extractor(name, dtype="bf16").load("cpu")
    with pytest.raises(SslError, match="test/u0: 324 samples"):
        build_extractor(name).extract(items_of([np.zeros(324, dtype=np.float32)]))
    with pytest.raises(SslError, match="takes no"):
        build_extractor("wavlm-base-plus:/x")
    with pytest.raises(MerError, match="not found"):
        build_extractor("hf-audio:/no/such/model")


def test_pickles_without_the_model(tiny_dirs):
    extractor = build_extractor(f"hf-audio:{tiny_dirs[('hubert', 'layer')]}", chunk_seconds="10")
    wave = speech_like(0.3, 1)
    before = extractor.extract(items_of([wave]))[0]
    clone = pickle.loads(pickle.dumps(extractor))
    assert clone._model is None and clone.spec == extractor.spec
    assert np.array_equal(clone.extract(items_of([wave]))[0], before)
