"""`mer fuse`: every fold of a protocol, trained and evaluated from the cache alone, written
to a run directory (config.json, metrics.json, predictions.csv, confusion.png, curves.png,
checkpoints/<fold>.safetensors, norm/<fold>.npz). Folds run in parallel on dask with `workers`, or
on an existing dask cluster with `scheduler`; an ablation grid is several runs, one directory each,
whose (run, fold) tasks share those workers. This process, never a worker, writes the run directories:
a worker reads the cache and returns the fold's results.

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
import socket
import time
import uuid
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional

import torch

from mer import __version__
from mer.cache.corpus import extract_command
from mer.cache.layout import existing_cache_folder
from mer.cache.reader import FeatureCache
from mer.cache.transcripts import find_text_source, read_wer
from mer.cluster import check_can_fork_workers, check_scheduler_address, daemonic, dask_client
from mer.data.protocols import FoldSet, ProtocolWarning, default_protocol, headline_metric, make_folds
from mer.device import cpu_note, resolve_device
from mer.errors import CacheError, MerError
from mer.finetune_run import is_finetuned
from mer.fuse.data import FusionData
from mer.fuse.finetuned import fold_features
from mer.fuse.models import MODELS, apply_overrides, build_model, make_config
from mer.fuse.models.base import FusionConfig, accepted_granularities, paper_row
from mer.fuse.report import (digest_of_test_ids, fold_from_record, fold_record, metrics_document, plot_confusion,
                             plot_curves, results_table, write_atomically, write_json, write_metrics, write_predictions)
from mer.fuse.trainer import FoldResult, TrainerConfig, seed_everything, train_fold
from mer.hashing import sha256_file

# auto: a loader worker for streamed batches of at least this many stored bytes. Below it, its hand-off (about 2.5 ms
# a batch on 2 cores, measured with word-level batches of 32) costs more than the reading it takes off the trainer.
LOADER_WORKER_MIN_BATCH_BYTES = 4 << 20
PRELOAD_BYTES = 2 << 30  # memory for preloaded features, shared by the folds running at once (FuseConfig.preload_budget)
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
    ablations: list[str] = field(default_factory=list)  # this run's switches, together: no_awa, window=30
    out: Optional[Path] = None
    overwrite: bool = False  # replace a different run in `out` (else refused)
    workers: int = 1  # > 1: folds in parallel on a local dask cluster of this many processes
    scheduler: Optional[str] = None  # address of an existing dask.distributed scheduler that runs the folds
    folds: Optional[list[str]] = None  # a subset of the protocol's folds, by name
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    loader_workers: Optional[int] = None  # DataLoader processes per fold; None: auto (loader_workers_for)
    preload_budget: int = PRELOAD_BYTES  # features the folds running at once may hold in memory; 0: always stream


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
    loader_workers: Optional[int]  # None: auto


@dataclass
class PlannedRun:
    """One run directory: what it trains, the folds already complete in it and the jobs for the others."""

    cfg: FuseConfig
    config: FusionConfig
    protocol: str
    fold_set: FoldSet
    folds: list[str]
    features: dict
    run_dir: Path
    run_config: dict
    label: str = ""  # the run's name in a grid's log lines ("no_self"); "" for a run alone
    fold_features: dict = field(default_factory=dict)  # fold -> {role: feature}: `features` with finetuned: resolved
    done: dict = field(default_factory=dict)  # fold name -> FoldResult
    jobs: list[FoldJob] = field(default_factory=list)
    report: Optional[tuple[dict, Path]] = None  # (metrics document, run directory) once every fold is in


FULL = "full"  # the ablation spec of the model as it is


def corpus_family(corpus: str) -> str:
    """The key of the papers' per-corpus settings: demo-n100-s1 -> demo."""
    return "demo" if corpus.startswith("demo") else corpus


def resolve_config(cfg: FuseConfig) -> FusionConfig:
    """The model's config for the corpus, then `--set`, then the ablation switches (each error naming its option)."""
    entry = MODELS.get(cfg.model)
    switches = {}
    for ablation in cfg.ablations:
        name, sep, value = ablation.partition("=")
        if name not in entry.config_class.ablations:
            known = ", ".join(sorted(entry.config_class.ablations)) or "none"
            raise MerError(f"--ablation {ablation!r}: {cfg.model} has no ablation {name!r}; its ablations: {known}")
        switches[name] = value if sep else "true"
    return apply_overrides(make_config(cfg.model, corpus_family(cfg.corpus), **cfg.settings), switches, "--ablation")


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
    resolved, problems = {}, []
    for role, name in features.items():
        parts = name.split("+") if name else []
        try:
            resolved[role] = "+".join(p.strip() if is_finetuned(p.strip()) else  # one config per fold: fold_features
                                      pick_config(cache, corpus, model, config, role, p.strip()) for p in parts) or None
        except MerError as exc:  # both inputs' problems in one message, not one per attempt
            problems.append(exc)
    if problems:
        raise type(problems[0])("; and ".join(str(p) for p in problems))
    return resolved


def pick_config(cache: FeatureCache, corpus: str, model: str, config: FusionConfig, role: str, feature: str) -> str:
    accepted = accepted_granularities(config, role)
    name = feature.partition("@")[0]
    found = cache.configs(corpus, feature)
    if not found:
        fix = {"granularity": accepted[0]} if accepted and role == "text" else {}  # every text extractor has it
        raise CacheError(f"{cache.root / corpus}: feature {feature!r} is not in the cache; "
                         f"{_without_audio(cache, corpus, role)}run {extract_command(cache.root, corpus, name, fix)}"
                         f"{_cached_instead(cache, corpus, role, accepted)}")
    if all(f.spec.reads != role for f in found):
        raise MerError(f"{cache.root / corpus}: {name} is {A_MODALITY[found[0].spec.reads]} feature, given as "
                       f"{model}'s {role} input; pass --set {role}_feature=NAME with {A_MODALITY[role]} feature"
                       f"{_cached_instead(cache, corpus, role, accepted)}")
    ranked = [[f for f in found if f.spec.granularity == g] for g in accepted] if accepted else [found]
    fitting = next((group for group in ranked if group), None)
    if fitting is None:
        raise MerError(_another_config_fits(cache, corpus, model, role, feature, accepted)
                       or _wrong_granularity(cache, corpus, model, role, name, found, accepted[0]))
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


A_MODALITY = {"audio": "an audio", "text": "a text"}


def _without_audio(cache: FeatureCache, corpus: str, role: str) -> str:
    """For an audio feature of a corpus read from its transcripts alone (no clips): say that the clips
    come first, or the command below fails on the missing audio."""
    if role != "audio" or any(u.audio_path for u in cache.utterances(corpus)):
        return ""
    return f"{corpus} was read without audio (no utterance has a clip): put the clips in its folder, then "


def _another_config_fits(cache: FeatureCache, corpus: str, model: str, role: str, feature: str,
                         accepted: list) -> str:
    """For a `name@hash` of the wrong granularity: the cached config of the same feature that fits, if any."""
    name, _, config_hash = feature.partition("@")
    fitting = [f for f in cache.configs(corpus, name) if f.spec.granularity in accepted] if config_hash else []
    if not fitting:
        return ""
    other = fitting[0]
    return (f"{cache.root / corpus}: {model} reads {accepted[0]}-level {role}, but {feature} is at "
            f"{cache.configs(corpus, feature)[0].spec.granularity} level; {name} is also cached at "
            f"{other.spec.granularity} level: --set {role}_feature={name}@{other.config_hash}")


def _wrong_granularity(cache: FeatureCache, corpus: str, model: str, role: str, name: str,
                       found: list, need: str) -> str:
    have = ",".join(sorted({f.spec.granularity for f in found}))
    problem = f"{cache.root / corpus}: {model} reads {need}-level {role}, but {name} is cached at {have} level only"
    spec = found[0].spec
    if "granularity" in spec.config:  # a text encoder: the same one, with the same options, at another granularity
        options = {key: value for key, value in spec.options.items() if key != "name"}
        command = extract_command(cache.root, corpus, spec.options.get("name", name), {**options, "granularity": need})
        return f"{problem}; run {command}"
    # The registered default, not the config the user's --set built (which names this very feature).
    default = model_features(model, make_config(model, corpus_family(corpus)), corpus, {})[role]
    if default and default != name:
        return f"{problem}; pass --set {role}_feature={default} (its default), or another {need}-level feature"
    return f"{problem}; pass another feature (--set {role}_feature=NAME), or read it anyway: --set {role}_granularity={have}"


def run_fuse(cfg: FuseConfig, log: Callable[[str], None] = print) -> tuple[dict, Path]:
    """One run, its ablation switches together, into `cfg.out`."""
    return run_all([cfg], log)[0]


def run_ablation_grid(cfg: FuseConfig, specs: list[str],
                      log: Callable[[str], None] = print) -> list[tuple[dict, Path]]:
    """One run per ablation spec ("no_self", "no_awa+window=30", "full"), each into <out>/<spec>: the run
    directory `mer fuse --ablation SPEC --out <out>/<spec>` would write, resumed the same way."""
    return run_all(grid_configs(cfg, specs), log, labelled=True)


def run_all(cfgs: list[FuseConfig], log: Callable[[str], None] = print,
            labelled: bool = False) -> list[tuple[dict, Path]]:
    """Runs of one command (same cache, corpus, workers): every run is checked before any directory is
    touched; their folds train as one pool of (run, fold) tasks; each fold is saved as it finishes and each
    run's report written when its last fold is in."""
    trainer = _trainer_here(cfgs[0], log)
    existing_cache_folder(cfgs[0].cache)
    cfgs = [replace(cfg, trainer=trainer) for cfg in cfgs]
    cache = FeatureCache(cfgs[0].cache)
    runs = [_plan(cfg, cache, cfg.out.name if labelled else "") for cfg in cfgs]
    for run in runs:
        _open(run, cache, log)

    def finish_if_complete(run: PlannedRun) -> None:
        if len(run.done) == len(run.folds):
            run.report = _finish(run, log)

    def saved(run: PlannedRun, result: FoldResult) -> None:
        _save_fold(run.run_dir, result, run.run_config)
        run.done[result.fold] = result
        finish_if_complete(run)

    for run in runs:
        finish_if_complete(run)
    try:
        _train([(run, job) for run in runs for job in run.jobs], cfgs[0], saved, log)
    except KeyboardInterrupt:
        for run in (run for run in runs if run.report is None):
            log(f"interrupted: {len(run.done)} of {len(run.folds)} fold(s) saved in {run.run_dir}; resume with "
                f"{fuse_command(run.run_config, run.run_dir)}")
        raise
    return [run.report for run in runs]


def _trainer_here(cfg: FuseConfig, log) -> TrainerConfig:
    """The device resolved here, before any work, unless a scheduler's workers train (each resolves its own)."""
    if cfg.scheduler:
        check_scheduler_address(cfg.scheduler)
        if cfg.workers > 1:
            raise MerError(f"--workers {cfg.workers} with --scheduler {cfg.scheduler}: the scheduler's workers train "
                           "the folds; pass one of the two")
        return cfg.trainer
    device = resolve_device(cfg.trainer.device)
    note = cpu_note(device, "training")
    if note:
        log(note)
    return replace(cfg.trainer, device=device)


def _plan(cfg: FuseConfig, cache: FeatureCache, label: str) -> PlannedRun:
    """The run's resolved config, features, folds and config.json; nothing is written yet."""
    utterances = cache.utterances(cfg.corpus)
    protocol = cfg.protocol or default_protocol(cfg.corpus)
    with warnings.catch_warnings():  # said once, in the fold set's summary the run logs
        warnings.simplefilter("ignore", ProtocolWarning)
        fold_set = make_folds(protocol, utterances, seed=cfg.trainer.seed, **cfg.protocol_options)
    config = resolve_config(cfg)
    if config.monitor == "headline":
        config = replace(config, monitor=headline_metric(protocol, fold_set.labels is None, bool(fold_set.dimensions)))
    features = resolve_features(cache, cfg.corpus, cfg.model, config,
                                model_features(cfg.model, config, cfg.corpus, cfg.settings))
    folds = chosen_folds(fold_set, cfg.folds)
    per_fold = fold_features(cache, cfg.corpus, cfg.model, config, features, fold_set,
                             {name: fold_ids_digest(fold_set, name) for name in folds})
    run_config = _config_document(cfg, config, features, per_fold, fold_set, folds, cache)
    return PlannedRun(cfg, config, protocol, fold_set, folds, features, _run_dir(cfg, protocol), run_config, label,
                      fold_features=per_fold)


def _open(run: PlannedRun, cache: FeatureCache, log) -> None:
    """Claim the run directory, load its complete folds, and make the jobs of the others."""
    cfg = run.cfg
    log(f"{cfg.model} on {cfg.corpus}: protocol {run.protocol} ({len(run.folds)} fold(s)) -> {run.run_dir}")
    log(run.fold_set.summary())
    _claim_run_dir(run.run_dir, run.run_config, cfg.overwrite, log)
    records = {name: run.run_dir / "folds" / f"{name}.json" for name in run.folds}
    run.done = {name: _load_fold(run.run_dir, name, run.run_config) for name, path in records.items() if path.is_file()}
    for name in run.done:
        log(f"[{_tag(run, name)}] complete in {records[name]}: loaded, not trained again")
    preload = _small_enough(cache, cfg, run.fold_features[run.folds[0]], log)
    cache_path = Path(cfg.cache).resolve()  # a worker may run elsewhere: the path as every worker must see it
    run.jobs = [FoldJob(cfg.model, run.config, cfg.trainer, cache_path, cfg.corpus, run.fold_features[name],
                        run.fold_set, name, preload, cfg.loader_workers) for name in run.folds if name not in run.done]


def _finish(run: PlannedRun, log) -> tuple[dict, Path]:
    """metrics.json, history.json, predictions.csv and the plots, from the run's complete folds."""
    cfg, run_dir = run.cfg, run.run_dir
    results = [run.done[name] for name in run.folds]
    labels = list(run.fold_set.labels) if run.fold_set.labels else None
    extra = {"speaker_independent": run.fold_set.speaker_independent, "merged": run.fold_set.merged,
             "features": run.features,
             "seed": cfg.trainer.seed, "text_sources": {source: record["wer"] and record["wer"]["wer"]
                                                        for source, record in run.run_config["text_sources"].items()}}
    document = metrics_document(cfg.model, cfg.corpus, run.protocol, results, extra)
    write_metrics(run_dir, document)
    write_json(run_dir / "history.json", {r.fold: r.history for r in results})
    write_predictions(run_dir, results, labels, run.fold_set.dimensions)
    plot_confusion(run_dir, results, labels)
    plot_curves(run_dir, results, run.config.monitor)
    if run.label:
        log(f"{run.label}: {run_dir}")
    paper = paper_row(run.config, make_config(cfg.model, corpus_family(cfg.corpus)), run.protocol)
    log(results_table(document, paper))
    return document, run_dir


def _tag(run: PlannedRun, fold: str) -> str:
    """A fold's name in log lines: "Ses01", or "no_self/Ses01" in a grid."""
    return f"{run.label}/{fold}" if run.label else fold


def ablation_switches(spec: str) -> list[str]:
    """"no_awa+window=30" -> ["no_awa", "window=30"] (the papers' row names); "full" -> []."""
    return [] if spec.strip() == FULL else [part.strip() for part in spec.split("+") if part.strip()]


def ablation_name(switches: list[str]) -> str:
    """A grid run's directory name: its switches sorted, "=true" left out; "full" for none."""
    return "+".join(sorted(s.removesuffix("=true") for s in switches)) or FULL


def grid_configs(cfg: FuseConfig, specs: list[str]) -> list[FuseConfig]:
    """One config per ablation spec, its `out` the grid's folder (`cfg.out`, or a new one) / its name."""
    base = Path(cfg.out) if cfg.out is not None else _run_dir(cfg, cfg.protocol or default_protocol(cfg.corpus))
    configs: dict[str, FuseConfig] = {}
    for spec in specs:
        switches = ablation_switches(spec)
        name = ablation_name(switches)
        if name in configs:
            raise MerError(f"--ablation {spec!r}: the grid names the run {name!r} twice; give each run once")
        configs[name] = replace(cfg, ablations=switches, out=base / name)
    return list(configs.values())


def read_ablation_grid(path: Path, cfg: Optional[FuseConfig] = None) -> list[str]:
    """A grid file: one run per line, written as `--ablation` takes it; `#` starts a comment. With `cfg`,
    each line is checked against its model now, an error naming the file and line."""
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise MerError(f"{path}: unreadable ablation grid ({exc}); write one run per line, e.g. no_self") from None
    specs = [line.partition("#")[0].strip() for line in lines]
    if not any(specs):
        raise MerError(f"{path}: no run in the ablation grid; write one per line, e.g. full, no_self or "
                       "no_awa+window=30")
    for number, spec in enumerate(specs, 1):
        try:
            if spec and cfg is not None:
                resolve_config(replace(cfg, ablations=ablation_switches(spec)))
        except MerError as exc:
            raise MerError(f"{path} line {number}: {exc}") from None
    return [spec for spec in specs if spec]


def chosen_folds(fold_set: FoldSet, wanted: Optional[list[str]]) -> list[str]:
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


def _small_enough(cache: FeatureCache, cfg: FuseConfig, features: dict, log) -> bool:
    """Whether each fold preloads its features: they must fit its share of `cfg.preload_budget`, which the
    `workers` folds running at once on this machine split; else a fold streams pools of whole shards
    (mer.fuse.data.ShardStream), its memory bounded by the pool. The choice is logged."""
    total = 0
    for name in filter(None, features.values()):
        for part in name.split("+"):
            total += sum(p.stat().st_size for p in cache.find(cfg.corpus, part).directory.glob("shard-*.h5"))
    at_once = max(1, cfg.workers)
    share = cfg.preload_budget // at_once
    preload = total < share
    how = "each fold reads them into memory once" if preload else \
        "each fold reads them in pools of whole shards, its memory bounded by the pool"
    log(f"input: {_size(total)} of cached features, {_size(share)} of preload budget per fold "
        f"({_size(cfg.preload_budget)} / {at_once} fold(s) at once): {how}")
    return preload


def _size(n: int) -> str:
    return f"{n / 2 ** 30:.1f} GiB" if n >= 2 ** 30 else f"{n / 2 ** 20:.1f} MiB"


def _config_document(cfg: FuseConfig, config: FusionConfig, features: dict, per_fold: dict, fold_set: FoldSet,
                     folds: list[str], cache: FeatureCache) -> dict:
    """`feature_specs` are the first fold's; with a finetuned: feature, whose folds differ in their weights,
    `fold_feature_specs` holds each fold's (mer predict rebuilds each fold's own extractor)."""
    def specs_of(fold_features: dict) -> dict:
        return {role: [cache.find(cfg.corpus, part).spec.to_dict() for part in name.split("+")]
                for role, name in fold_features.items() if name}
    specs = specs_of(per_fold[folds[0]])
    trainer = {k: v for k, v in asdict(cfg.trainer).items() if k != "device"}
    return {"model": cfg.model, "corpus": cfg.corpus, "cache": str(Path(cfg.cache).resolve()),
            "protocol": fold_set.protocol, "protocol_options": cfg.protocol_options, "folds": folds,
            "fold_ids": {name: fold_ids_digest(fold_set, name) for name in folds},
            "fold_test_ids": {f.name: digest_of_test_ids(f.test_ids) for f in fold_set.folds if f.name in folds},
            "labels": list(fold_set.labels) if fold_set.labels else None, "dimensions": list(fold_set.dimensions),
            "features": features,
            **({"fold_features": per_fold, "fold_feature_specs": {name: specs_of(per_fold[name]) for name in folds}}
               if per_fold[folds[0]] != features else {}),
            "feature_hashes": {role: [s["config_hash"] for s in role_specs] for role, role_specs in specs.items()},
            "feature_specs": specs, "model_config": config.to_dict(), "settings": cfg.settings,
            "ablations": cfg.ablations, "trainer": trainer, "device": cfg.trainer.device, "seed": cfg.trainer.seed,
            "package_version": __version__, "torch_version": torch.__version__,
            "speaker_independent": fold_set.speaker_independent, "protocol_description": fold_set.description,
            "text_sources": _asr_text_sources(cache, cfg.corpus, specs.get("text", []))}


def _asr_text_sources(cache: FeatureCache, corpus: str, text_specs: list[dict]) -> dict:
    """asr:NAME@HASH -> {"asr_spec", "wer"} for each ASR text source the text features read: the ASR
    config `mer predict` transcribes with, and the WER `mer transcribe` measured. Empty: reference text."""
    sources = {}
    for spec in text_specs:
        source = spec["config"].get("text_source")
        if source and source not in sources:
            info = find_text_source(cache.root, corpus, source)
            sources[source] = {"asr_spec": info.spec.to_dict(), "wer": read_wer(info.directory)}
    return sources


def fold_ids_digest(fold_set: FoldSet, name: str) -> str:
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
    args += ["--ablation", "+".join(run_config["ablations"])] if run_config["ablations"] else []
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


def _train(tasks: list[tuple[PlannedRun, FoldJob]], cfg: FuseConfig, saved: Callable, log) -> None:
    """Each fold is saved the moment it finishes, so a kill loses only the folds in progress."""
    if tasks and (cfg.scheduler or (cfg.workers > 1 and len(tasks) > 1)):
        _train_on_dask(tasks, cfg, saved, log)
        return
    for run, job in tasks:
        if run.label and job is run.jobs[0]:
            log(f"[{run.label}] training {len(run.jobs)} fold(s) into {run.run_dir}")
        saved(run, train_one_fold(job, log))


def _train_on_dask(tasks: list[tuple[PlannedRun, FoldJob]], cfg: FuseConfig, saved: Callable, log) -> None:
    """One dask task per (run, fold). A fold that fails does not stop the others: its error is raised once
    they are all saved (with a scheduler, workers share the cluster with other users)."""
    from dask.distributed import as_completed

    failure = None
    with dask_client(cfg.scheduler, cfg.workers) as client:
        owner = {client.submit(train_one_fold, job, None, pure=False, key=_task_key(run, job)): (run, job)
                 for run, job in tasks}
        for future in as_completed(list(owner)):
            run, job = owner.pop(future)
            try:
                result = future.result()
            except Exception as exc:  # noqa: BLE001 (raised below, after the other folds)
                same = failure is not None and str(exc) == str(failure)
                log(f"[{_tag(run, job.fold)}] failed" + (": the same error" if same else f": {exc}"))
                failure = failure or exc
                continue
            log(f"[{_tag(run, result.fold)}] done: best epoch {result.best_epoch + 1}, test "
                + " ".join(f"{k}={v:.4f}" for k, v in result.test.items() if isinstance(v, float)))
            for note in result.notes if cfg.scheduler else ():  # a local cluster's: said once before training
                log(f"[{_tag(run, result.fold)}] {note}")
            saved(run, result)
    if failure is not None:
        raise failure


def _task_key(run: PlannedRun, job: FoldJob) -> str:
    return f"fuse-{job.model}-{_tag(run, job.fold)}-{uuid.uuid4().hex[:8]}"


def _cache_seen_here(cache: Path) -> None:
    """On a dask worker, a cache the client sees but this machine does not is said as such (the client
    checked its own folder before sending any fold)."""
    if not Path(cache).is_dir():
        raise CacheError(f"{cache}: no such folder on {socket.gethostname()}, where this fold runs: the dask "
                         "workers must see the cache at the client's absolute path (a shared file system); "
                         "or train here, without --scheduler")


def train_one_fold(job: FoldJob, log: Optional[Callable[[str], None]] = print) -> FoldResult:
    """One fold, here or on a dask worker (which resolves `--device auto` to its own device)."""
    on_worker, log = log is None, log or (lambda line: None)
    _cache_seen_here(job.cache)
    job = replace(job, trainer=replace(job.trainer, device=resolve_device(job.trainer.device)))
    if job.loader_workers is not None:
        check_can_fork_workers(job.loader_workers)
    config = job.config
    seed_everything(job.trainer.seed, job.trainer.deterministic)  # before the model's initial weights are drawn
    data = FusionData.from_fold_set(job.cache, job.corpus, job.features["audio"], job.features["text"], job.fold_set,
                                    job.fold, sample_unit=config.sample_unit, max_audio_frames=config.max_audio_frames,
                                    max_text_len=config.max_text_len, normalize=config.normalize_inputs,
                                    preload=job.preload)
    for line in data.summary().splitlines():
        log(f"[{job.fold}] {line}")
    job = replace(job, loader_workers=loader_workers_for(job, data.batch_bytes("train", config.batch_size), log))
    model = build_model(job.model, data.num_classes, data.input_dims, config)
    seed = job.trainer.seed

    def loader(split: str, shuffle: bool):
        return data.loader(split, config.batch_size, shuffle=shuffle, seed=seed, num_workers=job.loader_workers,
                           batching=config.batching)

    train_loader = loader("train", True)
    refit_loader = refit_loader_of(data, config, seed, job.loader_workers) \
        if getattr(config, "refit_on_dev", False) else None

    def batches_of(loader):
        def batches(epoch: int):
            loader.set_epoch(epoch)
            return loader
        return batches

    train_targets = [data.label_of[i] for i in data.ids["train"]] if data.labels else None
    # built once: a loader worker would otherwise be forked again for every evaluation
    dev_loader, test_loader = loader("dev", False), loader("test", False)
    result = train_fold(model, config, job.trainer, job.fold, batches_of(train_loader), lambda: dev_loader,
                        lambda: test_loader, list(data.labels) if data.labels else None,
                        train_targets, log, refit_batches=batches_of(refit_loader) if refit_loader else None,
                        train_size=len(data.ids["train"]), refit_size=len(data.ids["train"]) + len(data.ids["dev"]),
                        dimensions=data.dimensions, target_scale=data.target_scale)
    result.norm_stats = data.norm_stats
    # On a scheduler's worker (no log here): an explicit --device cpu beside its GPU, said on the client.
    result.notes = [f"on {socket.gethostname()}: {note}"] if on_worker and (note := cpu_note(
        job.trainer.device, "training")) else []
    return result


def refit_loader_of(data: FusionData, config: FusionConfig, seed: int, loader_workers: int = 0):
    """Shuffled batches of train + dev together (the refit after dev chose the epoch count); the inputs
    stay normalised with the training split's statistics."""
    return data.loader("train+dev", config.batch_size, shuffle=True, seed=seed, num_workers=loader_workers,
                       batching=config.batching)


def loader_workers_for(job: FoldJob, batch_bytes: int, log: Callable[[str], None]) -> int:
    """The fold's DataLoader worker processes: as given, or for auto (None) one when the fold streams its
    inputs from the cache in batches of at least LOADER_WORKER_MIN_BATCH_BYTES (frames: reading and
    collating then overlap training), else none: preloaded inputs make a batch in a few copies, a small
    streamed batch is read faster than a worker hands it over, and a daemonic dask worker may not have
    children. docs/performance.md, "Training input (stage 2)", has the numbers."""
    if job.loader_workers is not None:
        return job.loader_workers
    if job.preload:
        return 0
    size = f"{batch_bytes / 2 ** 20:.1f} MiB"
    if batch_bytes < LOADER_WORKER_MIN_BATCH_BYTES:
        log(f"[{job.fold}] --loader-workers auto: 0 (streamed batches of about {size} are read here faster than a "
            "loader worker hands them over)")
        return 0
    if daemonic():
        log(f"[{job.fold}] --loader-workers auto: 0, this dask worker is a daemonic process "
            "(start the workers with DASK_DISTRIBUTED__WORKER__DAEMON=False to read in a loader worker)")
        return 0
    log(f"[{job.fold}] --loader-workers auto: 1 (batches of about {size} streamed from the cache, read while the "
        "model trains)")
    return 1


def _save_checkpoint(path: Path, state_dict: dict) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path))
