"""CM-RoBERTa: Cross-Modal RoBERTa fusion of text and speech (Luo, Phan, Reiss; ICASSP 2023).
papers/cm-roberta-cross-modal-fusion-text-speech.txt.

DIALOGUE mode (config.sample_unit == "dialogue"): one sample is one dialogue, a sequence of
utterance-level vectors in turn order; the model predicts one label per utterance.

    x_a (utterance audio vectors)  -> BiLSTM over the dialogue -> H_a  (U x d)
    x_t (utterance text vectors)   -> BiLSTM over the dialogue -> H_t  (U x d)
    H_a, H_t -> SCA unit: 2 x cross-attention (a<-t, t<-a) + FF   -> H_a^c, H_t^c   } in PARALLEL
                          2 x self-attention (per modality) + FF   -> H_a^s, H_t^s   }
    [H_a ; H_t] (per utterance, 2d) -> BiLSTM over the dialogue -> FF -> H_mid       (eq. 10)
    x_a -> Linear -> LayerNorm -> H_a^r ;  x_t -> Linear -> LayerNorm -> H_t^r        (residual branch)
    concat(H_a^c, H_t^c, H_a^s, H_t^s, H_mid, H_a^r, H_t^r) (7d) -> FC -> ReLU -> FC -> C, per utterance

Defaults (paper, section 4.3): d = 128 hidden units, Adam lr 1e-4, L2 weight decay 3e-4,
batch 32 dialogues, at most 200 epochs, early stop after 15 epochs without a lower
validation loss, cross-entropy. Features (section 3.1): audio = openSMILE emo_large
functionals (6552) + OpenL3 embedding (6144), concatenated; text = RoBERTa-large, last four
layers concatenated (4096), pooled per utterance. Ours: `opensmile-conf:emo_large.conf+
openl3-6144-mean` and `roberta-large-last4`; demo: `opensmile-egemaps` and `minilm-l6` pooled
per utterance by the loader.

Frozen text encoder: the paper fine-tunes RoBERTa-large inside the model (section 3.1, "We
fine-tuned the pre-trained RoBERTa Large model"; the audio is what helps that fine-tuning, hence
the name). We do not: the RoBERTa features are read, frozen, from the cache, and only the fusion
layers above them train. Expect the text side, and the whole model, to fall short of the paper's.

Where the paper is vague, this implementation decides:
  1. Input encoders: one BiLSTM layer per modality over the utterances of the dialogue
     (packed by the utterance mask), d units per direction, forward and backward states
     AVERAGED -> d, as in MCSAN, whose SCA unit this one follows, so that every stream the
     SCA unit and the classifier see is d wide. ("two stacked LSTM layers" in section 3.2 is
     read as the two per-modality LSTMs of Fig. 2; `encoder_layers` stacks more.)
  2. SCA unit = blocks.CrossSelfAttentionUnit(order="parallel", layers=2): the cross module
     and the two self modules all read H_a, H_t; each layer is post-norm
     [attention, Add & LayerNorm, FF, Add & LayerNorm]. Attention runs over the WHOLE
     dialogue (no causal mask): "distribute the self-attention weights over the entire
     dialog sequence". No positional embedding: the paper adds none, and the BiLSTM
     states already carry the turn order.
  3. Residual ADD, not the paper's concatenation: eq. 3-6 and 8-9 write LayerNorm(H (+) X)
     with (+) = concatenation. Taken literally every sub-layer doubles the width (d -> 2d
     -> 4d per layer, 16d after the 2 stacked layers), and neither LayerNorm nor the second
     layer's projections could keep a fixed size; the paper cites Vaswani et al. [28], whose
     sub-layer is Add & Norm. We add, so all stacked layers are d -> d.
  4. Cross-attention pairing: eq. 3 pairs H_a with the text-query result of eq. 2. That is
     dimensionally possible only because both sequences have U positions here; we follow
     [28] and MCSAN: the residual stream is the QUERY's, H_a^c = LN(H_a + Attn(Q_a, K_t, V_t))
     and likewise for text. Both directions of a layer read that layer's inputs.
  5. Heads: 1 (eq. 1, 2 and 7 are single-head, scaled by 1/sqrt(d)); `heads` overrides.
     Feed-forward: Linear(d, 4d) -> ReLU -> Linear(4d, d) as in [28] (`ff_dim`).
  6. Mid-level fusion (eq. 10) and Fig. 2's caption ("the first two parallel LSTM are
     exactly the same as the last two parallel LSTM"): the per-modality LSTMs of the
     mid-level branch ARE the input encoders, so H_a^m = H_a and H_t^m = H_t (no second
     pair of encoders; they get gradients from both branches). Their outputs are
     concatenated per utterance ([H_a ; H_t], 2d) and "combined via a bidirectional LSTM":
     one joint BiLSTM over the dialogue, input 2d, d units per direction, averaged -> d,
     then FF (the d -> 4d -> d feed-forward of item 5, no residual, as eq. 10 writes none).
     The encoders themselves cannot take the concatenation: their input widths are the raw
     feature widths (12696 / 4096), not 2d.
  7. Residual branch: each modality's ORIGINAL input vector (the loader's z-normalised
     x_a / x_t, before any LSTM) -> Linear(dim, d) -> LayerNorm(d), per utterance (no
     dialogue context) -> H_a^r, H_t^r.
  8. Classifier, "two fully-connected layers": Linear(7d, d) -> ReLU -> Dropout ->
     Linear(d, C), applied to every utterance; cross-entropy (padded utterances carry
     label -100 and are ignored). Logits at padded utterances are zero.
  9. Dropout 0.1 (the paper names none): attention weights and sub-layer outputs of the SCA
     unit, inside the mid-level FF, and between the two FC layers.
 10. `no_sca` (Table 1, "without SCA unit") drops H^c and H^s: the classifier reads
     (H_mid, H_a^r, H_t^r), 3d. `audio_only` / `text_only` build the paper's unimodal
     models (Table 1's note: "LSTM layer, and residual block"): the classifier reads
     (H_m, H_m^r), 2d, and the other modality is never read.
 11. Weight decay 3e-4 is the optimiser's L2 term (torch Adam's coupled weight_decay), as
     "L2 weight decay" in section 4.3 says; early stopping monitors the validation loss.

Ablations: no_sca, audio_only, text_only.
Paper, MELD 7-class weighted F1 (Table 1): CM-RoBERTa 66.28, without SCA 65.66, audio only
43.10, text only 63.83. Per class (Table 2, bimodal): neutral 78.67, surprise 63.42, fear
28.7, sadness 42.19, joy 63.65, disgust 30.91, anger 53.56. Audio features (Table 3,
audio-only WF1): without openSMILE 37.3, without OpenL3 41.3, both 43.1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Optional

import torch
from torch import Tensor, nn

from mer.errors import MerError
from mer.fuse.blocks import BiLSTMEncoder, ClassifierHead, CrossSelfAttentionUnit, FeedForward
from mer.fuse.models.base import FusionConfig, FusionOutput, UnimodalSwitches, register_model


@dataclass
class CMRoBERTaConfig(UnimodalSwitches, FusionConfig):
    audio_feature: str = "opensmile-conf:emo_large.conf+openl3-6144-mean"  # 6552 + 6144
    text_feature: str = "roberta-large-last4"  # 4 x 1024, pooled per utterance
    demo_audio_feature: str = "opensmile-egemaps"
    demo_text_feature: str = "minilm-l6"  # pooled per utterance by the loader
    sample_unit: str = "dialogue"
    # utterance vectors; frame/token/word rows are mean-pooled per utterance by the loader (token rows
    # pooled are exactly the extractor's utterance mean, so tokens come before words)
    audio_granularity: str = "utterance,frame"
    text_granularity: str = "utterance,token,word"
    hidden: int = 128
    dropout: float = 0.1
    heads: int = 1
    sca_layers: int = 2
    ff_dim: Optional[int] = None  # None: 4 * hidden
    encoder_layers: int = 1  # BiLSTM layers per modality
    no_sca: bool = False  # audio_only, text_only: UnimodalSwitches
    lr: float = 1e-4
    weight_decay: float = 3e-4
    batch_size: int = 32  # dialogues
    max_epochs: int = 200
    patience: Optional[int] = 15
    monitor: str = "loss"

    # CPU-sized settings for the synthetic demo corpus (400 utterances); the paper's otherwise. The paper's lr:
    # on the demo's dev session, mean UA over seeds 0-2, 1e-4 0.795, 3e-4 0.793, 1e-3 0.782 (docs/models.md)
    per_corpus: dict = field(default_factory=lambda: {"demo": {"batch_size": 4, "max_epochs": 60}})
    ablations: ClassVar[dict] = {"no_sca": (True,), "audio_only": (True,), "text_only": (True,)}
    paper_results: ClassVar[dict] = {"meld": {  # Table 1
        "full": {"weighted_f1": 0.6628}, "no_sca": {"weighted_f1": 0.6566},
        "audio_only": {"weighted_f1": 0.4310}, "text_only": {"weighted_f1": 0.6383}}}

    def __post_init__(self):
        super().__post_init__()
        if self.sample_unit != "dialogue":
            raise MerError(f"cm-roberta: sample_unit must be 'dialogue' (it models the utterances of a "
                           f"conversation), got {self.sample_unit!r}")
        if self.hidden % self.heads:
            raise MerError(f"cm-roberta: hidden {self.hidden} must be divisible by heads {self.heads}")
        if self.sca_layers < 1 or self.encoder_layers < 1:
            raise MerError("cm-roberta: sca_layers and encoder_layers must be at least 1")

    @classmethod
    def tiny(cls) -> "CMRoBERTaConfig":
        return cls(hidden=8, ff_dim=16, batch_size=4, max_epochs=2)


class ResidualProjection(nn.Module):
    """The residual branch of one modality: its original utterance vectors -> Linear -> LayerNorm."""

    def __init__(self, input_dim: int, hidden: int):
        super().__init__()
        self.linear = nn.Linear(input_dim, hidden)
        self.norm = nn.LayerNorm(hidden)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:  # x (batch, utterances, input_dim)
        return self.norm(self.linear(x)) * mask[..., None]  # (batch, utterances, hidden)


@register_model("cm-roberta", CMRoBERTaConfig)
class CMRoBERTa(nn.Module):
    def __init__(self, config: CMRoBERTaConfig, num_classes: int, audio_dim: int, text_dim: int):
        super().__init__()
        self.config, self.num_classes = config, num_classes
        d, modalities = config.hidden, config.modalities
        input_dims = {"audio": audio_dim, "text": text_dim}
        self.encoders = nn.ModuleDict({m: BiLSTMEncoder(input_dims[m], d, config.encoder_layers, merge="mean")
                                       for m in modalities})
        self.residuals = nn.ModuleDict({m: ResidualProjection(input_dims[m], d) for m in modalities})
        bimodal = len(modalities) == 2
        self.sca = None
        if bimodal and not config.no_sca:
            self.sca = CrossSelfAttentionUnit(d, config.heads, config.sca_layers, config.ff_dim, config.dropout,
                                              order="parallel")
        self.mid_lstm = BiLSTMEncoder(2 * d, d, merge="mean") if bimodal else None
        self.mid_feed_forward = FeedForward(d, config.ff_dim or 4 * d, config.dropout) if bimodal else None
        self.part_names = self._part_names()
        self.classifier = ClassifierHead(len(self.part_names) * d, num_classes, hidden=d, dropout=config.dropout)

    def _part_names(self) -> list[str]:
        if len(self.config.modalities) == 1:
            (modality,) = self.config.modalities
            return [modality, f"{modality}_residual"]
        sca = [] if self.sca is None else ["audio_cross", "text_cross", "audio_self", "text_self"]
        return sca + ["mid", "audio_residual", "text_residual"]

    def parts(self, batch: dict) -> dict[str, Tensor]:
        """The representations the classifier concatenates, in the paper's order, each
        (batch, utterances, d) and zero at padded utterances: audio_cross, text_cross,
        audio_self, text_self (H^c, H^s), mid (H_mid), audio_residual, text_residual (H^r);
        `audio`/`text` (the encoder output H_m) in the unimodal variants."""
        mask = batch["utterance_mask"]  # (batch, utterances)
        encoded = {m: self.encoders[m](batch[m], mask) for m in self.encoders}  # H_a, H_t (batch, U, d)
        residual = {f"{m}_residual": self.residuals[m](batch[m], mask) for m in self.residuals}
        if self.mid_lstm is None:
            return {**encoded, **residual}
        found = {}
        if self.sca is not None:
            (audio_cross, text_cross), (audio_self, text_self) = self.sca(encoded["audio"], mask,
                                                                          encoded["text"], mask)
            found.update(audio_cross=audio_cross, text_cross=text_cross, audio_self=audio_self, text_self=text_self)
        joint = self.mid_lstm(torch.cat([encoded["audio"], encoded["text"]], dim=-1), mask)  # (batch, U, d)
        found["mid"] = self.mid_feed_forward(joint) * mask[..., None]
        found.update(residual)
        return found

    def forward(self, batch: dict) -> FusionOutput:
        parts = self.parts(batch)
        features = torch.cat([parts[name] for name in self.part_names], dim=-1)  # (batch, U, parts * d)
        logits = self.classifier(features) * batch["utterance_mask"][..., None]  # (batch, U, C)
        return FusionOutput(logits)
