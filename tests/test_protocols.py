"""Fold membership, stratification, determinism and errors of the evaluation protocols, on
synthetic Utterance lists (no audio) and on the corpus fixtures."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from mer.data.corpora import prepare
from mer.data.protocols import (
    IEMOCAP4, IEMOCAP7, MELD_COUNTS, PROTOCOLS, SPEAKER_DEPENDENT_NOTE, Fold, ProtocolWarning,
    default_protocol, make_folds,
)
from mer.data.utterance import Utterance
from mer.errors import MerError
from tests.fixtures.corpora import make_iemocap, make_manifest, make_mosei

CAT4 = ("neu", "hap", "exc", "ang", "sad")
CAT7 = ("fru", "neu", "ang", "sad", "exc", "hap", "sur")
MAP4 = {"neu": "neutral", "hap": "happy", "exc": "happy", "ang": "angry", "sad": "sad"}
MAP7 = {"fru": "frustration", "neu": "neutral", "ang": "anger", "sad": "sadness", "exc": "excitement",
        "hap": "happiness", "sur": "surprise"}


# ----------------------------------------------------------------------------- synthetic corpora

def iemocap_like(per_speaker: int = 40, categories=CAT4, mapping=MAP4, seed: int = 0,
                 with_category: bool = True) -> list[Utterance]:
    """5 sessions x 2 speakers; labels drawn with an imbalance; ids, fold and speaker as the reader."""
    rng = random.Random(seed)
    weights = [len(categories) - i for i in range(len(categories))]
    out = []
    for session in range(1, 6):
        for gender in "FM":
            for i in range(per_speaker):
                category = rng.choices(categories, weights)[0]
                label = mapping.get(category, category) if mapping else category
                utt = f"Ses{session:02d}F_impro0{i % 3}_{gender}{i:03d}"
                out.append(Utterance(id=f"iemocap/{utt}", corpus="iemocap", fold=f"Session{session}",
                                     speaker=f"Ses{session:02d}{gender}", dialogue=f"Ses{session:02d}F_impro0{i % 3}",
                                     label=label, extra={"category": category} if with_category else {}))
    return out


def split_corpus(counts: dict[str, int], labels, corpus: str = "meld", float_labels: bool = False,
                 speakers: int = 6) -> list[Utterance]:
    out = []
    for split, n in counts.items():
        for i in range(n):
            label = ((i % 13) - 6) / 2 if float_labels else labels[i % len(labels)]
            out.append(Utterance(id=f"{corpus}/{split}/u{i}", corpus=corpus, split=split,
                                 speaker=f"s{i % speakers}", dialogue=f"{corpus}/{split}/dia{i // 10}", turn=i % 10,
                                 label=label))
    return out


def manifest_like(n: int = 60, split=None, fold=None, labels=("calm", "happy", "sad"), speaker=True):
    out = []
    for i in range(n):
        out.append(Utterance(id=f"emo/u{i}", corpus="emo", label=labels[i % len(labels)],
                             split=split(i) if split else None, fold=fold(i) if fold else None,
                             speaker=f"spk{i % 7}" if speaker else None))
    return out


def by_id(utterances):
    return {u.id: u for u in utterances}


def speakers_of(ids, utts):
    return {utts[i].speaker for i in ids}


def as_sets(fold_set):
    return [(f.name, set(f.train_ids), set(f.dev_ids), set(f.test_ids)) for f in fold_set.folds]


def assert_partition(fold_set):
    """Every fold splits the kept utterances into three disjoint parts."""
    kept = set(fold_set.targets)
    for fold in fold_set.folds:
        train, dev, test = set(fold.train_ids), set(fold.dev_ids), set(fold.test_ids)
        assert not (train & dev) and not (train & test) and not (dev & test)
        assert train | dev | test == kept
        assert len(fold.train_ids) == len(train)  # no repeats


def one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


# ----------------------------------------------------------------------------- registry

def test_registry_lists_every_protocol():
    assert PROTOCOLS.names() == sorted(["meld", "iemocap-loso", "iemocap-10fold", "iemocap7-10fold", "mosei",
                                        "manifest", "demo", "ravdess", "crema-d", "tess", "emodb", "savee",
                                        "emorynlp", "msp-podcast", "emobox"])
    for name in PROTOCOLS.names():
        proto = PROTOCOLS.get(name)
        assert proto.description and "\n" not in proto.description
    assert PROTOCOLS.get("iemocap7-10fold").speaker_independent is False
    assert "SPEAKER-DEPENDENT" in PROTOCOLS.get("iemocap7-10fold").description
    with pytest.raises(MerError, match="unknown protocol 'nope'"):
        make_folds("nope", iemocap_like())
    assert default_protocol("iemocap") == "iemocap-loso" and default_protocol("my-corpus") == "manifest"
    # the demo reader's other sizes and seeds are the demo, a manifest corpus that starts with "demo" is not
    assert default_protocol("demo-n40-s0") == default_protocol("demo-n40-s1-ses3") == "demo"
    assert default_protocol("demo-recordings") == "manifest"


def test_class_lists_agree_with_the_readers():
    from mer.data.corpora import demo, iemocap, meld
    from mer.data import protocols

    assert protocols.MELD_EMOTIONS == meld.EMOTIONS and protocols.MELD_SENTIMENTS == meld.SENTIMENTS
    assert protocols.DEMO_EMOTIONS == demo.EMOTIONS
    assert protocols.IEMOCAP_LABEL_SETS == {k: v for k, v in iemocap.LABEL_SETS.items() if v is not None}
    assert protocols.IEMOCAP4 == tuple(dict.fromkeys(iemocap.LABEL_SETS["4class"].values()))
    assert set(protocols.IEMOCAP7) == set(iemocap.LABEL_SETS["7class"].values())


# ----------------------------------------------------------------------------- IEMOCAP LOSO

def test_loso_folds_hold_out_one_session():
    utts = iemocap_like()
    index = by_id(utts)
    fs = make_folds("iemocap-loso", utts, seed=3)
    assert [f.name for f in fs.folds] == [f"Session{i}" for i in range(1, 6)]
    assert fs.labels == IEMOCAP4 == ("neutral", "happy", "angry", "sad")
    assert fs.speaker_independent and fs.task == "classification"
    assert_partition(fs)
    tested = Counter()
    for fold in fs.folds:
        assert {index[i].fold for i in fold.test_ids} == {fold.name}
        assert not {index[i].fold for i in fold.train_ids + fold.dev_ids} & {fold.name}
        assert not speakers_of(fold.train_ids, index) & speakers_of(fold.test_ids, index)
        tested.update(fold.test_ids)
    assert set(tested) == set(index) and set(tested.values()) == {1}


def test_loso_dev_is_a_stratified_tenth_of_the_training_sessions():
    utts = iemocap_like(per_speaker=60)
    fs = make_folds("iemocap-loso", utts, seed=0)
    for fold in fs.folds:
        pool = fold.train_ids + fold.dev_ids
        assert len(fold.dev_ids) == round(0.1 * len(pool))
        pool_counts = Counter(fs.targets[i] for i in pool)
        dev_counts = Counter(fs.targets[i] for i in fold.dev_ids)
        for label, n in pool_counts.items():
            assert abs(dev_counts[label] - 0.1 * n) < 1.0
    assert fs.targets["iemocap/Ses01F_impro00_F000"] in IEMOCAP4


def test_loso_is_deterministic_by_seed_and_order_free():
    utts = iemocap_like()
    first = as_sets(make_folds("iemocap-loso", utts, seed=7))
    shuffled = utts[:]
    random.Random(1).shuffle(shuffled)
    assert as_sets(make_folds("iemocap-loso", shuffled, seed=7)) == first
    other = as_sets(make_folds("iemocap-loso", utts, seed=8))
    assert [t for *_, t in other] == [t for *_, t in first]  # the test sets do not depend on the seed
    assert [d for _, _, d, _ in other] != [d for _, _, d, _ in first]


def test_loso_next_session_dev():
    utts = iemocap_like()
    index = by_id(utts)
    fs = make_folds("iemocap-loso", utts, dev="next-session")
    for i, fold in enumerate(fs.folds):
        assert {index[u].fold for u in fold.dev_ids} == {f"Session{(i + 1) % 5 + 1}"}
        assert len({index[u].fold for u in fold.train_ids}) == 3


def test_loso_maps_other_label_sets_through_the_category():
    utts = iemocap_like(categories=CAT7 + ("xxx", "oth"), mapping=None)  # read with labels=all
    fs = make_folds("iemocap-loso", utts)
    assert set(fs.targets.values()) == set(IEMOCAP4)
    for u in utts:
        if u.extra["category"] in MAP4:
            assert fs.targets[u.id] == MAP4[u.extra["category"]]
        else:
            assert u.id not in fs.targets
    counts = Counter(u.extra["category"] for u in utts)
    assert fs.excluded == {f"category {c} not in the 4class set": counts[c]
                           for c in ("fru", "oth", "sur", "xxx") if counts[c]}
    # 7-class labels without categories: names of the 7-class set are errors, raw codes are mapped
    seven = iemocap_like(categories=CAT7, mapping=MAP7, with_category=False)
    with pytest.raises(MerError) as excinfo:
        make_folds("iemocap-loso", seven)
    assert "read IEMOCAP with labels=4class" in one_line_error(excinfo)


@pytest.mark.parametrize("protocol", ["iemocap-loso", "iemocap-10fold"])
def test_the_fold_set_says_which_classes_this_data_merged(protocol):
    utts = iemocap_like()
    excited = sum(u.extra["category"] == "exc" for u in utts)
    assert excited and make_folds(protocol, utts).merged == f"excited (exc) -> happy: {excited} utterances"
    assert make_folds(protocol, iemocap_like(categories=("neu", "hap", "ang", "sad"))).merged == ""
    # Labels without IEMOCAP's categories (the demo corpus under an IEMOCAP protocol) merge nothing.
    four = [Utterance(id=u.id, corpus=u.corpus, fold=u.fold, speaker=u.speaker, label=MAP4[u.extra["category"]])
            for u in utts]
    assert make_folds(protocol, four).merged == ""


def test_loso_on_the_iemocap_fixture(tmp_path):
    corpus = prepare("iemocap", make_iemocap(tmp_path), labels="all")
    with pytest.warns(ProtocolWarning) as record:
        fs = make_folds("iemocap-loso", corpus.utterances)
    messages = [str(w.message) for w in record]
    assert any("2 sessions found" in m for m in messages)
    assert any("class angry has no training utterance in fold Session1" in m for m in messages)
    assert [f.name for f in fs.folds] == ["Session1", "Session2"]
    assert len(fs.targets) == 7  # the 4-class utterances of the fixture
    assert_partition(fs)
    assert "excluded" in fs.summary()
    json.dumps(fs.to_dict(ids=True))


# ----------------------------------------------------------------------------- IEMOCAP 10-fold

def test_10fold_dev_is_the_other_speaker_of_the_session():
    utts = iemocap_like()
    index = by_id(utts)
    fs = make_folds("iemocap-10fold", utts)
    assert [f.name for f in fs.folds] == [f"Ses{s:02d}{g}" for s in range(1, 6) for g in "FM"]
    assert_partition(fs)
    for fold in fs.folds:
        test_speakers = speakers_of(fold.test_ids, index)
        dev_speakers = speakers_of(fold.dev_ids, index)
        assert test_speakers == {fold.name}
        other = fold.name[:-1] + ("M" if fold.name.endswith("F") else "F")
        assert dev_speakers == {other}
        assert not speakers_of(fold.train_ids, index) & (test_speakers | dev_speakers)
        assert {index[i].fold for i in fold.train_ids} == {f"Session{s}" for s in range(1, 6)} - {
            index[fold.test_ids[0]].fold}
    assert Counter(i for f in fs.folds for i in f.test_ids) == Counter(set(index))


def test_10fold_needs_two_speakers_per_session():
    utts = iemocap_like()
    utts[0].speaker = "Ses01X"
    with pytest.raises(MerError) as excinfo:
        make_folds("iemocap-10fold", utts)
    assert "Session1 has 3 speakers" in one_line_error(excinfo)


# ----------------------------------------------------------------------------- IEMOCAP 7-class (MCSAN)

def test_iemocap7_every_utterance_is_tested_once():
    utts = iemocap_like(per_speaker=75, categories=CAT7, mapping=MAP7)
    fs = make_folds("iemocap7-10fold", utts, seed=0)
    assert fs.labels == IEMOCAP7
    assert len(fs.folds) == 10
    assert_partition(fs)
    tested = Counter(i for f in fs.folds for i in f.test_ids)
    assert set(tested) == {u.id for u in utts} and set(tested.values()) == {1}
    n = len(utts)
    for i, fold in enumerate(fs.folds):
        assert abs(len(fold.test_ids) - n / 10) <= 1 and abs(len(fold.dev_ids) - n / 10) <= 1
        assert set(fold.dev_ids) == set(fs.folds[(i + 1) % 10].test_ids)


def test_iemocap7_is_stratified_and_seeded():
    utts = iemocap_like(per_speaker=75, categories=CAT7, mapping=MAP7)
    fs = make_folds("iemocap7-10fold", utts, seed=0)
    totals = Counter(fs.targets.values())
    for fold in fs.folds:
        counts = Counter(fs.targets[i] for i in fold.test_ids)
        for label, total in totals.items():
            assert abs(counts[label] - total / 10) < 1.0
    again = list(utts)
    random.Random(5).shuffle(again)
    assert as_sets(make_folds("iemocap7-10fold", again, seed=0)) == as_sets(fs)
    assert as_sets(make_folds("iemocap7-10fold", utts, seed=1)) != as_sets(fs)


def test_iemocap7_says_it_is_speaker_dependent():
    utts = iemocap_like(per_speaker=30, categories=CAT7, mapping=MAP7)
    fs = make_folds("iemocap7-10fold", utts)
    assert fs.speaker_independent is False
    assert "SPEAKER-DEPENDENT" in fs.description
    assert "SPEAKER-DEPENDENT" in fs.summary()
    assert SPEAKER_DEPENDENT_NOTE in fs.notes
    index = by_id(utts)
    assert any(speakers_of(f.train_ids, index) & speakers_of(f.test_ids, index) for f in fs.folds)


def test_iemocap7_from_4class_labels_maps_the_categories():
    utts = iemocap_like(per_speaker=30)  # categories neu hap exc ang sad, labels 4-class names
    with pytest.warns(ProtocolWarning) as record:
        fs = make_folds("iemocap7-10fold", utts)
    assert sorted(str(w.message) for w in record) == [
        f"iemocap7-10fold: class {c} has no training utterance in any fold" for c in ("frustration", "surprise")]
    assert set(fs.targets.values()) == {"neutral", "happiness", "excitement", "anger", "sadness"}
    with pytest.raises(MerError) as excinfo:
        make_folds("iemocap7-10fold", utts[:5])
    assert "fewer than folds=10" in one_line_error(excinfo)


# ----------------------------------------------------------------------------- MELD

def test_meld_official_counts_and_order():
    utts = split_corpus(MELD_COUNTS, ["neutral", "joy", "anger", "surprise", "sadness", "disgust", "fear"])
    fs = make_folds("meld", utts)
    assert fs.labels == ("neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger")
    [fold] = fs.folds
    assert isinstance(fold, Fold) and fold.name == "official"
    assert fold.counts() == {"train": 9989, "dev": 1109, "test": 2610}
    assert all(u.startswith("meld/test/") for u in fold.test_ids)
    assert not any("published" in note for note in fs.notes)
    assert fs.speaker_independent is False  # the same characters speak in every split
    assert_partition(fs)


def test_meld_sentiment_and_count_note():
    utts = split_corpus({"train": 30, "dev": 6, "test": 9}, ["negative", "neutral", "positive"])
    fs = make_folds("meld", utts)
    assert fs.labels == ("negative", "neutral", "positive")
    assert any("9989 / 1109 / 2610" in note for note in fs.notes)
    # label=sentiment reads the sentiment the reader keeps in extra
    emotions = split_corpus({"train": 10, "dev": 3, "test": 3}, ["joy", "anger"])
    for u in emotions:
        u.extra["sentiment"] = "positive" if u.label == "joy" else "negative"
    with pytest.warns(ProtocolWarning, match="class neutral"):
        fs = make_folds("meld", emotions, label="sentiment")
    assert set(fs.targets.values()) == {"positive", "negative"}


def test_meld_errors():
    utts = split_corpus({"train": 10, "dev": 3}, ["joy"])
    with pytest.raises(MerError) as excinfo:
        make_folds("meld", utts)
    assert "no test utterances" in one_line_error(excinfo)
    with pytest.raises(MerError) as excinfo:
        make_folds("meld", iemocap_like())
    assert "have no train/dev/test split" in one_line_error(excinfo)
    bad = split_corpus({"train": 5, "dev": 5, "test": 5}, ["joy", "happy"])
    with pytest.raises(MerError) as excinfo:
        make_folds("meld", bad)
    assert "neither a MELD emotion nor a sentiment" in one_line_error(excinfo)


# ----------------------------------------------------------------------------- MOSEI

def test_mosei_regression_split():
    utts = split_corpus({"train": 20, "dev": 5, "test": 7}, None, corpus="mosei", float_labels=True)
    fs = make_folds("mosei", utts)
    assert fs.labels is None and fs.task == "regression"
    assert fs.folds[0].counts() == {"train": 20, "dev": 5, "test": 7}
    assert all(isinstance(v, float) for v in fs.targets.values())
    assert "16326 / 1871 / 4659" in fs.notes[0]
    utts[0].label = "happy"
    with pytest.raises(MerError) as excinfo:
        make_folds("mosei", utts)
    assert "is not a number" in one_line_error(excinfo)


def test_mosei_on_the_fixture(tmp_path):
    corpus = prepare("mosei", make_mosei(tmp_path))
    fs = make_folds("mosei", corpus.utterances)
    assert fs.folds[0].counts() == {"train": 2, "dev": 2, "test": 2}
    assert fs.speaker_independent  # videos are disjoint across the standard folds


# ----------------------------------------------------------------------------- manifest

def test_manifest_split_column_accepts_valid():
    names = ["train"] * 6 + ["valid", "VAL"] + ["test"] * 2
    utts = manifest_like(50, split=lambda i: names[i % 10])
    fs = make_folds("manifest", utts)
    assert fs.labels == ("calm", "happy", "sad")
    [fold] = fs.folds
    assert fold.counts() == {"train": 30, "dev": 10, "test": 10}
    assert fs.speaker_independent is False  # the same seven speakers everywhere
    assert_partition(fs)


def test_manifest_without_dev_rows_carves_a_stratified_dev():
    utts = manifest_like(60, split=lambda i: "test" if i % 5 == 0 else "train")
    fs = make_folds("manifest", utts, seed=2)
    [fold] = fs.folds
    assert len(fold.dev_ids) == round(0.1 * 48) and len(fold.test_ids) == 12
    assert fs.notes and "dev = a seeded" in fs.notes[0]
    assert as_sets(make_folds("manifest", utts, seed=2)) == as_sets(fs)


def test_manifest_fold_column_leave_one_fold_out():
    utts = manifest_like(40, fold=lambda i: str([1, 2, 10, 3][i % 4]), speaker=False)
    index = by_id(utts)
    fs = make_folds("manifest", utts)
    assert [f.name for f in fs.folds] == ["1", "2", "3", "10"]  # natural order
    for i, fold in enumerate(fs.folds):
        assert {index[u].fold for u in fold.test_ids} == {fold.name}
        assert {index[u].fold for u in fold.dev_ids} == {fs.folds[(i + 1) % 4].name}
    assert "leave-one-fold-out" in fs.description
    assert_partition(fs)


def test_manifest_speaker_independent_when_speakers_are_disjoint():
    utts = manifest_like(30, fold=lambda i: f"f{i % 3}")
    for i, u in enumerate(utts):
        u.label = ("calm", "happy", "sad")[(i // 3) % 3]
        u.speaker = f"p-{u.fold}"
    assert make_folds("manifest", utts).speaker_independent


def test_manifest_regression_labels():
    utts = manifest_like(20, split=lambda i: ("train", "dev", "test", "train")[i % 4], labels=(0.5, -1.0, 2.0))
    fs = make_folds("manifest", utts)
    assert fs.labels is None and fs.targets[utts[1].id] == -1.0


def test_manifest_errors():
    with pytest.raises(MerError) as excinfo:
        make_folds("manifest", manifest_like(10))
    assert "neither a split nor a fold column" in one_line_error(excinfo)
    with pytest.raises(MerError) as excinfo:
        make_folds("manifest", manifest_like(10, split=lambda i: "train" if i else None))
    assert "1 utterances have no split" in one_line_error(excinfo)
    with pytest.raises(MerError) as excinfo:
        make_folds("manifest", manifest_like(10, split=lambda i: ("train", "holdout")[i % 2]))
    assert "split 'holdout'" in one_line_error(excinfo)
    with pytest.raises(MerError) as excinfo:
        make_folds("manifest", manifest_like(10, split=lambda i: ("train", "dev")[i % 2]))
    assert "no test rows" in one_line_error(excinfo)
    with pytest.raises(MerError) as excinfo:
        make_folds("manifest", manifest_like(10, fold=lambda i: ("a", "b")[i % 2]))
    assert "at least 3 folds" in one_line_error(excinfo)
    with pytest.raises(MerError) as excinfo:
        make_folds("manifest", manifest_like(10, split=lambda i: "train"), by="fold")
    assert "have no fold" in one_line_error(excinfo)


def test_manifest_on_the_fixture(tmp_path):
    corpus = prepare("manifest", make_manifest(tmp_path))
    with pytest.warns(ProtocolWarning, match="class sad has no training utterance"):
        fs = make_folds("manifest", corpus.utterances)
    assert fs.folds[0].counts() == {"train": 1, "dev": 1, "test": 1}


# ----------------------------------------------------------------------------- demo

def test_demo_split_by_session():
    utts = []
    for s in range(1, 6):
        split = "train" if s <= 3 else "dev" if s == 4 else "test"
        for i in range(8):
            utts.append(Utterance(id=f"demo/Ses{s:02d}_d00_t{i:02d}", corpus="demo", split=split,
                                  fold=f"Ses{s:02d}", speaker=f"Ses{s:02d}{'FM'[i % 2]}",
                                  label=("neutral", "happy", "angry", "sad")[i % 4]))
    fs = make_folds("demo", utts)
    assert fs.labels == ("neutral", "happy", "angry", "sad")
    assert fs.folds[0].counts() == {"train": 24, "dev": 8, "test": 8}
    assert fs.speaker_independent
    # the same list also runs leave-one-session-out
    assert len(make_folds("iemocap-loso", utts).folds) == 5


# ----------------------------------------------------------------------------- input checks

def test_session_protocols_reject_corpora_without_sessions():
    meld = split_corpus({"train": 10, "dev": 3, "test": 3}, ["joy"])
    for name in ("iemocap-loso", "iemocap-10fold"):
        with pytest.raises(MerError) as excinfo:
            make_folds(name, meld)
        message = one_line_error(excinfo)
        assert "have no session" in message and "--dataset iemocap" in message


def test_speaker_in_two_sessions_is_an_error():
    utts = iemocap_like()
    utts[-1].speaker = "Ses01F"
    with pytest.raises(MerError) as excinfo:
        make_folds("iemocap-loso", utts)
    assert "appears in sessions" in one_line_error(excinfo)


def test_generic_input_errors():
    utts = iemocap_like()
    with pytest.raises(MerError, match="no utterances"):
        make_folds("iemocap-loso", [])
    with pytest.raises(MerError, match="appears twice"):
        make_folds("iemocap-loso", utts + utts[:1])
    with pytest.raises(MerError, match="unknown option 'dve'; its options: dev, dev_fraction"):
        make_folds("iemocap-loso", utts, dve="next-session")
    with pytest.raises(MerError, match="dev_fraction"):
        make_folds("iemocap-loso", utts, dev_fraction=1.5)
    with pytest.raises(MerError, match="seed"):
        make_folds("iemocap-loso", utts, seed="x")
    utts[0].label, utts[0].extra = "joy", {}
    with pytest.raises(MerError) as excinfo:
        make_folds("iemocap-loso", utts)
    assert "label 'joy'" in one_line_error(excinfo)


def test_missing_training_class_is_a_warning():
    utts = iemocap_like()
    for u in utts:  # no angry utterance outside Session1
        if u.fold != "Session1" and u.extra["category"] == "ang":
            u.extra["category"], u.label = "neu", "neutral"
    with pytest.warns(ProtocolWarning, match="class angry has no training utterance in fold Session1"):
        fs = make_folds("iemocap-loso", utts)
    assert fs.warnings and "angry" in fs.summary()


def test_options_come_as_text_from_the_command_line():
    utts = iemocap_like()
    a = make_folds("iemocap-loso", utts, seed="4", dev_fraction="0.2")
    b = make_folds("iemocap-loso", utts, seed=4, dev_fraction=0.2)
    assert as_sets(a) == as_sets(b) and a.seed == 4


def test_a_fold_refuses_an_utterance_listed_twice_in_a_split():
    Fold("ok", ("a", "b"), ("c",), ("d",))
    with pytest.raises(MerError, match="fold f1: its dev split lists c twice"):
        Fold("f1", ("a", "b"), ("c", "c"), ("d",))
