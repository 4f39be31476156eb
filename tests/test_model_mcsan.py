"""MCSAN's own settings and its unimodal ablations (tests/test_models.py runs the model through the checks
every model passes)."""

from __future__ import annotations

import pytest
import torch

from mer.errors import MerError
from mer.fuse.blocks import SelfAttentionStack, masked_max
from mer.fuse.models import apply_overrides, build_model, make_config, tiny_config

DIMS, CLASSES = {"audio": 12, "text": 10}, 3
UNIMODAL = {"audio_only": ("audio", "text"), "text_only": ("text", "audio")}  # switch -> (modality read, other)


def test_only_the_mfcc_is_z_normalised_by_default():
    # "We perform z-normalization before feeding them [the MFCC] into the audio encoder"; the words: as they are
    config = make_config("mcsan")
    assert config.normalize_inputs == {"audio": True, "text": False}
    assert apply_overrides(config, {"normalize_inputs": "true"}).normalize_inputs is True  # --set: both roles
    assert apply_overrides(config, {"normalize_inputs": "false"}).normalize_inputs is False
    both = apply_overrides(config, {"normalize_inputs": '{"audio": true, "text": true}'})
    assert both.normalize_inputs == {"audio": True, "text": True}


def parameter_count(*modules) -> int:
    return sum(parameter.numel() for module in modules for parameter in module.parameters())


def test_unimodal_variants_keep_the_modalitys_branch_of_the_full_model():
    """Table 3's w/o text / w/o audio: the modality's encoder, positions, its own self-attention module,
    max-pool and one FC (d -> C); the cross module and the other modality's encoder and self module are gone."""
    tiny = tiny_config("mcsan")
    full = build_model("mcsan", CLASSES, DIMS, config=tiny)
    generator = torch.Generator().manual_seed(0)
    lengths = {"audio": torch.tensor([30, 7, 1]), "text": torch.tensor([5, 1, 3])}
    for switch, (modality, other) in UNIMODAL.items():
        model = build_model("mcsan", CLASSES, {modality: DIMS[modality], other: None},
                            config=apply_overrides(tiny, {switch: True})).eval()
        encoder = model.audio_encoder if modality == "audio" else model.text_encoder
        assert getattr(model, f"{other}_encoder") is None and isinstance(model.attention, SelfAttentionStack)
        full_branch = (getattr(full, f"{modality}_encoder"), getattr(full.attention, f"{modality}_self_layers"))
        assert parameter_count(model) == parameter_count(*full_branch) + tiny.hidden * CLASSES + CLASSES
        mask = torch.arange(int(lengths[modality].max()))[None] < lengths[modality][:, None]
        features = torch.randn(3, mask.size(1), DIMS[modality], generator=generator) * mask[..., None]
        batch = {modality: features, f"{modality}_mask": mask}
        with torch.no_grad():
            encoded = encoder(features, mask)
            hidden, hidden_mask = encoded if modality == "audio" else (encoded, mask)  # the audio encoder pools
            hidden = model.positions(hidden) * hidden_mask[..., None]
            expected = model.classifier(masked_max(model.attention(hidden, hidden_mask), hidden_mask))
            assert torch.allclose(model(batch).logits, expected, atol=1e-6)
    with pytest.raises(MerError):
        make_config("mcsan", audio_only=True, no_self=True)  # no attention module would remain
    with pytest.raises(MerError):
        make_config("mcsan", audio_only=True, text_only=True)
