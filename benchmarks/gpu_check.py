"""The GPU path of `mer`, measured in one prepared run that fits a short device lease.

Three sections, each with its own time budget inside one overall budget (default 420 s); a
step that does not fit is skipped and says so in the table, and a step that fails says why:

  extraction  random-initialised base-size WavLM and wav2vec2 (group norm) on synthetic 1-15 s
              mp4 clips (AAC, 48 kHz stereo), through `mer.extract.runner.extract`: decode ->
              length-bucketed batches -> forward -> HDF5 shards. Audio seconds per second,
              nvidia-smi utilisation (mean / max), peak GPU memory and the pipeline's stages
              (how long compute waited for decoding, how long writing took); batched vs one
              clip at a time end to end (target >= 5x) and compute only (extract_bench's GPU
              section); fp32 batched vs one clip at a time against the CPU tests' tolerance
              (tests/test_ssl.py BATCH_TOL) and fp16 / bf16 vs fp32 (max relative difference).
  spectral    `logmfb80-d2` on the GPU vs on every CPU core of the machine, same clips in memory.
  training    one epoch of each fusion model at paper size (MCSAN, CM-RoBERTa, MCFN, MFDR,
              MGCMA) on a synthetic cache of the papers' feature shapes, through `mer fuse`'s
              fold path (mer.fuse.run.train_one_fold: FusionData's shard stream, the trainer's
              AMP): samples per second, GPU utilisation, peak memory, and the time the loop
              waited for batches as a share of the epoch.

    bash benchmarks/gpu_check.sh OUT_DIR             # on the GPU machine (installs the carried wheels)
    bash benchmarks/gpu_check.sh --dry-run OUT_DIR   # the same code on the CPU, tiny sizes (~30 s)

Writes OUT_DIR/gpu_check.md (one table) and OUT_DIR/gpu_check.json, rewritten after every row,
so a run cut short still leaves what it measured. docs/performance.md ("GPU check") has the
device call and the results.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import numpy as np  # noqa: E402

import extract_bench as bench  # noqa: E402  (its clips, pipeline timing, GPU section and nvidia-smi monitor)

SECTIONS = ("extraction", "spectral", "training")
FUSION_MODELS = ("mcsan", "cm-roberta", "mcfn", "mfdr", "mgcma")
SPEECH_FAMILIES = ("wavlm", "wav2vec2")
DTYPES_CUDA = ("fp32", "fp16", "bf16")
ONE_CLIP_SECONDS = 1e-6  # a batch budget no two clips fit in: the runner makes one batch per clip
BATCHING_TARGET = 5.0
LABELS = ("neutral", "happy", "angry", "sad")
CORPUS = "gpucheck"
TURNS_PER_DIALOGUE = 10  # MELD has 9.6 utterances per dialogue
# The papers' features (mer/fuse/models/base.py): dim, and frames per second of audio at frame level.
FEATURE_SHAPES = {
    "mfcc40": (40, 100.0),
    "logmfb80-d2": (240, 100.0),
    "wavlm-base": (768, 50.0),
    "wav2vec2-base": (768, 50.0),
    "opensmile-conf:emo_large.conf": (6552, None),
    "openl3-6144-mean": (6144, None),
    "bert-base-uncased": (768, None),
    "roberta-base": (768, None),
    "roberta-large-last4": (4096, None),  # the last 4 layers concatenated
}
TINY_DIM = 8  # every feature's last axis in the dry run


# ============================================================================ sizes and budgets


@dataclass
class Plan:
    """What one run measures; `--dry-run` is the same run, small and on the CPU."""

    device: str
    model_size: str  # base | tiny
    clips: int  # all clips: the batched pipeline and the spectral section
    seconds: tuple  # (shortest, longest) clip or synthetic utterance, uniform between
    subset_clips: int  # batched vs one clip at a time (one clip at a time is slow)
    precision_clips: int  # fp32 / fp16 / bf16 and batched-vs-single output checks (compute only)
    batch_seconds: tuple  # the pipeline's batch budgets measured on all clips; None = mer's default
    train_utterances: int
    eval_utterances: int  # dev and test each
    paper_size: bool  # paper-size model configs, else each config's tiny()
    budget: float  # seconds for the whole module
    section_budgets: dict
    repeats: int
    loader_workers: int

    @property
    def dtypes(self) -> tuple:
        return DTYPES_CUDA if self.device.startswith("cuda") else ("fp32",)


def plan_of(args) -> Plan:
    if args.dry_run:
        plan = Plan(device="cpu", model_size="tiny", clips=4, seconds=(0.5, 2.0), subset_clips=2, precision_clips=2,
                    batch_seconds=(None,), train_utterances=12, eval_utterances=4, paper_size=False, budget=90.0,
                    section_budgets={"extraction": 40.0, "spectral": 10.0, "training": 40.0}, repeats=1,
                    loader_workers=0)
    else:
        plan = Plan(device="cuda", model_size="base", clips=1000, seconds=(1.0, 15.0), subset_clips=250, precision_clips=32,
                    batch_seconds=(None, 240.0), train_utterances=1000, eval_utterances=100, paper_size=True,
                    budget=420.0, section_budgets={"extraction": 170.0, "spectral": 30.0, "training": 180.0},
                    repeats=1, loader_workers=0)  # one repeat: a lent GPU machine has no other users
    if args.budget:  # the sections keep their shares of the whole
        scale = args.budget / plan.budget
        plan = replace(plan, budget=args.budget, section_budgets={k: v * scale for k, v in plan.section_budgets.items()})
    overrides = {"clips": args.clips, "train_utterances": args.train_utterances, "loader_workers": args.loader_workers,
                 "device": args.device}
    return replace(plan, **{k: v for k, v in overrides.items() if v is not None})


class OutOfTime(BaseException):
    """A step ran past its budget (raised by the alarm, between two Python steps). Not an Exception,
    as KeyboardInterrupt is not: the runner retries a failed batch one clip at a time on any Exception."""


class Budget:
    """A deadline; `limited(seconds)` raises OutOfTime in this (main) thread once the smaller of
    the two deadlines passes, so that a step that hangs or runs long cannot eat the lease."""

    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()

    @contextlib.contextmanager
    def limited(self, seconds: float):
        section = Budget(min(seconds, self.left()))

        def expire(_signum, _frame):
            raise OutOfTime()

        previous = signal.signal(signal.SIGALRM, expire)
        signal.setitimer(signal.ITIMER_REAL, max(0.01, section.left()))
        try:
            yield section
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)


# ============================================================================ the report


@dataclass
class Report:
    out_dir: Path
    meta: dict
    rows: list = field(default_factory=list)

    def add(self, section: str, what: str, **values) -> dict:
        """One row; written out at once, so a run cut short keeps it."""
        row = {"section": section, "what": what, **values}
        self.rows.append(row)
        bench.log(f"{section}: {what}: {values.get('result') or values.get('note') or ''}")
        self.write()
        return row

    def skip(self, section: str, what: str, why: str) -> None:
        self.add(section, what, verdict="SKIPPED", note=why)

    def write(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "gpu_check.md").write_text(markdown(self.meta, self.rows) + "\n")
        document = bench.json_ready({"meta": self.meta, "rows": self.rows})
        (self.out_dir / "gpu_check.json").write_text(json.dumps(document, indent=1) + "\n")


COLUMNS = ("section", "what", "seconds", "throughput", "GPU util mean / max %", "GPU peak MiB", "result", "target",
           "verdict", "note")


def markdown(meta: dict, rows: list[dict]) -> str:
    lines = [f"# GPU check ({meta['variant']})", "",
             f"{meta['date']}; {meta['device']}; {meta['software']}; budget {meta['budget']:.0f} s "
             f"(sections: {meta['section_budgets']}); wall {meta.get('wall_seconds', 0):.0f} s; "
             f"command `{meta['command']}`", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(cell(row, column) for column in COLUMNS) + " |")
    return "\n".join(lines)


def cell(row: dict, column: str) -> str:
    if column == "GPU util mean / max %":
        u = row.get("gpu_utilisation") or {}
        return "-" if not u else f"{u['mean_percent']:.0f} / {u['max_percent']:.0f}"
    key = {"GPU peak MiB": "gpu_peak_mib"}.get(column, column)
    value = row.get(key)
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value).replace("|", "\\|")


# ============================================================================ GPU watching


@dataclass
class GpuWatch:
    utilisation: Optional[dict] = None
    peak_mib: Optional[float] = None

    def fields(self) -> dict:
        return {"gpu_utilisation": self.utilisation, "gpu_peak_mib": self.peak_mib}


@contextlib.contextmanager
def watched_gpu(device: str):
    """nvidia-smi utilisation and torch's peak allocated memory over the block (CUDA only)."""
    import torch

    watch = GpuWatch()
    if not device.startswith("cuda"):
        yield watch
        return
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    with bench.GpuMonitor() as monitor:
        yield watch
        torch.cuda.synchronize()
    watch.utilisation, watch.peak_mib = monitor.summary(), torch.cuda.max_memory_allocated() / 2**20


def free_gpu(device: str) -> None:
    import gc

    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


# ============================================================================ shared inputs


@dataclass
class Inputs:
    """The clips (all, and the two subsets) and their decoded audio, made once for every section."""

    work: Path
    all: bench.Clips
    subset: bench.Clips
    precision: bench.Clips
    audio: dict  # clip id (c00042, the same in every manifest) -> float32 mono 16 kHz
    warm: bench.Clips

    def items(self, clips: bench.Clips) -> list:
        from mer.data.corpora import prepare
        from mer.extract.base import ExtractItem

        return [ExtractItem(u, self.audio[clip_id(u.id)]) for u in prepare("manifest", clips.manifest).utterances]

    def audio_seconds(self, clips: bench.Clips) -> float:
        return sum(len(self.audio[i]) for i in clips.ids) / bench.SAMPLE_RATE


def clip_id(utterance_id: str) -> str:
    return utterance_id.split("/", 1)[1]


def make_inputs(plan: Plan, work: Path) -> Inputs:
    """Clips written with every core, then decoded by mer's decoder processes (before CUDA starts)."""
    from mer.data.decoding import DecodePool

    cores = os.cpu_count() or 1
    folder = work / "clips"
    bench.make_clips(folder, plan.clips, 0, *plan.seconds, cores)
    sets = {name: bench.read_clips(bench.write_manifest(work / f"{name}.csv", folder, "mp4", range(min(n, plan.clips)), 0))
            for name, n in (("all", plan.clips), ("subset", plan.subset_clips),
                            ("precision", plan.precision_clips), ("warm", 3))}
    from mer.data.corpora import prepare

    utterances = prepare("manifest", sets["all"].manifest).utterances
    with DecodePool(max(1, cores - 1)) as pool:
        audio, failures = pool.result(pool.submit(utterances))
    if failures:
        raise SystemExit(f"decoding failed: {list(failures.items())[:3]}")
    return Inputs(work, sets["all"], sets["subset"], sets["precision"],
                  {clip_id(utt_id): wave for utt_id, wave in audio.items()}, sets["warm"])


def speech_encoder(work: Path, family: str, size: str) -> bench.ModelEntry:
    """A random-initialised group-norm `family` encoder: tiny (tests' fixture) or base size (every
    field the fixture shrinks set back to transformers' defaults, which are the base checkpoints')."""
    import transformers

    tiny = bench.load_fixture("tiny_models")
    directory = work / "models" / f"{size}-{family}"
    if not (directory / "config.json").is_file():
        config_class = getattr(transformers, tiny.SPEECH_FAMILIES[family][0])
        shrunk = {**tiny.TINY_SPEECH_CONFIG, **tiny.TINY_FAMILY_CONFIG.get(family, {})}
        defaults = {} if size == "tiny" else {k: getattr(config_class(), k) for k in shrunk}
        tiny.save_tiny_speech_encoder(directory, family, "group", **defaults)
    return bench.ModelEntry(f"{size}-{family}", "audio", f"hf-audio:{directory}", size=size, directory=directory)


# ============================================================================ extraction


def bench_args(plan: Plan):
    """extract_bench's own settings (its parse_args defaults), with this run's repeats."""
    args = bench.parse_args([])
    args.repeats = plan.repeats
    return args


def pipeline_run(entry: bench.ModelEntry, clips: bench.Clips, plan: Plan, work: Path, batch_seconds,
                 label: str) -> tuple[dict, GpuWatch]:
    """mer extract end to end into a fresh cache, on plan.device; the runner's stage seconds."""
    config = bench.extract_config(clips.manifest, entry.feature, entry.options, work / f"cache-{label}",
                                  bench_args(plan))
    config.device, config.batch_seconds = plan.device, batch_seconds
    try:
        with watched_gpu(plan.device) as watch:
            stages = bench.run_pipeline(config)
    finally:
        shutil.rmtree(config.cache, ignore_errors=True)
    return stages, watch


def stages_note(stages: dict) -> str:
    return (f"stages s: decode wait {stages['decode']:.2f}, compute {stages['compute']:.2f}, "
            f"write {stages['write']:.2f}, commit {stages['commit']:.2f}")


def batch_label(batch_seconds) -> str:
    return "mer's default batches" if batch_seconds is None else f"{batch_seconds:g} s batches"


def extraction_rows(entry: bench.ModelEntry, inputs: Inputs, plan: Plan, report: Report) -> None:
    name = f"{entry.key} ({bench.parameter_count(entry.directory):.1f} M)"
    pipeline_run(entry, inputs.warm, plan, inputs.work, None, "warm")  # loads the model into this process once
    all_clips_row(entry, name, inputs, plan, report, plan.batch_seconds[0])
    batching_rows(entry, name, inputs, plan, report)
    precision_rows(entry, name, inputs, plan, report)
    compute_only_row(entry, name, inputs.subset, plan, report)
    for batch_seconds in plan.batch_seconds[1:]:  # last: whether bigger batches than mer's default gain
        all_clips_row(entry, name, inputs, plan, report, batch_seconds)


def all_clips_row(entry: bench.ModelEntry, name: str, inputs: Inputs, plan: Plan, report: Report,
                  batch_seconds: Optional[float]) -> None:
    stages, watch = pipeline_run(entry, inputs.all, plan, inputs.work, batch_seconds, "all")
    seconds = inputs.audio_seconds(inputs.all)
    report.add("extraction", f"{name} fp32: decode -> HDF5, {len(inputs.all.ids)} clips ({seconds:.0f} s of audio), "
               f"{batch_label(batch_seconds)}", seconds=stages["wall"],
               throughput=f"{seconds / stages['wall']:.1f} audio-s/s", note=stages_note(stages), **watch.fields())


def batching_rows(entry: bench.ModelEntry, name: str, inputs: Inputs, plan: Plan, report: Report) -> None:
    """Batched vs one clip at a time on the same subset, end to end."""
    section, clips = "extraction", inputs.subset
    seconds = inputs.audio_seconds(clips)
    walls = {}
    for label, batch_seconds in (("batched", None), ("one clip at a time", ONE_CLIP_SECONDS)):
        stages, watch = pipeline_run(entry, clips, plan, inputs.work, batch_seconds, label.replace(" ", "-"))
        walls[label] = stages["wall"]
        report.add(section, f"{name} fp32: decode -> HDF5, {len(clips.ids)} clips, {label}", seconds=stages["wall"],
                   throughput=f"{seconds / stages['wall']:.1f} audio-s/s", note=stages_note(stages), **watch.fields())
    ratio = walls["one clip at a time"] / walls["batched"]
    report.add(section, f"{name}: batched vs one clip at a time, end to end ({len(clips.ids)} clips)",
               result=f"{ratio:.2f}x", target=f">= {BATCHING_TARGET:g}x", verdict=met(ratio >= BATCHING_TARGET))


def compute_only_row(entry: bench.ModelEntry, name: str, clips: bench.Clips, plan: Plan, report: Report) -> None:
    args = bench_args(plan)
    (row,) = bench.gpu_rows(entry, clips, args, device=plan.device)
    report.add("extraction", f"{name}: batched ({args.gpu_batch_seconds:g} s batches) vs one clip at a time, "
               f"compute only (extract_bench's GPU section, {row['clips']} clips)", seconds=row["a"]["seconds"],
               throughput=f"{row['audio_seconds_per_second_batched']:.1f} vs "
                          f"{row['audio_seconds_per_second_single']:.1f} audio-s/s",
               gpu_utilisation=row["gpu_utilisation"], gpu_peak_mib=row["gpu_peak_allocated_mib"],
               result=f"{row['ratio']:.2f}x", target=f">= {BATCHING_TARGET:g}x", verdict=met(row["ratio"] >= BATCHING_TARGET))


def precision_rows(entry: bench.ModelEntry, name: str, inputs: Inputs, plan: Plan, report: Report) -> None:
    """Outputs of the same clips (float32, in memory): fp32 batched vs one at a time, half precisions vs fp32."""
    from tests.test_ssl import BATCH_TOL  # the CPU tests' tolerance for batched vs one clip at a time

    section, items = "extraction", inputs.items(inputs.precision)
    outputs, single = {}, None
    for dtype in plan.dtypes:
        extractor = loaded_extractor(entry, dtype, plan.device)
        extractor.extract(items[:1])  # kernels chosen and compiled before the clock starts
        started = time.perf_counter()
        outputs[dtype] = batched_outputs(extractor, items, plan.device)
        outputs_seconds = time.perf_counter() - started
        if dtype == "fp32":
            single = [extractor.extract([item])[0] for item in items]
        report.add(section, f"{name} {dtype}: {len(items)} clips batched, compute only",
                   seconds=outputs_seconds, throughput=f"{inputs.audio_seconds(inputs.precision) / outputs_seconds:.1f} "
                   "audio-s/s")
        del extractor
        free_gpu(plan.device)
    difference = max(float(np.abs(a - b).max()) for a, b in zip(outputs["fp32"], single))
    report.add(section, f"{name} fp32: batched vs one clip at a time, max |difference|", result=f"{difference:.1e}",
               target=f"< {BATCH_TOL:g} (tests/test_ssl.py)", verdict=met(difference < BATCH_TOL))
    reference = dict(enumerate(outputs["fp32"]))
    for dtype in DTYPES_CUDA[1:]:
        what = f"{name} {dtype} vs fp32: max |difference| / max |fp32| per clip, worst clip"
        if dtype not in outputs:
            report.skip(section, what, f"half precision needs CUDA (device {plan.device})")
            continue
        error = bench.max_relative_error(dict(enumerate(outputs[dtype])), reference)
        report.add(section, what, result=f"{error:.1e}",
                   note=f"float16 storage alone rounds to {bench.TOLERANCE:g} relative")


def loaded_extractor(entry: bench.ModelEntry, dtype: str, device: str):
    from mer.extract.base import build_extractor

    extractor = build_extractor(entry.feature, **entry.options, dtype=dtype)
    extractor.load(device)
    return extractor


def batched_outputs(extractor, items: list, device: str) -> list[np.ndarray]:
    """The extractor's outputs in item order, over the runner's batches for `device`."""
    from mer.extract.runner import ExtractConfig, make_batches

    config = ExtractConfig(dataset="manifest", features=[], cache=Path("unused"), device=device)
    by_id = {}
    for batch in make_batches(extractor, items, config):
        for item, array in zip(batch, extractor.extract(batch)):
            by_id[item.utterance.id] = array
    return [by_id[item.utterance.id] for item in items]


def met(ok: bool) -> str:
    return "met" if ok else "MISSED"


# ============================================================================ spectral


def spectral_rows(inputs: Inputs, plan: Plan, report: Report) -> None:
    """logmfb80-d2 on plan.device vs on the CPU with one torch thread per core; same clips, in memory,
    each side with the runner's batches for its device."""
    import torch

    from mer.extract.runner import torch_threads  # what `mer extract --threads N` does

    items = inputs.items(inputs.all)
    seconds = inputs.audio_seconds(inputs.all)
    cores = os.cpu_count() or 1
    extractors = {plan.device: loaded_spectral(plan.device), "cpu": loaded_spectral("cpu")}
    outputs: dict[str, list] = {}

    def side(device: str) -> Callable[[int], None]:
        def run(_repeat: int) -> None:
            with torch_threads(cores if device == "cpu" else None):
                outputs[device] = batched_outputs(extractors[device], items, device)
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
        return run

    for device in extractors:
        side(device)(0)  # warm-up: kernels, FFT plans, allocator
    walls = {}
    for device in extractors:
        with watched_gpu(device) as watch:
            walls[device] = bench.measure_sides({device: side(device)}, plan.repeats, 0,
                                                f"logmfb80-d2 [{device}]")[device].seconds
        report.add("spectral", f"logmfb80-d2 on {device}" + (f" ({cores} torch threads)" if device == "cpu" else "")
                   + f", {len(items)} clips in memory", seconds=walls[device],
                   throughput=f"{seconds / walls[device]:.1f} audio-s/s", **watch.fields())
    error = bench.max_relative_error(dict(enumerate(outputs[plan.device])), dict(enumerate(outputs["cpu"])))
    report.add("spectral", f"logmfb80-d2: {plan.device} vs cpu", result=f"{walls['cpu'] / walls[plan.device]:.2f}x",
               note=f"outputs: max relative difference {error:.1e}")


def loaded_spectral(device: str):
    from mer.extract.base import build_extractor

    extractor = build_extractor("logmfb80-d2")
    extractor.load(device)
    return extractor


# ============================================================================ training


def model_config(model: str, plan: Plan):
    """The paper-size config (the dry run: its tiny() variant), one epoch, no dev selection to resolve."""
    from mer.fuse.models import apply_overrides, make_config, tiny_config

    config = make_config(model) if plan.paper_size else tiny_config(model)
    return apply_overrides(config, {"max_epochs": 1, "patience": None, "monitor": "loss"})


def needed_features(plan: Plan) -> dict[tuple[str, str, str], None]:
    """(name, role, granularity) of every input the five models read, each once."""
    from mer.fuse.models.base import accepted_granularities

    needed = {}
    for model in FUSION_MODELS:
        config = model_config(model, plan)
        for role in ("audio", "text"):
            granularity = accepted_granularities(config, role)[0]
            for name in getattr(config, f"{role}_feature").split("+"):
                needed[(name, role, granularity)] = None
    return needed


def feature_spec(name: str, role: str, granularity: str, plan: Plan):
    from mer.cache.spec import FeatureSpec

    dim, rate = FEATURE_SHAPES[name]
    return FeatureSpec(name, role, granularity, dim if plan.paper_size else TINY_DIM,
                       rate if granularity == "frame" else None, "float16", {"synthetic": True, "granularity": granularity})


def synthetic_utterances(plan: Plan) -> list:
    """Dialogues of TURNS_PER_DIALOGUE utterances: train, then dev, then test; seeded labels and lengths."""
    from mer.data.utterance import Utterance

    rng = np.random.default_rng(0)
    counts = (("train", plan.train_utterances), ("dev", plan.eval_utterances), ("test", plan.eval_utterances))
    utterances = []
    for split, count in counts:
        for k in range(count):
            dialogue = f"{split}{k // TURNS_PER_DIALOGUE}"
            utterances.append(Utterance(id=f"{CORPUS}/{dialogue}_u{k % TURNS_PER_DIALOGUE}", corpus=CORPUS,
                                        split=split, dialogue=dialogue, turn=k % TURNS_PER_DIALOGUE,
                                        label=LABELS[int(rng.integers(len(LABELS)))],
                                        extra={"seconds": float(rng.uniform(*plan.seconds)),
                                               "words": int(rng.integers(3, 31))}))
    return utterances


def synthetic_array(spec, utterance, pool: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rows of the utterance's length (frames from its duration, words or tokens from its word count),
    cut from a pool of normal values (the values do not matter here, the shapes do)."""
    if spec.granularity == "utterance":
        shape = (spec.dim,)
    elif spec.granularity == "frame":
        shape = (int(utterance.extra["seconds"] * spec.frame_rate), spec.dim)
    else:
        shape = (utterance.extra["words"] + (2 if spec.granularity == "token" else 0), spec.dim)  # [CLS] ... [SEP]
    size = int(np.prod(shape))
    start = int(rng.integers(0, len(pool) - size))
    return pool[start:start + size].reshape(shape)


def build_synthetic_cache(root: Path, plan: Plan) -> None:
    from mer.cache.corpus import merge_corpus_manifest
    from mer.cache.writer import FeatureWriter

    utterances = synthetic_utterances(plan)
    merge_corpus_manifest(root, CORPUS, utterances)
    rng = np.random.default_rng(1)
    pool = rng.standard_normal(1 << 23).astype(np.float16)  # 8 M values: the longest utterance needs 0.6 M
    for name, role, granularity in needed_features(plan):
        writer = FeatureWriter(root, CORPUS, feature_spec(name, role, granularity, plan))
        for start in range(0, len(utterances), 128):
            claim = writer.claim([u.id for u in utterances[start:start + 128]])
            arrays = {u.id: synthetic_array(writer.spec, u, pool, rng) for u in utterances[start:start + 128]}
            writer.commit(claim, writer.write_temp(claim, arrays), {})


@dataclass
class EpochClock:
    """What one training epoch took: wall, time spent waiting for the next batch, samples seen."""

    stop_at: float  # time.monotonic() after which the epoch ends early (its section's budget)
    seconds: float = 0.0
    waiting: float = 0.0
    batches: int = 0
    planned_batches: Optional[int] = None
    samples: int = 0
    utterances: int = 0
    parameters: int = 0
    watch: GpuWatch = field(default_factory=GpuWatch)

    def timed(self, batches: Iterable[dict], device: str) -> Iterable[dict]:
        with contextlib.suppress(TypeError):
            self.planned_batches = len(batches)
        with watched_gpu(device) as self.watch:
            started = time.perf_counter()
            iterator = iter(batches)
            while time.monotonic() < self.stop_at:
                asked = time.perf_counter()
                batch = next(iterator, None)
                self.waiting += time.perf_counter() - asked
                if batch is None:
                    break
                self.batches += 1
                self.samples += len(batch["label"])
                self.utterances += int((batch["label"] != -100).sum())
                yield batch
            self.seconds = time.perf_counter() - started


@contextlib.contextmanager
def clocked_training(clock: EpochClock, device: str):
    """mer.fuse.run.train_one_fold as it is, with its training batches timed (train_fold wrapped)."""
    import mer.fuse.run as fuse_run

    original = fuse_run.train_fold

    def train_fold(model, config, trainer, fold, train_batches, *args, **kwargs):
        clock.parameters = sum(p.numel() for p in model.parameters())
        return original(model, config, trainer, fold, lambda epoch: clock.timed(train_batches(epoch), device),
                        *args, **kwargs)

    fuse_run.train_fold = train_fold
    try:
        yield clock
    finally:
        fuse_run.train_fold = original


def training_row(model: str, cache: Path, plan: Plan, report: Report, budget: Budget) -> None:
    from mer.cache.reader import FeatureCache
    from mer.data.protocols import make_folds
    from mer.fuse.run import FoldJob, model_features, resolve_features, train_one_fold
    from mer.fuse.trainer import TrainerConfig

    config = model_config(model, plan)
    fold_set = make_folds("manifest", FeatureCache(cache).utterances(CORPUS))
    features = resolve_features(FeatureCache(cache), CORPUS, model, config, model_features(model, config, CORPUS, {}))
    trainer = TrainerConfig(device=plan.device)  # `mer fuse`'s defaults: AMP on CUDA, deterministic
    job = FoldJob(model, config, trainer, cache, CORPUS, features, fold_set, fold_set.folds[0].name, preload=False,
                  loader_workers=plan.loader_workers)
    budget_seconds = budget.left()
    clock = EpochClock(stop_at=time.monotonic() + budget_seconds - EVAL_RESERVE_S)
    after = ""
    try:
        with clocked_training(clock, plan.device):
            train_one_fold(job, log=None)
    except OutOfTime:
        if not clock.seconds:
            raise
        after = "; out of time in the dev / test passes after the epoch"
    if not clock.batches:
        report.skip("training", model, f"no time left for a batch (its share of the budget: {budget_seconds:.0f} s)")
        return
    cut = after if clock.planned_batches in (None, clock.batches) else \
        f"{after}; CUT by its budget after {clock.batches} of {clock.planned_batches} batches"
    amp = "AMP fp16" if trainer.amp and plan.device.startswith("cuda") else "no AMP (CPU)"
    report.add("training", f"{model} ({clock.parameters / 1e6:.1f} M parameters, batch {config.batch_size}, {amp}): "
               f"one epoch, {clock.samples} samples ({clock.utterances} utterances) streamed from the cache",
               seconds=clock.seconds, throughput=f"{clock.samples / clock.seconds:.1f} samples/s", **clock.watch.fields(),
               result=f"waiting for batches {clock.waiting:.2f} s = {100 * clock.waiting / clock.seconds:.0f} % of the epoch",
               note=f"loader workers {plan.loader_workers}; inputs {features}{cut}")


EVAL_RESERVE_S = 5.0  # of a training step's budget, kept for the dev / test passes after the epoch


# ============================================================================ sections


def extraction_section(plan: Plan, inputs: Inputs, report: Report, budget: Budget) -> None:
    for number, family in enumerate(SPEECH_FAMILIES):
        entry = speech_encoder(inputs.work, family, plan.model_size)
        run_step(report, "extraction", entry.key, shared(budget, len(SPEECH_FAMILIES) - number),
                 lambda: extraction_rows(entry, inputs, plan, report))
        free_gpu(plan.device)


def spectral_section(plan: Plan, inputs: Inputs, report: Report, budget: Budget) -> None:
    run_step(report, "spectral", "logmfb80-d2", budget, lambda: spectral_rows(inputs, plan, report))


def training_section(plan: Plan, inputs: Inputs, report: Report, budget: Budget) -> None:
    cache = inputs.work / "train-cache"
    started = time.perf_counter()
    if not run_step(report, "training", "synthetic cache", budget, lambda: build_synthetic_cache(cache, plan)):
        return
    report.add("training", f"synthetic cache: {plan.train_utterances} + {plan.eval_utterances} + "
               f"{plan.eval_utterances} utterances, {len(needed_features(plan))} features, {cache_size(cache)}",
               seconds=time.perf_counter() - started)
    for number, model in enumerate(FUSION_MODELS):
        step = shared(budget, len(FUSION_MODELS) - number)
        run_step(report, "training", model, step, lambda: training_row(model, cache, plan, report, step))
        free_gpu(plan.device)


def shared(budget: Budget, steps_to_run: int) -> Budget:
    """An equal share of what is left for each step still to run (a fast step leaves more to the next)."""
    return Budget(budget.left() / steps_to_run)


def cache_size(root: Path) -> str:
    total = sum(p.stat().st_size for p in root.rglob("*.h5"))
    return f"{total / 2**20:.0f} MiB of HDF5"


def run_step(report: Report, section: str, what: str, budget: Budget, step: Callable[[], None]) -> bool:
    """The step within `budget`; running out or failing becomes a row that says so."""
    if budget.left() < 1:
        report.skip(section, what, "no time left in the section's budget")
        return False
    try:
        with budget.limited(budget.left()):
            step()
        return True
    except OutOfTime:
        report.skip(section, what, "stopped: ran past the section's budget (the rows before it are complete)")
    except (Exception, SystemExit) as exc:  # noqa: BLE001  (recorded, then the next step runs)
        report.add(section, what, verdict="ERROR", note=f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
    return False


SECTION_FUNCTIONS = {"extraction": extraction_section, "spectral": spectral_section, "training": training_section}


# ============================================================================ main


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_check.md and gpu_check.json")
    parser.add_argument("--dry-run", action="store_true", help="the same code on the CPU: tiny models, 4 clips")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"subset of {','.join(SECTIONS)}")
    parser.add_argument("--budget", type=float,
                        help="seconds for the whole run, the sections' budgets scaled alike (default 420; dry run 90)")
    parser.add_argument("--clips", type=int, help="clips for extraction and spectral (default 1000)")
    parser.add_argument("--train-utterances", type=int, help="training utterances of the synthetic cache (1000)")
    parser.add_argument("--loader-workers", type=int, help="DataLoader workers per fold (default mer fuse's: 0)")
    parser.add_argument("--device", help="default cuda (dry run: cpu)")
    parser.add_argument("--workdir", type=Path, help="clips, models and caches (default: a temporary folder)")
    return parser.parse_args(argv)


def software() -> str:
    import torch
    import transformers

    tf32 = f"TF32 matmul {torch.backends.cuda.matmul.allow_tf32}, cuDNN {torch.backends.cudnn.allow_tf32}"  # GPU rounding
    return f"Python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}, {tf32}"


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, {os.cpu_count()} CPU cores"
    return f"{platform.machine()} CPU, {os.cpu_count()} cores (no GPU)"


def third_party_imports() -> list[str]:
    """Top-level packages that this repository's own loaded modules import and that are loaded now,
    minus the standard library: what the device must provide (its image, or the carried wheels)."""
    import ast

    named = set()
    for module in list(sys.modules.values()):
        path = Path(getattr(module, "__file__", None) or "/").resolve()
        if path.suffix == ".py" and ROOT in path.parents and "site-packages" not in path.parts and path.is_file():
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    named.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                    named.add(node.module.split(".")[0])
    local = {"mer", "tests", *(p.stem for p in (ROOT / "benchmarks").glob("*.py"))}
    return sorted(n for n in named - local - set(sys.stdlib_module_names) if n in sys.modules)


def main(argv=None) -> int:
    args = parse_args(argv)
    plan = plan_of(args)
    budget = Budget(plan.budget)
    started = time.perf_counter()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="mer-gpu-check-"))
    os.environ.setdefault("MER_HOME", str(workdir / "mer-home"))
    meta = {"variant": "dry run: CPU, tiny sizes" if args.dry_run else "full", "date":
            datetime.datetime.now().isoformat(timespec="seconds"), "device": device_name(plan.device),
            "software": software(), "budget": plan.budget, "section_budgets": plan.section_budgets,
            "command": " ".join(["benchmarks/gpu_check.py", *sys.argv[1:]]), "plan": plan.__dict__}
    report = Report(args.out, meta)
    wanted = [s for s in args.only.split(",") if s]
    try:
        inputs = make_inputs(plan, workdir)
        bench.log(f"inputs ready in {time.perf_counter() - started:.0f} s")
        for section in SECTIONS:
            if section not in wanted:
                report.skip(section, "(whole section)", "not asked for (--only)")
                continue
            seconds = min(plan.section_budgets[section], budget.left())
            SECTION_FUNCTIONS[section](plan, inputs, report, Budget(seconds))
    finally:
        meta["wall_seconds"] = time.perf_counter() - started
        meta["third_party_imports"] = third_party_imports()
        report.write()
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    bench.log(f"wrote {args.out / 'gpu_check.md'} and gpu_check.json in {meta['wall_seconds']:.0f} s")
    print((args.out / "gpu_check.md").read_text())
    return 1 if any(r.get("verdict") == "ERROR" for r in report.rows) else 0


if __name__ == "__main__":
    sys.exit(main())
