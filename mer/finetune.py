"""`mer finetune`: a text encoder fine-tuned with a classification head on each fold's TRAINING split (dev
chooses the epoch), one checkpoint per fold, and each fold's features extracted with its own checkpoint,
so that `mer fuse --set text_feature=finetuned:RUN_DIR` never reads a feature that its test utterance
helped to train. The run directory's layout is mer/finetune_run.py's.

Per fold, in order, each step skipped when done (the same command resumes a killed run):
1. the encoder's pretrained weights (the extractor's own: preset, hub id or local directory) and a head:
   masked mean over the utterance's own token rows of the last layer -> dropout -> linear (the rows and
   the input are what the extractor reads: dialogue context included, cut to `max_length` tokens);
2. the trainer's loop (mer/fuse/trainer.py train_fold: Adam, dev-selected best epoch by the protocol's
   headline metric, early stopping), on the fold's training ids only; the ids fed are recorded;
3. RUN/checkpoints/<fold>/ (save_pretrained + head.safetensors), then RUN/folds/<fold>.json;
4. extraction through mer/extract/runner.py of the feature `finetuned:RUN` with fold=<fold> and the
   extraction options (granularity, layers, pool, ...): the cache resumes it, and another
   granularity later is the same command with other `--set` options (the checkpoints are reused).

Utterances longer than `max_length` tokens on their own are left out of the fine-tuning (counted in the
log); they are still extracted, whole."""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

from mer import __version__
from mer.cache.corpus import corpus_source, merge_corpus_manifest
from mer.cache.reader import FeatureCache
from mer.data.corpora import prepare
from mer.data.protocols import FoldSet, default_protocol, headline_metric, make_folds
from mer.device import cpu_note, resolve_device
from mer.errors import MerError
from mer.extract.base import ExtractItem, build_extractor
from mer.extract.runner import (ExtractConfig, ExtractSummary, extract, release_extractors, torch_threads,
                               with_context)
from mer.extract.text import PRESETS, TextError, TextExtractor, pad_batch
from mer.finetune_run import FINETUNED_PREFIX, HEAD_FILE, FinetuneRun
from mer.fuse.data import BucketBatchSampler
from mer.fuse.models.base import FusionOutput
from mer.fuse.report import write_json
from mer.fuse.run import chosen_folds, fold_ids_digest
from mer.fuse.trainer import FoldResult, TrainerConfig, seed_everything, train_fold

HF_TEXT = "hf-text:"
# Options that change what the encoder reads while it is fine-tuned: part of the run; the others
# (granularity, layers, pool, combine, max_tokens) only choose what is extracted afterwards.
TRAINING_OPTIONS = ("model", "models_dir", "revision", "context_turns")
WEIGHT_OPTIONS = ("model", "models_dir", "revision")  # replaced by the checkpoint when extracting


@dataclass
class FinetuneSettings:
    """Hyper-parameters (`--lr`, `--epochs`, ...). The trainer reads the first seven as a FusionConfig's.
    The papers that fine-tune (CM-RoBERTa, MCFN, MGCMA) give no fine-tuning recipe; these are RoBERTa's
    GLUE ones (lr in 1e-5..3e-5, batch 16/32, a few epochs), with the trainer's plain Adam."""

    lr: float = 2e-5
    weight_decay: float = 0.0
    max_epochs: int = 3
    patience: Optional[int] = 1  # epochs without a better dev `monitor` before stopping
    monitor: str = "headline"  # the protocol's headline metric (weighted F1 on MELD / EmoryNLP, UA elsewhere)
    lr_schedule: str = "constant"
    regression_loss: str = "auto"
    batch_size: int = 16
    max_length: int = 128  # tokens per training sequence, context included (cut first)
    dropout: float = 0.1  # before the head


@dataclass
class FinetuneConfig:
    encoder: str  # a text extractor name (minilm-l6, roberta-base, ...) or hf-text:PATH_OR_ID
    dataset: str
    cache: Path
    root: Optional[Path] = None
    protocol: Optional[str] = None
    protocol_options: dict = field(default_factory=dict)
    corpus_options: dict = field(default_factory=dict)
    encoder_options: dict = field(default_factory=dict)  # the text extractor's options (`--set ENCODER.KEY=V`)
    folds: Optional[list[str]] = None
    out: Optional[Path] = None
    settings: FinetuneSettings = field(default_factory=FinetuneSettings)
    seed: int = 0
    device: str = "auto"
    threads: Optional[int] = None
    progress: bool = True


@dataclass
class FoldOutcome:
    fold: str
    trained: bool  # False: found complete and not trained again
    test: dict  # the fine-tuned classifier's own test metrics
    extraction: ExtractSummary


@dataclass
class FinetuneSummary:
    run_dir: Path
    cache: Path
    corpus: str
    protocol: str
    folds: list[FoldOutcome]


# ----------------------------------------------------------------------------- the model


class EncoderClassifier(nn.Module):
    """The encoder and its head; reads a batch of `_collate` and returns what the trainer expects."""

    def __init__(self, encoder: nn.Module, num_classes: int, dropout: float):
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.config.hidden_size, num_classes)

    def forward(self, batch: dict) -> FusionOutput:
        inputs = {key: batch[key] for key in ("input_ids", "attention_mask", "token_type_ids") if key in batch}
        hidden = self.encoder(**inputs).last_hidden_state  # (batch, tokens, hidden)
        rows = batch["rows_mask"].unsqueeze(-1).to(hidden.dtype)  # (batch, tokens, 1): the utterance's own rows
        pooled = (hidden * rows).sum(dim=1) / rows.sum(dim=1).clamp(min=1.0)
        return FusionOutput(self.head(self.dropout(pooled)))


# ----------------------------------------------------------------------------- the run


def finetune(cfg: FinetuneConfig, log: Callable[[str], None] = print) -> FinetuneSummary:
    check_encoder(cfg.encoder, cfg.encoder_options)
    cfg = replace(cfg, device=resolve_device(cfg.device))
    note = cpu_note(cfg.device, "fine-tuning")
    if note:
        log(note)
    corpus, fold_set = _corpus_folds(cfg)
    folds = chosen_folds(fold_set, cfg.folds)
    run_dir = Path(cfg.out) if cfg.out else Path("runs") / f"finetune-{_slug(cfg.encoder)}-{corpus}-{fold_set.protocol}"
    run = _claim(run_dir, _run_config(cfg, corpus, fold_set, run_dir))
    log(f"fine-tuning {cfg.encoder} on {corpus}: protocol {fold_set.protocol} ({len(folds)} fold(s)) -> {run_dir}")
    log(fold_set.summary())
    outcomes = []
    with torch_threads(cfg.threads):
        for name in folds:
            record = run.fold_record(name)
            if record is not None:
                log(f"[{name}] fine-tuned already ({run_dir / 'folds' / (name + '.json')}): not trained again")
            test = record["test"] if record is not None else _train_and_save(cfg, run, fold_set, name, log)["test"]
            outcomes.append(FoldOutcome(name, record is None, test, _extract_fold(cfg, run, name)))
    return FinetuneSummary(run_dir, cfg.cache, corpus, fold_set.protocol, outcomes)


def check_encoder(encoder: str, options: dict) -> None:
    if encoder not in PRESETS and not encoder.startswith(HF_TEXT):
        raise MerError(f"--encoder {encoder}: mer finetune fine-tunes a text encoder: one of "
                       f"{', '.join(PRESETS)}, or hf-text:PATH_OR_ID")
    if options.get("text_source", "reference") != "reference":
        raise MerError(f"--set {encoder}.text_source={options['text_source']}: mer finetune trains on the corpus's "
                       f"own transcripts; drop the option")


def _corpus_folds(cfg: FinetuneConfig) -> tuple[str, FoldSet]:
    """The corpus read and recorded in the cache, and its folds as `mer fuse` makes them (from the cache's
    utterances, the same protocol, options and seed), so that the two agree utterance by utterance."""
    corpus = prepare(cfg.dataset, cfg.root, False, **cfg.corpus_options)
    merge_corpus_manifest(cfg.cache, corpus.name, corpus.utterances,
                          corpus_source(cfg.dataset, cfg.root, cfg.corpus_options))
    utterances = FeatureCache(cfg.cache).utterances(corpus.name)
    protocol = cfg.protocol or default_protocol(corpus.name)
    fold_set = make_folds(protocol, utterances, seed=cfg.seed, **cfg.protocol_options)
    if fold_set.labels is None:
        raise MerError(f"protocol {protocol}: mer finetune fine-tunes classifiers, and this protocol is regression; "
                       "give a protocol with class labels")
    return corpus.name, fold_set


def _slug(encoder: str) -> str:
    return encoder.replace(HF_TEXT, "").rstrip("/").split("/")[-1]


def _run_config(cfg: FinetuneConfig, corpus: str, fold_set: FoldSet, run_dir: Path) -> dict:
    """Every fold of the protocol, whichever --folds this command trains: the folds of one run share it."""
    encoder_input = {k: v for k, v in cfg.encoder_options.items() if k in TRAINING_OPTIONS}
    identity = {"encoder": cfg.encoder, "encoder_input": encoder_input, "corpus": corpus,
                "protocol": fold_set.protocol, "protocol_options": cfg.protocol_options, "seed": cfg.seed,
                "fold_ids": {f.name: fold_ids_digest(fold_set, f.name) for f in fold_set.folds},
                "labels": list(fold_set.labels), "settings": asdict(cfg.settings)}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return {**identity, "run": digest, "folds": [f.name for f in fold_set.folds], "fold_counts":
            {f.name: f.counts() for f in fold_set.folds}, "command": finetune_command(cfg, fold_set.protocol, run_dir),
            "dataset": cfg.dataset, "root": str(cfg.root) if cfg.root else None,
            "corpus_options": cfg.corpus_options, "cache": str(Path(cfg.cache).resolve()),
            "package_version": __version__, "torch_version": torch.__version__}


def finetune_command(cfg: FinetuneConfig, protocol: str, run_dir: Path) -> str:
    """The `mer finetune` command that trains (or resumes) this run, every fold; every option takes a value
    (mer/fuse/finetuned.py reads it as pairs)."""
    s, defaults = cfg.settings, FinetuneSettings()
    args = ["mer", "finetune", "--encoder", cfg.encoder, "--dataset", cfg.dataset]
    args += ["--root", _absolute(cfg.root)] if cfg.root else []
    args += ["--cache", _absolute(cfg.cache), "--protocol", protocol]
    args += [a for k, v in cfg.protocol_options.items() for a in ("--protocol-option", f"{k}={v}")]
    args += [a for k, v in cfg.corpus_options.items() for a in ("--set", f"corpus.{k}={v}")]
    args += [a for k, v in cfg.encoder_options.items() for a in ("--set", f"{cfg.encoder}.{k}={v}")]
    for flag, name in SETTING_FLAGS.items():
        if getattr(s, name) != getattr(defaults, name):
            args += [flag, str(getattr(s, name))]
    args += ["--seed", str(cfg.seed), "--out", _absolute(run_dir)]
    return shlex.join(args)


def _absolute(path: Path) -> str:
    """A path as the recorded command must name it: pasted anywhere, it still works."""
    return str(Path(path).resolve())


SETTING_FLAGS = {"--lr": "lr", "--epochs": "max_epochs", "--patience": "patience", "--batch-size": "batch_size",
                 "--max-length": "max_length", "--weight-decay": "weight_decay", "--dropout": "dropout"}


def _claim(run_dir: Path, run_config: dict) -> FinetuneRun:
    """Resume the same run; refuse another one (its config.json differs in what was fine-tuned)."""
    path = run_dir / "config.json"
    if path.is_file():
        old = FinetuneRun.read(run_dir).config
        if old.get("run") != run_config["run"]:
            key = next((k for k in ("encoder", "encoder_input", "corpus", "protocol", "protocol_options", "seed",
                                    "fold_ids", "labels", "settings") if old.get(k) != run_config[k]), "run")
            raise MerError(f"{path}: --out holds another fine-tuning run ({key} differs); give another --out, "
                           f"or resume that one: {old.get('command')}")
    run_dir.mkdir(parents=True, exist_ok=True)
    for sub in ("checkpoints", "folds"):
        (run_dir / sub).mkdir(exist_ok=True)
    write_json(path, run_config)
    return FinetuneRun.read(run_dir)


# ----------------------------------------------------------------------------- one fold


def training_encoder(cfg: FinetuneConfig) -> TextExtractor:
    """The extractor as the encoder reads its training input: the run's input options, `max_length` tokens."""
    options = {k: v for k, v in cfg.encoder_options.items() if k in TRAINING_OPTIONS}
    return build_extractor(cfg.encoder, **options, max_tokens=cfg.settings.max_length)


def _train_and_save(cfg: FinetuneConfig, run: FinetuneRun, fold_set: FoldSet, name: str, log) -> dict:
    started = time.time()
    fold = next(f for f in fold_set.folds if f.name == name)
    extractor = training_encoder(cfg)
    seed_everything(cfg.seed)  # before the head's initial weights are drawn
    extractor.load(cfg.device)  # fresh pretrained weights for every fold
    utterances = {u.id: u for u in FeatureCache(cfg.cache).utterances(run.config["corpus"])}
    encoded, too_long = _encodings(extractor, [utterances[i] for i in (*fold.train_ids, *fold.dev_ids, *fold.test_ids)])
    if too_long:
        log(f"[{name}] {len(too_long)} utterance(s) longer than --max-length {cfg.settings.max_length} tokens left out "
            f"of the fine-tuning, e.g. {too_long[0]}")
    labels = list(fold_set.labels)
    targets = {i: labels.index(fold_set.targets[i]) for i in encoded}
    model = EncoderClassifier(extractor.model, len(labels), cfg.settings.dropout)
    batches = Batches(encoded, targets, cfg.settings.batch_size, extractor, cfg.seed)
    train_ids, dev_ids, test_ids = ([i for i in ids if i in encoded] for ids in (fold.train_ids, fold.dev_ids,
                                                                                  fold.test_ids))
    settings = _resolved(cfg.settings, fold_set.protocol)
    result = train_fold(model, settings, TrainerConfig(device=cfg.device, seed=cfg.seed), name,
                        batches.training(train_ids), lambda: batches.evaluation(dev_ids),
                        lambda: batches.evaluation(test_ids), labels, np.array([targets[i] for i in train_ids]), log)
    _save_checkpoint(run, name, model, extractor)
    record = _fold_document(run, result, batches.trained, too_long, time.time() - started)
    write_json(run.directory / "folds" / f"{name}.json", record)
    log(f"[{name}] fine-tuned in {record['seconds']:.0f} s: best epoch {result.best_epoch + 1}, its test "
        + " ".join(f"{k}={v:.4f}" for k, v in result.test.items() if isinstance(v, float)))
    return record


def _resolved(settings: FinetuneSettings, protocol: str) -> FinetuneSettings:
    if settings.monitor != "headline":
        return settings
    return replace(settings, monitor=headline_metric(protocol))


def _encodings(extractor: TextExtractor, utterances: list) -> tuple[dict, list[str]]:
    """id -> the extractor's encoding (context included); the ids too long to fine-tune on."""
    encoded, too_long = {}, []
    for utt in with_context(utterances, extractor.needs_context_turns):
        try:
            encoded[utt.id] = extractor.encode(ExtractItem(utt, None))
        except TextError:
            too_long.append(utt.id)
    return encoded, too_long


class Batches:
    """Padded batches of encodings (length-bucketed, as the fusion loader's); records the ids trained on."""

    def __init__(self, encoded: dict, targets: dict, batch_size: int, extractor: TextExtractor, seed: int):
        self.encoded, self.targets, self.batch_size, self.seed = encoded, targets, batch_size, seed
        self.pad_id = extractor.model.config.pad_token_id or 0
        self.trained: set[str] = set()

    def training(self, ids: list[str]) -> Callable[[int], object]:
        sampler = self._sampler(ids, shuffle=True)

        def epoch_batches(epoch: int):
            for indices in sampler.batches(epoch):
                batch_ids = [ids[i] for i in indices]
                self.trained.update(batch_ids)
                yield self._collate(batch_ids)
        return epoch_batches

    def evaluation(self, ids: list[str]):
        return (self._collate([ids[i] for i in indices]) for indices in self._sampler(ids, shuffle=False).batches())

    def _sampler(self, ids: list[str], shuffle: bool) -> BucketBatchSampler:
        lengths = [len(self.encoded[i].inputs["input_ids"]) for i in ids]
        return BucketBatchSampler(lengths, self.batch_size, shuffle=shuffle, seed=self.seed)

    def _collate(self, ids: list[str]) -> dict:
        encodings = [self.encoded[i] for i in ids]
        batch = pad_batch(encodings, self.pad_id)  # (batch, tokens) each
        rows_mask = torch.zeros_like(batch["input_ids"], dtype=torch.bool)
        for position, encoding in enumerate(encodings):
            rows_mask[position, torch.from_numpy(encoding.rows)] = True
        return {**batch, "rows_mask": rows_mask, "label": torch.tensor([self.targets[i] for i in ids]), "ids": ids}


def _save_checkpoint(run: FinetuneRun, fold: str, model: EncoderClassifier, extractor: TextExtractor) -> None:
    """save_pretrained into a temporary folder, renamed when whole (the fold record comes after)."""
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    final = run.directory / "checkpoints" / fold
    temporary = final.with_name(f".{fold}.partial")
    shutil.rmtree(temporary, ignore_errors=True)
    model.encoder.save_pretrained(temporary, safe_serialization=True)
    AutoTokenizer.from_pretrained(extractor.resolved.local_dir).save_pretrained(temporary)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.head.state_dict().items()},
              str(temporary / HEAD_FILE))
    shutil.rmtree(final, ignore_errors=True)  # a checkpoint without its fold record: a killed earlier attempt
    temporary.rename(final)


def _fold_document(run: FinetuneRun, result: FoldResult, trained: set, too_long: list, seconds: float) -> dict:
    return {"run": run.digest, "fold": result.fold, "best_epoch": result.best_epoch, "history": result.history,
            "dev": result.dev, "test": result.test, "trained_ids": sorted(trained), "too_long": too_long,
            "seconds": seconds}


def _extract_fold(cfg: FinetuneConfig, run: FinetuneRun, fold: str) -> ExtractSummary:
    """The fold's features, with its own checkpoint, through the extraction runner (resumed by the cache)."""
    name = f"{FINETUNED_PREFIX}{run.directory}"
    options = {k: v for k, v in cfg.encoder_options.items() if k not in WEIGHT_OPTIONS}
    config = ExtractConfig(dataset=cfg.dataset, root=cfg.root, features=[name], cache=cfg.cache,
                           corpus_options=cfg.corpus_options, feature_options={name: {**options, "fold": fold}},
                           device=cfg.device, threads=cfg.threads, progress=cfg.progress)
    try:
        return extract(config)
    finally:
        release_extractors()


def format_finetune_summary(summary: FinetuneSummary) -> str:
    lines = [f"{summary.run_dir}: {summary.corpus}, protocol {summary.protocol}",
             f"  {'fold':<12} {'trained':>8} {'head test accuracy':>19} {'weighted F1':>12}  features"]
    for f in summary.folds:
        feature = f.extraction.features[0]
        accuracy, weighted_f1 = (f.test.get(metric, float("nan")) for metric in ("accuracy", "weighted_f1"))
        lines.append(f"  {f.fold:<12} {'now' if f.trained else 'before':>8} {accuracy:>19.4f} "
                     f"{weighted_f1:>12.4f}  {feature.name}@{feature.config_hash} "
                     f"({feature.done} extracted, {feature.cached} cached, {len(feature.failed)} failed)")
    fuse = ["mer", "fuse", "--model", "text-only", "--dataset", summary.corpus, "--cache", str(summary.cache),
            "--protocol", summary.protocol, "--set", f"text_feature={FINETUNED_PREFIX}{summary.run_dir}"]
    lines.append(f"  fuse on them (any model that reads text): {shlex.join(fuse)}")
    return "\n".join(lines)
