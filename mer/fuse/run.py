"""`mer fuse`: every fold of a protocol, trained and evaluated from the cache alone, written
to a run directory (config.json, metrics.json, predictions.csv, confusion.png, curves.png,
checkpoints/<fold>.safetensors, norm/<fold>.npz). Folds run in parallel on dask with `workers`.

config.json is written before training. A fold, when it finishes, writes its checkpoint, its
normalisation and then folds/<fold>.json (its results and the checksums of the other two),
each by rename: that file's presence means the fold is complete. The same command run again
skips complete folds (a fold depends only on the seed, not on what ran before), so a killed
run resumes. An --out folder holding another run is refused unless `overwrite`."""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional

import torch

from mer import __version__
from mer.cache.corpus import extract_command
from mer.cache.reader import FeatureCache
from mer.data.protocols import FoldSet, default_protocol, headline_metric, make_folds
from mer.errors import CacheError, MerError
from mer.fuse.data import FusionData
from mer.fuse.models import MODELS, build_model, make_config
from mer.fuse.models.base import FusionConfig, accepted_granularities, paper_row
from mer.fuse.report import (fold_from_record, fold_record, metrics_document, plot_confusion, plot_curves,
                             results_table, write_atomically, write_json, write_metrics, write_predictions)
from mer.fuse.trainer import FoldResult, TrainerConfig, seed_everything, train_fold
from mer.hashing import sha256_file

PRELOAD_BYTES = 2 << 30  # caches smaller than this are read into memory once per fold
RUN_ENTRIES = ("config.json", "metrics.json", "predictions.csv", "history.json", "confusion.png", "curves.png",
               "checkpoints", "norm", "folds")  # what --overwrite removes
# config.json keys that make two runs the same run (not: paths, versions, device, the --set spelling)
IDENTITY_KEYS = ("model", "corpus", "protocol", "protocol_options", "folds", "fold_ids", "seed", "labels", "features",
                 "feature_hashes", "model_config", "trainer")


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
    overwrite: bool = False  # replace a different run in `out` (else refused)
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
    inputs = getattr(config, "inputs", None) or getattr(MODELS.get(model).model_class, "inputs", ("audio", "text"))
    demo = corpus.startswith("demo")
    features = {}
    for role in ("audio", "text"):
        explicit = settings.get(f"{role}_feature")
        default = getattr(config, f"demo_{role}_feature" if demo else f"{role}_feature")
        features[role] = (explicit or default) if role in inputs else None
    return features


def resolve_features(cache: FeatureCache, corpus: str, model: str, config: FusionConfig, features: dict) -> dict:
    """Each feature as the cached config to read, of the granularity the model declares: the name as
    given when the cache holds one config of it, `name@hash` when one is picked among several. A
    missing feature, or one of another granularity, fails now with the command that makes it."""
    resolved = {}
    for role, name in features.items():
        parts = name.split("+") if name else []
        resolved[role] = "+".join(pick_config(cache, corpus, model, config, role, p.strip()) for p in parts) or None
    return resolved


def pick_config(cache: FeatureCache, corpus: str, model: str, config: FusionConfig, role: str, feature: str) -> str:
    accepted = accepted_granularities(config, role)
    name = feature.partition("@")[0]
    found = cache.configs(corpus, feature)
    if not found:
        fix = {"granularity": accepted[0]} if accepted and role == "text" else {}  # every text extractor has it
        raise CacheError(f"{cache.root / corpus}: feature {feature!r} is not in the cache; run "
                         f"{extract_command(cache.root, corpus, name, fix)}{_cached_instead(cache, corpus, role, accepted)}")
    ranked = [[f for f in found if f.spec.granularity == g] for g in accepted] if accepted else [found]
    fitting = next((group for group in ranked if group), None)
    if fitting is None:
        raise MerError(_wrong_granularity(cache, corpus, model, config, role, name, found, accepted[0]))
    if len(fitting) > 1:
        options = ", ".join(f"{name}@{f.config_hash} ({f.spec.granularity})" for f in fitting)
        raise CacheError(f"{cache.root / corpus}: {feature!r} exists in several configs {model} can read "
                         f"({options}); name one, e.g. --set {role}_feature={name}@{fitting[0].config_hash}")
    return feature if len(found) == 1 else f"{name}@{fitting[0].config_hash}"


def _cached_instead(cache: FeatureCache, corpus: str, role: str, accepted: list) -> str:
    """', or read one that is cached: --set text_feature=minilm-l6' when the cache holds a feature the model can read."""
    names = sorted({f.name for f in cache.features(corpus)
                    if f.spec.modality == role and (not accepted or f.spec.granularity in accepted)})
    if not names:
        return ""
    return f", or read one that is cached: --set {role}_feature={names[0]}" + \
        (f" (or {', '.join(names[1:])})" if len(names) > 1 else "")


def _wrong_granularity(cache: FeatureCache, corpus: str, model: str, config: FusionConfig, role: str, name: str,
                       found: list, need: str) -> str:
    have = ",".join(sorted({f.spec.granularity for f in found}))
    problem = f"{cache.root / corpus}: {model} reads {need}-level {role}, but {name} is cached at {have} level only"
    spec = found[0].spec
    if "granularity" in spec.config:  # a text encoder: the same one, with the same options, at another granularity
        options = {key: value for key, value in spec.options.items() if key != "name"}
        command = extract_command(cache.root, corpus, spec.options.get("name", name), {**options, "granularity": need})
        return f"{problem}; run {command}"
    default = model_features(model, config, corpus, {})[role]
    if default and default != name:
        return f"{problem}; pass --set {role}_feature={default} (its default), or another {need}-level feature"
    return f"{problem}; pass another feature (--set {role}_feature=NAME), or read it anyway: --set {role}_granularity={have}"


def run_fuse(cfg: FuseConfig, log: Callable[[str], None] = print) -> tuple[dict, Path]:
    cache = FeatureCache(cfg.cache)
    utterances = cache.utterances(cfg.corpus)
    protocol = cfg.protocol or default_protocol(cfg.corpus)
    fold_set = make_folds(protocol, utterances, seed=cfg.trainer.seed, **cfg.protocol_options)
    config = resolve_config(cfg)
    if config.monitor == "headline":
        config = replace(config, monitor=headline_metric(protocol, fold_set.labels is None))
    features = resolve_features(cache, cfg.corpus, cfg.model, config,
                                model_features(cfg.model, config, cfg.corpus, cfg.settings))
    folds = _chosen_folds(fold_set, cfg.folds)
    run_dir = _run_dir(cfg, protocol)
    log(f"{cfg.model} on {cfg.corpus}: protocol {protocol} ({len(folds)} fold(s)) -> {run_dir}")
    log(fold_set.summary())
    run_config = _config_document(cfg, config, features, fold_set, folds, cache)
    _claim_run_dir(run_dir, run_config, cfg.overwrite, log)
    records = {name: run_dir / "folds" / f"{name}.json" for name in folds}
    done = {name: _load_fold(run_dir, name, run_config) for name, path in records.items() if path.is_file()}
    for name in done:
        log(f"[{name}] complete in {records[name]}: loaded, not trained again")
    preload = _small_enough(cache, cfg.corpus, features)
    jobs = [FoldJob(cfg.model, config, cfg.trainer, Path(cfg.cache), cfg.corpus, features, fold_set, name, preload,
                    cfg.loader_workers) for name in folds if name not in done]
    trained = _run_jobs(jobs, cfg.workers, lambda result: _save_fold(run_dir, result, run_config), log)
    by_name = {**done, **{result.fold: result for result in trained}}
    results = [by_name[name] for name in folds]
    labels = list(fold_set.labels) if fold_set.labels else None
    extra = {"speaker_independent": fold_set.speaker_independent, "features": features, "seed": cfg.trainer.seed}
    document = metrics_document(cfg.model, cfg.corpus, protocol, results, extra)
    write_metrics(run_dir, document)
    write_json(run_dir / "history.json", {r.fold: r.history for r in results})
    write_predictions(run_dir, results, labels)
    plot_confusion(run_dir, results, labels)
    plot_curves(run_dir, results, config.monitor)
    log(results_table(document, paper_row(config, make_config(cfg.model, corpus_family(cfg.corpus)), protocol)))
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
        return Path(cfg.out)
    return Path("runs") / f"{cfg.model}-{cfg.corpus}-{protocol}-{time.strftime('%Y%m%d-%H%M%S')}"


def _claim_run_dir(run_dir: Path, run_config: dict, overwrite: bool, log) -> None:
    """Resume the same run, refuse another one (or clear it with `overwrite`), then write config.json."""
    config_path = run_dir / "config.json"
    present = [name for name in RUN_ENTRIES if (run_dir / name).is_file() or
               (run_dir / name).is_dir() and any((run_dir / name).iterdir())]
    if present and not overwrite:
        difference = _difference(config_path, run_config)
        if difference:
            raise MerError(f"{config_path}: --out holds another run ({difference}); pass --overwrite to replace it, "
                           "or give another --out")
    elif present:
        log(f"--overwrite: removing the run in {run_dir} ({', '.join(present)})")
        for name in present:
            path = run_dir / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(config_path, run_config)
    for sub in ("checkpoints", "norm", "folds"):
        (run_dir / sub).mkdir(exist_ok=True)


def _difference(config_path: Path, run_config: dict) -> Optional[str]:
    """None when config.json describes this run; else what differs, in words."""
    if not config_path.is_file():
        return "run files but no config.json"
    try:
        old = json.loads(config_path.read_text())
    except (OSError, ValueError):
        return "an unreadable config.json"
    new = json.loads(json.dumps(run_config, default=str))  # compared as both are stored
    for key in IDENTITY_KEYS:
        path = _first_difference(old.get(key), new.get(key), key)
        if path:
            return path
    return None


def _first_difference(old, new, path: str) -> Optional[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            found = _first_difference(old.get(key), new.get(key), f"{path}.{key}")
            if found:
                return found
        return None
    if old == new:
        return None
    return f"{path} {_short(old)} there, {_short(new)} now"


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _small_enough(cache: FeatureCache, corpus: str, features: dict) -> bool:
    total = 0
    for name in filter(None, features.values()):
        for part in name.split("+"):
            total += sum(p.stat().st_size for p in cache.find(corpus, part).directory.glob("shard-*.h5"))
    return total < PRELOAD_BYTES


def _config_document(cfg: FuseConfig, config: FusionConfig, features: dict, fold_set: FoldSet, folds: list[str],
                     cache: FeatureCache) -> dict:
    specs = {}
    for role, name in features.items():
        if name:
            specs[role] = [cache.find(cfg.corpus, part).spec.to_dict() for part in name.split("+")]
    trainer = {k: v for k, v in asdict(cfg.trainer).items() if k != "device"}
    return {"model": cfg.model, "corpus": cfg.corpus, "cache": str(Path(cfg.cache).resolve()),
            "protocol": fold_set.protocol, "protocol_options": cfg.protocol_options, "folds": folds,
            "fold_ids": {name: _fold_ids_digest(fold_set, name) for name in folds},
            "labels": list(fold_set.labels) if fold_set.labels else None, "features": features,
            "feature_hashes": {role: [s["config_hash"] for s in role_specs] for role, role_specs in specs.items()},
            "feature_specs": specs, "model_config": config.to_dict(), "settings": cfg.settings,
            "ablations": cfg.ablations, "trainer": trainer, "device": cfg.trainer.device, "seed": cfg.trainer.seed,
            "package_version": __version__, "torch_version": torch.__version__,
            "speaker_independent": fold_set.speaker_independent, "protocol_description": fold_set.description}


def _fold_ids_digest(fold_set: FoldSet, name: str) -> str:
    """Which utterances the fold trains, tunes and tests on: a changed corpus or cache changes it."""
    fold = next(f for f in fold_set.folds if f.name == name)
    parts = {part: list(fold.part(part)) for part in ("train", "dev", "test")}
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def run_digest(run_config: dict) -> str:
    """The run a fold belongs to: recorded in folds/<fold>.json, checked by resume and predict."""
    identity = {key: run_config.get(key) for key in IDENTITY_KEYS}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def fuse_command(run_config: dict, run_dir: Path, overwrite: bool = False) -> str:
    """The `mer fuse` command that trains (or resumes) the run config.json describes."""
    args = ["mer", "fuse", "--model", run_config["model"], "--dataset", run_config["corpus"], "--cache",
            run_config["cache"], "--protocol", run_config["protocol"], "--folds", ",".join(run_config["folds"])]
    args += [a for k, v in run_config["protocol_options"].items() for a in ("--protocol-option", f"{k}={v}")]
    args += [a for k, v in run_config["settings"].items() for a in ("--set", f"{k}={v}")]
    args += [a for ablation in run_config["ablations"] for a in ("--ablation", ablation)]
    args += ["--seed", str(run_config["seed"]), "--device", run_config["device"], "--out", str(run_dir)]
    args += ["--class-weights"] if run_config["trainer"].get("class_weights") else []
    args += ["--overwrite"] if overwrite else []
    return shlex.join(args)


def _save_fold(run_dir: Path, result: FoldResult, run_config: dict) -> None:
    """Checkpoint and normalisation first, the fold's record last: the record marks it complete."""
    checkpoint = run_dir / "checkpoints" / f"{result.fold}.safetensors"
    norm = run_dir / "norm" / f"{result.fold}.npz"
    write_atomically(checkpoint, lambda path: _save_checkpoint(path, result.state_dict))
    write_atomically(norm, lambda path: result.norm_stats.save(path))
    record = {"run": run_digest(run_config), "labels": run_config["labels"], **fold_record(result),
              "checkpoint_sha256": sha256_file(checkpoint), "norm_sha256": sha256_file(norm)}
    write_json(run_dir / "folds" / f"{result.fold}.json", record)


def _load_fold(run_dir: Path, name: str, run_config: dict) -> FoldResult:
    path = run_dir / "folds" / f"{name}.json"
    record = read_fold_record(path)
    if record.get("run") != run_digest(run_config) or record.get("fold") != name:
        raise MerError(f"{path}: a fold record of another run; pass --overwrite to start the run again")
    changed = changed_fold_file(run_dir, record)
    if changed:
        raise MerError(f"{changed}: missing or changed since fold {name} finished; to train fold {name} again: "
                       f"rm {shlex.quote(str(path))}")
    return fold_from_record(record)


def read_fold_record(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise MerError(f"{path}: unreadable fold record ({exc}); to train that fold again: "
                       f"rm {shlex.quote(str(path))}") from None


def changed_fold_file(run_dir: Path, record: dict) -> Optional[Path]:
    """The fold's checkpoint or normalisation file when missing or not the one its record names."""
    for kind, file in (("checkpoint", run_dir / "checkpoints" / f"{record['fold']}.safetensors"),
                       ("norm", run_dir / "norm" / f"{record['fold']}.npz")):
        if not file.is_file() or sha256_file(file) != record.get(f"{kind}_sha256"):
            return file
    return None


def _run_jobs(jobs: list[FoldJob], workers: int, save: Callable[[FoldResult], None], log) -> list[FoldResult]:
    """Each fold is saved the moment it finishes, so a kill loses only the folds in progress."""
    if workers <= 1 or len(jobs) <= 1:
        results = []
        for job in jobs:
            results.append(train_one_fold(job, log))
            save(results[-1])
        return results
    return _run_on_dask(jobs, workers, save, log)


def _run_on_dask(jobs: list[FoldJob], workers: int, save: Callable[[FoldResult], None], log) -> list[FoldResult]:
    from dask.distributed import Client, LocalCluster, as_completed

    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=40) as cluster, Client(cluster) as client:
        futures = [client.submit(train_one_fold, job, None, pure=False) for job in jobs]
        results = []
        for future in as_completed(futures):
            result = future.result()
            save(result)
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
        return data.loader(split, config.batch_size, shuffle=shuffle, seed=seed, num_workers=job.loader_workers,
                           batching=config.batching)

    train_loader = loader("train", True)
    refit_loader = refit_loader_of(data, config, seed) if getattr(config, "refit_on_dev", False) else None

    def batches_of(loader):
        def batches(epoch: int):
            loader.batch_sampler.set_epoch(epoch)
            return loader
        return batches

    train_targets = [data.label_of[i] for i in data.ids["train"]] if data.labels else None
    result = train_fold(model, config, job.trainer, job.fold, batches_of(train_loader), lambda: loader("dev", False),
                        lambda: loader("test", False), list(data.labels) if data.labels else None,
                        train_targets, log, refit_batches=batches_of(refit_loader) if refit_loader else None,
                        train_size=len(data.ids["train"]), refit_size=len(data.ids["train"]) + len(data.ids["dev"]))
    result.norm_stats = data.norm_stats
    return result


def refit_loader_of(data: FusionData, config: FusionConfig, seed: int):
    """Shuffled batches of train + dev together (the refit after dev chose the epoch count); the inputs
    stay normalised with the training split's statistics."""
    from torch.utils.data import DataLoader

    from mer.fuse.data import BucketBatchSampler, FusionDataset

    dataset = FusionDataset(data.samples["train"] + data.samples["dev"], data.sample_unit, data.sources, data.lengths,
                            data.label_of, data.memory, data.max_open_shards)
    sampler = BucketBatchSampler(dataset.sort_keys(), config.batch_size, True, seed, 4, False, config.batching)
    return DataLoader(dataset, collate_fn=data.collate, batch_sampler=sampler)


def _save_checkpoint(path: Path, state_dict: dict) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path))
