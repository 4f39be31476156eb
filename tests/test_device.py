"""`--device auto` (the default of `mer extract` and `mer fuse`) takes CUDA when torch sees it, decided
where the work runs; the CPU while a GPU is there is said in one line; `--device cuda` without one is
a one-line error naming the fix. torch.cuda.is_available is monkeypatched: no test needs a GPU."""

import pytest
import torch
from click.testing import CliRunner

from mer.cli import cli
from mer.device import resolve_device
from mer.errors import MerError
from mer.extract import runner
from mer.extract.runner import ExtractConfig
from mer.fuse.run import FuseConfig, _trainer_here
from mer.fuse.trainer import TrainerConfig


@pytest.fixture
def gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def invoke(*args):
    return CliRunner().invoke(cli, list(args), standalone_mode=False)


def test_auto_is_cuda_when_present(gpu):
    assert resolve_device("auto") == "cuda" and resolve_device("cpu") == "cpu" and resolve_device("cuda:1") == "cuda:1"


def test_auto_is_cpu_without_cuda_and_cuda_is_refused_with_the_fix(no_gpu):
    assert resolve_device("auto") == "cpu"
    with pytest.raises(MerError, match=r"^--device cuda: torch .* sees no CUDA device; pass --device auto \(CUDA when "
                                       r"present\) or --device cpu$"):
        resolve_device("cuda")


def test_extract_defaults_to_auto(monkeypatch, tmp_path):
    seen = []

    def capture(config, on_report=None):
        seen.append(config)
        raise MerError("captured")

    monkeypatch.setattr(runner, "extract", capture)
    invoke("extract", "--dataset", "demo", "--features", "mfcc40", "--cache", str(tmp_path / "c"))
    assert seen[0].device == "auto" and ExtractConfig(dataset="demo", features=[], cache=tmp_path).device == "auto"


def test_extract_resolves_the_device_here_but_leaves_it_to_a_schedulers_workers(gpu, tmp_path):
    config = ExtractConfig(dataset="demo", features=["mfcc40"], cache=tmp_path)
    assert runner._placed(config).device == "cuda"
    remote = ExtractConfig(dataset="demo", features=["mfcc40"], cache=tmp_path, scheduler="tcp://host:8786")
    assert runner._placed(remote).device == "auto"


def test_extract_on_cpu_while_cuda_is_there_says_so(gpu, demo_root, tmp_path):
    result = invoke("extract", "--dataset", "demo", "--set", "corpus.size=40", "--root", str(demo_root), "--features",
                    "mfcc40", "--cache", str(tmp_path / "cache"), "--device", "cpu", "--no-progress")
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "extracting on CPU although CUDA is available: pass --device cuda (or auto, the default) to use it\n" \
        in result.stderr


@pytest.mark.parametrize("command", ["extract", "fuse"])
def test_cuda_without_cuda_fails_before_any_work(no_gpu, tmp_path, command):
    cache = tmp_path / "cache"
    args = ["--features", "mfcc40"] if command == "extract" else ["--model", "concat"]
    result = invoke(command, "--dataset", "demo", *args, "--cache", str(cache), "--device", "cuda")
    assert isinstance(result.exception, MerError) and "\n" not in str(result.exception)
    assert str(result.exception).startswith("--device cuda: torch ") and "pass --device auto" in str(result.exception)
    assert not cache.exists()


def test_fuse_on_cpu_while_cuda_is_there_says_so(gpu, tmp_path):
    lines = []
    local = FuseConfig(model="concat", corpus="demo", cache=tmp_path, trainer=TrainerConfig(device="cpu"))
    assert _trainer_here(local, lines.append).device == "cpu"
    assert lines == ["training on CPU although CUDA is available: pass --device cuda (or auto, the default) to use it"]
    auto = FuseConfig(model="concat", corpus="demo", cache=tmp_path, trainer=TrainerConfig(device="auto"))
    assert _trainer_here(auto, lines.append).device == "cuda"
    remote = FuseConfig(model="concat", corpus="demo", cache=tmp_path, trainer=TrainerConfig(device="auto"),
                        scheduler="tcp://host:8786")
    assert _trainer_here(remote, lines.append).device == "auto" and len(lines) == 1


def test_a_fold_on_a_schedulers_worker_reports_cpu_beside_a_gpu_to_the_client(demo_root, tmp_path, monkeypatch):
    """A worker has no log: its note travels back with the fold's result, the client prints it."""
    from dataclasses import replace

    from mer.cache.reader import FeatureCache
    from mer.data.protocols import make_folds
    from mer.fuse.models import tiny_config
    from mer.fuse.run import FoldJob, train_one_fold

    cache = tmp_path / "cache"
    assert invoke("extract", "--dataset", "demo", "--set", "corpus.size=40", "--root", str(demo_root), "--features",
                  "mfcc40,minilm-l6", "--cache", str(cache), "--no-progress").exit_code == 0
    corpus = "demo-n40-s0"
    fold_set = make_folds("demo", FeatureCache(cache).utterances(corpus))
    job = FoldJob("concat", replace(tiny_config("concat"), max_epochs=1), TrainerConfig(device="cpu"), cache, corpus,
                  {"audio": "mfcc40", "text": "minilm-l6"}, fold_set, fold_set.folds[0].name, True, 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert train_one_fold(job, None).notes == []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    notes = train_one_fold(job, None).notes
    assert len(notes) == 1 and notes[0].endswith("training on CPU although CUDA is available: pass --device cuda "
                                                 "(or auto, the default) to use it")
    assert train_one_fold(job, lambda line: None).notes == []  # in the client's process: said before training
