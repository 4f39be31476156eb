"""Dimensional emotion (valence / activation / dominance as regression targets): CCC against a hand
computation, the CCC loss, the labels=dimensional protocol option of the demo, IEMOCAP and MSP-Podcast
protocols, and training end to end through the CLI on the demo corpus and a fixture IEMOCAP tree."""

import csv
import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mer.cli import cli
from mer.data.corpora import prepare
from mer.data.protocols import headline_metric, make_folds
from mer.errors import MerError
from mer.fuse.metrics import ccc, compute_metrics
from mer.fuse.models import RegressionTargets, task_loss_for
from mer.fuse.trainer import _score
from tests.fixtures.corpora import make_iemocap
from tests.fixtures.named.trees import make_msp_podcast

VAD = ["valence", "activation", "dominance"]
TINY = ["--set", "max_epochs=3", "--set", "hidden=8", "--set", "ensemble=2", "--device", "cpu"]


# ----------------------------------------------------------------------------- metric and loss

def test_ccc_matches_the_formula_computed_by_hand():
    # truth 1 2 3 4: mean 2.5, population variance (2.25 + 0.25 + 0.25 + 2.25) / 4 = 1.25
    # prediction 2 2 3 5: mean 3, deviations -1 -1 0 2, variance 6 / 4 = 1.5
    # covariance (1.5 + 0.5 + 0 + 3) / 4 = 1.25; CCC = 2 * 1.25 / (1.25 + 1.5 + 0.5 ** 2) = 2.5 / 3
    assert ccc([1, 2, 3, 4], [2, 2, 3, 5]) == pytest.approx(2.5 / 3)
    # a prediction shifted by 1: Pearson r is 1, CCC = 2 * 1.25 / (1.25 + 1.25 + 1) = 2.5 / 3.5
    assert ccc([1, 2, 3, 4], [2, 3, 4, 5]) == pytest.approx(2.5 / 3.5)
    assert ccc([1, 2, 3, 4], [1, 2, 3, 4]) == pytest.approx(1.0)
    assert math.isnan(ccc([2, 2], [2, 2]))


def test_dimensional_metrics_per_dimension_and_their_mean():
    truth = np.array([[1, 1], [2, 2], [3, 3], [4, 4]], dtype=float)
    predicted = np.array([[2, 2], [2, 3], [3, 4], [5, 5]], dtype=float)
    metrics = compute_metrics(truth, predicted, None, ("valence", "activation"))
    assert metrics["ccc_valence"] == pytest.approx(2.5 / 3)
    assert metrics["ccc_activation"] == pytest.approx(2.5 / 3.5)
    assert metrics["ccc"] == pytest.approx((2.5 / 3 + 2.5 / 3.5) / 2)
    # r of the first: 1.25 / sqrt(1.25 * 1.5); MAE (1 + 0 + 0 + 1) / 4 and 1
    assert metrics["corr_valence"] == pytest.approx(1.25 / math.sqrt(1.25 * 1.5))
    assert metrics["corr_activation"] == pytest.approx(1.0)
    assert (metrics["mae_valence"], metrics["mae_activation"], metrics["mae"]) == pytest.approx((0.5, 1.0, 0.75))


def test_ccc_loss_is_one_minus_ccc_per_target_and_mosei_keeps_l1():
    generator = torch.Generator().manual_seed(0)
    outputs, targets = torch.randn(50, 3, generator=generator), torch.randn(50, 3, generator=generator)
    expected = np.mean([1 - ccc(targets[:, k], outputs[:, k]) for k in range(3)])
    assert float(task_loss_for(RegressionTargets(3))(outputs, targets)) == pytest.approx(expected, abs=1e-5)
    mse = task_loss_for(RegressionTargets(3), regression_loss="mse")(outputs, targets)
    assert float(mse) == pytest.approx(float(((outputs - targets) ** 2).mean()), abs=1e-6)
    single = task_loss_for(1)(outputs[:, 0:1], targets[:, 0])  # one plain value (CMU-MOSEI): L1, as before
    assert float(single) == pytest.approx(float((outputs[:, 0] - targets[:, 0]).abs().mean()), abs=1e-6)


def test_model_selection_maximises_ccc_and_minimises_mae():
    assert headline_metric("demo", regression=True, dimensional=True) == "ccc"
    assert headline_metric("mosei", regression=True) == "mae"
    better, worse = {"ccc": 0.6, "mae_valence": 0.4}, {"ccc": 0.5, "mae_valence": 0.5}
    for monitor in ("ccc", "mae_valence"):
        assert _score(better, monitor) < _score(worse, monitor)


# ----------------------------------------------------------------------------- protocols

def test_demo_dimensional_labels_follow_the_generating_parameters():
    utterances = prepare("demo", None, False, size=40).utterances
    fold_set = make_folds("demo", utterances, labels="dimensional")
    assert fold_set.labels is None and fold_set.dimensions == tuple(VAD) and fold_set.task == "regression"
    by_emotion = {}
    for utt in utterances:
        by_emotion.setdefault(utt.label, []).append(fold_set.targets[utt.id])
    mean = {emotion: np.mean(values, axis=0) for emotion, values in by_emotion.items()}
    assert mean["happy"][0] > mean["neutral"][0] > mean["sad"][0]  # valence
    assert min(mean["happy"][1], mean["angry"][1]) > max(mean["neutral"][1], mean["sad"][1]) + 1  # activation
    assert len({values[1] for values in by_emotion["happy"]}) > 1  # activation varies per utterance
    arousal_only = make_folds("demo", utterances, labels="dimensional", dimensions="arousal")
    assert arousal_only.dimensions == ("activation",) and len(next(iter(arousal_only.targets.values()))) == 1
    with pytest.raises(MerError, match="dimensions='pleasure'"):
        make_folds("demo", utterances, labels="dimensional", dimensions="pleasure")


def test_iemocap_dimensional_labels_keep_every_rated_utterance(tmp_path):
    utterances = prepare("iemocap", make_iemocap(tmp_path), False, labels="all").utterances
    fold_set = make_folds("iemocap-loso", utterances, labels="dimensional")
    assert fold_set.dimensions == tuple(VAD) and fold_set.labels is None
    assert len(fold_set.targets) == len(utterances)  # any category, xxx and oth included
    utt = utterances[0]
    assert fold_set.targets[utt.id] == tuple(utt.extra[d] for d in VAD)
    assert "dimensional" in fold_set.description and "regression on valence" in fold_set.summary()
    assert make_folds("iemocap-10fold", utterances, labels="dimensional").dimensions == tuple(VAD)
    assert make_folds("iemocap-loso", utterances).labels == ("neutral", "happy", "angry", "sad")


def test_msp_podcast_dimensional_labels_exclude_unrated_turns(tmp_path):
    utterances = prepare("msp-podcast", make_msp_podcast(tmp_path), False, labels="all").utterances
    fold_set = make_folds("msp-podcast", utterances, labels="dimensional")
    assert fold_set.dimensions == tuple(VAD)
    assert fold_set.excluded.get("no activation rating") == 1  # MSP-PODCAST_0013 has no EmoAct
    rated = [u for u in utterances if u.id in fold_set.targets]
    assert all(fold_set.targets[u.id] == tuple(u.extra[d] for d in VAD) for u in rated)


# ----------------------------------------------------------------------------- end to end

def mer(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def check_dimensional_run(run, folds: int):
    metrics = json.loads((run / "metrics.json").read_text())
    summary = metrics["summary"]["test"]
    assert len(metrics["folds"]) == folds
    assert {"ccc", "corr", "mae", *(f"{m}_{d}" for m in ("ccc", "corr", "mae") for d in VAD)} <= set(summary)
    assert all(v["mean"] is None or math.isfinite(v["mean"]) for v in summary.values())
    assert not (run / "confusion.png").exists() and (run / "curves.png").is_file()
    rows = list(csv.DictReader(open(run / "predictions.csv")))
    assert set(rows[0]) == {"fold", "split", "id", *(f"target_{d}" for d in VAD), *(f"prediction_{d}" for d in VAD)}
    config = json.loads((run / "config.json").read_text())
    assert config["dimensions"] == VAD and config["model_config"]["monitor"] in ("ccc", "last")
    return metrics, rows


@pytest.fixture(scope="module")
def demo_cache(tmp_path_factory, demo_root):
    cache = tmp_path_factory.mktemp("dimensional-cache")
    mer("extract", "--dataset", "demo", "--set", "corpus.size=40", "--root", demo_root, "--features",
        "mfcc40,minilm-l6", "--cache", cache, "--no-progress")
    return cache


@pytest.mark.parametrize("model", ["concat", "late"])
def test_demo_dimensional_regression_trains_end_to_end(demo_cache, tmp_path, model):
    run = tmp_path / "run"
    fused = mer("fuse", "--model", model, "--dataset", "demo-n40-s0", "--protocol", "demo", "--cache", demo_cache,
                "--out", run, "--protocol-option", "labels=dimensional", *TINY)
    assert "headline ccc" in fused.stdout  # the results header names the metric the run selected on
    _, rows = check_dimensional_run(run, folds=1)
    # targets are written in the corpus's scale (1-5), not as the z-scores the model trains on
    assert all(1.0 <= float(row["target_activation"]) <= 5.0 for row in rows)
    if model == "concat":  # predict reproduces a test row, one value per dimension, in the same scale
        utt = next(json.loads(line) for line in open(demo_cache / "demo-n40-s0" / "utterances.jsonl")
                   if json.loads(line)["id"] == rows[-1]["id"])
        predicted = json.loads(mer("predict", "--run", run, "--audio", utt["audio_path"], "--text", utt["text"],
                                   "--json").stdout)
        assert list(predicted) == VAD
        np.testing.assert_allclose([predicted[d] for d in VAD], [float(rows[-1][f"prediction_{d}"]) for d in VAD],
                                   atol=0.05)


def test_demo_dimensional_regression_with_the_mse_loss_selects_on_ccc(demo_cache, tmp_path):
    run = tmp_path / "run"
    mer("fuse", "--model", "mcsan", "--dataset", "demo-n40-s0", "--protocol", "demo", "--cache", demo_cache, "--out", run,
        "--protocol-option", "labels=dimensional", "--protocol-option", "dimensions=valence,arousal",
        "--set", "regression_loss=mse", "--set", "max_epochs=2", "--set", "hidden=8", "--device", "cpu")
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"ccc_valence", "ccc_activation"} <= set(metrics["summary"]["test"])
    assert "ccc_dominance" not in metrics["summary"]["test"]
    assert json.loads((run / "config.json").read_text())["model_config"]["monitor"] == "ccc"


def test_iemocap_fixture_dimensional_regression_trains_end_to_end(tmp_path):
    root, cache = make_iemocap(tmp_path / "data"), tmp_path / "cache"
    mer("extract", "--dataset", "iemocap", "--root", root, "--set", "corpus.labels=all", "--features",
        "mfcc40,minilm-l6", "--cache", cache, "--no-progress")
    run = tmp_path / "run"
    mer("fuse", "--model", "concat", "--dataset", "iemocap", "--cache", cache, "--out", run,
        "--protocol-option", "labels=dimensional", "--protocol-option", "dev_fraction=0.3",
        "--set", "audio_feature=mfcc40", "--set", "text_feature=minilm-l6",
        *TINY)
    metrics, rows = check_dimensional_run(run, folds=2)
    assert metrics["protocol"] == "iemocap-loso"
    assert {row["id"] for row in rows if row["split"] == "test"} == \
        {json.loads(line)["id"] for line in open(cache / "iemocap" / "utterances.jsonl")}
