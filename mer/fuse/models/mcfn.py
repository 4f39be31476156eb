"""MCFN: a dual attention-based Modality-Collaborative Fusion Network (Zhang, Li; Interspeech 2023).
papers/mcfn-dual-attention-modality-collaborative-fusion.txt.

    audio (log-MFB + deltas, 240-d) -> SpecAugment (training only) -> 3 x UFLB + skip -> O_s (n x d)
    text (RoBERTa-base words, 768-d) -> FC -> O_t (m x d)
    O_s, O_t -> dual attention per modality (eq. 1-2): temporal + channel branch -> S, T
    co-attention, text queries speech (eq. 3-4): S~ (m x d), T~ = T
    interaction (eq. 5-6): S^c = S~ + S~ * sigmoid(W_s T~),  T^c = T~ + T~ * sigmoid(W_t S~)
    mutual adjustment (eq. 7): L_ad = MSE(S~, S^c) + MSE(T, T^c);  S^f = S~ + S^c,  T^f = T + T^c
    classifiers on mean-pooled S^f (speech), T^f (text), [S^f ; T^f] (bimodal)
    decision fusion (eq. 8-9): P = alpha P_s + beta P_t + gamma P_st;  logits = log P
    loss (eq. 10-11): sum_m lambda_m CE_m + w L_ad

Defaults (paper, section 3.2 and 3.3.3): d = q = 256, dilation 2, 4 heads, 128 hidden units in
the multi-head co-attention, alpha = beta = 0.3, gamma = 0.4, Adam lr 1e-4, batch 32.
Features: `logmfb80-d2` (80 log-mel bands + delta + delta-delta, 25 ms / 10 ms) and
`roberta-base` at word level (subword vectors mean-pooled per word).

Frozen text encoder: the paper's RoBERTa is part of its trained network ("The pre-trained RoBERTa
model is used to encode text", section 3.2, in a model trained end to end at lr 1e-4); we read frozen
RoBERTa features from the cache, and only the FC above them (and the rest of MCFN) trains.

Where the paper is vague, this implementation decides:
  1. SpecAugment: the paper masks the spectrogram and then computes the deltas; here the
     cache holds [static | delta | delta-delta] already, so the masks are applied to that
     240-d input: a frequency mask zeroes the SAME mel bands in each of the `spec_blocks`
     = 3 stacked blocks (exactly what masking before the deltas gives: a constant band has
     zero deltas), a time mask zeroes all 240 dims of its frames (the deltas next to a time
     mask are not recomputed). Mask value 0, which is the training mean after the loader's
     z-normalisation ("mean masking"). Policy after PSLA [12] (the paper's reference), which
     applies one frequency and one time mask: 1 frequency mask of width ~ U{0..30} bands
     (PSLA's 48 of 128 bands scaled to 80), 1 time mask of width ~ U{0..min(192, 20% of the
     item's real frames)} (PSLA's 192 frames of its 10 s clips; the relative cap keeps short
     MELD clips alive). Starts and widths are drawn per item from torch's global RNG (so a
     seed fixes them); masks lie inside the real frames, padding is never touched. Training
     mode only; `no_specaugment` turns it off. An input whose width is not a multiple of
     spec_blocks is treated as one block.
  2. Speech encoder: 3 UFLB blocks, each Conv1d(kernel 3, dilation 2, "same" zero padding
     2, stride 1, no pooling: O_s keeps the n frames) -> BatchNorm -> LeakyReLU(0.01); the
     first block maps 240 -> d. The "skip connection residual block" adds the first block's
     output to the last block's output (O_s = B3(B2(B1(x))) + B1(x)). Padded frames are
     zeroed before each convolution and after each block.
  3. BatchNorm with padding: a masked BatchNorm (same parameters and buffers as
     nn.BatchNorm1d): in training the batch statistics are computed over the REAL frames
     only (biased variance to normalise, unbiased for the running estimate, momentum 0.1);
     in eval the running statistics are used. So padding never changes a real frame's
     output, in either mode (in training a different set of real items does change the
     statistics, as in any BatchNorm).
  4. Text: one Linear(768, d), no activation ("followed by a fully-connected layer").
  5. Dual attention (DANet-style; one module per modality, no shared weights): the three
     "convolution layers" of the temporal branch are 1x1 Conv1d; T1 and T2 have d / 8
     channels (DANet's reduction, `attention_reduction`), T3 has d. Both maps are plain
     unscaled softmaxes of dot products, as eq. 1-2 write them (no 1/sqrt scale, no DANet
     learnable gamma: the residual is added at weight 1). The temporal softmax is over real
     positions only; the channel map sums over real positions only (padding is zero).
     Output S = S_t + S_c, both branches including their residual, padded positions zero.
     Note: without a scale the channel map of long sequences is nearly one-hot. (DANet's own
     channel module, which the paper does not cite, softmaxes rowmax(energy) - energy instead;
     we follow eq. 2 as written, not DANet.)
  6. Co-attention (eq. 3-4): additive (Bahdanau) scores per head h,
     a^h_ij = w_h . tanh(U_h s_i + V_h t_j + b_h), with U, V: d -> 128 split into 4 heads of
     32 and a score vector w_h per head (eq. 3's scalar score needs one). Softmax over the
     item's real speech frames; head h aligns the h-th d/4 channel slice of s (values are
     the speech features themselves, eq. 4: no value or output projection); the heads'
     outputs are concatenated -> S~ (m x d). An item without speech frames gets S~ = 0.
     This builds a (batch, words, frames, 128) tensor: hence max_audio_frames = 1000 (10 s)
     by default; set it to None to run uncut.
  7. Interaction (eq. 5-6): W_s, W_t are Linear(d, d) with bias.
  8. Mutual adjustment (eq. 7): S (n frames) and S^c (m words) differ in length, so S~ is
     compared with S^c and T with T^c, word by word over the real words of the batch; each
     MSE is the mean over those (word, channel) elements; L_ad = the sum of the two. The
     weight w is not reported: default 1.0 (`adjustment_weight`). The adjustment function is
     the paper's addition. `no_mutual_adjustment` removes the L_ad term (the paper calls the
     MSE constraint "the mutual adjustment"); the addition stays.
     What L_ad asks for: with eq. 5-6, S^c - S~ = S~ * sigmoid(W_s T~) and T^c - T = T * sigmoid(W_t S~),
     so L_ad = mean (S~ sigmoid(W_s T~))^2 + mean (T sigmoid(W_t S~))^2. It is zero exactly when the
     interaction gates close (sigmoid -> 0, or the features themselves vanish): the term pulls the
     cross-modal interaction towards off, and the task losses pull it back where it helps. That is
     eq. 7 as written ("constrain the difference between intra-modal and inter-modal
     representations"), not a quantity that measures agreement between the modalities.
  9. Classifiers: masked mean over the real words of S^f / T^f (the bimodal one reads the
     concatenation of both pooled vectors, 2d), then Dropout(0.1) -> one Linear to C (the
     paper names no classifier depth; `classifier_hidden` adds a hidden layer). An item
     with an empty transcript has no words: its speech and text vectors are zero.
 10. Decision fusion: logits = log(alpha softmax(z_s) + beta softmax(z_t) + gamma softmax(z_st)),
     computed in log space, so softmax(logits) = P and argmax(logits) = argmax(P). Regression
     (one or several targets): the same weighted sum of the three heads' outputs. gamma defaults to None, meaning
     1 - alpha - beta (eq. 9): setting alpha or beta alone walks the paper's grid (Fig. 3,
     gamma = 1 - alpha - beta); given explicitly, the three must sum to 1.
 11. Loss (eq. 11): terms `ce_speech`, `ce_text`, `ce_bimodal` (lambda_* times the task loss
     of each head's own logits: cross-entropy, or L1 for regression under the same names)
     and `mutual_adjustment` (w * L_ad). lambda defaults to 1 (not reported).
 12. Dropout 0.1 before each classifier only (the paper names none).
 13. Training: the paper reports no epoch count or early stopping; here at most 100 epochs,
     early stop after 10 epochs without a lower validation loss, best checkpoint kept.
 14. no_dual_attention: S = O_s, T = O_t. no_interaction: S^c = S~, T^c = T (L_ad is then
     identically 0 and reported as 0).
 15. Unimodal ablations `audio_only` / `text_only` (Table 3 "Speech only" / "Text only": "when we
     utilize unimodal information as input", section 3.3.2, which also calls the speech row
     "speech-only intra-modal learning"): the modality's intra-modal learning module (section 2.1)
     and its own classifier. Speech: SpecAugment -> UFLB encoder -> dual attention -> S,
     mean-pooled over the real frames -> the speech classifier. Text: FC -> dual attention -> T,
     mean-pooled over the real words -> the text classifier. The classifier reads S / T, not S^f /
     T^f: those exist only after the co-attention, which needs the other modality, as do the
     interaction, the mutual adjustment and the other two classifiers; none of them is built, so
     the run loads only the feature it reads (`inputs`) and the model needs no dimension of the
     other. The decision fusion of one classifier is that classifier (logits = its logits) and
     the loss its one term (`ce_speech` / `ce_text`, times its lambda). `no_interaction`,
     `no_mutual_adjustment`, alpha and beta change nothing there; `no_dual_attention` leaves the
     encoder and the classifier.

Ablations: no_dual_attention, no_interaction, no_mutual_adjustment, no_specaugment, alpha, beta, audio_only,
text_only.
Paper: IEMOCAP 4-class leave-one-session-out WA 76.0 / UA 77.8; MELD Acc 64.5 / WF1 62.2. Table 3: speech only
IEMOCAP WA 62.1 / UA 60.3, MELD Acc 48.1 / WF1 36.7; text only 68.1 / 69.1, 63.1 / 59.8.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mer.errors import MerError
from mer.fuse.blocks import ClassifierHead, masked_mean, masked_softmax
from mer.fuse.models.base import FusionConfig, FusionOutput, TaskLoss, UnimodalSwitches, is_regression, register_model

HEAD_NAMES = ("speech", "text", "bimodal")
UNIMODAL_HEADS = {("audio",): ("speech",), ("text",): ("text",)}  # config.modalities -> the classifiers built


@dataclass
class MCFNConfig(UnimodalSwitches, FusionConfig):
    audio_feature: str = "logmfb80-d2"
    text_feature: str = "roberta-base"  # word level (granularity=word)
    demo_audio_feature: str = "logmfb80-d2"
    demo_text_feature: str = "minilm-l6"
    audio_granularity: str = "frame"
    text_granularity: str = "word"
    max_audio_frames: Optional[int] = 1000  # the co-attention's (batch, words, frames, 128) tensor; None = uncut
    hidden: int = 256  # q = d = 256
    dropout: float = 0.1
    # speech encoder
    encoder_blocks: int = 3  # UFLB blocks
    kernel_size: int = 3
    dilation: int = 2
    leaky_slope: float = 0.01
    # SpecAugment (training only)
    spec_blocks: int = 3  # [static | delta | delta-delta]: frequency masks hit the same bands in each
    freq_masks: int = 1
    freq_mask_width: int = 30  # widest frequency mask, in bands of one block
    time_masks: int = 1
    time_mask_width: int = 192  # widest time mask, in frames ...
    time_mask_ratio: float = 0.2  # ... and at most this fraction of the item's real frames
    # dual attention, co-attention
    attention_reduction: int = 8  # T1, T2 have hidden / attention_reduction channels
    heads: int = 4
    attention_hidden: int = 128
    # decision fusion (eq. 8-9) and loss (eq. 11)
    alpha: float = 0.3  # speech classifier
    beta: float = 0.3  # text classifier
    gamma: Optional[float] = None  # bimodal classifier; None = 1 - alpha - beta (0.4)
    lambda_speech: float = 1.0
    lambda_text: float = 1.0
    lambda_bimodal: float = 1.0
    adjustment_weight: float = 1.0  # w
    classifier_hidden: Optional[int] = None  # None: one Linear per classifier
    # ablation switches
    no_dual_attention: bool = False
    no_interaction: bool = False
    no_mutual_adjustment: bool = False
    no_specaugment: bool = False
    # audio_only, text_only (UnimodalSwitches): Table 3's "Speech only" and "Text only"
    # training
    lr: float = 1e-4
    batch_size: int = 32
    max_epochs: int = 100
    patience: Optional[int] = 10
    monitor: str = "loss"

    # CPU-sized settings for the synthetic demo corpus (400 utterances); the paper's otherwise
    per_corpus: dict = field(default_factory=lambda: {"demo": {"batch_size": 16, "lr": 5e-4, "max_epochs": 12, "patience": 6}})
    ablations: ClassVar[dict] = {"no_dual_attention": (True,), "no_interaction": (True,),
                                 "no_mutual_adjustment": (True,), "no_specaugment": (True,),
                                 "alpha": (0.1, 0.5), "beta": (0.1, 0.5),
                                 "audio_only": (True,), "text_only": (True,)}
    paper_results: ClassVar[dict] = {  # Tables 1-3
        "iemocap-loso": {"full": {"accuracy": 0.760, "ua": 0.778},
                         "no_dual_attention": {"accuracy": 0.751, "ua": 0.758},
                         "no_interaction": {"accuracy": 0.748, "ua": 0.757},
                         "no_mutual_adjustment": {"accuracy": 0.755, "ua": 0.764},
                         "audio_only": {"accuracy": 0.621, "ua": 0.603},  # Speech only
                         "text_only": {"accuracy": 0.681, "ua": 0.691}},  # Text only
        "meld": {"full": {"accuracy": 0.645, "weighted_f1": 0.622},
                 "no_dual_attention": {"accuracy": 0.642, "weighted_f1": 0.614},
                 "no_interaction": {"accuracy": 0.638, "weighted_f1": 0.611},
                 "no_mutual_adjustment": {"accuracy": 0.635, "weighted_f1": 0.611},
                 "audio_only": {"accuracy": 0.481, "weighted_f1": 0.367},
                 "text_only": {"accuracy": 0.631, "weighted_f1": 0.598}}}

    def __post_init__(self):
        super().__post_init__()
        if self.hidden % self.heads:
            raise MerError(f"mcfn: hidden {self.hidden} must be divisible by heads {self.heads}")
        if self.attention_hidden % self.heads:
            raise MerError(f"mcfn: attention_hidden {self.attention_hidden} must be divisible by heads {self.heads}")
        if self.hidden // self.attention_reduction < 1:
            raise MerError(f"mcfn: hidden {self.hidden} / attention_reduction {self.attention_reduction} < 1")
        if self.encoder_blocks < 1 or self.kernel_size % 2 == 0 or self.dilation < 1:
            raise MerError("mcfn: encoder_blocks >= 1, an odd kernel_size and dilation >= 1 are required")
        if min(self.spec_blocks, 1 + self.freq_masks, 1 + self.freq_mask_width, 1 + self.time_masks,
               1 + self.time_mask_width) < 1 or not 0.0 <= self.time_mask_ratio <= 1.0:
            raise MerError("mcfn: SpecAugment counts and widths must be >= 0, spec_blocks >= 1, "
                           "time_mask_ratio in [0, 1]")
        weights = self.fusion_weights
        if any(not 0.0 <= weight <= 1.0 for weight in weights) or not math.isclose(sum(weights), 1.0, abs_tol=1e-6):
            raise MerError(f"mcfn: alpha, beta, gamma must lie in [0, 1] and sum to 1 (eq. 9), got {weights}")

    @property
    def fusion_weights(self) -> tuple[float, float, float]:
        """(alpha, beta, gamma) for the speech, text and bimodal classifiers."""
        gamma = 1.0 - self.alpha - self.beta if self.gamma is None else self.gamma
        return self.alpha, self.beta, gamma

    @classmethod
    def tiny(cls) -> "MCFNConfig":
        return cls(hidden=8, heads=2, attention_hidden=8, attention_reduction=2, freq_mask_width=2,
                   time_mask_width=5, batch_size=4, max_epochs=2)


# ----------------------------------------------------------------------------- speech side


class SpecAugment(nn.Module):
    """Random frequency and time masks (value 0) on (batch, frames, dim) features, training
    only. `blocks` stacked feature blocks (static | delta | delta-delta) share their
    frequency masks. Masks lie inside each item's real frames; padding is never touched."""

    def __init__(self, blocks: int = 3, freq_masks: int = 1, freq_width: int = 30, time_masks: int = 1,
                 time_width: int = 192, time_ratio: float = 0.2):
        super().__init__()
        self.blocks, self.freq_masks, self.freq_width = blocks, freq_masks, freq_width
        self.time_masks, self.time_width, self.time_ratio = time_masks, time_width, time_ratio

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        if not self.training:
            return x
        batch, frames, dim = x.shape
        blocks = self.blocks if dim % self.blocks == 0 else 1
        bands = dim // blocks
        keep = torch.ones(batch, frames, dim, dtype=torch.bool, device=x.device)
        band_index = torch.arange(bands, device=x.device)
        for _ in range(self.freq_masks):
            limit = min(self.freq_width, bands)
            start, width = self._draw(torch.full((batch,), bands, device=x.device), limit, batch, x.device)
            hit = (band_index >= start[:, None]) & (band_index < (start + width)[:, None])  # (batch, bands)
            keep &= ~(hit.repeat(1, blocks)[:, None, :] & mask[..., None])
        lengths = mask.sum(1)  # (batch,)
        frame_index = torch.arange(frames, device=x.device)
        for _ in range(self.time_masks):
            limit = torch.minimum(torch.full_like(lengths, self.time_width),
                                  torch.floor(lengths * self.time_ratio).long())
            start, width = self._draw(lengths, limit, batch, x.device)
            hit = (frame_index >= start[:, None]) & (frame_index < (start + width)[:, None])  # (batch, frames)
            keep &= ~(hit & mask)[..., None]
        return x * keep

    @staticmethod
    def _draw(lengths: Tensor, limit, batch: int, device) -> tuple[Tensor, Tensor]:
        """Per item: width ~ U{0..limit}, start ~ U{0..length - width} (torch's global RNG)."""
        limit = torch.as_tensor(limit, device=device).expand(batch)
        width = torch.floor(torch.rand(batch, device=device) * (limit + 1)).long().clamp(max=limit)
        room = (lengths - width).clamp(min=0)
        start = torch.floor(torch.rand(batch, device=device) * (room + 1)).long().clamp(max=room)
        return start, width


class MaskedBatchNorm1d(nn.BatchNorm1d):
    """nn.BatchNorm1d over (batch, channels, time) whose training statistics come from the
    real positions only (mask True); eval uses the running statistics. Padded outputs are 0.
    With an all-True mask it equals nn.BatchNorm1d (momentum as given; None is not supported)."""

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:  # x (batch, channels, time), mask (batch, time)
        weights = mask[:, None, :].to(x.dtype)
        if self.training:
            count = weights.sum()
            denominator = count.clamp(min=1)
            mean = (x * weights).sum((0, 2)) / denominator  # (channels,)
            variance = ((x - mean[None, :, None]).pow(2) * weights).sum((0, 2)) / denominator
            if self.track_running_stats:
                with torch.no_grad():
                    momentum = self.momentum
                    unbiased = variance * count / (count - 1).clamp(min=1)
                    seen = count > 0  # a batch without a real frame leaves the estimates alone
                    self.running_mean.copy_(torch.where(seen, (1 - momentum) * self.running_mean + momentum * mean,
                                                        self.running_mean))
                    self.running_var.copy_(torch.where(seen, (1 - momentum) * self.running_var + momentum * unbiased,
                                                       self.running_var))
                    self.num_batches_tracked.add_(1)
        else:
            mean, variance = self.running_mean, self.running_var
        normalized = (x - mean[None, :, None]) * torch.rsqrt(variance[None, :, None] + self.eps)
        if self.affine:
            normalized = normalized * self.weight[None, :, None] + self.bias[None, :, None]
        return normalized * weights


class UFLB(nn.Module):
    """Upgrade feature learning block: dilated Conv1d -> (masked) BatchNorm -> LeakyReLU."""

    def __init__(self, in_dim: int, out_dim: int, kernel_size: int, dilation: int, slope: float):
        super().__init__()
        self.conv = nn.Conv1d(in_dim, out_dim, kernel_size, dilation=dilation, padding=dilation * (kernel_size // 2))
        self.norm = MaskedBatchNorm1d(out_dim)
        self.slope = slope

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:  # x (batch, channels, time)
        hidden = self.norm(self.conv(x * mask[:, None, :]), mask)
        return F.leaky_relu(hidden, self.slope) * mask[:, None, :]


class DilatedCNNEncoder(nn.Module):
    """`blocks` UFLBs; the first block's output is added to the last one's (the skip)."""

    def __init__(self, in_dim: int, hidden: int, blocks: int, kernel_size: int, dilation: int, slope: float):
        super().__init__()
        self.blocks = nn.ModuleList(UFLB(in_dim if index == 0 else hidden, hidden, kernel_size, dilation, slope)
                                    for index in range(blocks))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:  # x (batch, frames, in_dim) -> (batch, frames, hidden)
        first = hidden = self.blocks[0](x.transpose(1, 2), mask)
        for block in self.blocks[1:]:
            hidden = block(hidden, mask)
        if len(self.blocks) > 1:
            hidden = hidden + first
        return hidden.transpose(1, 2)


# ----------------------------------------------------------------------------- attention


class DualAttention(nn.Module):
    """Temporal (eq. 1) and channel (eq. 2) attention branches, each with its residual, summed."""

    def __init__(self, dim: int, reduction: int):
        super().__init__()
        self.query = nn.Conv1d(dim, dim // reduction, 1)  # T1
        self.key = nn.Conv1d(dim, dim // reduction, 1)  # T2
        self.value = nn.Conv1d(dim, dim, 1)  # T3

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:  # x (batch, time, dim), padded positions zero
        channels_first = x.transpose(1, 2)  # (batch, dim, time)
        queries, keys = self.query(channels_first), self.key(channels_first)  # (batch, dim / r, time)
        scores = torch.einsum("bci,bcj->bij", queries, keys)  # (batch, time_query, time_key)
        temporal_map = masked_softmax(scores, mask[:, None, :])  # F_t over real keys
        temporal = x + torch.einsum("bij,bcj->bic", temporal_map, self.value(channels_first))  # T_t
        channel_map = torch.softmax(torch.einsum("bti,btj->bij", x, x), dim=-1)  # F_c (batch, dim, dim)
        channel = x + torch.einsum("bij,btj->bti", channel_map, x)  # T_c
        return (temporal + channel) * mask[..., None]


class AdditiveCoAttention(nn.Module):
    """Text queries speech (eq. 3-4): a^h_ij = w_h . tanh(U_h s_i + V_h t_j + b_h), softmax over
    the real speech frames; head h aligns the h-th channel slice of s. -> (batch, words, dim)."""

    def __init__(self, dim: int, hidden: int, heads: int):
        super().__init__()
        self.heads = heads
        self.speech = nn.Linear(dim, hidden, bias=False)  # U
        self.text = nn.Linear(dim, hidden)  # V, and b as its bias
        self.score = nn.Parameter(torch.empty(heads, hidden // heads))  # w_h
        nn.init.uniform_(self.score, -1 / math.sqrt(hidden // heads), 1 / math.sqrt(hidden // heads))

    def forward(self, speech: Tensor, speech_mask: Tensor, text: Tensor, text_mask: Tensor) -> Tensor:
        batch, frames, dim = speech.shape
        words, heads = text.size(1), self.heads
        projected_speech = self.speech(speech).view(batch, 1, frames, heads, -1)
        projected_text = self.text(text).view(batch, words, 1, heads, -1)
        hidden = torch.tanh(projected_speech + projected_text)  # (batch, words, frames, heads, hidden / heads)
        scores = torch.einsum("bmnhk,hk->bmnh", hidden, self.score)
        weights = masked_softmax(scores, speech_mask[:, None, :, None], dim=2)  # alpha over the frames
        values = speech.view(batch, frames, heads, dim // heads)
        aligned = torch.einsum("bmnh,bnhc->bmhc", weights, values).reshape(batch, words, dim)  # S~
        return aligned * text_mask[..., None]


# ----------------------------------------------------------------------------- the model


@register_model("mcfn", MCFNConfig)
class MCFN(nn.Module):
    def __init__(self, config: MCFNConfig, num_classes: int, audio_dim: int, text_dim: int):
        super().__init__()
        self.config, self.num_classes = config, num_classes
        self.head_names = UNIMODAL_HEADS.get(config.modalities, HEAD_NAMES)
        d, reads_speech, reads_text = config.hidden, "audio" in config.modalities, "text" in config.modalities
        self.spec_augment = None if config.no_specaugment or not reads_speech else SpecAugment(
            config.spec_blocks, config.freq_masks, config.freq_mask_width, config.time_masks,
            config.time_mask_width, config.time_mask_ratio)
        self.speech_encoder = DilatedCNNEncoder(audio_dim, d, config.encoder_blocks, config.kernel_size,
                                                config.dilation, config.leaky_slope) if reads_speech else None
        self.text_encoder = nn.Linear(text_dim, d) if reads_text else None
        dual = not config.no_dual_attention
        self.speech_attention = DualAttention(d, config.attention_reduction) if dual and reads_speech else None
        self.text_attention = DualAttention(d, config.attention_reduction) if dual and reads_text else None
        bimodal = reads_speech and reads_text
        self.co_attention = AdditiveCoAttention(d, config.attention_hidden, config.heads) if bimodal else None
        interaction = bimodal and not config.no_interaction
        self.speech_gate = nn.Linear(d, d) if interaction else None  # W_s, reads T~
        self.text_gate = nn.Linear(d, d) if interaction else None  # W_t, reads S~
        widths = {"speech": d, "text": d, "bimodal": 2 * d}
        self.heads = nn.ModuleDict({name: ClassifierHead(widths[name], num_classes, config.classifier_hidden,
                                                         config.dropout) for name in self.head_names})

    def forward(self, batch: dict) -> FusionOutput:
        intra = self.intra_modal(batch)
        if self.co_attention is None:
            return self.classify_unimodal(intra)
        (speech, audio_mask), (text, text_mask) = intra["speech"], intra["text"]
        return self.collaborate(speech, audio_mask, text, text_mask)

    def intra_modal(self, batch: dict) -> dict[str, tuple[Tensor, Tensor]]:
        """Section 2.1 for each modality read: {"speech": (S (batch, frames, d), audio_mask),
        "text": (T (batch, words, d), text_mask)}; O_s / O_t themselves under no_dual_attention."""
        found = {}
        if self.speech_encoder is not None:
            audio, mask = batch["audio"], batch["audio_mask"]
            if self.spec_augment is not None:
                audio = self.spec_augment(audio, mask)
            encoded = self.speech_encoder(audio, mask)  # O_s (batch, frames, d)
            found["speech"] = self._dual_attention(self.speech_attention, encoded, mask)
        if self.text_encoder is not None:
            mask = batch["text_mask"]
            encoded = self.text_encoder(batch["text"]) * mask[..., None]  # O_t (batch, words, d)
            found["text"] = self._dual_attention(self.text_attention, encoded, mask)
        return found

    @staticmethod
    def _dual_attention(attention: Optional[nn.Module], encoded: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        return (encoded if attention is None else attention(encoded, mask)), mask

    def classify_unimodal(self, intra: dict[str, tuple[Tensor, Tensor]]) -> FusionOutput:
        """audio_only / text_only: the one classifier on S mean-pooled over its frames (or T over its words)."""
        ((name, (features, mask)),) = intra.items()
        logits = self.heads[name](masked_mean(features, mask))  # (batch, C)
        return FusionOutput(logits, head_logits={name: logits})

    def collaborate(self, speech: Tensor, audio_mask: Tensor, text: Tensor, text_mask: Tensor) -> FusionOutput:
        """Section 2.2-2.3 on S (batch, frames, d) and T (batch, words, d): alignment, interaction, mutual
        adjustment, the three classifiers and their decision fusion."""
        aligned = self.co_attention(speech, audio_mask, text, text_mask)  # S~ (batch, words, d); T~ = T
        if self.speech_gate is not None:
            speech_inter = aligned + aligned * torch.sigmoid(self.speech_gate(text))  # S^c
            text_inter = text + text * torch.sigmoid(self.text_gate(aligned))  # T^c
        else:
            speech_inter, text_inter = aligned, text
        aux_losses = {}
        if not self.config.no_mutual_adjustment:
            adjustment = (self._word_mse(aligned, speech_inter, text_mask)
                          + self._word_mse(text, text_inter, text_mask))  # L_ad
            aux_losses["mutual_adjustment"] = self.config.adjustment_weight * adjustment
        speech_final = (aligned + speech_inter) * text_mask[..., None]  # S^f
        text_final = (text + text_inter) * text_mask[..., None]  # T^f
        speech_pooled, text_pooled = masked_mean(speech_final, text_mask), masked_mean(text_final, text_mask)
        head_logits = {"speech": self.heads["speech"](speech_pooled),
                       "text": self.heads["text"](text_pooled),
                       "bimodal": self.heads["bimodal"](torch.cat([speech_pooled, text_pooled], dim=-1))}
        return FusionOutput(self.fuse(head_logits), aux_losses=aux_losses, head_logits=head_logits)

    def fuse(self, head_logits: dict[str, Tensor]) -> Tensor:
        """Decision fusion (eq. 8): log(alpha P_s + beta P_t + gamma P_st); regression: weighted sum."""
        weighted = [(weight, head_logits[name]) for name, weight in zip(HEAD_NAMES, self.config.fusion_weights)
                    if weight > 0]
        if is_regression(self.num_classes):
            return sum(weight * logits for weight, logits in weighted)
        log_probs = torch.stack([math.log(weight) + logits.log_softmax(-1) for weight, logits in weighted])
        return torch.logsumexp(log_probs, dim=0)  # (batch, C)

    def losses(self, output: FusionOutput, labels: Tensor, task_loss: TaskLoss) -> dict[str, Tensor]:
        """Eq. 11: one weighted task term per classifier built, plus w * L_ad."""
        lambdas = {"speech": self.config.lambda_speech, "text": self.config.lambda_text,
                   "bimodal": self.config.lambda_bimodal}
        terms = {f"ce_{name}": lambdas[name] * task_loss(output.head_logits[name], labels)
                 for name in self.head_names}
        return {**terms, **output.aux_losses}

    @staticmethod
    def _word_mse(intra: Tensor, inter: Tensor, mask: Tensor) -> Tensor:
        """Mean squared difference over the real words' (word, channel) elements of the batch."""
        squared = (intra - inter).pow(2).sum(-1) * mask  # (batch, words)
        return squared.sum() / (mask.sum() * intra.size(-1)).clamp(min=1)
