"""MCSAN's own settings (tests/test_models.py runs the model through the checks every model passes)."""

from __future__ import annotations

from mer.fuse.models import apply_overrides, make_config


def test_only_the_mfcc_is_z_normalised_by_default():
    # "We perform z-normalization before feeding them [the MFCC] into the audio encoder"; the words: as they are
    config = make_config("mcsan")
    assert config.normalize_inputs == {"audio": True, "text": False}
    assert apply_overrides(config, {"normalize_inputs": "true"}).normalize_inputs is True  # --set: both roles
    assert apply_overrides(config, {"normalize_inputs": "false"}).normalize_inputs is False
    both = apply_overrides(config, {"normalize_inputs": '{"audio": true, "text": true}'})
    assert both.normalize_inputs == {"audio": True, "text": True}
