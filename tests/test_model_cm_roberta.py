"""CM-RoBERTa specifics (dialogue mode): one output per utterance, invariance to the other
dialogues' lengths, the concatenation the classifier reads under each ablation, the
residual branch on the raw inputs, the mid-level fusion reusing the input encoders."""

from __future__ import annotations

import pytest
import torch

from mer.errors import MerError
from mer.fuse.blocks import BiLSTMEncoder
from mer.fuse.models import apply_overrides, build_model, make_config, tiny_config

DIMS = {"audio": 12, "text": 10}
CLASSES = 5




def model_for(num_classes: int = CLASSES, **overrides):
    torch.manual_seed(0)
    config = apply_overrides(tiny_config("cm-roberta"), overrides)
    return build_model("cm-roberta", num_classes, DIMS, config=config).eval()


def dialogues(lengths: list[int], seed: int = 0, width: int = 0) -> dict:
    """A batch of dialogues with these utterance counts, padded with garbage to `width` (or the longest)."""
    generator = torch.Generator().manual_seed(seed)
    utterances = max(width, *lengths)
    mask = torch.arange(utterances)[None, :] < torch.tensor(lengths)[:, None]
    batch = {"utterance_mask": mask, "audio_mask": mask, "text_mask": mask}
    for modality, dim in DIMS.items():
        real = torch.randn(len(lengths), utterances, dim, generator=generator)
        batch[modality] = torch.where(mask[..., None], real, 10 * torch.randn(real.shape, generator=generator))
    return batch


def test_defaults_follow_the_paper():
    config = make_config("cm-roberta")
    assert config.sample_unit == "dialogue"
    assert (config.hidden, config.sca_layers, config.heads) == (128, 2, 1)
    assert (config.lr, config.weight_decay, config.batch_size, config.max_epochs) == (1e-4, 3e-4, 32, 200)
    assert (config.patience, config.monitor) == (15, "loss")
    assert config.audio_feature == "opensmile-conf:emo_large.conf+openl3-6144-mean"
    assert config.text_feature == "roberta-large-last4"
    assert (config.demo_audio_feature, config.demo_text_feature) == ("opensmile-egemaps", "minilm-l6")
    assert set(type(config).ablations) >= {"no_sca", "audio_only", "text_only"}
    with pytest.raises(MerError):
        make_config("cm-roberta", sample_unit="utterance")
    with pytest.raises(MerError):
        make_config("cm-roberta", audio_only=True, text_only=True)


def test_one_prediction_per_utterance():
    batch = dialogues([4, 2, 1])
    logits = model_for()(batch).logits
    assert logits.shape == (3, 4, CLASSES)
    assert (logits[~batch["utterance_mask"]] == 0).all()  # padded utterances
    assert model_for(num_classes=1)(batch).logits.shape == (3, 4, 1)  # regression


def test_dialogue_padding_invariance_across_lengths():
    model = model_for()
    alone = dialogues([3], seed=1)
    with torch.no_grad():
        reference = model(alone).logits[0]  # (3, C)
        for lengths, row in (([7, 3], 1), ([3, 1, 5], 0), ([2, 6, 4, 3], 3)):
            batch = dialogues(lengths, seed=2, width=9)  # padded beyond the longest dialogue, garbage there
            for modality in DIMS:
                batch[modality][row, :3] = alone[modality][0]
            got = model(batch).logits[row, :3]
            assert (got - reference).abs().max() <= 1e-5, lengths


def test_every_utterance_sees_the_whole_dialogue():
    model = model_for()
    batch = dialogues([5], seed=3)
    changed = {key: value.clone() for key, value in batch.items()}
    changed["audio"][0, 4] += 1.0  # the last utterance only
    with torch.no_grad():
        before, after = model(batch).logits[0], model(changed).logits[0]
    assert (before[0] - after[0]).abs().max() > 1e-6  # the first utterance's prediction moves: no causal mask


def test_concatenation_width_under_each_ablation():
    d = tiny_config("cm-roberta").hidden
    batch = dialogues([3, 2])
    expected = {
        "default": ["audio_cross", "text_cross", "audio_self", "text_self", "mid", "audio_residual", "text_residual"],
        "no_sca": ["mid", "audio_residual", "text_residual"],
        "audio_only": ["audio", "audio_residual"],
        "text_only": ["text", "text_residual"],
    }
    for variant, names in expected.items():
        model = model_for(**({} if variant == "default" else {variant: True}))
        assert model.part_names == names
        assert model.classifier.net[0].in_features == len(names) * d
        parts = model.parts(batch)
        assert list(parts) == names and all(part.shape == (2, 3, d) for part in parts.values())
    assert model_for(no_sca=True).sca is None and model_for().sca is not None


def test_unimodal_variants_never_read_the_other_modality():
    for variant, other in (("audio_only", "text"), ("text_only", "audio")):
        model = model_for(**{variant: True})
        assert other not in model.encoders and other not in model.residuals and model.mid_lstm is None
        batch = dialogues([3, 2])
        changed = dict(batch, **{other: torch.randn_like(batch[other])})
        with torch.no_grad():
            assert torch.equal(model(batch).logits, model(changed).logits)


def test_residual_branch_reads_the_raw_inputs():
    model = model_for()
    batch = dialogues([4, 3], seed=4)
    with torch.no_grad():
        parts = model.parts(batch)
        mask = batch["utterance_mask"][..., None]
        for modality, dim in DIMS.items():
            branch = model.residuals[modality]
            assert branch.linear.in_features == dim  # the feature vector itself, not an LSTM state
            expected = branch.norm(branch.linear(batch[modality])) * mask
            assert torch.allclose(parts[f"{modality}_residual"], expected, atol=1e-6)
        # per utterance, no context: changing utterance 2 moves only its residual, while H_mid moves everywhere
        changed = {key: value.clone() for key, value in batch.items()}
        changed["text"][0, 2] += 1.0
        moved = model.parts(changed)
    residual_change = (moved["text_residual"] - parts["text_residual"]).abs().amax(-1)[0]  # (utterances,)
    assert residual_change[2] > 0 and (residual_change[[0, 1, 3]] == 0).all()
    assert (moved["mid"] - parts["mid"]).abs()[0, 0].max() > 0


def test_mid_level_fusion_reuses_the_input_encoders():
    model = model_for()
    d = model.config.hidden
    lstms = [module for module in model.modules() if isinstance(module, BiLSTMEncoder)]
    assert len(lstms) == 3  # the two input encoders and the joint BiLSTM of eq. 10, no second pair
    assert model.mid_lstm.lstm.input_size == 2 * d  # [H_a ; H_t]
    model.train()
    model.zero_grad()
    model.parts(dialogues([3, 2]))["mid"].sum().backward()  # H_mid alone
    for modality in DIMS:
        grad = model.encoders[modality].lstm.weight_ih_l0.grad
        assert grad is not None and grad.abs().sum() > 0  # the encoders feed the mid-level branch


def test_unimodal_variants_load_only_their_modality():
    from mer.fuse.run import model_features

    def features(**overrides):
        return model_features("cm-roberta", make_config("cm-roberta", **overrides), "demo", {})

    assert features() == {"audio": "opensmile-egemaps", "text": "minilm-l6"}
    assert features(audio_only=True) == {"audio": "opensmile-egemaps", "text": None}
    assert features(text_only=True) == {"audio": None, "text": "minilm-l6"}
    # and the model runs on the batch the loader then gives: the other modality's keys absent
    model = build_model("cm-roberta", 3, {"audio": None, "text": 6}, config=tiny_config("cm-roberta"), text_only=True)
    mask = torch.ones(2, 4, dtype=torch.bool)
    assert model({"text": torch.randn(2, 4, 6), "text_mask": mask, "utterance_mask": mask}).logits.shape == (2, 4, 3)
