"""`mer predict --run RUN --audio FILE --text "..."`: apply a trained run to new audio + text.

The run's config.json records each input feature's full spec (extractor name, the options it
was built with, config hash). The same extractors are rebuilt, checked to give the same config
hash, and applied to the file; the features are cut, normalised with the fold's training
statistics and batched exactly as in training. With several folds, the class probabilities
are averaged over the folds' checkpoints (or one fold is chosen with `fold`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from mer.data.audio import load_audio
from mer.data.utterance import Utterance
from mer.errors import MerError
from mer.extract.base import ExtractItem, FeatureSpec, rebuild_extractor
from mer.fuse.data import IGNORE_LABEL, FusionCollate, NormStats
from mer.fuse.models import MODELS, build_model


def load_run(run_dir: Path) -> dict:
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise MerError(f"{path}: not a run directory (no config.json); give the --out folder of `mer fuse`")
    return json.loads(path.read_text())


def extract_inputs(run: dict, audio_path: Optional[Path], text: str) -> dict[str, np.ndarray]:
    """role -> (rows, dim) float32, each role's features joined on the last axis as in training."""
    wave = load_audio(audio_path) if audio_path is not None else None
    utterance = Utterance(id="predict/0", corpus="predict", text=text, extra={"context": []})
    inputs = {}
    for role, specs in run["feature_specs"].items():
        if role == "audio" and wave is None:
            raise MerError(f"this run's model reads audio ({run['features']['audio']}); pass --audio FILE")
        parts = []
        for spec_dict in specs:
            extractor = rebuild_extractor(FeatureSpec.from_dict(spec_dict))
            extractor.load("cpu")
            array = np.asarray(extractor.extract([ExtractItem(utterance, wave if role == "audio" else None)])[0],
                               dtype=np.float32)
            parts.append(array.reshape(1, -1) if extractor.spec.granularity == "utterance"
                         else array.reshape(len(array), -1))
        rows = min(len(p) for p in parts)
        inputs[role] = np.concatenate([p[:rows] for p in parts], axis=1)
    return inputs


def predict(run_dir: Path, audio_path: Optional[Path], text: str, fold: Optional[str] = None) -> dict[str, float]:
    run_dir = Path(run_dir)
    run = load_run(run_dir)
    config = MODELS.get(run["model"]).config_class(**run["model_config"])
    labels = run["labels"]
    inputs = extract_inputs(run, audio_path, text)
    folds = [fold] if fold else sorted(p.stem for p in (run_dir / "checkpoints").glob("*.safetensors"))
    if not folds:
        raise MerError(f"{run_dir}/checkpoints: no checkpoint; the run did not finish")
    outputs = [_predict_fold(run_dir, name, run, config, inputs) for name in folds]
    mean = np.mean(outputs, axis=0)
    if labels is None:
        return {"prediction": float(mean)}
    return {label: float(p) for label, p in zip(labels, mean)}


def _predict_fold(run_dir: Path, fold: str, run: dict, config, inputs: dict[str, np.ndarray]) -> np.ndarray:
    from safetensors.torch import load_file

    checkpoint = run_dir / "checkpoints" / f"{fold}.safetensors"
    if not checkpoint.is_file():
        raise MerError(f"{checkpoint}: no such fold checkpoint; folds: "
                       f"{', '.join(p.stem for p in (run_dir / 'checkpoints').glob('*.safetensors'))}")
    norm_path = run_dir / "norm" / f"{fold}.npz"
    stats = NormStats.load(norm_path) if norm_path.is_file() else None
    labels = run["labels"]
    dims = {role: (inputs[role].shape[1] if role in inputs else None) for role in ("audio", "text")}
    model = build_model(run["model"], len(labels) if labels else 1, dims, config)
    model.load_state_dict(load_file(str(checkpoint)))
    model.eval()
    collate = FusionCollate(config.sample_unit, tuple(inputs), regression=labels is None, stats=stats)
    batch = collate([_item(config, inputs)])
    with torch.no_grad():
        logits = model(batch).logits.reshape(-1, len(labels) if labels else 1)[0]
    return logits.softmax(-1).numpy() if labels else logits.numpy()[0]


def _item(config, inputs: dict[str, np.ndarray]) -> dict:
    limits = {"audio": config.max_audio_frames, "text": config.max_text_len}
    if config.sample_unit == "dialogue":  # a dialogue of one utterance, frame features mean-pooled
        return {"ids": ["predict/0"], "labels": [IGNORE_LABEL],
                **{role: array[: limits[role] or None].mean(0, keepdims=True) for role, array in inputs.items()}}
    return {"id": "predict/0", "label": 0, **{role: array[: limits[role] or None] for role, array in inputs.items()}}
