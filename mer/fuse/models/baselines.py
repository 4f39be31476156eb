"""Reference points every fusion model should beat: `audio-only`, `text-only`, `concat`
(early fusion of pooled features) and `late` (decision fusion).

Each modality is summarised by the masked mean and the masked max over its sequence,
concatenated (2 x dim): for an utterance-level feature (a length-1 sequence) both are the
vector itself. An MLP (Linear -> ReLU -> Dropout -> Linear) classifies.

`late`: one MLP per modality; the prediction is the average of the two heads'
probabilities (regression: of their outputs), returned as log-probabilities so that
softmax(logits) is the averaged distribution. Each head has its own loss term ("audio",
"text"), so each learns to classify alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from mer.fuse.blocks import ClassifierHead, masked_max, masked_mean
from mer.fuse.models.base import FusionConfig, FusionOutput, TaskLoss, is_regression, register_model


@dataclass
class BaselineConfig(FusionConfig):
    audio_feature: str = "wavlm-base-plus"
    text_feature: str = "roberta-base"
    demo_audio_feature: str = "mfcc40"
    demo_text_feature: str = "minilm-l6"
    # Few samples, many dimensions. Measured on RAVDESS, 224 training clips a fold, 6 actor folds, mean test accuracy
    # (docs/baselines.md; one fold's test is 56 clips, so +/- 3 points is noise); scikit-learn probe fitted on train /
    # on train + dev: ComParE (6373-d) 0.667 / 0.685, eGeMAPS (88-d) 0.598 / 0.580. hidden 256 / dropout 0.3 / weight
    # decay 1e-4: 0.592, 0.574; hidden 64 / dropout 0.5 / weight decay 1e-2: 0.601, 0.560; + input dropout 0.5 (0.2):
    # 0.658, (0.533) (it helps only many redundant dimensions, hence only above 1000 dimensions: ComParE, not eGeMAPS or
    # a 384/768-d text embedding); + refit on train + dev: 0.667, 0.580. A linear skip path: 0.562, 0.533 (not kept).
    # Epoch selection on 56 dev clips is noise: over seeds 0-2 the above gives 0.647, 0.568; no selection (monitor
    # last), 30 epochs, refit on train + dev for those 30 gives 0.656, 0.586 (EmoryNLP text-only 0.369 -> 0.377).
    # An ensemble of 5 MLPs per head (the seed's variance averaged away): 0.672, 0.590 over seeds 0-2.
    hidden: int = 64
    dropout: float = 0.5
    input_dropout: float = 0.5  # on the pooled vector, before the MLP
    input_dropout_min_dim: int = 1000  # ... of a feature with more dimensions than this (concat: audio + text)
    ensemble: int = 5  # members averaged per head (see docs/baselines.md)
    skip: bool = False  # logits = Linear(x) + MLP(x): a linear probe inside every head
    refit_on_dev: bool = True  # after dev chose the epoch count, retrain on train + dev that long (mer.fuse.trainer)
    lr: float = 1e-3
    weight_decay: float = 1e-2
    batch_size: int = 64
    max_epochs: int = 30
    patience: Optional[int] = None
    monitor: str = "last"  # no selection on dev: 30 epochs, then (refit_on_dev) 30 epochs on train + dev

    @classmethod
    def tiny(cls) -> "BaselineConfig":
        return cls(hidden=8, batch_size=4, max_epochs=2, ensemble=2)


class BaselineMember(ClassifierHead):
    """The MLP, plus (config.skip) a Linear layer straight from the pooled vector to the logits, summed."""

    def __init__(self, in_dim: int, num_classes: int, config: BaselineConfig):
        super().__init__(in_dim, num_classes, config.hidden, config.dropout)
        self.skip = nn.Linear(in_dim, num_classes) if config.skip else None

    def forward(self, x: Tensor) -> Tensor:
        logits = self.net(x)
        return logits if self.skip is None else logits + self.skip(x)


class BaselineHead(nn.Module):
    """`config.ensemble` members on one pooled vector, each behind its own input-dropout mask (dropout only when
    the feature has more than `input_dropout_min_dim` dimensions). (batch, 2 * dim) -> (members, batch, C)."""

    def __init__(self, feature_dim: int, num_classes: int, config: BaselineConfig):
        super().__init__()
        in_dim = 2 * feature_dim  # mean and max
        self.input_dropout = nn.Dropout(config.input_dropout if feature_dim > config.input_dropout_min_dim else 0.0)
        self.members = nn.ModuleList(BaselineMember(in_dim, num_classes, config) for _ in range(config.ensemble))

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([member(self.input_dropout(x)) for member in self.members])


def average_heads(head_logits: Tensor, num_classes: int) -> Tensor:
    """(heads, batch, C) -> (batch, C): the mean of the heads' distributions as log-probabilities, so that
    softmax(result) is that mean (regression, one or several targets: the mean outputs)."""
    if is_regression(num_classes):
        return head_logits.mean(dim=0)
    return torch.logsumexp(head_logits.log_softmax(-1), dim=0) - math.log(len(head_logits))


def members_loss(member_logits: Tensor, labels: Tensor, task_loss: TaskLoss) -> Tensor:
    """The SUM of the members' task losses: each member learns alone, under the full weight decay (a mean would
    scale every member's data term by 1/members against the decay)."""
    return sum(task_loss(logits, labels) for logits in member_logits)


def mean_max_pool(sequence: Tensor, mask: Tensor) -> Tensor:
    """(batch, time, dim) -> (batch, 2 * dim)."""
    return torch.cat([masked_mean(sequence, mask), masked_max(sequence, mask)], dim=-1)


class _EnsembleBaseline(nn.Module):
    """One BaselineHead on one pooled vector, which each subclass's `pooled(batch)` gives: the prediction is the
    members' average, the loss the sum of the members' losses."""

    def forward(self, batch: dict) -> FusionOutput:
        member_logits = self.head(self.pooled(batch))  # (members, batch, C)
        return FusionOutput(average_heads(member_logits, self.num_classes), head_logits={"members": member_logits})

    def losses(self, output: FusionOutput, labels: Tensor, task_loss: TaskLoss) -> dict[str, Tensor]:
        return {"task": members_loss(output.head_logits["members"], labels, task_loss)}


@register_model("audio-only", BaselineConfig)
class AudioOnly(_EnsembleBaseline):
    inputs = ("audio",)  # the run loads only this feature
    def __init__(self, config: BaselineConfig, num_classes: int, audio_dim: int, text_dim: int):
        super().__init__()
        self.config, self.num_classes = config, num_classes
        self.head = BaselineHead(audio_dim, num_classes, config)

    def pooled(self, batch: dict) -> Tensor:
        return mean_max_pool(batch["audio"], batch["audio_mask"])  # (batch, 2 * audio_dim)


@register_model("text-only", BaselineConfig)
class TextOnly(_EnsembleBaseline):
    inputs = ("text",)
    def __init__(self, config: BaselineConfig, num_classes: int, audio_dim: int, text_dim: int):
        super().__init__()
        self.config, self.num_classes = config, num_classes
        self.head = BaselineHead(text_dim, num_classes, config)

    def pooled(self, batch: dict) -> Tensor:
        return mean_max_pool(batch["text"], batch["text_mask"])  # (batch, 2 * text_dim)


@register_model("concat", BaselineConfig)
class ConcatFusion(_EnsembleBaseline):
    def __init__(self, config: BaselineConfig, num_classes: int, audio_dim: int, text_dim: int):
        super().__init__()
        self.config, self.num_classes = config, num_classes
        self.head = BaselineHead(audio_dim + text_dim, num_classes, config)

    def pooled(self, batch: dict) -> Tensor:
        audio_pooled = mean_max_pool(batch["audio"], batch["audio_mask"])  # (batch, 2 * audio_dim)
        text_pooled = mean_max_pool(batch["text"], batch["text_mask"])  # (batch, 2 * text_dim)
        return torch.cat([audio_pooled, text_pooled], dim=-1)


@register_model("late", BaselineConfig)
class LateFusion(nn.Module):
    def __init__(self, config: BaselineConfig, num_classes: int, audio_dim: int, text_dim: int):
        super().__init__()
        self.config, self.num_classes = config, num_classes
        self.audio_head = BaselineHead(audio_dim, num_classes, config)
        self.text_head = BaselineHead(text_dim, num_classes, config)

    def forward(self, batch: dict) -> FusionOutput:
        audio_members = self.audio_head(mean_max_pool(batch["audio"], batch["audio_mask"]))  # (members, batch, C)
        text_members = self.text_head(mean_max_pool(batch["text"], batch["text_mask"]))
        audio_logits = average_heads(audio_members, self.num_classes)  # (batch, C)
        text_logits = average_heads(text_members, self.num_classes)
        fused = average_heads(torch.stack([audio_logits, text_logits]), self.num_classes)
        return FusionOutput(fused, head_logits={"audio": audio_logits, "text": text_logits,
                                                "audio_members": audio_members, "text_members": text_members})

    def losses(self, output: FusionOutput, labels: Tensor, task_loss: TaskLoss) -> dict[str, Tensor]:
        return {role: members_loss(output.head_logits[f"{role}_members"], labels, task_loss) for role in ("audio", "text")}
