"""`mer extract`: decode a corpus once and write every requested feature into the cache.

Work is cut into tasks of `shard_size` utterances in corpus order. For each task the
runner claims, per feature, the utterances still pending there (mer.cache.writer), decodes
their audio once, runs every extractor on length-sorted batches, writes one temporary shard
per feature and commits it. With `workers > 1` tasks run in worker processes while this
process holds the claims and commits; a worker that dies has its task run again. A failed
utterance is recorded with its reason and the run goes on (`strict` stops at the first).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import uuid
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from mer.cache.corpus import corpus_source, merge_corpus_manifest
from mer.cache.layout import CORPUS_MANIFEST, check_cache_path
from mer.cache.locks import FolderRemoved
from mer.cache.transcripts import Transcripts, read_transcripts
from mer.cache.writer import Claim, FeatureWriter, write_temp_shard
from mer.cluster import check_scheduler_address, dask_client
from mer.data.audio import SAMPLE_RATE
from mer.data.corpora import prepare
from mer.data.decoding import DecodePool, decode_utterances
from mer.data.utterance import Corpus, CorpusReport, Utterance
from mer.device import cpu_note, resolve_device
from mer.errors import MerError
from mer.extract.base import ExtractItem, Extractor, build_extractor
from mer.extract.interrupts import interrupts_deferred



@dataclass
class ExtractConfig:
    dataset: str
    features: list[str]
    cache: Path
    root: Optional[Path] = None
    corpus_options: dict = field(default_factory=dict)
    feature_options: dict = field(default_factory=dict)  # feature name -> {option: value}
    workers: int = 1  # > 1: a local dask cluster of this many worker processes
    decode_workers: Optional[int] = None  # decoder processes beside compute (0: a thread); None: auto
    threads: Optional[int] = None  # torch intra-op threads; None: torch's default
    scheduler: Optional[str] = None  # address of an existing dask.distributed scheduler
    strict: bool = False
    retry_failed: bool = False
    shard_size: int = 128
    batch_seconds: Optional[float] = None  # audio seconds per batch, padding included; None: by device
    batch_items: int = 32  # utterances per batch for text extractors
    device: str = "auto"  # auto: CUDA when present, decided where the work runs (each worker with a scheduler)
    dtype: Optional[str] = None  # override every feature's storage dtype
    compression: Optional[str] = None
    progress: bool = True

    @property
    def audio_batch_seconds(self) -> float:
        """--batch-seconds, or by device: on a CPU big padded batches of a base-size encoder run slower
        than small ones (base WavLM: 60 s batches 1.6x slower than one clip at a time; tiny models do
        not care), so CPU batches stay small; a GPU needs large ones to be busy (docs/performance.md)."""
        if self.batch_seconds is not None:
            return self.batch_seconds
        return GPU_BATCH_SECONDS if str(self.device).startswith("cuda") else CPU_BATCH_SECONDS


GPU_BATCH_SECONDS = 60.0
CPU_BATCH_SECONDS = 15.0


@dataclass(frozen=True)
class FeatureJob:
    """What a worker needs to rebuild an extractor: its name, options and storage dtype."""

    name: str
    options: tuple
    dtype: Optional[str]

    def build(self) -> Extractor:
        extractor = build_extractor(self.name, **dict(self.options))
        if self.dtype:
            extractor.spec = replace(extractor.spec, dtype=self.dtype)
        return extractor


@dataclass
class TaskPart:
    feature: int  # index into the run's features
    reads: str  # "audio" | "text": what the feature is computed from
    claim_index: int
    ids: list[str]
    feature_dir: Path
    utterances: Optional[list[Utterance]] = None  # the part's own records (a text source's texts); None: the task's
    failures: dict[str, str] = field(default_factory=dict)  # ids failed before any work (no transcript)


@dataclass
class Task:
    key: str
    utterances: list[Utterance]
    parts: list[TaskPart]
    attempts: int = 0


@dataclass
class PartResult:
    feature: int
    claim_index: int
    temp_path: Optional[Path]
    stored: int
    failures: dict[str, str]


@dataclass
class FeatureSummary:
    name: str
    config_hash: str
    directory: str
    done: int = 0
    cached: int = 0
    failed_before: int = 0
    failed: dict[str, str] = field(default_factory=dict)


@dataclass
class ExtractSummary:
    corpus: str
    features: list[FeatureSummary]
    seconds: float
    stopped: Optional[str] = None  # why the run stopped early (strict, interrupted)
    report: Optional[CorpusReport] = None  # what the corpus reader kept and skipped

    @property
    def exit_code(self) -> int:
        if self.stopped:
            return 1
        hopeless = any(f.failed and not f.done and not f.cached for f in self.features)
        return 1 if hopeless else 0


# ---- the worker side: runs in this process or in a pool process ----------------------------
_extractor_memo: dict[FeatureJob, Extractor] = {}  # built once per process
_loaded: set[FeatureJob] = set()  # and loaded (weights, devices) once per process


def _build_once(job: FeatureJob) -> Extractor:
    if job not in _extractor_memo:
        _extractor_memo[job] = job.build()
    return _extractor_memo[job]


def release_extractors() -> None:
    """Forget the extractors built and loaded in this process, weights and all (`mer finetune` extracts with
    a new checkpoint per fold: without this, every fold's model would stay in memory)."""
    _extractor_memo.clear()
    _loaded.clear()


def _extractor(job: FeatureJob, device: str) -> Extractor:
    extractor = _build_once(job)
    if job not in _loaded:
        extractor.load(device)
        _loaded.add(job)
    return extractor


@dataclass
class DecodedTask:
    task: Task
    audio: dict[str, np.ndarray]
    failures: dict[str, str]  # id -> why decoding failed


@dataclass
class ComputedPart:
    part: TaskPart
    spec: object  # the extractor's FeatureSpec
    arrays: dict[str, np.ndarray]
    extras: dict[str, dict]
    failures: dict[str, str]


def audio_utterances(task: Task) -> list[Utterance]:
    """The utterances whose audio some audio feature of the task needs, each once."""
    by_id = {u.id: u for u in task.utterances}
    return [by_id[i] for i in sorted({i for part in task.parts if part.reads == "audio" for i in part.ids})]


def decode_task(task: Task) -> DecodedTask:
    return DecodedTask(task, *decode_utterances(audio_utterances(task)))


def compute_task(decoded: DecodedTask, jobs: list[FeatureJob], config: ExtractConfig,
                 on_items: Optional[Callable[[int], None]] = None) -> list[ComputedPart]:
    task_records = {u.id: u for u in decoded.task.utterances}
    computed = []
    for part in decoded.task.parts:
        extractor = _extractor(jobs[part.feature], config.device)
        by_id = task_records if part.utterances is None else {u.id: u for u in part.utterances}
        failures = {i: decoded.failures[i] for i in part.ids if i in decoded.failures} \
            if part.reads == "audio" else dict(part.failures)
        items = [ExtractItem(by_id[i], decoded.audio.get(i)) for i in part.ids if i not in failures]
        arrays, extras, extract_failures = _extract_items(extractor, items, config, on_items)
        failures.update(extract_failures)
        if on_items and failures:
            on_items(len(failures))
        computed.append(ComputedPart(part, extractor.spec, arrays, extras, failures))
    return computed


def write_task(computed: list[ComputedPart], config: ExtractConfig) -> list[PartResult]:
    """One temporary shard per feature; the claim holder commits them."""
    results = []
    for c in computed:
        temp = write_temp_shard(c.part.feature_dir, c.part.claim_index, c.spec, c.part.ids, c.arrays, c.extras,
                                config.compression)
        results.append(PartResult(c.part.feature, c.part.claim_index, temp, len(c.arrays), c.failures))
    return results


def run_task(task: Task, jobs: list[FeatureJob], config: ExtractConfig,
             on_items: Optional[Callable[[int], None]] = None) -> list[PartResult]:
    """The whole task in one process (a dask worker): decode, compute, write."""
    config = replace(config, device=resolve_device(config.device))  # this worker's own device
    return write_task(compute_task(decode_task(task), jobs, config, on_items), config)


def _extract_items(extractor: Extractor, items: list[ExtractItem], config: ExtractConfig,
                   on_items: Optional[Callable[[int], None]]) -> tuple[dict, dict, dict[str, str]]:
    arrays: dict[str, np.ndarray] = {}
    extras: dict[str, dict] = {}
    failures: dict[str, str] = {}
    for batch in make_batches(extractor, items, config):
        try:
            outputs = _run_extractor(extractor, batch)
        except Exception:  # one bad item must not fail its batch-mates: retry them one by one
            outputs = []
            for item in batch:
                try:
                    outputs.extend(_run_extractor(extractor, [item]))
                except Exception as exc:
                    failures[item.utterance.id] = _reason(exc)
                    outputs.append(None)
        for item, output in zip(batch, outputs):
            if output is not None:
                array, extra = output
                arrays[item.utterance.id] = array
                if extra:
                    extras[item.utterance.id] = extra
        if on_items:
            on_items(len(batch))
    return arrays, extras, failures


def _run_extractor(extractor: Extractor, batch: list[ExtractItem]) -> list[tuple[np.ndarray, dict]]:
    if hasattr(extractor, "extract_with_extras"):
        outputs = extractor.extract_with_extras(batch)
    else:
        outputs = [(array, {}) for array in extractor.extract(batch)]
    if len(outputs) != len(batch):
        raise MerError(f"{extractor.spec.name} returned {len(outputs)} outputs for {len(batch)} items")
    for (array, _), item in zip(outputs, batch):
        array = np.asarray(array)
        if array.size and not np.isfinite(array).all():
            raise MerError(f"{item.utterance.id}: {extractor.spec.name} produced NaN/Inf")
    return outputs


def _reason(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if not isinstance(exc, MerError) else text


def make_batches(extractor: Extractor, items: list[ExtractItem], config: ExtractConfig) -> list[list[ExtractItem]]:
    """Length-sorted batches: capped by padded audio seconds (audio) or item count (text).
    Extractors that cannot pad (`pads_safely = False`) get batches of equal length only;
    per-item CPU extractors get single items."""
    if extractor.per_item_cpu:
        return [[item] for item in items]
    if extractor.spec.reads == "text":
        ordered = sorted(items, key=lambda it: len(it.utterance.text))
        return [ordered[i:i + config.batch_items] for i in range(0, len(ordered), config.batch_items)]
    ordered = sorted(items, key=lambda it: len(it.audio))
    pads_safely = getattr(extractor, "pads_safely", True)
    batches: list[list[ExtractItem]] = []
    for item in ordered:
        current = batches[-1] if batches else None
        if current is not None:
            longest = max(len(item.audio), len(current[-1].audio))
            fits = longest * (len(current) + 1) <= config.audio_batch_seconds * SAMPLE_RATE
            same = len(item.audio) == len(current[-1].audio)
            if fits and (pads_safely or same):
                current.append(item)
                continue
        batches.append([item])
    return batches


# ---- the driver: claims, schedules, commits ---------------------------------------------------
DECODE_AHEAD = 2  # tasks decoded ahead of the one computing: bounds memory to about 3 tasks' audio


def extract(config: ExtractConfig, on_report: Optional[Callable[[CorpusReport], None]] = None) -> ExtractSummary:
    """on_report: called with the corpus reader's report before any work (and before the error
    of a reader that kept nothing, which the report explains)."""
    started = time.time()
    jobs = [FeatureJob(name, tuple(sorted(config.feature_options.get(name, {}).items())), config.dtype)
            for name in config.features]
    for job in jobs:  # built first: unknown names and missing models fail before any work
        _build_once(job)
    check_cache_path(config.cache)
    config = _placed(config)
    needs_audio = not all(_extractor_memo[job].spec.reads == "text" for job in jobs)
    corpus = prepare(config.dataset, config.root, needs_audio, **config.corpus_options)
    if on_report is not None:
        on_report(corpus.report)
    if not corpus.utterances:
        raise MerError(f"{config.root}: the {config.dataset} reader found no utterances; check --root")
    updated = merge_corpus_manifest(config.cache, corpus.name, corpus.utterances,
                                    corpus_source(config.dataset, config.root, config.corpus_options))
    jobs, sources = _with_text_sources(jobs, config.cache, corpus)  # after the merge: source.json names the corpus
    specs = [_extractor_memo[job].spec for job in jobs]
    if updated:  # the same utterances read with other labels (IEMOCAP 4class, then 7class)
        print(f"{Path(config.cache) / corpus.name / CORPUS_MANIFEST}: updated the annotations of {updated} "
              "utterances", file=sys.stderr)
    writers = [FeatureWriter(config.cache, corpus.name, spec, config.compression) for spec in specs]
    summaries, total = _initial_summaries(writers, corpus, config)
    turns = max(getattr(_extractor_memo[j], "needs_context_turns", 0) for j in jobs)
    utterances = with_context(corpus.utterances, turns)
    sourced = {feature: _sourced(corpus.utterances, source, turns) for feature, source in sources.items()}
    run = _Run(config, jobs, writers, summaries, total)
    try:
        with torch_threads(config.threads):
            run.execute(_tasks(utterances, writers, config, run, sourced))
    except KeyboardInterrupt:
        run.stopped = "interrupted; run the same command again to resume"
    finally:
        run.close()
    return ExtractSummary(corpus.name, summaries, time.time() - started, run.stopped, corpus.report)


def _placed(config: ExtractConfig) -> ExtractConfig:
    """The device resolved here, before any work, unless the work runs on a scheduler's workers."""
    if config.scheduler:
        check_scheduler_address(config.scheduler)
        return config
    device = resolve_device(config.device)
    note = cpu_note(device, "extracting")
    if note:
        print(note, file=sys.stderr)
    return replace(config, device=device)


@contextlib.contextmanager
def torch_threads(threads: Optional[int]):
    if not threads:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _initial_summaries(writers: list[FeatureWriter], corpus: Corpus, config: ExtractConfig):
    ids = [u.id for u in corpus.utterances]
    summaries, total = [], 0
    for writer in writers:
        state = writer.state()
        summary = FeatureSummary(writer.spec.name, writer.spec.config_hash, str(writer.dir))
        summary.cached = sum(1 for i in ids if i in state.stored)
        summary.failed_before = 0 if config.retry_failed else sum(1 for i in ids if i in state.failed)
        total += len(ids) - summary.cached - summary.failed_before
        summaries.append(summary)
    return summaries, total


def with_context(utterances: list[Utterance], turns: int) -> list[Utterance]:
    """Give each utterance the texts of the `turns` previous turns of its dialogue (oldest first)."""
    if not turns:
        return utterances
    dialogues: dict[str, list[Utterance]] = defaultdict(list)
    for utt in utterances:
        if utt.dialogue is not None:
            dialogues[utt.dialogue].append(utt)
    previous: dict[str, list[str]] = {}
    for turns_of_dialogue in dialogues.values():
        ordered = sorted(turns_of_dialogue, key=lambda u: (u.turn is None, u.turn))
        for position, utt in enumerate(ordered):
            previous[utt.id] = [u.text for u in ordered[max(0, position - turns):position]]
    return [replace(u, extra={**u.extra, "context": previous.get(u.id, [])}) for u in utterances]


@dataclass
class SourcedTexts:
    """The utterances as a text source gives them (its transcripts, and contexts made of them)."""

    by_id: dict[str, Utterance]
    failures: dict[str, str]  # ids the source has no transcript for

    def attach(self, part: TaskPart) -> None:
        part.failures = {i: self.failures[i] for i in part.ids if i in self.failures}
        part.utterances = [self.by_id[i] for i in part.ids if i not in self.failures]


def _with_text_sources(jobs: list[FeatureJob], cache: Path, corpus: Corpus) -> tuple[list[FeatureJob], dict]:
    """Each text feature's `text_source=asr:NAME[@HASH]` resolved to the cached asr:NAME@HASH (the name its
    config hash keys) and read: (the jobs, feature index -> Transcripts). A missing or unfinished source
    fails here, before any work, naming the `mer transcribe` command that makes it."""
    resolved, sources = [], {}
    ids = [u.id for u in corpus.utterances]
    for feature, job in enumerate(jobs):
        wanted = getattr(_extractor_memo[job], "text_source", None)
        if wanted:
            transcripts = read_transcripts(cache, corpus.name, wanted, ids)
            if transcripts.source != wanted:
                job = replace(job, options=tuple(sorted({**dict(job.options), "text_source": transcripts.source}.items())))
                _build_once(job)
            sources[feature] = transcripts
        resolved.append(job)
    return resolved, sources


def _sourced(utterances: list[Utterance], transcripts: Transcripts, turns: int) -> SourcedTexts:
    """Records with the source's text; an utterance it has no transcript for is empty in others' context."""
    texts = [replace(u, text=transcripts.texts.get(u.id, "")) for u in utterances]
    return SourcedTexts({u.id: u for u in with_context(texts, turns)}, transcripts.failures)


def _tasks(utterances: list[Utterance], writers: list[FeatureWriter], config: ExtractConfig, run: "_Run",
           sourced: dict[int, "SourcedTexts"]):
    """Claim work chunk by chunk, lazily, so concurrent runs share the remaining work."""
    for start in range(0, len(utterances), config.shard_size):
        chunk = utterances[start:start + config.shard_size]
        ids = [u.id for u in chunk]
        parts = []
        for feature, writer in enumerate(writers):
            claim = writer.claim(ids, config.retry_failed)
            if claim is not None:
                run.claims[(feature, claim.index)] = claim
                parts.append(TaskPart(feature, writer.spec.reads, claim.index, claim.ids, writer.dir))
                if feature in sourced:
                    sourced[feature].attach(parts[-1])
        if parts:
            needed = {i for part in parts for i in part.ids}
            yield Task(f"{start}", [u for u in chunk if u.id in needed], parts)


class _Run:
    def __init__(self, config: ExtractConfig, jobs, writers, summaries, total: int):
        self.config = config
        self.jobs = jobs
        self.writers = writers
        self.summaries = summaries
        self.claims: dict[tuple[int, int], Claim] = {}
        self.stopped: Optional[str] = None
        self.total = total
        self.progress = _progress_bar(total, config.progress)

    def execute(self, tasks) -> None:
        if self.config.workers <= 1 and not self.config.scheduler:
            self._execute_here(tasks)
        else:
            self._execute_on_dask(tasks)

    def _execute_here(self, tasks) -> None:
        """A three-stage pipeline: the next tasks decode in decoder processes and the previous one is
        written in a background thread (HDF5 releases the GIL) while this thread computes."""
        from concurrent.futures import ThreadPoolExecutor

        tasks, ahead = iter(tasks), deque()  # ahead: (task, its decoding), in order
        with DecodePool(self.decode_processes()) as decoder, \
                ThreadPoolExecutor(1, thread_name_prefix="write") as writer:

            def decode_ahead() -> None:
                while len(ahead) < DECODE_AHEAD and not self.stopped:
                    task = next(tasks, None)
                    if task is None:
                        return
                    ahead.append((task, decoder.submit(audio_utterances(task))))

            decode_ahead()
            writing = None
            while ahead and not self.stopped:
                task, decoding = ahead.popleft()
                decode_ahead()
                decoded = DecodedTask(task, *decoder.result(decoding))
                computed = compute_task(decoded, self.jobs, self.config, self.progress.update)
                del decoding, decoded  # this task's audio (the futures hold it too), before the next one is awaited
                if writing is not None:
                    self._commit_deferring_interrupts(*writing.result())
                writing = writer.submit(lambda t=task, c=computed: (t, write_task(c, self.config)))
            if writing is not None:
                self._commit_deferring_interrupts(*writing.result())

    def decode_processes(self) -> int:
        """--decode-workers, or by default: one process per spare core (at most 8) when there is more
        than one task to decode; a thread for a single task, where processes would only add start-up."""
        if self.config.decode_workers is not None:
            return self.config.decode_workers
        if self.total <= self.config.shard_size:
            return 0
        return min(8, max(1, (os.cpu_count() or 1) - 1))

    def _execute_on_dask(self, tasks) -> None:
        """Tasks go to dask workers, at most two per worker in flight, so that claims stay close
        to the work being done and concurrent runs can share what is left. The scheduler reruns
        the task of a worker that died; a task that kills workers repeatedly fails its utterances."""
        from dask.distributed import as_completed
        from distributed.scheduler import KilledWorker

        with dask_client(self.config.scheduler, self.config.workers, self.config.threads) as client:
            in_flight = max(2, 2 * len(client.scheduler_info()["workers"]))
            tasks = iter(tasks)
            futures = as_completed()
            owner: dict = {}

            def submit_next() -> bool:
                task = next(tasks, None) if not self.stopped else None
                if task is None:
                    return False
                future = client.submit(run_task, task, self.jobs, self.config, pure=False, key=f"extract-{task.key}-{uuid.uuid4().hex[:6]}")
                owner[future.key] = task
                futures.add(future)
                return True

            for _ in range(in_flight):
                if not submit_next():
                    break
            for future in futures:
                task = owner.pop(future.key)
                try:
                    results = future.result()
                except KilledWorker as exc:
                    results = self._failed_results(task, f"dask workers died running this shard ({exc})")
                self._commit_deferring_interrupts(task, results)
                self.progress.update(sum(len(p.ids) for p in task.parts))
                submit_next()

    def _commit_deferring_interrupts(self, task: Task, results: list[PartResult]) -> None:
        """A Ctrl-C waits for the commit, so that the summary counts what is on disk."""
        with interrupts_deferred():
            self._commit(task, results)

    @staticmethod
    def _failed_results(task: Task, reason: str) -> list[PartResult]:
        return [PartResult(p.feature, p.claim_index, None, 0, {i: reason for i in p.ids}) for p in task.parts]

    def _commit(self, task: Task, results: list[PartResult]) -> None:
        """Commit every feature's shard of the task; a feature folder removed meanwhile (`mer cache rm`)
        stops the run, after the other features' shards are committed."""
        removed = None
        for result in results:
            claim = self.claims.pop((result.feature, result.claim_index))
            try:
                self.writers[result.feature].commit(claim, result.temp_path, result.failures)
            except FolderRemoved as exc:
                self.writers[result.feature].release(claim)
                removed = removed or exc
                continue
            summary = self.summaries[result.feature]
            summary.done += result.stored
            summary.failed.update(result.failures)
            if result.failures and self.config.strict and not self.stopped:
                utt_id, reason = next(iter(result.failures.items()))
                self.stopped = f"--strict: {utt_id}: {reason}"
        if removed is not None:
            raise removed

    def close(self) -> None:
        self.progress.close()
        for (feature, _), claim in list(self.claims.items()):
            self.writers[feature].release(claim)
        self.claims.clear()
        for writer in self.writers:
            writer.refresh_manifest()


def _progress_bar(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="item", desc="extract", file=sys.stderr, disable=not enabled,
                dynamic_ncols=True, smoothing=0.1)


REPORT_EXAMPLES = 5  # warnings shown before the work starts; the --json summary holds the first 200


def format_report(report: CorpusReport) -> str:
    """The reader's counts, how what it read splits into kept and skipped, and the first warnings."""
    kept = report.counts.get("total", {}).get("utterances", 0)
    skipped = sum(report.skipped.values())
    lines = [report.format(), f"  {kept} kept + {skipped} skipped = {kept + skipped} records read"]
    lines += [f"  warning: {warning}" for warning in report.warnings[:REPORT_EXAMPLES]]
    if len(report.warnings) > REPORT_EXAMPLES:
        lines.append(f"  ... {len(report.warnings) - REPORT_EXAMPLES} more warnings in the --json summary "
                     "(corpus_report.warnings)")
    return "\n".join(lines)


def format_summary(summary: ExtractSummary) -> str:
    lines = [f"corpus {summary.corpus}: {summary.seconds:.1f} s"]
    header = f"  {'feature':<28} {'done':>7} {'cached':>7} {'failed':>7} {'failed before':>14}  config"
    lines.append(header)
    for f in summary.features:
        lines.append(f"  {f.name:<28} {f.done:>7} {f.cached:>7} {len(f.failed):>7} {f.failed_before:>14}  {f.config_hash}")
    reasons = Counter(reason for f in summary.features for reason in f.failed.values())
    for f in summary.features:
        for utt_id, reason in list(f.failed.items())[:5]:
            lines.append(f"  failed {f.name} {utt_id}: {reason}")
    if sum(reasons.values()) > 5 * len(summary.features):
        lines.append(f"  ... {sum(reasons.values())} failures in all; `mer cache info` lists them")
    if any(f.failed_before for f in summary.features):
        lines.append("  utterances that failed in an earlier run were skipped; --retry-failed tries them again")
    if summary.stopped:
        lines.append(f"  stopped early: {summary.stopped}")
    return "\n".join(lines)
