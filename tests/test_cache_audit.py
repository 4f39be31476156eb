"""Defects of a user audit of the cache: a shard's ids checked against its manifest record when a
reader opens it, pending work on a read-only cache, a feature folder without spec.json, lost commit
records, and what `mer cache verify` says (and does) about them."""

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from mer.cache.locks import ReadOnlyCache
from mer.cache.reader import FeatureCache
from mer.cache.verify import verify_cache
from mer.cache import writer as writer_module
from mer.cache.writer import FeatureWriter
from mer.cli import cli
from mer.errors import CacheError
from tests.helpers.toy import TOY_IDS, toy_arrays, toy_spec
from tests.test_cache import write_all
from tests.test_cache_integrity import assert_whole, suggested
from tests.test_cache_safety import read_only

IDS = TOY_IDS[:24]  # three shards of 8


def fix_for(cache: Path, feature_dir: Path) -> str:
    return f"`mer cache verify {cache} --corpus toy --feature {feature_dir.name} --repair`"


def swap(a: Path, b: Path) -> None:
    a.rename(a.with_name("t"))
    b.rename(a)
    a.with_name("t").rename(b)


def flip_in_ids(shard: Path, utt_id: str) -> None:
    """Flip one bit of one id string in the file (the ids carry no Fletcher-32 checksum): 'u' becomes 't'."""
    data = bytearray(shard.read_bytes())
    (at,) = [m.start() for m in re.finditer(re.escape(utt_id.encode()), data)]
    data[at + 4] ^= 0x01
    shard.write_bytes(bytes(data))


def reads(store, utt_id):
    """Every way a reader reaches a shard: random access, one read per shard, streaming."""
    return {"get": lambda: store.get(utt_id), "read_rows": lambda: list(store.read_rows([utt_id])),
            "iter": lambda: list(store)}


# ---- 1: a shard's ids are checked against the manifest's record when it is opened ------------------

@pytest.mark.parametrize("damage", ["swap", "flip"])
def test_a_shard_whose_ids_differ_from_its_record_is_refused_naming_it_and_the_repair(tmp_path, damage):
    writer = write_all(tmp_path, toy_spec(), IDS)
    shard = writer.dir / "shard-00001.h5"
    if damage == "swap":
        swap(shard, writer.dir / "shard-00002.h5")
    else:
        flip_in_ids(shard, "toy/u12")
    for way, read in reads(FeatureCache(tmp_path).open("toy", "toy"), "toy/u9").items():
        with pytest.raises(CacheError) as error:
            read()
        message = str(error.value)
        assert message.startswith(f"{shard}: ") and "ids" in message, (way, message)
        assert fix_for(tmp_path, writer.dir) in message and "\n" not in message, (way, message)
    (repaired,) = verify_cache(tmp_path, repair=True)
    assert repaired.dropped
    write_all(tmp_path, toy_spec(), IDS)
    assert_whole(tmp_path, IDS)


def test_an_id_the_manifest_does_not_have_is_one_line_naming_the_feature_and_the_id(tmp_path):
    writer = write_all(tmp_path, toy_spec(), IDS[:8])
    store = FeatureCache(tmp_path).open("toy", "toy")
    for way in ("get", "read_rows"):
        with pytest.raises(CacheError) as error:
            reads(store, "toy/nope")[way]()
        message = str(error.value)
        assert message.startswith(f"{writer.dir}: ") and "'toy/nope'" in message and "\n" not in message, message
        assert isinstance(error.value, KeyError)  # callers that look up ids still catch it


# ---- 2: pending work on a read-only cache is an error, also when a shard is truncated or missing -------

@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_a_read_only_cache_with_a_damaged_shard_asks_for_a_writable_cache(tmp_path, monkeypatch, damage):
    writer = write_all(tmp_path, toy_spec(), IDS)
    shard = writer.dir / "shard-00001.h5"
    if damage == "truncate":
        shard.write_bytes(shard.read_bytes()[:1000])
    else:
        shard.unlink()
    read_only(monkeypatch, tmp_path)
    with pytest.raises(ReadOnlyCache) as error:
        FeatureWriter(tmp_path, "toy", toy_spec()).claim(IDS)
    assert str(error.value).startswith(f"{writer.dir}: cannot write here, and some utterances (e.g. toy/u8) ")


# ---- 3: a feature folder without spec.json is reported, and --repair restores it ------------------------

def test_a_feature_folder_without_spec_json_is_reported_and_restored_by_the_suggested_repair(tmp_path):
    writer = write_all(tmp_path, toy_spec(), IDS)
    (writer.dir / "spec.json").unlink()
    runner = CliRunner()
    found = runner.invoke(cli, ["cache", "verify", str(tmp_path)])
    assert found.exit_code == 1 and "PROBLEMS" in found.output, found.output
    (problem,) = [line.strip() for line in found.output.splitlines() if "spec.json" in line]
    assert problem.startswith(f"{writer.dir / 'spec.json'}: missing") and fix_for(tmp_path, writer.dir) in problem
    repaired = runner.invoke(cli, suggested(problem))
    assert repaired.exit_code == 0 and "spec.json: restored" in repaired.output, repaired.output
    assert_whole(tmp_path, IDS)


def test_a_feature_folder_with_nothing_left_that_says_its_spec_is_reported(tmp_path):
    writer = write_all(tmp_path, toy_spec(), IDS)
    for path in [writer.dir / "spec.json", writer.dir / "manifest.json", *writer.dir.glob("shard-*.h5")]:
        path.unlink()
    (tmp_path / "toy" / "utterances.jsonl").write_text("")  # the corpus is still there
    (report,) = verify_cache(tmp_path)
    assert not report.ok and report.problems[0].startswith(f"{writer.dir}: no spec.json")
    assert f"`rm -r {writer.dir}`" in report.problems[0]


# ---- 5: a shard whose commit record was lost: the re-extract recomputes it and leaves nothing behind -------

def test_after_a_lost_commit_record_the_rerun_leaves_a_cache_that_verifies(tmp_path):
    writer = write_all(tmp_path, toy_spec(), IDS)
    (writer.dir / "shard-00001.json").unlink()
    (report,) = verify_cache(tmp_path)
    (stray,) = [p for p in report.problems if p.startswith(f"{writer.dir / 'shard-00001.h5'}: ")]
    assert fix_for(tmp_path, writer.dir) in stray and "recompute what it drops" not in stray
    write_all(tmp_path, toy_spec(), IDS)
    assert_whole(tmp_path, IDS)
    assert all(p.with_suffix(".json").exists() for p in writer.dir.glob("shard-*.h5"))


def test_repair_of_a_stray_shard_alone_says_nothing_needs_recomputing(tmp_path):
    writer = write_all(tmp_path, toy_spec(), IDS)
    (writer.dir / "shard-00001.h5").rename(writer.dir / "shard-00007.h5")  # no record lists it
    (writer.dir / "shard-00001.json").unlink()
    write_all(tmp_path, toy_spec(), IDS)  # recomputes shard-00001's utterances (or removes the stray itself)
    (writer.dir / "shard-00009.h5").write_bytes((writer.dir / "shard-00000.h5").read_bytes())
    (repaired,) = verify_cache(tmp_path, repair=True)
    assert repaired.ok and repaired.dropped == [f"{writer.dir / 'shard-00009.h5'}: removed (no commit record lists it)"]
    assert not any("mer extract" in note for note in repaired.notes), repaired.notes


# ---- 6: what verify says: failures under --strict, counts that add up, dead writers' files, read-only --------

def corpus_manifest(cache: Path, ids) -> None:
    (cache / "toy" / "utterances.jsonl").write_text("".join(json.dumps({"id": i, "corpus": "toy"}) + "\n" for i in ids))


def test_strict_says_which_recorded_failures_make_it_fail(tmp_path):
    writer = FeatureWriter(tmp_path, "toy", toy_spec())
    claim = writer.claim(IDS[:8])
    writer.commit(claim, writer.write_temp(claim, toy_arrays(IDS[:6])), {IDS[6]: "cannot decode", IDS[7]: "too short"})
    result = CliRunner().invoke(cli, ["cache", "verify", str(tmp_path), "--strict"])
    assert result.exit_code == 1
    (line,) = [line.strip() for line in result.output.splitlines() if "recorded as failed" in line]
    assert line.startswith(f"{writer.dir}: 2 utterances recorded as failed (e.g. toy/u6: cannot decode)"), line


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_the_counts_add_up_to_the_corpus_when_a_shard_is_damaged(tmp_path, damage):
    writer = write_all(tmp_path, toy_spec(), IDS)
    corpus_manifest(tmp_path, IDS)
    shard = writer.dir / "shard-00001.h5"
    shard.write_bytes(shard.read_bytes()[:1000]) if damage == "truncate" else shard.unlink()
    (report,) = verify_cache(tmp_path)
    assert (report.stored, report.failed, report.missing) == (16, 0, 8)
    (problem,) = report.problems
    assert problem.startswith(f"{shard}: ") and "8 utterances" in problem


def test_repair_removes_and_reports_a_dead_writers_claim_and_temporary_files(tmp_path):
    writer = write_all(tmp_path, toy_spec(), IDS[:16])
    claim = writer.claim(IDS[16:24])
    temp = writer.write_temp(claim, toy_arrays(claim.ids))
    claim.held.release()  # what the kernel does when the writer dies (SIGTERM, SIGKILL)
    writer_module._own_claims.clear()
    claim_path = writer.dir / f"{claim.name}.claim"
    (report,) = verify_cache(tmp_path)
    assert any(p.startswith(f"{claim_path}: ") and "--repair`" in p for p in report.problems), report.problems
    (repaired,) = verify_cache(tmp_path, repair=True)
    assert repaired.ok and not claim_path.exists() and not temp.exists()
    assert any(line.startswith(f"{claim_path}: removed") for line in repaired.dropped), repaired.dropped


def test_repair_on_a_read_only_cache_does_not_suggest_a_cache_option(tmp_path, monkeypatch):
    writer = write_all(tmp_path, toy_spec(), IDS)
    (writer.dir / "shard-00001.json").unlink()  # something to repair: a stray shard
    read_only(monkeypatch, tmp_path)
    with pytest.raises(CacheError) as error:
        verify_cache(tmp_path, repair=True)
    message = str(error.value)
    assert message.startswith(f"{writer.dir}: cannot write here") and "--cache" not in message, message
