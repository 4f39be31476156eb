"""MFDR: Multiple-stage Fusion and Dynamically Refined network (Zhao, Gao, Wang, Schuller; INTERSPEECH 2024).
papers/mfdr-multiple-stage-fusion-dynamically-refined.txt.

    audio (WavLM frames, padded/cut to T = 255) -> k^x, v^x      text (BERT words, padded/cut to L = 50) -> q^y
    SAWA: word i attends to audio window i (width 10, hop 5: (255 - 10) / 5 + 1 = 50 windows = L); Adaptive
          Width Adjustment widens the window by half a window, then a whole one, on each side when the
          word's attention is spread over the window                                            -> z (L x D)
    GCPU: g = multi-head self-attention over z; a two-input gated recurrent cell over (z_t, g_t) -> H (L x D)
    DFC:  two position-specific depthwise window poolings, f = 3, hops 2 and 3: 50 -> 24 -> 8 positions
    flatten (8 x D) -> FC -> C

Defaults (paper, section 3.2): T = 255, L = 50, audio window 10 / hop 5 (text window 1), D = 256, DFC
f = 3, hops 2 and 3, 64 middle channels; Adam, lr 5e-4, batch 32, 40 epochs (IEMOCAP) / lr 1e-3,
batch 64, 20 epochs (CMU-MOSEI), learning rate x0.1 from half of the epochs on ("step:0.5:0.1").

Where the paper is vague, this implementation decides:
  1. Fixed lengths: forward cuts and zero-pads audio to exactly T frames and text to exactly L words
     (masks follow), whatever the batch's padding; T and L are max_audio_frames / max_text_len.
  2. Window grid: audio window i covers frames [i * hop, i * hop + window_width) and word i reads it
     ("text window 1"); (T - window_width) / window_hop + 1 == L is checked. Positions are absolute, as
     in the paper, and the L slots cover all T frames whatever the sentence length: slot i is real when
     word i is or when window i holds a real frame. A padded word slot still queries its window (with the
     query of a zero word, W_q's bias) and carries it through SAWA, GCPU and DFC; otherwise the audio
     beyond about hop * words + width frames would never reach the classifier. A word whose window lies
     in the padding of a short clip attends to nothing (z_i = q_i, the word residual); a slot with
     neither is empty (masked).
  3. SAWA attention: one head, as Algorithm 1 writes it: q = W_q words, k = W_k frames, v = W_v frames
     (linear layers with bias, all D wide), softmax(q k^T / sqrt(D)) within the band, z_i = sum_j a_ij v_j
     ("diag_att is used to aggregate the audio Value matrix v^x to generate z"), plus the word's own query
     vector: z_i = q_i + sum_j a_ij v_j. The paper calls z the "combining representation" of the
     "acoustic-word combination" stage, yet read literally it holds audio values only, and the words'
     content would reach the classifier through attention weights alone (on the demo corpus, where the
     text carries half of the emotion, seeds 0-2: literal 0.537 mean test accuracy, below both unimodal
     baselines; with the residual 0.721; docs/models.md). The residual keeps the
     word in z, as every cross-attention layer of the papers MFDR compares with does; `word_residual=false`
     gives the literal reading. No output projection, no dropout. Padding frames are never attended.
  4. AWA (Algorithm 1): threshold = mean of the word's attention over the real frames of its current band;
     count = frames strictly above it ("exceed"). Level 1 when count >= 0.5 * width: the band grows by
     width // 2 frames on each side (for width 10, hop 5: exactly the halves of windows i-1 and i+1 that
     Algorithm 1 slices from k^x, no new projection); level 2 when the level-1 count >= width: by
     2 * (width // 2) on each side (windows i-2, i+2), three times the original range. "Recompute" is ONE
     softmax over the whole widened band, so z stays a convex combination of values; Algorithm 1 literally
     softmaxes the added keys alone (add_att) and writes them beside the unchanged in-window row (a row
     would then sum to 2 or 3). Bands clip at the clip's edges and at its real frames; the thresholds stay
     0.5 * width and width. The level is a hard choice: no gradient flows through the counts.
     Vectorised: the L x T score matrix (the paper's diag_att) is masked by three precomputed band masks
     (L x T, one per level); every word's level picks its row. No loop over words.
  5. `window` ablation (Table 3's fixed-width rows omega_X = 30 / 50 / full-size): those rows are SliWa
     WITHOUT AWA (section 3.4: "at a fixed omega_X, too small will lead to information truncation ...",
     Fig. 3 a-d against AWA's e-g), so an integer or "full" window never widens: `window=30` alone is the
     omega_X = 30 row, and AWA runs on the grid window only. A width other than the grid's would give
     fewer or more windows than words, so the wider window keeps its grid window's centre (word i still
     reads around window i) and clips at the edges; "full": every word attends to every real frame. The
     "omega_X = 10" row is `no_awa=true` (the same as `window=10`).
  6. GCPU (eq. 1-6): D x D matrices, one bias per equation, h_0 = 0, left to right. g = multi-head
     self-attention (blocks.MultiHeadAttention: 8 heads, the paper names no count; output projection;
     dropout on the weights) over the masked z, no residual or feed-forward, computed once before the
     recurrence. An empty slot (decision 2) neither updates the state (h_t = h_{t-1}), nor is attended by
     g, nor appears in H (zeros).
  7. `cell=gru`: Table 3's "GRU": a GRU (nn.GRUCell) "directly processes z_t", no multi-head attention.
     `cell=mgru`: Fig. 4(a) is not in the text; from section 3.4 ("the complementary updated MGRU") and
     section 2.2's first description of u_t ("combining the knowledge of h_{t-1}, z_t and g_t"): the same
     reset gate and two candidates (h~ = z~ + g~), but a GRU update gate u = sigmoid(W [z; g] + U h_{t-1})
     and the complementary update h_t = (1 - u) h_{t-1} + u h~.
  8. `no_context` (Table 3 "w/o Context"), from section 3.4: "We further explore the importance for
     contextual modeling by using GRU to directly process z_t [the GRU row] and acquiring g_t without
     multi-head attention [this row]": g_t = z_t, the multi-head attention replaced by the identity; the
     GCPU cell is unchanged and still reads two streams, neither holding context beyond word t.
  9. DFC (after TVConv): per layer a map M (same size as the layer's input, n x D, initialised to ones as
     in TVConv) -> W = Conv1d(D -> 64, kernel f, stride hop, no bias; so kernel i is generated from M's
     window i) -> LayerNorm over the whole (64 x N) map (TVConv's) -> ReLU -> Conv1d(64 -> f * D, kernel 1)
     -> Phi (N x f x D); out_i[d] = sum_k Phi[i, k, d] H[i * hop + k, d]; no bias, nothing between the two
     layers. The paper writes Phi in N x f x f x D (TVConv's 2-D k x k kernel); on a sequence with one
     kernel per channel it is N x f x D. Kernels depend on the position, not the input. Empty slots are
     zeros in H and add nothing.
 10. `pool` ablation: max / avg = masked max / mean over the SAME windows (f = 3, hops 2, 3 -> 8
     positions), same classifier; linear ("w/o DFC: directly adopting the Linear layer") = no sequence
     compression, the (linear) classifier reads the flattened L x D.
 11. Classifier: dropout, then one linear layer 8 * D -> C (Fig. 1 is not in the text).
 12. Dropout 0.1 (the paper names none) on the context-attention weights and before the classifier.
 13. Training: no weight decay, no early stopping: the paper's epochs, the best validation checkpoint.
     Regression (CMU-MOSEI, num_classes == 1): one output, the project's L1 loss.

Ablations: window = grid | 30 | 50 | full (fixed widths), no_awa, cell = gcpu | gru | mgru,
pool = dfc | max | avg | linear, no_context.
Paper: IEMOCAP 4-class 5-fold WA 75.7 / UA 77.0, 10-fold WA 78.4 / UA 79.2;
CMU-MOSEI Acc7 53.7, Acc2 85.2, F1 84.1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Optional

import torch
from torch import Tensor, nn

from mer.errors import MerError
from mer.fuse.blocks import ClassifierHead, MultiHeadAttention, masked_max, masked_mean, masked_softmax
from mer.fuse.models.base import FusionConfig, FusionOutput, register_model

CELLS = ("gcpu", "gru", "mgru")
POOLS = ("dfc", "max", "avg", "linear")
AWA_LEVELS = 3  # the window alone, +- half a window, +- a whole window


def _fixed_width_rows(rows: dict) -> dict:
    """Table 3's fixed-width rows, reached by `--ablation window=W` alone (a fixed window never widens)
    and with the redundant `--ablation no_awa` beside it."""
    return {key: row for width, row in rows.items() for key in (f"window={width}", f"no_awa+window={width}")}


@dataclass
class MFDRConfig(FusionConfig):
    audio_feature: str = "wavlm-base"  # the paper: WavLM frames, 768-d (section 3.2)
    text_feature: str = "bert-base-uncased"  # word level
    demo_audio_feature: str = "mfcc40"
    demo_text_feature: str = "minilm-l6"
    audio_granularity: str = "frame"
    text_granularity: str = "word"
    max_audio_frames: Optional[int] = 255  # T: the model pads / cuts to exactly this
    max_text_len: Optional[int] = 50  # L
    window_width: int = 10  # omega_X: the audio window grid; (T - width) / hop + 1 == L
    window_hop: int = 5  # h_X
    window: str = "grid"  # "grid" (window_width, with AWA), or Table 3's fixed widths: an integer, "full"
    no_awa: bool = False  # fixed grid windows (SliWa); an integer or "full" `window` is fixed anyway
    word_residual: bool = True  # z_i = q_i + sum_j a_ij v_j (decision 3); False: the literal audio-only z
    hidden: int = 256  # D
    heads: int = 8  # context multi-head attention
    no_context: bool = False  # g = z: no multi-head attention (decision 8)
    cell: str = "gcpu"  # "gcpu" | "gru" | "mgru"
    pool: str = "dfc"  # "dfc" | "max" | "avg" | "linear"
    dfc_width: int = 3  # f
    dfc_hops: tuple = (2, 3)  # one DFC layer per hop
    dfc_channels: int = 64
    dropout: float = 0.1
    lr: float = 5e-4
    batch_size: int = 32
    max_epochs: int = 40
    lr_schedule: str = "step:0.5:0.1"
    per_corpus: dict = field(default_factory=lambda: {
        # CPU-sized settings for the synthetic demo corpus: T covers its longest clip (3.9 s),
        # windows of 20 frames with half-window hops as the paper (L = (390 - 20) / 10 + 1 = 38)
        "demo": {"batch_size": 32, "max_epochs": 30, "max_audio_frames": 390, "max_text_len": 38,
                 "window_width": 20, "window_hop": 10},
        "iemocap": {"lr": 5e-4, "batch_size": 32, "max_epochs": 40},
        "mosei": {"lr": 1e-3, "batch_size": 64, "max_epochs": 20}})

    ablations: ClassVar[dict] = {"window": (30, 50, "full"), "no_awa": (True,), "cell": ("gru", "mgru"),
                                 "pool": ("max", "avg", "linear"), "no_context": (True,),
                                 "word_residual": (False,)}
    # Tables 1-2; Table 3's ablations on IEMOCAP 10-fold (WA, UA) and MOSEI (Acc2, F1). Its fixed-width rows
    # are SliWa without AWA (decision 5); a window over every frame cannot grow, so AWA changes nothing there.
    paper_results: ClassVar[dict] = {
        "iemocap-loso": {"full": {"accuracy": 0.757, "ua": 0.770}},
        "iemocap-10fold": {
            "full": {"accuracy": 0.784, "ua": 0.792}, "no_awa": {"accuracy": 0.762, "ua": 0.773},
            **_fixed_width_rows({30: {"accuracy": 0.773, "ua": 0.783}, 50: {"accuracy": 0.768, "ua": 0.779},
                                 "full": {"accuracy": 0.775, "ua": 0.784}}),
            "no_context": {"accuracy": 0.766, "ua": 0.776}, "cell=gru": {"accuracy": 0.754, "ua": 0.761},
            "cell=mgru": {"accuracy": 0.767, "ua": 0.772}, "pool=max": {"accuracy": 0.749, "ua": 0.757},
            "pool=avg": {"accuracy": 0.762, "ua": 0.766}, "pool=linear": {"accuracy": 0.773, "ua": 0.780}},
        "mosei": {
            "full": {"acc7": 0.537, "acc2": 0.852, "f1": 0.841}, "no_awa": {"acc2": 0.839, "f1": 0.832},
            **_fixed_width_rows({30: {"acc2": 0.845, "f1": 0.838}, 50: {"acc2": 0.837, "f1": 0.832},
                                 "full": {"acc2": 0.841, "f1": 0.836}}),
            "no_context": {"acc2": 0.843, "f1": 0.837}, "cell=gru": {"acc2": 0.826, "f1": 0.811},
            "cell=mgru": {"acc2": 0.834, "f1": 0.825}, "pool=max": {"acc2": 0.825, "f1": 0.817},
            "pool=avg": {"acc2": 0.829, "f1": 0.820}, "pool=linear": {"acc2": 0.837, "f1": 0.833}}}

    def __post_init__(self):
        super().__post_init__()
        frames, words = self.max_audio_frames, self.max_text_len
        if not (isinstance(frames, int) and isinstance(words, int) and frames >= 1 and words >= 1):
            raise MerError(f"mfdr: max_audio_frames and max_text_len must be positive integers (the model pads "
                           f"to exactly T and L), got {frames!r} and {words!r}")
        if self.window_width < 1 or self.window_hop < 1 or frames < self.window_width:
            raise MerError(f"mfdr: need 1 <= window_width <= max_audio_frames and window_hop >= 1, got "
                           f"window_width={self.window_width}, window_hop={self.window_hop}, T={frames}")
        span = frames - self.window_width
        if span % self.window_hop or span // self.window_hop + 1 != words:
            fitting = (words - 1) * self.window_hop + self.window_width
            raise MerError(f"mfdr: (max_audio_frames - window_width) / window_hop + 1 must equal max_text_len (one "
                           f"audio window per word): ({frames} - {self.window_width}) / {self.window_hop} + 1 != "
                           f"{words}; e.g. max_audio_frames = (L - 1) * hop + width = {fitting}")
        self.window = str(self.window).strip().lower()
        if self.window not in ("grid", "full") and not (self.window.isdigit() and int(self.window) >= 1):
            raise MerError(f"mfdr: window must be 'grid', 'full' or a positive integer, got {self.window!r}")
        if self.cell not in CELLS:
            raise MerError(f"mfdr: cell must be one of {CELLS}, got {self.cell!r}")
        if self.pool not in POOLS:
            raise MerError(f"mfdr: pool must be one of {POOLS}, got {self.pool!r}")
        hops = self.dfc_hops.split(",") if isinstance(self.dfc_hops, str) else self.dfc_hops
        try:
            self.dfc_hops = tuple(int(hop) for hop in hops)
        except (TypeError, ValueError):
            raise MerError(f"mfdr: dfc_hops must be a list of integers, got {self.dfc_hops!r}") from None
        if self.dfc_width < 1 or not self.dfc_hops or min(self.dfc_hops) < 1:
            raise MerError(f"mfdr: need dfc_width >= 1 and at least one dfc hop >= 1, got {self.dfc_width}, "
                           f"{self.dfc_hops}")
        if self.pool != "linear" and pooled_lengths(words, self.dfc_width, self.dfc_hops)[-1] < 1:
            raise MerError(f"mfdr: {len(self.dfc_hops)} DFC layers of width {self.dfc_width}, hops {self.dfc_hops} "
                           f"leave no position of L = {words} words")
        if self.uses_context and self.hidden % self.heads:
            raise MerError(f"mfdr: hidden {self.hidden} must be divisible by heads {self.heads}")

    @property
    def attention_window(self) -> Optional[int]:
        """Frames a word reads before AWA; None = every frame (full-size)."""
        if self.window == "full":
            return None
        return self.window_width if self.window == "grid" else int(self.window)

    @property
    def adaptive(self) -> bool:
        """AWA on: the grid window only (decision 5)."""
        return self.window == "grid" and not self.no_awa

    @property
    def uses_context(self) -> bool:
        return self.cell != "gru" and not self.no_context

    @classmethod
    def tiny(cls) -> "MFDRConfig":
        # T = (15 - 1) * 2 + 4 = 32 frames, L = 15 words; DFC 15 -> 7 -> 2 positions
        return cls(max_audio_frames=32, max_text_len=15, window_width=4, window_hop=2, hidden=8, heads=2,
                   dfc_channels=4, batch_size=4, max_epochs=2)


def pooled_lengths(length: int, width: int, hops) -> list[int]:
    """Positions after each window pooling: floor((n - width) / hop) + 1 (eq. 7); [L, N_1, N_2, ...]."""
    lengths = [length]
    for hop in hops:
        lengths.append((lengths[-1] - width) // hop + 1 if lengths[-1] >= width else 0)
    return lengths


def fit_length(x: Tensor, mask: Tensor, length: int) -> tuple[Tensor, Tensor]:
    """Cut or zero-pad (batch, time, dim) and its mask to exactly `length` steps; padded steps are zero."""
    x, mask = x[:, :length], mask[:, :length]
    missing = length - x.size(1)
    if missing:
        x = torch.cat([x, x.new_zeros(x.size(0), missing, x.size(2))], dim=1)
        mask = torch.cat([mask, mask.new_zeros(mask.size(0), missing)], dim=1)
    return torch.where(mask[..., None], x, torch.zeros((), dtype=x.dtype, device=x.device)), mask


# ----------------------------------------------------------------------------- SAWA


def window_bands(frames: int, words: int, width: int, hop: int, window: Optional[int]) -> Tensor:
    """(AWA_LEVELS, words, frames) bool: the frames word i may read at each AWA level.

    Level 0: `window` frames centred on grid window i = [i * hop, i * hop + width) (the grid window itself
    when window == width); level l: widened by l * (window // 2) frames on each side; clipped to [0, frames).
    window None: every frame at every level (full-size)."""
    if window is None:
        return torch.ones(AWA_LEVELS, words, frames, dtype=torch.bool)
    start = torch.arange(words)[:, None] * hop + (width - window) // 2  # (words, 1)
    frame = torch.arange(frames)[None, :]  # (1, frames)
    extension = window // 2
    return torch.stack([(frame >= start - level * extension) & (frame < start + window + level * extension)
                        for level in range(AWA_LEVELS)])


def adaptive_window_attention(scores: Tensor, bands: Tensor, key_mask: Tensor, width: int,
                              adaptive: bool = True) -> tuple[Tensor, Tensor]:
    """Algorithm 1, vectorised over the batch and the words.

    scores (batch, words, frames) = q k^T / sqrt(D); bands (levels, words, frames) from window_bands;
    key_mask (batch, frames), True = real frame; width = the window's frames (omega_X).
    Returns the attention (batch, words, frames), each row a softmax over the real frames of the word's
    chosen band (zeros where it holds none), and the chosen level (batch, words) in {0, 1, 2}."""
    levels = bands.size(0) if adaptive else 1
    allowed = bands[:levels, None] & key_mask[None, :, None, :]  # (levels, batch, words, frames)
    attention = masked_softmax(scores[None].expand(levels, *scores.shape), allowed)
    level = torch.zeros(scores.shape[:2], dtype=torch.long, device=scores.device)  # (batch, words)
    if not adaptive:
        return attention[0], level
    threshold = attention.sum(-1) / allowed.sum(-1).clamp(min=1)  # mean over the band's real frames
    count = ((attention > threshold[..., None]) & allowed).sum(-1)  # (levels, batch, words): "key points"
    extend_once = count[0] >= 0.5 * width
    extend_twice = extend_once & (count[1] >= width)
    level = extend_once.long() + extend_twice.long()
    chosen = attention.gather(0, level[None, :, :, None].expand(1, *scores.shape))[0]
    return chosen, level


class SlidingAdaptiveWindowAttention(nn.Module):
    """SAWA: word i attends to audio window i, widened by AWA; z_i = sum_j a_ij v_j (decisions 2-5)."""

    def __init__(self, audio_dim: int, text_dim: int, dim: int, frames: int, words: int, width: int, hop: int,
                 window: Optional[int], adaptive: bool, word_residual: bool = True):
        super().__init__()
        self.dim, self.adaptive, self.word_residual = dim, adaptive, word_residual
        self.width = frames if window is None else window
        self.query = nn.Linear(text_dim, dim)
        self.key = nn.Linear(audio_dim, dim)
        self.value = nn.Linear(audio_dim, dim)
        self.register_buffer("bands", window_bands(frames, words, width, hop, window), persistent=False)

    def attention(self, audio: Tensor, audio_mask: Tensor, text: Tensor) -> tuple[Tensor, Tensor]:
        """(attention (batch, L, T), level (batch, L)) for audio (batch, T, A) and text (batch, L, X)."""
        scores = self.query(text) @ self.key(audio).transpose(1, 2) / math.sqrt(self.dim)  # (batch, L, T)
        return adaptive_window_attention(scores, self.bands, audio_mask, self.width, self.adaptive)

    def slot_mask(self, audio_mask: Tensor, text_mask: Tensor) -> Tensor:
        """(batch, L) bool: slot i holds word i or a real frame of its level-0 band. A padded word slot
        still queries its audio window (with the query of a zero word, W_q's bias), so the L windows
        carry every frame of the clip whatever the sentence length."""
        window_has_audio = (self.bands[0][None] & audio_mask[:, None, :]).any(-1)  # (batch, L)
        return text_mask | window_has_audio

    def forward(self, audio: Tensor, audio_mask: Tensor, text: Tensor, slot_mask: Tensor) -> Tensor:
        """z (batch, L, dim), zeros at empty slots; text is zero at padded words."""
        attention, _ = self.attention(audio, audio_mask, text)
        z = attention @ self.value(audio)  # (batch, L, dim)
        if self.word_residual:
            z = z + self.query(text)
        return z * slot_mask[..., None]


# ----------------------------------------------------------------------------- GCPU and its variants


class GCPUCell(nn.Module):
    """Gated Context Perception Unit, eq. 1-6. inputs() computes every term that does not involve h
    for all words at once; step() advances one word."""

    def __init__(self, dim: int):
        super().__init__()
        self.reset_input = nn.Linear(2 * dim, dim)  # W_zr z_t + W_gr g_t + b_r            (eq. 1)
        self.reset_hidden = nn.Linear(dim, dim, bias=False)  # W_hr h_{t-1}
        self.candidate_z = nn.Linear(dim, dim)  # W_zz~ z_t + b_z~                           (eq. 2)
        self.candidate_g = nn.Linear(dim, dim)  # W_gg~ g_t + b_g~                           (eq. 3)
        self.reset_hidden_terms = nn.Linear(dim, 3 * dim, bias=False)  # W_hz~, W_hg~, W_hu on r_t * h_{t-1}
        self.update_candidates = nn.Linear(2 * dim, dim)  # W_z~u z~_t + W_g~u g~_t + b_u      (eq. 5)

    def inputs(self, z: Tensor, g: Tensor) -> Tensor:  # (batch, L, dim) each -> (batch, L, 3 * dim)
        return torch.cat([self.reset_input(torch.cat([z, g], -1)), self.candidate_z(z), self.candidate_g(g)], -1)

    def step(self, x: Tensor, h: Tensor) -> Tensor:  # x (batch, 3 * dim), h (batch, dim)
        reset_x, candidate_z_x, candidate_g_x = x.chunk(3, dim=-1)
        reset = torch.sigmoid(reset_x + self.reset_hidden(h))  # (1)
        kept = reset * h  # r_t * h_{t-1}
        to_z, to_g, to_update = self.reset_hidden_terms(kept).chunk(3, dim=-1)
        candidate_z = torch.tanh(candidate_z_x + to_z)  # (2)
        candidate_g = torch.tanh(candidate_g_x + to_g)  # (3)
        candidate = candidate_z + candidate_g  # (4)
        update = torch.sigmoid(self.update_candidates(torch.cat([candidate_z, candidate_g], -1)) + to_update)  # (5)
        return kept + update * candidate  # (6)


class MGRUCell(nn.Module):
    """Table 3's MGRU (decision 7): GCPU's reset gate and two candidates, a GRU update gate from
    (h_{t-1}, z_t, g_t) and the complementary update h_t = (1 - u) h_{t-1} + u h~."""

    def __init__(self, dim: int):
        super().__init__()
        self.gates_input = nn.Linear(2 * dim, 2 * dim)  # reset and update gates from [z_t; g_t]
        self.gates_hidden = nn.Linear(dim, 2 * dim, bias=False)  # ... and from h_{t-1}
        self.candidate_z = nn.Linear(dim, dim)
        self.candidate_g = nn.Linear(dim, dim)
        self.candidates_hidden = nn.Linear(dim, 2 * dim, bias=False)  # on r_t * h_{t-1}

    def inputs(self, z: Tensor, g: Tensor) -> Tensor:  # -> (batch, L, 4 * dim)
        return torch.cat([self.gates_input(torch.cat([z, g], -1)), self.candidate_z(z), self.candidate_g(g)], -1)

    def step(self, x: Tensor, h: Tensor) -> Tensor:
        reset_x, update_x, candidate_z_x, candidate_g_x = x.chunk(4, dim=-1)
        reset_h, update_h = self.gates_hidden(h).chunk(2, dim=-1)
        reset, update = torch.sigmoid(reset_x + reset_h), torch.sigmoid(update_x + update_h)
        to_z, to_g = self.candidates_hidden(reset * h).chunk(2, dim=-1)
        candidate = torch.tanh(candidate_z_x + to_z) + torch.tanh(candidate_g_x + to_g)
        return (1 - update) * h + update * candidate


class GRUCell(nn.Module):
    """Table 3's GRU: a plain GRU over z; the context g is not used."""

    def __init__(self, dim: int):
        super().__init__()
        self.gru = nn.GRUCell(dim, dim)

    def inputs(self, z: Tensor, g: Tensor) -> Tensor:
        return z

    def step(self, x: Tensor, h: Tensor) -> Tensor:
        return self.gru(x, h)


CELL_CLASSES = {"gcpu": GCPUCell, "gru": GRUCell, "mgru": MGRUCell}


def run_cell(cell: nn.Module, inputs: Tensor, mask: Tensor, dim: int) -> Tensor:
    """h_0 = 0, left to right over (batch, L, ...) inputs; an empty slot (mask False) keeps the state
    unchanged. Returns H (batch, L, dim), zeros at empty slots."""
    h = inputs.new_zeros(inputs.size(0), dim)
    states = []
    for t in range(inputs.size(1)):
        h = torch.where(mask[:, t, None], cell.step(inputs[:, t], h), h)
        states.append(h)
    return torch.stack(states, dim=1) * mask[..., None]


# ----------------------------------------------------------------------------- DFC and the pooling ablations


class DynamicFrameConv(nn.Module):
    """One DFC layer (decision 9): windows of `width` positions, `hop` apart, of a (batch, length, dim)
    sequence, each aggregated per channel by its own kernel Phi[i] (width x dim), generated from the map M."""

    def __init__(self, length: int, dim: int, width: int, hop: int, channels: int):
        super().__init__()
        self.width, self.hop = width, hop
        self.positions = pooled_lengths(length, width, [hop])[-1]
        self.kernel_map = nn.Parameter(torch.ones(length, dim))  # M, as H's size; TVConv initialises to ones
        self.kernel_block = nn.Sequential(  # W
            nn.Conv1d(dim, channels, width, stride=hop, bias=False),  # -> (channels, positions)
            nn.LayerNorm([channels, self.positions]),
            nn.ReLU(),
            nn.Conv1d(channels, width * dim, 1))

    def kernels(self) -> Tensor:
        """Phi (positions, width, dim): depends on the position only, never on the input."""
        generated = self.kernel_block(self.kernel_map.t()[None])[0]  # (width * dim, positions)
        return generated.view(self.width, -1, self.positions).permute(2, 0, 1)

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        windows = x.unfold(1, self.width, self.hop)  # (batch, positions, dim, width)
        out = torch.einsum("bndk,nkd->bnd", windows, self.kernels())  # out_i[d] = sum_k Phi[i,k,d] x[start_i+k, d]
        return out, window_mask(mask, self.width, self.hop)


class WindowPool(nn.Module):
    """The `pool=max|avg` ablations: masked max / mean over the DFC's windows (no parameters)."""

    def __init__(self, mode: str, width: int, hop: int):
        super().__init__()
        self.mode, self.width, self.hop = mode, width, hop

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        batch, _, dim = x.shape
        windows = x.unfold(1, self.width, self.hop).transpose(2, 3)  # (batch, positions, width, dim)
        positions = windows.size(1)
        windows_mask = mask.unfold(1, self.width, self.hop)  # (batch, positions, width)
        pool = masked_max if self.mode == "max" else masked_mean
        pooled = pool(windows.reshape(batch * positions, self.width, dim), windows_mask.reshape(-1, self.width))
        return pooled.view(batch, positions, dim), windows_mask.any(-1)


def window_mask(mask: Tensor, width: int, hop: int) -> Tensor:
    """A pooled position is real iff its window holds a real position."""
    return mask.unfold(1, width, hop).any(-1)


# ----------------------------------------------------------------------------- the model


@register_model("mfdr", MFDRConfig)
class MFDR(nn.Module):
    def __init__(self, config: MFDRConfig, num_classes: int, audio_dim: int, text_dim: int):
        super().__init__()
        self.config, self.num_classes = config, num_classes
        d, words = config.hidden, config.max_text_len
        self.sawa = SlidingAdaptiveWindowAttention(audio_dim, text_dim, d, config.max_audio_frames, words,
                                                   config.window_width, config.window_hop, config.attention_window,
                                                   adaptive=config.adaptive, word_residual=config.word_residual)
        self.context = MultiHeadAttention(d, config.heads, config.dropout) if config.uses_context else None
        self.cell = CELL_CLASSES[config.cell](d)
        lengths = pooled_lengths(words, config.dfc_width, config.dfc_hops)
        if config.pool == "linear":
            self.pools = nn.ModuleList()
        elif config.pool == "dfc":
            self.pools = nn.ModuleList(DynamicFrameConv(length, d, config.dfc_width, hop, config.dfc_channels)
                                       for length, hop in zip(lengths, config.dfc_hops))
        else:
            self.pools = nn.ModuleList(WindowPool(config.pool, config.dfc_width, hop) for hop in config.dfc_hops)
        positions = words if config.pool == "linear" else lengths[-1]
        self.classifier = ClassifierHead(positions * d, num_classes, dropout=config.dropout)

    def encode(self, batch: dict) -> tuple[Tensor, Tensor]:
        """H (batch, L, D), zeros at empty slots, and the slot mask (batch, L): word or audio window real."""
        config = self.config
        audio, audio_mask = fit_length(batch["audio"], batch["audio_mask"], config.max_audio_frames)
        text, text_mask = fit_length(batch["text"], batch["text_mask"], config.max_text_len)
        slot_mask = self.sawa.slot_mask(audio_mask, text_mask)
        z = self.sawa(audio, audio_mask, text, slot_mask)  # (batch, L, D)
        if self.context is not None:
            g = self.context(z, z, slot_mask) * slot_mask[..., None]  # (batch, L, D)
        else:
            g = z  # no_context: g_t without multi-head attention; cell=gru ignores g
        return run_cell(self.cell, self.cell.inputs(z, g), slot_mask, config.hidden), slot_mask

    def forward(self, batch: dict) -> FusionOutput:
        pooled, mask = self.encode(batch)
        for pool in self.pools:
            pooled, mask = pool(pooled, mask)  # (batch, 50 -> 24 -> 8, D)
        return FusionOutput(self.classifier(pooled.flatten(1)))  # (batch, C)
