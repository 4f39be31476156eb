"""How far above the linear probe any model COULD be on the demo: the Bayes-optimal accuracy.

The demo corpus is generated from a known model (mer/data/corpora/demo.py, docs/demo.md), so the
best possible classifier is computable exactly from what generated each utterance: the posterior
P(emotion | voice cues, text) under the generator's own distributions, with no training. Its
accuracy on the test session bounds what any model reading one utterance can expect; the
dialogue variant (each dialogue keeps a "mood") bounds models that read the whole dialogue.

    .venv/bin/python benchmarks/demo_ceiling.py [--corpus-seeds 200]

Rows (voice = pitch level and range, energy, syllable rate, brightness, breathiness):
- "speaker unknown": the speaker's baseline is a random offset the classifier does not know,
  as for a model meeting the test session's two speakers for the first time;
- "speaker known": every baseline known, as with perfect per-speaker normalisation;
- "+ dialogue": the other turns of the dialogue too (speaker offsets treated as independent
  per turn, which gives away a little of what the dialogue could tell).
Jitter is left out: it is a constant per emotion in the generator (angry 0.016, sad 0.013,
the others 0.012), so a classifier that read it exactly would separate angry and sad from the
rest outright; how much of it survives the synthesis into any feature is not known here.
Accuracy is on the test session (80 utterances of the default corpus): the default corpus
(seed 0), which `make demo` uses, and the mean over other corpus seeds.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm

from mer.data.corpora import demo

CROSS_AROUSAL = {pair for pair in demo.TEXTS.shared_cues
                 if (pair[0] in demo.HIGH_AROUSAL) != (pair[1] in demo.HIGH_AROUSAL)}


@dataclass(frozen=True)
class Cue:
    """One voice cue: how to read it from a voice relative to its speaker, its emotion means,
    and its standard deviations across utterances and across speakers."""

    name: str
    relative: callable  # (voice, speaker) -> the cue relative to the speaker's baseline
    mean: callable  # EmotionVoice -> the cue's mean for that emotion
    utterance_sd: str  # DemoConfig field
    speaker_sd: str | None  # DemoConfig field; None: the cue has no speaker baseline


CUES = (
    Cue("pitch", lambda v, s: 12 * np.log2(v.pitch_hz / s.pitch_hz), lambda e: e.pitch_st,
        "utterance_pitch_sd_st", "speaker_pitch_sd_st"),
    Cue("pitch range", lambda v, s: np.log(v.pitch_range_st), lambda e: np.log(e.pitch_range_st),
        "utterance_range_sd", None),
    Cue("energy", lambda v, s: v.energy_db - s.energy_db, lambda e: e.energy_db,
        "utterance_energy_sd_db", "speaker_energy_sd_db"),
    Cue("rate", lambda v, s: np.log(v.syllable_rate / s.rate_scale), lambda e: np.log(e.syllable_rate),
        "utterance_rate_sd", "speaker_rate_sd"),
    Cue("brightness", lambda v, s: np.log(v.brightness_hz / s.brightness_scale), lambda e: np.log(e.brightness_hz),
        "utterance_brightness_sd", "speaker_brightness_sd"),
    Cue("breathiness", lambda v, s: np.log(v.breathiness / s.breath_scale), lambda e: np.log(e.breathiness),
        "utterance_breath_sd", "speaker_breath_sd"),
)


def voice_log_likelihoods(config: demo.DemoConfig, plan: list, speaker_known: bool) -> np.ndarray:
    """log P(voice cues | emotion) of each planned utterance -> (N, 4). An unknown baseline: the
    cues are read against the population of the speaker's sex, with the speakers' spread added."""
    speakers = {s.id: s for index in range(config.sessions)
                for s in demo._draw_speakers(config, index, f"Ses{index + 1:02d}")}
    references = [speakers[p.speaker] if speaker_known else population_speaker(config, speakers[p.speaker])
                  for p in plan]
    observed = np.array([[cue.relative(p.voice, ref) for cue in CUES] for p, ref in zip(plan, references)])  # (N, cues)
    means = np.array([[cue.mean(config.voices[e]) for cue in CUES] for e in demo.EMOTIONS])  # (4, cues)
    sds = np.array([np.hypot(getattr(config, cue.utterance_sd),
                             getattr(config, cue.speaker_sd) if cue.speaker_sd and not speaker_known else 0.0)
                    for cue in CUES])
    return norm.logpdf(observed[:, None, :], means[None], sds).sum(axis=2)


def population_speaker(config: demo.DemoConfig, speaker: demo.Speaker) -> demo.Speaker:
    """The mean speaker of `speaker`'s sex: its sex is known (115 against 210 Hz gives it away),
    its own offsets are not."""
    pitch = config.female_pitch_hz if speaker.id.endswith("F") else config.male_pitch_hz
    return demo.Speaker(id="", session="", pitch_hz=pitch, energy_db=0.0, rate_scale=1.0,
                        brightness_scale=1.0, breath_scale=1.0, formant_scale=1.0)


def text_likelihood(config: demo.DemoConfig, text: str) -> np.ndarray:
    """P(text | emotion) for each emotion, up to a factor common to all emotions -> (4,)."""
    sentences = set(text_sentences(text))
    for emotion, cues in demo.TEXTS.cues.items():
        if sentences & {demo._as_sentence(c) for c in cues}:
            unique_share = 1 - config.carrier_share - config.shared_share
            return np.array([unique_share / len(cues) if e == emotion else 0.0 for e in demo.EMOTIONS])
    for pair, cues in demo.TEXTS.shared_cues.items():
        if sentences & {demo._as_sentence(c) for c in cues}:
            return np.array([config.shared_share * _pair_probability(config, pair, e) / len(cues)
                             for e in demo.EMOTIONS])
    return np.full(len(demo.EMOTIONS), config.carrier_share)


def text_sentences(text: str) -> list[str]:
    """A composed text's clauses as `_as_sentence` wrote them (split after '.' or '?')."""
    sentences, start = [], 0
    for index, char in enumerate(text):
        if char in ".?" and (index + 1 == len(text) or text[index + 1] == " "):
            sentences.append(text[start:index + 1])
            start = index + 2
    return sentences


def _pair_probability(config: demo.DemoConfig, pair: tuple[str, str], emotion: str) -> float:
    if emotion not in pair:
        return 0.0
    return config.cross_arousal_share if pair in CROSS_AROUSAL else 1 - config.cross_arousal_share


def utterance_likelihoods(config: demo.DemoConfig, plan: list, log_voice: np.ndarray) -> np.ndarray:
    """P(voice, text | emotion) of each planned utterance, each row scaled to sum 1 -> (N, 4)."""
    text = np.array([text_likelihood(config, p.text) for p in plan])
    rows = np.exp(log_voice - log_voice.max(axis=1, keepdims=True)) * text
    return rows / rows.sum(axis=1, keepdims=True)


def dialogue_posteriors(config: demo.DemoConfig, plan: list, likelihoods: np.ndarray) -> np.ndarray:
    """P(emotion_t | every turn of its dialogue) under a uniform unknown mood -> (N, 4)."""
    k = len(demo.EMOTIONS)
    given_mood = config.mood_persistence * np.eye(k) + (1 - config.mood_persistence) / k  # [mood, emotion]
    posteriors = np.zeros_like(likelihoods)
    dialogues = np.array([p.dialogue for p in plan])
    for dialogue in np.unique(dialogues):
        turns = np.flatnonzero(dialogues == dialogue)
        evidence = likelihoods[turns] @ given_mood.T  # [turn, mood]: P(turn's observations | mood)
        for position, turn in enumerate(turns):
            others = np.prod(np.delete(evidence, position, axis=0), axis=0)  # (moods,)
            joint = likelihoods[turn] * (others @ given_mood)
            posteriors[turn] = joint / joint.sum()
    return posteriors


def accuracies(seed: int) -> dict[str, float]:
    config = demo.DemoConfig(seed=seed)
    plan = demo.plan_corpus(config)
    test = np.array([p.split == "test" for p in plan])
    truth = np.array([demo.EMOTIONS.index(p.emotion) for p in plan])
    rows = {}
    for known in (False, True):
        name = "speaker known" if known else "speaker unknown"
        log_voice = voice_log_likelihoods(config, plan, speaker_known=known)
        likelihoods = utterance_likelihoods(config, plan, log_voice)
        rows[f"voice alone, {name}"] = _accuracy(log_voice, truth, test)
        rows[f"voice + text, {name}"] = _accuracy(likelihoods, truth, test)
        rows[f"voice + text + dialogue, {name}"] = _accuracy(dialogue_posteriors(config, plan, likelihoods), truth, test)
    # Carrier sentences tie all four emotions: a tie goes to a random one, not always the first.
    text_only = np.array([text_likelihood(config, p.text) for p in plan])
    rows["text alone"] = _accuracy(text_only + 1e-9 * np.random.default_rng(seed).random(text_only.shape), truth, test)
    return rows


def _accuracy(scores: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    return float((scores[mask].argmax(axis=1) == truth[mask]).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus-seeds", type=int, default=200, help="Corpus seeds 0..N-1 for the mean.")
    args = parser.parse_args()
    per_seed = [accuracies(seed) for seed in range(args.corpus_seeds)]
    print(f"| Bayes-optimal classifier reads | default corpus (seed 0), test | mean over corpus seeds 0-{args.corpus_seeds - 1} "
          "(sd) |\n|---|---|---|")
    for row in per_seed[0]:
        values = np.array([seed[row] for seed in per_seed])
        print(f"| {row} | {per_seed[0][row]:.3f} | {values.mean():.3f} ({values.std():.3f}) |")


if __name__ == "__main__":
    main()
