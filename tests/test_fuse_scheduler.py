"""`mer fuse --scheduler ADDR` and ablation grids: folds run on an existing dask cluster (here one
in-process worker thread), this process writes each run directory, equal to a local run's; a
repeated `--ablation` (or `--ablation-grid FILE`) gives one run directory per ablation."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from mer.cli import cli
from mer.errors import MerError
from mer.fuse.run import ablation_name, ablation_switches, fuse_command

pytest.importorskip("distributed")

CORPUS = "demo-n40-s0"
TWO_FOLDS = ["--protocol", "iemocap-loso", "--folds", "Ses01,Ses02"]
TINY = ["--set", "hidden=8", "--set", "batch_size=4", "--set", "max_epochs=2"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory, demo_root):
    cache = tmp_path_factory.mktemp("scheduler-cache")
    result = CliRunner().invoke(cli, ["extract", "--dataset", "demo", "--set", "corpus.size=40", "--root",
                                      str(demo_root), "--features", "mfcc40,minilm-l6", "--cache", str(cache),
                                      "--no-progress"])
    assert result.exit_code == 0, result.output
    return cache


@pytest.fixture(scope="module")
def scheduler():
    from dask.distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None,
                      silence_logs=40) as cluster:
        yield cluster.scheduler_address


def fuse(cache, out, *extra, model="concat"):
    return CliRunner().invoke(cli, ["fuse", "--model", model, "--dataset", CORPUS, "--cache", str(cache), "--out",
                                    str(out), *TINY, *extra], standalone_mode=False)


def ok(result):
    assert result.exception is None, result.output + repr(result.exception)
    return result


def same_run(a: Path, b: Path) -> None:
    """The same results and weights (the seconds each epoch took aside)."""
    for name in ("metrics.json", "predictions.csv"):
        assert (a / name).read_text() == (b / name).read_text(), name
    assert without_seconds(a / "history.json") == without_seconds(b / "history.json")
    for record in (a / "folds").iterdir():
        kept = ("checkpoint_sha256", "norm_sha256", "test", "best_epoch")
        assert {k: json.loads(record.read_text())[k] for k in kept} == \
            {k: json.loads((b / "folds" / record.name).read_text())[k] for k in kept}, record.name


def without_seconds(history_path: Path) -> dict:
    return {fold: [{k: v for k, v in epoch.items() if k != "seconds"} for epoch in epochs]
            for fold, epochs in json.loads(history_path.read_text()).items()}


def test_folds_on_a_scheduler_write_the_run_directory_of_a_local_run_and_resume(cache, scheduler, tmp_path):
    local, remote = tmp_path / "local", tmp_path / "remote"
    ok(fuse(cache, local, *TWO_FOLDS, "--device", "cpu"))
    result = ok(fuse(cache, remote, *TWO_FOLDS, "--scheduler", scheduler))
    assert "[Ses01] done: best epoch" in result.output and "[Ses02] done" in result.output
    same_run(local, remote)
    assert json.loads((remote / "config.json").read_text())["device"] == "auto"  # each worker picks its own

    (remote / "folds" / "Ses02.json").unlink()  # as a run killed before Ses02 finished
    resumed = ok(fuse(cache, remote, *TWO_FOLDS, "--scheduler", scheduler))
    assert f"[Ses01] complete in {remote}/folds/Ses01.json: loaded, not trained again" in resumed.output
    assert "[Ses01] done" not in resumed.output and "[Ses02] done" in resumed.output
    same_run(local, remote)


def test_repeated_ablation_gives_one_run_directory_per_ablation_each_as_a_single_run(cache, scheduler, tmp_path):
    grid = tmp_path / "grid"
    result = ok(fuse(cache, grid, "--ablation", "full", "--ablation", "no_self", "--scheduler", scheduler,
                     model="mcsan"))
    assert sorted(p.name for p in grid.iterdir()) == ["full", "no_self"]
    assert "[no_self/split] done" in result.output and "[full/split] done" in result.output
    for name, no_self in (("full", False), ("no_self", True)):
        config = json.loads((grid / name / "config.json").read_text())
        assert config["model_config"]["no_self"] is no_self and config["ablations"] == ([name] if no_self else [])

    single = tmp_path / "single"
    ok(fuse(cache, single, "--ablation", "no_self", "--device", "cpu", model="mcsan"))
    same_run(single, grid / "no_self")

    grid_file = tmp_path / "grid.txt"
    grid_file.write_text("# the baseline and one ablation\nfull\n\nno_self   # MCSAN without self-attention\n")
    again = ok(fuse(cache, grid, "--ablation-grid", str(grid_file), "--device", "cpu", model="mcsan"))
    for name in ("full", "no_self"):
        assert f"[{name}/split] complete in {grid / name}/folds/split.json: loaded, not trained again" in again.output
    assert "epoch 1/2" not in again.output


def test_a_grid_is_checked_before_any_run_directory_is_written(cache, tmp_path):
    unknown = fuse(cache, tmp_path / "a", "--ablation", "no_self", "--ablation", "no_such", model="mcsan")
    assert isinstance(unknown.exception, MerError) and "has no ablation 'no_such'" in str(unknown.exception)
    assert not (tmp_path / "a").exists()
    twice = fuse(cache, tmp_path / "b", "--ablation", "no_self=true", "--ablation", "no_self", model="mcsan")
    assert str(twice.exception) == "--ablation 'no_self': the grid names the run 'no_self' twice; give each run once"
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing yet\n\n")
    nothing = fuse(cache, tmp_path / "c", "--ablation-grid", str(empty), model="mcsan")
    assert str(nothing.exception) == (f"{empty}: no run in the ablation grid; write one per line, e.g. full, no_self "
                                      "or no_awa+window=30")


@pytest.mark.parametrize("extra, message", [
    (("--scheduler", "127.0.0.1:8799x"), "--scheduler 127.0.0.1:8799x: not a dask address"),
    (("--scheduler", "tcp://127.0.0.1:8799", "--workers", "2"),
     "--workers 2 with --scheduler tcp://127.0.0.1:8799: the scheduler's workers train the folds; pass one of the two"),
])
def test_a_bad_scheduler_is_refused_before_the_run_directory_is_written(cache, tmp_path, extra, message):
    result = fuse(cache, tmp_path / "run", *extra)
    assert isinstance(result.exception, MerError) and str(result.exception).startswith(message)
    assert not (tmp_path / "run").exists()


def test_ablation_specs_name_the_papers_rows_and_the_resume_command_repeats_them():
    assert ablation_switches("no_awa+window=30") == ["no_awa", "window=30"]
    assert ablation_switches("full") == [] and ablation_name([]) == "full"
    assert ablation_name(["window=30", "no_awa=true"]) == "no_awa+window=30"
    run = {"model": "mfdr", "corpus": "iemocap", "cache": "/c", "protocol": "iemocap-10fold", "folds": ["f1"],
           "protocol_options": {}, "settings": {}, "ablations": ["no_awa", "window=30"], "seed": 0, "device": "auto",
           "trainer": {}}
    assert "--ablation no_awa+window=30 --seed 0" in fuse_command(run, Path("/r"))


def test_local_workers_can_start_loader_workers(cache, tmp_path):
    """`--workers 2 --loader-workers 1`: a local cluster's worker processes are not daemonic, so a fold's
    DataLoader workers start (a daemon may not have children: this run failed with a traceback)."""
    result = ok(fuse(cache, tmp_path, *TWO_FOLDS, "--device", "cpu", "--workers", "2", "--loader-workers", "1"))
    assert "[Ses01] done" in result.output and "[Ses02] done" in result.output
    assert sorted(p.name for p in (tmp_path / "folds").iterdir()) == ["Ses01.json", "Ses02.json"]


def test_loader_workers_in_a_daemonic_dask_worker_is_a_one_line_error_with_the_fix(monkeypatch):
    import multiprocessing
    from mer.cluster import check_can_fork_workers

    check_can_fork_workers(1)  # this process may have children
    monkeypatch.setitem(multiprocessing.current_process()._config, "daemon", True)
    check_can_fork_workers(0)
    with pytest.raises(MerError, match=r"DASK_DISTRIBUTED__WORKER__DAEMON=False dask worker ADDR.*--loader-workers 0"):
        check_can_fork_workers(1)


@pytest.mark.parametrize("given,preload,batch_mib,daemon,expected", [
    (None, True, 64, False, 0), (None, False, 64, False, 1), (None, False, 1, False, 0), (None, False, 64, True, 0),
    (2, True, 1, False, 2), (0, False, 64, False, 0)])
def test_loader_workers_auto_reads_in_a_worker_only_for_large_streamed_batches(monkeypatch, given, preload, batch_mib,
                                                                               daemon, expected):
    import multiprocessing
    from types import SimpleNamespace
    from mer.fuse.run import LOADER_WORKER_MIN_BATCH_BYTES, loader_workers_for

    assert 1 << 20 < LOADER_WORKER_MIN_BATCH_BYTES <= 64 << 20
    monkeypatch.setitem(multiprocessing.current_process()._config, "daemon", daemon)
    lines = []
    job = SimpleNamespace(loader_workers=given, preload=preload, fold="f")
    assert loader_workers_for(job, batch_mib << 20, lines.append) == expected
    assert bool(lines) == (given is None and not preload)  # auto says what it chose when it streams
    if daemon and given is None:
        assert "DASK_DISTRIBUTED__WORKER__DAEMON=False" in lines[0]


def test_loader_workers_option_takes_a_count_or_auto(cache, tmp_path):
    result = CliRunner().invoke(cli, ["fuse", "--model", "concat", "--dataset", CORPUS, "--cache", str(cache),
                                      "--out", str(tmp_path), "--loader-workers", "two"])
    assert result.exit_code == 2 and "'two': give a number of processes (0, 1, 2, ...) or auto" in result.output
