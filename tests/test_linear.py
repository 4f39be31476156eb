"""The `linear` model: multinomial logistic regression trained by the one trainer equals
scikit-learn's LogisticRegression with the same C (the trainer derives weight_decay = 1 / (C * n)
from the training size, the bias unpenalised)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mer.fuse.models import build_model, make_config
from mer.errors import MerError
from mer.fuse.trainer import TrainerConfig, _parameter_groups, train_fold, weight_decay_of

LABELS = ["a", "b", "c"]


def toy_set(n_per_class: int = 30, dim: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three standardised Gaussian blobs, linearly separable but not by a wide margin."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 2.0, (len(LABELS), dim))
    x = np.concatenate([rng.normal(c, 1.0, (n_per_class, dim)) for c in centres])
    y = np.repeat(np.arange(len(LABELS)), n_per_class)
    return (x - x.mean(0)) / x.std(0), y


def one_batch(x: np.ndarray, y: np.ndarray) -> dict:
    n = len(y)
    return {"audio": torch.tensor(x, dtype=torch.float32)[:, None, :], "audio_mask": torch.ones(n, 1, dtype=torch.bool),
            "label": torch.tensor(y), "ids": [f"u{i}" for i in range(n)]}


def test_linear_probe_matches_sklearn_logistic_regression():
    from sklearn.linear_model import LogisticRegression

    x, y = toy_set()
    c = 0.5
    reference = LogisticRegression(C=c, max_iter=10000, tol=1e-10).fit(x, y)
    config = make_config("linear", modality="audio", C=c, lr=0.05, max_epochs=600,
                         patience=None, monitor="last", lr_schedule="step:0.5:0.1")
    model = build_model("linear", len(LABELS), {"audio": x.shape[1], "text": None}, config)
    batch = one_batch(x, y)
    train_fold(model, config, TrainerConfig(), "toy", lambda epoch: [batch], lambda: [batch], lambda: [batch],
               LABELS, log=lambda line: None, train_size=len(y))
    with torch.no_grad():
        probabilities = model(batch).logits.softmax(-1).numpy()
    assert np.abs(probabilities - reference.predict_proba(x)).max() < 0.01
    # the same weights up to the softmax's shift invariance (sklearn's are centred over classes)
    weights = model.linear.weight.detach().numpy()
    assert np.allclose(weights - weights.mean(0), reference.coef_, atol=0.02)


def test_the_bias_is_not_decayed_and_other_models_decay_everything():
    probe = build_model("linear", 3, {"audio": 4, "text": 5}, make_config("linear"))
    decayed, exempt = _parameter_groups(probe, 0.1)
    assert [p.shape for p in exempt["params"]] == [probe.linear.bias.shape] and exempt["weight_decay"] == 0.0
    assert decayed["weight_decay"] == 0.1 and len(decayed["params"]) == 1
    mlp = build_model("audio-only", 3, {"audio": 4, "text": None}, make_config("audio-only"))
    decayed, exempt = _parameter_groups(mlp, 0.1)
    assert len(decayed["params"]) == len(list(mlp.parameters())) and not exempt["params"]


@pytest.mark.parametrize("modality, dim", [("audio", 4), ("text", 5), ("both", 9)])
def test_modality_picks_the_pooled_inputs(modality, dim):
    config = make_config("linear", modality=modality)
    assert config.inputs == {"audio": ("audio",), "text": ("text",), "both": ("audio", "text")}[modality]
    model = build_model("linear", 3, {"audio": 4, "text": 5}, config)
    assert model.linear.in_features == dim
    batch = {"audio": torch.randn(2, 7, 4), "audio_mask": torch.ones(2, 7, dtype=torch.bool),
             "text": torch.randn(2, 3, 5), "text_mask": torch.ones(2, 3, dtype=torch.bool)}
    assert model(batch).logits.shape == (2, 3)


def test_c_gives_the_weight_decay_from_the_folds_training_size():
    config = make_config("linear", C=0.1)
    assert config.weight_decay_for(224) == pytest.approx(1 / (0.1 * 224))  # RAVDESS: 0.0446
    assert weight_decay_of(config, 7551) == pytest.approx(1 / (0.1 * 7551))  # EmoryNLP's training split
    assert weight_decay_of(make_config("audio-only", weight_decay=0.01), 224) == 0.01  # other models: their own
    with pytest.raises(MerError, match="training size"):
        weight_decay_of(config, None)
    with pytest.raises(MerError, match="C must be positive"):
        make_config("linear", C=0)


def test_the_trainer_decays_the_probe_by_its_c_and_the_training_size(monkeypatch):
    """The optimiser the trainer builds carries 1 / (C n) for the n it is told, not a fixed number."""
    seen = []
    original = torch.optim.Adam

    def spy(groups, **kwargs):
        seen.append([g["weight_decay"] for g in groups])
        return original(groups, **kwargs)

    monkeypatch.setattr(torch.optim, "Adam", spy)
    x, y = toy_set(n_per_class=5)
    batch = one_batch(x, y)
    config = make_config("linear", modality="audio", C=0.5, max_epochs=1)
    model = build_model("linear", len(LABELS), {"audio": x.shape[1], "text": None}, config)
    train_fold(model, config, TrainerConfig(), "toy", lambda epoch: [batch], lambda: [batch], lambda: [batch],
               LABELS, log=lambda line: None, train_size=15)
    assert seen == [[pytest.approx(1 / (0.5 * 15)), 0.0]]
