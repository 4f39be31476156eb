"""Fusion models, one file each, registered by name in MODELS (timm style).

    build_model("mcsan", num_classes=7, input_dims={"audio": 40, "text": 768}, layers=2)
    make_config("mcsan", corpus="meld", lr="3e-4")   # defaults < paper per-corpus < overrides
    tiny_config("mcsan")                             # the test-sized variant

Importing this package registers every model whose module exists. A model is added by one
file here and its name in MODEL_MODULES (see docs/models.md, "Adding a model").
"""

from __future__ import annotations

import importlib
from typing import Optional

from torch import nn

from mer.fuse.models.base import (MODELS, FusionConfig, FusionOutput, ModelEntry, RegressionTargets, apply_overrides,
                                  fusion_losses, is_regression, lr_factor, register_model, task_loss_for)

MODEL_MODULES = ("baselines", "linear", "mcsan", "cm_roberta", "mcfn", "mfdr", "mgcma")

for _module in MODEL_MODULES:
    importlib.import_module(f"mer.fuse.models.{_module}")


def model_names() -> list[str]:
    return MODELS.names()


def make_config(name: str, corpus: Optional[str] = None, **overrides) -> FusionConfig:
    """The model's config: its defaults, then the paper's settings for `corpus`, then `overrides`."""
    config = MODELS.get(name).config_class().for_corpus(corpus)
    return apply_overrides(config, overrides)


def tiny_config(name: str) -> FusionConfig:
    return MODELS.get(name).config_class.tiny()


def build_model(name: str, num_classes: int, input_dims: dict[str, int],
                config: Optional[FusionConfig] = None, **overrides) -> nn.Module:
    """A model of `num_classes` outputs (1 or a RegressionTargets(D) = regression) for input_dims {"audio": A,
    "text": T}.
    `config` defaults to make_config(name); `overrides` replace its fields."""
    entry = MODELS.get(name)
    config = apply_overrides(config if config is not None else entry.config_class(), overrides)
    return entry.model_class(config, num_classes, input_dims["audio"], input_dims["text"])


__all__ = ["MODELS", "MODEL_MODULES", "FusionConfig", "FusionOutput", "ModelEntry", "RegressionTargets", "apply_overrides",
           "build_model", "fusion_losses", "is_regression", "lr_factor", "make_config", "model_names", "register_model",
           "task_loss_for", "tiny_config"]
