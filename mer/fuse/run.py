"""`mer fuse`: every fold of a protocol, trained and evaluated from the cache alone, written
to a run directory (config.json, metrics.json, predictions.csv, confusion.png, curves.png,
checkpoints/<fold>.safetensors, norm/<fold>.npz). Folds run in parallel on dask with `workers`."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from mer import __version__
from mer.cache.reader import FeatureCache
from mer.data.protocols import FoldSet, default_protocol, make_folds
from mer.errors import MerError
from mer.fuse.data import FusionData
from mer.fuse.models import MODELS, build_model, make_config
from mer.fuse.models.base import FusionConfig
from mer.fuse.report import (metrics_document, plot_confusion, plot_curves, results_table, write_metrics,
                             write_predictions)
from mer.fuse.trainer import FoldResult, TrainerConfig, seed_everything, train_fold

PRELOAD_BYTES = 2 << 30  # caches smaller than this are read into memory once per fold


@dataclass
class FuseConfig:
    model: str
    corpus: str
    cache: Path
    protocol: Optional[str] = None
    protocol_options: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)  # model config overrides (`--set key=value`)
    ablations: list[str] = field(default_factory=list)  # `--ablation no_self`, `--ablation order=cross_self`
    out: Optional[Path] = None
    workers: int = 1
    folds: Optional[list[str]] = None  # a subset of the protocol's folds, by name
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    loader_workers: int = 0


@dataclass
class FoldJob:
    """Everything one fold needs; plain data, so it travels to a dask worker."""

    model: str
    config: FusionConfig
    trainer: TrainerConfig
    cache: Path
    corpus: str
    features: dict
    fold_set: FoldSet
    fold: str
    preload: bool
    loader_workers: int


def corpus_family(corpus: str) -> str:
    """The key of the papers' per-corpus settings: demo-n100-s1 -> demo."""
    return "demo" if corpus.startswith("demo") else corpus


def resolve_config(cfg: FuseConfig) -> FusionConfig:
    entry = MODELS.get(cfg.model)
    overrides = dict(cfg.settings)
    for ablation in cfg.ablations:
        name, sep, value = ablation.partition("=")
        if name not in entry.config_class.ablations:
            known = ", ".join(sorted(entry.config_class.ablations)) or "none"
            raise MerError(f"--ablation {ablation!r}: {cfg.model} has no ablation {name!r}; its ablations: {known}")
        overrides[name] = value if sep else "true"
    return make_config(cfg.model, corpus_family(cfg.corpus), **overrides)


def model_features(model: str, config: FusionConfig, corpus: str, settings: dict) -> dict:
    """{"audio": name or None, "text": ...}: the paper's features, the demo's substitutes on a
    demo corpus, or what `--set audio_feature=...` names."""
    inputs = getattr(MODELS.get(model).model_class, "inputs", ("audio", "text"))
    demo = corpus.startswith("demo")
    features = {}
    for role in ("audio", "text"):
        explicit = settings.get(f"{role}_feature")
        default = getattr(config, f"demo_{role}_feature" if demo else f"{role}_feature")
        features[role] = (explicit or default) if role in inputs else None
    return features


def run_fuse(cfg: FuseConfig, log: Callable[[str], None] = print) -> tuple[dict, Path]:
    cache = FeatureCache(cfg.cache)
    utterances = cache.utterances(cfg.corpus)
    protocol = cfg.protocol or default_protocol(cfg.corpus)
    fold_set = make_folds(protocol, utterances, seed=cfg.trainer.seed, **cfg.protocol_options)
    config = resolve_config(cfg)
    features = model_features(cfg.model, config, cfg.corpus, cfg.settings)
    for role, name in features.items():  # a missing feature fails now, naming the extract command
        if name:
            for part in name.split("+"):
                cache.find(cfg.corpus, part)
    folds = _chosen_folds(fold_set, cfg.folds)
    run_dir = _run_dir(cfg, protocol)
    log(f"{cfg.model} on {cfg.corpus}: protocol {protocol} ({len(folds)} fold(s)) -> {run_dir}")
    log(fold_set.summary())
    preload = _small_enough(cache, cfg.corpus, features)
    jobs = [FoldJob(cfg.model, config, cfg.trainer, Path(cfg.cache), cfg.corpus, features, fold_set, name, preload,
                    cfg.loader_workers) for name in folds]
    _write_config(run_dir, cfg, config, features, fold_set, cache)
    results = _run_jobs(jobs, cfg.workers, run_dir, log)
    labels = list(fold_set.labels) if fold_set.labels else None
    extra = {"speaker_independent": fold_set.speaker_independent, "features": features, "seed": cfg.trainer.seed}
    document = metrics_document(cfg.model, cfg.corpus, protocol, results, extra)
    write_metrics(run_dir, document)
    (run_dir / "history.json").write_text(json.dumps({r.fold: r.history for r in results}, indent=1))
    write_predictions(run_dir, results, labels)
    plot_confusion(run_dir, results, labels)
    plot_curves(run_dir, results, config.monitor)
    log(results_table(document, type(config).paper_results.get(protocol)))
    return document, run_dir


def _chosen_folds(fold_set: FoldSet, wanted: Optional[list[str]]) -> list[str]:
    names = [f.name for f in fold_set.folds]
    if not wanted:
        return names
    unknown = [w for w in wanted if w not in names]
    if unknown:
        raise MerError(f"--folds {','.join(unknown)}: protocol {fold_set.protocol} has folds {', '.join(names)}")
    return [n for n in names if n in wanted]


def _run_dir(cfg: FuseConfig, protocol: str) -> Path:
    if cfg.out is not None:
        run_dir = Path(cfg.out)
    else:
        run_dir = Path("runs") / f"{cfg.model}-{cfg.corpus}-{protocol}-{time.strftime('%Y%m%d-%H%M%S')}"
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    (run_dir / "norm").mkdir(exist_ok=True)
    return run_dir


def _small_enough(cache: FeatureCache, corpus: str, features: dict) -> bool:
    total = 0
    for name in filter(None, features.values()):
        for part in name.split("+"):
            total += sum(p.stat().st_size for p in cache.find(corpus, part).directory.glob("shard-*.h5"))
    return total < PRELOAD_BYTES


def _write_config(run_dir: Path, cfg: FuseConfig, config: FusionConfig, features: dict, fold_set: FoldSet,
                  cache: FeatureCache) -> None:
    specs = {}
    for role, name in features.items():
        if name:
            specs[role] = [cache.find(cfg.corpus, part).spec.to_dict() for part in name.split("+")]
    document = {"model": cfg.model, "corpus": cfg.corpus, "cache": str(Path(cfg.cache).resolve()),
                "protocol": fold_set.protocol, "protocol_options": cfg.protocol_options,
                "labels": list(fold_set.labels) if fold_set.labels else None, "features": features,
                "feature_specs": specs, "model_config": config.to_dict(), "settings": cfg.settings,
                "ablations": cfg.ablations, "trainer": asdict(cfg.trainer), "seed": cfg.trainer.seed,
                "package_version": __version__, "torch_version": torch.__version__,
                "speaker_independent": fold_set.speaker_independent, "protocol_description": fold_set.description}
    (run_dir / "config.json").write_text(json.dumps(document, indent=1, default=str))


def _run_jobs(jobs: list[FoldJob], workers: int, run_dir: Path, log) -> list[FoldResult]:
    if workers <= 1:
        results = [train_one_fold(job, log) for job in jobs]
    else:
        results = _run_on_dask(jobs, workers, log)
    for result in results:
        _save_checkpoint(run_dir / "checkpoints" / f"{result.fold}.safetensors", result.state_dict)
        result.norm_stats.save(run_dir / "norm" / f"{result.fold}.npz")
    return results


def _run_on_dask(jobs: list[FoldJob], workers: int, log) -> list[FoldResult]:
    from dask.distributed import Client, LocalCluster

    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=40) as cluster, Client(cluster) as client:
        futures = [client.submit(train_one_fold, job, None, pure=False) for job in jobs]
        results = []
        for job, future in zip(jobs, futures):
            result = future.result()
            log(f"[{result.fold}] done: best epoch {result.best_epoch + 1}, test "
                + " ".join(f"{k}={v:.4f}" for k, v in result.test.items() if isinstance(v, float)))
            results.append(result)
    return results


def train_one_fold(job: FoldJob, log: Optional[Callable[[str], None]] = print) -> FoldResult:
    log = log or (lambda line: None)
    config = job.config
    seed_everything(job.trainer.seed, job.trainer.deterministic)  # before the model's initial weights are drawn
    data = FusionData.from_fold_set(job.cache, job.corpus, job.features["audio"], job.features["text"], job.fold_set,
                                    job.fold, sample_unit=config.sample_unit, max_audio_frames=config.max_audio_frames,
                                    max_text_len=config.max_text_len, normalize=config.normalize_inputs,
                                    preload=job.preload)
    for line in data.summary().splitlines():
        log(f"[{job.fold}] {line}")
    model = build_model(job.model, data.num_classes, data.input_dims, config)
    seed = job.trainer.seed

    def loader(split: str, shuffle: bool):
        return data.loader(split, config.batch_size, shuffle=shuffle, seed=seed, num_workers=job.loader_workers)

    train_loader = loader("train", True)

    def train_batches(epoch: int):
        train_loader.batch_sampler.set_epoch(epoch)
        return train_loader

    train_targets = [data.label_of[i] for i in data.ids["train"]] if data.labels else None
    result = train_fold(model, config, job.trainer, job.fold, train_batches, lambda: loader("dev", False),
                        lambda: loader("test", False), list(data.labels) if data.labels else None,
                        train_targets, log)
    result.norm_stats = data.norm_stats
    return result


def _save_checkpoint(path: Path, state_dict: dict) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path))
