"""Pretrained encoders through `mer extract`, as a user runs them: the real MiniLM weights, a
local speech encoder and a local text encoder; `mer cache info` shows dims and layers."""

import json

from click.testing import CliRunner

from mer.cli import cli
from tests.fixtures.tiny_models import save_tiny_roberta, save_tiny_speech_encoder


def test_extract_minilm_and_local_hf_audio_and_text_encoders(tmp_path, demo_root):
    audio_dir = save_tiny_speech_encoder(tmp_path / "tiny-wavlm", "wavlm", norm="layer")
    text_dir = save_tiny_roberta(tmp_path / "tiny-roberta")
    cache = tmp_path / "cache"
    features = f"minilm-l6,hf-audio:{audio_dir},hf-text:{text_dir}"
    result = CliRunner().invoke(cli, ["extract", "--dataset", "demo", "--set", "corpus.size=40", "--root",
                                      str(demo_root), "--features", features, "--cache", str(cache),
                                      "--set", f"hf-audio:{audio_dir}.layers=all", "--no-progress", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert [f["done"] for f in summary["features"]] == [40, 40, 40]
    info = CliRunner().invoke(cli, ["cache", "info", str(cache), "--json"])
    assert info.exit_code == 0, info.output
    by_name = {item["spec"]["name"]: item for item in json.loads(info.stdout)}
    assert by_name["minilm-l6"]["dims"] == [384] and by_name["minilm-l6"]["spec"]["granularity"] == "word"
    audio = by_name["hf-audio:tiny-wavlm"]
    assert len(audio["dims"]) == 2 and audio["dims"][0] == 3 and audio["layers"] is not None
    assert audio["spec"]["model_revision"].startswith("sha256:")
    text = by_name["hf-text:tiny-roberta"]
    assert text["spec"]["granularity"] == "token" and text["utterances"] == 40
    verify = CliRunner().invoke(cli, ["cache", "verify", str(cache), "--json"])
    assert verify.exit_code == 0, verify.output
