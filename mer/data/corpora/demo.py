"""The `demo` corpus: a deterministic synthetic dyadic corpus (sessions, speakers, dialogues,
4 emotions) whose audio and text each carry PART of the emotion, so fusion beats either alone.

Audio is a speech-like signal (band-limited glottal pulses with a pitch contour, syllable
envelope, vowel formants, breath noise); the emotion shifts pitch level and range, energy,
syllable rate and voice quality, on top of per-speaker baselines, with overlap between
classes. Text comes from templates in which only some sentences carry emotion words, and
some of those words are shared by two emotions. See docs/demo.md for the generative model
and the measured separability.

Dimensional labels (`extra` valence, activation, dominance on IEMOCAP's 1-5 scale, for the demo
protocol's labels=dimensional) are derived from what generated each utterance, with no new random
draw: valence and dominance are the emotion's point in the circumplex (DIMENSIONAL_PROTOTYPES: the
text names valence, nothing else varies it); activation is the utterance's own arousal cues, i.e.
its drawn pitch, energy and syllable rate above its speaker's baseline, as a fraction of the step
from the low- to the high-arousal voices (0 = neutral/sad means, 1 = happy/angry means), mapped to
2 + 2 x that fraction: the value the audio carries, utterance by utterance.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from mer.data.corpora import CORPORA
from mer.data.utterance import Corpus, CorpusReport, Utterance
from mer.errors import MerError

# Bump when the generator's output changes, so stale generated corpora are rebuilt.
GENERATOR_VERSION = 1
EMOTIONS = ("neutral", "happy", "angry", "sad")
HIGH_AROUSAL = ("happy", "angry")
LOW_AROUSAL = ("neutral", "sad")
DIMENSIONAL_PROTOTYPES = {"neutral": (3.0, 3.0), "happy": (4.0, 3.5), "angry": (2.0, 4.0), "sad": (2.0, 2.0)}  # V, D
LOW_ACTIVATION, ACTIVATION_STEP = 2.0, 2.0  # activation = 2 + 2 x the arousal fraction, clipped to [1, 5]
MARKER = ".complete"


@dataclass(frozen=True)
class EmotionVoice:
    """How one emotion shifts a speaker's voice (means; utterances scatter around them)."""

    pitch_st: float  # semitones above the speaker's baseline pitch
    pitch_range_st: float  # spread of the per-syllable pitch accents
    energy_db: float  # loudness above the speaker's baseline
    syllable_rate: float  # syllables per second
    brightness_hz: float  # glottal spectral tilt cut-off: higher = richer harmonics
    breathiness: float  # breath noise relative to the voiced signal
    jitter: float  # relative cycle-to-cycle pitch perturbation


@dataclass(frozen=True)
class DemoConfig:
    size: int = 400
    seed: int = 0
    sessions: int = 5
    sample_rate: int = 16000
    min_seconds: float = 1.0
    max_seconds: float = 4.0
    turns_per_dialogue: tuple[int, int] = (6, 12)
    mood_persistence: float = 0.5  # chance a turn keeps the dialogue's mood instead of a random emotion
    # Emotion profiles. Arousal (happy/angry vs neutral/sad) moves pitch level, energy and
    # syllable rate a lot; within one arousal level the two emotions differ only in weaker
    # cues (pitch range, brightness, breath, jitter), so audio mostly tells arousal apart.
    voices: dict[str, EmotionVoice] = field(default_factory=lambda: {
        "neutral": EmotionVoice(0.0, 1.6, 0.0, 4.0, 510.0, 0.060, 0.012),
        "sad": EmotionVoice(-0.3, 1.35, -0.3, 3.9, 390.0, 0.085, 0.013),
        "happy": EmotionVoice(4.7, 3.5, 7.7, 5.25, 555.0, 0.050, 0.012),
        "angry": EmotionVoice(4.4, 2.55, 8.0, 5.15, 760.0, 0.070, 0.016),
    })
    # Spread of each cue across speakers (baselines) and across one speaker's utterances:
    # the overlap between classes that makes audio alone ambiguous.
    speaker_pitch_sd_st: float = 1.5
    speaker_energy_sd_db: float = 3.0
    speaker_rate_sd: float = 0.10  # relative
    speaker_brightness_sd: float = 0.20  # relative
    speaker_breath_sd: float = 0.30  # relative
    utterance_pitch_sd_st: float = 1.5
    utterance_range_sd: float = 0.35  # relative
    utterance_energy_sd_db: float = 2.5
    utterance_rate_sd: float = 0.12  # relative
    utterance_brightness_sd: float = 0.25  # relative
    utterance_breath_sd: float = 0.35  # relative
    female_pitch_hz: float = 210.0
    male_pitch_hz: float = 115.0
    female_formant_scale: float = 1.15
    reference_rms: float = 0.02  # signal level of a 0 dB utterance
    noise_floor_rms: float = 3e-4
    max_harmonic_hz: float = 7000.0
    # Text: share of utterances with no emotion words, and with words shared by two emotions.
    carrier_share: float = 0.25
    shared_share: float = 0.40
    # Of the shared words, the share whose two emotions differ in arousal (angry/sad,
    # happy/neutral): they name the valence, which is what the audio lacks.
    cross_arousal_share: float = 0.85
    # Of the sentences with emotion words, the share that also has a carrier clause.
    with_carrier_share: float = 0.67

    @property
    def is_default(self) -> bool:
        return (self.size, self.seed, self.sessions) == (400, 0, 5)

    @property
    def name(self) -> str:
        if self.is_default:
            return "demo"
        extra = "" if self.sessions == 5 else f"-ses{self.sessions}"
        return f"demo-n{self.size}-s{self.seed}{extra}"

    def fingerprint(self) -> str:
        """Changes whenever the generated files would: options, constants, texts, generator."""
        blob = json.dumps({"generator": GENERATOR_VERSION, "texts": repr(TEXTS), **asdict(self)},
                          sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class TextBank:
    # Whole sentences, no slots: a carrier says nothing about the emotion, and identical
    # strings in every class keep a text classifier from memorising the training set.
    carriers: tuple[str, ...] = (
        "we need to talk about the report",
        "did you see the schedule yesterday?",
        "I was at the office this morning",
        "Anna called about the contract",
        "what time are we going to the station?",
        "let me check the tickets first",
        "I put the keys on the kitchen table",
        "my brother is coming to the airport tonight",
        "so where is the package now?",
        "I talked to the landlord on Monday",
        "can you bring the letter to the post office?",
        "we left the library around noon",
        "David has the phone bill",
        "it was about the car from the garage",
        "the bank closes at five",
        "the meeting moved to Thursday",
    )
    cues: dict[str, tuple[str, ...]] = field(default_factory=lambda: {
        "neutral": ("okay, noted", "that's the plan then", "just the usual", "nothing special",
                    "for your information", "according to the schedule", "as expected", "no change there"),
        "happy": ("I am so happy", "this is wonderful", "I love it", "that is fantastic news", "we did it",
                  "I'm thrilled", "what a lovely surprise", "this made my day"),
        "angry": ("this is ridiculous", "I am furious", "stop lying to me", "I'm sick of this",
                  "that is outrageous", "don't you dare", "get out of my way", "you ruined everything"),
        "sad": ("I miss her so much", "I feel so lonely", "it breaks my heart", "I'm so sad",
                "nothing matters anymore", "I wish things were different", "I just want to cry",
                "everything is falling apart"),
    })
    # Emotion words that two emotions share: each emotion is in two pairs, one across arousal
    # levels (which audio resolves) and one within (which it barely does).
    shared_cues: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=lambda: {
        ("happy", "angry"): ("I really can't believe it", "really, are you serious?", "oh my god",
                             "I can't believe you did that", "no way"),
        ("angry", "sad"): ("why does this always happen to me", "it's not fair", "I can't take this anymore",
                           "how could you?", "this is terrible", "why me?"),
        ("neutral", "sad"): ("I guess it's okay", "whatever you think", "fine, I suppose", "if you say so"),
        ("happy", "neutral"): ("sounds good", "okay, let's do it", "that works for me", "sure, why not?",
                               "alright, good", "fair enough"),
    })


TEXTS = TextBank()
VOWEL_FORMANTS_HZ = ((730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240), (530, 1840, 2480),
                     (570, 840, 2410))
FORMANT_BANDWIDTHS_HZ = (90, 110, 170)


@dataclass(frozen=True)
class Speaker:
    id: str
    session: str
    pitch_hz: float
    energy_db: float
    rate_scale: float
    brightness_scale: float
    breath_scale: float
    formant_scale: float


@dataclass(frozen=True)
class Voice:
    """Everything the synthesiser needs for one utterance."""

    pitch_hz: float
    pitch_range_st: float
    energy_db: float
    syllable_rate: float
    brightness_hz: float
    breathiness: float
    jitter: float
    formant_scale: float
    syllables: int


@dataclass(frozen=True)
class PlannedUtterance:
    id: str  # without the corpus prefix: "Ses01_d03_t05"
    session: str
    split: str
    speaker: str
    dialogue: str
    turn: int
    emotion: str
    text: str
    voice: Voice
    synth_seed: tuple[int, ...]
    dimensions: tuple[float, float, float] = (3.0, 3.0, 3.0)  # valence, activation, dominance (see the docstring)


# ----------------------------------------------------------------------------- entry point

@CORPORA.register("demo")
def prepare(root=None, size: int = 400, seed: int = 0, sessions: int = 5, *, needs_audio: bool = True) -> Corpus:
    """Build (once) and read the synthetic demo corpus; `root` defaults to $MER_HOME/demo/<options>.
    `needs_audio=False`: the texts and labels only; no audio is synthesised."""
    config = DemoConfig(size=int(size), seed=int(seed), sessions=int(sessions))
    _validate(config)
    root = Path(root).expanduser() if root is not None else default_root(config)
    plan = plan_corpus(config)
    if needs_audio and not _is_complete(root, config, plan):
        generate_audio(plan, root, config)
    utterances = [_to_utterance(p, config.name, root, needs_audio) for p in plan]
    report = CorpusReport(config.name, audio_read=needs_audio)
    report.count(utterances, groups=("split", "label", "speaker", "fold"))
    return Corpus(config.name, utterances, report)


def default_root(config: DemoConfig) -> Path:
    home = Path(os.environ.get("MER_HOME", "~/.cache/mer")).expanduser()
    suffix = "" if config.sessions == 5 else f"-ses{config.sessions}"
    return home / "demo" / f"n{config.size}-s{config.seed}{suffix}"


def _validate(config: DemoConfig) -> None:
    if config.sessions < 3:
        raise MerError(f"demo corpus: sessions={config.sessions}; need at least 3 (train, dev and test)")
    if config.size < 2 * config.sessions:
        raise MerError(f"demo corpus: size={config.size} is too small; give at least 2 per session "
                       f"({2 * config.sessions})")


def _to_utterance(planned: PlannedUtterance, corpus: str, root: Path, with_audio: bool = True) -> Utterance:
    return Utterance(
        id=f"{corpus}/{planned.id}", corpus=corpus, split=planned.split, fold=planned.session,
        speaker=planned.speaker, dialogue=planned.dialogue, turn=planned.turn, text=planned.text,
        label=planned.emotion, audio_path=str(wav_path(root, planned).resolve()) if with_audio else None,
        extra=dict(zip(("valence", "activation", "dominance"), planned.dimensions)),
    )


def wav_path(root: Path, planned: PlannedUtterance) -> Path:
    return Path(root) / "wav" / planned.session / f"{planned.id}.wav"


# ----------------------------------------------------------------------------- planning (cheap, no audio)

def plan_corpus(config: DemoConfig) -> list[PlannedUtterance]:
    planned = []
    for index, count in enumerate(_session_sizes(config)):
        session = f"Ses{index + 1:02d}"
        split = _split_of(index, config.sessions)
        speakers = _draw_speakers(config, index, session)
        planned += _plan_session(config, index, session, split, speakers, count)
    return planned


def _session_sizes(config: DemoConfig) -> list[int]:
    base, extra = divmod(config.size, config.sessions)
    return [base + (1 if i < extra else 0) for i in range(config.sessions)]


def _split_of(index: int, sessions: int) -> str:
    if index == sessions - 1:
        return "test"
    return "dev" if index == sessions - 2 else "train"


def _draw_speakers(config: DemoConfig, index: int, session: str) -> tuple[Speaker, Speaker]:
    rng = np.random.default_rng([config.seed, 1, index])
    return tuple(_draw_speaker(config, rng, session, sex) for sex in ("F", "M"))


def _draw_speaker(config: DemoConfig, rng: np.random.Generator, session: str, sex: str) -> Speaker:
    base_hz = config.female_pitch_hz if sex == "F" else config.male_pitch_hz
    formant = config.female_formant_scale if sex == "F" else 1.0
    return Speaker(
        id=f"{session}{sex}", session=session,
        pitch_hz=base_hz * 2 ** (_bounded_normal(rng, config.speaker_pitch_sd_st) / 12),
        energy_db=_bounded_normal(rng, config.speaker_energy_sd_db),
        rate_scale=float(np.exp(_bounded_normal(rng, config.speaker_rate_sd))),
        brightness_scale=float(np.exp(_bounded_normal(rng, config.speaker_brightness_sd))),
        breath_scale=float(np.exp(_bounded_normal(rng, config.speaker_breath_sd))),
        formant_scale=formant * float(np.exp(_bounded_normal(rng, 0.03))),
    )


def _bounded_normal(rng: np.random.Generator, sd: float) -> float:
    """A normal draw cut at two standard deviations: with two test speakers, one extreme
    speaker would decide a seed's test accuracy."""
    return float(np.clip(rng.normal(0, sd), -2 * sd, 2 * sd))


def _plan_session(config: DemoConfig, index: int, session: str, split: str,
                  speakers: tuple[Speaker, Speaker], count: int) -> list[PlannedUtterance]:
    # Separate streams, so that the text and the voice are independent given the emotion.
    story_rng, text_rng, voice_rng = (np.random.default_rng([config.seed, stream, index]) for stream in (2, 4, 5))
    planned = []
    for dialogue, turns in enumerate(_dialogue_lengths(story_rng, count, config.turns_per_dialogue)):
        mood = EMOTIONS[(dialogue + index) % len(EMOTIONS)]
        first = int(story_rng.integers(2))
        for turn in range(turns):
            speaker = speakers[(first + turn) % 2]
            keep_mood = story_rng.random() < config.mood_persistence
            emotion = mood if keep_mood else EMOTIONS[story_rng.integers(len(EMOTIONS))]
            text = compose_text(text_rng, emotion, config)
            voice = _draw_voice(config, voice_rng, speaker, emotion)
            planned.append(PlannedUtterance(
                id=f"{session}_d{dialogue:02d}_t{turn:02d}", session=session, split=split, speaker=speaker.id,
                dialogue=f"{session}_d{dialogue:02d}", turn=turn, emotion=emotion, text=text, voice=voice,
                synth_seed=(config.seed, 3, index, dialogue, turn),
                dimensions=dimensions_of(config, speaker, emotion, voice)))
    return planned


def dimensions_of(config: DemoConfig, speaker: Speaker, emotion: str, voice: Voice) -> tuple[float, float, float]:
    """(valence, activation, dominance) of one planned utterance: see the module docstring."""
    valence, dominance = DIMENSIONAL_PROTOTYPES[emotion]
    low, high = (_voice_cues(config, emotions) for emotions in (LOW_AROUSAL, HIGH_AROUSAL))
    arousal = np.mean((_arousal_cues(speaker, voice) - low) / (high - low))
    activation = float(np.clip(LOW_ACTIVATION + ACTIVATION_STEP * arousal, 1.0, 5.0))
    return valence, round(activation, 4), dominance


def _arousal_cues(speaker: Speaker, voice: Voice) -> np.ndarray:
    """Pitch (semitones), energy (dB) and log syllable rate of a voice, relative to its speaker's baseline."""
    return np.array([12 * np.log2(voice.pitch_hz / speaker.pitch_hz), voice.energy_db - speaker.energy_db,
                     np.log(voice.syllable_rate / speaker.rate_scale)])


def _voice_cues(config: DemoConfig, emotions: tuple[str, ...]) -> np.ndarray:
    """The same cues of the emotions' mean voices, averaged over the emotions."""
    return np.mean([[config.voices[e].pitch_st, config.voices[e].energy_db, np.log(config.voices[e].syllable_rate)]
                    for e in emotions], axis=0)


def _dialogue_lengths(rng: np.random.Generator, count: int, bounds: tuple[int, int]) -> list[int]:
    low, high = bounds
    lengths, left = [], count
    while left > 0:
        n = min(int(rng.integers(low, high + 1)), left)
        if left - n < low:  # fold a too-short remainder into this dialogue
            n = left
        lengths.append(n)
        left -= n
    return lengths


def compose_text(rng: np.random.Generator, emotion: str, config: DemoConfig) -> str:
    carrier = _pick(rng, TEXTS.carriers)
    draw = rng.random()
    if draw < config.carrier_share:
        clauses = (carrier,)
    else:
        if draw < config.carrier_share + config.shared_share:
            cue = _pick(rng, TEXTS.shared_cues[_shared_pair(rng, emotion, config)])
        else:
            cue = _pick(rng, TEXTS.cues[emotion])
        if rng.random() < config.with_carrier_share:
            clauses = (cue, carrier) if rng.random() < 0.5 else (carrier, cue)
        else:
            clauses = (cue,)
    return " ".join(_as_sentence(clause) for clause in clauses)


def _as_sentence(clause: str) -> str:
    return clause[0].upper() + clause[1:] + ("" if clause.endswith("?") else ".")


def _shared_pair(rng: np.random.Generator, emotion: str, config: DemoConfig) -> tuple[str, str]:
    pairs = [pair for pair in TEXTS.shared_cues if emotion in pair]
    cross = [pair for pair in pairs if (pair[0] in HIGH_AROUSAL) != (pair[1] in HIGH_AROUSAL)]
    within = [pair for pair in pairs if pair not in cross]
    return (cross if rng.random() < config.cross_arousal_share else within)[0]


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[rng.integers(len(options))]


def _draw_voice(config: DemoConfig, rng: np.random.Generator, speaker: Speaker, emotion: str) -> Voice:
    mean = config.voices[emotion]
    rate = mean.syllable_rate * speaker.rate_scale * np.exp(rng.normal(0, config.utterance_rate_sd))
    # Leading plus trailing silence is 0.2-0.4 s and whole syllables lose up to one syllable's
    # time: these bounds keep every file within [min_seconds, max_seconds].
    target_seconds = rng.uniform(config.min_seconds + 0.55, config.max_seconds)
    syllables = max(2, int((target_seconds - 0.4) * rate))
    return Voice(
        pitch_hz=float(speaker.pitch_hz * 2 ** ((mean.pitch_st + rng.normal(0, config.utterance_pitch_sd_st)) / 12)),
        pitch_range_st=float(mean.pitch_range_st * np.exp(rng.normal(0, config.utterance_range_sd))),
        energy_db=float(mean.energy_db + speaker.energy_db + rng.normal(0, config.utterance_energy_sd_db)),
        syllable_rate=float(rate),
        brightness_hz=float(mean.brightness_hz * speaker.brightness_scale
                            * np.exp(rng.normal(0, config.utterance_brightness_sd))),
        breathiness=float(mean.breathiness * speaker.breath_scale * np.exp(rng.normal(0, config.utterance_breath_sd))),
        jitter=float(mean.jitter),
        formant_scale=speaker.formant_scale,
        syllables=syllables,
    )


# ----------------------------------------------------------------------------- audio

def _is_complete(root: Path, config: DemoConfig, plan: list[PlannedUtterance]) -> bool:
    marker = root / MARKER
    if not marker.is_file() or marker.read_text().strip() != config.fingerprint():
        return False
    return all(wav_path(root, planned).is_file() for planned in plan)


def generate_audio(plan: list[PlannedUtterance], root: Path, config: DemoConfig) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER).unlink(missing_ok=True)
    for planned in plan:
        wave = synthesise(planned.voice, np.random.default_rng(list(planned.synth_seed)), config)
        _write_wav_atomically(wav_path(root, planned), wave, config.sample_rate)
    # Written last: an interrupted generation has no marker and is redone.
    (root / MARKER).write_text(config.fingerprint() + "\n")


def _write_wav_atomically(path: Path, wave: np.ndarray, sample_rate: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    sf.write(str(tmp), wave, sample_rate, subtype="PCM_16", format="WAV")
    os.replace(tmp, path)


def synthesise(voice: Voice, rng: np.random.Generator, config: DemoConfig) -> np.ndarray:
    sr = config.sample_rate
    onsets, lengths, total = _syllable_timing(voice, rng, sr)
    envelope, stress = _envelope(onsets, lengths, total, rng)
    f0 = _pitch_contour(voice, onsets, lengths, total, rng)
    source = _tilt(_glottal_pulses(f0, sr, config.max_harmonic_hz), voice.brightness_hz, sr)
    voiced = _formants(source * envelope, onsets, lengths, voice.formant_scale, rng, sr)
    breath = _breath_noise(envelope, onsets, stress, voice.breathiness, rng, sr)
    signal = _scale_to(voiced, config.reference_rms * 10 ** (voice.energy_db / 20), envelope)
    signal += breath * _rms(signal, envelope) + rng.normal(0, config.noise_floor_rms, total)
    return np.clip(signal, -0.99, 0.99).astype(np.float32)


def _syllable_timing(voice: Voice, rng: np.random.Generator, sr: int) -> tuple[np.ndarray, np.ndarray, int]:
    gaps = np.exp(rng.normal(0, 0.2, voice.syllables)) / voice.syllable_rate
    gaps *= (voice.syllables / voice.syllable_rate) / gaps.sum()  # keep the mean rate exact
    lead, tail = rng.uniform(0.1, 0.2), rng.uniform(0.1, 0.2)
    starts = lead + np.concatenate([[0.0], np.cumsum(gaps)[:-1]])
    lengths = gaps * rng.uniform(0.55, 0.8, voice.syllables)
    total = int(round((lead + gaps.sum() + tail) * sr))
    return (starts * sr).astype(int), (lengths * sr).astype(int), total


def _envelope(onsets: np.ndarray, lengths: np.ndarray, total: int,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    envelope = np.zeros(total)
    stress = np.exp(rng.normal(0, 0.3, len(onsets)))
    for start, length, gain in zip(onsets, lengths, stress):
        # Fast attack, slower decay: a vowel nucleus rather than a symmetric bump.
        t = np.linspace(0, 1, length, endpoint=False)
        envelope[start:start + length] = gain * np.sin(np.pi * t ** 0.6)
    return envelope, stress


def _pitch_contour(voice: Voice, onsets: np.ndarray, lengths: np.ndarray, total: int,
                   rng: np.random.Generator) -> np.ndarray:
    centres = onsets + lengths // 2
    accents = rng.normal(0, voice.pitch_range_st, len(onsets))
    t = np.arange(total)
    semitones = np.interp(t, centres, accents) - 2.0 * t / total  # plus declination
    knots = np.arange(0, total + 80, 80)  # about one pitch period: cycle-to-cycle jitter
    wobble = np.interp(t, knots, rng.normal(0, 1, len(knots)))
    return voice.pitch_hz * 2 ** (semitones / 12) * (1 + voice.jitter * wobble)


def _glottal_pulses(f0: np.ndarray, sr: int, max_harmonic_hz: float) -> np.ndarray:
    """Band-limited pulse train: the sum of all harmonics up to max_harmonic_hz (Dirichlet kernel)."""
    harmonics = max(1, int(max_harmonic_hz // f0.max()))
    theta = 2 * np.pi * np.cumsum(f0) / sr
    half = np.sin(theta / 2)
    safe = np.where(np.abs(half) < 1e-6, 1e-6, half)
    pulses = np.where(np.abs(half) < 1e-6, harmonics, np.sin((harmonics + 0.5) * theta) / (2 * safe) - 0.5)
    return pulses / harmonics


def _tilt(source: np.ndarray, cutoff_hz: float, sr: int) -> np.ndarray:
    """Two one-pole low-passes: -12 dB/octave above cutoff_hz, as a glottal source falls off."""
    pole = np.exp(-2 * np.pi * cutoff_hz / sr)
    once = lfilter([1 - pole], [1, -pole], source)
    return lfilter([1 - pole], [1, -pole], once)


def _formants(excitation: np.ndarray, onsets: np.ndarray, lengths: np.ndarray, scale: float,
              rng: np.random.Generator, sr: int) -> np.ndarray:
    out = np.zeros_like(excitation)
    for start, length in zip(onsets, lengths):
        segment = excitation[start:start + length]
        for freq, bandwidth in zip(VOWEL_FORMANTS_HZ[rng.integers(len(VOWEL_FORMANTS_HZ))], FORMANT_BANDWIDTHS_HZ):
            segment = _resonate(segment, freq * scale, bandwidth, sr)
        out[start:start + length] = segment
    return out


def lfilter(b, a, x: np.ndarray) -> np.ndarray:
    """scipy's IIR filter, imported on first use: scipy.signal takes seconds to import, and
    every `mer` command imports the corpus registry."""
    from scipy.signal import lfilter as scipy_lfilter

    return scipy_lfilter(b, a, x)


def _resonate(x: np.ndarray, freq: float, bandwidth: float, sr: int) -> np.ndarray:
    """Klatt's second-order resonator, unit gain at 0 Hz."""
    r = np.exp(-np.pi * bandwidth / sr)
    b1, b2 = 2 * r * np.cos(2 * np.pi * freq / sr), -r * r
    return lfilter([1 - b1 - b2], [1, -b1, -b2], x)


def _breath_noise(envelope: np.ndarray, onsets: np.ndarray, stress: np.ndarray, breathiness: float,
                  rng: np.random.Generator, sr: int) -> np.ndarray:
    """Aspiration under the vowels plus a short fricative burst before each syllable (unit = voiced RMS)."""
    shape = breathiness * envelope
    burst = int(0.04 * sr)
    for start, gain in zip(onsets, stress):
        begin = max(0, start - burst)
        shape[begin:start] += 0.3 * gain * np.hanning(start - begin)
    noise = np.diff(rng.normal(0, 1, len(envelope) + 1))  # first difference: breath is high-pitched
    return shape * noise


def _rms(signal: np.ndarray, envelope: np.ndarray) -> float:
    active = envelope > 0.1
    return float(np.sqrt(np.mean(signal[active] ** 2))) if active.any() else 1e-9


def _scale_to(signal: np.ndarray, target_rms: float, envelope: np.ndarray) -> np.ndarray:
    return signal * (target_rms / max(_rms(signal, envelope), 1e-9))
