"""The corpora read by name (RAVDESS, CREMA-D, TESS, EmoDB, SAVEE, EmoryNLP, MSP-Podcast), their default
protocols and EmoBox's fold files, on fixture trees in the real layouts (tests/fixtures/named) and on
the real files of ../shared/data where there are some."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner

from mer.cli import cli
from mer.data.corpora import CORPORA, prepare
from mer.data.corpora import _emobox
from mer.data.protocols import PROTOCOLS, default_protocol, headline_metric, make_folds
from mer.errors import CorpusError, MerError
from tests.fixtures.named import trees

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
NEW = ("ravdess", "crema-d", "tess", "emodb", "savee", "emorynlp", "msp-podcast")


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, Path]:
    makers = {"ravdess": trees.make_ravdess, "crema-d": trees.make_crema_d, "tess": trees.make_tess,
              "emodb": trees.make_emodb, "savee": trees.make_savee, "emorynlp": trees.make_emorynlp,
              "msp-podcast": trees.make_msp_podcast}
    return {name: make(tmp_path_factory.mktemp(name)) for name, make in makers.items()}


def read(name, root, *needs_audio, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a reader warns through its report, never through Python warnings
        return prepare(name, root, *needs_audio, **options)


def folds_of(protocol, corpus, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tiny fixtures lack classes in some folds
        return make_folds(protocol, corpus.utterances, seed=0, **options)


def assert_speaker_independent(fold_set, corpus):
    speaker = {u.id: u.speaker for u in corpus.utterances}
    for fold in fold_set.folds:
        assert not {speaker[i] for i in fold.train_ids} & {speaker[i] for i in fold.test_ids}
    assert fold_set.speaker_independent


def test_every_corpus_is_registered_with_a_default_protocol():
    for name in NEW:
        assert name in CORPORA.names()
        assert default_protocol(name) == name and name in PROTOCOLS.names()
    assert headline_metric("emorynlp") == "weighted_f1" and headline_metric("ravdess") == "ua"


def test_list_corpora_shows_the_default_protocol():
    result = CliRunner().invoke(cli, ["list", "corpora"])
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.output.splitlines()}
    assert set(CORPORA.names()) <= set(lines)
    assert "iemocap-loso" in lines["iemocap"] and "speaker-independent" in lines["tess"]
    assert "manifest" in lines["manifest"]


def test_class_lists_agree_with_the_readers():
    from mer.data import protocols
    from mer.data.corpora import crema_d, emodb, emorynlp, msp_podcast, ravdess, savee, tess

    assert protocols.RAVDESS_EMOTIONS == ravdess.EMOTIONS
    assert protocols.CREMAD_EMOTIONS == tuple(crema_d.EMOTIONS.values())
    assert protocols.TESS_EMOTIONS == tuple(tess.EMOTIONS.values())
    assert protocols.EMODB_EMOTIONS == tuple(emodb.EMOTIONS.values())
    assert protocols.SAVEE_EMOTIONS == tuple(savee.EMOTIONS.values())
    assert protocols.EMORYNLP_EMOTIONS == emorynlp.EMOTIONS
    assert protocols.MSP_CATEGORIES == msp_podcast.CATEGORIES


# ---------------------------------------------------------------------------- RAVDESS

def test_ravdess_fixture(roots):
    corpus = read("ravdess", roots["ravdess"])
    assert len(corpus.utterances) == trees.RAVDESS_COUNTS["utterances"]
    assert dict(corpus.report.skipped) == trees.RAVDESS_SKIPPED
    assert corpus.report.counts["notes"] == {"actor folder and file name disagree (the file name is used)": 1}
    utt = corpus.by_id()["ravdess/03-01-05-02-01-02-01"]
    assert (utt.label, utt.speaker, utt.text) == ("angry", "actor01", "Kids are talking by the door.")
    assert utt.extra["intensity"] == "strong" and utt.extra["repetition"] == 2 and utt.extra["gender"] == "male"
    assert corpus.by_id()["ravdess/03-01-05-01-02-01-02"].audio_path.endswith(".WAV")
    assert corpus.report.counts["speaker"]["actor05"] == 9
    assert not any("._" in u.audio_path or "(1)" in u.audio_path for u in corpus.utterances)


def test_ravdess_song_only_when_asked_and_text_only(roots):
    both = read("ravdess", roots["ravdess"], vocal_channel="both")
    assert both.report.counts["vocal_channel"] == {"song": 1, "speech": 42}
    song = read("ravdess", roots["ravdess"], vocal_channel="song")
    assert [u.id for u in song.utterances] == ["ravdess/03-02-03-01-01-01-01"]
    text = prepare("ravdess", roots["ravdess"], False)  # the empty clip is irrelevant to text features
    assert len(text.utterances) == trees.RAVDESS_COUNTS["text_only"]
    assert all(u.audio_path is None for u in text.utterances)


def test_ravdess_protocol_groups_four_actors(roots):
    corpus = read("ravdess", roots["ravdess"])
    fold_set = folds_of("ravdess", corpus)
    assert [f.name for f in fold_set.folds] == ["actors01", "actors05", "actors09"]
    assert fold_set.labels == ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised")
    assert set(fold_set.folds[0].dev_ids) == {u.id for u in corpus.utterances if u.speaker in ("actor05", "actor06")}
    assert_speaker_independent(fold_set, corpus)


@pytest.mark.skipif(not (SHARED / "ravdess-strong").is_dir(), reason="../shared/data/ravdess-strong absent")
def test_ravdess_on_the_real_flac_subset(tmp_path):
    """A few real clips linked into the Actor_XX layout, then the whole shared subset (336 clips, 24
    actors); labels, texts and the 6 actor groups agree with its manifest."""
    real = SHARED / "ravdess-strong"
    for actor in ("Actor_01", "Actor_02"):
        (tmp_path / actor).mkdir()
        for flac in sorted((real / actor).glob("*.flac"))[:3]:
            (tmp_path / actor / flac.name).symlink_to(flac)
    assert len(read("ravdess", tmp_path).utterances) == 6
    corpus = read("ravdess", real)
    with open(real / "manifest.csv", encoding="utf-8") as f:
        rows = {row["id"]: row for row in csv.DictReader(f)}
    assert len(corpus.utterances) == len(rows) == 336
    for utt in corpus.utterances:
        row = rows[utt.id.split("/", 1)[1]]
        assert (utt.label, utt.text, utt.speaker) == (row["label"], row["text"], row["speaker"])
    fold_set = folds_of("ravdess", corpus)
    fold_of = {f"ravdess/{i}": row["fold"] for i, row in rows.items()}
    for fold in fold_set.folds:
        assert {fold_of[i] for i in fold.test_ids} == {fold.name} and len(fold.test_ids) == 56


# ---------------------------------------------------------------------------- CREMA-D

def test_crema_d_fixture(roots):
    corpus = read("crema-d", roots["crema-d"])
    assert len(corpus.utterances) == trees.CREMAD_COUNTS["utterances"]
    assert len(corpus.report.counts["speaker"]) == trees.CREMAD_COUNTS["speakers"]
    assert dict(corpus.report.skipped) == trees.CREMAD_SKIPPED
    odd = corpus.by_id()["crema-d/1040_ITH_SAD_XX"]
    assert (odd.label, odd.text, odd.extra["level"]) == ("sad", "I think I have a doctor's appointment.", "unspecified")
    notes = corpus.report.counts["notes"]
    assert notes["level X read as XX"] == 1 and sum(v for k, v in notes.items() if k.startswith("known bad")) == 2
    assert all("AudioMP3" not in u.audio_path for u in corpus.utterances)


def test_crema_d_lfs_pointers_are_one_error(tmp_path):
    with pytest.raises(CorpusError, match="git-lfs") as info:
        read("crema-d", trees.make_lfs_only(tmp_path))
    assert "\n" not in str(info.value)


def test_crema_d_speaker_folds(roots):
    corpus = read("crema-d", roots["crema-d"])
    fold_set = folds_of("crema-d", corpus)
    assert len(fold_set.folds) == 5
    assert sorted(i for f in fold_set.folds for i in f.test_ids) == sorted(u.id for u in corpus.utterances)
    assert_speaker_independent(fold_set, corpus)
    assert [f.test_ids for f in folds_of("crema-d", corpus).folds] == [f.test_ids for f in fold_set.folds]
    assert len(folds_of("crema-d", corpus, folds=3).folds) == 3


# ---------------------------------------------------------------------------- TESS

def test_tess_fixture(roots):
    corpus = read("tess", roots["tess"])
    assert len(corpus.utterances) == trees.TESS_COUNTS["utterances"]
    assert corpus.report.counts["speaker"] == {"OAF": trees.TESS_COUNTS["OAF"], "YAF": trees.TESS_COUNTS["YAF"]}
    assert dict(corpus.report.skipped) == trees.TESS_SKIPPED
    assert corpus.report.counts["notes"] == {"folder and file name disagree (the file name is used)": 1}
    ps = corpus.by_id()["tess/OAF_back_ps"]
    assert (ps.label, ps.text, ps.extra["age"]) == ("pleasant_surprise", "back", 64)
    assert "Pleasant_surprise" in ps.audio_path
    assert corpus.by_id()["tess/YAF_dog_sad"].label == "sad"
    assert all("TESS Toronto emotional speech set data/TESS" not in u.audio_path for u in corpus.utterances)


def test_tess_two_speakers_train_on_one(roots):
    corpus = read("tess", roots["tess"])
    fold_set = folds_of("tess", corpus)
    assert [f.name for f in fold_set.folds] == ["OAF", "YAF"]
    speaker = {u.id: u.speaker for u in corpus.utterances}
    for fold in fold_set.folds:
        trained = {speaker[i] for i in fold.train_ids}
        assert trained == {speaker[i] for i in fold.dev_ids} and trained != {fold.name}
        assert len(fold.dev_ids) == round(0.1 * (len(fold.train_ids) + len(fold.dev_ids)))
    assert "dev speakers are training speakers" in fold_set.summary()
    assert_speaker_independent(fold_set, corpus)
    with pytest.raises(MerError, match="dev=stratified"):
        folds_of("tess", corpus, dev="next")


# ---------------------------------------------------------------------------- EmoDB

def test_emodb_fixture(roots):
    corpus = read("emodb", roots["emodb"])
    assert len(corpus.utterances) == trees.EMODB_COUNTS["utterances"]
    assert dict(corpus.report.skipped) == trees.EMODB_SKIPPED
    utt = corpus.by_id()["emodb/03a01Wa"]
    assert (utt.label, utt.speaker, utt.text) == ("anger", "03", "Der Lappen liegt auf dem Eisschrank.")
    assert corpus.by_id()["emodb/10a04Wb"].text == "Heute abend könnte ich es ihm sagen."
    assert corpus.report.counts["speaker"] == {"03": 7, "08": 7, "09": 7, "10": 1}


def test_emodb_leave_one_speaker_out(roots):
    corpus = read("emodb", roots["emodb"])
    fold_set = folds_of("emodb", corpus)
    assert [f.name for f in fold_set.folds] == ["03", "08", "09", "10"]
    assert {corpus.by_id()[i].speaker for i in fold_set.folds[0].dev_ids} == {"08"}
    assert_speaker_independent(fold_set, corpus)


# ---------------------------------------------------------------------------- SAVEE

def test_savee_fixture_both_layouts(roots):
    corpus = read("savee", roots["savee"])
    assert len(corpus.utterances) == trees.SAVEE_COUNTS["utterances"]
    assert dict(corpus.report.skipped) == trees.SAVEE_SKIPPED
    assert corpus.report.counts["notes"] == {"clip number above the 15 the corpus has": 1}
    assert corpus.by_id()["savee/DC_a01"].audio_path.endswith("ALL/DC_a01.wav")
    assert corpus.by_id()["savee/KL_sa01"].label == "sadness"
    assert corpus.by_id()["savee/JE_su01"].label == "surprise"
    fold_set = folds_of("savee", corpus)
    assert [f.name for f in fold_set.folds] == ["DC", "JE", "JK", "KL"]
    assert_speaker_independent(fold_set, corpus)


# ---------------------------------------------------------------------------- EmoryNLP

def test_emorynlp_fixture(roots):
    corpus = read("emorynlp", roots["emorynlp"], False)
    assert corpus.report.counts["split"] == trees.EMORY_COUNTS
    assert dict(corpus.report.skipped) == trees.EMORY_SKIPPED
    hey = corpus.by_id()["emorynlp/1-15-1-6"]
    assert (hey.speaker, hey.turn, hey.dialogue, hey.label) == ("Joey Tribbiani & Chandler Bing", 2, "emorynlp/1-15-1",
                                                                 "joyful")
    assert corpus.by_id()["emorynlp/1-15-1-2"].text == "Coffee, please."
    with pytest.raises(CorpusError, match="text features only"):
        read("emorynlp", roots["emorynlp"])


@pytest.mark.skipif(not (SHARED / "emorynlp").is_dir(), reason="../shared/data/emorynlp absent")
def test_emorynlp_on_the_real_csvs():
    corpus = read("emorynlp", SHARED / "emorynlp", False)
    assert corpus.report.counts["split"] == {"train": 7551, "dev": 954, "test": 984}
    assert not corpus.report.skipped
    fold_set = folds_of("emorynlp", corpus)
    assert fold_set.folds[0].counts() == {"train": 7551, "dev": 954, "test": 984} and not fold_set.notes
    assert not fold_set.speaker_independent


def test_emorynlp_benchmark_uses_the_reader(tmp_path):
    import benchmarks.emorynlp_manifest as bench

    out = tmp_path / "emory.csv"
    bench.write_manifest(trees.make_emorynlp(tmp_path / "tree"), out)
    manifest = prepare("manifest", out, False)
    assert len(manifest.utterances) == 9 and {u.split for u in manifest.utterances} == {"train", "dev", "test"}


# ---------------------------------------------------------------------------- MSP-Podcast

def test_msp_podcast_fixture(roots):
    corpus = read("msp-podcast", roots["msp-podcast"])
    assert corpus.report.counts["split"] == dict(sorted(trees.MSP_COUNTS["8class"].items()))
    assert corpus.report.skipped == {"category O not in labels=8class": 1, "category X not in labels=8class": 1,
                                     "wav missing": 1, "duplicate row": 1,
                                     "Split_Set Test3 (not Train/Development/Test1/Test2)": 1}
    first = corpus.by_id()["msp-podcast/MSP-PODCAST_0001_0001"]
    assert (first.label, first.speaker, first.text) == ("angry", "1", "words of turn 0001")
    assert (first.extra["activation"], first.extra["valence"], first.extra["dominance"]) == (5.2, 2.1, 4.8)
    assert corpus.by_id()["msp-podcast/MSP-PODCAST_0012_0001"].speaker is None
    assert corpus.by_id()["msp-podcast/MSP-PODCAST_0013_0001"].extra["activation"] is None
    assert len(read("msp-podcast", roots["msp-podcast"], labels="all").utterances) == trees.MSP_COUNTS["all"]
    assert len(read("msp-podcast", roots["msp-podcast"], labels="4class").utterances) == trees.MSP_COUNTS["4class"]
    text = prepare("msp-podcast", roots["msp-podcast"], False)
    assert len(text.utterances) == trees.MSP_COUNTS["text_only"]


def test_msp_podcast_official_split(roots):
    corpus = read("msp-podcast", roots["msp-podcast"], labels="all")
    fold_set = folds_of("msp-podcast", corpus)
    assert fold_set.folds[0].counts() == {"train": 5, "dev": 2, "test": 3}
    assert fold_set.excluded == {"category O not in 8class": 1, "category X not in 8class": 1, "test2 (test=test1)": 2}
    assert fold_set.speaker_independent and len(fold_set.labels) == 8
    assert folds_of("msp-podcast", corpus, test="both").folds[0].counts()["test"] == 5
    assert folds_of("msp-podcast", corpus, labels="4class").labels == ("neutral", "happy", "angry", "sad")


# ---------------------------------------------------------------------------- EmoBox folds

def test_emobox_folds_on_emodb(roots, tmp_path):
    corpus = read("emodb", roots["emodb"])
    folds_dir = trees.make_emobox_folds(tmp_path)
    fold_set = folds_of("emobox", corpus, folds_dir=str(folds_dir))
    first, second = fold_set.folds
    by = corpus.by_id()
    assert (first.name, second.name) == ("fold_1", "fold_2")
    assert {by[i].speaker for i in first.test_ids} == {"09"} and len(first.dev_ids) == 3  # 20% of 14 train
    assert {by[i].speaker for i in second.dev_ids} == {"03"} and {by[i].speaker for i in second.test_ids} == {"08"}
    assert fold_set.targets["emodb/03a01Wa"] == "Angry" and "Bored" in fold_set.labels
    assert fold_set.excluded == {"in no EmoBox fold file": 1}  # 10a04Wb
    assert any("16b10Nc" in line for line in fold_set.warnings)
    assert any("no valid file" in line for line in fold_set.notes)


def test_emobox_matches_keys_written_with_dashes():
    from mer.data.utterance import Utterance

    utts = [Utterance("tess/OAF_back_angry", "tess", speaker="OAF", label="angry"),
            Utterance("savee/DC_a01", "savee", speaker="DC", label="anger", audio_path="/x/AudioData/DC/a01.wav")]
    index = _emobox.utterance_index(utts)
    assert _emobox.match(_emobox.Entry("tess-OAF-back-angry", "", "angry"), index) == "tess/OAF_back_angry"
    assert _emobox.match(_emobox.Entry("savee-DC-a01", "downloads/savee/ALL/DC_a01.wav", "a"), index) == "savee/DC_a01"


def test_emobox_errors(roots, tmp_path):
    corpus = read("emodb", roots["emodb"])
    for options, needle in [({}, "folds_dir=PATH"), ({"folds_dir": str(tmp_path / "nope")}, "not a folder"),
                            ({"folds_dir": str(tmp_path)}, "no fold_1")]:
        with pytest.raises(MerError, match=needle):
            folds_of("emobox", corpus, **options)
    folds_dir = trees.make_emobox_folds(tmp_path / "bad")
    (folds_dir / "fold_1" / "emodb_train_fold_1.jsonl").write_text("{not json\n")
    with pytest.raises(MerError, match="line 1 is not JSON"):
        folds_of("emobox", corpus, folds_dir=str(folds_dir))
