"""Convert an official OpenL3 Keras weights file to the state_dict of mer.extract.openl3, with h5py
only (no TensorFlow):

    python -m mer.extract.openl3_convert openl3_audio_mel256_env.h5 openl3_audio_mel256_env.safetensors

Input: a Keras `save_weights` HDF5 file (`.h5`, or the gzipped `.h5.gz` of the authors' release),
or a full-model file (weights under `model_weights/`). The layers that carry weights are read in
the order of the root attribute `layer_names` (the model's layer order; HDF5 groups themselves
are sorted by name, which puts `conv2d_10` before `conv2d_2`), and mapped one by one onto
`L3AudioNet.keras_order()`: BN, conv, BN, conv, ..., conv (8 BatchNormalization + 8 Conv2D).
  Conv2D kernel (kh, kw, in, out) -> weight (out, in, kh, kw) (both are correlations; kh runs
  over mel bins, kw over frames); bias -> bias.
  BatchNormalization gamma, beta, moving_mean, moving_variance -> weight, bias, running_mean,
  running_var.
Layers named `*spectrogram*` (the kapre front end stored in the v0.2 weight files: DFT kernels
and mel matrix) are skipped: the front end is recomputed in torch. The weights do not depend on
the embedding size (only the final pool does) and have the same shapes for every input_repr, so
the file name `openl3_audio_<input_repr>_<content_type>` (or --input-repr / --content-type) is
recorded in the output's metadata and checked when the weights are loaded.
"""

from __future__ import annotations

import argparse
import gzip
import io
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import h5py
import numpy as np
import torch
from torch import nn

from mer.errors import MerError
from mer.extract.openl3 import CONTENT_TYPES, INPUT_REPRS, L3AudioNet, OpenL3Error, file_sha256, save_weights

CONV_WEIGHTS = ("kernel", "bias")
BN_WEIGHTS = ("gamma", "beta", "moving_mean", "moving_variance")
BN_TARGETS = ("weight", "bias", "running_mean", "running_var")
FRONT_END_MARK = "spectrogram"  # kapre layer names: melspectrogram_1, spectrogram_1
OFFICIAL_NAME = re.compile(rf"openl3_audio_({'|'.join(INPUT_REPRS)})_({'|'.join(CONTENT_TYPES)})")


@dataclass
class KerasLayer:
    name: str
    weights: dict[str, np.ndarray]  # short name ("kernel", "gamma", ...) -> array

    @property
    def kind(self) -> str:
        keys = set(self.weights)
        if keys == set(CONV_WEIGHTS):
            return "conv"
        if keys == set(BN_WEIGHTS):
            return "batchnorm"
        return "other"


def _text(value) -> str:
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


def _open_h5(path: Path) -> h5py.File:
    if path.suffix == ".gz":
        with gzip.open(path, "rb") as f:
            return h5py.File(io.BytesIO(f.read()), "r")
    return h5py.File(path, "r")


def read_keras_layers(path: Path) -> list[KerasLayer]:
    """The layers with weights, in model order, without the kapre front end."""
    try:
        handle = _open_h5(path)
    except (OSError, gzip.BadGzipFile) as exc:
        raise OpenL3Error(f"{path}: not a readable HDF5 (.h5 / .h5.gz) file ({exc})") from None
    with handle as f:
        root = f["model_weights"] if "model_weights" in f else f
        if "layer_names" not in root.attrs:
            raise OpenL3Error(f"{path}: no 'layer_names' attribute; expected a Keras weights file (save_weights)")
        layers = []
        for layer_name in map(_text, root.attrs["layer_names"]):
            weight_names = [_text(n) for n in root[layer_name].attrs.get("weight_names", [])]
            if weight_names and FRONT_END_MARK not in layer_name.lower():
                weights = {n.split("/")[-1].split(":")[0]: np.asarray(root[layer_name][n]) for n in weight_names}
                layers.append(KerasLayer(layer_name, weights))
        return layers


def _copy(target: torch.Tensor, value: np.ndarray, where: str) -> None:
    if tuple(target.shape) != value.shape:
        raise OpenL3Error(f"{where}: shape {value.shape} does not fit {tuple(target.shape)}; not an OpenL3 audio model")
    target.copy_(torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32)))


def copy_layer(layer: KerasLayer, module: nn.Module, where: str) -> None:
    expected = "conv" if isinstance(module, nn.Conv2d) else "batchnorm"
    if layer.kind != expected:
        raise OpenL3Error(f"{where}: Keras layer {layer.name!r} holds {sorted(layer.weights)}, expected a {expected} "
                          "layer here; not an OpenL3 audio model")
    if expected == "conv":
        _copy(module.weight, layer.weights["kernel"].transpose(3, 2, 0, 1), f"{where} {layer.name}/kernel")
        _copy(module.bias, layer.weights["bias"], f"{where} {layer.name}/bias")
        return
    for keras_name, torch_name in zip(BN_WEIGHTS, BN_TARGETS):
        _copy(getattr(module, torch_name), layer.weights[keras_name], f"{where} {layer.name}/{keras_name}")


def keras_to_state_dict(layers: list[KerasLayer], where: str = "weights") -> dict[str, torch.Tensor]:
    network = L3AudioNet()  # weight shapes are the same for every input_repr and embedding size
    targets = network.keras_order()
    if len(layers) != len(targets):
        raise OpenL3Error(f"{where}: {len(layers)} layers with weights (besides the spectrogram), expected "
                          f"{len(targets)} (8 BatchNormalization + 8 Conv2D); not an OpenL3 audio model")
    with torch.no_grad():
        for layer, module in zip(layers, targets):
            copy_layer(layer, module, where)
    return network.state_dict()


def official_names(path: Path) -> tuple[Optional[str], Optional[str]]:
    """(input_repr, content_type) from an official file name such as openl3_audio_mel256_env-v0_4_0.h5.gz."""
    match = OFFICIAL_NAME.search(path.name)
    return (match.group(1), match.group(2)) if match else (None, None)


def convert(keras_path: str | Path, out_path: str | Path, input_repr: Optional[str] = None,
            content_type: Optional[str] = None) -> Path:
    keras_path, out_path = Path(keras_path), Path(out_path)
    if not keras_path.is_file():
        raise OpenL3Error(f"{keras_path}: file not found")
    named_repr, named_content = official_names(keras_path)
    state_dict = keras_to_state_dict(read_keras_layers(keras_path), str(keras_path))
    metadata = {"format": "mer-openl3-1", "source": keras_path.name, "source_sha256": file_sha256(keras_path),
                "input_repr": input_repr or named_repr or "", "content_type": content_type or named_content or ""}
    save_weights(state_dict, out_path, metadata)
    return out_path


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mer.extract.openl3_convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("keras_h5", help="official weights: openl3_audio_<repr>_<content>.h5 (or .h5.gz)")
    parser.add_argument("out", help="output .safetensors or .pt")
    parser.add_argument("--input-repr", choices=INPUT_REPRS, help="default: from the input file name")
    parser.add_argument("--content-type", choices=CONTENT_TYPES, help="default: from the input file name")
    args = parser.parse_args(argv)
    try:
        out = convert(args.keras_h5, args.out, args.input_repr, args.content_type)
    except MerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
