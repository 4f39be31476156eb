"""Every registered fusion model, through its tiny config, on synthetic batches built from the
config (sample_unit decides utterance vs dialogue mode): forward, backward, finite values,
padding invariance, a few Adam steps lower the loss, regression output (one value, and three
dimensional targets: RegressionTargets), every ablation runs;
the unimodal ablations (audio_only / text_only) on batches that hold their modality alone.
A model added to the registry is picked up here without editing this file."""

from __future__ import annotations

import math

import pytest
import torch

from mer.errors import MerError
from mer.fuse.blocks import (AttentionLayer, BiLSTMEncoder, CrossSelfAttentionUnit, masked_max, masked_mean,
                             masked_softmax, symmetric_info_nce)
from mer.fuse.models import (MODELS, RegressionTargets, apply_overrides, build_model, fusion_losses, lr_factor,
                             make_config, model_names, task_loss_for, tiny_config)
from mer.fuse.models.base import IGNORE_LABEL
from mer.fuse.run import model_features

INPUT_DIMS = {"audio": 12, "text": 10}
NUM_CLASSES = 4
EXTRA = 3  # positions the padding check appends to every sequence
TOLERANCE = 1e-5




# ----------------------------------------------------------------------------- synthetic batches


def sequence_limits(config) -> tuple[int, int]:
    """Longest audio / text lengths to draw, leaving room for EXTRA padded positions."""
    audio = min(config.max_audio_frames or 40, 40) - EXTRA
    text = min(config.max_text_len or 12, 12) - EXTRA
    assert audio >= 1 and text >= 1, "tiny config limits leave no room for the padding check"
    return audio, text


def make_batch(config, size: int, num_classes: int, seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    if config.sample_unit == "dialogue":
        utterances = 6
        lengths = torch.randint(1, utterances + 1, (size,), generator=generator)
        lengths[0] = utterances
        mask = torch.arange(utterances)[None, :] < lengths[:, None]  # (batch, utterances)
        batch = {"audio": _features(size, utterances, "audio", mask, generator),
                 "text": _features(size, utterances, "text", mask, generator),
                 "utterance_mask": mask, "audio_mask": mask, "text_mask": mask}
        labels = _labels((size, utterances), num_classes, generator)
        batch["label"] = labels.masked_fill(~mask.reshape(*mask.shape, *[1] * (labels.dim() - 2)), IGNORE_LABEL)
        return batch
    max_audio, max_text = sequence_limits(config)
    audio_lengths = torch.randint(1, max_audio + 1, (size,), generator=generator)
    text_lengths = torch.randint(1, max_text + 1, (size,), generator=generator)
    audio_lengths[0], text_lengths[0] = max_audio, max_text
    audio_lengths[1 % size], text_lengths[-1] = 1, 1  # length-1 items: utterance-level features look like this
    audio_mask = torch.arange(max_audio)[None, :] < audio_lengths[:, None]
    text_mask = torch.arange(max_text)[None, :] < text_lengths[:, None]
    return {"audio": _features(size, max_audio, "audio", audio_mask, generator), "audio_mask": audio_mask,
            "text": _features(size, max_text, "text", text_mask, generator), "text_mask": text_mask,
            "label": _labels((size,), num_classes, generator)}


def _features(size, length, modality, mask, generator):
    return torch.randn(size, length, INPUT_DIMS[modality], generator=generator) * mask[..., None]  # loader pads with 0


def _labels(shape, num_classes, generator):
    if isinstance(num_classes, RegressionTargets):  # one value per target: (..., D)
        return torch.randn(*shape, num_classes, generator=generator)
    if num_classes == 1:
        return torch.randn(shape, generator=generator)
    return torch.randint(0, num_classes, shape, generator=generator)


def with_padding(batch: dict, config, seed: int) -> dict:
    """The same items plus EXTRA padded positions per sequence holding garbage, plus one more
    item: an utterance with an empty transcript (all text masked), or a 2-utterance dialogue."""
    generator = torch.Generator().manual_seed(seed)
    size, dialogue = batch["label"].size(0), config.sample_unit == "dialogue"
    masks = {}
    for key in ("utterance_mask", "audio_mask", "text_mask"):
        if key in batch and key not in masks:
            old = batch[key]
            mask = torch.zeros(size + 1, old.size(1) + EXTRA, dtype=torch.bool)
            mask[:size, : old.size(1)] = old
            masks[key] = mask
    if dialogue:
        masks["utterance_mask"][size, :2] = True
        masks["audio_mask"] = masks["text_mask"] = masks["utterance_mask"]
    else:
        masks["audio_mask"][size, :2] = True  # text_mask of the extra item stays all False
    padded = dict(masks)
    for modality in ("audio", "text"):
        old, mask = batch[modality], masks[f"{modality}_mask"]
        garbage = 10 * torch.randn(size + 1, mask.size(1), old.size(2), generator=generator)
        real = torch.zeros_like(garbage)
        real[:size, : old.size(1)] = old
        real[size] = torch.randn(mask.size(1), old.size(2), generator=generator)
        padded[modality] = torch.where(mask[..., None], real, garbage)
    old_label = batch["label"]
    extra_label = _labels(old_label.shape[1:], 1 if old_label.is_floating_point() else 2, generator)
    if dialogue:
        label = torch.full((size + 1, old_label.size(1) + EXTRA), IGNORE_LABEL, dtype=old_label.dtype)
        label[:size, : old_label.size(1)] = old_label
        label[size, :2] = extra_label[:2]
    else:
        label = torch.cat([old_label, extra_label[None]])
    padded["label"] = label
    return padded


def total_loss(model, batch, num_classes) -> torch.Tensor:
    output = model(batch)
    terms = fusion_losses(model, output, batch["label"], task_loss_for(num_classes))
    assert terms and all(torch.isfinite(value) for value in terms.values()), terms
    return sum(terms.values())


def check_forward_backward(model, batch, num_classes, all_parameters_used: bool = False):
    model.train()
    output = model(batch)
    label_shape = batch["label"].shape[:-1] if isinstance(num_classes, RegressionTargets) else batch["label"].shape
    expected = (*label_shape, num_classes)
    assert tuple(output.logits.shape) == expected
    assert torch.isfinite(output.logits).all()
    model.zero_grad()
    total_loss(model, batch, num_classes).backward()
    for name, parameter in model.named_parameters():
        if parameter.grad is None:
            assert not all_parameters_used, f"{name} receives no gradient"
            continue
        assert torch.isfinite(parameter.grad).all(), f"non-finite gradient in {name}"


def assert_padding_invariant(model, batch, padded):
    model.eval()
    with torch.no_grad():
        reference = model(batch).logits
        logits = model(padded).logits
    assert torch.isfinite(logits).all(), "padding or an empty item produced NaN/Inf"
    real_part = logits[: reference.size(0)]
    if reference.dim() == 3:  # dialogue mode: (batch, utterances, C)
        real_part = real_part[:, : reference.size(1)]
    assert (real_part - reference).abs().max() <= TOLERANCE, (real_part - reference).abs().max()


# ----------------------------------------------------------------------------- the test of every model


@pytest.mark.parametrize("name", model_names())
def test_model(name):
    config = tiny_config(name)
    torch.manual_seed(0)
    model = build_model(name, NUM_CLASSES, INPUT_DIMS, config=config)
    batch = make_batch(config, size=3, num_classes=NUM_CLASSES, seed=1)

    check_forward_backward(model, batch, NUM_CLASSES, all_parameters_used=True)

    # padding invariance, eval mode: extra positions and an extra item change nothing for the real items
    assert_padding_invariant(model, batch, with_padding(batch, config, seed=2))

    # a few Adam steps on one fixed batch lower its loss
    torch.manual_seed(0)
    model = build_model(name, NUM_CLASSES, INPUT_DIMS, config=config)
    train_batch = make_batch(config, size=8, num_classes=NUM_CLASSES, seed=3)
    model.eval()
    with torch.no_grad():
        before = total_loss(model, train_batch, NUM_CLASSES).item()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(25):
        model.train()
        optimizer.zero_grad()
        total_loss(model, train_batch, NUM_CLASSES).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        after = total_loss(model, train_batch, NUM_CLASSES).item()
    assert after < 0.9 * before, (before, after)

    # regression (num_classes == 1): one output per item
    model = build_model(name, 1, INPUT_DIMS, config=config)
    check_forward_backward(model, make_batch(config, size=3, num_classes=1, seed=4), 1)

    # dimensional regression (valence, activation, dominance): three outputs, the CCC loss, no NaN
    targets = RegressionTargets(3)
    model = build_model(name, targets, INPUT_DIMS, config=config)
    check_forward_backward(model, make_batch(config, size=3, num_classes=targets, seed=5), targets)

    # every ablation switch builds and runs
    for switch, values in type(config).ablations.items():
        for value in values:
            variant = build_model(name, NUM_CLASSES, INPUT_DIMS, config=apply_overrides(config, {switch: value}))
            check_forward_backward(variant, batch, NUM_CLASSES)


UNIMODAL = {"audio_only": ("audio", "text"), "text_only": ("text", "audio")}  # switch -> (modality read, other)
UNIMODAL_MODELS = [name for name in model_names() if set(UNIMODAL) <= set(MODELS.get(name).config_class.ablations)]


def without(batch: dict, modality: str) -> dict:
    """The batch the loader gives when `modality`'s feature is not loaded: its keys absent."""
    return {key: value for key, value in batch.items() if key not in (modality, f"{modality}_mask")}


def test_the_papers_with_unimodal_rows_have_unimodal_ablations():
    assert {"cm-roberta", "mcsan", "mcfn"} <= set(UNIMODAL_MODELS)


@pytest.mark.parametrize("switch", sorted(UNIMODAL))
@pytest.mark.parametrize("name", UNIMODAL_MODELS)
def test_unimodal_ablation_loads_and_reads_only_its_modality(name, switch):
    modality, other = UNIMODAL[switch]
    config = apply_overrides(tiny_config(name), {switch: True})
    features = model_features(name, config, "demo", {})
    assert features == {modality: getattr(config, f"demo_{modality}_feature"), other: None}
    assert model_features(name, config, "meld", {})[other] is None
    torch.manual_seed(0)
    model = build_model(name, NUM_CLASSES, {modality: INPUT_DIMS[modality], other: None}, config=config)  # no dim
    batch = without(make_batch(config, size=3, num_classes=NUM_CLASSES, seed=1), other)  # reading it: KeyError
    check_forward_backward(model, batch, NUM_CLASSES, all_parameters_used=True)  # nothing built for the other
    both = make_batch(config, size=3, num_classes=NUM_CLASSES, seed=1)
    assert_padding_invariant(model, batch, without(with_padding(both, config, seed=2), other))


# ----------------------------------------------------------------------------- MCSAN and the shared blocks


def test_mcsan_exposes_the_paper_ablations_and_defaults():
    config = make_config("mcsan")
    assert set(type(config).ablations) >= {"no_self", "no_cross", "order", "layers"}
    assert (config.hidden, config.heads, config.layers, config.batch_size) == (128, 8, 1, 256)
    assert (config.lr, config.max_epochs) == (1e-3, 30)
    assert (make_config("mcsan", corpus="meld").lr, make_config("mcsan", corpus="meld").max_epochs) == (5e-4, 20)
    assert make_config("mcsan", corpus="meld", lr="1e-4").lr == 1e-4  # user overrides win
    tiny = tiny_config("mcsan")
    widths = {}
    for overrides in ({}, {"no_self": True}, {"no_cross": True}, {"order": "cross_self"}, {"order": "self_cross"}):
        model = build_model("mcsan", 3, INPUT_DIMS, config=apply_overrides(tiny, overrides))
        widths[str(overrides)] = model.classifier.net[-1].in_features
    assert widths["{}"] == 4 * tiny.hidden and set(list(widths.values())[1:]) == {2 * tiny.hidden}
    with pytest.raises(MerError):
        apply_overrides(tiny, {"no_self": True, "no_cross": True})
    with pytest.raises(MerError):
        make_config("mcsan", no_such_option=1)


def test_mcsan_audio_mask_follows_the_downsampling():
    model = build_model("mcsan", 3, INPUT_DIMS, config=tiny_config("mcsan"))
    audio_mask = torch.arange(30)[None, :] < torch.tensor([30, 10, 1, 9])[:, None]
    audio = torch.randn(4, 30, INPUT_DIMS["audio"]) * audio_mask[..., None]
    _, pooled_mask = model.audio_encoder(audio, audio_mask)
    assert pooled_mask.sum(1).tolist() == [4, 2, 1, 1]  # ceil(ceil(n / 3) / 3)


def test_masked_pooling_and_softmax_handle_empty_rows():
    x = torch.randn(2, 4, 3)
    mask = torch.tensor([[True, True, False, False], [False] * 4])
    assert torch.allclose(masked_mean(x, mask)[0], x[0, :2].mean(0))
    assert torch.allclose(masked_max(x, mask)[0], x[0, :2].amax(0))
    assert (masked_mean(x, mask)[1] == 0).all() and (masked_max(x, mask)[1] == 0).all()
    weights = masked_softmax(torch.randn(2, 4), mask)
    assert torch.allclose(weights.sum(-1), torch.tensor([1.0, 0.0])) and (weights[0, 2:] == 0).all()


def test_attention_with_no_real_keys_gives_zeros_not_nan():
    layer = AttentionLayer(8, 2, dropout=0.0).eval()
    query, query_mask = torch.randn(2, 3, 8), torch.ones(2, 3, dtype=torch.bool)
    keys, key_mask = torch.randn(2, 5, 8), torch.tensor([[True] * 5, [False] * 5])
    out = layer(query, query_mask, keys, key_mask)
    assert torch.isfinite(out).all()
    alone = layer(query[1:], query_mask[1:], query[1:, :1] * 0, torch.zeros(1, 1, dtype=torch.bool))
    assert torch.allclose(out[1], alone[0], atol=1e-6)  # the empty attention contributes exactly zero


def test_unit_orders_and_bilstm_merge():
    audio, text = torch.randn(2, 7, 8), torch.randn(2, 4, 8)
    audio_mask, text_mask = torch.ones(2, 7, dtype=torch.bool), torch.ones(2, 4, dtype=torch.bool)
    for order, pairs in (("parallel", 2), ("cross_self", 1), ("self_cross", 1)):
        unit = CrossSelfAttentionUnit(8, 2, layers=2, order=order)
        outputs = unit(audio, audio_mask, text, text_mask)
        assert len(outputs) == unit.num_outputs == pairs
        assert all(a.shape == audio.shape and t.shape == text.shape for a, t in outputs)
    assert BiLSTMEncoder(8, 5)(audio, audio_mask).shape == (2, 7, 5)
    assert BiLSTMEncoder(8, 5, merge="concat")(audio, audio_mask).shape == (2, 7, 10)


def test_info_nce_lr_schedule_and_overrides():
    assert math.isclose(symmetric_info_nce(torch.zeros(4, 4), 0.07).item(), math.log(4), rel_tol=1e-6)
    assert symmetric_info_nce(10 * torch.eye(4), 1.0) < 0.01
    assert [lr_factor("step:0.5:0.1", epoch, 40) for epoch in (0, 19, 20, 39)] == [1.0, 1.0, 0.1, 0.1]
    assert lr_factor("constant", 5, 10) == 1.0
    with pytest.raises(MerError):
        make_config("mcsan", lr_schedule="cosine")
    config = make_config("concat", hidden="64", dropout="0.5", patience="none", per_corpus='{"meld": {"lr": 1}}')
    assert (config.hidden, config.dropout, config.patience, config.per_corpus) == (64, 0.5, None, {"meld": {"lr": 1}})
