"""Corpus readers on small fixture trees holding every trap of DATASETS.md."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mer.data.audio import load_audio
from mer.data.corpora import CORPORA, prepare
from mer.data.corpora.iemocap import speaker_of
from mer.data.corpora.meld import parse_timestamp, repair_text
from mer.errors import AudioDecodeError, CorpusError
from tests.fixtures.corpora import (
    IEMOCAP_COUNTS, IEMOCAP_NO_TRANSCRIPT, MANIFEST_MISSING_ID, MANIFEST_ROWS, MELD_COUNTS, MELD_ROWS, MELD_SKIPPED,
    MOSEI_COUNTS, MOSEI_SKIPPED, iemocap_text, make_iemocap, make_manifest, make_meld, make_mosei,
)


@pytest.fixture(scope="module")
def meld_root(tmp_path_factory) -> Path:
    return make_meld(tmp_path_factory.mktemp("meld"))


@pytest.fixture(scope="module")
def meld(meld_root):
    return prepare("meld", meld_root, max_clip_seconds=10)


@pytest.fixture(scope="module")
def iemocap_root(tmp_path_factory) -> Path:
    return make_iemocap(tmp_path_factory.mktemp("iemocap"))


@pytest.fixture(scope="module")
def mosei_root(tmp_path_factory) -> Path:
    return make_mosei(tmp_path_factory.mktemp("mosei"))


@pytest.fixture(scope="module")
def manifest_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("manifest")
    make_manifest(folder, "csv")
    make_manifest(folder, "jsonl")
    return folder


def one_line_error(call, *needles) -> str:
    with pytest.raises(CorpusError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    for needle in needles:
        assert str(needle) in message
    return message


def test_all_readers_are_registered():
    assert {"meld", "iemocap", "mosei", "manifest"} <= set(CORPORA.names())


# ---------------------------------------------------------------------------- MELD


@pytest.mark.parametrize("text, repaired", [
    ("I\x92m", "I’m"),              # old copy: cp1252 byte kept as a C1 control character
    ("IÂ’m", "I’m"),               # that C1 character's UTF-8 read as cp1252
    ("Iâ€™m", "I’m"),              # a clean curly quote's UTF-8 read as cp1252
    ("\x93Hi,\x94 she said\x85", "“Hi,” she said…"),
    ("â€œokâ€\x9d", "“ok”"),      # 0x9D is undefined in cp1252 and survives as U+009D
    ("I’m fine", "I’m fine"),
    ("café naïve Zoë", "café naïve Zoë"),  # real accents are left alone
    ("plain ASCII", "plain ASCII"),
])
def test_repair_text(text, repaired):
    assert repair_text(text) == repaired


@pytest.mark.parametrize("text, seconds", [
    ("0:12:32,632", 752.632), ("00:12:32,632", 752.632), ("1:02:03,5", 3723.5), ("00:00:01.250", 1.25),
    ("", None), ("12:32", None), ("garbage", None),
])
def test_parse_timestamp(text, seconds):
    assert parse_timestamp(text) == seconds


def test_meld_counts_and_skips(meld):
    report = meld.report
    assert report.counts["split"] == MELD_COUNTS
    assert report.counts["total"]["utterances"] == sum(MELD_COUNTS.values())
    assert dict(report.skipped) == MELD_SKIPPED
    assert report.counts["dialogues"] == {"train": 3, "dev": 3, "test": 3}
    assert any("dia110_utt7" in w for w in report.warnings)
    assert sum("no row in" in w for w in report.warnings) == 3
    assert "skipped 3: clip without annotation" in report.format()


def test_meld_records(meld):
    by_id = meld.by_id()
    assert len(by_id) == len(meld.utterances)  # dia0_utt0 exists in every split: ids carry the split
    assert {"meld/train/dia0_utt0", "meld/dev/dia0_utt0", "meld/test/dia0_utt0"} <= set(by_id)
    utt = by_id["meld/train/dia0_utt1"]
    assert (utt.corpus, utt.split, utt.speaker, utt.dialogue) == ("meld", "train", "The Interviewer", "meld/train/dia0")
    assert (utt.label, utt.extra["sentiment"]) == ("neutral", "neutral")
    assert (utt.extra["season"], utt.extra["episode"]) == (8, 21)
    assert utt.text == "You must’ve had your hands full."
    assert utt.start is None and utt.end is None  # the clip is already cut
    assert Path(utt.audio_path).is_absolute() and Path(utt.audio_path).is_file()
    assert {u.label for u in meld.utterances} == {"neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger"}


def test_meld_turns_rank_utterance_ids(meld):
    by_id = meld.by_id()
    # dia1 has Utterance_IDs 0, 2, 5, written 5, 0, 2 in the CSV
    assert [by_id[f"meld/train/dia1_utt{u}"].turn for u in (0, 2, 5)] == [0, 1, 2]
    assert [u.id for u in meld.utterances if u.dialogue == "meld/train/dia1"] == [
        "meld/train/dia1_utt0", "meld/train/dia1_utt2", "meld/train/dia1_utt5"]


def test_meld_timestamps_with_one_or_two_hour_digits(meld):
    by_id = meld.by_id()
    assert by_id["meld/train/dia0_utt1"].extra["episode_start"] == pytest.approx(16 * 60 + 21.94)
    assert by_id["meld/train/dia0_utt0"].extra["episode_start"] == pytest.approx(16 * 60 + 16.059)
    zero = by_id["meld/test/dia38_utt5"]
    assert zero.extra["episode_start"] == zero.extra["episode_end"]
    assert meld.report.counts["notes"]["StartTime equals EndTime"] == 1


def test_meld_special_clips(meld):
    by_id = meld.by_id()
    assert Path(by_id["meld/test/dia0_utt1"].audio_path).name == "final_videos_testdia0_utt1.mp4"
    assert "meld/train/dia125_utt3" in by_id  # corrupt: kept, extraction records the failure
    assert "meld/dev/dia110_utt7" not in by_id  # missing clip
    notes = meld.report.counts["notes"]
    assert notes == {"StartTime equals EndTime": 1, "clip header unreadable": 1, "clip longer than 10 s": 1}
    assert any("dia38_utt4.mp4" in w and "max_clip_seconds" in w for w in meld.report.warnings)
    assert by_id["meld/test/dia38_utt4"].extra["clip_seconds"] > 10


def test_meld_fixture_clips_decode(meld):
    by_id = meld.by_id()
    surround = load_audio(by_id["meld/train/dia0_utt1"].audio_path)  # 48 kHz 5.1 AAC
    assert surround.ndim == 1 and 0.25 * 16000 < surround.size < 0.4 * 16000
    with pytest.raises(AudioDecodeError, match="dia125_utt3"):
        load_audio(by_id["meld/train/dia125_utt3"].audio_path)


def test_meld_old_csv_copy_gives_the_same_text(meld, tmp_path):
    old = prepare("meld", make_meld(tmp_path, old_text=True), max_clip_seconds=None)
    raw = (tmp_path / "MELD.Raw" / "train_sent_emo.csv").read_text(encoding="utf-8")
    assert "\x92" in raw and "Â’" in raw and "â€™" in raw
    assert [(u.id, u.text, u.speaker) for u in old.utterances] == [(u.id, u.text, u.speaker) for u in meld.utterances]
    expected = {f"meld/{s}/dia{d}_utt{u}": text for s, d, u, _, text, *_ in MELD_ROWS}
    assert all(u.text == expected[u.id] for u in old.utterances)


def test_meld_options(meld_root):
    sentiment = prepare("meld", meld_root, label="sentiment", splits="test", max_clip_seconds="none")
    assert {u.split for u in sentiment.utterances} == {"test"}
    assert {u.label for u in sentiment.utterances} <= {"negative", "neutral", "positive"}
    assert "clip_seconds" not in sentiment.utterances[0].extra  # probing disabled
    one_line_error(lambda: prepare("meld", meld_root, label="valence"), "label", "emotion")
    one_line_error(lambda: prepare("meld", meld_root, splits="train,val"), "splits", "val")


def test_meld_root_may_be_the_meld_raw_folder(meld_root):
    direct = prepare("meld", meld_root / "MELD.Raw", max_clip_seconds=None)
    assert direct.report.counts["split"] == MELD_COUNTS


def test_meld_layout_errors(tmp_path, meld_root):
    one_line_error(lambda: prepare("meld", tmp_path / "nowhere"), tmp_path / "nowhere", "train_sent_emo.csv")
    one_line_error(lambda: prepare("meld", None), "--root")
    one_line_error(lambda: prepare("meld", tmp_path), "train_sent_emo.csv", tmp_path)
    partial = tmp_path / "partial"
    shutil.copytree(meld_root / "MELD.Raw", partial, ignore=shutil.ignore_patterns("dev_splits_complete"))
    one_line_error(lambda: prepare("meld", partial), "dev_splits_complete")


def test_meld_bad_rows_are_counted(tmp_path, meld_root):
    shutil.copytree(meld_root / "MELD.Raw", tmp_path / "MELD.Raw")
    csv_path = tmp_path / "MELD.Raw" / "test_sent_emo.csv"
    with open(csv_path, "a", encoding="utf-8", newline="") as f:
        f.write('99,"Hm.",Joey,bored,neutral,0,9,8,21,0:00:01,0:00:02\r\n')
        f.write('100,"Again.",Joey,joy,positive,0,0,8,21,0:00:01,0:00:02\r\n')
        f.write('101,"Oops",Joey,joy,positive,x,1,8,21,0:00:01,0:00:02\r\n')
    corpus = prepare("meld", tmp_path, splits=["test"], max_clip_seconds=None)
    assert corpus.report.skipped["unparseable annotation row"] == 2
    assert corpus.report.skipped["duplicate annotation row"] == 1
    assert corpus.report.counts["split"] == {"test": MELD_COUNTS["test"]}

    (tmp_path / "MELD.Raw" / "dev_sent_emo.csv").write_text("Sr No.,Utterance,Speaker\n1,Hi,Joey\n", encoding="utf-8")
    one_line_error(lambda: prepare("meld", tmp_path, splits="dev"), "dev_sent_emo.csv", "Emotion")


# ---------------------------------------------------------------------------- IEMOCAP


@pytest.mark.parametrize("labels", ["4class", "7class", "all"])
def test_iemocap_label_sets(iemocap_root, labels):
    corpus = prepare("iemocap", iemocap_root, labels=labels)
    assert len(corpus.utterances) == IEMOCAP_COUNTS[labels]
    assert corpus.report.skipped["wav missing"] == 1
    assert corpus.report.skipped["unparseable label line"] == 1
    assert corpus.report.skipped["unparseable transcript line"] == 2
    categories = {u.extra["category"] for u in corpus.utterances}
    if labels == "all":
        assert {"xxx", "oth", "dis", "fru", "sur"} <= categories


def test_iemocap_4class(iemocap_root):
    corpus = prepare("iemocap", iemocap_root)
    assert corpus.report.counts["label"] == {"angry": 1, "happy": 3, "neutral": 1, "sad": 2}
    assert corpus.report.counts["fold"] == {"Session1": 5, "Session2": 2}
    for category in ("xxx", "fru", "sur", "oth", "dis"):
        assert corpus.report.skipped[f"category {category} not in labels=4class"] == 1
    by_id = corpus.by_id()
    exc = by_id["iemocap/Ses01F_impro01_F001"]
    assert (exc.label, exc.extra["category"], exc.fold, exc.dialogue) == ("happy", "exc", "Session1", "Ses01F_impro01")
    assert (exc.extra["valence"], exc.extra["activation"], exc.extra["dominance"]) == (4.0, 3.5, 3.0)
    assert exc.text == iemocap_text("Ses01F_impro01_F001")
    assert Path(exc.audio_path).is_file() and exc.start is None


def test_iemocap_speakers_turns_and_texts(iemocap_root):
    by_id = prepare("iemocap", iemocap_root, labels="all").by_id()
    assert by_id["iemocap/Ses01M_script01_1_F000"].speaker == "Ses01F"  # gender of the LAST segment
    assert by_id["iemocap/Ses01F_impro01_M000"].speaker == "Ses01M"
    assert speaker_of("Ses01F_impro01_M003") == "Ses01M"
    # label lines are written F000, F001, M000, ...; turns follow start times
    turns = {u: by_id[f"iemocap/Ses01F_impro01_{u}"].turn for u in ("F000", "M000", "F001", "M001", "F002")}
    assert turns == {"F000": 0, "M000": 1, "F001": 2, "M001": 3, "F002": 4}
    assert by_id[f"iemocap/{IEMOCAP_NO_TRANSCRIPT}"].text == ""


def test_iemocap_7class_names(iemocap_root):
    labels = {u.label for u in prepare("iemocap", iemocap_root, labels="7class").utterances}
    assert labels == {"frustration", "neutral", "anger", "sadness", "excitement", "happiness", "surprise"}


def test_iemocap_layout_errors(tmp_path, iemocap_root):
    one_line_error(lambda: prepare("iemocap", tmp_path / "nowhere"), tmp_path / "nowhere")
    one_line_error(lambda: prepare("iemocap", tmp_path), "Session1", tmp_path)
    one_line_error(lambda: prepare("iemocap", iemocap_root, labels="5class"), "labels", "4class")
    broken = tmp_path / "broken"
    shutil.copytree(iemocap_root / "IEMOCAP_full_release", broken, ignore=shutil.ignore_patterns("EmoEvaluation"))
    one_line_error(lambda: prepare("iemocap", broken), "EmoEvaluation")


# ---------------------------------------------------------------------------- CMU-MOSEI


def test_mosei_segments(mosei_root):
    corpus = prepare("mosei", mosei_root)
    assert corpus.report.counts["split"] == MOSEI_COUNTS
    assert dict(corpus.report.skipped) == MOSEI_SKIPPED
    by_id = corpus.by_id()
    utt = by_id["mosei/-3g5yACwYnA_1"]
    assert (utt.split, utt.speaker, utt.dialogue, utt.turn) == ("train", "-3g5yACwYnA", "-3g5yACwYnA", 1)
    assert (utt.start, utt.end, utt.text) == (1.3, 2.5, "this movie was bad")
    assert utt.label == pytest.approx(-2.333333) and isinstance(utt.label, float)
    assert utt.extra == {"happy": 0.5, "sad": 0.0, "anger": 0.0, "surprise": 0.25, "disgust": 0.0, "fear": 0.0}
    assert Path(utt.audio_path).name == "-3g5yACwYnA.wav" and Path(utt.audio_path).is_absolute()
    assert by_id["mosei/_0efYOjQYRc_0"].turn == 0 and by_id["mosei/_0efYOjQYRc_1"].split == "dev"
    assert "mosei/-3g5yACwYnA_2" not in by_id
    assert load_audio(utt.audio_path, utt.start, utt.end).size == pytest.approx(1.2 * 16000, abs=2)


def test_mosei_labels_matched_by_start_time(mosei_root):
    labels_csv = mosei_root / "CMU_MOSEI" / "labels_by_start.csv"
    by_start = prepare("mosei", mosei_root, labels_csv=str(labels_csv))
    by_idx = prepare("mosei", mosei_root)
    assert [(u.id, u.label, u.split) for u in by_start.utterances] == \
        [(u.id, u.label, u.split) for u in by_idx.utterances]


def test_mosei_layout_errors(tmp_path, mosei_root):
    one_line_error(lambda: prepare("mosei", tmp_path), "Audio/Full/WAV_16000", tmp_path)
    one_line_error(lambda: prepare("mosei", mosei_root, labels_csv=tmp_path / "no.csv"), tmp_path / "no.csv",
                   "CMU-MultimodalSDK")
    bad = tmp_path / "bad.csv"
    bad.write_text("video,idx,split\nv,0,train\n", encoding="utf-8")
    one_line_error(lambda: prepare("mosei", mosei_root, labels_csv=bad), bad, "sentiment")


# ---------------------------------------------------------------------------- manifest


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_manifest_reads_csv_and_jsonl(manifest_dir, fmt):
    corpus = prepare("manifest", manifest_dir / f"emo.{fmt}")
    assert corpus.name == "emo"
    assert [u.id for u in corpus.utterances] == ["emo/u1", "emo/u2", "emo/u3"]
    assert corpus.report.skipped == {"audio missing": 1}
    assert any(MANIFEST_MISSING_ID in w or "never_copied.wav" in w for w in corpus.report.warnings)
    u2 = corpus.by_id()["emo/u2"]
    assert (u2.corpus, u2.split, u2.speaker, u2.label, u2.start, u2.end) == ("emo", "dev", "s2", "sad", 0.1, 0.4)
    assert u2.text == MANIFEST_ROWS[1]["text"] and u2.turn is None and u2.dialogue is None
    assert u2.audio_path == str((manifest_dir / "audio" / "b.flac").resolve())


def test_manifest_audio_decodes(manifest_dir):
    # through the registry: mer.data.corpora.prepare's own first parameter is called `name`
    by_id = CORPORA.get("manifest")(manifest_dir / "emo.csv", name="mine").by_id()
    for utt in by_id.values():
        assert utt.id.startswith("mine/")
        assert load_audio(utt.audio_path, utt.start, utt.end).size > 0.25 * 16000


def _write_manifest(path: Path, header: str, *rows: str) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def test_manifest_numeric_labels_become_floats(manifest_dir, tmp_path):
    audio = manifest_dir / "audio" / "a.wav"
    numeric = _write_manifest(tmp_path / "reg.csv", "id,audio,text,label,turn",
                              f"a,{audio},x,1.5,0", f"b,{audio},y,-2,1")
    corpus = prepare("manifest", numeric)
    assert [u.label for u in corpus.utterances] == [1.5, -2.0] and [u.turn for u in corpus.utterances] == [0, 1]
    assert [u.label for u in prepare("manifest", numeric, label_type="class").utterances] == ["1.5", "-2"]
    mixed = _write_manifest(tmp_path / "mixed.csv", "id,audio,text,label", f"a,{audio},x,1", f"b,{audio},y,happy")
    assert [u.label for u in prepare("manifest", mixed).utterances] == ["1", "happy"]
    jsonl = tmp_path / "ints.jsonl"
    jsonl.write_text("\n".join(json.dumps({"id": i, "audio": str(audio), "text": "", "label": v})
                               for i, v in [("a", 1), ("b", "x")]) + "\n", encoding="utf-8")
    assert [u.label for u in prepare("manifest", jsonl).utterances] == ["1", "x"]


def test_manifest_errors(manifest_dir, tmp_path):
    audio = manifest_dir / "audio" / "a.wav"
    no_label = _write_manifest(tmp_path / "nolabel.csv", "id,audio,text", f"a,{audio},x")
    one_line_error(lambda: prepare("manifest", no_label), no_label, "'label'")
    dup = _write_manifest(tmp_path / "dup.csv", "id,audio,text,label", f"a,{audio},x,1", f"a,{audio},y,2")
    one_line_error(lambda: prepare("manifest", dup), dup, "'a'", "twice")
    jsonl = _write_manifest(tmp_path / "nolabel.jsonl", json.dumps({"id": "a", "audio": str(audio), "text": "x"}))
    one_line_error(lambda: prepare("manifest", jsonl), jsonl, "'label'")
    one_line_error(lambda: prepare("manifest", tmp_path / "missing.csv"), tmp_path / "missing.csv")
    one_line_error(lambda: prepare("manifest", manifest_dir), manifest_dir, ".csv or .jsonl")
    one_line_error(lambda: prepare("manifest", dup, label_type="ordinal"), "label_type")


def test_manifest_bad_rows_are_counted(manifest_dir, tmp_path):
    audio = manifest_dir / "audio" / "a.wav"
    row = {"audio": str(audio), "text": "x", "label": "a"}
    path = _write_manifest(tmp_path / "bad.jsonl", json.dumps(dict(row, id="ok")), "{not json",
                           json.dumps(dict(row, id="t", turn="first")), json.dumps(dict(row, id="s", start=2, end=1)))
    corpus = prepare("manifest", path)
    assert [u.id for u in corpus.utterances] == ["bad/ok"]
    assert corpus.report.skipped == {"unparseable JSON line": 1, "unparseable turn": 1, "end <= start": 1}


@pytest.mark.parametrize("reader,option", [("demo", "name"), ("iemocap", "label"), ("manifest", "labels")])
def test_an_option_the_reader_does_not_take_is_one_line_naming_it_and_the_options(tmp_path, reader, option):
    with pytest.raises(CorpusError, match=rf"--set corpus\.{option}: the {reader} reader has no option "
                                          rf"'{option}'; its options: "):
        prepare(reader, tmp_path, **{option: "x"})
