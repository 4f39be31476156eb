"""What every fusion model shares: its config fields, the batch it reads, the output it returns,
how its losses are formed, and the registry entry that names it.

Batch contract (mer/fuse/data.py produces exactly this; masks are bool, True = real):

  utterance mode (config.sample_unit == "utterance"), one sample = one utterance:
    audio       (batch, audio_len, audio_dim) float
    audio_mask  (batch, audio_len) bool
    text        (batch, text_len, text_dim) float
    text_mask   (batch, text_len) bool
    label       (batch,) long for classification, float for regression (num_classes == 1);
                (batch, D) float for D dimensional targets (num_classes a RegressionTargets(D))
  Utterance-level features (openSMILE functionals, pooled text) arrive as length-1
  sequences with a mask. Sequences are padded to the longest item of the batch and cut to
  config.max_audio_frames / max_text_len; a model that needs one fixed length (MFDR) pads
  inside its forward.

  dialogue mode (config.sample_unit == "dialogue", CM-RoBERTa), one sample = one dialogue
  of utterance-level vectors in turn order:
    audio          (batch, utterances, audio_dim)
    text           (batch, utterances, text_dim)
    utterance_mask (batch, utterances) bool; audio_mask and text_mask are the same tensor
    label          (batch, utterances), -100 where padded ((batch, utterances, D) for D dimensional targets)

  Other keys (e.g. "ids", a list of utterance ids) may be present; models ignore them.

Output: FusionOutput(logits, aux_losses, head_logits). logits (batch, C) or
(batch, utterances, C); C == 1 is regression, and so is a `num_classes` of type RegressionTargets
(valence, activation, dominance: C == D outputs); a model that combines heads asks `is_regression`.
aux_losses are ALREADY weighted by the model (weights live in its config): the total loss is the
plain sum of the terms that `fusion_losses` returns, and the trainer logs each term by name.

Features: each config names the cache features the paper used (audio_feature,
text_feature) and offline substitutes of the same granularity for `--dataset demo`
(demo_audio_feature, demo_text_feature). `a+b` joins two features of one granularity by
concatenation on the last axis (CM-RoBERTa's openSMILE + OpenL3). "word level" means the text
extractor run with granularity=word (`--set bert-base-uncased.granularity=word`; minilm-l6 is
word level by default). `audio_granularity` / `text_granularity` declare what the model reads
(accepted_granularities); `mer fuse` picks the cached config of that granularity and refuses
another with the `mer extract` command that makes the right one. The papers' choices:

  model       audio (paper -> ours)                  text (paper -> ours)
  mcsan       40-d MFCC -> mfcc40                    300-d GloVe words -> bert-base-uncased (word level)
  cm-roberta  emo_large 6552 + OpenL3 6144           RoBERTa-large last 4 layers, pooled
              -> opensmile-conf:emo_large.conf+openl3-6144-mean  -> roberta-large-last4 (utterance)
  mcfn        log-MFB + deltas -> logmfb80-d2        RoBERTa-base words -> roberta-base (word level)
  mfdr        WavLM-base -> wavlm-base-plus          BERT-base words -> bert-base-uncased (word level)
  mgcma       wav2vec2-base -> wav2vec2-base         bert-base-uncased tokens -> bert-base-uncased
  demo        frame level: mfcc40 or logmfb80-d2;    word/token level: minilm-l6 (384-d);
              utterance level: opensmile-egemaps     utterance level: minilm-l6, pooled by the loader
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Callable, ClassVar, Optional

import torch.nn.functional as F
from torch import Tensor, nn

from mer.errors import MerError
from mer.options import OptionTypeError, typed_value
from mer.registry import Registry

SAMPLE_UNITS = ("utterance", "dialogue")
BATCHINGS = ("bucket", "random")
GRANULARITIES = ("frame", "token", "word", "utterance")  # as mer.cache.spec.GRANULARITIES
IGNORE_LABEL = -100  # padded utterances of a dialogue; CrossEntropyLoss's default ignore_index
REGRESSION_LOSSES = ("auto", "l1", "mse", "ccc")
CCC_EPSILON = 1e-8  # a batch whose targets and outputs are one constant has CCC 0 / 0

TaskLoss = Callable[[Tensor, Tensor], Tensor]


@dataclass
class FusionConfig:
    """Fields every model config has. A model's config subclasses this, changes the defaults
    to the paper's and adds its own fields (sizes, ablation switches) as plain fields."""

    # inputs: cache feature names (see the module docstring)
    audio_feature: str = "mfcc40"
    text_feature: str = "bert-base-uncased"
    demo_audio_feature: str = "mfcc40"
    demo_text_feature: str = "minilm-l6"
    sample_unit: str = "utterance"  # "utterance" | "dialogue"
    max_audio_frames: Optional[int] = None  # the loader cuts longer sequences; None = no limit
    max_text_len: Optional[int] = None
    normalize_inputs: bool = True  # the loader z-normalises each input dim with TRAINING-split statistics
    # the granularity each input must have in the cache (see accepted_granularities): `mer fuse` refuses another
    audio_granularity: str = "any"
    text_granularity: str = "any"
    batching: str = "bucket"  # training batches: "bucket" (similar lengths, less padding) | "random" (lengths mixed)

    # model
    hidden: int = 128
    dropout: float = 0.1

    # training (read by the trainer)
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 32
    max_epochs: int = 30
    patience: Optional[int] = None  # epochs without a better `monitor` before stopping; None = run max_epochs
    # validation quantity for early stopping and the best checkpoint: "headline" = the protocol's headline metric
    # (mer.data.protocols.headline_metric: UA, MELD weighted F1, MOSEI MAE), "loss", a metric name, or "last" (no
    # selection: the final epoch). Not the loss by default: on RAVDESS ComParE (336 clips) the dev loss kept epoch 1
    # in 4 of 6 folds while the dev accuracy still rose; audio-only 0.557 -> 0.592 test accuracy (docs/baselines.md).
    monitor: str = "headline"
    lr_schedule: str = "constant"  # see lr_factor
    # regression loss per target: "l1", "mse", "ccc" (1 - concordance correlation over the batch) or "auto": ccc for
    # dimensional labels (what the AVEC / MSP-Podcast literature trains on), l1 for one unnamed value (CMU-MOSEI)
    regression_loss: str = "auto"
    per_corpus: dict = field(default_factory=dict)  # {"meld": {"lr": 5e-4}, ...}: applied by for_corpus

    # ablation switches -> values to try besides the default; the tests run every one
    ablations: ClassVar[dict] = {}
    # the paper's reported numbers, printed beside ours: {protocol: {row: {metric: value in [0, 1]}}}, row = "full"
    # or an ablation_key ("no_self", "no_awa+window=30"); an ablated run without a row of its own shows none
    paper_results: ClassVar[dict] = {}

    def __post_init__(self):
        if self.sample_unit not in SAMPLE_UNITS:
            raise MerError(f"sample_unit must be one of {SAMPLE_UNITS}, got {self.sample_unit!r}")
        lr_factor(self.lr_schedule, 0, 1)  # rejects an unknown schedule now, not at epoch 1
        for name in POSITIVE_INTS + OPTIONAL_POSITIVE_INTS:
            value = getattr(self, name)
            if value is None and name in OPTIONAL_POSITIVE_INTS:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                allowed = "an integer >= 1" + (" or none" if name in OPTIONAL_POSITIVE_INTS else "")
                raise MerError(f"{name} must be {allowed}, got {value!r}; e.g. --set {name}={_example(self, name)}")
        _check_number(self, "lr", lambda v: v > 0, "a number > 0")
        _check_number(self, "weight_decay", lambda v: v >= 0, "a number >= 0")
        _check_number(self, "dropout", lambda v: 0 <= v < 1, "a number in [0, 1)")
        for role in ("audio", "text"):
            accepted_granularities(self, role)  # rejects an unknown granularity now
        if self.regression_loss not in REGRESSION_LOSSES:
            raise MerError(f"regression_loss must be one of {', '.join(REGRESSION_LOSSES)}, got "
                           f"{self.regression_loss!r}; e.g. --set regression_loss=ccc")
        if self.batching not in BATCHINGS:
            raise MerError(f"batching must be one of {', '.join(BATCHINGS)}, got {self.batching!r}; "
                           f"e.g. --set batching={BATCHINGS[0]}")

    @classmethod
    def tiny(cls) -> "FusionConfig":
        """A few-thousand-parameter variant for tests; every model config overrides it."""
        return cls(hidden=8, batch_size=4, max_epochs=2)

    def for_corpus(self, corpus: Optional[str]) -> "FusionConfig":
        """The config with the paper's per-corpus settings applied (e.g. MCSAN's MELD lr)."""
        return apply_overrides(self, self.per_corpus.get(corpus or "", {}))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class UnimodalSwitches:
    """The `audio_only` / `text_only` ablations of a bimodal model (its paper's unimodal rows). Mix in
    before FusionConfig: `class XConfig(UnimodalSwitches, FusionConfig)`; list both in `ablations`."""

    audio_only: bool = False
    text_only: bool = False

    def __post_init__(self):
        super().__post_init__()
        if self.audio_only and self.text_only:
            raise MerError("audio_only and text_only together leave no modality")

    @property
    def modalities(self) -> tuple[str, ...]:
        return ("audio",) if self.audio_only else ("text",) if self.text_only else ("audio", "text")

    @property
    def inputs(self) -> tuple[str, ...]:
        """The features the run loads (mer.fuse.run.model_features): a unimodal variant never reads the other."""
        return self.modalities


@dataclass
class FusionOutput:
    logits: Tensor  # (batch, C) or (batch, utterances, C); C == 1: regression
    aux_losses: dict[str, Tensor] = field(default_factory=dict)  # already weighted; summed into the total
    head_logits: dict[str, Tensor] = field(default_factory=dict)  # per-branch classifiers (late fusion, MCFN)


def fusion_losses(model: nn.Module, output: FusionOutput, labels: Tensor, task_loss: TaskLoss) -> dict[str, Tensor]:
    """Named loss terms; the total is their sum. A model that needs more than one task term
    (late fusion, MCFN) defines `losses(output, labels, task_loss)` returning every term,
    its aux losses included. Pass the unwrapped model (not a DDP wrapper)."""
    custom = getattr(model, "losses", None)
    if custom is not None:
        return custom(output, labels, task_loss)
    return {"task": task_loss(output.logits, labels), **output.aux_losses}


class RegressionTargets(int):
    """A head's output size that says its outputs are regression targets, one each (valence,
    activation, dominance): passed as a model's `num_classes`, it sizes the head like any int, and
    `is_regression` tells it from that many classes. A plain 1 stays one regression value."""


def is_regression(num_classes: int) -> bool:
    return isinstance(num_classes, RegressionTargets) or num_classes == 1


def resolve_regression_loss(name: str, num_classes: int) -> str:
    """"auto": ccc for dimensional targets (RegressionTargets), l1 for one plain regression value."""
    if name != "auto":
        return name
    return "ccc" if isinstance(num_classes, RegressionTargets) else "l1"


def task_loss_for(num_classes: int, class_weights: Optional[Tensor] = None, regression_loss: str = "auto") -> TaskLoss:
    """Cross-entropy (optionally class-weighted) for classification; for regression `regression_loss`
    per target, averaged over the targets (see resolve_regression_loss); any leading shape, -100 ignored."""

    def classification(logits: Tensor, labels: Tensor) -> Tensor:
        weight = None if class_weights is None else class_weights.to(logits.device, logits.dtype)
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1), weight=weight,
                               ignore_index=IGNORE_LABEL)

    per_target = REGRESSION_LOSS_FUNCTIONS[resolve_regression_loss(regression_loss, num_classes)]

    def regression(logits: Tensor, labels: Tensor) -> Tensor:
        outputs = logits.reshape(-1, logits.size(-1))
        targets = labels.reshape(len(outputs), -1).to(outputs.dtype)  # (n, 1) or (n, D)
        real = targets[:, 0] != IGNORE_LABEL
        return per_target(outputs[real], targets[real])

    return regression if is_regression(num_classes) else classification


def ccc_loss(outputs: Tensor, targets: Tensor) -> Tensor:
    """Mean over the targets (columns) of 1 - CCC over the batch, population statistics."""
    output_mean, target_mean = outputs.mean(0), targets.mean(0)
    covariance = ((outputs - output_mean) * (targets - target_mean)).mean(0)
    denominator = outputs.var(0, correction=0) + targets.var(0, correction=0) + (output_mean - target_mean) ** 2
    return (1 - 2 * covariance / (denominator + CCC_EPSILON)).mean()


REGRESSION_LOSS_FUNCTIONS = {"l1": F.l1_loss, "mse": F.mse_loss, "ccc": ccc_loss}


def lr_factor(schedule: str, epoch: int, max_epochs: int) -> float:
    """Learning-rate multiplier at a 0-based epoch. "constant": 1. "step:F:G": G from epoch
    F * max_epochs on (MFDR: "step:0.5:0.1", x0.1 at half of the epochs)."""
    if schedule == "constant":
        return 1.0
    kind, _, rest = schedule.partition(":")
    try:
        fraction, gamma = (float(part) for part in rest.split(":"))
    except ValueError:
        kind = "invalid"
    if kind != "step":
        raise MerError(f"lr_schedule must be 'constant' or 'step:FRACTION:GAMMA', got {schedule!r}")
    return gamma if epoch >= math.ceil(fraction * max_epochs) else 1.0


def apply_overrides(config: FusionConfig, overrides: dict, option: str = "--set") -> FusionConfig:
    """`replace` with checked names; strings from the command line take the field's type. `option`:
    the command-line option the overrides came from, for the messages."""
    known = {f.name: f for f in fields(config)}
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise MerError(f"{option} {', '.join(unknown)}: no such option of this model; its options: "
                       f"{', '.join(sorted(known))}")
    return replace(config, **{name: _coerce(name, known[name].type, getattr(config, name), value, option)
                              for name, value in overrides.items()})


def _coerce(name: str, annotation, current, value, option: str = "--set"):
    """A command-line string as the field's declared type (`Optional[int]` -> int or None)."""
    try:
        return typed_value(annotation, value)
    except OptionTypeError as wrong:
        example = f", e.g. {option} {name}={current}" if wrong.numeric else ""
        raise MerError(f"{option} {name}={value}: {name} expects {wrong.expected}{example}") from None


def accepted_granularities(config: FusionConfig, role: str) -> tuple[str, ...]:
    """The granularities the model reads for `role`, preferred first; () = any. `<role>_granularity`
    is one ("word"), several in order of preference ("utterance,frame": finer levels mean-pooled by
    the loader) or "any"."""
    value = getattr(config, f"{role}_granularity")
    if value == "any":
        return ()
    accepted = tuple(part.strip() for part in str(value).split(","))
    if not all(part in GRANULARITIES for part in accepted):
        raise MerError(f"{role}_granularity {value!r}: write one or more of {', '.join(GRANULARITIES)} "
                       f"(comma-separated, preferred first) or any; e.g. --set {role}_granularity=any")
    return accepted


def ablation_key(config: FusionConfig, default: FusionConfig) -> str:
    """The paper_results row of `config`: "full", or its ablation switches that differ from `default`
    (the same model's config for the corpus, without ablations), sorted and joined by "+"."""
    ablations = type(config).ablations
    parts = [_ablation_part(name, getattr(config, name)) for name in sorted(ablations)
             if getattr(config, name) != getattr(default, name)]
    return "+".join(parts) or "full"


def _ablation_part(name: str, value) -> str:
    if value is True:
        return name
    return f"{name}={str(value).lower() if isinstance(value, bool) else value}"


def paper_row(config: FusionConfig, default: FusionConfig, protocol: str) -> Optional[dict]:
    """The paper's numbers for this very run (its protocol and ablation), or None where the paper has none."""
    return type(config).paper_results.get(protocol, {}).get(ablation_key(config, default))


POSITIVE_INTS = ("hidden", "batch_size", "max_epochs")
OPTIONAL_POSITIVE_INTS = ("patience", "max_audio_frames", "max_text_len")


def _example(config: FusionConfig, name: str):
    """The field's default, as the value to suggest in an error."""
    default = next(f.default for f in fields(config) if f.name == name)
    return default if default is not None else 10


def _check_number(config: FusionConfig, name: str, ok: Callable[[float], bool], allowed: str) -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
        raise MerError(f"{name} must be {allowed}, got {value!r}; e.g. --set {name}={_example(config, name)}")


@dataclass(frozen=True)
class ModelEntry:
    name: str
    model_class: type  # called as model_class(config, num_classes, audio_dim, text_dim)
    config_class: type


MODELS: Registry[ModelEntry] = Registry("model")


def register_model(name: str, config_class: type):
    """Class decorator: `@register_model("mcsan", MCSANConfig)`."""

    def add(model_class: type) -> type:
        MODELS.register(name)(ModelEntry(name, model_class, config_class))
        return model_class

    return add
