"""Convert a released emotion2vec checkpoint to the weights of mer.extract.emotion2vec:

    python -m mer.extract.emotion2vec_convert RELEASE OUT_DIR [--allow-pickle]

RELEASE: the release's folder (`model.pt` + `config.yaml`, as FunASR and the hub repositories
emotion2vec/emotion2vec_* hold it), or a fairseq checkpoint file (`emotion2vec_base.pt` of the
first release, its config inside under cfg.model). OUT_DIR gets `config.json` (our
Emotion2vecConfig) and `model.safetensors`. The extractor converts a release folder by itself
on first use; this command is for doing it once by hand, or for a checkpoint that needs pickle.

The state dict is read with `torch.load(weights_only=True)`. Checkpoints holding Python objects
(fairseq's: an omegaconf config) need --allow-pickle, which runs the file's pickle code: use it only
on files from a source you trust; omegaconf must be installed for fairseq files.

Keys (FunASR module names -> ours; everything else, the pretraining decoder, the EMA teacher and
the emotion2vec+ classifier head `proj`, is left out):
    modality_encoders.AUDIO.local_encoder.conv_layers.I.0.weight      feature_encoder.convs.I.weight
    modality_encoders.AUDIO.local_encoder.conv_layers.I.2.1.*         feature_encoder.norms.I.*
    modality_encoders.AUDIO.project_features.1.* / .2.*               feature_projection.norm.* / .linear.*
    modality_encoders.AUDIO.relative_positional_encoder.(I+1).0.*     positional_encoder.convs.I.*
      (conv_pos_pre_ln: .0.* is positional_encoder.pre_norm.*, the convs are under .1.(I+1).0.*)
    modality_encoders.AUDIO.extra_tokens / alibi_scale                extra_tokens / alibi_scale
    modality_encoders.AUDIO.context_encoder.blocks.I.* / .norm.*      prenet_blocks.I.* / prenet_norm.*
    blocks.I.* / norm.*                                               blocks.I.* / final_norm.*
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Optional

import torch

from mer.errors import MerError
from mer.extract.emotion2vec import (CONFIG_FILE, RELEASE_CONFIG, RELEASE_WEIGHTS, WEIGHTS_FILE, Emotion2vecConfig,
                                     Emotion2vecError, Emotion2vecModel)
from mer.hashing import sha256_file

AUDIO = r"modality_encoders\.AUDIO\."
KEY_MAP = [  # (release key pattern, our key template); the first match wins
    (AUDIO + r"local_encoder\.conv_layers\.(\d+)\.0\.weight", r"feature_encoder.convs.\1.weight"),
    (AUDIO + r"local_encoder\.conv_layers\.(\d+)\.2\.1\.(weight|bias)", r"feature_encoder.norms.\1.\2"),
    (AUDIO + r"project_features\.1\.(weight|bias)", r"feature_projection.norm.\1"),
    (AUDIO + r"project_features\.2\.(weight|bias)", r"feature_projection.linear.\1"),
    (AUDIO + r"extra_tokens", "extra_tokens"),
    (AUDIO + r"alibi_scale", "alibi_scale"),
    (AUDIO + r"context_encoder\.blocks\.(\d+)\.(.+)", r"prenet_blocks.\1.\2"),
    (AUDIO + r"context_encoder\.norm\.(weight|bias)", r"prenet_norm.\1"),
    (r"blocks\.(\d+)\.(.+)", r"blocks.\1.\2"),
    (r"norm\.(weight|bias)", r"final_norm.\1"),
]
POSITIONAL = AUDIO + r"relative_positional_encoder\."
POSITIONAL_CONV = {False: POSITIONAL + r"(\d+)\.0\.(weight|bias)", True: POSITIONAL + r"1\.(\d+)\.0\.(weight|bias)"}
POSITIONAL_PRE_NORM = POSITIONAL + r"0\.(weight|bias)"


def config_from_release(model_conf: dict, where: str) -> Emotion2vecConfig:
    """Our config from the release's `model_conf` (config.yaml) or fairseq cfg.model."""
    audio = (model_conf.get("modalities") or {}).get("audio") or {}
    unsupported = {
        "extractor_mode": (audio.get("extractor_mode", "layer_norm"), "layer_norm"),
        "learned_alibi": (bool(audio.get("learned_alibi", False)), False),
        "num_alibi_heads": (audio.get("num_alibi_heads", model_conf.get("num_heads")), model_conf.get("num_heads")),
    }
    wrong = [f"{key}={got!r} (supported: {want!r})" for key, (got, want) in unsupported.items() if got != want]
    if wrong:
        raise Emotion2vecError(f"{where}: {', '.join(wrong)}; this checkpoint is not an emotion2vec audio model "
                               "mer can run")
    spec = audio.get("feature_encoder_spec")
    try:
        layers = [tuple(int(v) for v in layer) for layer in _parse_conv_spec(spec)] if spec else None
    except (ValueError, TypeError):
        raise Emotion2vecError(f"{where}: feature_encoder_spec {spec!r} is not a list of (dim, kernel, stride)") from None
    defaults = Emotion2vecConfig()
    values = dict(
        embed_dim=model_conf.get("embed_dim"), num_heads=model_conf.get("num_heads"), depth=model_conf.get("depth"),
        prenet_depth=audio.get("prenet_depth"), mlp_ratio=model_conf.get("mlp_ratio"),
        norm_eps=model_conf.get("norm_eps"), norm_affine=model_conf.get("norm_affine"),
        layer_norm_first=model_conf.get("layer_norm_first"), num_extra_tokens=audio.get("num_extra_tokens"),
        feature_encoder_spec=layers, conv_pos_width=audio.get("conv_pos_width"),
        conv_pos_groups=audio.get("conv_pos_groups"), conv_pos_depth=audio.get("conv_pos_depth"),
        conv_pos_pre_ln=audio.get("conv_pos_pre_ln"), use_alibi=audio.get("use_alibi_encoder"),
        alibi_scale_per_head=audio.get("learned_alibi_scale_per_head"),
        alibi_scale_per_layer=audio.get("learned_alibi_scale_per_layer"), normalize=model_conf.get("normalize"))
    return Emotion2vecConfig(**{key: getattr(defaults, key) if value is None else value
                                for key, value in values.items()})


def _parse_conv_spec(spec) -> list:
    """fairseq writes the conv stack as a Python expression: '[(512, 10, 5)] + [(512, 3, 2)] * 4 + ...'."""
    if not isinstance(spec, str):
        return list(spec)
    terms = [term.strip() for term in spec.split("+")]
    layers = []
    for term in terms:
        match = re.fullmatch(r"\[\s*\(([\d\s,]+)\)\s*\](?:\s*\*\s*(\d+))?", term)
        if not match:
            raise ValueError(spec)
        layers += [tuple(int(v) for v in match.group(1).split(","))] * int(match.group(2) or 1)
    return layers


def rename_state_dict(release: dict, config: Emotion2vecConfig, where: str) -> dict:
    """Our state dict from the release's; checks that every weight of our network is there, with its shape."""
    network = Emotion2vecModel(config)
    table = [(POSITIONAL_CONV[config.conv_pos_pre_ln], None), *KEY_MAP]
    if config.conv_pos_pre_ln:
        table.insert(0, (POSITIONAL_PRE_NORM, r"positional_encoder.pre_norm.\1"))
    ours = {}
    for key, value in release.items():
        key = key.removeprefix("module.")
        for pattern, template in table:
            match = re.fullmatch(pattern, key)
            if match and template is None:  # positional convs: the release counts from 1 (0 is a transpose)
                ours[f"positional_encoder.convs.{int(match.group(1)) - 1}.{match.group(2)}"] = value
                break
            if match:
                ours[match.expand(template)] = value.unsqueeze(0) if template == "alibi_scale" and value.dim() == 4 else value
                break
    expected = network.state_dict()
    missing = sorted(set(expected) - set(ours))
    wrong = [k for k in expected if k in ours and tuple(ours[k].shape) != tuple(expected[k].shape)]
    if missing or wrong:
        detail = "; ".join(f"{what}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                           for what, keys in (("missing", missing), ("wrong shape", wrong)) if keys)
        raise Emotion2vecError(f"{where}: the weights do not fit the config ({detail}); not an emotion2vec checkpoint")
    return {key: ours[key].detach().float().contiguous() for key in expected}


def read_release(source: Path, allow_pickle: bool = False) -> tuple[dict, dict]:
    """(state dict, model_conf) from a release folder (model.pt + config.yaml) or a fairseq .pt file."""
    weights = source / RELEASE_WEIGHTS if source.is_dir() else source
    if not weights.is_file():
        raise Emotion2vecError(f"{weights}: not found; give the release folder ({RELEASE_WEIGHTS} + {RELEASE_CONFIG}) "
                               "or a fairseq emotion2vec .pt file")
    checkpoint = _load(weights, allow_pickle)
    if source.is_dir():
        import yaml

        conf = (yaml.safe_load((source / RELEASE_CONFIG).read_text()) or {}).get("model_conf")
    else:
        conf = _fairseq_model_conf(checkpoint)
    if not isinstance(conf, dict):
        raise Emotion2vecError(f"{source}: no model configuration (config.yaml model_conf, or the checkpoint's cfg.model)")
    state = checkpoint
    for key in ("state_dict", "model_state_dict", "model"):  # as FunASR's load_pretrained_model unwraps
        state = state[key] if isinstance(state, dict) and isinstance(state.get(key), dict) else state
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}, conf


def _load(path: Path, allow_pickle: bool) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except ModuleNotFoundError as exc:
        raise Emotion2vecError(f"{path}: reading it needs the module {exc.name!r} (pip install {exc.name})") from None
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if not allow_pickle and "weights_only" in str(exc):
            raise Emotion2vecError(f"{path}: holds Python objects besides tensors; if you trust the file, convert it "
                                   f"with python -m mer.extract.emotion2vec_convert {path} OUT_DIR --allow-pickle") from None
        raise Emotion2vecError(f"{path}: cannot read the checkpoint ({reason})") from None


def _fairseq_model_conf(checkpoint: dict) -> Optional[dict]:
    cfg = checkpoint.get("cfg") if isinstance(checkpoint, dict) else None
    model = cfg.get("model") if cfg is not None else None
    if model is not None and not isinstance(model, dict):
        from omegaconf import OmegaConf

        model = OmegaConf.to_container(model, resolve=True)
    return model


def content_digest(config: Emotion2vecConfig, state_dict: dict) -> str:
    """sha256 over the config and the tensors (the file's bytes are not stable: safetensors writes
    its metadata in hash-map order)."""
    digest = hashlib.sha256(config.to_json().encode())
    for key in sorted(state_dict):
        digest.update(key.encode())
        digest.update(state_dict[key].numpy().tobytes())
    return digest.hexdigest()[:16]


def convert(source: str | Path, out_dir: str | Path, allow_pickle: bool = False) -> Path:
    """Write OUT_DIR/config.json and OUT_DIR/model.safetensors (atomically: a temporary folder renamed)."""
    from safetensors.torch import save_file

    source, out_dir = Path(source).expanduser(), Path(out_dir).expanduser()
    release, conf = read_release(source, allow_pickle)
    config = config_from_release(conf, str(source))
    state_dict = rename_state_dict(release, config, str(source))
    weights = source / RELEASE_WEIGHTS if source.is_dir() else source
    tmp = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / CONFIG_FILE).write_text(config.to_json())
    metadata = {"format": "mer-emotion2vec-1", "source": weights.name, "source_sha256": sha256_file(weights),
                "weights_sha256": content_digest(config, state_dict)}
    save_file(state_dict, str(tmp / WEIGHTS_FILE), metadata=metadata)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mer.extract.emotion2vec_convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("release", help=f"release folder ({RELEASE_WEIGHTS} + {RELEASE_CONFIG}) or a fairseq .pt file")
    parser.add_argument("out_dir", help=f"output folder ({CONFIG_FILE} + {WEIGHTS_FILE})")
    parser.add_argument("--allow-pickle", action="store_true", help="read a checkpoint holding Python objects (trusted files only)")
    args = parser.parse_args(argv)
    try:
        out = convert(args.release, args.out_dir, args.allow_pickle)
    except MerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
