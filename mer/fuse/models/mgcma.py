"""MGCMA: Multi-Granularity Cross-Modal Alignment (Wang, Zhao, Sun, Wang, Zhou, Qin; Nankai
University, 2024). papers/mgcma-multi-granularity-cross-modal-alignment.txt.

    audio (wav2vec2-base frames, 768) -> Linear -> LayerNorm -> x_s
    text (bert-base-uncased tokens, 768) -> Linear -> LayerNorm -> x_t
    DAM  per modality: MHA(x) (12 heads) -> split -> mu = LN(x + Linear(.)), sigma = softplus(LN(Linear(.)))
         L_DA = symmetric InfoNCE over the batch, Sim = -p * W2(N_s, N_t) + q, tau = 0.07 (eq. 4-8)
    TAM  6 x [self-attention per modality -> cross-attention s<->t] on the mu sequences -> x~_s, x~_t
    IAM  L_IA = symmetric InfoNCE of normalised pooled x~_s . x~_t, tau = 0.07 (eq. 9-11)
    masked mean of x~_s and x~_t -> concat (2d) -> Dropout -> Linear -> C;  L = L_DA + L_IA + L_CE (eq. 12)

Defaults (paper, section III-B): d = 768, 12 heads, 6 TAM blocks, batch 4, at most 100
epochs, Adam lr 1e-5, tau = 0.07. Paper: IEMOCAP 4-class leave-one-session-out
WA 78.87 / UA 80.24.

Frozen encoders: the paper fine-tunes wav2vec2-base and BERT-base with the alignment losses (lr
1e-5, batch 4: a fine-tuning setting); we read frozen features from the cache, so the losses can
only move the layers above them (decision 1). Expect results below the paper's.

Where the paper is vague, this implementation decides:
  1. Input projection: Linear(input dim -> hidden) -> LayerNorm per modality, always (also at
     768 -> 768). The paper fine-tunes wav2vec2 and BERT end to end (lr 1e-5, batch 4) and
     needs no projection; we read frozen cached features, so this trainable layer stands in
     for the encoders' adaptable top (LayerNorm: both encoders end in one). It also maps the
     demo's widths (logmfb80-d2 240-d, minilm-l6 384-d) to d, and it keeps the module orders
     that put IAM first meaningful (IAM on frozen features would be a constant).
     `project_inputs=false` drops it (input widths must then equal hidden).
  2. No positional encoding is added: wav2vec2 and BERT outputs already encode position,
     and the paper adds none.
  3. Distribution constructor (Fig. 2, after MAP [11], whose constructor it follows):
     multi-head self-attention with output projection W^o (eq. 1-3; padded keys masked);
     the Concat result is split along channels into two halves, the mu branch and the sigma
     branch. Each branch: Linear(d/2 -> d), dropout, LayerNorm ("normalization layers are
     omitted in the diagram"); the residual add of the constructor's input x goes on the mu
     branch only, where MAP puts it ("Linear layers and residual connections" names no branch):
     mu is the feature itself, refined, while sigma is its uncertainty, a quantity of another
     kind that a copy of x would tie to mu. sigma =
     softplus(branch) + 1e-6: softplus rather than MAP's exp(log sigma) because W2 squares
     sigma differences and exp makes them (and their gradients) explode; the 1e-6 floor keeps
     sigma > 0 where softplus underflows. Outputs at padded positions are zero.
  4. Utterance distribution: masked mean over time of mu and of sigma (diagonal Gaussian
     N(mean mu, diag(mean sigma)^2)); the paper says only "distributions of features".
  5. W2 (eq. 4) = sum over dims of (mu1-mu2)^2 + (sigma1-sigma2)^2, not normalised by d.
     Sim = -p * W + q (eq. 5): p = exp(log_p) + 1e-8 so p > 0 always; p starts at 1 / hidden
     (`p_init`), so that p * W is a per-dimension mean and Sim / tau starts in a trainable
     range at any width; q starts at 0. q is a shift of every logit of the InfoNCE softmax,
     so it cancels and gets a zero gradient: it is kept only because eq. 5 has it.
  6. IAM (eq. 9-11): x~ pooled by masked mean over time, L2-normalised, then the dot
     product / tau. The paper writes a plain dot product; tau = 0.07 is CLIP's [16]
     temperature for cosine similarities, and raw dot products of 768-d LayerNorm outputs
     (~ +/- 10^2) / 0.07 saturate the softmax. `normalize_instances=false` gives the literal
     dot product.
  7. Contrastive batches: an item whose audio or text is all padding (an empty transcript)
     has no representation to align and is left out of both contrastive losses. With fewer
     than 2 items left (batch size 1) InfoNCE is undefined (a single pair is trivially
     "matched"): the loss is 0 (a zero kept on the graph, so a DDP wrapper sees every
     parameter used).
  8. TAM blocks: blocks.CrossSelfAttentionUnit(order="self_cross"): per block, post-norm
     self-attention per modality (Add & LayerNorm, feed-forward 4d, Add & LayerNorm), then a
     cross layer where speech queries text and text queries speech, both reading the block's
     self-attention outputs (the paper's Q~, K~, V~). The feed-forward sub-layers (Transformer
     standard; the paper names only the attentions) can be dropped with ff_dim=0.
  9. Classifier ("cross-entropy at the end", on the representation IAM aligns): masked mean
     of the last speech and text sequences, concatenated (2d) -> Dropout -> Linear -> C
     (`classifier_hidden` adds a hidden ReLU layer). Dropout 0.1 throughout (none named).
 10. Training: the paper names no early stopping, validation split or weight decay: patience
     None (all 100 epochs, the checkpoint best on `monitor` kept), weight decay 0.
 11. Module order (Table III): `order` names the sequence of the three modules. DAM maps a
     sequence to its mu sequence and adds L_DA; TAM maps the pair of sequences through the
     blocks; IAM adds L_IA on the current pooled sequences and maps nothing. The classifier
     reads whatever sequence the last module leaves (mu when DAM is last).
     dam_tam_iam = S0 (default), dam_iam_tam = S5, iam_dam_tam = S6, iam_tam_dam = S7,
     tam_dam_iam = S8, tam_iam_dam = S9.
 12. Ablations (Table II): no_dam removes the constructors, p, q and L_DA (TAM then reads the
     projected inputs); no_tam removes the blocks (IAM and the classifier read the mu
     sequences); no_iam removes L_IA only (nothing of IAM has parameters). All three = S4.

Losses in FusionOutput.aux_losses, already weighted (weights default 1, eq. 12):
"distribution_alignment" (L_DA) and "instance_alignment" (L_IA); absent when ablated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mer.errors import MerError
from mer.fuse.blocks import ClassifierHead, CrossSelfAttentionUnit, MultiHeadAttention, masked_mean, symmetric_info_nce
from mer.fuse.models.base import FusionConfig, FusionOutput, register_model

MODULE_ORDERS = ("dam_tam_iam", "dam_iam_tam", "iam_dam_tam", "iam_tam_dam", "tam_dam_iam", "tam_iam_dam")  # S0, S5-S9
SIGMA_FLOOR = 1e-6
P_FLOOR = 1e-8  # exp(log_p) underflows to 0 below log_p ~ -104


@dataclass
class MGCMAConfig(FusionConfig):
    audio_feature: str = "wav2vec2-base"
    text_feature: str = "bert-base-uncased"  # token level (the extractor's default granularity)
    demo_audio_feature: str = "logmfb80-d2"
    demo_text_feature: str = "minilm-l6"  # token level with --set minilm-l6.granularity=token
    audio_granularity: str = "frame"
    text_granularity: str = "token"
    # the contrastive losses take their negatives from the batch: length buckets would make every
    # negative as long as its positive, a shortcut the alignment could learn
    batching: str = "random"
    hidden: int = 768
    dropout: float = 0.1
    heads: int = 12
    blocks: int = 6
    ff_dim: Optional[int] = None  # TAM feed-forward; None: 4 * hidden, 0: none
    classifier_hidden: Optional[int] = None  # None: one linear layer
    project_inputs: bool = True
    temperature: float = 0.07
    p_init: Optional[float] = None  # None: 1 / hidden
    normalize_instances: bool = True
    distribution_alignment_weight: float = 1.0
    instance_alignment_weight: float = 1.0
    no_dam: bool = False
    no_tam: bool = False
    no_iam: bool = False
    order: str = "dam_tam_iam"
    lr: float = 1e-5
    weight_decay: float = 0.0
    batch_size: int = 4
    max_epochs: int = 100
    patience: Optional[int] = None

    # CPU-sized settings for the synthetic demo corpus (400 utterances); the paper's otherwise
    # (text_granularity: the demo cache holds MiniLM words; tokens are read when extracted too)
    per_corpus: dict = field(default_factory=lambda: {"demo": {"hidden": 128, "heads": 4, "blocks": 2, "lr": 3e-4, "batch_size": 16, "max_epochs": 12, "patience": 5, "text_granularity": "token,word"}})
    ablations: ClassVar[dict] = {"no_dam": (True,), "no_tam": (True,), "no_iam": (True,),
                                 "order": tuple(order for order in MODULE_ORDERS if order != "dam_tam_iam")}
    paper_results: ClassVar[dict] = {"iemocap-loso": {  # Tables I-III
        "full": {"accuracy": 0.7887, "ua": 0.8024}, "no_dam": {"accuracy": 0.7778, "ua": 0.7907},
        "no_tam": {"accuracy": 0.7800, "ua": 0.7914}, "no_iam": {"accuracy": 0.7830, "ua": 0.7938},
        "no_dam+no_iam+no_tam": {"accuracy": 0.7620, "ua": 0.7762},
        "order=dam_iam_tam": {"accuracy": 0.7876, "ua": 0.7948}, "order=iam_dam_tam": {"accuracy": 0.7760, "ua": 0.7860},
        "order=iam_tam_dam": {"accuracy": 0.7871, "ua": 0.7981}, "order=tam_dam_iam": {"accuracy": 0.7733, "ua": 0.7875},
        "order=tam_iam_dam": {"accuracy": 0.7688, "ua": 0.7843}}}

    def __post_init__(self):
        super().__post_init__()
        if self.sample_unit != "utterance":
            raise MerError("mgcma: reads frame and token sequences of one utterance; sample_unit must be 'utterance'")
        if self.order not in MODULE_ORDERS:
            raise MerError(f"mgcma: order must be one of {MODULE_ORDERS}, got {self.order!r}")
        if self.hidden % self.heads or self.hidden % 2:
            raise MerError(f"mgcma: hidden {self.hidden} must be even and divisible by heads {self.heads}")
        if self.blocks < 1:
            raise MerError(f"mgcma: blocks must be >= 1, got {self.blocks} (use no_tam=true to drop TAM)")
        if self.temperature <= 0 or (self.p_init is not None and self.p_init <= 0):
            raise MerError("mgcma: temperature and p_init must be > 0")

    @classmethod
    def tiny(cls) -> "MGCMAConfig":
        return cls(hidden=8, heads=2, blocks=1, ff_dim=16, batch_size=4, max_epochs=2)


# ----------------------------------------------------------------------------- distributions


def wasserstein2_squared(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> Tensor:
    """Pairwise squared 2-Wasserstein distance of diagonal Gaussians (eq. 4):
    (N, d) x (M, d) -> (N, M), W[i, j] = |mu1_i - mu2_j|^2 + |sigma1_i - sigma2_j|^2."""
    return ((mu1[:, None] - mu2[None]) ** 2).sum(-1) + ((sigma1[:, None] - sigma2[None]) ** 2).sum(-1)


class DistributionConstructor(nn.Module):
    """Fig. 2: multi-head self-attention, its output split into a mu branch (Linear + residual +
    LayerNorm) and a sigma branch (Linear + LayerNorm, no residual, as MAP); sigma made positive by softplus. (batch, time, d) ->
    mu, sigma (batch, time, d), zero at padded positions."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.half = dim // 2
        self.attention = MultiHeadAttention(dim, heads, dropout)
        self.mu_linear = nn.Linear(self.half, dim)
        self.sigma_linear = nn.Linear(dim - self.half, dim)
        self.mu_norm = nn.LayerNorm(dim)
        self.sigma_norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        attended = self.attention(x, x, mask)  # (batch, time, d): Concat W^o, eq. 3
        mu_branch, sigma_branch = attended[..., : self.half], attended[..., self.half:]
        mu = self.mu_norm(x + self.dropout(self.mu_linear(mu_branch)))
        sigma = F.softplus(self.sigma_norm(self.dropout(self.sigma_linear(sigma_branch)))) + SIGMA_FLOOR
        real = mask[..., None]
        return mu * real, sigma * real


class InputProjection(nn.Module):
    """Linear -> LayerNorm, zero at padded positions (decision 1)."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, dim), nn.LayerNorm(dim))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        return self.net(x) * mask[..., None]


# ----------------------------------------------------------------------------- the model


@register_model("mgcma", MGCMAConfig)
class MGCMA(nn.Module):
    def __init__(self, config: MGCMAConfig, num_classes: int, audio_dim: int, text_dim: int):
        super().__init__()
        self.config, self.num_classes = config, num_classes
        d = config.hidden
        if config.project_inputs:
            self.audio_input, self.text_input = InputProjection(audio_dim, d), InputProjection(text_dim, d)
        elif audio_dim != d or text_dim != d:
            raise MerError(f"mgcma: project_inputs=false needs input widths equal to hidden {d}; "
                           f"got audio {audio_dim}, text {text_dim}")
        else:
            self.audio_input = self.text_input = None
        if not config.no_dam:
            self.audio_constructor = DistributionConstructor(d, config.heads, config.dropout)
            self.text_constructor = DistributionConstructor(d, config.heads, config.dropout)
            p_init = config.p_init if config.p_init is not None else 1.0 / d
            self.log_p = nn.Parameter(torch.tensor(math.log(p_init)))
            self.q = nn.Parameter(torch.tensor(0.0))
        self.token_alignment = None if config.no_tam else CrossSelfAttentionUnit(
            d, config.heads, config.blocks, config.ff_dim, config.dropout, order="self_cross")
        self.classifier = ClassifierHead(2 * d, num_classes, config.classifier_hidden, config.dropout)

    @property
    def p(self) -> Tensor:
        return self.log_p.exp() + P_FLOOR

    def forward(self, batch: dict) -> FusionOutput:
        config = self.config
        audio, audio_mask = batch["audio"], batch["audio_mask"]
        text, text_mask = batch["text"], batch["text_mask"]
        if self.audio_input is not None:
            audio, text = self.audio_input(audio, audio_mask), self.text_input(text, text_mask)  # (batch, time, d)
        else:
            audio, text = audio * audio_mask[..., None], text * text_mask[..., None]
        paired = audio_mask.any(1) & text_mask.any(1)  # items the contrastive losses may use (decision 7)
        aux_losses = {}
        for module in config.order.split("_"):
            if module == "dam" and not config.no_dam:
                audio_mu, audio_sigma = self.audio_constructor(audio, audio_mask)
                text_mu, text_sigma = self.text_constructor(text, text_mask)
                audio_pooled = masked_mean(audio_mu, audio_mask), masked_mean(audio_sigma, audio_mask)  # (batch, d) x 2
                text_pooled = masked_mean(text_mu, text_mask), masked_mean(text_sigma, text_mask)
                loss = self.distribution_alignment(*audio_pooled, *text_pooled, paired)
                aux_losses["distribution_alignment"] = config.distribution_alignment_weight * loss
                audio, text = audio_mu, text_mu  # DAM -> TAM reads the means, no sampling
            elif module == "tam" and not config.no_tam:
                [(audio, text)] = self.token_alignment(audio, audio_mask, text, text_mask)
            elif module == "iam" and not config.no_iam:
                loss = self.instance_alignment(masked_mean(audio, audio_mask), masked_mean(text, text_mask), paired)
                aux_losses["instance_alignment"] = config.instance_alignment_weight * loss
        pooled = torch.cat([masked_mean(audio, audio_mask), masked_mean(text, text_mask)], dim=-1)  # (batch, 2d)
        return FusionOutput(self.classifier(pooled), aux_losses=aux_losses)

    def distribution_alignment(self, audio_mu: Tensor, audio_sigma: Tensor, text_mu: Tensor, text_sigma: Tensor,
                               paired: Tensor) -> Tensor:
        """L_DA (eq. 5-8) over the pooled distributions (batch, d) of the paired items."""
        if int(paired.sum()) < 2:
            return _zero(audio_mu, audio_sigma, text_mu, text_sigma, self.log_p, self.q)
        distance = wasserstein2_squared(audio_mu[paired], audio_sigma[paired], text_mu[paired], text_sigma[paired])
        similarity = -self.p * distance + self.q  # (N, N), [i, j] = Sim(N_s_i, N_t_j)
        return symmetric_info_nce(similarity, self.config.temperature)

    def instance_alignment(self, audio_pooled: Tensor, text_pooled: Tensor, paired: Tensor) -> Tensor:
        """L_IA (eq. 9-11) over the pooled sequences (batch, d) of the paired items."""
        if int(paired.sum()) < 2:
            return _zero(audio_pooled, text_pooled)
        audio_pooled, text_pooled = audio_pooled[paired], text_pooled[paired]
        if self.config.normalize_instances:
            audio_pooled, text_pooled = F.normalize(audio_pooled, dim=-1), F.normalize(text_pooled, dim=-1)
        return symmetric_info_nce(audio_pooled @ text_pooled.t(), self.config.temperature)


def _zero(*tensors: Tensor) -> Tensor:
    """0, still on the graph of `tensors` (every parameter gets a (zero) gradient)."""
    return sum(tensor.sum() for tensor in tensors) * 0.0
