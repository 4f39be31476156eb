"""`mer transcribe`, ASR text sources, and text features, fuse and predict on them, with a tiny random
Whisper saved offline with `save_pretrained`: its transcripts are nonsense, but the path (WhisperProcessor,
WhisperForConditionalGeneration.generate, long-form generation), the caching, resume, hashing, the WER
report, the fuse record and predict's behaviour are the real ones.

The tokenizer is built offline here (no hub): a byte-level BPE trained on a few sentences (all 256 bytes
in its alphabet, so any generated token decodes), loaded as transformers' WhisperTokenizer, plus
Whisper's special tokens in Whisper's order (<|endoftext|>, <|startoftranscript|>, one token per
language of transformers' LANGUAGES, <|translate|>, <|transcribe|>, <|startoflm|>, <|startofprev|>,
<|nocaptions|>, <|notimestamps|>) and the 1501 timestamp tokens <|0.00|> ... <|30.00|>; the generation
config carries lang_to_id, task_to_id and no_timestamps_token_id as the real checkpoints' do, and
suppresses the special and timestamp tokens so that the random model writes (nonsense) words (long-form
generation then sees windows without timestamps and moves on by whole 30 s windows)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mer.cache.reader import FeatureCache
from mer.cache.transcripts import TRANSCRIPT, decode_transcript
from mer.cli import cli
from mer.errors import MerError
from mer.extract.base import build_extractor
from mer.transcribe import normalise

SR = 16000
DEMO = ["--dataset", "demo", "--set", "corpus.size=40"]
CORPUS = "demo-n40-s0"
DECODING = ["--max-new-tokens", "6", "--language", "en"]  # nonsense either way: short keeps the tests fast


def save_tiny_asr_whisper(directory: Path, seed: int = 0) -> Path:
    """A tiny random WhisperForConditionalGeneration with its processor (see the module docstring)."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import (AddedToken, GenerationConfig, WhisperConfig, WhisperFeatureExtractor,
                              WhisperForConditionalGeneration, WhisperTokenizer)
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    directory.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(["i am really happy today", "why are you so angry at me", "that was fine"] * 4,
                            vocab_size=300, min_frequency=1, show_progress=False, special_tokens=["<|endoftext|>"])
    bpe.save_model(str(directory))
    tokenizer = WhisperTokenizer.from_pretrained(directory)
    specials = ["<|startoftranscript|>", *[f"<|{code}|>" for code in LANGUAGES], "<|translate|>", "<|transcribe|>",
                "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    timestamps = [f"<|{i * 0.02:.2f}|>" for i in range(1501)]
    tokenizer.add_tokens([AddedToken(stamp, normalized=False, special=False) for stamp in timestamps])
    tokenizer.save_pretrained(directory)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(directory)
    ids = tokenizer.convert_tokens_to_ids
    eot, sot = ids("<|endoftext|>"), ids("<|startoftranscript|>")
    config = WhisperConfig(vocab_size=len(tokenizer), num_mel_bins=80, d_model=16, encoder_layers=1, decoder_layers=1,
                           encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
                           max_source_positions=1500, max_target_positions=448, pad_token_id=eot, bos_token_id=eot,
                           eos_token_id=eot, decoder_start_token_id=sot)
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        decoder_start_token_id=sot, eos_token_id=eot, pad_token_id=eot, bos_token_id=eot, max_length=448,
        is_multilingual=True, lang_to_id={f"<|{code}|>": ids(f"<|{code}|>") for code in LANGUAGES},
        task_to_id={"transcribe": ids("<|transcribe|>"), "translate": ids("<|translate|>")},
        no_timestamps_token_id=ids("<|notimestamps|>"), prev_sot_token_id=ids("<|startofprev|>"),
        max_initial_timestamp_index=50, begin_suppress_tokens=[eot], suppress_tokens=ids(specials[1:] + timestamps))
    model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module", autouse=True)
def offline(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("MER_HOME", str(tmp_path_factory.mktemp("mer-home")))  # weight-hash memo
        patch.delenv("MER_MODELS_DIR", raising=False)
        yield


@pytest.fixture(scope="module")
def tiny_asr(tmp_path_factory) -> Path:
    return save_tiny_asr_whisper(tmp_path_factory.mktemp("asr") / "tiny-whisper")


def mer(*args) -> "CliRunner.Result":
    return CliRunner().invoke(cli, [str(a) for a in args])


def error_line(result) -> str:
    """The one line `mer` prints for the MerError that `result` stopped with (exit status 2)."""
    assert isinstance(result.exception, MerError), result.output + repr(result.exception)
    assert "\n" not in str(result.exception)
    return str(result.exception)


def transcribe(cache, tiny_asr, demo_root, *extra):
    return mer("transcribe", *DEMO, "--root", demo_root, "--cache", cache, "--asr", f"hf-whisper:{tiny_asr}",
               *DECODING, "--no-progress", *extra)


@pytest.fixture(scope="module")
def transcribed(tmp_path_factory, tiny_asr, demo_root) -> tuple[Path, "CliRunner.Result"]:
    cache = tmp_path_factory.mktemp("asr-cache")
    result = transcribe(cache, tiny_asr, demo_root)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return cache, result


def source_of(cache) -> "FeatureInfo":  # noqa: F821
    (info,) = [f for f in FeatureCache(cache).features(CORPUS) if f.spec.modality == TRANSCRIPT]
    return info


# ----------------------------------------------------------------------------- the transcriber


def test_source_name_spec_and_what_its_hash_covers(tiny_asr, tmp_path):
    asr = build_extractor(f"asr:hf-whisper:{tiny_asr}", max_new_tokens="6")
    spec = asr.spec
    assert (spec.name, spec.modality, spec.dtype, spec.dim) == ("asr:hf-whisper:tiny-whisper", TRANSCRIPT, "uint8", 1)
    assert spec.model_revision.startswith("sha256:")
    changed = [build_extractor(f"asr:hf-whisper:{tiny_asr}", **options).spec.config_hash
               for options in ({}, {"language": "en"}, {"task": "translate"}, {"num_beams": "2"})]
    assert len({spec.config_hash, *changed}) == 5  # max length, language, task, beam size each change it
    assert build_extractor(f"asr:hf-whisper:{tiny_asr}", language="English").spec.config_hash == changed[1]
    other_weights = save_tiny_asr_whisper(tmp_path / "tiny-whisper", seed=1)
    assert build_extractor(f"asr:hf-whisper:{other_weights}").spec.config_hash != changed[0]
    with pytest.raises(MerError, match="language 'klingon'"):
        build_extractor(f"asr:hf-whisper:{tiny_asr}", language="klingon")
    with pytest.raises(MerError, match="unknown ASR model 'whisper-huge'"):
        build_extractor("asr:whisper-huge")


def test_a_clips_transcript_does_not_depend_on_its_batch_and_long_clips_are_transcribed(tiny_asr):
    asr = build_extractor(f"asr:hf-whisper:{tiny_asr}", max_new_tokens="6", language="en")
    rng = np.random.default_rng(0)
    waves = [0.1 * rng.standard_normal(int(seconds * SR)).astype(np.float32) for seconds in (1.0, 2.5, 4.0)]
    together = asr.transcribe(waves)
    assert together == [asr.transcribe([wave])[0] for wave in waves]
    assert any(together)  # the random model writes nonsense words, not nothing
    long_clip = 0.1 * rng.standard_normal(70 * SR).astype(np.float32)  # three 30 s windows, long-form generation
    (text,) = asr.transcribe([long_clip])
    assert isinstance(text, str) and text == " ".join(text.split())


def test_wer_normalisation():
    assert normalise("Don't  STOP, believing!") == "dont stop believing"
    assert normalise("well...then-again") == "well then again"


# ----------------------------------------------------------------------------- mer transcribe


def test_transcribe_writes_a_source_reports_wer_and_a_rerun_skips_everything(transcribed, tiny_asr, demo_root):
    cache, first = transcribed
    info = source_of(cache)
    assert info.name == "asr:hf-whisper:tiny-whisper" and info.num_utterances == 40
    assert f"text source: asr:hf-whisper:tiny-whisper@{info.config_hash}" in first.output
    assert "WER " in first.output and "lower-cased" in first.output
    wer = json.loads((info.directory / "wer.json").read_text())
    assert wer["utterances"] == 40 and wer["wer"] > 0 and wer["reference_words"] > 40
    stored = dict(FeatureCache(cache).open(CORPUS, info.name))
    assert all(isinstance(decode_transcript(rows), str) for rows in stored.values())
    again = transcribe(cache, tiny_asr, demo_root, "--json")
    assert again.exit_code == 0, again.output
    summary = json.loads(again.stdout[again.stdout.index("{"):])
    assert (summary["features"][0]["done"], summary["features"][0]["cached"]) == (0, 40)
    assert summary["wer"]["wer"] == pytest.approx(wer["wer"])


def test_an_interrupted_transcription_keeps_its_shards_and_the_rerun_finishes_it(tmp_path, tiny_asr, demo_root,
                                                                                  monkeypatch):
    from mer.extract.asr import WhisperTranscriber

    real, cache = WhisperTranscriber.transcribe, tmp_path / "cache"

    def interrupted(self, waves):  # Ctrl-C once a shard is committed
        if list(cache.glob(f"{CORPUS}/asr_*/shard-*.json")):
            raise KeyboardInterrupt
        return real(self, waves)

    monkeypatch.setattr(WhisperTranscriber, "transcribe", interrupted)
    stopped = transcribe(cache, tiny_asr, demo_root, "--shard-size", "8", "--decode-workers", "0")
    assert stopped.exit_code == 130, stopped.output
    kept = source_of(cache).num_utterances
    assert 0 < kept < 40
    extract = mer("extract", *DEMO, "--root", demo_root, "--cache", cache, "--features", "minilm-l6", "--set",
                  f"minilm-l6.text_source=asr:hf-whisper:tiny-whisper", "--no-progress")
    message = error_line(extract)
    assert f"has no transcript yet for {40 - kept} of 40" in message
    command = message.split("finish it with `")[1].split("`")[0]  # the command the message gives
    monkeypatch.setattr(WhisperTranscriber, "transcribe", real)
    finished = mer(*shlex.split(command)[1:], "--no-progress")
    assert finished.exit_code == 0, finished.output
    assert source_of(cache).num_utterances == 40 and f"{40 - kept:>7} {kept:>7}" in finished.output


def test_a_missing_source_is_one_line_naming_mer_transcribe(tmp_path, demo_root):
    result = mer("extract", *DEMO, "--root", demo_root, "--cache", tmp_path / "c", "--features", "minilm-l6",
                 "--set", "minilm-l6.text_source=asr:whisper-large-v3", "--no-progress")
    line = error_line(result)
    assert "no text source 'asr:whisper-large-v3'" in line
    assert f"mer transcribe --dataset demo --root {demo_root} --set corpus.size=40 --asr whisper-large-v3" in line


# ----------------------------------------------------------------------------- text features, fuse, predict


@pytest.fixture(scope="module")
def asr_features(transcribed, demo_root) -> tuple[Path, str, str]:
    """minilm-l6 on the reference transcripts and on the ASR ones, side by side: (cache, reference, asr)."""
    cache, _ = transcribed
    for source in ("reference", "asr:hf-whisper:tiny-whisper"):
        result = mer("extract", *DEMO, "--root", demo_root, "--cache", cache, "--features", "minilm-l6,mfcc40",
                     "--set", f"minilm-l6.text_source={source}", "--set", "minilm-l6.granularity=utterance",
                     "--no-progress")
        assert result.exit_code == 0, result.output
    configs = {f.spec.config.get("text_source", "reference"): f"minilm-l6@{f.config_hash}"
               for f in FeatureCache(cache).configs(CORPUS, "minilm-l6")}
    return cache, configs["reference"], configs[f"asr:hf-whisper:tiny-whisper@{source_of(cache).config_hash}"]


def test_text_features_of_both_sources_live_side_by_side(asr_features):
    cache, reference, asr = asr_features
    store = FeatureCache(cache)
    assert reference != asr
    first = store.open(CORPUS, reference).ids()[0]
    assert not np.array_equal(store.open(CORPUS, reference).get(first), store.open(CORPUS, asr).get(first))


def fuse(cache, out, text_feature):
    return mer("fuse", "--model", "text-only", "--dataset", CORPUS, "--cache", cache, "--out", out, "--device", "cpu",
               "--set", f"text_feature={text_feature}", "--set", "max_epochs=2")


def test_fuse_records_the_asr_source_and_predict_transcribes_with_it(asr_features, tmp_path, demo_root):
    cache, _, asr = asr_features
    source = f"asr:hf-whisper:tiny-whisper@{source_of(cache).config_hash}"
    trained = fuse(cache, tmp_path / "run", asr)
    assert trained.exit_code == 0, trained.output
    assert f"text from ASR: {source} (WER " in trained.output
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert list(config["text_sources"]) == [source]
    assert config["text_sources"][source]["asr_spec"]["config_hash"] == source.split("@")[1]
    assert config["text_sources"][source]["wer"]["utterances"] == 40
    audio = next(Path(demo_root).rglob("*.wav"))
    predicted = mer("predict", "--run", tmp_path / "run", "--audio", audio, "--json")
    assert predicted.exit_code == 0, predicted.output
    assert f"transcript ({source.split('@')[0]}):" in predicted.stderr
    assert sum(json.loads(predicted.stdout).values()) == pytest.approx(1.0, abs=1e-4)


def test_predict_on_a_reference_run_asks_for_text_or_asr_and_says_what_asr_costs(asr_features, tmp_path, demo_root,
                                                                                  tiny_asr):
    cache, reference, _ = asr_features
    assert fuse(cache, tmp_path / "run", reference).exit_code == 0
    audio = next(Path(demo_root).rglob("*.wav"))
    refused = error_line(mer("predict", "--run", tmp_path / "run", "--audio", audio))
    assert "--asr MODEL" in refused and "asr:hf-whisper:tiny-whisper@" in refused and "WER " in refused
    with_asr = mer("predict", "--run", tmp_path / "run", "--audio", audio, "--asr", f"hf-whisper:{tiny_asr}")
    assert with_asr.exit_code == 0, with_asr.output
    assert "trained on reference transcripts" in with_asr.stderr and "WER " in with_asr.stderr
