"""A damaged or hostile cache never yields a wrong value: per-chunk checksums, no links out of a
shard, corrupt records and manifests named with a fix that works; `mer cache verify --repair` and a
rerun of `mer extract` bring it back with every utterance exactly once and nothing else lost."""

import json
import re
import shlex
import shutil
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from mer.cache import shard as shard_module
from mer.cache.manifest import build_manifest, read_shard_records, write_manifest
from mer.cache.reader import FeatureCache
from mer.cache.shard import ShardReader
from mer.cache.verify import verify_cache
from mer.cache.writer import FeatureWriter
from mer.cli import cli
from mer.errors import CacheError
from tests.helpers.toy import TOY_IDS, toy_array, toy_spec
from tests.test_cache import write_all
from tests.test_extract_cli import DEMO, mer, stored_copies

CORPUS = "demo-n40-s0"


# ---- helpers ---------------------------------------------------------------------------------------

def flip_data_byte(shard: Path) -> None:
    """Flip one bit in the middle of the first chunk of `data`: the sha256 changes, the size does not."""
    with h5py.File(shard, "r") as f:
        chunk = f["data"].id.get_chunk_info(0)
    with open(shard, "r+b") as fh:
        fh.seek(chunk.byte_offset + chunk.size // 2)
        byte = fh.read(1)[0]
        fh.seek(-1, 1)
        fh.write(bytes([byte ^ 0x01]))


def suggested(message: str, program: str = "mer cache verify") -> list[str]:
    """The arguments of the `program ...` command a message suggests, as a shell would split them."""
    command = next(c for c in re.findall(r"`([^`]+)`", message) if c.startswith(program))
    return shlex.split(command)[1:]


def restamp(feature_dir: Path, stem: str) -> None:
    """What a hostile writer does after editing a shard: make its record and the manifest agree with it."""
    from mer.hashing import sha256_file

    record_path = feature_dir / f"{stem}.json"
    record = json.loads(record_path.read_text())
    record.update(sha256=sha256_file(feature_dir / f"{stem}.h5"), size=(feature_dir / f"{stem}.h5").stat().st_size)
    record_path.write_text(json.dumps(record))
    spec = toy_spec()
    write_manifest(feature_dir, build_manifest(feature_dir, "toy", spec, read_shard_records(feature_dir)))


def assert_whole(cache: Path, ids=TOY_IDS[:16]) -> None:
    """Verifies ok, every id stored exactly once, every value as computed."""
    (report,) = verify_cache(cache)
    assert report.ok, report.problems
    store = FeatureCache(cache).open("toy", "toy")
    copies = Counter(i for _, reader in store.iter_shards() for i in reader.ids)
    assert sorted(copies) == sorted(ids) and set(copies.values()) == {1}
    for utt_id in ids:
        np.testing.assert_allclose(store.get(utt_id), toy_array(utt_id), atol=2e-3, rtol=2e-3)


# ---- item 1: per-chunk checksums ----------------------------------------------------------------------

def test_every_filterable_dataset_carries_fletcher32(tmp_path):
    writer = FeatureWriter(tmp_path, "toy", toy_spec())
    claim = writer.claim(TOY_IDS[:3])
    extras = {i: {"word_ids": np.arange(3, dtype=np.int32)} for i in claim.ids}
    writer.commit(claim, writer.write_temp(claim, {i: toy_array(i) for i in claim.ids}, extras), {})
    with h5py.File(writer.dir / "shard-00000.h5", "r") as f:
        for name in ("data", "offsets", "extras/word_ids/data", "extras/word_ids/offsets"):
            assert f[name].fletcher32, name


def test_a_flipped_byte_in_a_data_chunk_fails_random_access_and_streaming(tmp_path):
    writer = write_all(tmp_path, toy_spec(), TOY_IDS[:16])
    shard = writer.dir / "shard-00000.h5"
    flip_data_byte(shard)
    store = FeatureCache(tmp_path).open("toy", "toy")
    fix = f"mer cache verify {tmp_path} --corpus toy --feature {writer.dir.name} --repair"
    with pytest.raises(CacheError) as random_access:
        store.get("toy/u0")
    with pytest.raises(CacheError) as streaming:
        list(store)
    for error in (random_access, streaming):
        message = str(error.value)
        assert message.startswith(f"{shard}: unreadable shard") and f"`{fix}`" in message
        assert "then the same `mer extract` again" in message and "\n" not in message
    np.testing.assert_allclose(store.get("toy/u8"), toy_array("toy/u8"), atol=2e-3)  # other shards still read


def test_a_shard_written_without_checksums_still_reads(tmp_path, monkeypatch):
    monkeypatch.setattr(shard_module, "_checked_dataset", lambda group, name, data, **options:
                        group.create_dataset(name, data=data, **options))
    writer = write_all(tmp_path, toy_spec(), TOY_IDS[:16])
    with h5py.File(writer.dir / "shard-00000.h5", "r") as f:
        assert not f["data"].fletcher32
    monkeypatch.undo()
    assert_whole(tmp_path)


# ---- item 3: nothing outside the shard is read ---------------------------------------------------------

def _external_link(f, other):
    del f["data"]
    f["data"] = h5py.ExternalLink(str(other), "/secret")
    return "external link"


def _soft_link(f, other):
    f.move("data", "hidden")
    f["data"] = h5py.SoftLink("/hidden")
    return "SoftLink"


def _external_storage(f, other):
    rows = f["data"].shape
    del f["data"]
    f.create_dataset("data", shape=rows, dtype="float16", external=[(str(other), 0, h5py.h5f.UNLIMITED)])
    return "external file"


def _virtual(f, other):
    rows = f["data"].shape
    del f["data"]
    layout = h5py.VirtualLayout(shape=rows, dtype="float16")
    layout[:] = h5py.VirtualSource(str(other), "secret", shape=rows)
    f.create_virtual_dataset("data", layout)
    return "virtual dataset"


@pytest.mark.parametrize("attack", [_external_link, _soft_link, _external_storage, _virtual])
def test_a_shard_that_reads_other_files_is_refused_reported_and_repaired(tmp_path, attack):
    writer = write_all(tmp_path / "cache", toy_spec(), TOY_IDS[:16])
    other = tmp_path / "secret.h5"
    with h5py.File(other, "w") as f:
        f["secret"] = np.full((100, 4), 7, np.float16)
    shard = writer.dir / "shard-00000.h5"
    with h5py.File(shard, "a") as f:
        what = attack(f, other)
    restamp(writer.dir, "shard-00000")  # record and manifest agree with the new file: the sha256 passes
    with pytest.raises(CacheError, match=re.escape(f"{shard}: refused: 'data' is ")) as refused:
        FeatureCache(tmp_path / "cache").open("toy", "toy").get("toy/u0")
    assert what in str(refused.value) and "--repair`" in str(refused.value)
    (report,) = verify_cache(tmp_path / "cache")
    assert not report.ok and any(str(shard) in p and what in p for p in report.problems)
    (repaired,) = verify_cache(tmp_path / "cache", repair=True)
    assert repaired.ok and not shard.exists() and any("dropped" in line for line in repaired.dropped)
    write_all(tmp_path / "cache", toy_spec(), TOY_IDS[:16])
    assert_whole(tmp_path / "cache")


def test_a_manifest_listing_a_path_outside_the_folder_is_refused(tmp_path):
    writer = write_all(tmp_path, toy_spec(), TOY_IDS[:8])
    manifest = json.loads((writer.dir / "manifest.json").read_text())
    manifest["shards"][0]["file"] = "../../elsewhere.h5"
    (writer.dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CacheError, match=r"not a shard of this folder; run `mer cache verify .* --repair`"):
        FeatureCache(tmp_path).open("toy", "toy")
    verify_cache(tmp_path, repair=True)
    assert_whole(tmp_path, TOY_IDS[:8])


# ---- item 2: the writer drops missing and truncated shards; verify --repair the rest ---------------------

@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_a_rerun_recomputes_a_missing_or_truncated_shard(tmp_path, damage):
    writer = write_all(tmp_path, toy_spec(), TOY_IDS[:16])
    shard = writer.dir / "shard-00001.h5"
    if damage == "truncate":
        shard.write_bytes(shard.read_bytes()[:1000])
    else:
        shard.unlink()
    reader = FeatureWriter(tmp_path, "toy", toy_spec())
    assert reader.pending(TOY_IDS[:16]) == TOY_IDS[8:16]  # counted as pending, but nothing is removed unlocked
    assert (writer.dir / "shard-00001.json").exists()
    (report,) = verify_cache(tmp_path)
    assert any(p.startswith(f"{shard}: ") and "--repair`" in p for p in report.problems)
    write_all(tmp_path, toy_spec(), TOY_IDS[:16])
    assert_whole(tmp_path)


def test_a_flipped_byte_is_dropped_by_repair_and_recomputed_by_the_rerun(tmp_path):
    writer = write_all(tmp_path, toy_spec(), TOY_IDS[:16])
    flip_data_byte(writer.dir / "shard-00001.h5")
    (report,) = verify_cache(tmp_path)
    assert any("shard-00001.h5: checksum mismatch" in p for p in report.problems)
    (repaired,) = verify_cache(tmp_path, repair=True)
    assert repaired.ok and repaired.stored == 8
    assert repaired.dropped == [f"{writer.dir / 'shard-00001.h5'}: dropped (checksum mismatch (the file changed "
                                "after it was written)) with its record; 8 utterances to recompute"]
    assert FeatureWriter(tmp_path, "toy", toy_spec()).pending(TOY_IDS[:16]) == TOY_IDS[8:16]
    write_all(tmp_path, toy_spec(), TOY_IDS[:16])
    assert_whole(tmp_path)


def test_a_dropped_index_reused_by_another_writer_is_not_read_from_a_stale_memo(tmp_path):
    first = write_all(tmp_path, toy_spec(), TOY_IDS[:8])  # shard-00000, remembered by `first`
    assert first.pending(TOY_IDS[:16]) == TOY_IDS[8:16]
    (first.dir / "shard-00000.h5").unlink()
    other = FeatureWriter(tmp_path, "toy", toy_spec())
    claim = other.claim(TOY_IDS[8:16])  # drops shard-00000 and takes its index again
    assert claim.index == 0
    other.commit(claim, other.write_temp(claim, {i: toy_array(i) for i in claim.ids}), {})
    assert first.pending(TOY_IDS[:16]) == TOY_IDS[:8]


# ---- item 4: corrupt records and manifests --------------------------------------------------------------

def _truncated(text: str) -> str:
    return text[:40]


def _pointing_elsewhere(text: str) -> str:
    return json.dumps({**json.loads(text), "file": "../../../etc/elsewhere.h5"})


@pytest.mark.parametrize("corrupt", [_truncated, _pointing_elsewhere])
def test_a_corrupt_record_is_named_reported_and_repaired(tmp_path, corrupt):
    writer = write_all(tmp_path, toy_spec(), TOY_IDS[:16])
    record = writer.dir / "shard-00001.json"
    record.write_text(corrupt(record.read_text()))
    fix = f"`mer cache verify {tmp_path} --corpus toy --feature {writer.dir.name} --repair`"
    with pytest.raises(CacheError) as error:
        write_all(tmp_path, toy_spec(), TOY_IDS[:16])
    assert str(error.value).startswith(f"{record}: corrupt commit record (") and fix in str(error.value)
    (report,) = verify_cache(tmp_path)
    assert any(p.startswith(f"{record}: corrupt commit record") for p in report.problems)
    (repaired,) = verify_cache(tmp_path, repair=True)
    assert repaired.ok and not record.exists() and not (writer.dir / "shard-00001.h5").exists()
    write_all(tmp_path, toy_spec(), TOY_IDS[:16])
    assert_whole(tmp_path)


def test_a_corrupt_manifest_is_rebuilt_by_repair(tmp_path):
    writer = write_all(tmp_path, toy_spec(), TOY_IDS[:16])
    (writer.dir / "manifest.json").write_text('{"shards": [')
    with pytest.raises(CacheError, match=r"manifest.json: unreadable manifest .* run `mer cache verify .* --repair`"):
        FeatureCache(tmp_path).open("toy", "toy")
    (report,) = verify_cache(tmp_path)
    assert not report.ok
    (repaired,) = verify_cache(tmp_path, repair=True)
    assert repaired.ok and repaired.stored == 16
    assert_whole(tmp_path)


def test_a_manifest_that_disagrees_with_the_records_is_rebuilt_by_repair(tmp_path):
    writer = write_all(tmp_path, toy_spec(), TOY_IDS[:16])
    manifest = json.loads((writer.dir / "manifest.json").read_text())
    del manifest["shards"][1]  # readers find shards through the manifest: 8 utterances would be invisible
    (writer.dir / "manifest.json").write_text(json.dumps(manifest))
    (report,) = verify_cache(tmp_path)
    assert report.problems == [f"{writer.dir / 'manifest.json'}: disagrees with the shard records; run `mer cache "
                               f"verify {tmp_path} --corpus toy --feature {writer.dir.name} --repair` (it rebuilds "
                               "the manifest from them)"]
    (repaired,) = verify_cache(tmp_path, repair=True)
    assert repaired.ok and repaired.dropped == []
    assert_whole(tmp_path)


# ---- item 5: a spec from a newer mer ------------------------------------------------------------------

def test_ls_info_verify_read_a_cache_written_by_a_newer_version(tmp_path):
    writer = write_all(tmp_path, toy_spec(), TOY_IDS[:8])
    for name in ("spec.json", "manifest.json"):
        data = json.loads((writer.dir / name).read_text())
        spec = data if name == "spec.json" else data["spec"]
        spec["quantisation"] = "int8"
        data["written_by"] = "mer 9"
        (writer.dir / name).write_text(json.dumps(data))
    note = "spec keys from a newer mer ignored: quantisation"
    runner = CliRunner()
    for args in (["ls"], ["info"], ["verify"]):
        result = runner.invoke(cli, ["cache", *args, str(tmp_path)])
        assert result.exit_code == 0 and note in result.output, (args, result.output, result.exception)
    listing = json.loads(runner.invoke(cli, ["cache", "ls", str(tmp_path), "--json"]).output)
    assert listing[0]["ignored_spec_keys"] == ["quantisation"]
    (repaired,) = verify_cache(tmp_path, repair=True)  # a rebuilt manifest keeps the newer keys
    assert repaired.ok


# ---- end to end: `mer extract`, `mer cache verify`, `mer fuse` as a user runs them ------------------------

@pytest.fixture(scope="module")
def demo_cache(tmp_path_factory, demo_root):
    cache = tmp_path_factory.mktemp("integrity") / "cache"
    mer("extract", *DEMO, "--root", demo_root, "--features", "mfcc40", "--cache", cache, "--shard-size", "16",
        "--no-progress", check=0)
    return cache


def demo_values(cache: Path) -> dict:
    return {i: np.array(a) for i, a in FeatureCache(cache).open(CORPUS, "mfcc40")}


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_extract_rerun_after_damage_restores_every_utterance_once(tmp_path, demo_cache, demo_root, damage):
    cache = tmp_path / "cache"
    shutil.copytree(demo_cache, cache)
    before = demo_values(cache)
    (feature_dir,) = (cache / CORPUS).glob("mfcc40@*")
    shard = feature_dir / "shard-00001.h5"
    damaging = {"flip": flip_data_byte, "truncate": lambda p: p.write_bytes(p.read_bytes()[:4096]),
                "delete": Path.unlink}
    damaging[damage](shard)
    failed = mer("cache", "verify", cache, check=1)
    (problem,) = [line for line in failed.stdout.splitlines() if str(shard) in line]
    if damage == "flip":  # same size: only the sha256 notices, so the suggested repair is needed
        repaired = mer(*suggested(problem), check=0)
        assert f"{shard}: dropped" in repaired.stdout
    rerun = mer("extract", *DEMO, "--root", demo_root, "--features", "mfcc40", "--cache", cache, "--shard-size", "16",
                "--no-progress", "--json", check=0)
    (summary,) = json.loads(rerun.stdout)["features"]
    assert (summary["done"], summary["cached"]) == (16, 24)
    report = json.loads(mer("cache", "verify", cache, "--json", check=0).stdout)
    assert report["ok"] and report["features"][0]["stored"] == 40
    assert set(stored_copies(cache).values()) == {1} and len(stored_copies(cache)) == 40
    after = demo_values(cache)
    assert after.keys() == before.keys() and all(np.array_equal(after[i], before[i]) for i in before)


def test_fuse_on_a_flipped_byte_stops_with_one_line_naming_the_shard_and_the_repair(tmp_path, demo_cache):
    cache = tmp_path / "cache"
    shutil.copytree(demo_cache, cache)
    (feature_dir,) = (cache / CORPUS).glob("mfcc40@*")
    for shard in sorted(feature_dir.glob("shard-*.h5")):
        flip_data_byte(shard)
    run = mer("fuse", "--model", "audio-only", "--dataset", CORPUS, "--cache", cache, "--out", tmp_path / "run",
              "--device", "cpu", "--set", "max_epochs=1", check=2)
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in run.stderr, run.stderr
    assert re.match(rf"error: {re.escape(str(feature_dir))}/shard-0000\d\.h5: unreadable shard", lines[0])
    repair = suggested(lines[0])
    assert repair == ["cache", "verify", str(cache), "--corpus", CORPUS, "--feature", feature_dir.name, "--repair"]
