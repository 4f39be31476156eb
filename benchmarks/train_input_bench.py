"""Stage 2's input, side by side with the peers' one-`.npy`-per-utterance layout (issue 10).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/train_input_bench.py --out /tmp/train_input_bench.md
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/train_input_bench.py --quick      # small version, seconds

Two synthetic caches are written with mer's own cache writer (FeatureWriter: claims, shards of
128 utterances, checksummed HDF5) into a temporary folder that is deleted at the end, and each
utterance's array once more as its own `.npy` file, twice: in the cache's float16 (the same bytes)
and in float32, the layout MERTools and EmoBox write (`np.save` of their encoders' float32 output):
- WavLM-base frames of IEMOCAP: 5,531 utterances of 1 to 20 s at 50 frames/s, 768-d float16
  (about 2.5 GB, above mer.fuse.run.PRELOAD_BYTES), with word-level 768-d text (bert-base) for MFDR;
  and the same with 4x the utterances (about 10 GB), for the memory of a fold only;
- MELD-shaped word-level text: 13,708 utterances of about 11 words, 384-d float16 (minilm-l6),
  108 shards, about 114 MB.

Measured, each pair interleaved (ours, peer, ours, peer, ...; the fastest of each kept), with the
page cache WARM (every file read once before timing; the cold rows evict our own files with
posix_fadvise(DONTNEED) first). The machine's load average is printed before and after each side,
and a pair is measured again when the load after it exceeded the number of cores:
1. one training epoch read through `FusionData(...).loader("train")` (not preloaded: pools of
   whole shards, batches collated and normalised) vs one `np.load` per utterance in a shuffled
   order, of the float16 and of the float32 files (target >= 5x);
2. random access, every id once in a shuffled order: `FeatureStore.get` vs `np.load`, float16 and
   float32 files (>= 1x);
3. MFDR at paper size (T = 255, L = 50, D = 256) on the CPU: training batches from the cache
   loader vs the same batches already collated in memory (>= 0.9: the input pipeline is hidden);
   both sides train the same number of batches (`--mfdr-batches`) from the same initial weights;
4. peak RSS (ru_maxrss) of one fold in a subprocess (`mer.fuse.run.train_one_fold`, MFDR at paper
   size, one epoch of at most `--mfdr-batches` training batches, then dev and test evaluated in
   full) with the 2.5 GB cache and with the 10 GB one (within 10 %);
and, to explain the numbers: one shard read with the cache's fletcher32 checksums vs the same chunks
unchecked, and a DataLoader worker's hand-off per batch (`--parts handoff`, the basis of
`--loader-workers auto`).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np

SHARD_SIZE = 128  # utterances per shard, as `mer extract --shard-size` by default
FRAME_RATE = 50.0
LABELS = ("neutral", "happy", "angry", "sad")
SPEAKING_RATE = 2.5  # words per second of IEMOCAP-like speech
EVALUATION_SHARE = 0.1  # dev and test each
RSS_EVALUATION_SHARE = 0.02  # the RSS fold's dev and test each: evaluating 10 % would take minutes on 2 cores
NOISE_ROWS = 1 << 15  # rows of random values every synthetic utterance is a slice of


@dataclass(frozen=True)
class Scale:
    iemocap: int = 5531
    meld: int = 13708
    large_factor: int = 4  # the ~10 GB cache: this many times the utterances of the ~2.5 GB one
    mfdr_batches: int = 24  # at least; whole pools (about 13 batches each at this size)
    repeats: int = 3
    mfdr_repeats: int = 2  # an MFDR side takes a minute on 2 cores
    cold: bool = True


QUICK = Scale(iemocap=300, meld=1000, large_factor=2, mfdr_batches=3, repeats=1, mfdr_repeats=1, cold=False)


@dataclass(frozen=True)
class FeatureShape:
    name: str
    modality: str
    granularity: str
    dim: int


WAVLM = FeatureShape("wavlm-base", "audio", "frame", 768)
BERT_WORDS = FeatureShape("bert-base-uncased", "text", "word", 768)
MINILM_WORDS = FeatureShape("minilm-l6", "text", "word", 384)


@dataclass
class Corpus:
    root: Path
    name: str
    ids: list[str]
    npy: dict[str, dict[str, Path]]  # feature -> id -> its float16 .npy file (the cache's bytes)
    npy32: dict[str, dict[str, Path]]  # feature -> id -> its float32 .npy file (the peers' layout)
    nbytes: dict[str, int]  # feature -> bytes of its shards


# ----------------------------------------------------------------------------- building the caches


def iemocap_rows(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(frames, words) per utterance: 1 to 20 s, skewed to short turns as IEMOCAP's, mean about 6 s."""
    seconds = np.clip(rng.gamma(2.0, 2.9, n), 1.0, 20.0)
    words = np.maximum(1, np.round(seconds * SPEAKING_RATE * rng.uniform(0.6, 1.4, n)))
    return np.round(seconds * FRAME_RATE).astype(int), words.astype(int)


def meld_words(n: int, rng: np.random.Generator) -> np.ndarray:
    return 1 + rng.poisson(7.3, n)  # 8.3 words: 114 MB of shards, as MELD's minilm-l6 cache


def build_corpus(root: Path, name: str, features: dict[FeatureShape, np.ndarray], npy_for: Iterable[str],
                 seed: int) -> Corpus:
    """A real mer cache of `name` (corpus manifest + one FeatureWriter per feature, shards of SHARD_SIZE)
    whose utterance k of feature f has rows features[f][k], plus one .npy per utterance for `npy_for`."""
    from mer.cache.corpus import merge_corpus_manifest
    from mer.data.utterance import Utterance

    count = len(next(iter(features.values())))
    ids = [f"{name}/utt{k:06d}" for k in range(count)]
    rng = np.random.default_rng(seed)
    merge_corpus_manifest(root, name, [Utterance(id=i, corpus=name, label=LABELS[k % len(LABELS)])
                                       for k, i in enumerate(ids)])
    corpus = Corpus(root, name, ids, {}, {}, {})
    for shape, rows in features.items():
        npy_dir = root / "npy" / name / shape.name if shape.name in npy_for else None
        corpus.nbytes[shape.name], corpus.npy[shape.name], corpus.npy32[shape.name] = \
            write_feature(root, name, shape, ids, rows, rng, npy_dir)
    return corpus


def write_feature(root: Path, corpus: str, shape: FeatureShape, ids: list[str], rows: np.ndarray,
                  rng: np.random.Generator, npy_dir: Optional[Path]) -> tuple[int, dict, dict]:
    from mer.cache.spec import FeatureSpec
    from mer.cache.writer import FeatureWriter

    spec = FeatureSpec(shape.name, shape.modality, shape.granularity, shape.dim,
                       FRAME_RATE if shape.granularity == "frame" else None, "float16", config={"synthetic": True})
    noise = rng.standard_normal((NOISE_ROWS, shape.dim), np.float32).astype(np.float16)
    writer = FeatureWriter(root, corpus, spec)
    paths: dict[str, dict[str, Path]] = {"float16": {}, "float32": {}}
    npy_dirs = {dtype: npy_dir.with_name(f"{npy_dir.name}-{dtype}") for dtype in paths} if npy_dir else {}
    for directory in npy_dirs.values():
        directory.mkdir(parents=True)
    for start in range(0, len(ids), SHARD_SIZE):
        claim = writer.claim(ids[start:start + SHARD_SIZE])
        arrays = {}
        for utt_id, n in zip(claim.ids, rows[start:start + SHARD_SIZE]):
            offset = int(rng.integers(0, NOISE_ROWS - n))
            arrays[utt_id] = noise[offset:offset + n]
        writer.commit(claim, writer.write_temp(claim, arrays), {})
        for (dtype, directory), (utt_id, array) in itertools.product(npy_dirs.items(), arrays.items()):
            paths[dtype][utt_id] = directory / f"{utt_id.split('/')[1]}.npy"
            np.save(paths[dtype][utt_id], array.astype(dtype))
    directory = next((root / corpus).glob(f"{shape.name}@*"))
    return sum(p.stat().st_size for p in directory.glob("shard-*.h5")), paths["float16"], paths["float32"]


def build_all(tmp: Path, scale: Scale) -> dict[str, Corpus]:
    rng = np.random.default_rng(0)
    frames, words = iemocap_rows(scale.iemocap, rng)
    iemocap = build_corpus(tmp, "iemocap-like", {WAVLM: frames, BERT_WORDS: words}, ("wavlm-base",), 1)
    meld = build_corpus(tmp, "meld-like", {MINILM_WORDS: meld_words(scale.meld, rng)}, ("minilm-l6",), 2)
    return {"iemocap": iemocap, "meld": meld}


def build_large(tmp: Path, scale: Scale) -> Corpus:
    rng = np.random.default_rng(3)
    frames, words = iemocap_rows(scale.iemocap * scale.large_factor, rng)
    return build_corpus(tmp, "iemocap-like-large", {WAVLM: frames, BERT_WORDS: words}, (), 4)


def fold_of(corpus: Corpus, evaluation_share: float = EVALUATION_SHARE):
    """dev and test of `evaluation_share` of the utterances each, drawn at random; train the rest."""
    from mer.data.protocols import Fold

    order = np.random.default_rng(5).permutation(len(corpus.ids))
    dev = test = max(1, int(evaluation_share * len(order)))
    pick = lambda part: tuple(corpus.ids[k] for k in sorted(part))  # noqa: E731
    return Fold("bench", pick(order[dev + test:]), pick(order[:dev]), pick(order[dev:dev + test]))


def targets_of(corpus: Corpus) -> dict[str, str]:
    return {i: LABELS[k % len(LABELS)] for k, i in enumerate(corpus.ids)}


# ----------------------------------------------------------------------------- timing


def load() -> float:
    return os.getloadavg()[0]


def high_load() -> float:
    return float(os.cpu_count() or 1)


@dataclass
class Timing:
    seconds: float
    load_before: float
    load_after: float


def timed(run: Callable[[], object], label: str) -> Timing:
    before = load()
    started = time.perf_counter()
    run()
    seconds = time.perf_counter() - started
    timing = Timing(seconds, before, load())
    print(f"  {label}: {seconds:.3f} s (load {timing.load_before:.2f} -> {timing.load_after:.2f})", flush=True)
    return timing


@dataclass
class Pair:
    ours: Timing
    peer: Timing

    @property
    def ratio(self) -> float:  # > 1: ours is faster
        return self.peer.seconds / self.ours.seconds


def compare(title: str, ours: Callable, peer: Callable, repeats: int, warm: Optional[Callable] = None,
            max_extra: int = 1) -> Pair:
    """After `warm` (default: each side once, untimed), `repeats` interleaved timings of each side (more,
    up to `max_extra`, while the load after a pair exceeded the cores); the fastest of each side, with
    the loads it was measured under."""
    print(f"{title} (warm-up, untimed)", flush=True)
    (warm or (lambda: (ours(), peer())))()
    measure = lambda: Pair(timed(ours, "ours"), timed(peer, "peer"))  # noqa: E731
    kept = [measure() for _ in range(repeats)]
    while len(kept) < repeats + max_extra and max(kept[-1].ours.load_after, kept[-1].peer.load_after) > high_load():
        print(f"  load above {high_load():.0f}: measured again", flush=True)
        kept.append(measure())
    return Pair(min((p.ours for p in kept), key=lambda t: t.seconds), min((p.peer for p in kept), key=lambda t: t.seconds))


def evict(paths: Iterable[Path]) -> None:
    """Drop our own files from the page cache (clean pages, no root needed, other users' files untouched)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def cold(ours: Callable, peer: Callable, files: Callable[[], list[Path]]) -> Pair:
    print("cold page cache (our files evicted before each side)", flush=True)
    evict(files())
    ours_timing = timed(ours, "ours")
    evict(files())
    return Pair(ours_timing, timed(peer, "peer"))


def drop_caches_possible() -> str:
    try:
        with open("/proc/sys/vm/drop_caches", "w"):
            pass
        return "possible (root), not used: it would also evict the files of the others who share the machine"
    except OSError as exc:
        return f"not possible ({exc.strerror})"


# ----------------------------------------------------------------------------- the sides


def fusion_data(corpus: Corpus, audio: Optional[str], text: Optional[str], **options):
    from mer.fuse.data import FusionData

    return FusionData(corpus.root, corpus.name, audio, text, fold_of(corpus), targets_of(corpus), LABELS,
                      preload=False, **options)


def loader_epoch(data, batch_size: int, workers: int = 0) -> Callable[[], int]:
    loader = data.loader("train", batch_size, shuffle=True, seed=0, num_workers=workers)
    return lambda: sum(len(batch["ids"]) for batch in loader)


def npy_epoch(paths: dict[str, Path], ids: list[str], seed: int = 0, collate: Optional[Callable] = None,
              batch_size: int = 32) -> Callable[[], int]:
    """The peers' epoch: one np.load per utterance in a shuffled order; with `collate`, batches of
    `batch_size` in that order made by it (as a peer's DataLoader with a padding collate)."""
    state = {"epoch": 0}

    def run() -> int:
        order = np.random.default_rng([seed, state["epoch"]]).permutation(len(ids))
        state["epoch"] += 1
        if collate is None:
            return sum(len(np.load(paths[ids[k]])) for k in order)
        role, = collate.roles
        batches = (order[start:start + batch_size] for start in range(0, len(order), batch_size))
        return sum(len(collate([{"id": ids[k], "label": 0, role: np.load(paths[ids[k]])} for k in batch])["ids"])
                   for batch in batches)
    return run


def get_pass(corpus: Corpus, feature: str, ids: list[str]) -> Callable[[], int]:
    """Every id once, shuffled, by FeatureStore.get from a store opened afresh (its handles opened on the way)."""
    from mer.cache.reader import FeatureCache

    def run() -> int:
        store = FeatureCache(corpus.root).open(corpus.name, feature)
        order = np.random.default_rng(7).permutation(len(ids))
        try:
            return sum(len(store.get(ids[k])) for k in order)
        finally:
            store.close()
    return run


def npy_get_pass(paths: dict[str, Path], ids: list[str]) -> Callable[[], int]:
    order = np.random.default_rng(7).permutation(len(ids))
    return lambda: sum(len(np.load(paths[ids[k]])) for k in order)


def mfdr_config():
    from mer.fuse.models import make_config

    return make_config("mfdr", "iemocap")


def mfdr_epoch(batches: Callable[[], Iterable[dict]], input_dims: dict, num_batches: int) -> Callable[[], None]:
    """MFDR at paper size, from the same initial weights each time, trained on `num_batches` batches."""
    import torch
    from mer.fuse.models import build_model, task_loss_for
    from mer.fuse.trainer import TrainerConfig, _train_epoch, seed_everything

    config = mfdr_config()

    def run() -> None:
        seed_everything(0)
        model = build_model("mfdr", len(LABELS), input_dims, config)
        optimiser = torch.optim.Adam(model.parameters(), lr=config.lr)
        scaler = torch.amp.GradScaler("cuda", enabled=False)
        _train_epoch(model, config, TrainerConfig(), optimiser, scaler, itertools.islice(batches(), num_batches), 0,
                     task_loss_for(len(LABELS)), torch.device("cpu"), False)
    return run


# ----------------------------------------------------------------------------- peak RSS of a fold


def fold_rss(root: Path, corpus: str, mfdr_batches: int) -> dict:
    """One fold in THIS process (the subprocess side): returns its peak RSS and what it read."""
    import torch
    import mer.fuse.data as data_module
    from mer.data.protocols import FoldSet
    from mer.fuse.run import FoldJob, train_one_fold
    from mer.fuse.trainer import TrainerConfig

    cap_training_batches(data_module, mfdr_batches)
    ids = [json.loads(line)["id"] for line in (root / corpus / "utterances.jsonl").read_text().splitlines()]
    bench = Corpus(root, corpus, ids, {}, {})
    fold_set = FoldSet("bench", [fold_of(bench, RSS_EVALUATION_SHARE)], LABELS, False, "synthetic", targets_of(bench))
    job = FoldJob("mfdr", replace(mfdr_config(), max_epochs=1, monitor="ua"), TrainerConfig(), root, corpus,
                  {"audio": WAVLM.name, "text": BERT_WORDS.name}, fold_set, "bench", False, 0)
    started = time.perf_counter()
    result = train_one_fold(job, log=None)
    return {"peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "torch_threads": torch.get_num_threads(),
            "seconds": time.perf_counter() - started, "test_utterances": len(result.test_predictions.ids)}


def cap_training_batches(data_module, limit: int) -> None:
    """A shuffled split's passes stop after `limit` batches (the fold's training stays short); dev and
    test, read in shard order, are read in full."""
    stream_batches = data_module.ShardStream.batches

    def batches(self, epoch, worker=0, workers=1):
        it = stream_batches(self, epoch, worker, workers)
        return itertools.islice(it, limit) if self.batcher.shuffle else it
    data_module.ShardStream.batches = batches


def measure_rss(corpus: Corpus, mfdr_batches: int) -> dict:
    import torch

    command = [sys.executable, __file__, "--fold-rss", str(corpus.root), corpus.name, str(mfdr_batches),
               "--torch-threads", str(torch.get_num_threads())]
    print(f"peak RSS of a fold on {corpus.name} ({sum(corpus.nbytes.values()) / 1e9:.2f} GB)"
          f" (load {load():.2f})", flush=True)
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    print(f"  {result['peak_rss'] / 2 ** 20:.0f} MiB in {result['seconds']:.1f} s (load {load():.2f})", flush=True)
    return result


# ----------------------------------------------------------------------------- the run


@dataclass
class Row:
    what: str
    ours: str
    peer: str
    ratio: float
    target: str
    met: Optional[bool]


def speed_row(what: str, pair: Pair, target: Optional[float]) -> Row:
    return Row(what, _timing(pair.ours), _timing(pair.peer), pair.ratio, f">= {target:g}x" if target else "(none)",
               pair.ratio >= target if target else None)


def _timing(t: Timing) -> str:
    return f"{t.seconds:.2f} s (load {t.load_before:.1f} -> {t.load_after:.1f})"


PARTS = ("epoch", "random", "handoff", "mfdr", "rss")
NPY_WHY = {"float16": " (the cache's dtype: the same bytes)", "float32": " (what MERTools and EmoBox write)"}
READ_CASES = (("IEMOCAP-like WavLM frames", "iemocap", WAVLM.name, "audio"),
              ("MELD-like minilm-l6 words", "meld", MINILM_WORDS.name, "text"))


def read_rows(corpora: dict[str, Corpus], scale: Scale, parts: set[str]) -> list[Row]:
    rows = []
    for key, name, feature, role in READ_CASES:
        corpus = corpora[name]
        if "epoch" in parts:
            rows += epoch_rows(key, corpus, feature, role, scale)
        if "random" in parts:
            everyone = list(corpus.ids)
            for dtype, paths in (("float16", corpus.npy[feature]), ("float32", corpus.npy32[feature])):
                pair = compare(f"random access, {key}: get vs {dtype} .npy", get_pass(corpus, feature, everyone),
                               npy_get_pass(paths, everyone), scale.repeats)
                rows.append(speed_row(f"random access by id, {key} ({len(everyone)} ids, warm), vs {dtype} "
                                      f"`.npy`{NPY_WHY[dtype]}", pair, 1))
    if "random" in parts:
        rows.append(checksum_row(corpora["iemocap"], WAVLM.name, scale))
    return rows


def checksum_row(corpus: Corpus, feature: str, scale: Scale) -> Row:
    """What the cache's integrity check costs: one shard's rows read whole from an HDF5 file with the cache's
    chunks and fletcher32 checksums, against the same rows and chunks without them (what no mer cache is)."""
    import h5py

    shard = sorted(corpus.root.glob(f"{corpus.name}/{feature}@*/shard-*.h5"))[0]
    with h5py.File(shard, "r") as f:
        rows, chunks = f["data"][()], f["data"].chunks
    copies = {}
    for checked in (True, False):
        copies[checked] = shard.parent.parent / f"checksum-{checked}.h5"
        with h5py.File(copies[checked], "w") as f:
            f.create_dataset("data", data=rows, chunks=chunks, fletcher32=checked)

    def read(path: Path) -> Callable[[], int]:
        def run() -> int:
            with h5py.File(path, "r") as f:
                return sum(len(f["data"][()]) for _ in range(10))
        return run
    pair = compare(f"one shard ({rows.nbytes / 1e6:.0f} MB) read 10x: fletcher32-checked vs unchecked",
                   read(copies[True]), read(copies[False]), scale.repeats)
    for path in copies.values():
        path.unlink()
    return speed_row(f"(why) one {feature} shard of {rows.nbytes / 1e6:.0f} MB read whole 10 times, with the "
                     "cache's fletcher32 checksums vs the same chunks unchecked", pair, None)


def epoch_rows(key: str, corpus: Corpus, feature: str, role: str, scale: Scale) -> list[Row]:
    data = fusion_data(corpus, feature if role == "audio" else None, feature if role == "text" else None)
    train = list(data.ids["train"])
    ours, rows = loader_epoch(data, batch_size=32), []
    for dtype, paths in (("float16", corpus.npy[feature]), ("float32", corpus.npy32[feature])):
        pair = compare(f"epoch read, {key}: loader vs {dtype} .npy", ours, npy_epoch(paths, train), scale.repeats)
        rows.append(speed_row(f"epoch read, {key} ({len(train)} utts, warm), vs {dtype} `.npy`{NPY_WHY[dtype]}",
                              pair, 5))
    peer_batches = npy_epoch(corpus.npy[feature], train, collate=data.collate)
    pair = compare(f"epoch read, {key}: loader vs .npy + the same collate", ours, peer_batches, scale.repeats)
    rows.append(speed_row(f"the same, the reference also making the batches (float16 np.load + FusionCollate, "
                          f"random batches of 32)", pair, None))
    if scale.cold:
        files = lambda: [*corpus.root.glob(f"{corpus.name}/{feature}@*/shard-*.h5"),  # noqa: E731
                         *corpus.npy[feature].values()]
        peer = npy_epoch(corpus.npy[feature], train)
        rows.append(speed_row(f"epoch read, {key} (cold: files evicted), vs float16 `.npy`",
                              cold(ours, peer, files), None))
    return rows


def handoff_rows(batches: int = 100) -> list[Row]:
    """What one DataLoader worker costs per batch (the basis of `--loader-workers auto`'s 4 MiB rule): batches
    of zeros shaped like a word-level and a frame-level training batch, made in the training process
    (reference) vs made in one worker and handed over."""
    import torch
    from torch.utils.data import DataLoader, IterableDataset

    class Zeros(IterableDataset):
        def __init__(self, shape):
            self.shape = shape

        def __iter__(self):
            for _ in range(batches):
                yield {"x": torch.zeros(self.shape), "mask": torch.ones(self.shape[:2], dtype=torch.bool),
                       "label": torch.zeros(self.shape[0], dtype=torch.long), "ids": [str(i) for i in range(32)]}
    rows = []
    for what, shape in (("word-level", (32, 18, 384)), ("frame-level", (32, 255, 768))):
        loaders = [DataLoader(Zeros(shape), batch_size=None, num_workers=w, persistent_workers=w > 0) for w in (1, 0)]
        passes = [lambda loader=loader: sum(1 for _ in loader) for loader in loaders]
        pair = compare(f"{batches} {what} batches {shape} through 1 worker vs made in this process", *passes, 3)
        mib = 4 * math.prod(shape) / 2 ** 20
        rows.append(Row(f"(auto's rule) {batches} {what} batches of zeros {shape} ({mib:.1f} MiB float32): one "
                        "loader worker vs made in the training process", _timing(pair.ours), _timing(pair.peer),
                        pair.ratio, "(none)", None))
    return rows


def mfdr_rows(corpus: Corpus, scale: Scale) -> list[Row]:
    config = mfdr_config()
    data = fusion_data(corpus, WAVLM.name, BERT_WORDS.name, max_audio_frames=config.max_audio_frames,
                       max_text_len=config.max_text_len)
    rows = []
    for workers in (0, 1):
        loader = data.loader("train", config.batch_size, shuffle=True, seed=0, num_workers=workers)
        count = whole_pools(loader, scale.mfdr_batches)
        in_memory = list(itertools.islice(loader, count))
        pair = compare(f"mfdr epoch ({count} batches), loader workers {workers}: cache vs memory",
                       mfdr_epoch(lambda: loader, data.input_dims, count),
                       mfdr_epoch(lambda: in_memory, data.input_dims, count), scale.mfdr_repeats,
                       warm=lambda: sum(1 for _ in itertools.islice(loader, count)))
        ratio = pair.ratio  # memory time / cache time
        rows.append(Row(f"MFDR paper size, the first {count} batches of {config.batch_size} of an epoch "
                        f"(whole pools), --loader-workers {workers}"
                        f"{' (what auto gives a streamed fold)' if workers == 1 else ''}",
                        _timing(pair.ours), _timing(pair.peer), ratio, ">= 0.9", ratio >= 0.9))
        del loader, in_memory
    return rows


def whole_pools(loader, at_least: int) -> int:
    """Batches of the next pass's first pools, at least `at_least` of them: a pass cut within a pool would
    charge the cache side with rows read for batches that are never trained on."""
    count = 0
    for _, batches in loader.dataset.plan(loader.dataset.next_epoch):
        count += len(batches)
        if count >= at_least:
            break
    return count


def rss_rows(small: Corpus, large: Corpus, scale: Scale) -> list[Row]:
    a, b = measure_rss(small, scale.mfdr_batches), measure_rss(large, scale.mfdr_batches)
    ratio = b["peak_rss"] / a["peak_rss"]
    size = lambda c: f"{sum(c.nbytes.values()) / 1e9:.1f} GB, {len(c.ids)} utts"  # noqa: E731
    return [Row(f"peak RSS of a fold (MFDR, 1 epoch of {scale.mfdr_batches} batches, dev + test "
                f"({RSS_EVALUATION_SHARE:.0%} each) in full): "
                f"{size(large)} vs {size(small)}", f"{b['peak_rss'] / 2 ** 20:.0f} MiB",
                f"{a['peak_rss'] / 2 ** 20:.0f} MiB", ratio, "<= 1.1", ratio <= 1.1)]


def table(rows: list[Row]) -> str:
    lines = ["| measurement | ours (mer) | reference | ratio | target | met |", "|---|---|---|---|---|---|"]
    for row in rows:
        met = "" if row.met is None else ("yes" if row.met else "**no**")
        lines.append(f"| {row.what} | {row.ours} | {row.peer} | {row.ratio:.2f} | {row.target} | {met} |")
    return "\n".join(lines)


def header(scale: Scale, corpora: dict[str, Corpus], seconds_building: float) -> str:
    import torch
    from mer.fuse.data import PoolConfig
    from mer.fuse.run import PRELOAD_BYTES

    size = lambda c: " + ".join(f"{n} {b / 1e9:.2f} GB" for n, b in c.nbytes.items())  # noqa: E731
    return "\n".join([
        f"date {date.today()}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"load {os.getloadavg()[0]:.2f}",
        f"caches (built in {seconds_building:.0f} s): IEMOCAP-like {len(corpora['iemocap'].ids)} utts "
        f"({size(corpora['iemocap'])}), MELD-like {len(corpora['meld'].ids)} utts ({size(corpora['meld'])})",
        f"page cache: warm for every row but the 'cold' ones; dropping the whole page cache is "
        f"{drop_caches_possible()}",
        f"loader: {PoolConfig()}; preload threshold {PRELOAD_BYTES / 2 ** 30:.0f} GiB (every cache here is "
        f"read in pools, not preloaded)",
        f"MFDR rows: both sides train the same number of batches, the first whole pools of at least "
        f"{scale.mfdr_batches} batches of an epoch (capped to keep the run short; the RSS fold trains "
        f"{scale.mfdr_batches}); the reference trains on batches already collated in memory"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small caches, one timing each (seconds)")
    parser.add_argument("--out", type=Path, help="also write the report (markdown) here")
    parser.add_argument("--tmp", type=Path, default=Path(tempfile.gettempdir()), help="where the caches are built")
    parser.add_argument("--mfdr-batches", type=int, help="training batches of each MFDR side and of the RSS fold")
    parser.add_argument("--torch-threads", type=int, help="torch's intra-op threads (default: torch's own)")
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"what to measure, of {','.join(PARTS)} (rss builds the ~10 GB cache)")
    parser.add_argument("--fold-rss", nargs=3, metavar=("ROOT", "CORPUS", "BATCHES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    if args.fold_rss:
        root, corpus, batches = args.fold_rss
        print(json.dumps(fold_rss(Path(root), corpus, int(batches))))
        return
    scale = QUICK if args.quick else Scale()
    scale = replace(scale, mfdr_batches=args.mfdr_batches or scale.mfdr_batches)
    tmp = Path(tempfile.mkdtemp(prefix="mer-train-input-", dir=args.tmp))
    try:
        report = run(tmp, scale, set(args.parts.split(",")))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(report)
    if args.out:
        args.out.write_text(report + "\n")


def run(tmp: Path, scale: Scale, parts: set[str]) -> str:
    started = time.perf_counter()
    corpora = build_all(tmp, scale)
    head = header(scale, corpora, time.perf_counter() - started)
    print(head, flush=True)
    rows = read_rows(corpora, scale, parts)
    if "handoff" in parts:
        rows += handoff_rows()
    if "mfdr" in parts:
        rows += mfdr_rows(corpora["iemocap"], scale)
    if "rss" in parts:
        print("building the large cache", flush=True)
        rows += rss_rows(corpora["iemocap"], build_large(tmp, scale), scale)
    return f"{head}\n\n{table(rows)}\n\ntotal {time.perf_counter() - started:.0f} s"


if __name__ == "__main__":
    main()
