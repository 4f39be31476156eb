"""The paper's numbers beside the right run: paper_results is keyed by protocol, then by "full" or
the ablation (ablation_key); an ablated run shows its own row where the paper has one, else none."""

import json

import pytest

from mer.fuse.models import MODELS, make_config, model_names
from mer.fuse.models.base import ablation_key, paper_row
from tests.test_fuse_cli import demo_cache, fuse  # noqa: F401 (demo_cache: a fixture)


def row(model, protocol, corpus="iemocap", **ablations):
    return paper_row(make_config(model, corpus, **ablations), make_config(model, corpus), protocol)


def test_ablated_runs_get_their_own_row_and_never_the_full_models():
    assert row("mcsan", "iemocap7-10fold") == {"accuracy": 0.612, "ua": 0.560}
    assert row("mcsan", "iemocap7-10fold", no_self="true") == {"accuracy": 0.605, "ua": 0.550}
    assert row("mcsan", "iemocap7-10fold", layers="3") == {"accuracy": 0.595, "ua": 0.541}
    assert row("mcsan", "meld", corpus="meld", no_cross="true") is None  # Table 3 is IEMOCAP only
    assert row("mcsan", "iemocap7-10fold", audio_only="true") == {"accuracy": 0.491, "ua": 0.404}  # w/o text
    assert row("mcsan", "iemocap7-10fold", text_only="true") == {"accuracy": 0.509, "ua": 0.469}  # w/o audio
    assert row("mcsan", "meld", corpus="meld", text_only="true") is None
    assert row("cm-roberta", "meld", corpus="meld", no_sca="true") == {"weighted_f1": 0.6566}
    assert row("mcfn", "meld", corpus="meld", no_interaction="true") == {"accuracy": 0.638, "weighted_f1": 0.611}
    assert row("mcfn", "iemocap-loso", audio_only="true") == {"accuracy": 0.621, "ua": 0.603}  # speech only
    assert row("mcfn", "iemocap-loso", text_only="true") == {"accuracy": 0.681, "ua": 0.691}
    assert row("mcfn", "meld", corpus="meld", audio_only="true") == {"accuracy": 0.481, "weighted_f1": 0.367}
    assert row("mcfn", "meld", corpus="meld", text_only="true") == {"accuracy": 0.631, "weighted_f1": 0.598}
    assert row("mcfn", "meld", corpus="meld", audio_only="true", no_interaction="true") is None
    assert row("mfdr", "iemocap-10fold", no_awa="true", window="30") == {"accuracy": 0.773, "ua": 0.783}
    assert row("mfdr", "iemocap-10fold", window="30") == {"accuracy": 0.773, "ua": 0.783}  # fixed: AWA is off
    assert row("mfdr", "mosei", corpus="mosei", pool="linear") == {"acc2": 0.837, "f1": 0.833}
    assert row("mfdr", "iemocap-loso", no_context="true") is None  # Table 3 is 10-fold
    assert row("mgcma", "iemocap-loso", no_dam="true", no_tam="true", no_iam="true") == {"accuracy": 0.7620,
                                                                                        "ua": 0.7762}
    assert row("mgcma", "iemocap-loso", order="tam_iam_dam") == {"accuracy": 0.7688, "ua": 0.7843}
    assert row("mgcma", "iemocap-loso", no_dam="true", no_tam="true") is None  # no such row
    assert row("mcsan", "iemocap7-10fold", lr="0.1") == {"accuracy": 0.612, "ua": 0.560}  # not an ablation


@pytest.mark.parametrize("name", model_names())
def test_every_paper_row_is_reached_by_the_ablation_it_names(name):
    config_class = MODELS.get(name).config_class
    for protocol, rows in config_class.paper_results.items():
        assert "full" in rows, protocol
        for key in rows:
            settings = dict(part.partition("=")[::2] for part in key.split("+")) if key != "full" else {}
            settings = {k: v or "true" for k, v in settings.items()}
            assert set(settings) <= set(config_class.ablations), key
            assert ablation_key(make_config(name, **settings), make_config(name)) == key


def results_table_of(output):
    return output[output.index("metric"):]


def test_an_ablated_run_prints_its_paper_row_and_one_without_a_row_prints_none(demo_cache, tmp_path, monkeypatch):
    config_class = MODELS.get("mcsan").config_class
    rows = {"full": {"accuracy": 0.1111}, "no_self": {"accuracy": 0.2222}}
    monkeypatch.setattr(config_class, "paper_results", {"demo": rows, "manifest": rows})  # the demo's protocol
    ablated = fuse(demo_cache, tmp_path / "a", "mcsan", "--ablation", "no_self")
    assert ablated.exit_code == 0, ablated.output
    assert "0.2222" in results_table_of(ablated.output) and "0.1111" not in ablated.output
    without_row = fuse(demo_cache, tmp_path / "b", "mcsan", "--ablation", "no_cross")
    assert without_row.exit_code == 0, without_row.output
    assert "0.2222" not in without_row.output and "0.1111" not in without_row.output


@pytest.mark.parametrize("switch, other", [("audio_only", "text"), ("text_only", "audio")])
@pytest.mark.parametrize("name", ["mcsan", "mcfn", "cm-roberta"])
def test_a_unimodal_run_loads_its_modality_alone_and_prints_its_own_row(demo_cache, tmp_path, monkeypatch, name,
                                                                      switch, other):
    rows = {"full": {"accuracy": 0.9871}, switch: {"accuracy": 0.8642}}  # no 40-utterance run scores these
    monkeypatch.setattr(MODELS.get(name).config_class, "paper_results", {"demo": rows, "manifest": rows})
    result = fuse(demo_cache, tmp_path / "run", name, "--ablation", switch)
    assert result.exit_code == 0, result.output
    assert "0.8642" in results_table_of(result.output) and "0.9871" not in result.output
    features = json.loads((tmp_path / "run" / "metrics.json").read_text())["features"]
    assert features[other] is None, features
