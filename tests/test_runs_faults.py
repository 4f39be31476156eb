"""Run directories under faults: another run in --out, a kill mid-run, mixed or damaged fold files,
empty transcripts, long audio, bad --set values and diverging training. Every error is one line."""

import csv
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

import mer.predict as prediction
from mer.cli import cli
from mer.errors import MerError
from mer.fuse import trainer
from mer.hashing import sha256_file

CORPUS = "demo-n40-s0"
TINY = ["--set", "hidden=8", "--set", "batch_size=4"]
THREE_FOLDS = ["--protocol", "iemocap-loso", "--folds", "Ses01,Ses02,Ses03"]
MER = str(Path(sys.executable).with_name("mer"))


@pytest.fixture(scope="module")
def cache(tmp_path_factory, demo_root):
    cache = tmp_path_factory.mktemp("runs-cache")
    result = CliRunner().invoke(cli, ["extract", "--dataset", "demo", "--set", "corpus.size=40", "--root",
                                      str(demo_root), "--features", "mfcc40,logmfb80-d2,minilm-l6", "--cache",
                                      str(cache), "--no-progress"])
    assert result.exit_code == 0, result.output
    return cache


def fuse_args(cache, out, *extra, model="concat"):
    return ["fuse", "--model", model, "--dataset", CORPUS, "--cache", str(cache), "--out", str(out), "--device", "cpu",
            *TINY, *extra]


def mer(*args):
    """The command in-process; a MerError comes back as `result.exception` (main() prints it as one line)."""
    return CliRunner().invoke(cli, list(args), standalone_mode=False)


def error_of(result) -> str:
    assert isinstance(result.exception, MerError), repr(result.exception) + result.output
    message = str(result.exception)
    assert "\n" not in message
    return message


def utterance(cache, index=0) -> dict:
    lines = (Path(cache) / CORPUS / "utterances.jsonl").read_text().splitlines()
    return json.loads(lines[index])


# 1. --out never mixes two runs


def test_out_holding_another_run_is_refused_and_overwrite_replaces_it(cache, tmp_path):
    out = tmp_path / "run"
    assert mer(*fuse_args(cache, out, "--set", "max_epochs=1", *THREE_FOLDS)).exception is None
    before = {p.name: p.stat().st_mtime_ns for p in (out / "checkpoints").iterdir()}

    other_folds = mer(*fuse_args(cache, out, "--set", "max_epochs=1", "--protocol", "iemocap-loso", "--folds", "Ses04"))
    assert error_of(other_folds) == (
        f"{out}/config.json: --out holds another run (folds [\"Ses01\", \"Ses02\", \"Ses03\"] there, [\"Ses04\"] now); "
        "pass --overwrite to replace it, or give another --out")
    other_config = mer(*fuse_args(cache, out, "--set", "max_epochs=2", *THREE_FOLDS))
    assert "(model_config.max_epochs 1 there, 2 now)" in error_of(other_config)
    other_model = mer(*fuse_args(cache, out, "--set", "max_epochs=1", *THREE_FOLDS, model="late"))
    assert '(model "concat" there, "late" now)' in error_of(other_model)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "checkpoints").iterdir()} == before

    replaced = mer(*fuse_args(cache, out, "--set", "max_epochs=1", "--protocol", "iemocap-loso", "--folds", "Ses04",
                              "--overwrite"))
    assert replaced.exception is None, replaced.output
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["Ses04.safetensors"]
    assert sorted(p.name for p in (out / "folds").iterdir()) == ["Ses04.json"]
    assert [f["fold"] for f in json.loads((out / "metrics.json").read_text())["folds"]] == ["Ses04"]
    assert {r["fold"] for r in csv.DictReader(open(out / "predictions.csv"))} == {"Ses04"}


# 2. a killed run resumes; finished folds are kept and not retrained


KILL_AT_SES02 = textwrap.dedent("""
    import os, signal, sys
    import mer.fuse.run as run
    train = run.train_one_fold
    def killed_at_ses02(job, log=print):
        if job.fold == "Ses02":
            os.kill(os.getpid(), signal.SIGKILL)
        return train(job, log)
    run.train_one_fold = killed_at_ses02
    from mer.cli import main
    sys.argv = ["mer"] + sys.argv[1:]
    main()
""")


def test_a_killed_run_resumes_without_retraining_finished_folds(cache, tmp_path):
    out, reference = tmp_path / "run", tmp_path / "uninterrupted"
    args = fuse_args(cache, out, "--set", "max_epochs=3", *THREE_FOLDS)
    killed = subprocess.run([sys.executable, "-c", KILL_AT_SES02, *args], capture_output=True, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert killed.returncode == -9, killed.stderr
    assert sorted(p.name for p in (out / "folds").iterdir()) == ["Ses01.json"]
    assert not (out / "metrics.json").exists()
    config = json.loads((out / "config.json").read_text())
    assert config["folds"] == ["Ses01", "Ses02", "Ses03"] and config["model_config"]["max_epochs"] == 3
    ses01 = sha256_file(out / "checkpoints" / "Ses01.safetensors")

    # the partial run predicts with its one complete fold only
    utt = utterance(cache)
    partial = mer("predict", "--run", str(out), "--audio", utt["audio_path"], "--text", utt["text"], "--fold", "Ses02")
    assert error_of(partial) == f"--fold Ses02: not a complete fold of {out}; complete folds: Ses01"
    assert mer("predict", "--run", str(out), "--audio", utt["audio_path"], "--text", utt["text"]).exception is None

    resumed = mer(*args)
    assert resumed.exception is None, resumed.output
    assert f"[Ses01] complete in {out}/folds/Ses01.json: loaded, not trained again" in resumed.output
    assert "[Ses01] epoch" not in resumed.output and "[Ses02] epoch 3/3" in resumed.output
    assert sha256_file(out / "checkpoints" / "Ses01.safetensors") == ses01

    assert mer(*fuse_args(cache, reference, "--set", "max_epochs=3", *THREE_FOLDS)).exception is None
    for name in ("metrics.json", "predictions.csv"):
        assert (out / name).read_text() == (reference / name).read_text(), name
    assert without_seconds(out / "history.json") == without_seconds(reference / "history.json")
    for fold in ("Ses01", "Ses02", "Ses03"):
        assert sha256_file(out / "checkpoints" / f"{fold}.safetensors") == \
            sha256_file(reference / "checkpoints" / f"{fold}.safetensors")


INTERRUPT_AT_SES02 = KILL_AT_SES02.replace("os.kill(os.getpid(), signal.SIGKILL)", "raise KeyboardInterrupt")


def test_an_interrupted_run_prints_the_command_that_resumes_it(cache, tmp_path):
    out = tmp_path / "run"
    args = fuse_args(cache, out, "--set", "max_epochs=2", *THREE_FOLDS)
    interrupted = subprocess.run([sys.executable, "-c", INTERRUPT_AT_SES02, *args], capture_output=True, text=True,
                                 env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert interrupted.returncode == 130 and "Traceback" not in interrupted.stderr
    line = next(line for line in interrupted.stdout.splitlines() if line.startswith("interrupted:"))
    assert line.startswith(f"interrupted: 1 of 3 fold(s) saved in {out}; resume with mer fuse ")
    command = shlex.split(line.split("resume with ", 1)[1])
    assert command[command.index("--out") + 1] == str(out)
    resumed = mer(*command[1:])
    assert resumed.exception is None, resumed.output
    assert "[Ses01] complete" in resumed.output and "[Ses02] epoch 2/2" in resumed.output


def without_seconds(history_path: Path) -> dict:
    return {fold: [{k: v for k, v in epoch.items() if k != "seconds"} for epoch in epochs]
            for fold, epochs in json.loads(history_path.read_text()).items()}


FAIL_SES02_AFTER_SES01 = textwrap.dedent("""
    import time
    from pathlib import Path
    from mer.fuse.run import train_one_fold as train

    def fail_ses02(job, log=None):
        if job.fold == "Ses02":  # fails only once Ses01 is on disk: saving at the end would wait forever
            marker = Path(OUT) / "folds" / "Ses01.json"
            deadline = time.time() + 60
            while not marker.exists() and time.time() < deadline:
                time.sleep(0.2)
            raise RuntimeError("Ses02 failed")
        return train(job, log)
""")


def test_with_workers_each_fold_is_saved_as_it_finishes(cache, tmp_path):
    out = tmp_path / "run"
    (tmp_path / "faulty.py").write_text(f"OUT = {str(out)!r}\n" + FAIL_SES02_AFTER_SES01)
    args = fuse_args(cache, out, "--set", "max_epochs=1", "--protocol", "iemocap-loso", "--folds", "Ses01,Ses02",
                     "--workers", "2")
    script = "import sys, faulty, mer.fuse.run as run\nrun.train_one_fold = faulty.fail_ses02\n" \
             "from mer.cli import main\nsys.argv = ['mer'] + sys.argv[1:]\nmain()\n"
    failed = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(tmp_path)})
    assert failed.returncode != 0 and "Ses02 failed" in failed.stderr
    assert (out / "checkpoints" / "Ses01.safetensors").is_file()
    assert sorted(p.name for p in (out / "folds").iterdir()) == ["Ses01.json"]


# 3. predict: complete, consistent folds only; a transcript when the model reads text; the audio it needs


def test_predict_refuses_fold_files_that_disagree_with_config(cache, tmp_path):
    run, other = tmp_path / "run", tmp_path / "other"
    assert mer(*fuse_args(cache, run, "--set", "max_epochs=1")).exception is None
    assert mer(*fuse_args(cache, other, "--set", "max_epochs=1", "--set", "hidden=16")).exception is None
    utt = utterance(cache)
    predict = ["predict", "--run", str(run), "--audio", utt["audio_path"], "--text", utt["text"]]
    checkpoint, record_path = run / "checkpoints" / "split.safetensors", run / "folds" / "split.json"

    shutil.copy(other / "checkpoints" / "split.safetensors", checkpoint)
    assert error_of(mer(*predict)).startswith(f"{checkpoint}: changed since fold split finished (see {record_path}); "
                                              "train the run again: mer fuse --model concat --dataset demo-n40-s0")
    record = json.loads(record_path.read_text())
    record_path.write_text(json.dumps({**record, "checkpoint_sha256": sha256_file(checkpoint)}))
    message = error_of(mer(*predict))
    assert message.startswith(f"{checkpoint}: does not fit the model that {run}/config.json records (Error(s) in "
                              "loading state_dict for ConcatFusion:")
    assert message.endswith(f"--seed 0 --device cpu --out {run} --overwrite")

    labels = json.loads((run / "config.json").read_text())["labels"]
    record_path.write_text(json.dumps({**record, "labels": labels[::-1]}))
    assert error_of(mer(*predict)).startswith(
        f"{record_path}: labels {labels[::-1]} differ from {labels} in {run}/config.json; the folder mixes two runs")
    record_path.unlink()
    assert error_of(mer(*predict)).startswith(f"{run}: no fold of this run is complete (no folds/<fold>.json); "
                                              "resume the run: mer fuse --model concat")


def test_the_suggested_command_resumes_the_run(cache, tmp_path):
    run = tmp_path / "run"
    assert mer(*fuse_args(cache, run, "--set", "max_epochs=1")).exception is None
    (run / "folds" / "split.json").unlink()
    utt = utterance(cache)
    message = error_of(mer("predict", "--run", str(run), "--audio", utt["audio_path"], "--text", utt["text"]))
    command = shlex.split(message.split("resume the run: ")[1])
    assert command[:2] == ["mer", "fuse"]
    assert mer(*command[1:]).exception is None
    assert (run / "folds" / "split.json").is_file()


def test_predict_refuses_an_empty_transcript_unless_no_text(cache, tmp_path):
    run = tmp_path / "run"
    assert mer(*fuse_args(cache, run, "--set", "max_epochs=1")).exception is None
    audio = utterance(cache)["audio_path"]
    message = error_of(mer("predict", "--run", str(run), "--audio", audio, "--text", "  "))
    assert message.startswith("--text is empty, but this run's model reads text (minilm-l6) and was trained on the "
                              "corpus's reference transcripts; give the transcript with --text \"...\", or transcribe")
    assert "--asr whisper-large-v3" in message and message.endswith(
        "or pass --no-text to predict from an empty transcript")
    result = mer("predict", "--run", str(run), "--audio", audio, "--no-text", "--json")
    assert result.exception is None
    assert result.stderr.startswith("warning: --no-text: predicting from an EMPTY transcript")
    assert sum(json.loads(result.stdout).values()) == pytest.approx(1.0)
    both = mer("predict", "--run", str(run), "--audio", audio, "--no-text", "--text", "hi")
    assert error_of(both) == "--text and --no-text given together; pass one of them"


@pytest.fixture
def long_wav(tmp_path):
    """30 s of 16 kHz noise and tones, louder towards the end."""
    rng = np.random.default_rng(0)
    t = np.arange(30 * 16000) / 16000
    wave = (0.05 + 0.02 * t) * (rng.standard_normal(t.size) * 0.3 + np.sin(2 * np.pi * 220 * t))
    path = tmp_path / "long.wav"
    sf.write(path, wave.astype(np.float32), 16000, subtype="FLOAT")
    return path, wave.astype(np.float32)


@pytest.fixture
def decoded_ends(monkeypatch):
    ends = []
    load = prediction.load_audio

    def recording(path, start=None, end=None):
        ends.append(end)
        return load(path, start, end)

    monkeypatch.setattr(prediction, "load_audio", recording)
    return ends


def test_predict_decodes_only_the_seconds_a_capped_local_frame_feature_needs(cache, tmp_path, long_wav,
                                                                              decoded_ends, monkeypatch):
    run = tmp_path / "run"
    assert mer(*fuse_args(cache, run, "--set", "max_epochs=1", "--set", "audio_feature=logmfb80-d2",
                          "--set", "max_audio_frames=150", model="audio-only")).exception is None
    path, wave = long_wav
    long = mer("predict", "--run", str(run), "--audio", str(path), "--json")
    assert long.exception is None, long.output
    assert decoded_ends == [3.0]  # ceil(150 frames / 100 per s) + 1 s
    cut = tmp_path / "cut.wav"
    sf.write(cut, wave[: 3 * 16000], 16000, subtype="FLOAT")
    assert json.loads(mer("predict", "--run", str(run), "--audio", str(cut), "--json").stdout) == \
        json.loads(long.stdout)
    # the first 150 frames of the whole file are those of its first 3 s
    monkeypatch.setattr(prediction, "audio_seconds_needed", lambda extractors, frames: None)
    whole = json.loads(mer("predict", "--run", str(run), "--audio", str(path), "--json").stdout)
    assert decoded_ends[-1] is None
    np.testing.assert_allclose(list(whole.values()), list(json.loads(long.stdout).values()), atol=1e-5)


def test_predict_decodes_the_whole_file_for_features_that_depend_on_all_of_it(cache, tmp_path, long_wav,
                                                                              decoded_ends):
    run = tmp_path / "run"  # mfcc40's top_db floor is relative to the peak of the whole file
    assert mer(*fuse_args(cache, run, "--set", "max_epochs=1", "--set", "max_audio_frames=150",
                          model="audio-only")).exception is None
    assert mer("predict", "--run", str(run), "--audio", str(long_wav[0])).exception is None
    assert decoded_ends == [None]


# 4. one-line errors for bad settings and a diverging run


@pytest.mark.parametrize("setting, message", [
    ("max_epochs=-1", "max_epochs must be an integer >= 1, got -1; e.g. --set max_epochs=30"),
    ("max_epochs=2.5", "--set max_epochs=2.5: max_epochs expects an integer, e.g. --set max_epochs=30"),
    ("lr=abc", "--set lr=abc: lr expects a number, e.g. --set lr=0.001"),
    ("lr=0", "lr must be a number > 0, got 0.0; e.g. --set lr=0.001"),
    ("batch_size=0", "batch_size must be an integer >= 1, got 0; e.g. --set batch_size=64"),
    ("patience=0", "patience must be an integer >= 1 or none, got 0; e.g. --set patience=10"),
    ("dropout=1", "dropout must be a number in [0, 1), got 1.0; e.g. --set dropout=0.5"),
])
def test_bad_settings_are_one_line_before_anything_is_written(cache, tmp_path, setting, message):
    result = mer("fuse", "--model", "concat", "--dataset", CORPUS, "--cache", str(cache), "--out",
                 str(tmp_path / "run"), "--device", "cpu", "--set", setting)
    assert error_of(result) == message
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("option, message", [
    (("--set", "nosuch=1"), "--set nosuch: no such option of this model; its options: "),
    (("--ablation", "no_sca=maybe"), "--ablation no_sca=maybe: no_sca expects a boolean (true or false)"),
])
def test_bad_options_and_ablations_are_named_by_the_option_they_came_from(cache, tmp_path, option, message):
    result = mer("fuse", "--model", "cm-roberta", "--dataset", CORPUS, "--cache", str(cache), "--out",
                 str(tmp_path / "run"), "--device", "cpu", *option)
    assert error_of(result).startswith(message) and "Config" not in error_of(result)
    assert not (tmp_path / "run").exists()


def test_a_bad_line_of_an_ablation_grid_names_the_file_and_line(cache, tmp_path):
    grid = tmp_path / "grid.txt"
    grid.write_text("# the grid\nfull\nno_sca=maybe\n")
    result = mer("fuse", "--model", "cm-roberta", "--dataset", CORPUS, "--cache", str(cache), "--out",
                 str(tmp_path / "run"), "--device", "cpu", "--ablation-grid", str(grid))
    assert error_of(result) == f"{grid} line 3: --ablation no_sca=maybe: no_sca expects a boolean (true or false)"
    assert not (tmp_path / "run").exists()


def test_bad_setting_through_the_installed_command_is_one_line_exit_2(cache, tmp_path):
    result = subprocess.run([MER, *fuse_args(cache, tmp_path / "run", "--set", "max_epochs=-1")],
                            capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == \
        "error: max_epochs must be an integer >= 1, got -1; e.g. --set max_epochs=30"


def nan_losses(monkeypatch, nan_calls):
    """evaluate() reports a NaN dev loss on the given calls (0-based; one call per epoch), with
    predictions that would score perfectly: tempting to take as the best epoch."""
    evaluate, calls = trainer.evaluate, []

    def patched(*args, **kwargs):
        loss, predictions = evaluate(*args, **kwargs)
        calls.append(len(calls))
        if calls[-1] not in nan_calls:
            return loss, predictions
        perfect = np.eye(predictions.outputs.shape[1], dtype=np.float32)[predictions.targets]
        return math.nan, trainer.Predictions(predictions.ids, predictions.targets, perfect)

    monkeypatch.setattr(trainer, "evaluate", patched)


def test_a_dev_loss_nan_in_every_epoch_is_one_line_suggesting_a_lower_lr(cache, tmp_path, monkeypatch):
    nan_losses(monkeypatch, {0, 1, 2})
    result = mer(*fuse_args(cache, tmp_path / "run", "--set", "max_epochs=3"))
    assert error_of(result) == ("fold split: the dev loss was NaN in every epoch (3 epochs), so there is no best "
                                "checkpoint; training diverged: lower the learning rate, e.g. --set lr=0.0001")
    assert not (tmp_path / "run" / "folds" / "split.json").exists()


def test_a_nan_epoch_never_becomes_the_best(cache, tmp_path, monkeypatch):
    nan_losses(monkeypatch, {1})  # epoch 2 of 3
    result = mer(*fuse_args(cache, tmp_path / "run", "--set", "max_epochs=3", "--set", "monitor=accuracy"))
    assert result.exception is None, result.output
    history = json.loads((tmp_path / "run" / "history.json").read_text())["split"]
    assert math.isnan(history[1]["dev"]["loss"])
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["folds"][0]["best_epoch"] != 1


def test_resume_refuses_a_finished_fold_whose_checkpoint_is_gone_and_the_rm_retrains_it(cache, tmp_path):
    out = tmp_path / "run"
    args = fuse_args(cache, out, "--set", "max_epochs=1")
    assert mer(*args).exception is None
    (out / "checkpoints" / "split.safetensors").unlink()
    assert error_of(mer(*args)) == (f"{out}/checkpoints/split.safetensors: missing or changed since fold split "
                                    f"finished; to train fold split again: rm {out}/folds/split.json")
    (out / "folds" / "split.json").unlink()
    again = mer(*args)
    assert again.exception is None and "[split] epoch 1/1" in again.output
    assert (out / "checkpoints" / "split.safetensors").is_file()
