"""Model selection on the protocol's headline metric by default, and what a reader sees in the
results table."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from mer.cli import cli
from mer.data.protocols import headline_metric
from mer.fuse.models import make_config
from mer.fuse.models.base import FusionConfig
from mer.fuse.report import results_table


def test_headline_metric_per_protocol():
    assert headline_metric("meld") == "weighted_f1"
    assert [headline_metric(p) for p in ("iemocap-loso", "iemocap-10fold", "iemocap7-10fold", "manifest", "demo")] \
        == ["ua"] * 5
    assert headline_metric("mosei", regression=True) == "mae"
    assert headline_metric("manifest", regression=True) == "mae"


def test_the_default_monitor_is_the_headline_and_papers_that_name_the_loss_keep_it():
    assert FusionConfig().monitor == "headline"
    assert make_config("audio-only").monitor == "last"  # baselines: no selection, refit on train + dev
    assert make_config("cm-roberta").monitor == "loss"  # CM-RoBERTa: early stopping on the validation loss


@pytest.fixture(scope="module")
def mfcc_cache(tmp_path_factory, demo_root):
    cache = tmp_path_factory.mktemp("recipe-cache")
    result = CliRunner().invoke(cli, ["extract", "--dataset", "demo", "--set", "corpus.size=40", "--root",
                                      str(demo_root), "--features", "mfcc40", "--cache", str(cache), "--no-progress"])
    assert result.exit_code == 0, result.output
    return cache


def fuse(cache, out, *extra):
    return CliRunner().invoke(cli, ["fuse", "--model", "audio-only", "--dataset", "demo-n40-s0", "--cache", str(cache),
                                    "--out", str(out), "--set", "hidden=8", "--set", "max_epochs=4", *extra])


def test_fuse_selects_the_epoch_on_the_headline_metric_unless_told_otherwise(mfcc_cache, tmp_path):
    result = fuse(mfcc_cache, tmp_path / "ua", "--set", "monitor=headline", "--set", "patience=8")
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert json.loads((tmp_path / "ua" / "config.json").read_text())["model_config"]["monitor"] == "ua"
    history = json.loads((tmp_path / "ua" / "history.json").read_text())["split"]
    best = json.loads((tmp_path / "ua" / "metrics.json").read_text())["folds"][0]["best_epoch"]
    dev_ua = [h["dev"]["ua"] for h in history]
    assert best == dev_ua.index(max(dev_ua))  # the first epoch of the best dev UA

    result = fuse(mfcc_cache, tmp_path / "loss", "--set", "monitor=loss")
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert json.loads((tmp_path / "loss" / "config.json").read_text())["model_config"]["monitor"] == "loss"


def test_linear_runs_on_the_one_modality_it_is_given(mfcc_cache, tmp_path):
    """The demo cache here holds no text feature: `modality=audio` must not ask for one."""
    result = CliRunner().invoke(cli, ["fuse", "--model", "linear", "--dataset", "demo-n40-s0", "--cache",
                                      str(mfcc_cache), "--out", str(tmp_path / "run"), "--set", "modality=audio",
                                      "--set", "max_epochs=3"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["features"] == {"audio": "mfcc40", "text": None}


def document(folds: list[float]) -> dict:
    import numpy as np

    return {"model": "m", "corpus": "c", "protocol": "p", "folds": [{"fold": str(i)} for i in range(len(folds))],
            "summary": {"test": {"accuracy": {"mean": float(np.mean(folds)),
                                              "std": float(np.std(folds, ddof=1)) if len(folds) > 1 else 0.0}}}}


def test_results_table_one_fold_shows_the_value_alone():
    table = results_table(document([0.5]))
    assert "+/-" not in table and "0.5000" in table and "1 fold" in table


def test_results_table_several_folds_show_mean_std_and_their_number():
    table = results_table(document([0.5, 0.7, 0.6]), {"accuracy": 0.65})
    assert "0.6000 +/- 0.1000" in table and "3 folds, mean +/- std" in table and "0.6500" in table


def test_demo_table_shows_each_model_against_the_linear_row():
    from mer.demo_pipeline import format_table

    def row(model, accuracy):
        return {"model": model, "features": {"audio": "mfcc40", "text": "minilm-l6"}, "seconds": 1.0, "epochs": 3,
                "accuracy": accuracy, "ua": accuracy, "weighted_f1": accuracy, "aux": {}}

    lines = format_table([row("linear", 0.5), row("concat", 0.62), row("mcsan", 0.455)]).splitlines()
    assert "vs linear" in lines[0]
    assert "| +12.0 |" in lines[3] and "| -4.5 |" in lines[4]


def test_demo_table_sets_each_model_against_the_probe_on_the_same_features():
    from mer.demo_pipeline import format_table, missing_probes

    def row(model, accuracy, audio="mfcc40"):
        return {"model": model, "features": {"audio": audio, "text": "minilm-l6"}, "seconds": 1.0, "epochs": 3,
                "accuracy": accuracy, "ua": accuracy, "weighted_f1": accuracy, "aux": {}}

    rows = [row("linear", 0.5), row("linear", 0.8, "opensmile-egemaps"), row("mcsan", 0.6),
            row("cm-roberta", 0.7, "opensmile-egemaps"), row("mcfn", 0.9, "logmfb80-d2")]
    lines = format_table(rows).splitlines()
    assert "| +10.0 |" in lines[4] and "| -10.0 |" in lines[5]
    assert "| mcfn | logmfb80-d2 | minilm-l6 | 0.900 |  |" in lines[6]  # no probe on its features: no difference
    assert missing_probes(rows) == [{"audio": "logmfb80-d2", "text": "minilm-l6"}]


def toy_batches(seed: int, n: int = 24, dim: int = 6) -> list[dict]:
    import numpy as np
    import torch

    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = rng.normal(0, 1, (n, dim)) + y[:, None]
    return [{"audio": torch.tensor(x, dtype=torch.float32)[:, None, :], "audio_mask": torch.ones(n, 1, dtype=torch.bool),
             "label": torch.tensor(y), "ids": [f"s{seed}-{i}" for i in range(n)]}]


def test_refit_on_dev_retrains_from_the_same_start_on_train_and_dev_for_the_chosen_epochs():
    import torch

    from mer.fuse.models import build_model
    from mer.fuse.trainer import TrainerConfig, train_fold

    train, dev, test = toy_batches(0), toy_batches(1), toy_batches(2)
    refit_epochs = []

    def refit(epoch):
        refit_epochs.append(epoch)
        return train + dev

    def run(config, refit_batches=None):
        torch.manual_seed(0)
        model = build_model("audio-only", 3, {"audio": 6, "text": None}, config)
        result = train_fold(model, config, TrainerConfig(), "toy", lambda epoch: train, lambda: dev, lambda: test,
                            ["a", "b", "c"], log=lambda line: None, refit_batches=refit_batches)
        return model, result

    config = make_config("audio-only", hidden=8, max_epochs=12, patience=None, monitor="ua", refit_on_dev=True)
    model, result = run(config, refit)
    chosen = result.best_epoch + 1
    assert refit_epochs == list(range(chosen))  # as many epochs as dev chose, no selection

    # the same as training that model from scratch on train + dev for that many epochs, keeping the last
    plain = make_config("audio-only", hidden=8, max_epochs=chosen, patience=None, monitor="last")
    torch.manual_seed(0)
    reference = build_model("audio-only", 3, {"audio": 6, "text": None}, plain)
    train_fold(reference, plain, TrainerConfig(), "toy", lambda epoch: train + dev, lambda: dev, lambda: test,
               ["a", "b", "c"], log=lambda line: None)
    for name, value in reference.state_dict().items():
        assert torch.equal(result.state_dict[name], value), name  # the returned (checkpointed) state is the refit
        assert torch.equal(model.state_dict()[name], value)
    # the test predictions are the refit model's; the dev metrics the selected model's (dev is training data after)
    selected, selected_result = run(make_config("audio-only", hidden=8, max_epochs=12, patience=None, monitor="ua"))
    assert selected_result.best_epoch == result.best_epoch and selected_result.dev == result.dev
    with torch.no_grad():
        refit_probabilities = reference(test[0]).logits.softmax(-1).numpy()
    assert abs(result.test_predictions.outputs - refit_probabilities).max() < 1e-6


def test_fuse_refits_on_train_and_dev_when_asked(mfcc_cache, tmp_path):
    result = fuse(mfcc_cache, tmp_path / "refit", "--set", "refit_on_dev=true", "--set", "monitor=headline")
    assert result.exit_code == 0, result.output + repr(result.exception)
    best = json.loads((tmp_path / "refit" / "metrics.json").read_text())["folds"][0]["best_epoch"]
    assert f"refit on train + dev: {best + 1} epochs" in result.output


def test_input_dropout_only_on_features_with_many_dimensions():
    config = make_config("audio-only")
    assert config.input_dropout == 0.5 and config.input_dropout_min_dim == 1000 and config.refit_on_dev
    assert (config.monitor, config.max_epochs, config.patience) == ("last", 30, None)
    from mer.fuse.models import build_model

    def rates(model_name, audio_dim, text_dim):
        model = build_model(model_name, 7, {"audio": audio_dim, "text": text_dim}, config)
        return [m.input_dropout.p for m in model.modules() if hasattr(m, "input_dropout")]

    assert rates("audio-only", 6373, None) == [0.5]  # ComParE
    assert rates("audio-only", 88, None) == [0.0]  # eGeMAPS
    assert rates("text-only", None, 384) == [0.0]  # a sentence embedding
    assert rates("concat", 88, 1024) == [0.5]  # the concatenated vector's dimensions count
    assert rates("late", 6373, 384) == [0.5, 0.0]  # each head its own


def test_baseline_heads_average_independent_members():
    import torch
    from mer.fuse.models import build_model
    from mer.fuse.models.base import task_loss_for

    config = make_config("audio-only", ensemble=3, dropout=0.0, input_dropout=0.0)
    model = build_model("audio-only", 4, {"audio": 6, "text": None}, config)
    members = model.head.members
    assert len(members) == 3 and not torch.equal(members[0].net[0].weight, members[1].net[0].weight)
    batch = {"audio": torch.randn(5, 2, 6), "audio_mask": torch.ones(5, 2, dtype=torch.bool)}
    output = model(batch)
    member_probs = output.head_logits["members"].softmax(-1)  # (members, batch, C)
    torch.testing.assert_close(output.logits.softmax(-1), member_probs.mean(0))
    # each member learns from its own loss alone: member 1's loss moves no weight of member 0
    labels = torch.tensor([0, 1, 2, 3, 0])
    task_loss = task_loss_for(4)
    task_loss(output.head_logits["members"][1], labels).backward()
    assert members[0].net[0].weight.grad is None or not members[0].net[0].weight.grad.any()
    assert members[1].net[0].weight.grad.any()
    # the trained term is the sum of the members' losses, not the loss of their average
    terms = model.losses(model(batch), labels, task_loss)
    expected = sum(task_loss(logits, labels) for logits in model(batch).head_logits["members"])
    torch.testing.assert_close(terms["task"], expected)


def test_demo_table_over_seeds_shows_mean_and_std():
    from mer.demo_pipeline import format_table, mean_row

    def row(model, accuracy):
        return {"model": model, "features": {"audio": "mfcc40", "text": "minilm-l6"}, "seconds": 1.0, "epochs": 3,
                "accuracy": accuracy, "ua": accuracy, "weighted_f1": accuracy, "aux": {}}

    rows = [mean_row([row("linear", 0.5), row("linear", 0.5)]), mean_row([row("mcsan", 0.6), row("mcsan", 0.7)])]
    assert rows[1]["seconds"] == 2.0 and rows[1]["seeds"] == 2
    line = format_table(rows).splitlines()[3]
    assert "| 0.650 +/- 0.050 | +15.0 |" in line
