"""MCSAN: Multimodal Cross- and Self-Attention Network (Sun, Liu, Tao, Lian; ICASSP 2022).
papers/mcsan-multimodal-cross-self-attention.txt.

    audio (MFCC) -> 2 x [Conv1d(k3) -> MaxPool1d(k3)] -> BiLSTM (directions averaged) -> H_a
    text (words) -> BiLSTM (directions averaged) -> H_l
    H_a, H_l + positions -> cross module (N x [a<-l and l<-a attention, Add&Norm, FF, Add&Norm]) -> H_a^c, H_l^c
                         -> self modules, in PARALLEL (N x [self-attention, Add&Norm, FF, Add&Norm]) -> H_a^s, H_l^s
    global max-pool over time of each of the 4 -> concat -> FC -> C

Defaults (paper, section 3.2): d = 128, 8 heads, N = 1, kernel 3 for conv and pool, Adam
lr 1e-3 (IEMOCAP) / 5e-4 (MELD), batch 256, at most 30 (IEMOCAP) / 20 (MELD) epochs,
MFCC cut to 1000 frames and z-normalised (training-split statistics, by the loader); the text
vectors are not normalised, as the paper normalises only the MFCC (`normalize_inputs`).

Where the paper is vague, this implementation decides:
  1. Conv1d: `hidden` (d) output channels, stride 1, zero "same" padding (k // 2), and NO
     activation: the paper defines ConvBlock = MaxPool(Conv1D(.)) (eq. 1) and names none.
  2. MaxPool1d: kernel 3, stride 3 (PyTorch's default stride = kernel), ceil_mode=True so a
     clip shorter than 9 frames (MELD has 64 ms clips) keeps at least one step; a partial
     last window pools only its real frames. The mask follows: a pooled step is real iff
     its window holds a real frame. Padded frames are zeroed before each conv (so a real
     frame next to padding sees what it sees at the end of an unpadded clip: zero).
  3. BiLSTM: one layer, d units per direction, averaged -> d (eq. 3, 5); packed by length.
  4. Positional embedding: the sinusoids of [18], added once to H_a and H_l (no scaling);
     the self-attention modules "are similar to the cross-attention module", so they read
     the same position-embedded sequences (the sinusoids have no parameters to share).
  5. Multi-head attention as in [18]: per-head scale 1/sqrt(d / heads) (eq. 9 writes
     sqrt(d) for one head), an output projection, separate weights for each direction
     (audio<-text owns W_a^Q and W_l^K, W_l^V; text<-audio the others) and each module.
     Both directions of a cross layer read the layer's inputs (a simultaneous update).
  6. Feed-forward: Linear(d, 4d) -> ReLU -> Linear(4d, d) as in [18]; one per modality.
  7. Dropout 0.1 (the Transformer's default; the paper names none) on attention weights,
     sub-layer outputs and the pooled vector before the FC.
  8. Classifier: ONE linear layer 4d -> C (the "FC" of Fig. 1), softmax in the loss.
  9. Training: no weight decay, no early stopping (patience None): train the paper's
     maximum epochs and keep the checkpoint best on the validation split.
 10. Sequential ablations ("cross + self (seq)", "self + cross (seq)"): blocks of one cross
     and one self layer in that order, repeated N times; the classifier pools the last
     block's two outputs (2d -> C). With N = 1, the paper's setting, layer- and module-wise
     stacking coincide. `no_self` / `no_cross` likewise pool the remaining module's pair.
 11. Unimodal ablations (Table 3 "w/o text" = `audio_only`, "w/o audio" = `text_only`): the
     paper says only that these use "only ... acoustic or textual information as input" (section
     3.5), not which network. Ours keeps every part that reads the one modality and drops every
     part that needs the other: that modality's encoder, the positional embedding, its own
     self-attention module (N layers, eq. 15-17), the global max-pool and ONE linear layer d -> C.
     The cross module (it needs both modalities) and the other modality's encoder and self module
     are not built, so the run loads only the feature it reads (`inputs`) and the model needs no
     dimension of the other. Why the self module and not the bare encoder: it is the unimodal
     half of MCSAN's own architecture, exactly what `no_cross` keeps of each modality, so the
     unimodal rows measure a modality through the network the full model gives it.
     `no_self` with a unimodal switch is refused (no module would remain); `no_cross` and `order`
     change nothing there (there is no cross module).

Ablations: no_self, no_cross, order = parallel | cross_self | self_cross, layers = N, audio_only, text_only.
Paper: IEMOCAP 7-class 10-fold WA 0.612 +/- 0.012, UA 0.560 +/- 0.019; MELD weighted F1 0.592.
Table 3 (IEMOCAP): w/o audio (text_only) WA 0.509 / UA 0.469, w/o text (audio_only) WA 0.491 / UA 0.404.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mer.errors import MerError
from mer.fuse.blocks import (ORDERS, BiLSTMEncoder, ClassifierHead, CrossSelfAttentionUnit, SelfAttentionStack,
                             SinusoidalPositions, masked_max)
from mer.fuse.models.base import FusionConfig, FusionOutput, UnimodalSwitches, register_model


@dataclass
class MCSANConfig(UnimodalSwitches, FusionConfig):
    audio_feature: str = "mfcc40"
    text_feature: str = "bert-base-uncased"  # word level; the paper used 300-d GloVe words
    demo_audio_feature: str = "mfcc40"
    demo_text_feature: str = "minilm-l6"
    audio_granularity: str = "frame"
    text_granularity: str = "word"
    max_audio_frames: Optional[int] = 1000
    # the paper z-normalises the MFCC only; its GloVe vectors go in as they are (`--set normalize_inputs=true`: both)
    normalize_inputs: Union[bool, dict] = field(default_factory=lambda: {"audio": True, "text": False})
    hidden: int = 128
    dropout: float = 0.1
    heads: int = 8
    layers: int = 1
    ff_dim: Optional[int] = None  # None: 4 * hidden
    kernel_size: int = 3  # conv and max-pool
    no_self: bool = False
    no_cross: bool = False
    order: str = "parallel"  # "parallel" | "cross_self" | "self_cross"
    # audio_only, text_only (UnimodalSwitches): Table 3's "w/o text" and "w/o audio"
    lr: float = 1e-3
    batch_size: int = 256
    max_epochs: int = 30
    per_corpus: dict = field(default_factory=lambda: {
        "demo": {"batch_size": 32, "max_epochs": 15},  # CPU-sized settings for the synthetic demo corpus
        "iemocap": {"lr": 1e-3, "max_epochs": 30},
        "meld": {"lr": 5e-4, "max_epochs": 20}})

    ablations: ClassVar[dict] = {"no_self": (True,), "no_cross": (True,), "order": ("cross_self", "self_cross"),
                                 "layers": (2, 3), "audio_only": (True,), "text_only": (True,)}
    paper_results: ClassVar[dict] = {  # Tables 1 and 3 (IEMOCAP 7-class 10-fold), Table 2 (MELD)
        "iemocap7-10fold": {"full": {"accuracy": 0.612, "ua": 0.560},
                            "no_self": {"accuracy": 0.605, "ua": 0.550}, "no_cross": {"accuracy": 0.596, "ua": 0.536},
                            "order=cross_self": {"accuracy": 0.606, "ua": 0.552},
                            "order=self_cross": {"accuracy": 0.602, "ua": 0.554},
                            "layers=2": {"accuracy": 0.601, "ua": 0.551}, "layers=3": {"accuracy": 0.595, "ua": 0.541},
                            "audio_only": {"accuracy": 0.491, "ua": 0.404},  # w/o text
                            "text_only": {"accuracy": 0.509, "ua": 0.469}},  # w/o audio
        "meld": {"full": {"weighted_f1": 0.592}}}

    def __post_init__(self):
        super().__post_init__()
        if self.order not in ORDERS:
            raise MerError(f"mcsan: order must be one of {ORDERS}, got {self.order!r}")
        if self.no_self and self.no_cross:
            raise MerError("mcsan: no_self and no_cross together leave no attention module")
        if self.no_self and len(self.modalities) == 1:
            raise MerError("mcsan: no_self in a unimodal variant leaves no attention module (it has no cross module)")
        if self.hidden % self.heads:
            raise MerError(f"mcsan: hidden {self.hidden} must be divisible by heads {self.heads}")

    @classmethod
    def tiny(cls) -> "MCSANConfig":
        return cls(hidden=8, heads=2, ff_dim=16, batch_size=4, max_epochs=2)


class ConvPoolLSTMEncoder(nn.Module):
    """MCSAN's audio encoder (eq. 1-3): 2 x [Conv1d -> MaxPool1d] -> BiLSTM, directions averaged."""

    def __init__(self, audio_dim: int, hidden: int, kernel_size: int):
        super().__init__()
        self.kernel_size = kernel_size
        self.convs = nn.ModuleList([nn.Conv1d(audio_dim, hidden, kernel_size, padding=kernel_size // 2),
                                    nn.Conv1d(hidden, hidden, kernel_size, padding=kernel_size // 2)])
        self.lstm = BiLSTMEncoder(hidden, hidden, merge="mean")

    def forward(self, audio: Tensor, audio_mask: Tensor) -> tuple[Tensor, Tensor]:
        features, mask = audio, audio_mask  # (batch, frames, audio_dim)
        for conv in self.convs:
            channels_first = conv((features * mask[..., None]).transpose(1, 2))  # (batch, hidden, frames)
            features, mask = self._masked_max_pool(channels_first, mask)  # (batch, frames / k, hidden)
        return self.lstm(features, mask), mask

    def _masked_max_pool(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        k = self.kernel_size
        x = x.masked_fill(~mask[:, None, :], torch.finfo(x.dtype).min)
        pooled = F.max_pool1d(x, k, k, ceil_mode=True).transpose(1, 2)  # (batch, ceil(frames / k), hidden)
        pooled_mask = F.max_pool1d(mask[:, None, :].float(), k, k, ceil_mode=True)[:, 0] > 0
        return pooled * pooled_mask[..., None], pooled_mask


@register_model("mcsan", MCSANConfig)
class MCSAN(nn.Module):
    def __init__(self, config: MCSANConfig, num_classes: int, audio_dim: int, text_dim: int):
        super().__init__()
        self.config, self.num_classes = config, num_classes
        d, modalities = config.hidden, config.modalities
        self.audio_encoder = ConvPoolLSTMEncoder(audio_dim, d, config.kernel_size) if "audio" in modalities else None
        self.text_encoder = BiLSTMEncoder(text_dim, d, merge="mean") if "text" in modalities else None
        self.positions = SinusoidalPositions(d)
        if len(modalities) == 2:
            self.attention = CrossSelfAttentionUnit(d, config.heads, config.layers, config.ff_dim, config.dropout,
                                                    order=config.order, use_cross=not config.no_cross,
                                                    use_self=not config.no_self)
            pooled_count = 2 * self.attention.num_outputs
        else:
            self.attention = SelfAttentionStack(d, config.heads, config.layers, config.ff_dim, config.dropout)
            pooled_count = 1
        self.classifier = ClassifierHead(pooled_count * d, num_classes, dropout=config.dropout)

    def forward(self, batch: dict) -> FusionOutput:
        pooled = [masked_max(hidden, mask) for hidden, mask in self.attend(self.encode(batch))]  # (batch, d) each
        return FusionOutput(self.classifier(torch.cat(pooled, dim=-1)))  # (batch, C)

    def encode(self, batch: dict) -> dict[str, tuple[Tensor, Tensor]]:
        """{modality: (sequence, mask)} of the modalities read: H_a (batch, frames / 9, d) and
        H_l (batch, words, d), positions added, padding zero."""
        encoded = {}
        if self.audio_encoder is not None:
            encoded["audio"] = self.audio_encoder(batch["audio"], batch["audio_mask"])
        if self.text_encoder is not None:
            encoded["text"] = self.text_encoder(batch["text"], batch["text_mask"]), batch["text_mask"]
        return {modality: (self.positions(hidden) * mask[..., None], mask)
                for modality, (hidden, mask) in encoded.items()}

    def attend(self, encoded: dict[str, tuple[Tensor, Tensor]]) -> list[tuple[Tensor, Tensor]]:
        """The sequences the classifier max-pools, with their masks: (H_a^c, H_l^c, H_a^s, H_l^s) or the
        pair(s) an ablation keeps; a unimodal variant: its modality's self-attention output alone."""
        if len(encoded) == 1:
            ((hidden, mask),) = encoded.values()
            return [(self.attention(hidden, mask), mask)]
        (audio, audio_mask), (text, text_mask) = encoded["audio"], encoded["text"]
        pairs = self.attention(audio, audio_mask, text, text_mask)
        return [found for audio_out, text_out in pairs for found in ((audio_out, audio_mask), (text_out, text_mask))]
