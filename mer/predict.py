"""`mer predict --run RUN --audio FILE --text "..."`: apply a trained run to new audio + text.

The run's config.json records each input feature's full spec (extractor name, the options it
was built with, config hash). The same extractors are rebuilt, checked to give the same config
hash, and applied to the file; the features are cut, normalised with the fold's training
statistics and batched exactly as in training. Only the folds the run records as complete
(folds/<fold>.json, whose checksums must match the fold's checkpoint and normalisation) are
used; with several, the class probabilities are averaged over them (or one is chosen with
`fold`).

Audio is decoded only as far as the features need: when the model reads at most
`max_audio_frames` frames (training keeps the FIRST frames) and every audio feature's frames
depend only on nearby samples, the first ceil(max_audio_frames / frame_rate) seconds plus a
margin are decoded. Utterance-level features, and frame features that depend on the whole
file (MFCC's top_db floor relative to the file's peak, SSL encoders' attention), decode it all.

Text: `--text` is used as given. Without it, a run whose text features read an ASR text source
(config.json `text_sources`) transcribes the whole file with the very ASR config recorded there
(rebuilt and checked by its config hash); a run trained on the corpus's reference transcripts asks
for `--text` or `--asr MODEL` and quotes the WERs `mer transcribe` measured on its corpus, the
price of feeding it ASR text."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from mer.cache.reader import FeatureCache
from mer.cache.transcripts import (ASR_PREFIX, REFERENCE, TRANSCRIPT, describe_wer, read_wer, source_name,
                                   transcribe_command)
from mer.data.audio import SAMPLE_RATE, load_audio
from mer.data.utterance import Utterance
from mer.errors import MerError
from mer.extract.base import Extractor, ExtractItem, FeatureSpec, build_extractor, rebuild_extractor
from mer.extract.spectral import SpectralExtractor
from mer.fuse.data import IGNORE_LABEL, TARGET_ROLE, FusionCollate, NormStats
from mer.fuse.models import MODELS, RegressionTargets, build_model
from mer.fuse.run import changed_fold_file, fuse_command, read_fold_record, run_digest

MARGIN_SECONDS = 1.0  # beyond the last frame kept: covers every window and delta reach at its edge
SILENCE_DBFS = -60.0  # a clip whose peak is below this is silent (speech peaks near -20..0 dBFS): eGeMAPS gives zeros
MIN_SECONDS = 0.5  # a shorter clip gives too few frames: eGeMAPS, for one, then gives zeros for most of its values


def load_run(run_dir: Path) -> dict:
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise MerError(f"{path}: not a run directory (no config.json); give the --out folder of `mer fuse`")
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise MerError(f"{path}: unreadable ({exc}); train the run again with `mer fuse` and --overwrite") from None


def complete_folds(run_dir: Path, run: dict) -> dict[str, dict]:
    """fold -> its record, for every fold the run records as complete; refuses records that
    disagree with config.json or with the files they describe."""
    config_path = run_dir / "config.json"
    records = {}
    for path in sorted((run_dir / "folds").glob("*.json")):
        record = read_fold_record(path)
        fold = record.get("fold")
        if record.get("run") != run_digest(run) or fold not in run.get("folds", []):
            raise MerError(f"{path}: a fold of another run than {config_path} records; "
                           f"the folder mixes two runs: train it again: {fuse_command(run, run_dir, overwrite=True)}")
        if record.get("labels") != run["labels"]:
            raise MerError(f"{path}: labels {record.get('labels')} differ from {run['labels']} in {config_path}; "
                           f"the folder mixes two runs: train it again: {fuse_command(run, run_dir, overwrite=True)}")
        changed = changed_fold_file(run_dir, record)
        if changed:
            raise MerError(f"{changed}: {'missing' if not changed.is_file() else 'changed'} since fold {fold} finished "
                           f"(see {path}); train the run again: {fuse_command(run, run_dir, overwrite=True)}")
        records[fold] = record
    if not records:
        raise MerError(f"{run_dir}: no fold of this run is complete (no folds/<fold>.json); resume the run: "
                       f"{fuse_command(run, run_dir)}")
    return records


def audio_seconds_needed(extractors: list[Extractor], max_audio_frames: Optional[int]) -> Optional[float]:
    """Seconds from the start that give the same first `max_audio_frames` frames as the whole
    file; None: the whole file."""
    if max_audio_frames is None or not extractors or not all(_frames_are_local(e) for e in extractors):
        return None
    return max(math.ceil(max_audio_frames / e.spec.frame_rate) for e in extractors) + MARGIN_SECONDS


def _frames_are_local(extractor: Extractor) -> bool:
    """A frame computed from its own window (and its deltas' neighbours) alone."""
    if not isinstance(extractor, SpectralExtractor) or not extractor.spec.frame_rate:
        return False
    config = extractor.config
    return config.log == "ln" or config.top_db is None  # top_db floors at the whole file's peak


def extract_inputs(run: dict, config, audio_path: Optional[Path], texts: dict[str, str], fold: Optional[str] = None,
                   context: Sequence[str] = (), warn: Callable[[str], None] = print) -> dict[str, np.ndarray]:
    """role -> (rows, dim) float32, each role's features joined on the last axis as in training; a text
    feature reads the transcript of its text source (`texts`: source -> text), and one that reads previous
    turns (`context_turns`) the last of `context` (the dialogue's earlier turns, oldest first). `fold`: that
    fold's own features where they differ per fold (a finetuned: feature)."""
    extractors = {role: [rebuild_extractor(FeatureSpec.from_dict(d)) for d in specs]
                  for role, specs in fold_specs(run, fold).items()}
    wave = None
    if "audio" in extractors:
        if audio_path is None:
            raise MerError(f"this run's model reads audio ({run['features']['audio']}); pass --audio FILE")
        wave = load_clip(audio_path, audio_seconds_needed(extractors["audio"], config.max_audio_frames), warn)
    inputs = {}
    for role, role_extractors in extractors.items():
        parts = []
        for extractor in role_extractors:
            extractor.load("cpu")
            text = texts.get(getattr(extractor, "text_source", None) or REFERENCE, "")
            utterance = Utterance(id="predict/0", corpus="predict", text=text, extra={"context": list(context)})
            array = np.asarray(extractor.extract([ExtractItem(utterance, wave if role == "audio" else None)])[0],
                               dtype=np.float32)
            parts.append(array.reshape(1, -1) if extractor.spec.granularity == "utterance"
                         else array.reshape(len(array), -1))
        rows = min(len(p) for p in parts)
        inputs[role] = np.concatenate([p[:rows] for p in parts], axis=1)
    return inputs


def load_clip(path: Path, end: Optional[float] = None, warn: Callable[[str], None] = print) -> np.ndarray:
    """--audio decoded up to `end` seconds (None: all of it); a one-line error for a folder or a missing file,
    and a warning, the prediction still made, for a clip too silent or too short to predict from."""
    path = Path(path)
    if path.is_dir():
        raise MerError(f"{path}: is a folder, not an audio file; pass a file (--audio FILE)")
    if not path.exists():
        raise MerError(f"{path}: no such file; check the --audio path")
    wave = load_audio(path, None, end)
    flaws = clip_flaws(wave)
    if flaws:
        warn(f"warning: {path}: the clip is {' and '.join(flaws)}: its prediction means little")
    return wave


def clip_flaws(wave: np.ndarray) -> list[str]:
    """Why a decoded clip (16 kHz mono) is no speech to predict from: silent, too short; [] when neither."""
    flaws = []
    if float(np.abs(wave).max(initial=0.0)) < 10 ** (SILENCE_DBFS / 20):
        flaws.append(f"silent (peak below {SILENCE_DBFS:.0f} dBFS)")
    if len(wave) < MIN_SECONDS * SAMPLE_RATE:
        flaws.append(f"{len(wave) / SAMPLE_RATE:.2f} s long, shorter than the {MIN_SECONDS} s the audio features need")
    return flaws


def fold_specs(run: dict, fold: Optional[str]) -> dict:
    """role -> the feature specs `fold` was trained on (the run's, unless they differ per fold)."""
    return run.get("fold_feature_specs", {}).get(fold, run["feature_specs"])


def predict(run_dir: Path, audio_path: Optional[Path], text: str, fold: Optional[str] = None, no_text: bool = False,
            warn: Callable[[str], None] = print, asr: Optional[str] = None,
            context: Sequence[str] = ()) -> dict[str, float]:
    """`asr` (whisper-base, hf-whisper:PATH): transcribe the audio with it instead of the text the run
    was trained on; without `text` and `asr`, a run trained on ASR text transcribes with its own ASR.
    `context`: the dialogue's previous turns (oldest first), for text features that read them."""
    run_dir, warn = Path(run_dir), _once(warn)  # the audio is decoded for each set of features: warned once
    run = load_run(run_dir)
    config = MODELS.get(run["model"]).config_class(**run["model_config"])
    labels = run["labels"]
    records = complete_folds(run_dir, run)
    if fold and fold not in records:
        raise MerError(f"--fold {fold}: not a complete fold of {run_dir}; complete folds: {', '.join(records)}")
    texts = transcripts_for(run, audio_path, text, no_text, asr, warn)
    check_context(run, context, warn)
    inputs_by_specs: dict[str, dict] = {}  # extracted once per distinct set of feature specs, not per fold

    def inputs_of(name: str) -> dict:
        key = json.dumps(fold_specs(run, name), sort_keys=True)
        if key not in inputs_by_specs:
            inputs_by_specs[key] = extract_inputs(run, config, audio_path, texts, name, context, warn)
        return inputs_by_specs[key]
    outputs = [_predict_fold(run_dir, name, run, config, inputs_of(name)) for name in ([fold] if fold else records)]
    mean = np.mean(outputs, axis=0)
    if run.get("dimensions"):
        return {name: float(value) for name, value in zip(run["dimensions"], mean)}
    if labels is None:
        return {"prediction": float(mean)}
    return {label: float(p) for label, p in zip(labels, mean)}


def _once(warn: Callable[[str], None]) -> Callable[[str], None]:
    """`warn` that passes on each distinct line once."""
    said: set[str] = set()

    def warn_once(line: str) -> None:
        if line not in said:
            said.add(line)
            warn(line)
    return warn_once


def check_context(run: dict, context: Sequence[str], warn: Callable[[str], None]) -> None:
    """Warn when the run's text features read previous turns and none are given, or the reverse."""
    turns = {spec["name"]: spec["config"].get("context_turns", 0) for spec in run["feature_specs"].get("text", [])}
    reading = {name: n for name, n in turns.items() if n}
    if reading and not context:
        described = ", ".join(f"{name}: {n} previous turn{'s' if n > 1 else ''}" for name, n in reading.items())
        warn(f"warning: this run's text features read the dialogue's previous turns ({described}); without "
             "--context they see the utterance alone, as training saw only a dialogue's first turn: unless this is "
             "one, pass each previous turn with --context \"TEXT\" (repeated, oldest first)")
    if context and not reading:
        warn("warning: --context is ignored: none of this run's text features reads previous turns")


def transcripts_for(run: dict, audio_path: Optional[Path], text: str, no_text: bool, asr: Optional[str],
                    warn: Callable[[str], None]) -> dict[str, str]:
    """The transcript each text source of the run reads (REFERENCE or asr:NAME@HASH -> text): --text as
    given, an empty one with --no-text, else the audio transcribed by --asr or by the run's own ASR."""
    sources = run_text_sources(run)
    given = [flag for flag, on in (("--text", bool(text.strip())), ("--no-text", no_text), ("--asr", bool(asr))) if on]
    if len(given) > 1:
        raise MerError(f"{' and '.join(given)} given together; pass one of them")
    if not sources:
        return {}
    if no_text:
        warn(f"warning: --no-text: predicting from an EMPTY transcript, although the model was trained with text "
             f"({run['features']['text']}); expect worse predictions")
    if text.strip() or no_text:
        return {source: text for source in sources}
    if asr:
        transcript = _transcribe(build_extractor(ASR_PREFIX + asr), audio_path, warn)
        warn(f"warning: {_mismatch(run, sources, ASR_PREFIX + asr)}")
        return {source: transcript for source in sources}
    if REFERENCE in sources:
        raise MerError(f"--text is empty, but this run's model reads text ({run['features']['text']}) and was "
                       f"trained on the corpus's reference transcripts; give the transcript with --text \"...\", or "
                       f"transcribe --audio with --asr MODEL (e.g. --asr whisper-large-v3: {_asr_cost(run)}), or pass "
                       "--no-text to predict from an empty transcript")
    return {source: _transcribe(rebuild_extractor(FeatureSpec.from_dict(run["text_sources"][source]["asr_spec"])),
                                audio_path, warn) for source in sources}


def run_text_sources(run: dict) -> list[str]:
    """The text sources the run's text features read: REFERENCE and/or asr:NAME@HASH."""
    specs = run["feature_specs"].get("text", [])
    return list(dict.fromkeys(spec["config"].get("text_source", REFERENCE) for spec in specs))


def _transcribe(transcriber, audio_path: Optional[Path], warn: Callable[[str], None]) -> str:
    if audio_path is None:
        raise MerError(f"transcribing with {transcriber.spec.name} needs the audio: pass --audio FILE")
    transcriber.load("cpu")
    transcript = transcriber.transcribe([load_clip(audio_path, None, warn)])[0]
    warn(f"transcript ({transcriber.spec.name}): {transcript}")
    return transcript


def _mismatch(run: dict, sources: list[str], asr: str) -> str:
    """What transcribing with `asr` costs a run trained on `sources`."""
    if REFERENCE in sources:
        return f"this run was trained on reference transcripts; {asr} gives ASR text instead ({_asr_cost(run)})"
    if all(source.partition("@")[0] == asr for source in sources):
        return f"{asr} with its default decoding options, where training read {', '.join(sources)}"
    return f"this run was trained on text from {', '.join(sources)}; {asr} is another ASR, expect other errors"


def _asr_cost(run: dict) -> str:
    """The WERs `mer transcribe` measured on the run's corpus, or the command that measures one."""
    try:
        sources = [f for f in FeatureCache(run["cache"]).features(run["corpus"]) if f.spec.modality == TRANSCRIPT]
    except (OSError, MerError):
        sources = []
    measured = [f"{source_name(f)}: {describe_wer(read_wer(f.directory))}" for f in sources]
    if measured:
        return "ASR errors measured on " + run["corpus"] + ": " + "; ".join(measured)
    command = transcribe_command(Path(run["cache"]), run["corpus"], "asr:whisper-large-v3")
    return f"the cost of ASR errors on {run['corpus']} is not measured; {command} measures it"


def _predict_fold(run_dir: Path, fold: str, run: dict, config, inputs: dict[str, np.ndarray]) -> np.ndarray:
    from safetensors.torch import load_file

    checkpoint = run_dir / "checkpoints" / f"{fold}.safetensors"
    stats = NormStats.load(run_dir / "norm" / f"{fold}.npz")
    labels, dimensions = run["labels"], run.get("dimensions")
    dims = {role: (inputs[role].shape[1] if role in inputs else None) for role in ("audio", "text")}
    outputs = len(labels) if labels else RegressionTargets(len(dimensions)) if dimensions else 1
    model = build_model(run["model"], outputs, dims, config)
    try:
        model.load_state_dict(load_file(str(checkpoint)))
    except RuntimeError as exc:
        reason = str(exc).splitlines()[0]
        raise MerError(f"{checkpoint}: does not fit the model that {run_dir / 'config.json'} records ({reason}); "
                       f"train the run again: {fuse_command(run, run_dir, overwrite=True)}") from None
    model.eval()
    collate = FusionCollate(config.sample_unit, tuple(inputs), regression=labels is None, stats=stats)
    batch = collate([_item(config, inputs)])
    with torch.no_grad():
        logits = model(batch).logits.reshape(-1, outputs)[0]
    if dimensions:  # the model predicts z-scores of the training ratings (mer.fuse.data.TARGET_ROLE)
        return logits.numpy() * stats[TARGET_ROLE].std + stats[TARGET_ROLE].mean
    return logits.softmax(-1).numpy() if labels else logits.numpy()[0]


def _item(config, inputs: dict[str, np.ndarray]) -> dict:
    limits = {"audio": config.max_audio_frames, "text": config.max_text_len}
    if config.sample_unit == "dialogue":  # a dialogue of one utterance, frame features mean-pooled
        return {"ids": ["predict/0"], "labels": [IGNORE_LABEL],
                **{role: array[: limits[role] or None].mean(0, keepdims=True) for role, array in inputs.items()}}
    return {"id": "predict/0", "label": 0, **{role: array[: limits[role] or None] for role, array in inputs.items()}}
