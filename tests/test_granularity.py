"""The granularity contract: each model declares what it reads per input; `mer fuse` picks the
cached config of that granularity, refuses another with the command that makes the right one, and
still asks when several configs fit. Toy caches (hand-written specs) and, end to end, a tiny
RoBERTa extracted at token level as `roberta-base` that MCFN must not read as words."""

import json
import shlex

import numpy as np
import pytest
from click.testing import CliRunner

from mer.cache.corpus import SOURCE_FILE
from mer.cache.reader import FeatureCache
from mer.cache.writer import FeatureWriter
from mer.cli import cli
from mer.cache.corpus import merge_corpus_manifest
from mer.data.utterance import Utterance
from mer.errors import MerError
from mer.extract.base import FeatureSpec
from mer.fuse.models import make_config, model_names
from mer.fuse.models.base import accepted_granularities
from mer.fuse.run import model_features, resolve_features
from tests.fixtures.tiny_models import save_tiny_roberta
from tests.test_fuse_cli import tiny_settings

CORPUS = "toy"
IDS = [f"toy/u{i}" for i in range(6)]


def text_spec(granularity, layers=(4,), name="roberta-base"):
    config = {"granularity": granularity, "layers": list(layers)}
    return FeatureSpec(name, "text", granularity, 3, None, "float16", config,
                       options={"name": name, "granularity": granularity})


def audio_spec(name, granularity):
    return FeatureSpec(name, "audio", granularity, 3, 100.0 if granularity == "frame" else None, "float16", {})


def write(root, spec):
    writer = FeatureWriter(root, CORPUS, spec)
    claim = writer.claim(IDS)
    shape = (3,) if spec.granularity == "utterance" else (4, 3)
    arrays = {i: np.ones(shape, np.float32) for i in claim.ids}
    writer.commit(claim, writer.write_temp(claim, arrays), {})
    return spec.config_hash


@pytest.fixture
def root(tmp_path):
    merge_corpus_manifest(tmp_path, CORPUS, [Utterance(id=i, corpus=CORPUS) for i in IDS])
    (tmp_path / CORPUS / SOURCE_FILE).write_text(json.dumps({"dataset": "demo", "root": "/data/toy", "options": {}}))
    write(tmp_path, audio_spec("logmfb80-d2", "frame"))
    return tmp_path


def resolve(root, model, **settings):
    config = make_config(model, CORPUS, **{k: v for k, v in settings.items() if "feature" not in k})
    features = model_features(model, config, CORPUS, {"audio_feature": "logmfb80-d2", "text_feature": "roberta-base",
                                                      **settings})
    return resolve_features(FeatureCache(root), CORPUS, model, config, features)


def test_every_model_declares_a_known_granularity_and_the_papers_are_honoured():
    for name in model_names():
        for role in ("audio", "text"):
            accepted_granularities(make_config(name), role)  # raises on an unknown one
    declared = {name: accepted_granularities(make_config(name), "text") for name in ("mcsan", "mcfn", "mfdr", "mgcma")}
    assert declared == {"mcsan": ("word",), "mcfn": ("word",), "mfdr": ("word",), "mgcma": ("token",)}
    assert accepted_granularities(make_config("cm-roberta"), "text")[0] == "utterance"
    assert accepted_granularities(make_config("concat"), "text") == ()
    with pytest.raises(MerError, match="--set text_granularity=any"):
        make_config("mcfn", text_granularity="words")


def test_token_level_text_is_refused_with_the_command_that_makes_words(root):
    write(root, text_spec("token"))
    with pytest.raises(MerError) as refused:
        resolve(root, "mcfn")
    message = str(refused.value)
    assert "\n" not in message and "mcfn reads word-level text, but roberta-base is cached at token level" in message
    command = message.split("run `", 1)[1].split("`")[0]
    assert command == (f"mer extract --dataset demo --root /data/toy --features roberta-base --cache {root} "
                       "--set roberta-base.granularity=word")
    assert resolve(root, "mgcma")["text"] == "roberta-base"  # MGCMA reads tokens: the name as given
    assert resolve(root, "concat")["text"] == "roberta-base"  # baselines read anything


def test_a_missing_text_feature_is_asked_for_at_the_needed_granularity(root):
    with pytest.raises(MerError, match="--features roberta-base --cache .* --set roberta-base.granularity=word`"):
        resolve(root, "mcsan", audio_feature="logmfb80-d2")


def test_the_config_of_the_needed_granularity_is_picked_among_several(root):
    token, word = write(root, text_spec("token")), write(root, text_spec("word"))
    assert resolve(root, "mcfn")["text"] == f"roberta-base@{word}"
    assert resolve(root, "mgcma")["text"] == f"roberta-base@{token}"
    assert resolve(root, "cm-roberta")["text"] == f"roberta-base@{token}"  # tokens pooled = the utterance mean
    utterance = write(root, text_spec("utterance"))
    assert resolve(root, "cm-roberta")["text"] == f"roberta-base@{utterance}"
    with pytest.raises(MerError, match="several configs concat can read"):
        resolve(root, "concat")  # anything fits: which one is the user's choice


def test_several_configs_of_the_needed_granularity_still_ask_for_one(root):
    write(root, text_spec("token"))
    last, all_layers = write(root, text_spec("word")), write(root, text_spec("word", layers=(0, 1, 2, 3, 4)))
    with pytest.raises(MerError) as asked:
        resolve(root, "mcfn")
    message = str(asked.value)
    assert f"roberta-base@{last} (word)" in message and f"roberta-base@{all_layers} (word)" in message
    suggested = message.split("--set ", 1)[1]  # pasted as given, it resolves
    key, value = suggested.split("=", 1)
    assert resolve(root, "mcfn", **{key: value})["text"] == value


def test_audio_of_another_granularity_names_the_models_default(root):
    write(root, audio_spec("egemaps", "utterance"))
    write(root, text_spec("word"))
    with pytest.raises(MerError, match="mcfn reads frame-level audio, but egemaps is cached at utterance level only; "
                                       "pass --set audio_feature=logmfb80-d2"):
        resolve(root, "mcfn", audio_feature="egemaps")
    assert resolve(root, "cm-roberta", audio_feature="egemaps")["audio"] == "egemaps"


def test_a_hash_of_the_wrong_granularity_points_to_the_cached_config_that_fits(root):
    tokens, words = write(root, text_spec("token")), write(root, text_spec("word"))
    with pytest.raises(MerError) as refused:
        resolve(root, "mcfn", text_feature=f"roberta-base@{tokens}")
    message = str(refused.value)
    assert f"roberta-base@{tokens} is at token level" in message and "mer extract" not in message
    key, value = message.split("--set ", 1)[1].split("=", 1)  # pasted as given, it resolves
    assert resolve(root, "mcfn", **{key: value})["text"] == f"roberta-base@{words}"


@pytest.mark.parametrize("model, role, feature", [("text-only", "text", "logmfb80-d2"),
                                                  ("audio-only", "audio", "roberta-base")])
def test_a_feature_of_the_other_modality_is_refused(root, model, role, feature):
    write(root, text_spec("word"))
    with pytest.raises(MerError) as refused:
        resolve(root, model, **{f"{role}_feature": feature})
    message = str(refused.value)
    other = "a text" if role == "audio" else "an audio"
    assert f"{feature} is {other} feature, given as {model}'s {role} input" in message and "\n" not in message
    key, value = message.split("read one that is cached: --set ", 1)[1].split()[0].split("=", 1)
    assert resolve(root, model, **{key: value})[role] == value


def test_the_suggested_default_is_the_models_not_the_users_override(root):
    write(root, audio_spec("egemaps", "utterance"))
    write(root, text_spec("word"))
    config = make_config("mcfn", CORPUS, audio_feature="egemaps")  # as `--set audio_feature=egemaps` builds it
    features = model_features("mcfn", config, CORPUS, {"audio_feature": "egemaps", "text_feature": "roberta-base"})
    with pytest.raises(MerError, match="pass --set audio_feature=logmfb80-d2 \\(its default\\)"):
        resolve_features(FeatureCache(root), CORPUS, "mcfn", config, features)


def test_an_audio_feature_of_a_corpus_read_without_clips_says_the_clips_come_first(root):
    with pytest.raises(MerError, match=f"{CORPUS} was read without audio \\(no utterance has a clip\\): put the "
                                       "clips in its folder, then run `mer extract --dataset demo"):
        resolve(root, "mcfn", audio_feature="mfcc40")


def test_list_models_shows_the_granularity_and_whether_it_is_cached(root):
    write(root, text_spec("token"))
    result = CliRunner().invoke(cli, ["list", "models", "--cache", str(root), "--dataset", CORPUS])
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.output.splitlines()}
    assert "text=roberta-base (word)" in lines["mcfn"] and "text=bert-base-uncased (token)" in lines["mgcma"]
    assert "text=roberta-base (any)" in lines["concat"]
    assert "not ready" in lines["mcfn"] and "--set roberta-base.granularity=word" in lines["mcfn"]


def test_mcfn_refuses_roberta_tokens_then_trains_on_the_words_the_pasted_command_extracts(tmp_path, demo_root):
    model_dir = save_tiny_roberta(tmp_path / "tiny-roberta")
    cache = tmp_path / "cache"
    extract = ["extract", "--dataset", "demo", "--set", "corpus.size=40", "--root", str(demo_root), "--features",
               "logmfb80-d2,roberta-base", "--set", f"roberta-base.model={model_dir}", "--cache", str(cache),
               "--no-progress"]
    assert CliRunner().invoke(cli, extract).exit_code == 0
    fuse = ["fuse", "--model", "mcfn", "--dataset", "demo-n40-s0", "--cache", str(cache), "--out",
            str(tmp_path / "run"), "--device", "cpu", "--set", "text_feature=roberta-base", *tiny_settings("mcfn")]
    refused = CliRunner().invoke(cli, fuse)
    assert refused.exit_code != 0 and "cached at token level only" in str(refused.exception)
    command = shlex.split(str(refused.exception).split("run `", 1)[1].split("`")[0])
    assert command[:2] == ["mer", "extract"] and f"roberta-base.model={model_dir}" in command
    assert CliRunner().invoke(cli, command[1:] + ["--no-progress"]).exit_code == 0
    trained = CliRunner().invoke(cli, fuse)
    assert trained.exit_code == 0, trained.output + repr(trained.exception)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["features"]["text"].startswith("roberta-base@")
    assert config["feature_specs"]["text"][0]["granularity"] == "word"


def test_every_input_that_is_not_cached_is_named_in_one_message(root):
    write(root, text_spec("word"))
    with pytest.raises(MerError) as refused:
        resolve(root, "concat", audio_feature="nosuch-audio", text_feature="nosuch-text")
    message = str(refused.value)
    assert "'nosuch-audio' is not in the cache" in message and "'nosuch-text' is not in the cache" in message
    assert "--set audio_feature=logmfb80-d2" in message and "--set text_feature=roberta-base" in message
