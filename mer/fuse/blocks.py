"""Blocks shared by the fusion models (anything two or more papers need lives here, once).

Masks are bool with True = real item. Every block keeps padding from reaching real items:
a padded batch gives the real items the same outputs (up to float rounding), and an item
whose keys are all padding gives zeros, never NaN. Outputs at padded positions are zero.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

ORDERS = ("parallel", "cross_self", "self_cross")


# ----------------------------------------------------------------------------- masks and pooling


def lengths_to_mask(lengths: Tensor, max_len: Optional[int] = None) -> Tensor:
    max_len = int(lengths.max()) if max_len is None else max_len
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]  # (batch, max_len)


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """(batch, time, dim) -> (batch, dim) over real positions; zeros for an all-padding row."""
    weights = mask.to(x.dtype)[..., None]
    return (x * weights).sum(1) / weights.sum(1).clamp(min=1)


def masked_max(x: Tensor, mask: Tensor) -> Tensor:
    """(batch, time, dim) -> (batch, dim) over real positions; zeros for an all-padding row."""
    filled = x.masked_fill(~mask[..., None], torch.finfo(x.dtype).min)
    return torch.where(mask.any(1)[:, None], filled.amax(1), torch.zeros((), dtype=x.dtype, device=x.device))


def masked_softmax(scores: Tensor, mask: Tensor, dim: int = -1) -> Tensor:
    """softmax over the True entries of `mask` (broadcast to scores); all-False rows give zeros."""
    weights = scores.masked_fill(~mask, torch.finfo(scores.dtype).min).softmax(dim)
    return weights * mask


def symmetric_info_nce(similarity: Tensor, temperature: float = 0.07) -> Tensor:
    """Symmetric InfoNCE over a (N, N) similarity, similarity[i, j] = sim(a_i, b_j), positives
    on the diagonal: (CE over rows + CE over columns) / 2 (MGCMA eq. 6-8 and 9-11)."""
    logits = similarity / temperature
    targets = torch.arange(logits.size(0), device=logits.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets)) / 2


# ----------------------------------------------------------------------------- positions


class SinusoidalPositions(nn.Module):
    """Adds the fixed sine/cosine positions of Vaswani et al. (2017); any length."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:  # (batch, time, dim)
        positions = torch.arange(x.size(1), device=x.device, dtype=torch.float32)[:, None]
        frequencies = torch.exp(torch.arange(0, self.dim, 2, device=x.device) * (-math.log(10000.0) / self.dim))
        table = torch.zeros(x.size(1), self.dim, device=x.device)
        table[:, 0::2] = torch.sin(positions * frequencies)
        table[:, 1::2] = torch.cos(positions * frequencies[: self.dim // 2])
        return x + table.to(x.dtype)


class LearnedPositions(nn.Module):
    """Adds a learned embedding per position, up to max_len positions."""

    def __init__(self, dim: int, max_len: int):
        super().__init__()
        self.embedding = nn.Embedding(max_len, dim)

    def forward(self, x: Tensor) -> Tensor:  # (batch, time, dim)
        if x.size(1) > self.embedding.num_embeddings:
            limit = self.embedding.num_embeddings
            raise ValueError(f"sequence of {x.size(1)} positions; the learned positions cover {limit}")
        return x + self.embedding.weight[: x.size(1)]


# ----------------------------------------------------------------------------- attention


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention with `heads` heads, query -> key/value, padded keys masked.
    key_dim: width of key_value when it differs from the query's `dim` (output width is dim)."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0, key_dim: Optional[int] = None):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads, self.dropout = heads, dropout
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(key_dim or dim, dim)
        self.value = nn.Linear(key_dim or dim, dim)
        self.output = nn.Linear(dim, dim)

    def forward(self, query: Tensor, key_value: Tensor, key_mask: Tensor) -> Tensor:
        q = self._split_heads(self.query(query))  # (batch, heads, q_len, head_dim)
        k = self._split_heads(self.key(key_value))  # (batch, heads, k_len, head_dim)
        v = self._split_heads(self.value(key_value))
        has_keys = key_mask.any(1)  # (batch,)
        # an item without keys attends to all (padding) keys, then is zeroed: no NaN from an empty softmax
        attend = (key_mask | ~has_keys[:, None])[:, None, None, :]  # (batch, 1, 1, k_len)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=attend,
                                                  dropout_p=self.dropout if self.training else 0.0)
        batch, _, q_len, _ = attended.shape
        attended = attended.transpose(1, 2).reshape(batch, q_len, -1)  # (batch, q_len, dim)
        return self.output(attended) * has_keys[:, None, None]

    def _split_heads(self, x: Tensor) -> Tensor:
        batch, length, dim = x.shape
        return x.view(batch, length, self.heads, dim // self.heads).transpose(1, 2)


class FeedForward(nn.Module):
    """Position-wise Linear -> ReLU -> Dropout -> Linear."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class AttentionLayer(nn.Module):
    """x = LayerNorm(q + MHA(q, kv)); x = LayerNorm(x + FF(x)) (post-norm, Vaswani et al.).
    Self-attention when key_value is None, cross-attention otherwise. ff_dim None -> 4 * dim;
    ff_dim 0 -> no feed-forward sub-layer."""

    def __init__(self, dim: int, heads: int, ff_dim: Optional[int] = None, dropout: float = 0.1):
        super().__init__()
        ff_dim = 4 * dim if ff_dim is None else ff_dim
        self.attention = MultiHeadAttention(dim, heads, dropout)
        self.attention_norm = nn.LayerNorm(dim)
        self.feed_forward = FeedForward(dim, ff_dim, dropout) if ff_dim else None
        self.feed_forward_norm = nn.LayerNorm(dim) if ff_dim else None
        self.dropout = nn.Dropout(dropout)

    def forward(self, query: Tensor, query_mask: Tensor,
                key_value: Optional[Tensor] = None, key_mask: Optional[Tensor] = None) -> Tensor:
        if key_value is None:
            key_value, key_mask = query, query_mask
        hidden = self.attention_norm(query + self.dropout(self.attention(query, key_value, key_mask)))
        if self.feed_forward is not None:
            hidden = self.feed_forward_norm(hidden + self.dropout(self.feed_forward(hidden)))
        return hidden * query_mask[..., None]  # (batch, q_len, dim)


class SelfAttentionStack(nn.Module):
    """`layers` self-attention AttentionLayers over one modality, one after another (MCSAN's
    self-attention module of one modality, eq. 15-17)."""

    def __init__(self, dim: int, heads: int, layers: int = 1, ff_dim: Optional[int] = None, dropout: float = 0.1):
        super().__init__()
        self.layers = nn.ModuleList(AttentionLayer(dim, heads, ff_dim, dropout) for _ in range(layers))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:  # x (batch, time, dim)
        for layer in self.layers:
            x = layer(x, mask)
        return x  # (batch, time, dim)


class CrossModalLayer(nn.Module):
    """Audio queries text AND text queries audio, both from this layer's inputs (MCSAN eq. 9-14)."""

    def __init__(self, dim: int, heads: int, ff_dim: Optional[int] = None, dropout: float = 0.1):
        super().__init__()
        self.audio_from_text = AttentionLayer(dim, heads, ff_dim, dropout)
        self.text_from_audio = AttentionLayer(dim, heads, ff_dim, dropout)

    def forward(self, audio: Tensor, audio_mask: Tensor, text: Tensor, text_mask: Tensor) -> tuple[Tensor, Tensor]:
        new_audio = self.audio_from_text(audio, audio_mask, text, text_mask)  # (batch, audio_len, dim)
        new_text = self.text_from_audio(text, text_mask, audio, audio_mask)  # (batch, text_len, dim)
        return new_audio, new_text


class CrossSelfAttentionUnit(nn.Module):
    """A cross-attention module (CrossModalLayer x layers) and two self-attention modules
    (AttentionLayer x layers per modality), as in MCSAN and CM-RoBERTa's SCA unit.

    order="parallel": both modules read the unit's inputs; returns [(audio, text) of cross,
    (audio, text) of self] (MCSAN's H^c and H^s). order="cross_self" / "self_cross": blocks
    of one layer of each, in that order, repeated `layers` times (MGCMA's blocks are
    self_cross); returns [(audio, text)] of the last block. With use_cross or use_self off,
    the remaining module alone runs and returns one pair. `num_outputs` = pairs returned.
    """

    def __init__(self, dim: int, heads: int, layers: int = 1, ff_dim: Optional[int] = None, dropout: float = 0.1,
                 order: str = "parallel", use_cross: bool = True, use_self: bool = True):
        super().__init__()
        if order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
        if not (use_cross or use_self):
            raise ValueError("at least one of the cross- and self-attention modules must be used")
        self.order, self.use_cross, self.use_self = order, use_cross, use_self
        cross_count, self_count = (layers if use_cross else 0), (layers if use_self else 0)
        self.cross_layers = nn.ModuleList(CrossModalLayer(dim, heads, ff_dim, dropout) for _ in range(cross_count))
        self.audio_self_layers = nn.ModuleList(AttentionLayer(dim, heads, ff_dim, dropout) for _ in range(self_count))
        self.text_self_layers = nn.ModuleList(AttentionLayer(dim, heads, ff_dim, dropout) for _ in range(self_count))
        self.num_outputs = 2 if (order == "parallel" and use_cross and use_self) else 1

    def forward(self, audio: Tensor, audio_mask: Tensor, text: Tensor,
                text_mask: Tensor) -> list[tuple[Tensor, Tensor]]:
        if self.order == "parallel" or not (self.use_cross and self.use_self):
            outputs = []
            if self.use_cross:
                audio_cross, text_cross = audio, text
                for layer in self.cross_layers:
                    audio_cross, text_cross = layer(audio_cross, audio_mask, text_cross, text_mask)
                outputs.append((audio_cross, text_cross))
            if self.use_self:
                audio_self, text_self = audio, text
                for index in range(len(self.audio_self_layers)):
                    audio_self, text_self = self._self_layer(index, audio_self, audio_mask, text_self, text_mask)
                outputs.append((audio_self, text_self))
            return outputs
        for index, cross_layer in enumerate(self.cross_layers):
            if self.order == "self_cross":
                audio, text = self._self_layer(index, audio, audio_mask, text, text_mask)
            audio, text = cross_layer(audio, audio_mask, text, text_mask)
            if self.order == "cross_self":
                audio, text = self._self_layer(index, audio, audio_mask, text, text_mask)
        return [(audio, text)]

    def _self_layer(self, index: int, audio, audio_mask, text, text_mask) -> tuple[Tensor, Tensor]:
        return self.audio_self_layers[index](audio, audio_mask), self.text_self_layers[index](text, text_mask)


# ----------------------------------------------------------------------------- recurrent encoders


class BiLSTMEncoder(nn.Module):
    """BiLSTM over the real part of each sequence (packed by mask lengths). merge="mean"
    averages the forward and backward states (MCSAN eq. 3, 5) -> (batch, time, hidden);
    merge="concat" -> (batch, time, 2 * hidden). Padded positions are zero."""

    def __init__(self, input_dim: int, hidden: int, layers: int = 1, merge: str = "mean", dropout: float = 0.0):
        super().__init__()
        if merge not in ("mean", "concat"):
            raise ValueError(f"merge must be 'mean' or 'concat', got {merge!r}")
        self.merge = merge
        self.lstm = nn.LSTM(input_dim, hidden, num_layers=layers, batch_first=True, bidirectional=True,
                            dropout=dropout if layers > 1 else 0.0)
        self.output_dim = hidden if merge == "mean" else 2 * hidden

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:  # x (batch, time, input_dim)
        lengths = mask.sum(1).clamp(min=1).cpu()  # an empty item runs on one (padding) step, then is zeroed
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        states, _ = self.lstm(packed)
        states, _ = pad_packed_sequence(states, batch_first=True, total_length=x.size(1))  # (batch, time, 2*hidden)
        if self.merge == "mean":
            forward, backward = states.chunk(2, dim=-1)
            states = (forward + backward) / 2
        return states * mask[..., None]


# ----------------------------------------------------------------------------- heads


class ClassifierHead(nn.Module):
    """hidden None: Dropout -> Linear. hidden given: Linear -> ReLU -> Dropout -> Linear."""

    def __init__(self, in_dim: int, num_classes: int, hidden: Optional[int] = None, dropout: float = 0.0):
        super().__init__()
        if hidden is None:
            self.net = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, num_classes))
        else:
            self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout),
                                     nn.Linear(hidden, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
