"""Stage 2 end to end through the CLI: every registered model trains on a demo cache and writes
the run directory; `mer predict` reproduces the run's own predictions; bad input is one line."""

import csv
import json
from dataclasses import fields

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mer.cli import cli
from mer.fuse.models import MODELS, model_names, tiny_config

DEMO_FEATURES = "mfcc40,logmfb80-d2,opensmile-egemaps,minilm-l6"


@pytest.fixture(scope="module")
def demo_cache(tmp_path_factory, demo_root):
    cache = tmp_path_factory.mktemp("fuse-cache")
    result = CliRunner().invoke(cli, ["extract", "--dataset", "demo", "--set", "corpus.size=40", "--root",
                                      str(demo_root), "--features", DEMO_FEATURES, "--cache", str(cache),
                                      "--no-progress"])
    assert result.exit_code == 0, result.output
    return cache


def tiny_settings(name: str) -> list[str]:
    """--set options that turn the model's default config into its tiny test variant."""
    default, tiny = MODELS.get(name).config_class(), tiny_config(name)
    args = []
    for f in fields(tiny):
        value = getattr(tiny, f.name)
        if value != getattr(default, f.name) and not isinstance(value, dict):
            args += ["--set", f"{f.name}={json.dumps(value) if not isinstance(value, str) else value}"]
    return args + ["--set", "max_epochs=2"]


def fuse(cache, out, name, *extra):
    return CliRunner().invoke(cli, ["fuse", "--model", name, "--dataset", "demo-n40-s0", "--cache", str(cache),
                                    "--out", str(out), "--device", "cpu", *tiny_settings(name), *extra])


@pytest.mark.parametrize("name", model_names())
def test_every_model_trains_end_to_end_and_writes_the_run_directory(demo_cache, tmp_path, name):
    result = fuse(demo_cache, tmp_path / "run", name)
    assert result.exit_code == 0, result.output + repr(result.exception)
    run = tmp_path / "run"
    for file in ("config.json", "metrics.json", "predictions.csv", "confusion.png", "curves.png",
                 "checkpoints/split.safetensors", "norm/split.npz"):
        assert (run / file).is_file(), file
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"model", "corpus", "protocol", "folds", "summary"} <= set(metrics)
    assert set(metrics["summary"]["test"]) >= {"accuracy", "ua", "weighted_f1", "macro_f1"}
    assert metrics["folds"][0]["fold"] == "split" and "dev" in metrics["folds"][0]
    config = json.loads((run / "config.json").read_text())
    assert config["seed"] == 0 and config["feature_specs"] and config["package_version"]
    assert "accuracy" in result.output  # the results table


def test_predict_reproduces_the_runs_test_predictions(demo_cache, tmp_path, demo_root):
    run = tmp_path / "run"
    assert fuse(demo_cache, run, "concat").exit_code == 0
    rows = [r for r in csv.DictReader(open(run / "predictions.csv")) if r["split"] == "test"]
    utterances = {json.loads(line)["id"]: json.loads(line)
                  for line in open(demo_cache / "demo-n40-s0" / "utterances.jsonl")}
    for row in rows[:3]:
        utt = utterances[row["id"]]
        result = CliRunner().invoke(cli, ["predict", "--run", str(run), "--audio", utt["audio_path"], "--text",
                                          utt["text"], "--json"])
        assert result.exit_code == 0, result.output
        predicted = json.loads(result.stdout)
        expected = {k[2:]: float(v) for k, v in row.items() if k.startswith("p_")}
        # the cache stores float16; prediction computes float32 features afresh
        np.testing.assert_allclose([predicted[k] for k in expected], list(expected.values()), atol=0.02)


def test_ablation_and_unknown_ablation(demo_cache, tmp_path):
    assert fuse(demo_cache, tmp_path / "a", "mcsan", "--ablation", "no_self").exit_code == 0
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["model_config"]["no_self"] is True
    result = fuse(demo_cache, tmp_path / "b", "mcsan", "--ablation", "no_such")
    assert result.exit_code != 0 and "has no ablation" in str(result.exception)


def test_missing_feature_fails_before_training_with_the_extract_command(demo_cache, tmp_path):
    result = fuse(demo_cache, tmp_path / "r", "mcsan", "--set", "demo_audio_feature=wavlm-base-plus")
    assert result.exit_code != 0
    message = str(result.exception)  # the reader's name and its options, not the corpus name
    assert "mer extract --dataset demo --root " in message
    assert "--set corpus.size=40 --features wavlm-base-plus --cache " in message
    assert not (tmp_path / "r" / "metrics.json").exists()


def test_list_models_shows_cached_features(demo_cache):
    result = CliRunner().invoke(cli, ["list", "models", "--cache", str(demo_cache), "--dataset", "demo-n40-s0"])
    assert result.exit_code == 0
    assert all(name in result.output for name in model_names())
    assert "cached" in result.output


def test_folds_run_in_parallel_on_dask_and_report_mean_and_std(demo_cache, tmp_path):
    result = fuse(demo_cache, tmp_path / "run", "concat", "--protocol", "iemocap-loso", "--workers", "2",
                  "--folds", "Ses01,Ses02")
    assert result.exit_code == 0, result.output + repr(result.exception)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [f["fold"] for f in metrics["folds"]] == ["Ses01", "Ses02"]
    accuracy = metrics["summary"]["test"]["accuracy"]
    folds = [f["test"]["accuracy"] for f in metrics["folds"]]
    assert accuracy["mean"] == pytest.approx(np.mean(folds))
    assert accuracy["std"] == pytest.approx(np.std(folds, ddof=1))
    assert (tmp_path / "run" / "checkpoints" / "Ses02.safetensors").is_file()


def test_same_seed_same_results_whatever_ran_before(demo_cache, tmp_path):
    assert fuse(demo_cache, tmp_path / "a", "mcsan").exit_code == 0
    torch.manual_seed(12345)  # whatever ran before in this process must not matter
    torch.rand(7)
    assert fuse(demo_cache, tmp_path / "b", "mcsan").exit_code == 0
    assert (tmp_path / "a" / "predictions.csv").read_text() == (tmp_path / "b" / "predictions.csv").read_text()


def test_make_demo_trains_afresh_into_its_run_folders_after_a_settings_change(demo_cache, tmp_path):
    """`make demo` reuses runs/demo/<model>: a run left there by a release with other demo settings must
    not be refused as 'another run' (it is replaced), and the results equal a first run's."""
    from mer import demo_pipeline

    first = demo_pipeline.train("audio-only", demo_cache, tmp_path, 0, corpus="demo-n40-s0")
    config_path = tmp_path / "audio-only" / "config.json"
    config = json.loads(config_path.read_text())
    config["model_config"]["max_epochs"] += 7  # as an older release's demo settings
    config_path.write_text(json.dumps(config))
    again = demo_pipeline.train("audio-only", demo_cache, tmp_path, 0, corpus="demo-n40-s0")
    assert (again["accuracy"], again["epochs"]) == (first["accuracy"], first["epochs"])
    assert json.loads(config_path.read_text())["model_config"]["max_epochs"] == config["model_config"]["max_epochs"] - 7


def test_make_demo_table_sets_each_model_against_the_probe_on_its_own_features(demo_cache, tmp_path):
    """audio-only (MFCC) is set against a probe on the MFCC alone, not against the default probe on MFCC + text;
    its McNemar p is `mer compare`'s for the same two runs (the same test utterances)."""
    from mer import demo_pipeline as demo
    from mer.fuse.compare import compare_runs

    rows = [demo.mean_row([demo.train(model, demo_cache, tmp_path, 0, corpus="demo-n40-s0")])
            for model in ("linear", "audio-only")]
    assert demo.missing_probes(rows) == [{"audio": "mfcc40", "text": None}]
    probe = demo.mean_row([demo.train("linear", demo_cache, tmp_path, 0, corpus="demo-n40-s0",
                                      settings=demo.probe_settings(rows[1]["features"]), name="linear-mfcc40")])
    assert probe["features"] == rows[1]["features"] and demo.missing_probes(rows + [probe]) == []
    rows = [rows[0], probe, rows[1]]
    demo.add_paired_tests(rows)
    comparison = compare_runs([tmp_path / "linear-mfcc40", tmp_path / "audio-only"], "accuracy", out=tmp_path / "cmp")
    p = comparison["comparisons"][0]["tests"][0]["p"]
    assert "p_vs_linear" not in rows[0] and "p_vs_linear" not in rows[1] and rows[2]["p_vs_linear"] == [p]
    versus = f"{100 * (rows[2]['accuracy'] - probe['accuracy']):+.1f}"
    assert f"| {versus} | {p:.2f} |" in demo.format_table(rows).splitlines()[4]


def test_predict_gives_context_reading_text_features_the_previous_turns(demo_root, tmp_path):
    """A run on text features that read the previous turn reproduces its predictions only with --context;
    without it, a warning says what is missing."""
    cache, run = tmp_path / "cache", tmp_path / "run"
    extracted = CliRunner().invoke(cli, ["extract", "--dataset", "demo", "--set", "corpus.size=40", "--root",
                                         str(demo_root), "--features", "minilm-l6", "--set",
                                         "minilm-l6.context_turns=1", "--cache", str(cache), "--no-progress"])
    assert extracted.exit_code == 0, extracted.output
    assert fuse(cache, run, "text-only").exit_code == 0
    utterances = {u["id"]: u for u in map(json.loads, open(cache / "demo-n40-s0" / "utterances.jsonl"))}
    previous = {(u["dialogue"], u["turn"] + 1): u["text"] for u in utterances.values()}
    row = next(r for r in csv.DictReader(open(run / "predictions.csv"))
               if r["split"] == "test" and (utterances[r["id"]]["dialogue"], utterances[r["id"]]["turn"]) in previous)
    utt = utterances[row["id"]]
    expected = {k[2:]: float(v) for k, v in row.items() if k.startswith("p_")}

    def predicted(*context):
        result = CliRunner().invoke(cli, ["predict", "--run", str(run), "--text", utt["text"], "--json",
                                          *[a for turn in context for a in ("--context", turn)]])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout), result.stderr

    with_context, quiet = predicted("an earlier turn", previous[utt["dialogue"], utt["turn"]])  # the last one counts
    np.testing.assert_allclose([with_context[k] for k in expected], list(expected.values()), atol=0.02)
    assert "warning" not in quiet
    alone, warning = predicted()
    assert "read the dialogue's previous turns (minilm-l6: 1 previous turn)" in warning and "--context" in warning
    assert max(abs(alone[k] - with_context[k]) for k in expected) > 1e-4


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_a_mistyped_cache_folder_is_one_line_naming_it(tmp_path, kind):
    cache = tmp_path / "nosuchcache"
    if kind == "file":
        cache.write_text("")
    result = CliRunner().invoke(cli, ["fuse", "--model", "text-only", "--dataset", "meld", "--cache", str(cache),
                                      "--out", str(tmp_path / "run"), "--device", "cpu"])
    what = "no such folder" if kind == "missing" else "is a file, not a cache folder"
    assert result.exit_code != 0 and str(result.exception) == f"{cache}: {what}; give the --cache folder of `mer extract`"
    assert not (tmp_path / "run").exists()


def test_a_fold_on_a_machine_that_does_not_see_the_cache_says_so(tmp_path):
    from mer.errors import CacheError
    from mer.fuse.run import _cache_seen_here

    with pytest.raises(CacheError, match="no such folder on .*, where this fold runs: the dask workers must see "
                                         "the cache at the client's absolute path"):
        _cache_seen_here(tmp_path / "only-on-the-client")
    _cache_seen_here(tmp_path)


@pytest.mark.parametrize("budget, how", [("0", "each fold reads them in pools of whole shards"),
                                         ("1GiB", "each fold reads them into memory once")])
def test_preload_budget_decides_whether_a_fold_streams(demo_cache, tmp_path, budget, how):
    result = fuse(demo_cache, tmp_path / "run", "concat", "--preload-budget", budget)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert how in result.output and "preload budget per fold" in result.output


def test_preload_budget_takes_a_size(tmp_path):
    result = CliRunner().invoke(cli, ["fuse", "--model", "concat", "--dataset", "demo", "--cache", str(tmp_path),
                                      "--preload-budget", "lots"])
    assert result.exit_code == 2 and "'lots': give a size such as 512MiB, 2GiB or 0 (always stream)" in result.output
