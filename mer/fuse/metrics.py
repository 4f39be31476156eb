"""Evaluation metrics, with the names `metrics.json` uses (see docs/protocols.md).

Classification (IEMOCAP, MELD, demo, manifest corpora with class labels):
    accuracy     = WA, the fraction of correct predictions
    ua           = UA, the mean per-class recall over the classes PRESENT IN y_true
                   (sklearn's balanced_accuracy_score)
    weighted_f1  = per-class F1 weighted by the class's support in y_true (the MELD metric)
    macro_f1     = unweighted mean of per-class F1 over the classes in y_true or y_pred
                   (sklearn's default label set; a predicted class with no true sample adds F1 0)
    confusion    = counts, rows = true class, columns = predicted class, in `labels` order

Regression (CMU-MOSEI sentiment in [-3, 3]), as the MMSA toolkit (thuiar/MMSA,
`MetricsTop.__eval_mosei_regression`) and MulT compute them:
    acc7         = accuracy after clipping BOTH truth and prediction to [-3, 3] and rounding
                   (np.round: halves go to the even integer)
    acc2, f1     = the "non-zero" variant: utterances whose TRUE label is exactly 0 are dropped;
                   truth > 0 is positive, < 0 negative; a prediction is positive when > 0
    acc2_has0, f1_has0 = the "has-zero" variant: every utterance, >= 0 vs < 0 for both
    mae          = mean absolute error (unclipped)
    corr         = Pearson correlation of prediction and truth (NaN when either is constant)
    f1 and f1_has0 are WEIGHTED F1 over the two binary classes (sklearn average="weighted"),
    which is what MMSA reports as "F1" and what papers quoting MMSA numbers mean.

Dimensional regression (valence / activation / dominance: labels=dimensional), per dimension D
and their mean over the dimensions:
    ccc_D        = Lin's concordance correlation coefficient, 2 cov / (var_t + var_p + (mean_t - mean_p)^2)
                   with POPULATION statistics (ddof=0), as the AVEC / MSP-Podcast challenges compute it
    corr_D, mae_D = Pearson r and mean absolute error, as above
    ccc, corr, mae = their means over the dimensions; `ccc` is the headline (higher is better)

`summarise` turns per-fold metric dicts into {"<metric>": {"mean", "std"}} with the SAMPLE
standard deviation (ddof=1, the spread of the fold scores as an estimate; 0.0 for one fold).

The functions take numpy arrays (or lists); class labels may be names or integer indices.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np

CLASSIFICATION_METRICS = ("accuracy", "ua", "weighted_f1", "macro_f1")
REGRESSION_METRICS = ("acc7", "acc2", "f1", "mae", "corr", "acc2_has0", "f1_has0")


# ----------------------------------------------------------------------------- classification

def _pair(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.ndim != 1 or y_pred.ndim != 1:
        raise ValueError(f"metrics: y_true and y_pred must be 1-D, got shapes {y_true.shape} and {y_pred.shape}")
    if len(y_true) != len(y_pred):
        raise ValueError(f"metrics: y_true has {len(y_true)} values but y_pred has {len(y_pred)}")
    return y_true, y_pred


def _is_index_array(y: np.ndarray) -> bool:
    return y.dtype.kind in "iu" or (y.dtype.kind == "b")


def _encode(y_true, y_pred, labels: Optional[Sequence]) -> tuple[np.ndarray, np.ndarray, list]:
    """Both arrays as indices into the class list (`labels`, or the sorted union of the values).
    With `labels` given, integer arrays are read as indices into it unless the labels are
    themselves integers."""
    y_true, y_pred = _pair(y_true, y_pred)
    if labels is None:
        classes = list(np.unique(np.concatenate([y_true, y_pred]))) if len(y_true) else []
        lookup = {value: i for i, value in enumerate(classes)}
        return (np.array([lookup[v] for v in y_true], dtype=np.int64),
                np.array([lookup[v] for v in y_pred], dtype=np.int64), classes)
    classes = list(labels)
    if len(set(classes)) != len(classes):
        raise ValueError(f"metrics: labels {classes} repeat a class")
    labels_are_ints = all(isinstance(c, (int, np.integer)) and not isinstance(c, bool) for c in classes)
    encoded = []
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        if len(y) and _is_index_array(y) and not labels_are_ints:
            idx = y.astype(np.int64)
            bad = idx[(idx < 0) | (idx >= len(classes))]
            if len(bad):
                raise ValueError(f"metrics: {name} holds index {int(bad[0])}, outside the {len(classes)} labels")
            encoded.append(idx)
            continue
        lookup = {value: i for i, value in enumerate(classes)}
        try:
            values = [v.item() if isinstance(v, np.generic) else v for v in y]
            encoded.append(np.array([lookup[v] for v in values], dtype=np.int64))
        except KeyError as exc:
            raise ValueError(f"metrics: {name} holds {exc.args[0]!r}, "
                             f"which is not one of the labels {classes}") from None
    return encoded[0], encoded[1], classes


def confusion_matrix(y_true, y_pred, labels: Optional[Sequence] = None) -> np.ndarray:
    """Counts C[i, j] = utterances of true class i predicted as class j, in `labels` order."""
    t, p, classes = _encode(y_true, y_pred, labels)
    k = len(classes)
    return np.bincount(t * k + p, minlength=k * k).reshape(k, k).astype(np.int64)


def _per_class(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-class (recall, f1, support, predicted count); 0 where a ratio is undefined."""
    tp = np.diag(cm).astype(float)
    support = cm.sum(axis=1).astype(float)
    predicted = cm.sum(axis=0).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.where(support > 0, tp / support, 0.0)
        # F1 = 2 tp / (2 tp + fp + fn) = 2 tp / (support + predicted); 0 when both are 0
        f1 = np.where(support + predicted > 0, 2 * tp / (support + predicted), 0.0)
    return recall, f1, support, predicted


def accuracy(y_true, y_pred) -> float:
    """WA: the fraction of predictions equal to the truth."""
    y_true, y_pred = _pair(y_true, y_pred)
    return float(np.mean(y_true == y_pred)) if len(y_true) else math.nan


def ua(y_true, y_pred, labels: Optional[Sequence] = None) -> float:
    """UA: the mean recall over the classes present in y_true (a class never seen in the
    truth is left out, not counted as 0; sklearn's balanced_accuracy_score)."""
    recall, _, support, _ = _per_class(confusion_matrix(y_true, y_pred, labels))
    present = support > 0
    return float(recall[present].mean()) if present.any() else math.nan


def weighted_f1(y_true, y_pred, labels: Optional[Sequence] = None) -> float:
    """Per-class F1 weighted by true support (sklearn f1_score(average="weighted"))."""
    _, f1, support, _ = _per_class(confusion_matrix(y_true, y_pred, labels))
    total = support.sum()
    return float((f1 * support).sum() / total) if total else math.nan


def macro_f1(y_true, y_pred, labels: Optional[Sequence] = None) -> float:
    """Unweighted mean F1 over the classes that occur in y_true or y_pred (sklearn
    f1_score(average="macro") with its default label set; classes absent from both are skipped)."""
    _, f1, support, predicted = _per_class(confusion_matrix(y_true, y_pred, labels))
    seen = (support + predicted) > 0
    return float(f1[seen].mean()) if seen.any() else math.nan


def classification_metrics(y_true, y_pred, labels: Optional[Sequence] = None) -> dict:
    """{"accuracy", "ua", "weighted_f1", "macro_f1", "confusion"}; `confusion` is a nested
    list in `labels` order (rows true, columns predicted)."""
    cm = confusion_matrix(y_true, y_pred, labels)
    recall, f1, support, predicted = _per_class(cm)
    total = support.sum()
    present, seen = support > 0, (support + predicted) > 0
    return {
        "accuracy": float(np.trace(cm) / total) if total else math.nan,
        "ua": float(recall[present].mean()) if present.any() else math.nan,
        "weighted_f1": float((f1 * support).sum() / total) if total else math.nan,
        "macro_f1": float(f1[seen].mean()) if seen.any() else math.nan,
        "confusion": cm.tolist(),
    }


# ----------------------------------------------------------------------------- regression

def _floats(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    y_true, y_pred = _pair(np.asarray(y_true, dtype=float).reshape(-1), np.asarray(y_pred, dtype=float).reshape(-1))
    if not (np.isfinite(y_true).all() and np.isfinite(y_pred).all()):
        raise ValueError("metrics: y_true or y_pred holds NaN or Inf")
    return y_true, y_pred


def acc7(y_true, y_pred) -> float:
    """7-class accuracy: clip both to [-3, 3], round to the nearest integer (np.round), compare."""
    t, p = _floats(y_true, y_pred)
    if not len(t):
        return math.nan
    return float(np.mean(np.round(np.clip(p, -3.0, 3.0)) == np.round(np.clip(t, -3.0, 3.0))))


def _binary_f1_weighted(t: np.ndarray, p: np.ndarray) -> float:
    return weighted_f1(t.astype(np.int64), p.astype(np.int64), labels=[0, 1])


def acc2(y_true, y_pred) -> float:
    """Non-zero binary accuracy: drop true zeros; truth > 0 vs < 0, prediction > 0 vs <= 0."""
    t, p = _floats(y_true, y_pred)
    keep = t != 0
    return float(np.mean((t[keep] > 0) == (p[keep] > 0))) if keep.any() else math.nan


def f1(y_true, y_pred) -> float:
    """Non-zero variant, WEIGHTED binary F1 (as MMSA): true zeros dropped, > 0 is positive."""
    t, p = _floats(y_true, y_pred)
    keep = t != 0
    return _binary_f1_weighted(t[keep] > 0, p[keep] > 0) if keep.any() else math.nan


def acc2_has0(y_true, y_pred) -> float:
    """Has-zero binary accuracy: every utterance, >= 0 vs < 0 for truth and prediction."""
    t, p = _floats(y_true, y_pred)
    return float(np.mean((t >= 0) == (p >= 0))) if len(t) else math.nan


def f1_has0(y_true, y_pred) -> float:
    """Has-zero variant, weighted binary F1: >= 0 vs < 0."""
    t, p = _floats(y_true, y_pred)
    return _binary_f1_weighted(t >= 0, p >= 0) if len(t) else math.nan


def mae(y_true, y_pred) -> float:
    t, p = _floats(y_true, y_pred)
    return float(np.mean(np.abs(p - t))) if len(t) else math.nan


def corr(y_true, y_pred) -> float:
    """Pearson r; NaN when fewer than 2 values or either side is constant."""
    t, p = _floats(y_true, y_pred)
    if len(t) < 2:
        return math.nan
    dt, dp = t - t.mean(), p - p.mean()
    denom = math.sqrt(float(dt @ dt) * float(dp @ dp))
    if denom == 0.0:
        return math.nan
    return float(np.clip((dt @ dp) / denom, -1.0, 1.0))


def ccc(y_true, y_pred) -> float:
    """Concordance correlation coefficient with population statistics; NaN for fewer than 2 values or
    when both sides are the same constant (0 / 0)."""
    t, p = _floats(y_true, y_pred)
    if len(t) < 2:
        return math.nan
    denominator = t.var() + p.var() + (t.mean() - p.mean()) ** 2
    if denominator == 0.0:
        return math.nan
    return float(2 * np.mean((t - t.mean()) * (p - p.mean())) / denominator)


def dimensional_metrics(y_true, y_pred, dimensions: Sequence[str]) -> dict:
    """{"ccc", "corr", "mae"} (means over the dimensions), then {"ccc_D", "corr_D", "mae_D"} per dimension D;
    y_true and y_pred are (n, len(dimensions))."""
    t, p = (np.asarray(y, dtype=float).reshape(-1, len(dimensions)) for y in (y_true, y_pred))
    functions = {"ccc": ccc, "corr": corr, "mae": mae}
    per = {f"{metric}_{name}": function(t[:, k], p[:, k]) for k, name in enumerate(dimensions)
           for metric, function in functions.items()}
    means = {metric: float(np.mean([per[f"{metric}_{name}"] for name in dimensions])) for metric in functions}
    return {**means, **per}


def regression_metrics(y_true, y_pred) -> dict:
    """{"acc7", "acc2", "f1", "mae", "corr", "acc2_has0", "f1_has0"}; see the module docstring."""
    return {"acc7": acc7(y_true, y_pred), "acc2": acc2(y_true, y_pred), "f1": f1(y_true, y_pred),
            "mae": mae(y_true, y_pred), "corr": corr(y_true, y_pred),
            "acc2_has0": acc2_has0(y_true, y_pred), "f1_has0": f1_has0(y_true, y_pred)}


def compute_metrics(y_true, y_pred, labels: Optional[Sequence] = None, dimensions: Sequence[str] = ()) -> dict:
    """classification_metrics when `labels` is a class list, dimensional_metrics when `dimensions` are
    given (the protocol's, for dimensional labels), else regression_metrics (labels None: regression)."""
    if dimensions:
        return dimensional_metrics(y_true, y_pred, dimensions)
    if labels is None:
        return regression_metrics(y_true, y_pred)
    return classification_metrics(y_true, y_pred, labels)


# ----------------------------------------------------------------------------- across folds

def _number(value) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    return float(value)


def summarise(fold_metrics: Iterable[Mapping]) -> dict:
    """{"<metric>": {"mean", "std"}} over folds, for every metric that is a number in at least
    one fold (the confusion and other non-numbers are skipped). std is the SAMPLE standard
    deviation (ddof=1), 0.0 with one fold. NaN values (an undefined metric in one fold, e.g. corr
    of a constant prediction) are left out of that metric's mean; a metric that is NaN in every
    fold gets mean and std None, so metrics.json stays valid JSON. Metric order: first seen."""
    values: dict[str, list[float]] = {}
    for metrics in fold_metrics:
        for name, value in metrics.items():
            number = _number(value)
            if number is not None:
                values.setdefault(name, []).append(number)
    summary = {}
    for name, numbers in values.items():
        finite = np.array([v for v in numbers if math.isfinite(v)], dtype=float)
        if not len(finite):
            summary[name] = {"mean": None, "std": None}
        else:
            std = float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0
            summary[name] = {"mean": float(np.mean(finite)), "std": std}
    return summary
