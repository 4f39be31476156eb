"""MFDR's own parts: the window grid, the vectorised Adaptive Width Adjustment against a word-by-word
reference of Algorithm 1, the extension levels on crafted attention, GCPU / MGRU / GRU and padded words,
DFC shapes (50 -> 24 -> 8) and position dependence, the ablations and the config checks.
(tests/test_models.py runs the tiny variant through the checks every model passes.)"""

from __future__ import annotations

import math

import pytest
import torch

from mer.errors import MerError
from mer.fuse.models import apply_overrides, build_model, make_config, tiny_config
from mer.fuse.models.mfdr import (GCPUCell, GRUCell, MGRUCell, DynamicFrameConv, SlidingAdaptiveWindowAttention,
                                  WindowPool, adaptive_window_attention, run_cell, window_bands)

T, L, WIDTH, HOP = 255, 50, 10, 5




def frames_of(band_row: torch.Tensor) -> list[int]:
    return torch.nonzero(band_row).flatten().tolist()


# ----------------------------------------------------------------------------- config


def test_defaults_per_corpus_and_checks():
    config = make_config("mfdr")
    assert (config.max_audio_frames, config.max_text_len, config.window_width, config.window_hop) == (T, L, WIDTH, HOP)
    assert (config.hidden, config.dfc_width, config.dfc_hops, config.dfc_channels) == (256, 3, (2, 3), 64)
    assert (config.lr, config.batch_size, config.max_epochs, config.lr_schedule) == (5e-4, 32, 40, "step:0.5:0.1")
    assert (config.audio_feature, config.text_feature) == ("wavlm-base", "bert-base-uncased")  # section 3.2
    mosei = make_config("mfdr", corpus="mosei")
    assert (mosei.lr, mosei.batch_size, mosei.max_epochs) == (1e-3, 64, 20)
    assert set(type(config).ablations) == {"window", "no_awa", "cell", "pool", "no_context", "word_residual"}
    # Table 3's fixed-width rows: omega_X = 30, 50, full-size, each without AWA; omega_X = 10 is no_awa
    assert type(config).ablations["window"] == (30, 50, "full") and type(config).ablations["no_awa"] == (True,)
    assert config.adaptive and not any(make_config("mfdr", window=w).adaptive for w in (10, 30, 50, "full"))
    # command-line strings
    assert make_config("mfdr", window="full").attention_window is None
    assert make_config("mfdr", window="30").attention_window == 30
    assert make_config("mfdr", window=50).attention_window == 50 and config.attention_window == WIDTH
    assert make_config("mfdr", dfc_hops="[2, 2]").dfc_hops == (2, 2)
    # (T - width) / hop + 1 must be L
    for bad in ({"max_audio_frames": 250}, {"max_text_len": 49}, {"window_hop": 4}, {"window_width": 12},
                {"max_audio_frames": None}, {"window": "wide"}, {"window": 0}, {"cell": "lstm"},
                {"pool": "attention"}, {"heads": 3}, {"dfc_hops": [2, 3, 3, 3]}):
        with pytest.raises(MerError):
            make_config("mfdr", **bad)
    assert make_config("mfdr", max_audio_frames=300, max_text_len=59).max_text_len == 59  # consistent: fine
    tiny = tiny_config("mfdr")
    assert (tiny.max_audio_frames - tiny.window_width) // tiny.window_hop + 1 == tiny.max_text_len


# ----------------------------------------------------------------------------- SAWA


def test_word_i_reads_audio_window_i():
    bands = window_bands(T, L, WIDTH, HOP, WIDTH)  # (levels, L, T)
    assert bands.shape == (3, L, T)
    for i in range(L):
        assert frames_of(bands[0, i]) == list(range(5 * i, 5 * i + 10))
        assert frames_of(bands[1, i]) == list(range(max(0, 5 * i - 5), min(T, 5 * i + 15)))  # +- half a window
        assert frames_of(bands[2, i]) == list(range(max(0, 5 * i - 10), min(T, 5 * i + 20)))  # three windows
    assert frames_of(bands[0, L - 1])[-1] == T - 1  # the 50 windows tile the 255 frames exactly
    assert bands[0].any(0).all()
    # the window ablation keeps each window's centre; full-size reads everything
    wide = window_bands(T, L, WIDTH, HOP, 30)
    assert frames_of(wide[0, 20]) == list(range(90, 120)) and frames_of(wide[1, 20]) == list(range(75, 135))
    assert frames_of(wide[0, 0]) == list(range(0, 20))  # clipped at the edge
    assert window_bands(T, L, WIDTH, HOP, None).all()

    # in the model, without AWA: word i's attention lives on window i's real frames and sums to one
    torch.manual_seed(0)
    sawa = SlidingAdaptiveWindowAttention(6, 5, 16, T, L, WIDTH, HOP, WIDTH, adaptive=False)
    audio_mask = torch.arange(T)[None, :] < torch.tensor([T, 101])[:, None]
    attention, level = sawa.attention(torch.randn(2, T, 6), audio_mask, torch.randn(2, L, 5))
    assert (level == 0).all()
    allowed = bands[0][None] & audio_mask[:, None, :]
    assert (attention[~allowed] == 0).all() and (attention[allowed] > 0).all()
    sums = attention.sum(-1)
    assert torch.allclose(sums[0], torch.ones(L)) and torch.allclose(sums[1, :20], torch.ones(20))
    assert (sums[1, 21:] == 0).all()  # windows in the padding of a 101-frame clip: nothing to attend
    assert math.isclose(sums[1, 20].item(), 1.0, rel_tol=1e-6)  # window 20 = frames 100..109, one of them real


def reference_sawa(q, k, v, key_mask, width, hop, window, adaptive):
    """Algorithm 1, one word at a time, on slices of k / v: extend by half a window on each side when at
    least half a window of frames exceed the row mean, once more when a whole window's worth does."""
    batch, words, dim = q.shape
    frames = k.size(1)
    z = torch.zeros(batch, words, v.size(-1), dtype=v.dtype)
    levels = torch.zeros(batch, words, dtype=torch.long)
    for b in range(batch):
        for i in range(words):
            start = i * hop + (width - window) // 2

            def attend(level):
                low = max(0, start - level * (window // 2))
                high = min(frames, start + window + level * (window // 2))
                keys = [j for j in range(low, high) if key_mask[b, j]]
                if not keys:
                    return None, keys
                return torch.softmax(q[b, i] @ k[b, keys].T / math.sqrt(dim), dim=-1), keys

            def key_points(row):
                return int((row > row.mean()).sum())

            level = 0
            row, keys = attend(0)
            if adaptive and row is not None and key_points(row) >= 0.5 * window:
                level = 1
                row, keys = attend(1)
                if key_points(row) >= window:
                    level = 2
                    row, keys = attend(2)
            levels[b, i] = level
            if row is not None:
                z[b, i] = row @ v[b, keys]
    return z, levels


@pytest.mark.parametrize("window, adaptive", [(WIDTH, True), (30, True), (WIDTH, False)])
def test_vectorised_awa_equals_the_word_by_word_loop(window, adaptive):
    torch.manual_seed(1)
    sawa = SlidingAdaptiveWindowAttention(6, 5, 16, T, L, WIDTH, HOP, window, adaptive).double()
    with torch.no_grad():
        sawa.query.weight.mul_(0.3)  # small scores: spread attention, so every level occurs
    audio_mask = torch.arange(T)[None, :] < torch.tensor([T, 143, 7])[:, None]
    audio = torch.randn(3, T, 6, dtype=torch.float64) * audio_mask[..., None]
    text = torch.randn(3, L, 5, dtype=torch.float64)
    text_mask = torch.ones(3, L, dtype=torch.bool)
    with torch.no_grad():
        z = sawa(audio, audio_mask, text, text_mask)
        _, level = sawa.attention(audio, audio_mask, text)
        expected_z, expected_level = reference_sawa(sawa.query(text), sawa.key(audio), sawa.value(audio), audio_mask,
                                                    WIDTH, HOP, window, adaptive)
        expected_z = expected_z + sawa.query(text)  # the word residual (decision 3)
    assert torch.equal(level, expected_level)
    assert torch.allclose(z, expected_z, atol=1e-10)
    if adaptive:
        assert set(level.flatten().tolist()) == {0, 1, 2}, torch.bincount(level.flatten())


def test_extension_levels_from_crafted_attention():
    scores = torch.zeros(1, L, T)
    high = 3.0

    def lift(word, frames):
        scores[0, word, list(frames)] = high

    lift(3, range(15, 19))  # 4 of window 3's 10 frames above the mean: < 5, no extension
    lift(10, range(50, 56))  # 6 of 10: level 1; the 20-frame band then has 6 above its mean: < 10, stays
    lift(20, range(100, 106))  # 6 of 10: level 1, and the added frames are strong too:
    lift(20, range(95, 100))  # 16 of 20 above the mean: level 2
    lift(20, range(110, 115))
    lift(0, range(0, 6))  # edge: 6 of 10, level 1 clipped to frames 0..14; with frames 10..14 high,
    lift(0, range(10, 15))  # 11 of 15 >= 10: level 2 (frames 0..19)
    lift(30, range(150, 160))  # all 10 equal: nothing exceeds the mean, no extension
    lift(49, range(245, 250))  # last window, clip of 250 frames: 5 real frames ...
    scores[0, 49, 245] = 0.0  # ... 4 of them above the mean: no extension
    key_mask = torch.arange(T)[None, :] < 250
    bands = window_bands(T, L, WIDTH, HOP, WIDTH)
    attention, level = adaptive_window_attention(scores, bands, key_mask, WIDTH)
    expected = {3: 0, 10: 1, 20: 2, 0: 2, 30: 0, 49: 0}
    assert {word: int(level[0, word]) for word in expected} == expected
    support = {word: frames_of(attention[0, word]) for word in expected}
    assert support[3] == list(range(15, 25)) and support[30] == list(range(150, 160))
    assert support[10] == list(range(45, 65))  # half a window on each side
    assert support[20] == list(range(90, 120))  # three windows
    assert support[0] == list(range(0, 20))  # clipped on the left
    assert support[49] == list(range(245, 250))  # padding frames are never attended
    assert torch.allclose(attention[0, list(expected)].sum(-1), torch.ones(len(expected)))  # one softmax per band
    # the recomputed softmax covers the whole widened band
    row = scores[0, 20, 90:120].softmax(-1)
    assert torch.allclose(attention[0, 20, 90:120], row)
    # without AWA every word keeps its window
    fixed, fixed_level = adaptive_window_attention(scores, bands, key_mask, WIDTH, adaptive=False)
    assert (fixed_level == 0).all() and frames_of(fixed[0, 20]) == list(range(100, 110))


# ----------------------------------------------------------------------------- GCPU


def test_gcpu_step_follows_equations_1_to_6():
    torch.manual_seed(2)
    dim = 4
    cell = GCPUCell(dim)
    z, g, h = torch.randn(3, dim), torch.randn(3, dim), torch.randn(3, dim)
    W_zr, W_gr = cell.reset_input.weight.split(dim, dim=1)
    W_hz, W_hg, W_hu = cell.reset_hidden_terms.weight.split(dim, dim=0)
    W_zu, W_gu = cell.update_candidates.weight.split(dim, dim=1)
    r = torch.sigmoid(h @ cell.reset_hidden.weight.T + z @ W_zr.T + g @ W_gr.T + cell.reset_input.bias)
    z_c = torch.tanh(z @ cell.candidate_z.weight.T + (r * h) @ W_hz.T + cell.candidate_z.bias)
    g_c = torch.tanh(g @ cell.candidate_g.weight.T + (r * h) @ W_hg.T + cell.candidate_g.bias)
    u = torch.sigmoid(z_c @ W_zu.T + g_c @ W_gu.T + (r * h) @ W_hu.T + cell.update_candidates.bias)
    expected = r * h + u * (z_c + g_c)
    x = cell.inputs(z[:, None], g[:, None])[:, 0]
    assert torch.allclose(cell.step(x, h), expected, atol=1e-6)


def test_mgru_update_is_complementary():
    torch.manual_seed(3)
    dim = 4
    cell = MGRUCell(dim)
    z, g, h = torch.randn(2, dim), torch.randn(2, dim), torch.randn(2, dim)
    gates = cell.gates_input(torch.cat([z, g], -1)) + cell.gates_hidden(h)
    r, u = torch.sigmoid(gates).chunk(2, dim=-1)
    to_z, to_g = cell.candidates_hidden(r * h).chunk(2, dim=-1)
    candidate = torch.tanh(cell.candidate_z(z) + to_z) + torch.tanh(cell.candidate_g(g) + to_g)
    x = cell.inputs(z[:, None], g[:, None])[:, 0]
    assert torch.allclose(cell.step(x, h), (1 - u) * h + u * candidate, atol=1e-6)


@pytest.mark.parametrize("cell_class", [GCPUCell, MGRUCell, GRUCell])
def test_padded_words_do_not_change_the_state(cell_class):
    torch.manual_seed(4)
    dim = 6
    cell = cell_class(dim)
    z, g = torch.randn(2, 7, dim), torch.randn(2, 7, dim)
    mask = torch.tensor([[True, True, False, True, True, False, False], [True] * 3 + [False] * 4])
    garbage_z = torch.where(mask[..., None], z, 100 * torch.randn_like(z))
    garbage_g = torch.where(mask[..., None], g, 100 * torch.randn_like(g))
    with torch.no_grad():
        states = run_cell(cell, cell.inputs(garbage_z, garbage_g), mask, dim)
        for item in range(2):
            real = mask[item]
            alone = run_cell(cell, cell.inputs(z[item:item + 1, real], g[item:item + 1, real]),
                             torch.ones(1, int(real.sum()), dtype=torch.bool), dim)
            assert torch.allclose(states[item, real], alone[0], atol=1e-6)  # as if the padded words were absent
            assert (states[item, ~real] == 0).all()


def test_context_and_recurrence_ignore_padded_words_in_the_model():
    torch.manual_seed(5)
    config = apply_overrides(tiny_config("mfdr"), {"dropout": 0.0})
    model = build_model("mfdr", 3, {"audio": 6, "text": 5}, config=config).eval()
    text_mask = torch.arange(9)[None, :] < torch.tensor([9, 4])[:, None]
    audio_mask = torch.arange(20)[None, :] < torch.tensor([20, 11])[:, None]
    batch = {"audio": torch.randn(2, 20, 6) * audio_mask[..., None], "audio_mask": audio_mask,
             "text": torch.randn(2, 9, 5) * text_mask[..., None], "text_mask": text_mask}
    noisy = dict(batch, text=torch.where(text_mask[..., None], batch["text"], 50 * torch.randn(2, 9, 5)),
                 audio=torch.where(audio_mask[..., None], batch["audio"], 50 * torch.randn(2, 20, 6)))
    with torch.no_grad():
        hidden, mask = model.encode(batch)
        noisy_hidden, _ = model.encode(noisy)
    assert hidden.shape == (2, config.max_text_len, config.hidden)
    assert torch.allclose(hidden, noisy_hidden, atol=1e-6)
    assert (hidden[~mask] == 0).all() and (hidden[mask].abs().sum(-1) > 0).all()


# ----------------------------------------------------------------------------- DFC


def test_dfc_shapes_50_24_8_and_position_dependent_kernels():
    torch.manual_seed(6)
    dim = 8
    first, second = DynamicFrameConv(L, dim, 3, 2, 64), DynamicFrameConv(24, dim, 3, 3, 64)
    assert (first.positions, second.positions) == (24, 8)
    assert first.kernels().shape == (24, 3, dim) and second.kernels().shape == (8, 3, dim)
    x, mask = torch.randn(4, L, dim), torch.ones(4, L, dtype=torch.bool)
    out, out_mask = first(x, mask)
    out, out_mask = second(out, out_mask)
    assert out.shape == (4, 8, dim) and out_mask.shape == (4, 8)

    with torch.no_grad():
        first.kernel_map.normal_()  # a trained map (M starts at ones, as in TVConv)
    phi = first.kernels()
    assert not torch.allclose(phi[0], phi[1])  # a private kernel per window position ...
    assert not torch.allclose(phi[:, :, 0], phi[:, :, 1])  # ... and per channel
    out, _ = first(x, mask)
    manual = torch.stack([(phi[i] * x[:, 2 * i:2 * i + 3]).sum(1) for i in range(24)], dim=1)
    assert torch.allclose(out, manual, atol=1e-5)  # out_i[d] = sum_k Phi[i, k, d] H[2i + k, d]
    assert torch.allclose(first.kernels(), phi)  # the kernels do not depend on the input
    # translation variant: the same pattern one hop later is not weighted the same way
    pattern = torch.zeros(1, L, dim)
    pattern[0, 10:13] = 1.0
    shifted = torch.roll(pattern, 2, dims=1)
    assert not torch.allclose(first(pattern, mask[:1])[0][0, 5], first(shifted, mask[:1])[0][0, 6])
    # each position reads its own window only
    x.requires_grad_(True)
    first(x, mask)[0][:, 7].sum().backward()
    assert frames_of(x.grad.abs().sum((0, 2)) > 0) == [14, 15, 16]


def test_window_pools_mask_padding():
    x = torch.arange(10.0)[None, :, None].repeat(1, 1, 2)
    mask = torch.arange(10)[None, :] < 6
    out, out_mask = WindowPool("max", 3, 2)(x, mask)  # windows 0-2, 2-4, 4-6, 6-8
    assert out[0, :, 0].tolist() == [2.0, 4.0, 5.0, 0.0] and out_mask[0].tolist() == [True, True, True, False]
    out, _ = WindowPool("avg", 3, 2)(x, mask)
    assert out[0, :, 0].tolist() == [1.0, 3.0, 4.5, 0.0]


# ----------------------------------------------------------------------------- the model and its ablations


def test_full_size_model_and_regression():
    torch.manual_seed(7)
    model = build_model("mfdr", 1, {"audio": 24, "text": 16}, heads=4).eval()  # the paper's T, L, D, f, hops
    assert [pool.positions for pool in model.pools] == [24, 8]
    assert model.classifier.net[-1].in_features == 8 * 256
    audio_mask = torch.arange(300)[None, :] < torch.tensor([300, 90])[:, None]  # longer than T: cut
    text_mask = torch.arange(12)[None, :] < torch.tensor([12, 3])[:, None]  # shorter than L: padded
    batch = {"audio": torch.randn(2, 300, 24), "audio_mask": audio_mask, "text": torch.randn(2, 12, 16),
             "text_mask": text_mask}
    with torch.no_grad():
        logits = model(batch).logits
        assert logits.shape == (2, 1) and torch.isfinite(logits).all()
        cut = dict(batch, audio=batch["audio"][:, :T], audio_mask=audio_mask[:, :T])
        assert torch.allclose(model(cut).logits, logits, atol=1e-6)  # frames past T are dropped


@pytest.mark.parametrize("overrides", [{}, {"no_awa": True}, {"window": "full"}, {"window": 30}, {"cell": "gru"},
                                       {"cell": "mgru"}, {"no_context": True}, {"pool": "max"}, {"pool": "avg"},
                                       {"pool": "linear"}])
def test_ablations_change_what_they_say(overrides):
    config = apply_overrides(tiny_config("mfdr"), overrides)
    torch.manual_seed(8)
    model = build_model("mfdr", 3, {"audio": 6, "text": 5}, config=config).eval()
    assert model.sawa.adaptive == (not overrides.get("no_awa", False) and "window" not in overrides)
    widest_band = model.sawa.bands[0].sum(-1).max().item()
    assert widest_band == {"grid": config.window_width, "30": 30, "full": config.max_audio_frames}[config.window]
    assert (model.context is None) == (config.cell == "gru" or config.no_context)
    assert type(model.cell) is {"gcpu": GCPUCell, "gru": GRUCell, "mgru": MGRUCell}[config.cell]
    pools = {"dfc": DynamicFrameConv, "max": WindowPool, "avg": WindowPool}
    assert [type(pool) for pool in model.pools] == ([pools[config.pool]] * 2 if config.pool in pools else [])
    positions = config.max_text_len if config.pool == "linear" else 2  # tiny: 15 -> 7 -> 2
    assert model.classifier.net[-1].in_features == positions * config.hidden
    audio_mask = torch.arange(32)[None, :] < torch.tensor([32, 9])[:, None]
    text_mask = torch.arange(15)[None, :] < torch.tensor([15, 4])[:, None]
    batch = {"audio": torch.randn(2, 32, 6), "audio_mask": audio_mask, "text": torch.randn(2, 15, 5),
             "text_mask": text_mask}
    with torch.no_grad():
        assert torch.isfinite(model(batch).logits).all()
        _, level = model.sawa.attention(batch["audio"], audio_mask, batch["text"])
    if config.no_awa:
        assert (level == 0).all()


def test_every_frame_reaches_the_classifier_in_a_short_sentence():
    # the 50 windows tile all 255 frames whatever the sentence length: a 12-word utterance's words read
    # windows 0-11 (frames < 75 with AWA), and the padded word slots 12-49 still carry windows 12-49
    torch.manual_seed(9)
    model = build_model("mfdr", 4, {"audio": 6, "text": 5}, heads=4).eval()
    text_mask = torch.arange(L)[None, :] < 12
    batch = {"audio": torch.randn(1, T, 6), "audio_mask": torch.ones(1, T, dtype=torch.bool),
             "text": torch.randn(1, L, 5) * text_mask[..., None], "text_mask": text_mask}
    noisy_audio = batch["audio"].clone()
    noisy_audio[:, 80:] = 10 * torch.randn(1, T - 80, 6)
    with torch.no_grad():
        logits = model(batch).logits
        noisy_logits = model(dict(batch, audio=noisy_audio)).logits
        _, slots = model.encode(batch)
    assert (logits - noisy_logits).abs().max() > 1e-4
    assert slots.all()  # every slot holds a word or real audio
    # a slot with neither (its window in the padding of a short clip, no word) stays empty
    short = dict(batch, audio_mask=torch.arange(T)[None, :] < 100)
    with torch.no_grad():
        hidden, slots = model.encode(short)
    assert slots[0].tolist() == [True] * 20 + [False] * 30  # window 19 = frames 95..104 holds real ones
    assert (hidden[~slots] == 0).all()


def test_no_context_feeds_z_as_g():
    # section 3.4: "... acquiring g_t without multi-head attention": g_t = z_t, the cell unchanged
    torch.manual_seed(10)
    config = apply_overrides(tiny_config("mfdr"), {"dropout": 0.0, "no_context": True})
    model = build_model("mfdr", 3, {"audio": 6, "text": 5}, config=config).eval()
    assert model.context is None and type(model.cell) is GCPUCell
    text_mask = torch.arange(15)[None, :] < 6
    batch = {"audio": torch.randn(1, 32, 6), "audio_mask": torch.ones(1, 32, dtype=torch.bool),
             "text": torch.randn(1, 15, 5) * text_mask[..., None], "text_mask": text_mask}
    with torch.no_grad():
        hidden, slots = model.encode(batch)
        z = model.sawa(batch["audio"], batch["audio_mask"], batch["text"], slots)
        expected = run_cell(model.cell, model.cell.inputs(z, z), slots, config.hidden)
    assert torch.allclose(hidden, expected, atol=1e-6)
