"""`linear`: the linear probe, multinomial logistic regression on pooled features; the
reference row every model should beat (docs/baselines.md).

Each modality is summarised by the masked mean over its sequence (an utterance-level
feature: the vector itself), of the inputs the loader has already z-normalised with the
training split's statistics; `modality` picks "audio", "text" or "both" (concatenated). One
Linear layer gives the logits (regression: one output, L1 loss like every model). The L2
penalty is the trainer's weight decay on the weights only (`no_weight_decay` exempts the
bias, as scikit-learn does not penalise the intercept). `C` is scikit-learn's: the trainer
derives weight_decay = 1 / (C * n) from the fold's n training utterances (weight_decay_for),
since scikit-learn minimises C * sum(loss) + |w|^2 / 2 and the trainer mean(loss) +
weight_decay * |w|^2 / 2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from mer.errors import MerError
from mer.fuse.blocks import masked_mean
from mer.fuse.models.base import FusionConfig, FusionOutput, register_model

MODALITIES = {"audio": ("audio",), "text": ("text",), "both": ("audio", "text")}


@dataclass
class LinearConfig(FusionConfig):
    audio_feature: str = "wavlm-base-plus"
    text_feature: str = "roberta-base"
    demo_audio_feature: str = "mfcc40"
    demo_text_feature: str = "minilm-l6"
    modality: str = "both"  # "audio" | "text" | "both": the pooled vectors concatenated
    # Full batch (up to 4096 utterances), trained to convergence and the last epoch kept like scikit-learn
    # (no selection on a small, noisy dev fold). RAVDESS ComParE, 6 folds, mean test accuracy (docs/baselines.md):
    # best dev UA epoch of 300 0.649, last of 200 0.652; scikit-learn on the same training clips 0.667.
    # scikit-learn's C (inverse L2 strength): the trainer's weight decay is 1 / (C n) on the fold's n training
    # utterances (weight_decay_for), so C means the same on any corpus; `weight_decay` is not read.
    C: float = 0.1
    refit_on_dev: bool = False  # the last epoch's count again on train + dev (mer.fuse.trainer)
    dropout: float = 0.0
    lr: float = 1e-2
    batch_size: int = 4096
    max_epochs: int = 200
    patience: Optional[int] = None
    monitor: str = "last"

    def __post_init__(self):
        super().__post_init__()
        if self.modality not in MODALITIES:
            raise MerError(f"modality must be one of {', '.join(MODALITIES)}, got {self.modality!r}; "
                           "e.g. --set modality=audio")
        if not self.C > 0:
            raise MerError(f"C must be positive (scikit-learn's inverse L2 strength), got {self.C!r}; e.g. --set C=0.1")

    def weight_decay_for(self, train_size: int) -> float:
        """scikit-learn minimises C * sum(loss) + |w|^2 / 2; the trainer mean(loss) + weight_decay * |w|^2 / 2."""
        return 1.0 / (self.C * train_size)

    @property
    def inputs(self) -> tuple[str, ...]:
        """The features the run loads (mer.fuse.run.model_features)."""
        return MODALITIES[self.modality]

    @classmethod
    def tiny(cls) -> "LinearConfig":
        return cls(batch_size=4, max_epochs=2)


@register_model("linear", LinearConfig)
class LinearProbe(nn.Module):
    def __init__(self, config: LinearConfig, num_classes: int, audio_dim: int, text_dim: int):
        super().__init__()
        self.config, self.num_classes = config, num_classes
        dims = {"audio": audio_dim, "text": text_dim}
        self.roles = config.inputs
        self.linear = nn.Linear(sum(dims[role] for role in self.roles), num_classes)

    def no_weight_decay(self) -> set[str]:
        return {"linear.bias"}

    def forward(self, batch: dict) -> FusionOutput:
        pooled = [masked_mean(batch[role], batch[f"{role}_mask"]) for role in self.roles]  # (batch, dim) each
        return FusionOutput(self.linear(torch.cat(pooled, dim=-1)))
