"""MCFN specifics beyond the parametrised test of every model (tests/test_models.py): SpecAugment,
the masked BatchNorm, the dual attention and co-attention masks, the mutual-adjustment loss,
the decision fusion (eq. 8-9), the named loss terms (eq. 11), the ablation switches and the
unimodal variants (Table 3's speech only / text only)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mer.errors import MerError
from mer.fuse.blocks import masked_mean
from mer.fuse.models import apply_overrides, build_model, fusion_losses, make_config, task_loss_for, tiny_config
from mer.fuse.models.mcfn import (AdditiveCoAttention, DualAttention, MaskedBatchNorm1d, MCFNConfig,
                                  SpecAugment)

AUDIO_DIM, TEXT_DIM, CLASSES = 12, 10, 4  # 12 = 3 blocks of 4 "bands"




def make_batch(audio_lengths, text_lengths, seed=0, extra=0, garbage=0.0):
    """Zero-padded batch; `extra` more padded positions holding `garbage`-scaled noise."""
    generator = torch.Generator().manual_seed(seed)
    frames, words = max(audio_lengths) + extra, max(text_lengths) + extra
    audio_mask = torch.arange(frames)[None] < torch.tensor(audio_lengths)[:, None]
    text_mask = torch.arange(words)[None] < torch.tensor(text_lengths)[:, None]
    audio = torch.randn(len(audio_lengths), frames, AUDIO_DIM, generator=generator)
    text = torch.randn(len(text_lengths), words, TEXT_DIM, generator=generator)
    noise_a = garbage * torch.randn(audio.shape, generator=generator)
    noise_t = garbage * torch.randn(text.shape, generator=generator)
    return {"audio": torch.where(audio_mask[..., None], audio, noise_a), "audio_mask": audio_mask,
            "text": torch.where(text_mask[..., None], text, noise_t), "text_mask": text_mask,
            "label": torch.randint(0, CLASSES, (len(audio_lengths),), generator=generator)}


def padded_copy(batch, extra, seed=9):
    """The same items with `extra` more garbage-filled padded positions per sequence."""
    generator = torch.Generator().manual_seed(seed)
    out = dict(batch)
    for key in ("audio", "text"):
        x, mask = batch[key], batch[f"{key}_mask"]
        grown = 10 * torch.randn(x.size(0), x.size(1) + extra, x.size(2), generator=generator)
        grown[:, : x.size(1)] = torch.where(mask[..., None], x, grown[:, : x.size(1)])
        new_mask = torch.zeros(x.size(0), x.size(1) + extra, dtype=torch.bool)
        new_mask[:, : x.size(1)] = mask
        out[key], out[f"{key}_mask"] = grown, new_mask
    return out


def model_for(**overrides):
    torch.manual_seed(0)
    return build_model("mcfn", CLASSES, {"audio": AUDIO_DIM, "text": TEXT_DIM},
                       config=apply_overrides(tiny_config("mcfn"), overrides))


def terms(model, batch):
    return fusion_losses(model, model(batch), batch["label"], task_loss_for(CLASSES))


# ----------------------------------------------------------------------------- config


def test_paper_defaults_and_ablations_are_exposed():
    config = make_config("mcfn")
    assert (config.hidden, config.heads, config.attention_hidden, config.dilation, config.encoder_blocks) == \
        (256, 4, 128, 2, 3)
    assert config.fusion_weights == pytest.approx((0.3, 0.3, 0.4))
    assert (config.lr, config.batch_size) == (1e-4, 32)
    assert (config.audio_feature, config.text_feature) == ("logmfb80-d2", "roberta-base")
    assert (config.demo_audio_feature, config.demo_text_feature) == ("logmfb80-d2", "minilm-l6")
    assert set(MCFNConfig.ablations) >= {"no_dual_attention", "no_interaction", "no_mutual_adjustment",
                                         "no_specaugment", "alpha", "beta", "audio_only", "text_only"}
    # gamma None follows eq. 9 (the paper's grid of Fig. 3); given, the three must sum to 1
    assert make_config("mcfn", alpha="0.5").fusion_weights == pytest.approx((0.5, 0.3, 0.2))
    assert make_config("mcfn", alpha=0.2, beta=0.2, gamma=0.6).fusion_weights == pytest.approx((0.2, 0.2, 0.6))
    for bad in ({"alpha": 0.8}, {"gamma": 0.5}, {"alpha": -0.1}, {"heads": 3}):
        with pytest.raises(MerError):
            make_config("mcfn", **bad)


# ----------------------------------------------------------------------------- SpecAugment


def test_specaugment_only_in_training_and_never_on_padding():
    augment = SpecAugment(blocks=3, freq_masks=1, freq_width=2, time_masks=1, time_width=6, time_ratio=0.5)
    batch = make_batch([20, 9, 3], [2, 2, 2], garbage=10.0, extra=5)
    audio, mask = batch["audio"], batch["audio_mask"]
    augment.eval()
    assert torch.equal(augment(audio, mask), audio)
    augment.train()
    changed = torch.zeros_like(mask)
    for seed in range(40):
        torch.manual_seed(seed)
        out = augment(audio, mask)
        assert torch.equal(out[~mask], audio[~mask])  # padding untouched, garbage included
        zeroed = (out == 0) & (audio != 0)  # (batch, frames, dim)
        assert torch.equal(out[~zeroed], audio[~zeroed])  # masks only ever write 0
        changed |= zeroed.any(-1)
        # a frequency mask hits the same bands of the static, delta and delta-delta blocks
        frame_zeroed = zeroed.all(-1)
        band_hits = (zeroed & ~frame_zeroed[..., None] & mask[..., None]).any(1).view(3, 3, 4)  # (batch, block, band)
        assert torch.equal(band_hits, band_hits[:, :1].expand_as(band_hits))
        assert (band_hits.sum(-1) <= 2).all()  # freq_width
        # a time mask is at most min(time_width, ratio * real frames) frames
        assert frame_zeroed.sum(1).tolist()[0] <= 6 and frame_zeroed.sum(1).tolist()[1] <= 4
        assert frame_zeroed.sum(1).tolist()[2] <= 1
    assert changed[mask].any() and not changed[~mask].any()
    # deterministic given torch's RNG
    torch.manual_seed(3)
    first = augment(audio, mask)
    torch.manual_seed(3)
    assert torch.equal(first, augment(audio, mask))


def test_model_applies_specaugment_in_training_only():
    batch = make_batch([30, 12], [4, 3])
    model = model_for(dropout=0.0, freq_mask_width=4, time_mask_width=10, time_mask_ratio=0.5)
    plain = model_for(dropout=0.0, no_specaugment=True)
    assert model.spec_augment is not None and plain.spec_augment is None
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(batch).logits, model(batch).logits)
    outputs = []
    for seed in (0, 1, 1):
        torch.manual_seed(seed)
        model.train()
        outputs.append(model(batch).logits.detach())
    assert not torch.allclose(outputs[0], outputs[1]) and torch.equal(outputs[1], outputs[2])
    plain.train()
    torch.manual_seed(0)
    first = plain(batch).logits
    torch.manual_seed(1)
    assert torch.equal(first, plain(batch).logits)  # without SpecAugment (and dropout) training mode is deterministic


# ----------------------------------------------------------------------------- masked BatchNorm, encoder


def test_masked_batchnorm_matches_batchnorm_and_ignores_padding():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 7)
    reference, masked = torch.nn.BatchNorm1d(5), MaskedBatchNorm1d(5)
    masked.load_state_dict(reference.state_dict())
    full = torch.ones(3, 7, dtype=torch.bool)
    for _ in range(2):
        assert torch.allclose(masked(x, full), reference(x), atol=1e-5)
    assert torch.allclose(masked.running_mean, reference.running_mean, atol=1e-6)
    assert torch.allclose(masked.running_var, reference.running_var, atol=1e-6)
    masked.eval(), reference.eval()
    assert torch.allclose(masked(x, full), reference(x), atol=1e-5)
    # training statistics from the real frames only: padding changes neither outputs nor estimates
    lengths = torch.tensor([7, 3, 1])
    mask = torch.arange(7)[None] < lengths[:, None]
    padded_x = torch.cat([torch.where(mask[:, None], x, 100 * torch.randn(3, 5, 7)), torch.randn(3, 5, 4)], 2)
    padded_mask = torch.cat([mask, torch.zeros(3, 4, dtype=torch.bool)], 1)
    a, b = MaskedBatchNorm1d(5), MaskedBatchNorm1d(5)
    out_a, out_b = a(x, mask), b(padded_x, padded_mask)
    assert torch.allclose(out_a, out_b[..., :7], atol=1e-5) and (out_b[..., 7:] == 0).all()
    assert (out_a[~mask[:, None].expand_as(out_a)] == 0).all()
    real = x.permute(1, 0, 2)[:, mask]  # (channels, real frames)
    assert torch.allclose(a.running_mean, 0.1 * real.mean(1), atol=1e-6)
    assert torch.allclose(a.running_var, 0.9 + 0.1 * real.var(1), atol=1e-5)
    assert torch.allclose(a.running_var, b.running_var) and torch.allclose(a.running_mean, b.running_mean)


def test_training_mode_outputs_ignore_padding():
    """With SpecAugment and dropout off, training mode (masked BatchNorm) is padding invariant too."""
    model = model_for(dropout=0.0, no_specaugment=True).train()
    batch = make_batch([25, 7, 1], [6, 1, 3])
    padded = padded_copy(batch, extra=4)
    reference, output = model(batch), model(padded)
    assert torch.allclose(reference.logits, output.logits, atol=1e-5)
    for name in reference.aux_losses:
        assert torch.allclose(reference.aux_losses[name], output.aux_losses[name], atol=1e-6)


def test_speech_encoder_keeps_frames_and_zeroes_padding():
    model = model_for().eval()
    batch = make_batch([11, 4], [2, 2], garbage=5.0)
    encoded = model.speech_encoder(batch["audio"], batch["audio_mask"])
    assert encoded.shape == (2, 11, tiny_config("mcfn").hidden)  # stride 1, no pooling: n frames
    assert (encoded[~batch["audio_mask"]] == 0).all()
    assert [type(block.norm) for block in model.speech_encoder.blocks] == [MaskedBatchNorm1d] * 3
    assert all(block.conv.dilation == (2,) for block in model.speech_encoder.blocks)


# ----------------------------------------------------------------------------- attention blocks


def test_dual_attention_and_co_attention_respect_masks():
    torch.manual_seed(0)
    dual, co = DualAttention(8, 2), AdditiveCoAttention(8, 8, 2)
    x, mask = torch.randn(2, 6, 8), torch.tensor([[True] * 6, [True] * 3 + [False] * 3])
    x = x * mask[..., None]
    out = dual(x, mask)
    assert (out[~mask] == 0).all()
    assert torch.allclose(out[1, :3], dual(x[1:, :3], mask[1:, :3])[0], atol=1e-5)
    # the channel branch alone: x + softmax(x^T x) x (eq. 2), the temporal one: x + softmax(T1 T2) T3 (eq. 1)
    item = x[0]  # (time, dim)
    channel = item + item @ torch.softmax(item.t() @ item, -1).t()
    q, k, v = (conv(item.t()[None])[0] for conv in (dual.query, dual.key, dual.value))
    temporal = item + torch.softmax(q.t() @ k, -1) @ v.t()
    assert torch.allclose(out[0], channel + temporal, atol=1e-4)

    speech = torch.randn(2, 9, 8)
    speech_mask = torch.tensor([[True] * 9, [True] * 4 + [False] * 5])
    text, text_mask = torch.randn(2, 3, 8), torch.tensor([[True] * 3, [True, False, False]])
    aligned = co(speech, speech_mask, text, text_mask)
    assert aligned.shape == (2, 3, 8) and (aligned[~text_mask] == 0).all()
    garbage = torch.where(speech_mask[..., None], speech, 50 * torch.randn(2, 9, 8))
    assert torch.allclose(co(garbage, speech_mask, text, text_mask), aligned, atol=1e-6)
    # each head's output is a convex combination of its channel slice of the real frames (eq. 4)
    head_slice = aligned[1, 0, :4]
    real = speech[1, :4, :4]
    assert (head_slice <= real.max(0).values + 1e-6).all() and (head_slice >= real.min(0).values - 1e-6).all()
    no_speech = co(speech, torch.zeros(2, 9, dtype=torch.bool), text, text_mask)
    assert torch.isfinite(no_speech).all() and (no_speech == 0).all()


# ----------------------------------------------------------------------------- mutual adjustment


def test_mutual_adjustment_is_zero_when_the_interaction_is_the_identity():
    batch = make_batch([20, 8, 5], [5, 2, 4])
    model = model_for().eval()
    with torch.no_grad():
        assert terms(model, batch)["mutual_adjustment"] > 0
        for gate in (model.speech_gate, model.text_gate):  # sigmoid(-1e4) = 0: S^c = S~, T^c = T
            gate.weight.zero_()
            gate.bias.fill_(-1e4)
        assert terms(model, batch)["mutual_adjustment"] == 0
    identity = model_for(no_interaction=True).eval()
    assert identity.speech_gate is None and identity.text_gate is None
    with torch.no_grad():
        assert terms(identity, batch)["mutual_adjustment"] == 0


def test_mutual_adjustment_compares_word_by_word_over_real_words():
    model = model_for(adjustment_weight=1.0).eval()
    batch = make_batch([20, 8], [5, 2])
    captured = {}
    model.co_attention.register_forward_hook(lambda module, args, out: captured.update(aligned=out, text=args[2]))
    with torch.no_grad():
        output = model(batch)
        mask = batch["text_mask"]
        aligned, text = captured["aligned"], captured["text"]
        speech_inter = aligned + aligned * torch.sigmoid(model.speech_gate(text))
        text_inter = text + text * torch.sigmoid(model.text_gate(aligned))
        expected = F.mse_loss(aligned[mask], speech_inter[mask]) + F.mse_loss(text[mask], text_inter[mask])
    assert torch.allclose(output.aux_losses["mutual_adjustment"], expected, atol=1e-6)
    heavier = model_for(adjustment_weight=0.25).eval()
    with torch.no_grad():
        assert torch.allclose(heavier(batch).aux_losses["mutual_adjustment"], 0.25 * expected, atol=1e-6)


def test_mutual_adjustment_decreases_when_trained_on_a_fixed_batch():
    model = model_for()
    batch = make_batch([30, 20, 12, 6], [6, 4, 5, 2], seed=3)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    history = []
    for _ in range(20):
        model.train()
        optimizer.zero_grad()
        loss_terms = terms(model, batch)
        history.append(loss_terms["mutual_adjustment"].item())
        sum(loss_terms.values()).backward()
        optimizer.step()
    assert history[-1] < 0.7 * history[0], history


# ----------------------------------------------------------------------------- decision fusion and losses


def test_decision_fusion_weights():
    model = model_for().eval()
    batch = make_batch([15, 6, 3], [4, 4, 1])
    with torch.no_grad():
        output = model(batch)
        heads = output.head_logits
        assert set(heads) == {"speech", "text", "bimodal"}
        fused = 0.3 * heads["speech"].softmax(-1) + 0.3 * heads["text"].softmax(-1) + 0.4 * heads["bimodal"].softmax(-1)
        assert torch.allclose(output.logits.exp(), fused, atol=1e-6)
        assert torch.allclose(output.logits.exp().sum(-1), torch.ones(3), atol=1e-6)
        model.config = apply_overrides(model.config, {"alpha": 1.0, "beta": 0.0})  # gamma = 0
        assert torch.allclose(model.fuse(heads), heads["speech"].log_softmax(-1), atol=1e-6)
        model.config = apply_overrides(model.config, {"alpha": 0.0, "beta": 0.5, "gamma": 0.5})
        expected = (0.5 * heads["text"].softmax(-1) + 0.5 * heads["bimodal"].softmax(-1)).log()
        assert torch.allclose(model.fuse(heads), expected, atol=1e-6)
    regression = build_model("mcfn", 1, {"audio": AUDIO_DIM, "text": TEXT_DIM}, config=tiny_config("mcfn")).eval()
    with torch.no_grad():
        output = regression(batch)
        heads = output.head_logits
        assert torch.allclose(output.logits, 0.3 * heads["speech"] + 0.3 * heads["text"] + 0.4 * heads["bimodal"],
                              atol=1e-6)


def test_loss_terms_are_named_and_weighted():
    batch = make_batch([15, 6, 3], [4, 4, 1])
    model = model_for().eval()
    with torch.no_grad():
        output = model(batch)
        loss_terms = fusion_losses(model, output, batch["label"], task_loss_for(CLASSES))
    assert set(loss_terms) == {"ce_speech", "ce_text", "ce_bimodal", "mutual_adjustment"}
    for name in ("speech", "text", "bimodal"):
        assert torch.allclose(loss_terms[f"ce_{name}"], F.cross_entropy(output.head_logits[name], batch["label"]))
    weighted = model_for(lambda_speech=0.5, lambda_text=2.0, lambda_bimodal=0.0, adjustment_weight=3.0).eval()
    with torch.no_grad():
        weighted_terms = terms(weighted, batch)
    assert torch.allclose(weighted_terms["ce_speech"], 0.5 * loss_terms["ce_speech"])
    assert torch.allclose(weighted_terms["ce_text"], 2.0 * loss_terms["ce_text"])
    assert weighted_terms["ce_bimodal"] == 0
    assert torch.allclose(weighted_terms["mutual_adjustment"], 3.0 * loss_terms["mutual_adjustment"])


# ----------------------------------------------------------------------------- ablations


def test_ablations_change_what_they_should():
    batch = make_batch([15, 6, 3], [4, 4, 1])
    base = model_for().eval()
    names = {name for name, _ in base.named_parameters()}

    no_dual = model_for(no_dual_attention=True).eval()
    dual_names = {name for name in names if "_attention." in name and "co_attention" not in name}
    assert dual_names and {name for name, _ in no_dual.named_parameters()} == names - dual_names
    seen = {}
    no_dual.co_attention.register_forward_hook(lambda module, args, out: seen.update(speech=args[0], text=args[2]))
    with torch.no_grad():
        no_dual(batch)
        encoded = no_dual.speech_encoder(batch["audio"], batch["audio_mask"])  # O_s goes straight to the alignment
        assert torch.equal(seen["speech"], encoded)
        assert torch.allclose(seen["text"], no_dual.text_encoder(batch["text"]) * batch["text_mask"][..., None])

    no_interaction = model_for(no_interaction=True).eval()
    gate_names = {name for name in names if "_gate." in name}
    assert gate_names and {name for name, _ in no_interaction.named_parameters()} == names - gate_names

    no_adjustment = model_for(no_mutual_adjustment=True).eval()
    assert {name for name, _ in no_adjustment.named_parameters()} == names
    with torch.no_grad():
        assert set(terms(no_adjustment, batch)) == {"ce_speech", "ce_text", "ce_bimodal"}
        assert torch.allclose(no_adjustment(batch).logits, base(batch).logits)  # the S~ + S^c addition stays

    no_augment = model_for(no_specaugment=True)
    assert no_augment.spec_augment is None and {name for name, _ in no_augment.named_parameters()} == names

    for switch, value in (("alpha", 0.5), ("beta", 0.1)):
        variant = model_for(**{switch: value}).eval()
        with torch.no_grad():
            assert not torch.allclose(variant(batch).logits, base(batch).logits)
            assert torch.equal(variant(batch).head_logits["text"], base(batch).head_logits["text"])
    assert math.isclose(model_for(alpha=0.5).config.fusion_weights[2], 0.2)


# ----------------------------------------------------------------------------- unimodal ablations


def test_unimodal_variants_are_the_intra_modal_module_and_its_own_classifier():
    """Table 3's speech only / text only: encoder -> dual attention -> S (T), mean-pooled over its own
    frames (words) -> that modality's classifier; nothing of the co-attention, interaction or fusion."""
    full_names = {name for name, _ in model_for().named_parameters()}
    batch = make_batch([15, 6, 3], [4, 4, 1])
    for switch, modality, other, head in (("audio_only", "audio", "text", "speech"),
                                          ("text_only", "text", "audio", "text")):
        torch.manual_seed(0)
        dims = {"audio": AUDIO_DIM, "text": TEXT_DIM, other: None}
        model = build_model("mcfn", CLASSES, dims, config=apply_overrides(tiny_config("mcfn"), {switch: True})).eval()
        kept = (f"{head}_encoder.", f"{head}_attention.", f"heads.{head}.")
        assert {name for name, _ in model.named_parameters()} == {name for name in full_names if name.startswith(kept)}
        alone = {key: value for key, value in batch.items() if key not in (other, f"{other}_mask")}
        mask = alone[f"{modality}_mask"]
        with torch.no_grad():
            output = model(alone)
            encoder = model.speech_encoder if head == "speech" else model.text_encoder
            encoded = encoder(alone[modality], mask) if head == "speech" else encoder(alone[modality]) * mask[..., None]
            intra = getattr(model, f"{head}_attention")(encoded, mask)  # S (batch, frames, d) or T (batch, words, d)
            assert torch.allclose(output.logits, model.heads[head](masked_mean(intra, mask)), atol=1e-6)
            assert set(output.head_logits) == {head} and output.aux_losses == {}
            loss_terms = terms(model, alone)
        assert set(loss_terms) == {f"ce_{head}"}
        assert torch.allclose(loss_terms[f"ce_{head}"], F.cross_entropy(output.logits, batch["label"]))
    assert model_for(audio_only=True).spec_augment is not None and model_for(text_only=True).spec_augment is None
