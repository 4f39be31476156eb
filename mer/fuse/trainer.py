"""The one training loop every model uses: read it top to bottom.

Per fold: seed, build the optimiser from the model config, then for each epoch train on
every batch (all loss terms summed, each logged by name), evaluate on dev, keep the best
state by the config's `monitor`, stop after `patience` epochs without improvement; finally
reload the best state and predict dev and test. `monitor="last"` selects nothing: the final
epoch is kept (a convex probe trained to convergence, like scikit-learn's).

`refit_on_dev` (a model config field; the run passes `refit_batches`, train + dev): once dev
has chosen the epoch count, the model restarts from the same initial weights, seed and
optimiser and trains on train + dev for that many epochs, with no selection; the test
predictions and the returned state are that refit model's, the dev metrics and predictions
the selected one's (after the refit dev is training data)."""

from __future__ import annotations

import copy
import math
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from mer.errors import MerError
from mer.fuse.metrics import compute_metrics
from mer.fuse.models.base import (IGNORE_LABEL, FusionConfig, RegressionTargets, fusion_losses, lr_factor,
                                  task_loss_for)

LOWER_IS_BETTER = {"loss", "mae"}  # and each dimension's mae_<dimension>; every other metric: higher is better


@dataclass
class TrainerConfig:
    """Run-level settings, not the model's: where and how to train."""

    device: str = "cpu"
    seed: int = 0
    amp: bool = True  # mixed precision, on CUDA only
    class_weights: bool = False  # inverse-frequency weights in the cross-entropy
    deterministic: bool = True  # deterministic algorithms (always on CPU)
    grad_clip: Optional[float] = None


@dataclass
class Predictions:
    ids: list[str]
    targets: np.ndarray  # class indices, floats for regression, or (n, D) for D dimensional targets
    outputs: np.ndarray  # (n, C) probabilities, (n,) regression values, or (n, D) dimensional values

    @property
    def predicted(self) -> np.ndarray:
        dimensional = self.targets.ndim == 2
        return self.outputs if self.outputs.ndim == 1 or dimensional else self.outputs.argmax(axis=1)

    def rescaled(self, mean: np.ndarray, std: np.ndarray) -> "Predictions":
        """Dimensional targets and outputs back from z-scores to the corpus's scale."""
        return Predictions(self.ids, self.targets * std + mean, self.outputs * std + mean)


@dataclass
class FoldResult:
    fold: str
    best_epoch: int
    history: list[dict]
    dev: dict
    test: dict
    dev_predictions: Predictions
    test_predictions: Predictions
    state_dict: dict = field(repr=False, default_factory=dict)
    norm_stats: object = None  # the fold's mer.fuse.data.NormStats, saved with the run
    notes: list[str] = field(default_factory=list)  # lines for the client's log from where the fold ran


def seed_everything(seed: int, deterministic: bool = True) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


def train_fold(model: nn.Module, config: FusionConfig, trainer: TrainerConfig, fold: str,
               train_batches: Callable[[int], Iterable[dict]], dev_batches: Callable[[], Iterable[dict]],
               test_batches: Callable[[], Iterable[dict]], labels: Optional[list[str]],
               train_targets: Optional[np.ndarray] = None, log: Callable[[str], None] = print,
               refit_batches: Optional[Callable[[int], Iterable[dict]]] = None,
               train_size: Optional[int] = None, refit_size: Optional[int] = None,
               dimensions: Sequence[str] = (), target_scale: Optional[tuple] = None) -> FoldResult:
    """`train_batches(epoch)` yields the training batches of one epoch (shuffled by epoch);
    `dev_batches()` and `test_batches()` yield evaluation batches; `refit_batches(epoch)`, those
    of train + dev (used when the config's `refit_on_dev` is on). `train_size`, `refit_size`: the
    utterances trained on, for a config whose weight decay depends on it (`weight_decay_for(n)`:
    the linear probe's 1 / (C n)). `dimensions`: the targets of dimensional labels (labels None);
    `target_scale` (mean, std): their z-normalisation, undone before metrics and predictions."""
    seed_everything(trainer.seed, trainer.deterministic)
    device = torch.device(trainer.device)
    model.to(device)
    initial_state = _state_copy(model)
    num_classes = len(labels) if labels else RegressionTargets(len(dimensions)) if dimensions else 1
    weights = _class_weights(train_targets, num_classes) if trainer.class_weights else None
    task_loss = task_loss_for(num_classes, weights, config.regression_loss)

    def evaluated(batches: Iterable[dict]) -> tuple[float, Predictions]:
        loss, predictions = evaluate(model, batches, task_loss, device, use_amp)
        return loss, predictions if target_scale is None else predictions.rescaled(*target_scale)

    def metrics(predictions: Predictions) -> dict:
        return compute_metrics(predictions.targets, predictions.predicted, labels, dimensions)
    optimiser = torch.optim.Adam(_parameter_groups(model, weight_decay_of(config, train_size)), lr=config.lr)
    use_amp = trainer.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    best_score, best_epoch, best_state, epochs_without_gain = math.inf, -1, None, 0
    history = []
    for epoch in range(config.max_epochs):
        started = time.time()
        train_terms = _train_epoch(model, config, trainer, optimiser, scaler, train_batches(epoch), epoch, task_loss,
                                   device, use_amp)
        dev_loss, dev_predictions = evaluated(dev_batches())
        if math.isfinite(dev_loss):
            dev_metrics = {"loss": dev_loss, **_numbers(metrics(dev_predictions))}
            score = -epoch if config.monitor == "last" else _score(dev_metrics, config.monitor)
        else:  # diverged: the outputs are NaN too, and a NaN epoch must never become the best
            dev_metrics, score = {"loss": dev_loss}, math.nan
        improved = math.isfinite(score) and score < best_score
        if improved:
            best_score, best_epoch, epochs_without_gain = score, epoch, 0
            best_state = _state_copy(model)
        else:
            epochs_without_gain += 1
        history.append({"epoch": epoch, "lr": optimiser.param_groups[0]["lr"], "train": train_terms,
                        "dev": dev_metrics, "seconds": time.time() - started})
        log(_epoch_line(fold, epoch, config.max_epochs, train_terms, dev_metrics, config.monitor, improved,
                        time.time() - started))
        if config.patience is not None and epochs_without_gain >= config.patience:
            log(f"[{fold}] early stop: no better dev {config.monitor} for {config.patience} epochs")
            break
    if best_state is None:
        what = config.monitor if any(math.isfinite(h["dev"]["loss"]) for h in history) else "loss"
        raise MerError(f"fold {fold}: the dev {what} was NaN in every epoch ({len(history)} epochs), so there is no "
                       f"best checkpoint; training diverged: lower the learning rate, e.g. --set lr={config.lr / 10:g}")
    model.load_state_dict(best_state)
    _, dev_predictions = evaluated(dev_batches())
    if getattr(config, "refit_on_dev", False) and refit_batches is not None:
        best_state = _refit(model, config, trainer, initial_state, best_epoch + 1, refit_batches, task_loss,
                            weight_decay_of(config, refit_size), device, use_amp, fold, log)
    _, test_predictions = evaluated(test_batches())
    return FoldResult(fold, best_epoch, history, metrics(dev_predictions), metrics(test_predictions),
                      dev_predictions, test_predictions, best_state)


def weight_decay_of(config: FusionConfig, train_size: Optional[int]) -> float:
    """The config's weight decay, or, for a config that derives it from the training size, that."""
    derive = getattr(config, "weight_decay_for", None)
    if derive is None:
        return config.weight_decay
    if not train_size:
        raise MerError(f"{type(config).__name__} derives its weight decay from the training size; none was given")
    return derive(train_size)


def _train_epoch(model, config, trainer, optimiser, scaler, batches, epoch, task_loss, device, use_amp) -> dict:
    """One pass over `batches` (the learning rate set by the schedule first); the mean of each loss term."""
    for group in optimiser.param_groups:
        group["lr"] = config.lr * lr_factor(config.lr_schedule, epoch, config.max_epochs)
    model.train()
    train_terms: dict[str, float] = {}
    count = 0
    for batch in batches:
        batch = _to_device(batch, device)
        with torch.autocast(device.type, enabled=use_amp):
            output = model(batch)
            terms = fusion_losses(model, output, batch["label"], task_loss)
            total = sum(terms.values())
        optimiser.zero_grad(set_to_none=True)
        scaler.scale(total).backward()
        if trainer.grad_clip:
            scaler.unscale_(optimiser)
            nn.utils.clip_grad_norm_(model.parameters(), trainer.grad_clip)
        scaler.step(optimiser)
        scaler.update()
        for name, value in terms.items():
            train_terms[name] = train_terms.get(name, 0.0) + float(value.detach())
        train_terms["total"] = train_terms.get("total", 0.0) + float(total.detach())
        count += 1
    return {name: value / max(1, count) for name, value in train_terms.items()}


def _refit(model, config, trainer, initial_state, epochs, refit_batches, task_loss, decay, device, use_amp, fold,
           log) -> dict:
    """The same model from its initial weights, seed and a new optimiser, trained `epochs` epochs on
    train + dev with no selection; returns its final state (left loaded in `model`)."""
    seed_everything(trainer.seed, trainer.deterministic)
    model.load_state_dict(initial_state)
    optimiser = torch.optim.Adam(_parameter_groups(model, decay), lr=config.lr)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    for epoch in range(epochs):
        terms = _train_epoch(model, config, trainer, optimiser, scaler, refit_batches(epoch), epoch, task_loss, device,
                             use_amp)
    log(f"[{fold}] refit on train + dev: {epochs} epochs (the dev-selected count), train loss {terms['total']:.4f}")
    return _state_copy(model)


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[dict], task_loss, device: torch.device,
             use_amp: bool = False) -> tuple[float, Predictions]:
    """Mean task loss over utterances and the per-utterance predictions (dialogues flattened). Labels
    with an axis of their own (batch[, utterances], D) are dimensional targets: outputs kept as (n, D)."""
    model.eval()
    ids, targets, outputs, loss_sum, count = [], [], [], 0.0, 0
    for batch in batches:
        batch = _to_device(batch, device)
        with torch.autocast(device.type, enabled=use_amp):
            logits = model(batch).logits.float()
        labels = batch["label"]
        dimensional = labels.dim() == logits.dim()
        flat_labels = labels.reshape(-1, labels.size(-1)) if dimensional else labels.reshape(-1, 1)
        real = flat_labels[:, 0] != IGNORE_LABEL
        n = int(real.sum())
        loss_sum += float(task_loss(logits, labels)) * n
        count += n
        flat_logits = logits.reshape(-1, logits.size(-1))[real]
        if dimensional:
            outputs.append(flat_logits)
        else:
            outputs.append(flat_logits.squeeze(-1) if logits.size(-1) == 1 else flat_logits.softmax(-1))
        targets.append(flat_labels[real] if dimensional else flat_labels[real, 0])
        ids.extend(_flat_ids(batch["ids"]))
    return loss_sum / max(1, count), Predictions(ids, torch.cat(targets).cpu().numpy(), torch.cat(outputs).cpu().numpy())


def _flat_ids(ids) -> list[str]:
    """Dialogue batches carry lists of ids per dialogue; padding has no id."""
    if ids and isinstance(ids[0], (list, tuple)):
        return [utt_id for dialogue in ids for utt_id in dialogue]
    return list(ids)


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in batch.items()}


def _state_copy(model: nn.Module) -> dict:
    """The model's weights, copied to the CPU (a best or initial state kept while training goes on)."""
    return copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})


def _parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on every parameter except those the model names in `no_weight_decay()`
    (timm's convention; the linear probe's bias, unpenalised like scikit-learn's intercept)."""
    exempt = set(getattr(model, "no_weight_decay", lambda: ())())
    named = list(model.named_parameters())
    return [{"params": [p for n, p in named if n not in exempt], "weight_decay": weight_decay},
            {"params": [p for n, p in named if n in exempt], "weight_decay": 0.0}]


def _class_weights(targets: Optional[np.ndarray], num_classes: int) -> Optional[Tensor]:
    if targets is None or num_classes < 2:
        return None
    counts = np.bincount(np.asarray(targets, dtype=int), minlength=num_classes).astype(float)
    weights = counts.sum() / (num_classes * np.maximum(counts, 1.0))
    return torch.tensor(weights, dtype=torch.float32)


def _score(metrics: dict, monitor: str) -> float:
    if monitor not in metrics:
        hint = " ('headline' is resolved per protocol by mer.fuse.run.run_fuse)" if monitor == "headline" else ""
        raise MerError(f"monitor {monitor!r} is not among the dev metrics {sorted(metrics)}{hint}; "
                       "e.g. --set monitor=loss")
    value = metrics[monitor]
    return value if lower_is_better(monitor) else -value


def lower_is_better(metric: str) -> bool:
    return metric in LOWER_IS_BETTER or metric.startswith("mae_")


def _numbers(metrics: dict) -> dict:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _epoch_line(fold, epoch, max_epochs, train_terms, dev_metrics, monitor, improved, seconds) -> str:
    terms = " ".join(f"{name}={value:.4f}" for name, value in train_terms.items())
    shown = {k: v for k, v in dev_metrics.items() if k in ("loss", monitor, "accuracy", "weighted_f1", "mae", "ccc")}
    dev = " ".join(f"{name}={value:.4f}" for name, value in shown.items())
    return f"[{fold}] epoch {epoch + 1}/{max_epochs} train {terms} | dev {dev}{' *' if improved else ''} ({seconds:.1f} s)"
