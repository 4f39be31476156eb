"""openSMILE features through the `opensmile` Python package (`Smile.process_signal`).

Registered names (dims as opensmile 2.6 reports them; the tests check them):

    opensmile-compare16      ComParE_2016 functionals   utterance  6373
    opensmile-egemaps        eGeMAPSv02 functionals     utterance    88
    opensmile-emobase        emobase functionals        utterance   988
    opensmile-compare16-lld  ComParE_2016 LLDs          frame        65  (100 frames/s)
    opensmile-egemaps-lld    eGeMAPSv02 LLDs            frame        25  (100 frames/s)
    opensmile-emobase-lld    emobase LLDs               frame        26  (100 frames/s)
    opensmile-conf:PATH      a user config (e.g. emo_large.conf, 6552), option
                             level="functionals" (default) or "lld"; dim and frame rate are
                             measured by running the config once on 1 s of noise.

LLD frame i covers [i * hop, i * hop + window) of the clip (openSMILE emits only full
windows: ComParE and eGeMAPS use a 60 ms pitch window, so 1 s gives 96 frames, not 100).
LLD variants are the plain `lld` level (no deltas).

Short clips: openSMILE returns no rows for clips shorter than one analysis window (60 ms for
ComParE/eGeMAPS, 40 ms for emobase, 25 ms for IS09). Clips shorter than `min_seconds`
(default 0.1 s) are zero-padded AT THE END to that length, so their LLD frames keep their
times and functionals exist; the padding is part of spec.config. Empty audio, or a clip that
still yields no output, raises OpenSmileError naming the utterance (the runner records it).
Samples are clipped to the int16 range first: the package converts with `* 32768` and
`astype(int16)`, which wraps a sample of +1.0 to -32768.

User configs: the package feeds audio and reads features through the shipped configs'
`\\{\\cm[source{?}:...]}` and `\\{\\cm[sink{?}:...]}` hooks. A config written for the
SMILExtract command line (a cWaveSource reading a file, and `standard_data_output.conf.inc`
sinks, as emo_large.conf in the openSMILE repository) is rewired to those hooks on a copy
in a per-process temporary folder (relative includes made absolute); the file itself is
never changed. openSMILE crashes the process on a broken config, so the first run happens in
a child process, and a failure becomes a one-line OpenSmileError naming the file.
"""

from __future__ import annotations

import atexit
import hashlib
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Optional

import numpy as np

from mer.errors import MerError
from mer.extract.base import EXTRACTORS, ExtractItem, Extractor, FeatureSpec, with_options
from mer.extract.interrupts import interrupts_deferred

SAMPLE_RATE = 16000
SINK_LEVELS = {"functionals": "func", "lld": "lld"}  # our level name -> openSMILE data-memory level
GRANULARITY = {"functionals": "utterance", "lld": "frame"}
BUILTIN_SETS = {"compare16": "ComParE_2016", "egemaps": "eGeMAPSv02", "emobase": "emobase"}
SOURCE_HOOK = r"\{\cm[source{?}:include external source]}"
SINK_HOOK = r"\{\cm[sink{?}:include external sink]}"
PROBE_SECONDS = 1.0


class OpenSmileError(MerError):
    """An openSMILE config that cannot run, or a clip that gives no features."""


@dataclass(frozen=True)
class OpenSmileOptions:
    """Options shared by every openSMILE extractor; all go into spec.config."""

    level: str = "functionals"  # "functionals" (one vector per clip) | "lld" (frames)
    min_seconds: float = 0.1  # shorter clips are zero-padded at the end to this length

    def __post_init__(self):
        if self.level not in SINK_LEVELS:
            raise OpenSmileError(f"openSMILE level must be one of {sorted(SINK_LEVELS)}, got {self.level!r}")
        if self.min_seconds < 0:
            raise OpenSmileError(f"openSMILE min_seconds must be >= 0, got {self.min_seconds}")

    @property
    def min_samples(self) -> int:
        return int(round(self.min_seconds * SAMPLE_RATE))


def parse_options(name: str, options: dict, **fixed) -> OpenSmileOptions:
    return replace(with_options(name, OpenSmileOptions(), options, OpenSmileError, tuple(fixed)), **fixed)


def opensmile_version() -> str:
    from importlib.metadata import version

    return version("opensmile")


# ----------------------------------------------------------------------------- user config files


INCLUDE = re.compile(r"^([ \t]*\\\{)(?!\\cm\[)([^}\n]+)(\})", re.MULTILINE)  # \{file}
DEFAULT_INCLUDE = re.compile(r"^([ \t]*\\\{\\cm\[\w+\{)([^}?\n][^}\n]*)(\})", re.MULTILINE)  # \{\cm[opt{file}:..]}


def config_includes(path: Path, text: str) -> list[Path]:
    """Files `text` includes, relative to `path`'s folder: every `\\{file}`, and the defaults of
    `\\{\\cm[option{file}:...]}` that exist (the package passes its own file for some options)."""
    plain = [_resolve(path, match.group(2)) for match in INCLUDE.finditer(text)]
    defaults = [_resolve(path, match.group(2)) for match in DEFAULT_INCLUDE.finditer(text)]
    return plain + [file for file in defaults if file.is_file()]


def _resolve(path: Path, include: str) -> Path:
    return (path.parent / include.strip()).resolve()


def config_sha256(path: Path, seen: Optional[set] = None) -> str:
    """sha256 over the config and, recursively, every file it includes (an edited include counts)."""
    seen = set() if seen is None else seen
    digest = hashlib.sha256()
    for file in _config_files(path, seen):
        digest.update(file.read_bytes())
    return digest.hexdigest()


def _config_files(path: Path, seen: set) -> list[Path]:
    if path in seen:
        return []
    if not path.is_file():
        raise OpenSmileError(f"{path}: openSMILE config file not found; pass an existing file as "
                             f"opensmile-conf:/path/to/config.conf (and keep its includes beside it)")
    seen.add(path)
    files = [path]
    for include in config_includes(path, path.read_text(errors="replace")):
        files += _config_files(include, seen)
    return files


def rewire_to_external_io(path: Path, text: str) -> str:
    """`text` with absolute include paths, wired to the package's external source/sink hooks:
    SMILExtract-style configs lose their cWaveSource and file sinks; others keep their hooks."""
    text = _absolute_includes(path, text)
    if SOURCE_HOOK in text and SINK_HOOK in text:
        return text
    wave_source_line = re.compile(r"^[ \t]*instance\[(\w+)\]\.type[ \t]*=[ \t]*cWaveSource[ \t]*\n?", re.MULTILINE)
    wave_sources = wave_source_line.findall(text)
    text = wave_source_line.sub("", text)
    for source in wave_sources:
        text = _drop_section(path, text, source)
    text = re.sub(r"^[ \t]*\\\{[^}\n]*standard_wave_input\.conf\.inc\}", "", text, flags=re.MULTILINE)
    text = re.sub(r"^[ \t]*\\\{[^}\n]*standard_data_output\w*\.conf\.inc\}", lambda _: SINK_HOOK, text,
                  flags=re.MULTILINE)
    if SINK_HOOK not in text:
        raise OpenSmileError(f"{path}: config has no output the Python package can read; end it with "
                             f"{SINK_HOOK} (or include shared/standard_data_output.conf.inc)")
    return text if SOURCE_HOOK in text else f"{SOURCE_HOOK}\n{text}"


def _drop_section(path: Path, text: str, component: str) -> str:
    """Remove `[component:cWaveSource]` and its lines; its data must go to the level `wave`."""
    pattern = rf"^[ \t]*\[{component}:cWaveSource\][^\n]*\n(?:(?![ \t]*\[|[ \t]*\\\{{)[^\n]*\n?)*"
    section = re.search(pattern, text, flags=re.MULTILINE)
    if section and not re.search(r"^[ \t]*writer\.dmLevel[ \t]*=[ \t]*wave[ \t]*$", section.group(0), re.MULTILINE):
        raise OpenSmileError(f"{path}: cWaveSource '{component}' must write to writer.dmLevel=wave (the "
                             f"level the Python package feeds); rename its level to wave")
    return text if section is None else text[: section.start()] + text[section.end() :]


def _absolute_includes(path: Path, text: str) -> str:
    for pattern in (INCLUDE, DEFAULT_INCLUDE):
        text = pattern.sub(lambda match: f"{match.group(1)}{_resolve(path, match.group(2))}{match.group(3)}", text)
    return text


# ----------------------------------------------------------------------------- running openSMILE


@lru_cache(maxsize=None)
def process_temp_dir() -> Path:
    """A temp folder for this process's rewired configs, removed when the process exits."""
    path = Path(tempfile.mkdtemp(prefix="mer-opensmile-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def probe_signal() -> np.ndarray:
    """1 s of quiet seeded noise: enough for every window of the shipped sets."""
    return (0.01 * np.random.default_rng(0).standard_normal(int(PROBE_SECONDS * SAMPLE_RATE))).astype(np.float32)


def describe_output(frame) -> dict:
    """dim and frame rate of a process_signal DataFrame (frame rate from the frame start times)."""
    starts = frame.index.get_level_values("start").total_seconds().to_numpy()
    hop = float(np.median(np.diff(starts))) if len(starts) > 1 else 0.0
    return {"dim": int(frame.shape[1]), "rows": int(frame.shape[0]), "frame_rate": round(1.0 / hop, 6) if hop else None,
            "finite": bool(np.isfinite(frame.to_numpy()).any())}


# argv: config, sink level, log file, probe signal (.npy), output (pickled DataFrame)
_CHILD_PROBE = f"""
import sys, warnings
import numpy as np, opensmile
warnings.simplefilter("ignore")
smile = opensmile.Smile(feature_set=sys.argv[1], feature_level=sys.argv[2], logfile=sys.argv[3], loglevel=2)
smile.process_signal(np.load(sys.argv[4]), {SAMPLE_RATE}).to_pickle(sys.argv[5])
"""


def probe_in_child(run_path: Path, sink_level: str, shown_path: Path) -> dict:
    """Run a user config once in a child process: openSMILE aborts the process on a bad config."""
    import pandas as pd

    with tempfile.TemporaryDirectory(prefix="mer-opensmile-probe-") as tmp:
        log, signal, output = (Path(tmp) / name for name in ("smile.log", "probe.npy", "features.pkl"))
        np.save(signal, probe_signal())
        done = subprocess.run([sys.executable, "-c", _CHILD_PROBE, str(run_path), sink_level, str(log), str(signal),
                               str(output)], capture_output=True, text=True, timeout=300)
        if done.returncode == 0:
            return describe_output(pd.read_pickle(output))
        crash = f"crashed with signal {-done.returncode}" if done.returncode < 0 else f"exit status {done.returncode}"
        reason = _first_error(log) or _last_line(done.stderr) or crash
    raise OpenSmileError(f"{shown_path}: openSMILE cannot run this config at level '{sink_level}': {reason}")


def _first_error(log: Path) -> str:
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    errors = [line.split(")", 1)[-1].strip() for line in lines if "(ERR)" in line]
    return errors[0] if errors else ""


def _last_line(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return lines[-1] if lines else ""


# ----------------------------------------------------------------------------- the extractor


class OpenSmileExtractor(Extractor):
    """One openSMILE feature set at one level, one utterance at a time on the CPU."""

    per_item_cpu = True

    def __init__(self, name: str, options: OpenSmileOptions, feature_set: str,
                 config_file: Optional[Path] = None, config_text: Optional[str] = None):
        """feature_set: an opensmile.FeatureSet name, or "file" with config_file (the user's
        path, hashed) and config_text (what runs: the file rewired to the external hooks)."""
        self.options, self.feature_set = options, feature_set
        self.config_file, self.config_text = config_file, config_text
        self._smile = None
        shape = self._describe()
        self.spec = FeatureSpec(
            name=name, modality="audio", granularity=GRANULARITY[options.level], dim=shape["dim"],
            frame_rate=shape["frame_rate"] if options.level == "lld" else None,
            # float32: functionals exceed float16's range (max 65504): ComParE_2016 reaches ~3e11
            # on ordinary speech, and LLD energies reach ~6e6.
            dtype="float32",
            config=self._spec_config(),
        )

    def _spec_config(self) -> dict:
        config = {"feature_set": self.feature_set, "feature_level": self.options.level,
                  "sink_level": SINK_LEVELS[self.options.level], "sample_rate": SAMPLE_RATE,
                  "min_seconds": self.options.min_seconds, "short_clips": "zero-padded at the end to min_seconds",
                  # the wheel bundles the openSMILE C library: a new release may change values
                  "opensmile_version": opensmile_version()}
        if self.config_file is not None:
            config["config_sha256"] = config_sha256(self.config_file)
            original = self.config_file.read_text(errors="replace")
            config["rewired_to_external_io"] = not (SOURCE_HOOK in original and SINK_HOOK in original)
        return config

    def _describe(self) -> dict:
        if self.config_file is None:
            return self._describe_in_process()
        shape = probe_in_child(self._run_path(), SINK_LEVELS[self.options.level], self.config_file)
        if not shape["finite"]:
            raise OpenSmileError(f"{self.config_file}: openSMILE gave no finite features for {PROBE_SECONDS} s "
                                 f"of noise at level '{self.options.level}'; check the config's sink level")
        return shape

    def _describe_in_process(self) -> dict:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return describe_output(self._new_smile().process_signal(probe_signal(), SAMPLE_RATE))

    def _run_path(self) -> Path:
        """The config openSMILE reads: the text fixed in __init__, written to this process's temp
        folder on first use (so a worker process or machine makes its own)."""
        digest = hashlib.sha256(self.config_text.encode()).hexdigest()[:16]
        path = process_temp_dir() / f"{self.config_file.stem}-{digest}.conf"
        if not path.exists():
            path.write_text(self.config_text)
        return path

    def _new_smile(self):
        import opensmile

        feature_set = str(self._run_path()) if self.config_file else opensmile.FeatureSet[self.feature_set]
        return opensmile.Smile(feature_set=feature_set, feature_level=SINK_LEVELS[self.options.level], loglevel=1)

    def load(self, device: str = "cpu") -> None:
        self._smile = self._new_smile()  # openSMILE runs on the CPU whatever the device

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_smile": None}  # each process loads its own

    def extract(self, items: list[ExtractItem]) -> list[np.ndarray]:
        if self._smile is None:
            self.load()
        return [self._extract_one(item) for item in items]

    def _extract_one(self, item: ExtractItem) -> np.ndarray:
        wave = self._prepared_audio(item)
        with warnings.catch_warnings(), interrupts_deferred():  # a Ctrl-C inside openSMILE's callback is lost
            warnings.simplefilter("ignore")  # "Segment too short, filling with NaN": checked below
            values = self._smile.process_signal(wave, SAMPLE_RATE).to_numpy(dtype=np.float32)  # (rows, dim)
        if not np.isfinite(values).any():
            raise OpenSmileError(f"{item.utterance.id}: {self.spec.name} gave no features for "
                                 f"{len(wave) / SAMPLE_RATE:.3f} s of audio; raise min_seconds "
                                 f"(now {self.options.min_seconds})")
        return values[0] if self.options.level == "functionals" else values

    def _prepared_audio(self, item: ExtractItem) -> np.ndarray:
        wave = item.audio
        if wave is None or wave.ndim != 1 or wave.size == 0:
            shape = None if wave is None else wave.shape
            raise OpenSmileError(f"{item.utterance.id}: {self.spec.name} needs non-empty mono audio, got "
                                 f"{shape}; decode it with mer.data.audio.load_audio")
        wave = np.clip(np.asarray(wave, dtype=np.float32), -1.0, 32767 / 32768)  # the int16 range (module doc); one copy
        missing = self.options.min_samples - len(wave)
        return np.pad(wave, (0, missing)) if missing > 0 else wave


def builtin_factory(name: str, feature_set: str, level: str):
    def factory(**options) -> OpenSmileExtractor:
        return OpenSmileExtractor(name, parse_options(name, options, level=level), feature_set)

    factory.__name__ = name.replace("-", "_")
    factory.__doc__ = f"openSMILE {feature_set} {level}"
    return factory


for _short, _feature_set in BUILTIN_SETS.items():
    for _suffix, _level in (("", "functionals"), ("-lld", "lld")):
        _name = f"opensmile-{_short}{_suffix}"
        EXTRACTORS.register(_name)(builtin_factory(_name, _feature_set, _level))


@EXTRACTORS.register("opensmile-conf")
def opensmile_conf(arg: str = "", **options) -> OpenSmileExtractor:
    """`opensmile-conf:/path/x.conf`, options level="functionals"|"lld" and min_seconds."""
    name = f"opensmile-conf:{arg}"
    if not arg:
        raise OpenSmileError("opensmile-conf needs a config path: opensmile-conf:/path/to/config.conf")
    path = Path(arg).expanduser().resolve()
    config_sha256(path)  # a missing config or include is a one-line error before anything runs
    text = rewire_to_external_io(path, path.read_text(errors="replace"))
    return OpenSmileExtractor(name, parse_options(name, options), "file", config_file=path, config_text=text)
