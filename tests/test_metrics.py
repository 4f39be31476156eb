"""Metrics against scikit-learn / scipy and hand-made cases."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from scipy.stats import pearsonr
from sklearn import metrics as skm

from mer.fuse import metrics as M

LABELS = ["neutral", "happy", "angry", "sad"]


def _random_case(seed: int, n: int = 200, k: int = 4):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, k, n)
    y_pred = np.where(rng.random(n) < 0.6, y_true, rng.integers(0, k, n))
    return np.array(LABELS[:k])[y_true], np.array(LABELS[:k])[y_pred]


def _sk_ua(y_true, y_pred):
    return skm.recall_score(y_true, y_pred, labels=np.unique(y_true), average="macro", zero_division=0)


# ----------------------------------------------------------------------------- classification

@pytest.mark.parametrize("seed", range(5))
def test_classification_matches_sklearn(seed):
    y_true, y_pred = _random_case(seed)
    got = M.classification_metrics(y_true, y_pred, LABELS)
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    assert got["ua"] == pytest.approx(skm.balanced_accuracy_score(y_true, y_pred))
    assert got["ua"] == pytest.approx(_sk_ua(y_true, y_pred))
    assert got["weighted_f1"] == pytest.approx(skm.f1_score(y_true, y_pred, average="weighted"))
    assert got["macro_f1"] == pytest.approx(skm.f1_score(y_true, y_pred, average="macro"))
    assert got["confusion"] == skm.confusion_matrix(y_true, y_pred, labels=LABELS).tolist()
    assert M.accuracy(y_true, y_pred) == got["accuracy"]
    assert M.ua(y_true, y_pred) == pytest.approx(got["ua"])
    assert M.weighted_f1(y_true, y_pred) == pytest.approx(got["weighted_f1"])
    assert M.macro_f1(y_true, y_pred) == pytest.approx(got["macro_f1"])


def test_metric_names_are_the_contract():
    y_true, y_pred = _random_case(0)
    got = M.classification_metrics(y_true, y_pred, LABELS)
    assert list(got) == ["accuracy", "ua", "weighted_f1", "macro_f1", "confusion"]
    assert set(M.CLASSIFICATION_METRICS) == set(got) - {"confusion"}
    json.dumps(got)  # plain floats and lists


def test_integer_predictions_index_the_labels():
    names_true, names_pred = _random_case(1)
    index = {name: i for i, name in enumerate(LABELS)}
    ints_true = np.array([index[v] for v in names_true])
    ints_pred = np.array([index[v] for v in names_pred])
    assert M.classification_metrics(ints_true, ints_pred, LABELS) == M.classification_metrics(
        names_true, names_pred, LABELS)
    # mixed: names for the truth, indices for the predictions
    assert M.classification_metrics(names_true, ints_pred, LABELS)["accuracy"] == pytest.approx(
        skm.accuracy_score(names_true, names_pred))


def test_class_absent_from_predictions():
    y_true = np.array(["a", "a", "b", "b", "c", "c"])
    y_pred = np.array(["a", "a", "a", "b", "a", "b"])  # c is never predicted
    got = M.classification_metrics(y_true, y_pred, ["a", "b", "c"])
    assert got["accuracy"] == pytest.approx(3 / 6)
    assert got["ua"] == pytest.approx((1.0 + 0.5 + 0.0) / 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns about the ill-defined precision of c
        assert got["weighted_f1"] == pytest.approx(skm.f1_score(y_true, y_pred, average="weighted"))
        assert got["macro_f1"] == pytest.approx(skm.f1_score(y_true, y_pred, average="macro"))
    # hand-made: F1(a) = 2*2/(2+4), F1(b) = 2*1/(2+2), F1(c) = 0
    assert got["macro_f1"] == pytest.approx((4 / 6 + 2 / 4 + 0.0) / 3)
    assert got["confusion"] == [[2, 0, 0], [1, 1, 0], [1, 1, 0]]


def test_class_absent_from_truth_is_left_out_of_ua():
    y_true = np.array(["a", "a", "b", "b"])
    y_pred = np.array(["a", "c", "b", "b"])  # c predicted but never true
    got = M.classification_metrics(y_true, y_pred, ["a", "b", "c", "d"])
    assert got["ua"] == pytest.approx((0.5 + 1.0) / 2)  # c and d have no true sample
    assert got["ua"] == pytest.approx(_sk_ua(y_true, y_pred))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert got["ua"] == pytest.approx(skm.balanced_accuracy_score(y_true, y_pred))
        # macro F1 over the classes seen in truth or prediction (sklearn's default set): a, b, c
        assert got["macro_f1"] == pytest.approx(skm.f1_score(y_true, y_pred, average="macro"))
    assert got["weighted_f1"] == pytest.approx(skm.f1_score(y_true, y_pred, average="weighted"))


def test_all_one_class():
    y = np.array(["sad"] * 5)
    right = M.classification_metrics(y, y, LABELS)
    assert {k: right[k] for k in M.CLASSIFICATION_METRICS} == {"accuracy": 1.0, "ua": 1.0,
                                                               "weighted_f1": 1.0, "macro_f1": 1.0}
    wrong = M.classification_metrics(y, np.array(["happy"] * 5), LABELS)
    assert wrong["accuracy"] == 0.0 and wrong["ua"] == 0.0 and wrong["weighted_f1"] == 0.0
    assert wrong["macro_f1"] == 0.0  # happy: precision 0; sad: recall 0
    assert wrong["confusion"][3] == [0, 5, 0, 0]


def test_bad_inputs():
    with pytest.raises(ValueError, match="not one of the labels"):
        M.classification_metrics(["a", "x"], ["a", "a"], ["a", "b"])
    with pytest.raises(ValueError, match="has 2 values"):
        M.accuracy([1, 2], [1])
    with pytest.raises(ValueError, match="outside the 2 labels"):
        M.classification_metrics([0, 1], [0, 2], ["a", "b"])
    assert math.isnan(M.accuracy([], []))


# ----------------------------------------------------------------------------- regression

def _mmsa(y_true, y_pred):
    """The MMSA (thuiar/MMSA MetricsTop.__eval_mosei_regression) computation, written out here."""
    t, p = np.asarray(y_true, float), np.asarray(y_pred, float)
    nz = t != 0
    return {
        "acc7": np.mean(np.round(np.clip(p, -3, 3)) == np.round(np.clip(t, -3, 3))),
        "acc2": skm.accuracy_score(t[nz] > 0, p[nz] > 0),
        "f1": skm.f1_score(t[nz] > 0, p[nz] > 0, average="weighted"),
        "mae": np.mean(np.abs(p - t)),
        "corr": np.corrcoef(p, t)[0][1],
        "acc2_has0": skm.accuracy_score(t >= 0, p >= 0),
        "f1_has0": skm.f1_score(t >= 0, p >= 0, average="weighted"),
    }


@pytest.mark.parametrize("seed", range(5))
def test_regression_matches_reference(seed):
    rng = np.random.default_rng(seed)
    t = np.round(rng.uniform(-3, 3, 300) * 3) / 3  # MOSEI labels: means of three integer ratings
    t[:20] = 0.0
    p = t + rng.normal(0, 1.0, 300)  # some predictions fall outside [-3, 3]
    got = M.regression_metrics(t, p)
    assert list(got) == ["acc7", "acc2", "f1", "mae", "corr", "acc2_has0", "f1_has0"]
    for name, value in _mmsa(t, p).items():
        assert got[name] == pytest.approx(value), name
    assert got["corr"] == pytest.approx(pearsonr(t, p)[0])
    assert got["mae"] == pytest.approx(skm.mean_absolute_error(t, p))
    json.dumps(got)


def test_zero_labels_are_dropped_only_by_the_non_zero_variant():
    t = np.array([0.0, 0.0, 1.0, -1.0])
    p = np.array([-0.5, 0.5, 2.0, -2.0])
    assert M.acc2(t, p) == 1.0  # the two zeros are dropped
    assert M.f1(t, p) == 1.0
    assert M.acc2_has0(t, p) == 0.75  # zero counts as >= 0: the -0.5 prediction is wrong
    assert M.f1_has0(t, p) == pytest.approx(skm.f1_score(t >= 0, p >= 0, average="weighted"))
    # a prediction of exactly 0 is negative in the non-zero variant (> 0 is positive), positive with has0
    assert M.acc2([1.0, -1.0], [0.0, 0.0]) == 0.5
    assert M.acc2_has0([1.0, -1.0], [0.0, 0.0]) == 0.5
    assert math.isnan(M.acc2([0.0, 0.0], [1.0, -1.0]))  # nothing left


def test_acc7_clips_and_rounds():
    t = np.array([3.0, -3.0, 2.0, 0.4, 1.0])
    p = np.array([5.7, -4.2, 3.4, -0.4, 1.6])  # clipped to 3, -3, 3; -0.4 rounds to -0 == 0
    assert M.acc7(t, p) == pytest.approx(3 / 5)  # 5.7, -4.2 and -0.4 right; 3.4 (-> 3 vs 2) and 1.6 (-> 2 vs 1) wrong
    assert M.acc7([2.5], [2.4]) == 1.0  # np.round: 2.5 -> 2 (half to even), 2.4 -> 2
    assert M.mae([3.0], [5.0]) == 2.0  # MAE is not clipped


def test_corr_undefined_is_nan():
    assert math.isnan(M.corr([1.0, 2.0, 3.0], [0.5, 0.5, 0.5]))
    assert math.isnan(M.corr([1.0], [2.0]))
    with pytest.raises(ValueError, match="NaN"):
        M.mae([1.0, np.nan], [1.0, 2.0])


def test_compute_metrics_dispatches_on_labels():
    assert "acc7" in M.compute_metrics([1.0, -1.0], [0.5, -0.5], None)
    assert "ua" in M.compute_metrics(["a", "b"], ["a", "a"], ["a", "b"])


# ----------------------------------------------------------------------------- summarise

def test_summarise_sample_std_and_skips_non_numbers():
    folds = [{"accuracy": 0.5, "ua": 0.4, "confusion": [[1, 0], [0, 1]]},
             {"accuracy": 0.7, "ua": 0.6, "confusion": [[2, 0], [0, 2]]},
             {"accuracy": 0.9, "ua": 0.5, "flag": True, "confusion": [[0]]}]
    got = M.summarise(folds)
    assert list(got) == ["accuracy", "ua"]
    assert got["accuracy"]["mean"] == pytest.approx(0.7)
    assert got["accuracy"]["std"] == pytest.approx(np.std([0.5, 0.7, 0.9], ddof=1))
    assert got["accuracy"]["std"] == pytest.approx(0.2)
    assert set(got["ua"]) == {"mean", "std"}


def test_summarise_single_fold_and_nan():
    assert M.summarise([{"acc7": 0.5}]) == {"acc7": {"mean": 0.5, "std": 0.0}}
    got = M.summarise([{"corr": math.nan, "mae": 1.0}, {"corr": 0.5, "mae": 0.5}, {"corr": 0.7, "mae": 0.0}])
    assert got["corr"]["mean"] == pytest.approx(0.6)  # the undefined fold is left out
    assert got["mae"]["std"] == pytest.approx(0.5)
    assert M.summarise([{"corr": math.nan}]) == {"corr": {"mean": None, "std": None}}
    json.dumps(got, allow_nan=False)
    assert M.summarise([]) == {}
