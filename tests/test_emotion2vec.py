"""emotion2vec features (mer/extract/emotion2vec.py) on tiny random checkpoints in the RELEASE's own
format (config.yaml + model.pt with FunASR's module names, the pretraining decoder and a classifier
head included), loaded through the real path: release folder -> converter -> our network.

Tolerances (float32; measured maxima in brackets):
  a clip batched with others vs alone:                     abs < 1e-4  [4e-6]
  chunked (7 s clip, 4 s windows) vs one pass:             < 5 % of max |value|  [see the test]
The port itself was checked against FunASR's Emotion2vec on these tiny checkpoints (docs/extractors.md).
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from mer.errors import MerError
from mer.extract.base import EXTRACTORS, build_extractor
from mer.extract.emotion2vec import CHECKPOINTS, Emotion2vecError, alibi_slopes
from mer.extract.emotion2vec_convert import convert, main as convert_main
from tests.test_ssl import items_of, max_abs_diff, speech_like
from tests.test_ssl import offline_env  # noqa: F401  (autouse: HF_HUB_OFFLINE, a private MER_HOME)

SR = 16000
BATCH_TOL = 1e-4
TINY_MODEL_CONF = {  # FunASR config.yaml model_conf, emotion2vec base's shape at toy size
    "embed_dim": 32, "num_heads": 4, "depth": 2, "mlp_ratio": 2.0, "norm_eps": 1e-5, "norm_affine": True,
    "layer_norm_first": False, "normalize": True, "extractor_mode": "layer_norm",
    "modalities": {"audio": {
        "prenet_depth": 1, "num_extra_tokens": 3, "use_alibi_encoder": True, "num_alibi_heads": 4,
        "learned_alibi": False, "learned_alibi_scale": True, "learned_alibi_scale_per_head": True,
        "learned_alibi_scale_per_layer": False, "model_depth": 2, "extractor_mode": "layer_norm",
        "feature_encoder_spec": "[(16, 10, 5)] + [(16, 3, 2)] * 4 + [(16,2,2)] + [(16,2,2)]",
        "conv_pos_width": 15, "conv_pos_groups": 4, "conv_pos_depth": 3, "conv_pos_pre_ln": False}},
}
VARIANT = {"layer_norm_first": True, "modalities": {"audio": {"learned_alibi_scale_per_layer": True,
                                                                "conv_pos_pre_ln": True, "conv_pos_width": 12}}}


def merged(base: dict, change: dict) -> dict:
    out = dict(base)
    for key, value in change.items():
        out[key] = merged(base.get(key, {}), value) if isinstance(value, dict) else value
    return out


def release_state_dict(conf: dict, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """Random weights under FunASR's names (funasr/models/emotion2vec: audio.py, base.py, modules.py)."""
    audio, dim = conf["modalities"]["audio"], conf["embed_dim"]
    hidden, heads = int(dim * conf["mlp_ratio"]), conf["num_heads"]
    spec = [(16, 10, 5)] + [(16, 3, 2)] * 4 + [(16, 2, 2)] * 2
    kernel = max(3, audio["conv_pos_width"] // audio["conv_pos_depth"])
    shapes: dict[str, tuple] = {}
    prefix = "modality_encoders.AUDIO."
    for i, (channels, k, _) in enumerate(spec):
        shapes[f"{prefix}local_encoder.conv_layers.{i}.0.weight"] = (channels, 1 if i == 0 else spec[i - 1][0], k)
        shapes[f"{prefix}local_encoder.conv_layers.{i}.2.1.weight"] = shapes[f"{prefix}local_encoder.conv_layers.{i}.2.1.bias"] = (channels,)
    shapes.update({f"{prefix}project_features.1.weight": (16,), f"{prefix}project_features.1.bias": (16,),
                   f"{prefix}project_features.2.weight": (dim, 16), f"{prefix}project_features.2.bias": (dim,)})
    positional = f"{prefix}relative_positional_encoder."
    if audio["conv_pos_pre_ln"]:
        shapes.update({f"{positional}0.weight": (dim,), f"{positional}0.bias": (dim,)})
        positional += "1."
    for j in range(audio["conv_pos_depth"]):
        shapes[f"{positional}{j + 1}.0.weight"] = (dim, dim // audio["conv_pos_groups"], kernel)
        shapes[f"{positional}{j + 1}.0.bias"] = (dim,)
    layers = audio["prenet_depth"] + conf["depth"] if audio["learned_alibi_scale_per_layer"] else 1
    shapes[f"{prefix}extra_tokens"] = (1, audio["num_extra_tokens"], dim)
    shapes[f"{prefix}alibi_scale"] = (layers, 1, heads, 1, 1)
    block = {"norm1.weight": (dim,), "norm1.bias": (dim,), "attn.qkv.weight": (3 * dim, dim), "attn.qkv.bias": (3 * dim,),
             "attn.proj.weight": (dim, dim), "attn.proj.bias": (dim,), "norm2.weight": (dim,), "norm2.bias": (dim,),
             "mlp.fc1.weight": (hidden, dim), "mlp.fc1.bias": (hidden,), "mlp.fc2.weight": (dim, hidden),
             "mlp.fc2.bias": (dim,)}
    for b in range(audio["prenet_depth"]):
        shapes.update({f"{prefix}context_encoder.blocks.{b}.{name}": shape for name, shape in block.items()})
    for b in range(conf["depth"]):
        shapes.update({f"blocks.{b}.{name}": shape for name, shape in block.items()})
    final = "norm" if conf["layer_norm_first"] else f"{prefix}context_encoder.norm"
    shapes.update({f"{final}.weight": (dim,), f"{final}.bias": (dim,)})
    # left out by the converter: the pretraining decoder and emotion2vec+'s 9-class head
    shapes.update({f"{prefix}decoder.blocks.0.0.weight": (8, dim, 3), f"{prefix}decoder.proj.weight": (dim, 8),
                   "proj.weight": (9, dim), "proj.bias": (9,)})
    state = {}
    for name, shape in shapes.items():
        values = rng.standard_normal(shape).astype(np.float32)
        if name.endswith("alibi_scale") or (name.endswith("weight") and len(shape) == 1):
            values = 1.0 + 0.2 * values  # norm gains and ALiBi scales near 1, as trained ones are
        elif len(shape) > 1:
            values *= 0.5 / np.sqrt(np.prod(shape[1:]))
        else:
            values *= 0.1
        state[name] = torch.from_numpy(values)
    return state


def save_tiny_release(directory: Path, conf: dict = TINY_MODEL_CONF, seed: int = 0) -> Path:
    """A release folder: config.yaml (model: Emotion2vec, model_conf) and model.pt ({"state_dict": ...})."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.yaml").write_text(yaml.safe_dump({"model": "Emotion2vec", "model_conf": conf}))
    torch.save({"state_dict": release_state_dict(conf, np.random.default_rng(seed))}, directory / "model.pt")
    return directory


@pytest.fixture(scope="module")
def release_dir(tmp_path_factory) -> Path:
    return save_tiny_release(tmp_path_factory.mktemp("e2v") / "emotion2vec_plus_base")


# ----------------------------------------------------------------------------- registry, loading


def test_registered_names_and_spec(release_dir):
    assert set(CHECKPOINTS) | {f"{name}-mean" for name in CHECKPOINTS} <= set(EXTRACTORS.names())
    frames = build_extractor("emotion2vec-plus-base", model=str(release_dir))
    spec = frames.spec
    assert (spec.modality, spec.granularity, spec.frame_rate, spec.dim) == ("audio", "frame", 50.0, 32)
    assert spec.model_revision.startswith("sha256:") and spec.config["normalize"] is True
    pooled = build_extractor("emotion2vec-plus-base-mean", model=str(release_dir))
    assert (pooled.spec.granularity, pooled.spec.frame_rate) == ("utterance", None)
    assert pooled.spec.config_hash != spec.config_hash


def test_release_folder_converted_folder_and_models_dir_give_one_cache_key(release_dir, tmp_path):
    from_release = build_extractor("emotion2vec-plus-base", model=str(release_dir))
    assert convert_main([str(release_dir), str(tmp_path / "converted")]) == 0
    from_converted = build_extractor("emotion2vec-plus-base", model=str(tmp_path / "converted"))
    from_models_dir = build_extractor("emotion2vec-plus-base", models_dir=str(release_dir.parent))
    assert from_release.spec.config_hash == from_converted.spec.config_hash == from_models_dir.spec.config_hash
    wave = speech_like(0.8, 1)
    assert np.array_equal(from_release.extract(items_of([wave]))[0], from_converted.extract(items_of([wave]))[0])
    reseeded = save_tiny_release(tmp_path / "reseeded", seed=1)
    assert build_extractor("emotion2vec-plus-base", model=str(reseeded)).spec.config_hash != from_release.spec.config_hash


def test_the_converter_keeps_the_encoder_and_drops_decoder_and_head(release_dir, tmp_path):
    from safetensors.torch import load_file

    out = convert(release_dir, tmp_path / "out")
    weights = load_file(str(out / "model.safetensors"))
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "emotion2vec" and config["feature_encoder_spec"][0] == [16, 10, 5]
    assert config["prenet_depth"] == 1 and config["num_extra_tokens"] == 3
    assert not any("decoder" in key or key.startswith("proj.") for key in weights)
    release = torch.load(release_dir / "model.pt", weights_only=True)["state_dict"]
    assert torch.equal(weights["positional_encoder.convs.0.weight"],
                       release["modality_encoders.AUDIO.relative_positional_encoder.1.0.weight"])
    assert torch.equal(weights["prenet_blocks.0.attn.qkv.weight"],
                       release["modality_encoders.AUDIO.context_encoder.blocks.0.attn.qkv.weight"])


def test_alibi_slopes_are_fairseqs():
    assert alibi_slopes(4) == [0.25, 0.0625, 0.015625, 0.00390625]
    assert alibi_slopes(12)[:8] == alibi_slopes(8) and alibi_slopes(12)[8:] == alibi_slopes(16)[0::2][:4]


# ----------------------------------------------------------------------------- features


@pytest.mark.parametrize("variant", [False, True], ids=["release-shape", "pre-norm-per-layer-alibi"])
def test_batched_equals_one_at_a_time(tmp_path, variant):
    conf = merged(TINY_MODEL_CONF, VARIANT) if variant else TINY_MODEL_CONF
    extractor = build_extractor("emotion2vec-base", model=str(save_tiny_release(tmp_path / "m", conf)))
    waves = [speech_like(seconds, seed) for seed, seconds in enumerate((400 / SR, 0.07, 0.5, 1.0, 1.4661))]
    batched = extractor.extract(items_of(waves))
    single = [extractor.extract(items_of([wave]))[0] for wave in waves]
    assert [len(out) for out in batched] == [1 + (len(w) - 400) // 320 for w in waves] == [1, 3, 24, 49, 73]
    assert max_abs_diff(batched, single) < BATCH_TOL


def test_utterance_feature_is_the_mean_of_the_frames(release_dir):
    wave = speech_like(1.2, 2)
    frames = build_extractor("emotion2vec-plus-base", model=str(release_dir)).extract(items_of([wave]))[0]
    pooled = build_extractor("emotion2vec-plus-base-mean", model=str(release_dir)).extract(items_of([wave]))[0]
    assert pooled.shape == (32,) and np.allclose(pooled, frames.mean(axis=0), atol=1e-6)


def test_long_clips_run_in_windows_close_to_one_pass(release_dir):
    wave = speech_like(7.02, 5)
    one_pass = build_extractor("emotion2vec-base", model=str(release_dir), chunk_seconds=60).extract(items_of([wave]))[0]
    chunked = build_extractor("emotion2vec-base", model=str(release_dir), chunk_seconds=4).extract(items_of([wave]))[0]
    assert chunked.shape == one_pass.shape == (1 + (len(wave) - 400) // 320, 32)
    relative = np.abs(chunked - one_pass).max() / np.abs(one_pass).max()
    assert relative < 0.05, f"chunked vs one pass: {100 * relative:.2f} % of max |value|"


# ----------------------------------------------------------------------------- errors, pickling, CLI


def test_missing_and_foreign_checkpoints_are_one_line_errors(release_dir, tmp_path):
    with pytest.raises(MerError, match="emotion2vec/emotion2vec_plus_large.*models_dir"):
        build_extractor("emotion2vec-plus-large")  # offline, nothing local
    (tmp_path / "empty").mkdir()
    with pytest.raises(MerError, match="neither model.pt"):
        build_extractor("emotion2vec-base", model=str(tmp_path / "empty"))
    wrong = save_tiny_release(tmp_path / "wrong", merged(TINY_MODEL_CONF, {"embed_dim": 48}))
    (wrong / "config.yaml").write_text(yaml.safe_dump({"model_conf": TINY_MODEL_CONF}))
    with pytest.raises(Emotion2vecError, match="do not fit"):
        build_extractor("emotion2vec-base", model=str(wrong))
    group_norm = save_tiny_release(tmp_path / "gn", merged(TINY_MODEL_CONF, {"modalities": {"audio": {"extractor_mode": "default"}}}))
    with pytest.raises(Emotion2vecError, match="extractor_mode"):
        build_extractor("emotion2vec-base", model=str(group_norm))
    pickled = tmp_path / "pickled"
    shutil_copy = save_tiny_release(pickled)
    torch.save({"state_dict": torch.load(shutil_copy / "model.pt")["state_dict"], "args": Path("x")}, pickled / "model.pt")
    with pytest.raises(Emotion2vecError, match="--allow-pickle"):
        build_extractor("emotion2vec-base", model=str(pickled))
    assert convert_main([str(pickled), str(tmp_path / "trusted"), "--allow-pickle"]) == 0
    for options, pattern in [({"colour": "red"}, "unknown option"), ({"pool": "max"}, "pool"), ({"dtype": "fp8"}, "dtype")]:
        with pytest.raises(Emotion2vecError, match=pattern):
            build_extractor("emotion2vec-base", model=str(release_dir), **options)
    with pytest.raises(MerError, match="CUDA"):
        build_extractor("emotion2vec-base", model=str(release_dir), dtype="bf16").load("cpu")
    with pytest.raises(Emotion2vecError, match="test/u0: 399 samples"):
        build_extractor("emotion2vec-base", model=str(release_dir)).extract(items_of([np.zeros(399, np.float32)]))


def test_pickles_without_the_network(release_dir):
    extractor = build_extractor("emotion2vec-base", model=str(release_dir))
    wave = speech_like(0.3, 1)
    before = extractor.extract(items_of([wave]))[0]
    clone = pickle.loads(pickle.dumps(extractor))
    assert clone._network is None and clone.spec == extractor.spec
    assert np.array_equal(clone.extract(items_of([wave]))[0], before)


def test_mer_extract_emotion2vec_through_the_cli(release_dir, tmp_path, demo_root):
    from mer.cli import cli

    cache = tmp_path / "cache"
    result = CliRunner().invoke(cli, ["extract", "--dataset", "demo", "--set", "corpus.size=40", "--root",
                                      str(demo_root), "--features", "emotion2vec-plus-base,emotion2vec-plus-base-mean",
                                      "--cache", str(cache), "--set", f"emotion2vec-plus-base.model={release_dir}",
                                      "--set", f"emotion2vec-plus-base-mean.model={release_dir}",
                                      "--no-progress", "--json"])
    assert result.exit_code == 0, result.output
    assert [f["done"] for f in json.loads(result.stdout)["features"]] == [40, 40]
    info = CliRunner().invoke(cli, ["cache", "info", str(cache), "--json"])
    by_name = {item["spec"]["name"]: item["spec"] for item in json.loads(info.stdout)}
    assert (by_name["emotion2vec-plus-base"]["granularity"], by_name["emotion2vec-plus-base"]["frame_rate"]) == ("frame", 50.0)
    assert by_name["emotion2vec-plus-base-mean"]["granularity"] == "utterance"
