"""Evaluation protocols: which utterances train, select (dev) and test a model, fold by fold.

A protocol is registered by name in PROTOCOLS and called as

    fold_set = PROTOCOLS.get("iemocap-loso")(utterances, seed=0, **options)
    fold_set = make_folds("iemocap-loso", utterances, seed=0)          # the same

It returns a FoldSet: `folds` (a list of Fold(name, train_ids, dev_ids, test_ids)), `labels`
(the class names in a fixed order, None for regression), `targets` (id -> the label each kept
utterance has UNDER THIS PROTOCOL: IEMOCAP utterances read with labels=all or 7class are mapped
to the 4 classes through their category, MELD utterances to emotion or sentiment),
`speaker_independent`, a one-line `description`, `excluded` (reason -> count of utterances
left out, e.g. IEMOCAP categories outside the class set) and `warnings`. Dimensional labels
(option labels=dimensional of the iemocap, msp-podcast and demo protocols) make a regression
FoldSet whose `dimensions` name the targets (valence, activation, dominance) and whose targets
are tuples of floats in that order, read from the utterances' `extra` annotations.

Protocols (docs/protocols.md has the reasons and the papers that use each):
    meld             official train/dev/test, one fold; 7 emotions or 3 sentiments
    iemocap-loso     5 folds: one session is the test set; dev = a seeded, label-stratified 10%
                     of the other sessions' utterances (option dev=next-session: the next session)
    iemocap-10fold   10 folds: one speaker is the test set, the OTHER speaker of that session dev
    iemocap7-10fold  MCSAN: 7 classes, 10 stratified seeded 8:1:1 folds over UTTERANCES
                     (SPEAKER-DEPENDENT)
    mosei            official train/dev/test, regression (labels None)
    manifest         the manifest's split column as one fold, or its fold column leave-one-fold-out
    demo             the demo corpus's split (sessions 1-3 train, 4 dev, 5 test), one fold
    ravdess          6 folds of 4 actors (2 male, 2 female): test one group, dev the next
    crema-d          5 seeded speaker folds (option folds): test one, dev the next
    tess / emodb / savee   leave-one-speaker-out (2 / 10 / 4 folds); dev the next speaker, or for
                     TESS's two speakers a stratified 10% of the training speaker's clips
    emorynlp         official train/dev/test, one fold
    msp-podcast      official Train / Development / Test1 (or Test2), one fold
    emobox           EmoBox's published fold files (option folds_dir)

Input problems (no sessions for a session protocol, a split missing, an unknown label) are a
MerError with one line naming the fix; a class absent from a training set is a ProtocolWarning.
Everything random is seeded (numpy PCG64 seeded with [seed, crc32(fold name)]) and depends only
on the SET of utterances, not on their order.
"""

from __future__ import annotations

import inspect
import math
import re
import warnings
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

from mer.data.utterance import Label, Utterance
from mer.errors import MerError
from mer.registry import Registry

# The readers' class lists, repeated here so that importing the protocols does not import every
# reader (and scipy, soundfile, PyAV with them); tests/test_protocols.py checks they agree.
MELD_EMOTIONS = ("neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger")  # official order
MELD_SENTIMENTS = ("negative", "neutral", "positive")
DEMO_EMOTIONS = ("neutral", "happy", "angry", "sad")
IEMOCAP4 = ("neutral", "happy", "angry", "sad")
IEMOCAP7 = ("frustration", "neutral", "anger", "sadness", "excitement", "happiness", "surprise")
IEMOCAP_LABEL_SETS = {  # category -> class, as mer.data.corpora.iemocap.LABEL_SETS
    "4class": {"neu": "neutral", "hap": "happy", "exc": "happy", "ang": "angry", "sad": "sad"},
    "7class": {"fru": "frustration", "neu": "neutral", "ang": "anger", "sad": "sadness",
               "exc": "excitement", "hap": "happiness", "sur": "surprise"},
}
RAVDESS_EMOTIONS = ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised")
CREMAD_EMOTIONS = ("anger", "disgust", "fear", "happy", "neutral", "sad")
TESS_EMOTIONS = ("angry", "disgust", "fear", "happy", "neutral", "pleasant_surprise", "sad")
EMODB_EMOTIONS = ("anger", "boredom", "disgust", "fear", "happiness", "sadness", "neutral")
SAVEE_EMOTIONS = ("anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise")
EMORYNLP_EMOTIONS = ("neutral", "joyful", "peaceful", "powerful", "scared", "mad", "sad")
MSP_CATEGORIES = {"A": "angry", "S": "sad", "H": "happy", "U": "surprise", "F": "fear", "D": "disgust",
                  "C": "contempt", "N": "neutral"}  # as mer.data.corpora.msp_podcast.CATEGORIES
MSP_LABEL_SETS = {"8class": tuple(MSP_CATEGORIES.values()), "4class": ("neutral", "happy", "angry", "sad")}
EMORYNLP_COUNTS = {"train": 7551, "dev": 954, "test": 984}
IEMOCAP_MERGED = "excited (exc) -> happy"  # the 4-class set's one merge (IEMOCAP_LABEL_SETS)
IEMOCAP_MERGED_CATEGORY = "exc"
DIMENSIONS = ("valence", "activation", "dominance")  # the `extra` names the iemocap, msp-podcast and demo readers use
DIMENSION_ALIASES = {"arousal": "activation"}
IEMOCAP_CATEGORIES = ("neu", "hap", "exc", "ang", "sad", "fru", "fea", "sur", "dis", "oth", "xxx")
PARTS = ("train", "dev", "test")
SPLIT_ALIASES = {"train": "train", "training": "train", "dev": "dev", "valid": "dev", "val": "dev",
                 "validation": "dev", "development": "dev", "test": "test", "testing": "test"}
MELD_COUNTS = {"train": 9989, "dev": 1109, "test": 2610}
MOSEI_COUNTS = {"train": 16326, "dev": 1871, "test": 4659}
SPEAKER_DEPENDENT_NOTE = ("SPEAKER-DEPENDENT: every speaker is in train, dev and test; results are not "
                          "comparable with speaker-independent (LOSO / leave-one-speaker-out) numbers")


class ProtocolWarning(UserWarning):
    """Something a user should see but that does not stop training (e.g. a class missing from a fold)."""


@dataclass(frozen=True)
class Fold:
    name: str
    train_ids: tuple[str, ...]
    dev_ids: tuple[str, ...]
    test_ids: tuple[str, ...]

    def __post_init__(self) -> None:
        for part in PARTS:
            ids = self.part(part)
            if len(set(ids)) != len(ids):
                twice = next(i for i, n in Counter(ids).items() if n > 1)
                raise MerError(f"fold {self.name}: its {part} split lists {twice} twice; "
                               "a split must hold each utterance once")

    def part(self, name: str) -> tuple[str, ...]:
        """The ids of "train", "dev" or "test"."""
        if name not in PARTS:
            raise MerError(f"fold part {name!r} is not one of {', '.join(PARTS)}")
        return getattr(self, f"{name}_ids")

    def counts(self) -> dict[str, int]:
        return {p: len(self.part(p)) for p in PARTS}


@dataclass
class FoldSet:
    protocol: str
    folds: list[Fold]
    labels: Optional[tuple[str, ...]]  # class order (index = class id); None = regression
    speaker_independent: bool  # no test speaker is in the training set of its fold
    description: str
    targets: dict[str, Label]  # id -> class name or float (a tuple of floats: dimensions), for every id in any fold
    seed: int = 0
    excluded: dict[str, int] = field(default_factory=dict)  # reason -> utterances left out
    notes: list[str] = field(default_factory=list)  # informational lines (choices made, counts)
    warnings: list[str] = field(default_factory=list)
    dimensions: tuple[str, ...] = ()  # the regression targets of dimensional labels; () otherwise
    merged: str = ""  # the classes merged in THIS data, in words; "" for none

    @property
    def task(self) -> str:
        return "regression" if self.labels is None else "classification"

    def summary(self) -> str:
        """Lines for the console: the protocol, every fold's sizes, exclusions and warnings."""
        kind = "speaker-independent" if self.speaker_independent else "SPEAKER-DEPENDENT"
        classes = "regression" if self.labels is None else f"{len(self.labels)} classes ({', '.join(self.labels)})"
        classes += f" on {', '.join(self.dimensions)}" if self.dimensions else ""
        n = len(self.folds)
        lines = [f"protocol {self.protocol}: {n} fold{'s' if n != 1 else ''}, {kind}, {classes}, seed {self.seed}",
                 f"  {self.description}"]
        for fold in self.folds:
            c = fold.counts()
            lines.append(f"  {fold.name}: train {c['train']} / dev {c['dev']} / test {c['test']}")
        for reason, count in sorted(self.excluded.items()):
            lines.append(f"  excluded {count}: {reason}")
        lines += [f"  note: {line}" for line in self.notes]
        lines += [f"  warning: {line}" for line in self.warnings]
        return "\n".join(lines)

    def to_dict(self, ids: bool = False) -> dict:
        """For config.json: everything but the targets; fold ids only when `ids`."""
        folds = []
        for fold in self.folds:
            entry = {"name": fold.name, "counts": fold.counts()}
            if ids:
                entry.update({f"{p}_ids": list(fold.part(p)) for p in PARTS})
            folds.append(entry)
        return {"protocol": self.protocol, "description": self.description, "seed": self.seed,
                "labels": None if self.labels is None else list(self.labels),
                **({"dimensions": list(self.dimensions)} if self.dimensions else {}),
                "speaker_independent": self.speaker_independent, "merged": self.merged, "folds": folds,
                "excluded": dict(self.excluded), "notes": list(self.notes), "warnings": list(self.warnings)}


@dataclass
class _Built:
    """What a protocol's builder returns; Protocol.__call__ checks it and makes the FoldSet."""

    folds: list[Fold]
    labels: Optional[tuple[str, ...]]
    targets: dict[str, Label]
    speaker_independent: bool
    excluded: Counter = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    description: Optional[str] = None  # overrides the protocol's when the data decide (manifest)
    dimensions: tuple[str, ...] = ()  # dimensional labels: the targets' names (labels is then None)
    merged: Optional[str] = None  # the classes the data merged, when it decides; None: the protocol's own


@dataclass(frozen=True)
class Protocol:
    name: str
    description: str
    speaker_independent: bool  # as published; the FoldSet says what the data gave
    build: Callable[..., _Built]
    merged: str = ""  # the classes it merges, in words ("excited -> happy"); "" for none

    def options(self) -> list[str]:
        params = list(inspect.signature(self.build).parameters.values())[2:]  # after utterances, seed
        return [p.name for p in params]

    def __call__(self, utterances: Iterable[Utterance], seed: int = 0, **options) -> FoldSet:
        utterances = list(utterances)
        seed = _seed(seed, self.name)
        unknown = sorted(set(options) - set(self.options()))
        if unknown:
            known = ", ".join(self.options()) or "none"
            raise MerError(f"protocol {self.name}: unknown option {unknown[0]!r}; its options: {known}")
        if not utterances:
            raise MerError(f"protocol {self.name}: no utterances; prepare the corpus first (mer extract --dataset ...)")
        _check_unique(utterances, self.name)
        built = self.build(utterances, seed, **options)
        _check_folds(built, self.name)
        built.warnings += _missing_class_warnings(built, self.name)
        for line in built.warnings:
            warnings.warn(f"{self.name}: {line}", ProtocolWarning, stacklevel=2)
        return FoldSet(self.name, built.folds, built.labels, built.speaker_independent,
                       built.description or self.description, built.targets, seed,
                       dict(sorted(built.excluded.items())), built.notes, built.warnings, built.dimensions,
                       self.merged if built.merged is None else built.merged)


PROTOCOLS: Registry[Protocol] = Registry("protocol")


def protocol(name: str, description: str, speaker_independent: bool, merged: str = ""):
    def add(build: Callable[..., _Built]) -> Callable[..., _Built]:
        PROTOCOLS.register(name)(Protocol(name, description, speaker_independent, build, merged))
        return build

    return add


def make_folds(name: str, utterances: Iterable[Utterance], seed: int = 0, **options) -> FoldSet:
    """PROTOCOLS.get(name)(utterances, seed, **options)."""
    return PROTOCOLS.get(name)(utterances, seed=seed, **options)


DEFAULT_PROTOCOLS = {"meld": "meld", "iemocap": "iemocap-loso", "mosei": "mosei", "demo": "demo",
                     **{name: name for name in ("ravdess", "crema-d", "tess", "emodb", "savee", "emorynlp",
                                                "msp-podcast")}}


DEMO_VARIANT = re.compile(r"demo-n\d+-s\d+(-ses\d+)?")  # the demo reader's name for a non-default size or seed


def default_protocol(corpus: str) -> str:
    """The protocol a corpus is evaluated with when none is named (a manifest corpus: manifest)."""
    return DEFAULT_PROTOCOLS.get("demo" if DEMO_VARIANT.fullmatch(corpus) else corpus, "manifest")


# MELD and EmoryNLP are imbalanced and their papers report weighted F1; the MSP-Podcast challenge ranks
# on macro F1; every other classification protocol: UA.
HEADLINE_METRICS = {"meld": "weighted_f1", "emorynlp": "weighted_f1", "msp-podcast": "macro_f1"}


def headline_metric(protocol: str, regression: bool = False, dimensional: bool = False) -> str:
    """The metric a protocol's results are compared on (docs/protocols.md): weighted F1 for MELD and
    EmoryNLP, macro F1 for MSP-Podcast, UA (mean per-class recall) for the others, MAE for regression,
    the mean CCC over the dimensions for dimensional labels (the field's number for that task)."""
    if dimensional:
        return "ccc"
    return "mae" if regression else HEADLINE_METRICS.get(protocol, "ua")


WA_UA = "WA = accuracy, UA = ua (mean per-class recall)"


def protocol_facts(name: str, speaker_independent: Optional[bool] = None, regression: bool = False,
                   dimensional: bool = False, merged: Optional[str] = None) -> str:
    """The line a results header prints, so a reader knows what the numbers mean: speaker independence
    and the classes merged (each the run's own when given: they depend on its data; else as
    published), the headline metric, and which metric is WA and which UA."""
    entry = PROTOCOLS.get(name) if name in PROTOCOLS else None
    if speaker_independent is None and entry is not None:
        speaker_independent = entry.speaker_independent
    speakers = {True: "speaker-independent", False: "SPEAKER-DEPENDENT", None: "speaker independence unknown"}
    parts = [f"{name}: {speakers[speaker_independent]}", f"headline {headline_metric(name, regression, dimensional)}"]
    if not regression:
        if merged is None:
            merged = entry.merged if entry is not None else ""
        parts += [WA_UA, f"classes merged: {merged}" if merged else "no classes merged"]
    return "; ".join(parts)


# ----------------------------------------------------------------------------- the protocols

@protocol("meld", "MELD official split: train 9989 / dev 1109 / test 2610 utterances, one fold; the main "
                  "characters speak in every split", speaker_independent=False)
def _meld(utterances: list[Utterance], seed: int, label: str = "auto") -> _Built:
    """`label`: emotion (7 classes, official order), sentiment (negative, neutral, positive) or auto
    (emotion when every label is an emotion, else sentiment). emotion/sentiment read the value
    from `extra` when the reader kept both there."""
    name = "meld"
    label = _choice(label, ("auto", "emotion", "sentiment"), "label", name)
    splits = _official_splits(utterances, name, "read the corpus with --dataset meld")
    values = {u.id: (u.extra.get(label, u.label) if label != "auto" else u.label) for u in utterances}
    if label == "auto":
        present = {v for v in values.values() if v is not None}
        label = "emotion" if present <= set(MELD_EMOTIONS) else "sentiment"
        if not present <= set(MELD_EMOTIONS) | set(MELD_SENTIMENTS):
            bad = next(u for u in utterances if values[u.id] is not None and values[u.id] not in MELD_EMOTIONS
                       and values[u.id] not in MELD_SENTIMENTS)
            raise MerError(f"{name}: label {bad.label!r} of {bad.id} is neither a MELD emotion nor a sentiment; "
                           "read the corpus with --dataset meld, or use --protocol manifest")
    classes = MELD_EMOTIONS if label == "emotion" else MELD_SENTIMENTS
    targets, excluded = {}, Counter()
    for utt in utterances:
        value = values[utt.id]
        if value is None:
            excluded["no label"] += 1
        elif value not in classes:
            raise MerError(f"{name}: label {value!r} of {utt.id} is not a MELD {label} "
                           f"({', '.join(classes)}); pass label=emotion or label=sentiment")
        else:
            targets[utt.id] = value
    folds = [_fold("official", utterances, targets, lambda u: splits[u.id])]
    notes = [f"labels: {label}"] + _count_note(folds[0], MELD_COUNTS, "MELD")
    return _Built(folds, tuple(classes), targets, _speakers_disjoint(folds, utterances), excluded, notes)


@protocol("iemocap-loso", "IEMOCAP 4-class leave-one-session-out: 5 folds, test = one session (both its "
                          "speakers); dev = a seeded label-stratified 10% of the other sessions' utterances",
          speaker_independent=True, merged=IEMOCAP_MERGED)
def _iemocap_loso(utterances: list[Utterance], seed: int, dev: str = "stratified", dev_fraction=0.1,
                  labels: str = "4class", dimensions: str = ",".join(DIMENSIONS)) -> _Built:
    """`dev`: stratified (default; a seeded `dev_fraction` of the training sessions' utterances,
    stratified by label, so training keeps ~90% of four sessions as in the published LOSO results)
    or next-session (the session after the test one, cyclically: speaker-independent and
    dialogue-intact model selection, but training on three sessions only). `labels`: 4class or
    dimensional (regression on `dimensions`, every utterance with ratings; dev then unstratified)."""
    name = "iemocap-loso"
    dev = _choice(dev, ("stratified", "next-session"), "dev", name)
    fraction = _fraction(dev_fraction, "dev_fraction", name)
    _sessions(utterances, name)  # sessions and speakers first: the most basic mismatch
    classes, dims, targets, excluded, merged = _iemocap_labels(utterances, labels, dimensions, name)
    kept = [u for u in utterances if u.id in targets]
    sessions = _sessions(kept, name)
    notes, warns = [], _session_count_warning(sessions, name)
    if dev == "next-session" and len(sessions) < 3:
        raise MerError(f"{name}: dev=next-session needs at least 3 sessions, found {len(sessions)}; "
                       "pass dev=stratified")
    folds = []
    for i, session in enumerate(sessions):
        test = {u.id for u in kept if u.fold == session}
        if dev == "next-session":
            dev_session = sessions[(i + 1) % len(sessions)]
            dev_ids = {u.id for u in kept if u.fold == dev_session}
        else:
            pool = sorted(u.id for u in kept if u.fold != session)
            dev_ids = _stratified_sample(pool, targets, fraction, _rng(seed, session))
        folds.append(_fold(session, kept, targets, _assign(test, dev_ids)))
    share = f", {fraction:.0%} of the training sessions' utterances" if dev == "stratified" else ""
    notes.append(f"dev: {dev}{share}")
    _require_disjoint_speakers(folds, kept, name)
    return _Built(folds, classes, targets, True, excluded, notes + _dimensional_notes(dims), warns,
                  _dimensional_description(name, dims), dims, merged)


@protocol("iemocap-10fold", "IEMOCAP 4-class leave-one-speaker-out: 10 folds, test = one speaker, dev = the "
                            "other speaker of the same session, train = the other four sessions",
          speaker_independent=True, merged=IEMOCAP_MERGED)
def _iemocap_10fold(utterances: list[Utterance], seed: int, labels: str = "4class",
                    dimensions: str = ",".join(DIMENSIONS)) -> _Built:
    """`labels`: 4class or dimensional (regression on `dimensions`, every utterance with ratings)."""
    name = "iemocap-10fold"
    _sessions(utterances, name)
    classes, dims, targets, excluded, merged = _iemocap_labels(utterances, labels, dimensions, name)
    kept = [u for u in utterances if u.id in targets]
    sessions = _sessions(kept, name)
    speakers = _session_speakers(kept, sessions, name)
    folds = []
    for session in sessions:
        for speaker in speakers[session]:
            other = next(s for s in speakers[session] if s != speaker)
            test = {u.id for u in kept if u.speaker == speaker}
            dev_ids = {u.id for u in kept if u.speaker == other}
            folds.append(_fold(speaker, kept, targets, _assign(test, dev_ids)))
    _require_disjoint_speakers(folds, kept, name)
    return _Built(folds, classes, targets, True, excluded, _dimensional_notes(dims),
                  _session_count_warning(sessions, name), _dimensional_description(name, dims), dims, merged)


@protocol("iemocap7-10fold", "IEMOCAP 7-class (MCSAN): 10 folds of 8:1:1 train/dev/test over utterances, "
                             f"stratified by label and seeded; {SPEAKER_DEPENDENT_NOTE}",
          speaker_independent=False)
def _iemocap7_10fold(utterances: list[Utterance], seed: int, folds=10) -> _Built:
    """Utterances are dealt into `folds` label-stratified chunks; fold k tests on chunk k, selects on
    chunk k+1 (cyclically) and trains on the rest, so every utterance is tested exactly once."""
    name = "iemocap7-10fold"
    k = _count(folds, "folds", name, minimum=3)
    targets, excluded = _iemocap_targets(utterances, "7class", IEMOCAP7, name)
    kept = [u for u in utterances if u.id in targets]
    if len(kept) < k:
        raise MerError(f"{name}: {len(kept)} utterances with a 7-class label, fewer than folds={k}; "
                       "pass a smaller folds=K, or read the whole corpus (labels=7class or labels=all)")
    chunk = _stratified_chunks(sorted(targets), targets, k, _rng(seed, name))
    out = []
    for i in range(k):
        test = {uid for uid, c in chunk.items() if c == i}
        dev_ids = {uid for uid, c in chunk.items() if c == (i + 1) % k}
        out.append(_fold(f"fold{i + 1:02d}", kept, targets, _assign(test, dev_ids)))
    notes = [SPEAKER_DEPENDENT_NOTE]
    return _Built(out, IEMOCAP7, targets, False, excluded, notes)


@protocol("mosei", "CMU-MOSEI official split (SDK standard folds, by video): train 16326 / dev 1871 / test 4659 "
                   "segments, one fold, sentiment regression in [-3, 3]", speaker_independent=True)
def _mosei(utterances: list[Utterance], seed: int) -> _Built:
    name = "mosei"
    splits = _official_splits(utterances, name, "read the corpus with --dataset mosei")
    targets = {}
    for utt in utterances:
        value = _regression_value(utt.label)
        if value is None:
            raise MerError(f"{name}: label {utt.label!r} of {utt.id} is not a number; the mosei protocol is "
                           "regression on sentiment in [-3, 3] (read the corpus with --dataset mosei)")
        targets[utt.id] = value
    folds = [_fold("official", utterances, targets, lambda u: splits[u.id])]
    return _Built(folds, None, targets, _speakers_disjoint(folds, utterances),
                  notes=_count_note(folds[0], MOSEI_COUNTS, "CMU-MOSEI"))


@protocol("manifest", "a manifest corpus: its split column (train/dev/test) as one fold, or its fold column "
                      "leave-one-fold-out (dev = the next fold)", speaker_independent=False)
def _manifest(utterances: list[Utterance], seed: int, by: str = "auto", dev_fraction=0.1) -> _Built:
    """`by`: split, fold or auto (split when every utterance has one, else fold). With a split column
    and no dev rows, dev is a seeded label-stratified `dev_fraction` of train. speaker_independent is
    True only when every utterance has a speaker and no test speaker is in its fold's train set."""
    name = "manifest"
    by = _choice(by, ("auto", "split", "fold"), "by", name)
    fraction = _fraction(dev_fraction, "dev_fraction", name)
    labels, targets, excluded = _manifest_targets(utterances, name)
    kept = [u for u in utterances if u.id in targets]
    if not kept:
        raise MerError(f"{name}: no utterance has a label; fill the label column")
    if by == "auto":
        by = _manifest_mode(kept, name)
    notes, warns = [], []
    if by == "split":
        splits = _manifest_splits(kept, name)
        if not any(s == "dev" for s in splits.values()):
            pool = sorted(uid for uid, s in splits.items() if s == "train")
            for uid in _stratified_sample(pool, targets, fraction, _rng(seed, "dev")):
                splits[uid] = "dev"
            notes.append(f"no dev rows: dev = a seeded, label-stratified {fraction:g} of train")
        folds = [_fold("split", kept, targets, lambda u: splits[u.id])]
        description = "manifest split column (train/dev/test), one fold"
    else:
        fold_names = _natural_sorted({u.fold for u in kept if u.fold is not None})
        missing = [u for u in kept if u.fold is None]
        if missing:
            raise MerError(f"{name}: {len(missing)} utterances have no fold (e.g. {missing[0].id}); "
                           "fill the fold column for every row, or give a split column")
        if len(fold_names) < 3:
            raise MerError(f"{name}: leave-one-fold-out needs at least 3 folds (test, dev, train); found "
                           f"{len(fold_names)} ({', '.join(fold_names)}); add folds or give a split column")
        folds = []
        for i, fold_name in enumerate(fold_names):
            dev_name = fold_names[(i + 1) % len(fold_names)]
            folds.append(_fold(fold_name, kept, targets, lambda u, t=fold_name, d=dev_name:
                               "test" if u.fold == t else "dev" if u.fold == d else "train"))
        description = (f"manifest fold column, leave-one-fold-out: {len(folds)} folds, test = one fold, "
                       "dev = the next fold")
    independent = _speakers_disjoint(folds, kept)
    if not independent:
        notes.append("not speaker-independent: speakers unknown, or a test speaker is also in train")
    return _Built(folds, labels, targets, independent, excluded, notes, warns, description)


@protocol("demo", "demo corpus split: sessions 1-3 train, 4 dev, 5 test, one fold", speaker_independent=True)
def _demo(utterances: list[Utterance], seed: int, labels: str = "emotion",
          dimensions: str = ",".join(DIMENSIONS)) -> _Built:
    """`labels`: emotion (the 4 classes) or dimensional (regression on `dimensions`, the values the demo
    reader derives from each utterance's generating parameters: docs/demo.md)."""
    name = "demo"
    labels = _choice(labels, ("emotion", "dimensional"), "labels", name)
    splits = _official_splits(utterances, name, "build the corpus with --dataset demo")
    if labels == "dimensional":
        dims = _dimension_names(dimensions, name)
        targets, excluded = _dimensional_targets(utterances, dims, name, "run mer extract --dataset demo again on "
                                                 "this cache: its manifest predates the demo's dimensions")
        folds = [_fold("split", utterances, targets, lambda u: splits[u.id])]
        return _Built(folds, None, targets, _speakers_disjoint(folds, utterances), excluded, _dimensional_notes(dims),
                      description=_dimensional_description(name, dims), dimensions=dims)
    targets = {}
    for utt in utterances:
        if utt.label not in DEMO_EMOTIONS:
            raise MerError(f"{name}: label {utt.label!r} of {utt.id} is not a demo emotion "
                           f"({', '.join(DEMO_EMOTIONS)}); use --protocol manifest for other corpora")
        targets[utt.id] = utt.label
    folds = [_fold("split", utterances, targets, lambda u: splits[u.id])]
    return _Built(folds, DEMO_EMOTIONS, targets, _speakers_disjoint(folds, utterances))


@protocol("ravdess", "RAVDESS actor folds: 6 folds of 4 consecutive actors (2 male, 2 female); test = one group, "
                     "dev = the next group, train = the other four", speaker_independent=True)
def _ravdess(utterances: list[Utterance], seed: int, dev: str = "auto", dev_fraction=0.1) -> _Built:
    """The groups of the shared ravdess-strong manifest (actors 1-4, 5-8, ...), so results compare."""
    name = "ravdess"
    _require_speakers(utterances, name)
    return _leave_group_out(utterances, seed, name, RAVDESS_EMOTIONS, _actor_group(name), dev, dev_fraction,
                            "actor group")


@protocol("crema-d", "CREMA-D speaker folds: the 91 actors dealt into 5 seeded folds; test = one fold, dev = the "
                     "next, train = the other three", speaker_independent=True)
def _crema_d(utterances: list[Utterance], seed: int, folds=5, dev: str = "auto", dev_fraction=0.1) -> _Built:
    name = "crema-d"
    k = _count(folds, "folds", name, minimum=2)
    _require_speakers(utterances, name)
    speakers = _natural_sorted({u.speaker for u in utterances})
    if len(speakers) < k:
        raise MerError(f"{name}: {len(speakers)} speakers, fewer than folds={k}; pass a smaller folds=K")
    order = _rng(seed, name).permutation(np.array(speakers, dtype=object)).tolist()
    fold_of = {speaker: f"speakers{i % k + 1}" for i, speaker in enumerate(order)}
    return _leave_group_out(utterances, seed, name, CREMAD_EMOTIONS, lambda u: fold_of[u.speaker], dev,
                            dev_fraction, "speaker fold")


@protocol("tess", "TESS leave-one-speaker-out: 2 folds; each trains on ONE actress and tests on the other; dev = a "
                  "seeded, label-stratified 10% of the training actress's clips (both say the same 200 words)",
          speaker_independent=True)
def _tess(utterances: list[Utterance], seed: int, dev: str = "auto", dev_fraction=0.1) -> _Built:
    return _leave_speaker_out(utterances, seed, "tess", TESS_EMOTIONS, dev, dev_fraction)


@protocol("emodb", "EmoDB leave-one-speaker-out: 10 folds; test = one speaker, dev = the next speaker, train = "
                   "the other 8", speaker_independent=True)
def _emodb(utterances: list[Utterance], seed: int, dev: str = "auto", dev_fraction=0.1) -> _Built:
    return _leave_speaker_out(utterances, seed, "emodb", EMODB_EMOTIONS, dev, dev_fraction)


@protocol("savee", "SAVEE leave-one-speaker-out: 4 folds; test = one speaker, dev = the next speaker, train = the "
                   "other 2", speaker_independent=True)
def _savee(utterances: list[Utterance], seed: int, dev: str = "auto", dev_fraction=0.1) -> _Built:
    return _leave_speaker_out(utterances, seed, "savee", SAVEE_EMOTIONS, dev, dev_fraction)


@protocol("emorynlp", "EmoryNLP official split: train 7551 / dev 954 / test 984 utterances, one fold; the main "
                      "characters speak in every split", speaker_independent=False)
def _emorynlp(utterances: list[Utterance], seed: int) -> _Built:
    name = "emorynlp"
    splits = _official_splits(utterances, name, "read the corpus with --dataset emorynlp")
    targets = _class_targets(utterances, EMORYNLP_EMOTIONS, name)
    folds = [_fold("official", utterances, targets, lambda u: splits[u.id])]
    return _Built(folds, EMORYNLP_EMOTIONS, targets, _speakers_disjoint(folds, utterances),
                  notes=_count_note(folds[0], EMORYNLP_COUNTS, "EmoryNLP"))


@protocol("msp-podcast", "MSP-Podcast official split sets: train = Train, dev = Development, test = Test1 (or "
                         "Test2), one fold; 8 categories (or 4)", speaker_independent=True)
def _msp_podcast(utterances: list[Utterance], seed: int, test: str = "test1", labels: str = "auto",
                 dimensions: str = ",".join(DIMENSIONS)) -> _Built:
    """`test`: test1 (default), test2 or both. `labels`: 8class, 4class (neutral, happy, angry, sad),
    auto (4class when every label is one of those four, else 8class) or dimensional (regression on
    `dimensions`: EmoVal, EmoAct, EmoDom, every utterance that has them); classes come from the EmoClass
    code the reader keeps in extra["category"], so one cache read with labels=all serves all of them."""
    name = "msp-podcast"
    test = _choice(test, ("test1", "test2", "both"), "test", name)
    labels = _choice(labels, ("auto", "8class", "4class", "dimensional"), "labels", name)
    dims = _dimension_names(dimensions, name) if labels == "dimensional" else ()
    values = {u.id: MSP_CATEGORIES.get(u.extra.get("category"), u.label) for u in utterances}
    if labels == "auto":
        labels = "4class" if set(u.label for u in utterances) <= set(MSP_LABEL_SETS["4class"]) else "8class"
    classes = None if dims else MSP_LABEL_SETS[labels]
    rated, _ = _dimensional_targets(utterances, dims, name, "read the corpus with --dataset msp-podcast "
                                          "(labels=all keeps every category)") if dims else ({}, Counter())
    part_of = {"train": "train", "dev": "dev", "test1": "test" if test in ("test1", "both") else None,
               "test2": "test" if test in ("test2", "both") else None}
    targets, excluded, parts = {}, Counter(), {}
    for utt in utterances:
        if utt.split not in part_of:
            raise MerError(f"{name}: {utt.id} has split {utt.split!r}, not train/dev/test1/test2; read the corpus "
                           "with --dataset msp-podcast")
        if part_of[utt.split] is None:
            excluded[f"{utt.split} (test={test})"] += 1
        elif dims and utt.id in rated:
            targets[utt.id], parts[utt.id] = rated[utt.id], part_of[utt.split]
        elif dims:
            excluded[_unrated(dims, tuple(_regression_value(utt.extra.get(d)) for d in dims))] += 1
        elif values[utt.id] not in classes:
            excluded[f"category {utt.extra.get('category', values[utt.id])} not in {labels}"] += 1
        else:
            targets[utt.id], parts[utt.id] = values[utt.id], part_of[utt.split]
    folds = [_fold("official", utterances, targets, lambda u: parts[u.id])]
    unknown = sum(1 for u in utterances if u.id in targets and not u.speaker)
    notes = [f"labels: {labels}; test: {test}"]
    if unknown:
        notes.append(f"{unknown} utterances have no known speaker; the split sets are speaker-independent by design")
    _require_disjoint_speakers(folds, utterances, name)  # over the known speakers
    return _Built(folds, classes, targets, True, excluded, notes + _dimensional_notes(dims),
                  description=_dimensional_description(name, dims), dimensions=dims)


@protocol("emobox", "EmoBox's published folds (data/<dataset>/fold_N/*_{train,valid,test}_fold_N.jsonl, option "
                    "folds_dir): train and test as listed; dev = the valid file, or a seeded label-stratified 20% "
                    "of train where there is none", speaker_independent=False,
          merged="as EmoBox's label_map.json maps the corpus's labels")
def _emobox(utterances: list[Utterance], seed: int, folds_dir=None, dev_fraction=0.2) -> _Built:
    """Targets are EmoBox's labels (`emo` through its label_map.json), so the class set is EmoBox's;
    utterances in no fold file are excluded, fold-file entries with no utterance are a warning."""
    from mer.data.corpora import _emobox

    name = "emobox"
    fraction = _fraction(dev_fraction, "dev_fraction", name)
    emobox_folds, label_map = _emobox.read_folds(folds_dir)
    index = _emobox.utterance_index(utterances)
    targets, unmatched, folds, notes = {}, [], [], []
    for emobox_fold in emobox_folds:
        parts = {}
        for part, entries in emobox_fold.parts.items():
            for entry in entries:
                uid = _emobox.match(entry, index)
                if uid is None:
                    unmatched.append(entry.key)
                else:
                    targets[uid] = label_map.get(entry.emo, entry.emo)
                    parts[uid] = "dev" if part == "valid" else part
        if "dev" not in parts.values():
            pool = sorted(uid for uid, part in parts.items() if part == "train")
            parts.update(dict.fromkeys(_stratified_sample(pool, targets, fraction, _rng(seed, emobox_fold.name)), "dev"))
            notes.append(f"{emobox_fold.name}: no valid file; dev = a seeded, label-stratified {fraction:g} of train")
        folds.append(_fold(emobox_fold.name, utterances, parts, lambda u, p=parts: p[u.id]))
    if not targets:
        raise MerError(f"{name}: no entry of the fold files in {folds_dir} matches an utterance of this corpus "
                       "(by clip name or key); pass the EmoBox folder of this corpus")
    warns = [f"{len(set(unmatched))} fold-file entries match no utterance of this corpus (e.g. {unmatched[0]}): "
             "those clips are missing here, so the folds are not exactly EmoBox's"] if unmatched else []
    labels = tuple(dict.fromkeys(v for v in label_map.values() if v in set(targets.values()))) or \
        tuple(_natural_sorted(set(targets.values())))
    excluded = Counter({"in no EmoBox fold file": len(utterances) - len(targets)}) if len(targets) < len(utterances) \
        else Counter()
    return _Built(folds, labels, targets, _speakers_disjoint(folds, utterances), excluded, notes, warns)


def _leave_speaker_out(utterances: list[Utterance], seed: int, name: str, classes: tuple[str, ...], dev: str,
                       dev_fraction) -> _Built:
    _require_speakers(utterances, name)
    return _leave_group_out(utterances, seed, name, classes, lambda u: u.speaker, dev, dev_fraction, "speaker")


def _leave_group_out(utterances: list[Utterance], seed: int, name: str, classes: tuple[str, ...],
                     group_of: Callable[[Utterance], str], dev: str, dev_fraction, what: str) -> _Built:
    """One fold per group: test = that group; dev = the next group (dev=next), or a seeded, label-stratified
    `dev_fraction` of the other groups' utterances (dev=stratified); dev=auto: next when there are 3+
    groups, else stratified (two groups leave no third one for dev)."""
    dev = _choice(dev, ("auto", "next", "stratified"), "dev", name)
    fraction = _fraction(dev_fraction, "dev_fraction", name)
    targets = _class_targets(utterances, classes, name)
    group = {u.id: group_of(u) for u in utterances}
    groups = _natural_sorted(set(group.values()))
    if len(groups) < 2:
        raise MerError(f"{name}: only one {what} ({groups[0]}); leaving one out needs at least 2")
    if dev == "auto":
        dev = "next" if len(groups) >= 3 else "stratified"
    if dev == "next" and len(groups) < 3:
        raise MerError(f"{name}: dev=next needs at least 3 {what}s, found {len(groups)}; pass dev=stratified")
    folds = []
    for i, held_out in enumerate(groups):
        test = {uid for uid, g in group.items() if g == held_out}
        if dev == "next":
            dev_ids = {uid for uid, g in group.items() if g == groups[(i + 1) % len(groups)]}
        else:
            pool = sorted(uid for uid, g in group.items() if g != held_out)
            dev_ids = _stratified_sample(pool, targets, fraction, _rng(seed, held_out))
        folds.append(_fold(held_out, utterances, targets, _assign(test, dev_ids)))
    _require_disjoint_speakers(folds, utterances, name)
    notes = [f"dev: the next {what}" if dev == "next" else
             f"dev: a seeded, label-stratified {fraction:g} of the training {what}s' utterances (the dev speakers "
             "are training speakers, so dev scores are optimistic; test stays speaker-independent)"]
    return _Built(folds, classes, targets, True, notes=notes)


def _actor_group(name: str) -> Callable[[Utterance], str]:
    def group(utt: Utterance) -> str:
        digits = re.sub(r"\D", "", str(utt.speaker))
        if not digits:
            raise MerError(f"{name}: speaker {utt.speaker!r} of {utt.id} has no actor number; read the corpus "
                           "with --dataset ravdess")
        first = (int(digits) - 1) // 4 * 4 + 1
        return f"actors{first:02d}"

    return group


# ----------------------------------------------------------------------------- labels

def _iemocap_labels(utterances: list[Utterance], labels: str, dimensions: str, name: str):
    """(classes or None, dimensions, targets, excluded, the classes merged in words) of an IEMOCAP
    protocol's `labels` option."""
    labels = _choice(labels, ("4class", "dimensional"), "labels", name)
    if labels == "4class":
        targets, excluded = _iemocap_targets(utterances, "4class", IEMOCAP4, name)
        return IEMOCAP4, (), targets, excluded, _iemocap_merged(utterances, targets)
    dims = _dimension_names(dimensions, name)
    fix = "read the corpus with --dataset iemocap (its EmoEvaluation [V, A, D] ratings); --set corpus.labels=all " \
          "keeps every category"
    return (None, dims, *_dimensional_targets(utterances, dims, name, fix), "")


def _iemocap_merged(utterances: list[Utterance], targets: dict[str, str]) -> str:
    """"excited (exc) -> happy: N utterances" when the data has excited utterances, else "": a corpus
    without IEMOCAP's categories (the demo under an IEMOCAP protocol) merges nothing."""
    merged = sum(1 for u in utterances if u.id in targets and _iemocap_category(u) == IEMOCAP_MERGED_CATEGORY)
    return f"{IEMOCAP_MERGED}: {merged} utterances" if merged else ""


def _iemocap_category(utt: Utterance) -> Optional[str]:
    category = utt.extra.get("category") if isinstance(utt.extra, dict) else None
    return category if category is not None else utt.label


def _dimension_names(value, name: str) -> tuple[str, ...]:
    """"valence,arousal" -> ("valence", "activation"): the dimensions, in the order given, each once."""
    names = tuple(DIMENSION_ALIASES.get(part.strip().lower(), part.strip().lower()) for part in str(value).split(","))
    if not all(names) or not set(names) <= set(DIMENSIONS) or len(set(names)) < len(names):
        raise MerError(f"{name}: dimensions={value!r}: write one or more of {', '.join(DIMENSIONS)} (arousal = "
                       "activation), comma-separated, each once")
    return names


def _dimensional_targets(utterances: list[Utterance], dimensions: tuple[str, ...], name: str,
                         fix: str) -> tuple[dict[str, tuple[float, ...]], Counter]:
    """id -> the utterance's ratings of `dimensions` (from `extra`, as the readers keep them); an
    utterance without a number for one of them is excluded and counted."""
    targets, excluded = {}, Counter()
    for utt in utterances:
        values = tuple(_regression_value(utt.extra.get(d)) for d in dimensions)
        if None in values:
            excluded[_unrated(dimensions, values)] += 1
        else:
            targets[utt.id] = values
    if not targets:
        raise MerError(f"{name}: no utterance has {', '.join(dimensions)} ratings; {fix}")
    return targets, excluded


def _unrated(dimensions: tuple[str, ...], values: tuple) -> str:
    """The exclusion reason of an utterance with no number for a dimension."""
    return f"no {dimensions[values.index(None)]} rating"


def _dimensional_notes(dims: tuple[str, ...]) -> list[str]:
    return [f"labels: dimensional, regression on {', '.join(dims)} (every rated utterance, any category)"] \
        if dims else []


def _dimensional_description(name: str, dims: tuple[str, ...]) -> Optional[str]:
    """The protocol's description, its class set replaced by the regression targets; None for classes."""
    if not dims:
        return None
    return f"{PROTOCOLS.get(name).description}; labels=dimensional: regression on {', '.join(dims)}, not the classes"


def _iemocap_targets(utterances: list[Utterance], label_set: str, classes: tuple[str, ...],
                     name: str) -> tuple[dict[str, str], Counter]:
    """The class of each utterance under `label_set`: from its IEMOCAP category (extra["category"],
    kept by the reader) when present, else its label. Categories outside the set are excluded and
    counted; a label that is neither a class nor an IEMOCAP category is an error."""
    mapping = IEMOCAP_LABEL_SETS[label_set]
    targets, excluded = {}, Counter()
    for utt in utterances:
        category = utt.extra.get("category") if isinstance(utt.extra, dict) else None
        if category in mapping:
            targets[utt.id] = mapping[category]
        elif category in IEMOCAP_CATEGORIES:
            excluded[f"category {category} not in the {label_set} set"] += 1
        elif utt.label in classes:
            targets[utt.id] = utt.label
        elif utt.label in mapping:
            targets[utt.id] = mapping[utt.label]
        elif utt.label in IEMOCAP_CATEGORIES:
            excluded[f"category {utt.label} not in the {label_set} set"] += 1
        elif utt.label is None:
            excluded["no label"] += 1
        else:
            raise MerError(f"{name}: label {utt.label!r} of {utt.id} is not one of {', '.join(classes)}; read "
                           f"IEMOCAP with labels={label_set} or labels=all, or use --protocol manifest")
    if not targets:
        raise MerError(f"{name}: no utterance has a {label_set} label; read IEMOCAP with labels={label_set} "
                       "or labels=all")
    return targets, excluded


def _class_targets(utterances: list[Utterance], classes: tuple[str, ...], name: str) -> dict[str, str]:
    targets = {}
    for utt in utterances:
        if utt.label not in classes:
            raise MerError(f"{name}: label {utt.label!r} of {utt.id} is not one of {', '.join(classes)}; read the "
                           f"corpus with --dataset {name}, or use --protocol manifest")
        targets[utt.id] = utt.label
    return targets


def _manifest_targets(utterances: list[Utterance], name: str):
    present = [u for u in utterances if u.label is not None and str(u.label).strip() != ""]
    excluded = Counter({"no label": len(utterances) - len(present)}) if len(present) < len(utterances) else Counter()
    numbers = [_regression_value(u.label) for u in present]
    if present and all(isinstance(u.label, float) for u in present) and None not in numbers:
        return None, {u.id: v for u, v in zip(present, numbers)}, excluded
    if any(isinstance(u.label, float) for u in present):
        bad = next(u for u in present if isinstance(u.label, float))
        raise MerError(f"{name}: labels mix numbers and class names (e.g. {bad.label!r} of {bad.id}); "
                       "read the manifest with label_type=class or label_type=regression")
    labels = tuple(_natural_sorted({str(u.label) for u in present}))
    return labels, {u.id: str(u.label) for u in present}, excluded


def _regression_value(label) -> Optional[float]:
    if isinstance(label, bool) or not isinstance(label, (int, float)):
        return None
    value = float(label)
    return value if math.isfinite(value) else None


# ----------------------------------------------------------------------------- splits and sessions

def _official_splits(utterances: list[Utterance], name: str, fix: str) -> dict[str, str]:
    splits, missing = {}, []
    for utt in utterances:
        split = SPLIT_ALIASES.get(str(utt.split).strip().lower()) if utt.split is not None else None
        if split is None:
            missing.append(utt)
        else:
            splits[utt.id] = split
    if missing:
        raise MerError(f"{name}: {len(missing)} utterances have no train/dev/test split (e.g. {missing[0].id}, "
                       f"split={missing[0].split!r}); {fix}")
    for part in PARTS:
        if part not in splits.values():
            raise MerError(f"{name}: no {part} utterances; the protocol needs train, dev and test ({fix}, "
                           "with every split)")
    return splits


def _manifest_mode(utterances: list[Utterance], name: str) -> str:
    with_split = sum(u.split is not None for u in utterances)
    with_fold = sum(u.fold is not None for u in utterances)
    if with_split == len(utterances):
        return "split"
    if with_fold == len(utterances):
        return "fold"
    if with_split or with_fold:
        column = "split" if with_split >= with_fold else "fold"
        example = next(u for u in utterances if getattr(u, column) is None)
        raise MerError(f"{name}: {len(utterances) - max(with_split, with_fold)} utterances have no {column} "
                       f"(e.g. {example.id}); fill the {column} column for every row")
    raise MerError(f"{name}: the manifest has neither a split nor a fold column; add split (train/dev/test) "
                   "or fold (leave-one-fold-out) to it")


def _manifest_splits(utterances: list[Utterance], name: str) -> dict[str, str]:
    splits = {}
    for utt in utterances:
        if utt.split is None:
            raise MerError(f"{name}: {utt.id} has no split; fill the split column for every row, or pass by=fold")
        split = SPLIT_ALIASES.get(str(utt.split).strip().lower())
        if split is None:
            raise MerError(f"{name}: split {utt.split!r} of {utt.id} is not train, dev (valid, val) or test; "
                           "fix the split column")
        splits[utt.id] = split
    for part in ("train", "test"):
        if part not in splits.values():
            raise MerError(f"{name}: the split column has no {part} rows; mark some rows {part}, or give a "
                           "fold column and pass by=fold")
    return splits


def _sessions(utterances: list[Utterance], name: str) -> list[str]:
    missing = [u for u in utterances if not u.fold or not u.speaker]
    if missing:
        what = "session (Utterance.fold)" if not missing[0].fold else "speaker"
        raise MerError(f"{name}: {len(missing)} utterances have no {what} (e.g. {missing[0].id}); this protocol "
                       "needs IEMOCAP-style sessions and speakers: read the corpus with --dataset iemocap, or "
                       "use --protocol meld / manifest")
    sessions = _natural_sorted({u.fold for u in utterances})
    if len(sessions) < 2:
        raise MerError(f"{name}: only one session ({sessions[0]}); leaving one session out needs at least 2, "
                       "and the published protocol uses all 5")
    home: dict[str, str] = {}
    for utt in utterances:
        if home.setdefault(utt.speaker, utt.fold) != utt.fold:
            raise MerError(f"{name}: speaker {utt.speaker} appears in sessions {home[utt.speaker]} and {utt.fold} "
                           f"(e.g. {utt.id}); each speaker must belong to one session")
    return sessions


def _require_speakers(utterances: list[Utterance], name: str) -> None:
    missing = [u for u in utterances if not u.speaker]
    if missing:
        raise MerError(f"{name}: {len(missing)} utterances have no speaker (e.g. {missing[0].id}); this protocol "
                       f"leaves speakers out: read the corpus with --dataset {name}")


def _session_speakers(utterances: list[Utterance], sessions: list[str], name: str) -> dict[str, list[str]]:
    speakers = {s: _natural_sorted({u.speaker for u in utterances if u.fold == s}) for s in sessions}
    for session, names in speakers.items():
        if len(names) != 2:
            raise MerError(f"{name}: session {session} has {len(names)} speakers ({', '.join(names)}); "
                           "leave-one-speaker-out needs exactly 2 per session (dev = the other one); "
                           "use --protocol iemocap-loso")
    return speakers


def _session_count_warning(sessions: list[str], name: str) -> list[str]:
    if len(sessions) == 5:
        return []
    return [f"{len(sessions)} sessions found ({', '.join(sessions)}); the published protocol has 5, so the "
            "numbers are not comparable with papers"]


def _assign(test: set, dev: set) -> Callable[[Utterance], str]:
    return lambda u: "test" if u.id in test else "dev" if u.id in dev else "train"


def _fold(name: str, utterances: list[Utterance], targets: dict, part_of: Callable[[Utterance], str]) -> Fold:
    parts: dict[str, list[str]] = {p: [] for p in PARTS}
    for utt in utterances:
        if utt.id in targets:
            parts[part_of(utt)].append(utt.id)
    return Fold(name, tuple(parts["train"]), tuple(parts["dev"]), tuple(parts["test"]))


def _count_note(fold: Fold, official: dict[str, int], corpus: str) -> list[str]:
    counts = fold.counts()
    if counts == official:
        return []
    shown = " / ".join(f"{p} {counts[p]}" for p in PARTS)
    expected = " / ".join(str(official[p]) for p in PARTS)
    return [f"{shown} utterances; the published {corpus} counts are {expected} (missing or dropped clips, "
            "or a subset)"]


# ----------------------------------------------------------------------------- seeded sampling

def _rng(seed: int, key: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(key.encode("utf-8"))])


def _by_class(ids: Sequence[str], targets: dict) -> dict:
    groups: dict = {}
    for uid in ids:
        groups.setdefault(targets[uid], []).append(uid)
    return dict(sorted(groups.items(), key=lambda kv: str(kv[0])))


def _stratified_sample(pool: Sequence[str], targets: dict, fraction: float, rng: np.random.Generator) -> set[str]:
    """round(fraction * len(pool)) ids, each class contributing its share (largest remainder);
    `pool` must be sorted so the draw depends on the set only. Regression targets (floats, or
    tuples of dimensional ratings) are sampled without stratification."""
    total = int(round(fraction * len(pool)))
    if total == 0:
        return set()
    if any(isinstance(targets[uid], (float, tuple)) for uid in pool):
        return set(rng.permutation(np.array(pool, dtype=object))[:total].tolist())
    groups = _by_class(pool, targets)
    shares = {c: fraction * len(ids) for c, ids in groups.items()}
    quota = {c: int(math.floor(s)) for c, s in shares.items()}
    order = sorted(groups, key=lambda c: (-(shares[c] - quota[c]), str(c)))
    for c in order[:total - sum(quota.values())]:
        quota[c] += 1
    chosen = set()
    for c, ids in groups.items():
        shuffled = rng.permutation(np.array(ids, dtype=object))
        chosen.update(shuffled[:quota[c]].tolist())
    return chosen


def _stratified_chunks(ids: Sequence[str], targets: dict, k: int, rng: np.random.Generator) -> dict[str, int]:
    """id -> chunk in 0..k-1: each class's shuffled ids are dealt round-robin, continuing where the
    previous class stopped, so chunk sizes and per-class counts differ by at most one."""
    chunk, offset = {}, 0
    for _, members in _by_class(ids, targets).items():
        for j, uid in enumerate(rng.permutation(np.array(members, dtype=object)).tolist()):
            chunk[uid] = (offset + j) % k
        offset += len(members)
    return chunk


# ----------------------------------------------------------------------------- checks

def _check_unique(utterances: list[Utterance], name: str) -> None:
    seen = set()
    for utt in utterances:
        if utt.id in seen:
            raise MerError(f"protocol {name}: utterance id {utt.id} appears twice; give each utterance once")
        seen.add(utt.id)


def _check_folds(built: _Built, name: str) -> None:
    for fold in built.folds:
        parts = [set(fold.part(p)) for p in PARTS]
        if (parts[0] & parts[1]) or (parts[0] & parts[2]) or (parts[1] & parts[2]):
            raise MerError(f"protocol {name}: fold {fold.name} puts an utterance in two parts (a bug; please report)")
        for part in ("train", "test"):
            if not fold.part(part):
                raise MerError(f"protocol {name}: fold {fold.name} has no {part} utterances; the corpus is too small "
                               "or lacks that split")
        if not fold.dev_ids:
            built.warnings.append(f"fold {fold.name} has no dev utterances (too few to set some aside); "
                                  "there is nothing to select a model on")


def _missing_class_warnings(built: _Built, name: str) -> list[str]:
    if built.labels is None:
        return []
    missing: dict[str, list[str]] = {}
    for fold in built.folds:
        present = {built.targets[uid] for uid in fold.train_ids}
        for label in built.labels:
            if label not in present:
                missing.setdefault(label, []).append(fold.name)
    lines = []
    for label, folds in missing.items():
        where = ("any fold" if len(folds) == len(built.folds) > 1 else
                 f"fold{'s' if len(folds) > 1 else ''} {', '.join(folds)}")
        lines.append(f"class {label} has no training utterance in {where}")
    return lines


def _speakers_disjoint(folds: list[Fold], utterances: list[Utterance]) -> bool:
    """True when every utterance in a fold has a speaker and no fold's test speaker is in its train set."""
    speaker = {u.id: u.speaker for u in utterances}
    for fold in folds:
        train = [speaker.get(uid) for uid in fold.train_ids]
        test = [speaker.get(uid) for uid in fold.test_ids]
        if None in train or None in test or set(train) & set(test):
            return False
    return True


def _require_disjoint_speakers(folds: list[Fold], utterances: list[Utterance], name: str) -> None:
    speaker = {u.id: u.speaker for u in utterances}
    for fold in folds:
        shared = {speaker.get(i) for i in fold.train_ids} & {speaker.get(i) for i in fold.test_ids} - {None}
        if shared:
            raise MerError(f"{name}: fold {fold.name}: speaker {sorted(shared)[0]} is in both train and test; "
                           "fix the speaker/session fields")


# ----------------------------------------------------------------------------- option parsing

def _choice(value, allowed: Sequence[str], option: str, name: str) -> str:
    text = str(value).strip().lower()
    if text not in allowed:
        raise MerError(f"{name}: {option}={value!r} is not one of {', '.join(allowed)}; pick one")
    return text


def _fraction(value, option: str, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not (0.0 < number < 1.0):
        raise MerError(f"{name}: {option}={value!r} is not a fraction between 0 and 1 (e.g. 0.1)")
    return number


def _count(value, option: str, name: str, minimum: int) -> int:
    try:
        number = int(str(value).strip())
    except (TypeError, ValueError):
        number = -1
    if number < minimum:
        raise MerError(f"{name}: {option}={value!r} is not a whole number >= {minimum}")
    return number


def _seed(value, name: str) -> int:
    try:
        number = int(str(value).strip())
    except (TypeError, ValueError):
        number = -1
    if number < 0:
        raise MerError(f"protocol {name}: seed={value!r} is not a whole number >= 0")
    return number


def _natural_key(text: str) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", str(text))]


def _natural_sorted(values: Iterable) -> list:
    return sorted(values, key=lambda v: (_natural_key(v), str(v)))
