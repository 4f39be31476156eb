"""`mer compare`: two demo runs side by side (table, JSON, compare.png, paired tests), and the refusals
of runs on other protocols, folds or tasks unless --allow-mismatch; what a protocol means, said once."""

from __future__ import annotations

import json
import shlex
import shutil

import pytest
from click.testing import CliRunner

from mer.cli import cli
from mer.data.protocols import protocol_facts

CORPUS = "demo-n40-s0"
FOLDS = "Ses01,Ses02,Ses03"
MODELS = {"linear": ["--set", "modality=audio"], "audio-only": ["--set", "hidden=8", "--set", "ensemble=1"]}


def invoke(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def runs(tmp_path_factory, demo_root):
    """linear and audio-only on three IEMOCAP-style sessions and on the one-fold demo split; linear on
    two of those sessions."""
    root = tmp_path_factory.mktemp("compare")
    cache = root / "cache"
    extracted = invoke("extract", "--dataset", "demo", "--set", "corpus.size=40", "--root", demo_root, "--features",
                       "mfcc40", "--cache", cache, "--no-progress")
    assert extracted.exit_code == 0, extracted.output
    plans = {f"{model}-{kind}": (model, protocol) for model in MODELS
             for kind, protocol in (("loso", ["--protocol", "iemocap-loso", "--folds", FOLDS]),
                                    ("demo", ["--protocol", "demo"]))}
    plans["linear-two"] = ("linear", ["--protocol", "iemocap-loso", "--folds", "Ses01,Ses02"])
    outputs = {}
    for name, (model, protocol) in plans.items():
        result = invoke("fuse", "--model", model, "--dataset", CORPUS, "--cache", cache, "--out", root / name,
                        "--device", "cpu", "--set", "max_epochs=2", *MODELS[model], *protocol)
        assert result.exit_code == 0, result.output + repr(result.exception)
        outputs[name] = result.output
    return root, outputs


def compare(*args):
    return invoke("compare", *args)


def copy_run(runs, name, tmp_path):
    return shutil.copytree(runs[0] / name, tmp_path / name)


def edit_json(path, change) -> None:
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))


def test_two_runs_side_by_side_with_paired_tests_over_folds(runs, tmp_path):
    root, _ = runs
    a, b = root / "linear-loso", root / "audio-only-loso"
    result = compare(a, b, "--out", tmp_path)
    assert result.exit_code == 0, result.output + repr(result.exception)
    table = result.output.splitlines()
    assert table[0].split()[:5] == ["run", "model", "corpus", "protocol", "folds"] and "ua (UA)" in table[0]
    assert table[1].split()[:5] == ["linear-loso", "linear", CORPUS, "iemocap-loso", "3"] and "+/-" in table[1]
    # The demo corpus has no IEMOCAP categories: the IEMOCAP protocol merged nothing in it, and says so.
    assert "speaker-independent" in result.output and "no classes merged" in result.output
    assert "excited" not in result.output
    assert "paired t-test" in result.output and "Wilcoxon signed-rank" in result.output
    assert (tmp_path / "compare.png").stat().st_size > 0

    document = json.loads(compare(a, b, "--out", tmp_path, "--json").output)
    metrics = json.loads((a / "metrics.json").read_text())
    assert document["metric"] == "ua" and document["mismatches"] == []
    assert document["runs"][0]["metrics"]["ua"] == metrics["summary"]["test"]["ua"]
    comparison = document["comparisons"][0]
    assert comparison["unit"] == "folds" and comparison["n"] == 3 and comparison["folds"] == FOLDS.split(",")
    tests = {test["name"]: test for test in comparison["tests"]}
    assert set(tests) == {"paired t-test", "Wilcoxon signed-rank"}
    assert tests["Wilcoxon signed-rank"]["note"]  # 3 folds: p<0.05 is out of its reach (or nothing differs)


def test_one_fold_protocol_shows_no_std_and_tests_per_utterance_correctness(runs, tmp_path):
    root, _ = runs
    result = compare(root / "linear-demo", root / "audio-only-demo", "--out", tmp_path, "--json")
    assert result.exit_code == 0, result.output + repr(result.exception)
    comparison = json.loads(result.output)["comparisons"][0]
    assert comparison["unit"] == "test utterances" and comparison["fold"] == "split"
    assert comparison["n"] == 8 and comparison["tests"][0]["name"] == "McNemar's exact test"
    text = compare(root / "linear-demo", root / "audio-only-demo", "--out", tmp_path).output
    assert "+/-" not in text and "McNemar's exact test: p = " in text
    # The table's metric is UA; McNemar pairs right/wrong per utterance: the header says what it tests.
    assert "paired tests on which test utterances each run got right (accuracy)" in text
    assert "paired tests on test ua" not in text


def test_runs_on_another_protocol_are_refused_unless_allowed(runs, tmp_path):
    root, _ = runs
    result = compare(root / "linear-loso", root / "audio-only-demo", "--out", tmp_path)
    assert result.exit_code != 0
    message = str(result.exception)
    assert "protocol demo vs iemocap-loso" in message and "--allow-mismatch" in message
    pasted = shlex.split(message.rpartition("anyway: ")[2])
    assert pasted[:2] == ["mer", "compare"]
    allowed = invoke(*pasted[1:], "--out", tmp_path)
    assert allowed.exit_code == 0, allowed.output + repr(allowed.exception)
    assert "compared anyway (--allow-mismatch)" in allowed.output
    assert "no paired test: no fold tests the same utterances in both runs" in allowed.output


def test_runs_on_other_folds_are_refused(runs, tmp_path):
    root, _ = runs
    result = compare(root / "linear-loso", root / "linear-two", "--out", tmp_path)
    assert result.exit_code != 0 and "folds Ses01,Ses02 vs Ses01,Ses02,Ses03" in str(result.exception)

    other = copy_run(runs, "audio-only-loso", tmp_path)  # as if its Ses02 had tested other utterances
    edit_json(other / "config.json", lambda config: config["fold_test_ids"].update(Ses02="0" * 16))
    result = compare(root / "linear-loso", other, "--out", tmp_path)
    assert result.exit_code != 0 and "fold Ses02 tests other utterances" in str(result.exception)
    allowed = json.loads(compare(root / "linear-loso", other, "--out", tmp_path, "--allow-mismatch", "--json").output)
    assert allowed["comparisons"][0]["folds"] == ["Ses01", "Ses03"]  # paired on the folds that match


def test_runs_without_the_test_id_record_are_checked_through_their_predictions(runs, tmp_path):
    root, _ = runs
    legacy = copy_run(runs, "audio-only-loso", tmp_path)
    edit_json(legacy / "config.json", lambda config: config.pop("fold_test_ids"))
    assert compare(root / "linear-loso", legacy, "--out", tmp_path).exit_code == 0
    rows = (legacy / "predictions.csv").read_text().splitlines()
    dropped = next(i for i, row in enumerate(rows) if row.startswith("Ses03,test,"))
    (legacy / "predictions.csv").write_text("\n".join(rows[:dropped] + rows[dropped + 1:]) + "\n")
    result = compare(root / "linear-loso", legacy, "--out", tmp_path)
    assert result.exit_code != 0 and "fold Ses03 tests other utterances" in str(result.exception)


def test_a_regression_run_is_never_compared_with_a_classification_run(runs, tmp_path):
    root, _ = runs
    regression = copy_run(runs, "audio-only-demo", tmp_path)

    def as_regression(metrics):
        metrics["summary"]["test"] = {"mae": {"mean": 0.5, "std": 0.0}}
        metrics["folds"][0]["test"] = {"mae": 0.5}

    edit_json(regression / "metrics.json", as_regression)
    for extra in ([], ["--allow-mismatch"]):
        result = compare(root / "linear-demo", regression, "--out", tmp_path, *extra)
        assert result.exit_code != 0 and "audio-only-demo is a regression run" in str(result.exception)
        assert "--allow-mismatch" not in str(result.exception)


def test_an_unfinished_run_names_the_command_that_finishes_it(runs, tmp_path):
    root, _ = runs
    unfinished = copy_run(runs, "linear-demo", tmp_path)
    (unfinished / "metrics.json").unlink()
    result = compare(root / "audio-only-demo", unfinished, "--out", tmp_path)
    message = str(result.exception)
    assert result.exit_code != 0 and "the run has not finished (no metrics.json); finish it: mer fuse" in message
    finished = invoke(*shlex.split(message.partition("finish it: ")[2])[1:])  # every fold is in: nothing trains
    assert finished.exit_code == 0, finished.output + repr(finished.exception)
    assert compare(root / "audio-only-demo", unfinished, "--out", tmp_path).exit_code == 0


def test_fuse_results_header_says_what_the_protocol_means(runs):
    _, outputs = runs
    assert protocol_facts("iemocap-loso", merged="") in outputs["linear-loso"]
    assert "demo: speaker-independent; headline ua; WA = accuracy, UA = ua" in outputs["linear-demo"]


def test_protocol_facts_come_from_the_registry():
    assert protocol_facts("iemocap-10fold").endswith("classes merged: excited (exc) -> happy")
    assert protocol_facts("iemocap-10fold", merged="").endswith("no classes merged")  # the run's own data
    assert protocol_facts("meld").startswith("meld: SPEAKER-DEPENDENT; headline weighted_f1; WA = accuracy")
    assert protocol_facts("manifest", speaker_independent=True).startswith("manifest: speaker-independent")
    assert protocol_facts("mosei", regression=True) == "mosei: speaker-independent; headline mae"
