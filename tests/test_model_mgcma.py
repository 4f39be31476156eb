"""MGCMA beyond the shared model test: the W2 distance, the two InfoNCE terms, sigma and p
positivity, the aux losses training down, padding, the ablations and module orders."""

from __future__ import annotations

import math

import pytest
import torch

from mer.errors import MerError
from mer.fuse.blocks import masked_mean
from mer.fuse.models import apply_overrides, build_model, make_config, tiny_config
from mer.fuse.models.mgcma import MODULE_ORDERS, DistributionConstructor, wasserstein2_squared

DIMS = {"audio": 12, "text": 10}
NAMES = {"distribution_alignment", "instance_alignment"}




def make_model(**overrides):
    torch.manual_seed(0)
    return build_model("mgcma", 4, DIMS, config=apply_overrides(tiny_config("mgcma"), overrides))


def make_batch(size: int, seed: int = 0, audio_len: int = 9, text_len: int = 6) -> dict:
    generator = torch.Generator().manual_seed(seed)
    audio_lengths = torch.randint(1, audio_len + 1, (size,), generator=generator)
    text_lengths = torch.randint(1, text_len + 1, (size,), generator=generator)
    audio_lengths[0], text_lengths[0] = audio_len, text_len
    audio_mask = torch.arange(audio_len)[None] < audio_lengths[:, None]
    text_mask = torch.arange(text_len)[None] < text_lengths[:, None]
    return {"audio": torch.randn(size, audio_len, DIMS["audio"], generator=generator) * audio_mask[..., None],
            "audio_mask": audio_mask,
            "text": torch.randn(size, text_len, DIMS["text"], generator=generator) * text_mask[..., None],
            "text_mask": text_mask, "label": torch.randint(0, 4, (size,), generator=generator)}


def pad(batch: dict, extra: int = 4, seed: int = 5) -> dict:
    """The same items with `extra` more positions per sequence, filled with large garbage."""
    generator = torch.Generator().manual_seed(seed)
    padded = dict(batch)
    for modality in ("audio", "text"):
        x, mask = batch[modality], batch[f"{modality}_mask"]
        garbage = 100 * torch.randn(x.size(0), extra, x.size(2), generator=generator)
        padded[modality] = torch.cat([x, garbage], dim=1)
        padded[f"{modality}_mask"] = torch.cat([mask, torch.zeros(x.size(0), extra, dtype=torch.bool)], dim=1)
    return padded


# ----------------------------------------------------------------------------- W2 and the two InfoNCE terms


def test_wasserstein_equals_hand_computation_and_the_trace_formula():
    mu1, sigma1 = torch.tensor([[1.0, 2.0, -1.0]]), torch.tensor([[0.5, 1.0, 2.0]])
    mu2, sigma2 = torch.tensor([[0.0, 0.0, 1.0], [1.0, 2.0, -1.0]]), torch.tensor([[1.0, 1.0, 1.0], [0.5, 1.0, 2.0]])
    distance = wasserstein2_squared(mu1, sigma1, mu2, sigma2)
    # (1 + 4 + 4) + (0.25 + 0 + 1) = 10.25; the identical distribution is at 0
    assert distance.shape == (1, 2)
    assert torch.allclose(distance, torch.tensor([[10.25, 0.0]]))
    # eq. 4's general form ||mu1-mu2||^2 + Tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2), covariances S = diag(sigma^2)
    s1, s2 = torch.diag(sigma1[0] ** 2).double(), torch.diag(sigma2[0] ** 2).double()
    root1 = torch.diag(sigma1[0].double())
    values, vectors = torch.linalg.eigh(root1 @ s2 @ root1)
    cross = vectors @ torch.diag(values.clamp(min=0).sqrt()) @ vectors.t()
    general = ((mu1[0] - mu2[0]) ** 2).sum().double() + torch.trace(s1 + s2 - 2 * cross)
    assert math.isclose(general.item(), distance[0, 0].item(), rel_tol=1e-6)


def hand_info_nce(similarity: torch.Tensor, tau: float) -> float:
    """Eq. 6-8 (and 9-11) written out: (1 / 2N) sum_i (L_i^s2t + L_i^t2s)."""
    similarity, n = similarity.tolist(), similarity.size(0)
    total = 0.0
    for i in range(n):
        s2t = -math.log(math.exp(similarity[i][i] / tau) / sum(math.exp(similarity[i][j] / tau) for j in range(n)))
        t2s = -math.log(math.exp(similarity[i][i] / tau) / sum(math.exp(similarity[j][i] / tau) for j in range(n)))
        total += s2t + t2s
    return total / (2 * n)


def test_distribution_alignment_is_eq_5_to_8_symmetric_and_minimal_for_matched_pairs():
    model = make_model()
    generator = torch.Generator().manual_seed(0)
    n, d = 5, model.config.hidden
    mu_a, mu_t = torch.randn(n, d, generator=generator), torch.randn(n, d, generator=generator)
    sigma_a, sigma_t = torch.rand(n, d, generator=generator) + 0.1, torch.rand(n, d, generator=generator) + 0.1
    paired = torch.ones(n, dtype=torch.bool)
    with torch.no_grad():
        model.log_p.fill_(math.log(0.05))
        model.q.fill_(0.3)
        loss = model.distribution_alignment(mu_a, sigma_a, mu_t, sigma_t, paired)
        similarity = -0.05 * wasserstein2_squared(mu_a.double(), sigma_a.double(), mu_t.double(),
                                                  sigma_t.double()) + 0.3
        assert math.isclose(loss.item(), hand_info_nce(similarity, 0.07), rel_tol=1e-4)
        # symmetric: swapping the modalities gives the same loss
        swapped = model.distribution_alignment(mu_t, sigma_t, mu_a, sigma_a, paired)
        assert math.isclose(loss.item(), swapped.item(), rel_tol=1e-5)
        # q shifts every logit: it cancels
        model.q.fill_(-7.0)
        assert math.isclose(model.distribution_alignment(mu_a, sigma_a, mu_t, sigma_t, paired).item(), loss.item(),
                            rel_tol=1e-5)
        # matched pairs (text distribution = speech distribution) beat every other pairing, and reach ~0
        matched = model.distribution_alignment(mu_a, sigma_a, mu_a, sigma_a, paired)
        for shift in range(1, n):
            order = torch.roll(torch.arange(n), shift)
            assert matched < model.distribution_alignment(mu_a, sigma_a, mu_a[order], sigma_a[order], paired)
        assert matched < loss and matched < 0.01


def test_instance_alignment_is_eq_9_to_11_symmetric_and_minimal_for_matched_pairs():
    model = make_model()
    generator = torch.Generator().manual_seed(1)
    n = 6
    audio, text = torch.randn(n, 8, generator=generator), torch.randn(n, 8, generator=generator)
    paired = torch.ones(n, dtype=torch.bool)
    loss = model.instance_alignment(audio, text, paired)
    cosine = torch.nn.functional.normalize(audio, dim=-1) @ torch.nn.functional.normalize(text, dim=-1).t()
    assert math.isclose(loss.item(), hand_info_nce(cosine, 0.07), rel_tol=1e-4)
    assert math.isclose(loss.item(), model.instance_alignment(text, audio, paired).item(), rel_tol=1e-5)
    matched = model.instance_alignment(audio, audio, paired)
    for shift in range(1, n):
        assert matched < model.instance_alignment(audio, torch.roll(audio, shift, 0), paired)
    assert matched < loss
    # the paper's literal dot product, without normalisation
    literal = make_model(normalize_instances=False).instance_alignment(audio, text, paired)
    assert math.isclose(literal.item(), hand_info_nce(audio @ text.t(), 0.07), rel_tol=1e-4)


# ----------------------------------------------------------------------------- sigma, p, training


def test_sigma_is_positive_even_where_softplus_underflows():
    constructor = DistributionConstructor(8, 2, dropout=0.0).eval()
    x, mask = 50 * torch.randn(3, 7, 8), torch.arange(7)[None] < torch.tensor([7, 3, 1])[:, None]
    mu, sigma = constructor(x, mask)
    assert (sigma[mask] > 0).all() and (sigma[~mask] == 0).all() and (mu[~mask] == 0).all()
    with torch.no_grad():
        constructor.sigma_norm.bias.fill_(-1e3)  # softplus(-1000) == 0 in float32
    _, sigma = constructor(x, mask)
    assert (sigma[mask] > 0).all()


def test_the_input_residual_goes_to_mu_only():
    # as MAP: mu = LN(x + Linear(mu half)), sigma = softplus(LN(Linear(sigma half))): with the branch
    # linears zeroed, mu follows the input and sigma does not
    torch.manual_seed(0)
    constructor = DistributionConstructor(8, 2, dropout=0.0).eval()
    with torch.no_grad():
        for linear in (constructor.mu_linear, constructor.sigma_linear):
            linear.weight.zero_(), linear.bias.zero_()
    x, mask = torch.randn(2, 5, 8), torch.ones(2, 5, dtype=torch.bool)
    mu, sigma = constructor(x, mask)
    assert torch.allclose(mu, constructor.mu_norm(x), atol=1e-6)
    assert torch.allclose(sigma, sigma[:1, :1].expand_as(sigma), atol=1e-6)  # one value: no trace of x


def test_p_starts_at_one_over_hidden_and_stays_positive():
    model = make_model()
    assert math.isclose(model.p.item(), 1 / model.config.hidden, rel_tol=1e-6)
    assert math.isclose(make_model(p_init=0.5).p.item(), 0.5, rel_tol=1e-6)
    batch = make_batch(6, seed=2)
    optimizer = torch.optim.SGD([model.log_p, model.q], lr=50.0)
    for _ in range(10):  # huge steps on p alone, in both directions
        for sign in (1.0, -1.0):
            optimizer.zero_grad()
            (sign * model(batch).aux_losses["distribution_alignment"]).backward()
            optimizer.step()
            assert model.p.item() > 0 and math.isfinite(model.p.item())
    assert model.q.grad is not None and abs(model.q.grad.item()) < 1e-5  # q cancels in the softmax


def test_aux_losses_decrease_when_trained_on_a_fixed_batch():
    model = make_model()
    batch = make_batch(8, seed=3)
    model.eval()
    with torch.no_grad():
        before = {name: value.item() for name, value in model(batch).aux_losses.items()}
    assert set(before) == NAMES
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(30):
        model.train()
        optimizer.zero_grad()
        sum(model(batch).aux_losses.values()).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        after = {name: value.item() for name, value in model(batch).aux_losses.items()}
    for name in NAMES:
        assert after[name] < 0.8 * before[name], (name, before[name], after[name])


# ----------------------------------------------------------------------------- padding


def test_padding_never_leaks_into_pooled_distributions_or_the_losses():
    model = make_model().eval()
    batch = make_batch(4, seed=4)
    padded = pad(batch)
    with torch.no_grad():
        for modality, constructor, projection in (("audio", model.audio_constructor, model.audio_input),
                                                  ("text", model.text_constructor, model.text_input)):
            pooled = []
            for b in (batch, padded):
                x, mask = b[modality], b[f"{modality}_mask"]
                mu, sigma = constructor(projection(x, mask), mask)
                pooled.append((masked_mean(mu, mask), masked_mean(sigma, mask)))
            assert torch.allclose(pooled[0][0], pooled[1][0], atol=1e-5)
            assert torch.allclose(pooled[0][1], pooled[1][1], atol=1e-5)
            assert (pooled[0][1] > 0).all()
        reference, padded_out = model(batch), model(padded)
        assert torch.allclose(reference.logits, padded_out.logits, atol=1e-5)
        for name in NAMES:
            assert torch.allclose(reference.aux_losses[name], padded_out.aux_losses[name], atol=1e-5)
        # an item with an empty transcript is left out of both contrastive losses
        extended = {key: torch.cat([value, value[:1]]) for key, value in batch.items()}
        extended["text_mask"][-1] = False
        extended["text"][-1] = 0.0
        with_empty = model(extended)
        assert torch.isfinite(with_empty.logits).all()
        for name in NAMES:
            assert torch.allclose(reference.aux_losses[name], with_empty.aux_losses[name], atol=1e-5)


def test_batch_of_one_gives_zero_contrastive_losses_that_still_backpropagate():
    model = make_model()
    output = model(make_batch(1, seed=6))
    assert set(output.aux_losses) == NAMES
    assert all(value.item() == 0.0 for value in output.aux_losses.values())
    sum(output.aux_losses.values()).backward()
    assert model.log_p.grad is not None and model.log_p.grad.item() == 0.0


# ----------------------------------------------------------------------------- ablations, orders, config


def test_ablations_remove_the_right_terms_and_modules():
    batch = make_batch(4, seed=7)
    expected = {(): NAMES, ("no_dam",): {"instance_alignment"}, ("no_iam",): {"distribution_alignment"},
                ("no_tam",): NAMES, ("no_dam", "no_tam", "no_iam"): set()}
    for switches, names in expected.items():
        model = make_model(**{switch: True for switch in switches})
        assert set(model(batch).aux_losses) == names, switches
        parameters = {name.split(".")[0] for name, _ in model.named_parameters()}
        assert ("log_p" in parameters) == ("no_dam" not in switches)
        assert ("audio_constructor" in parameters) == ("no_dam" not in switches)
        assert ("token_alignment" in parameters) == ("no_tam" not in switches)
    # weights scale the terms
    full, weighted = make_model()(batch), make_model(distribution_alignment_weight=0.5,
                                                     instance_alignment_weight=0.0)(batch)
    assert torch.allclose(weighted.aux_losses["distribution_alignment"],
                          0.5 * full.aux_losses["distribution_alignment"])
    assert weighted.aux_losses["instance_alignment"].item() == 0.0


def run_modules_by_hand(model, batch):
    """The pipeline of `model.config.order` written out: (L_DA, L_IA, pooled classifier input)."""
    audio_mask, text_mask = batch["audio_mask"], batch["text_mask"]
    audio, text = model.audio_input(batch["audio"], audio_mask), model.text_input(batch["text"], text_mask)
    paired = torch.ones(audio.size(0), dtype=torch.bool)
    losses = {}
    for module in model.config.order.split("_"):
        if module == "dam":
            (audio, audio_sigma), (text, text_sigma) = (model.audio_constructor(audio, audio_mask),
                                                        model.text_constructor(text, text_mask))
            losses["dam"] = model.distribution_alignment(
                masked_mean(audio, audio_mask), masked_mean(audio_sigma, audio_mask),
                masked_mean(text, text_mask), masked_mean(text_sigma, text_mask), paired)
        elif module == "tam":
            for index, cross in enumerate(model.token_alignment.cross_layers):
                audio = model.token_alignment.audio_self_layers[index](audio, audio_mask)
                text = model.token_alignment.text_self_layers[index](text, text_mask)
                audio, text = cross(audio, audio_mask, text, text_mask)
        else:
            losses["iam"] = model.instance_alignment(masked_mean(audio, audio_mask), masked_mean(text, text_mask),
                                                     paired)
    return losses["dam"], losses["iam"], torch.cat([masked_mean(audio, audio_mask), masked_mean(text, text_mask)], -1)


def test_every_module_order_of_table_iii_runs_the_modules_in_that_order():
    assert len(MODULE_ORDERS) == 6 and set(tiny_config("mgcma").ablations["order"]) == set(MODULE_ORDERS) - {
        "dam_tam_iam"}
    batch = make_batch(4, seed=8)
    results = {}
    for order in MODULE_ORDERS:
        model = make_model(order=order, blocks=2).eval()
        with torch.no_grad():
            output = model(batch)
            dam, iam, pooled = run_modules_by_hand(model, batch)
        assert torch.allclose(output.aux_losses["distribution_alignment"], dam, atol=1e-6), order
        assert torch.allclose(output.aux_losses["instance_alignment"], iam, atol=1e-6), order
        assert torch.allclose(output.logits, model.classifier(pooled), atol=1e-6), order
        results[order] = (dam.item(), iam.item())
    # same weights (same seed, same modules), different order -> different losses
    assert len({round(dam, 6) for dam, _ in results.values()}) > 1
    assert len({round(iam, 6) for _, iam in results.values()}) > 1


def test_paper_defaults_and_config_checks():
    config = make_config("mgcma")
    assert (config.hidden, config.heads, config.blocks, config.batch_size, config.max_epochs) == (768, 12, 6, 4, 100)
    assert (config.lr, config.temperature, config.patience, config.order) == (1e-5, 0.07, None, "dam_tam_iam")
    assert (config.audio_feature, config.text_feature) == ("wav2vec2-base", "bert-base-uncased")
    assert (config.distribution_alignment_weight, config.instance_alignment_weight) == (1.0, 1.0)
    assert set(type(config).ablations) == {"no_dam", "no_tam", "no_iam", "order"}
    for bad in ({"order": "dam_dam_iam"}, {"hidden": 9, "heads": 3}, {"blocks": 0}, {"temperature": 0.0},
                {"sample_unit": "dialogue"}):
        with pytest.raises(MerError):
            make_config("mgcma", **bad)
    with pytest.raises(MerError):  # without the projection the inputs must already be `hidden` wide
        make_model(project_inputs=False)
    model = build_model("mgcma", 4, {"audio": 8, "text": 8}, config=apply_overrides(tiny_config("mgcma"),
                                                                                     {"project_inputs": False}))
    assert model.audio_input is None and torch.isfinite(model(make_batch_of_width(8)).logits).all()


def make_batch_of_width(width: int) -> dict:
    mask = torch.ones(3, 4, dtype=torch.bool)
    return {"audio": torch.randn(3, 4, width), "audio_mask": mask, "text": torch.randn(3, 4, width),
            "text_mask": mask, "label": torch.tensor([0, 1, 2])}
