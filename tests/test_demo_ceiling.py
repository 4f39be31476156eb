"""benchmarks/demo_ceiling.py: the demo's Bayes-optimal accuracy is computed from the generator's
own distributions; if a mean, a spread or a text probability were wrong, its posteriors would
no longer be calibrated (their mean confidence would drift away from their accuracy)."""

import numpy as np
import pytest

import benchmarks.demo_ceiling as ceiling
from mer.data.corpora import demo

KNOWN_CLAUSES = {demo._as_sentence(c) for c in demo.TEXTS.carriers} | {
    demo._as_sentence(c) for cues in (*demo.TEXTS.cues.values(), *demo.TEXTS.shared_cues.values()) for c in cues}


def test_every_generated_text_splits_into_the_clauses_it_was_composed_of():
    plan = demo.plan_corpus(demo.DemoConfig())
    for planned in plan:
        assert set(ceiling.text_sentences(planned.text)) <= KNOWN_CLAUSES, planned.text


def pooled_posteriors(speaker_known: bool, dialogue: bool, seeds=range(12)):
    posteriors, truth = [], []
    for seed in seeds:
        config = demo.DemoConfig(seed=seed)
        plan = demo.plan_corpus(config)
        likelihoods = ceiling.utterance_likelihoods(
            config, plan, ceiling.voice_log_likelihoods(config, plan, speaker_known))
        posteriors.append(ceiling.dialogue_posteriors(config, plan, likelihoods) if dialogue else likelihoods)
        truth += [demo.EMOTIONS.index(p.emotion) for p in plan]
    return np.concatenate(posteriors), np.array(truth)


@pytest.mark.parametrize("dialogue", [False, True])
def test_bayes_posteriors_are_calibrated_when_every_speaker_baseline_is_known(dialogue):
    posteriors, truth = pooled_posteriors(speaker_known=True, dialogue=dialogue)  # 4,800 utterances
    confidence, correct = posteriors.max(axis=1), posteriors.argmax(axis=1) == truth
    # Bins of confidence holding a few hundred utterances each: a wrong mean or spread (e.g. pitch
    # range 20 % off) moves the 0.5-0.7 bin by 0.05; the generator's own stays within 0.015.
    for low, high in ((0.5, 0.7), (0.7, 0.9), (0.9, 0.99), (0.99, 1.01)):
        inside = (confidence >= low) & (confidence < high)
        assert inside.sum() >= 250
        assert abs(confidence[inside].mean() - correct[inside].mean()) < 0.035, (low, high)
    for emotion in range(len(demo.EMOTIONS)):  # the probability given to each class, on average
        assert abs(posteriors[:, emotion].mean() - (truth == emotion).mean()) < 0.02


def test_the_classifier_that_knows_the_baselines_is_the_better_one():
    unknown, truth = pooled_posteriors(speaker_known=False, dialogue=False)
    known, _ = pooled_posteriors(speaker_known=True, dialogue=False)
    assert (known.argmax(1) == truth).mean() > (unknown.argmax(1) == truth).mean()
