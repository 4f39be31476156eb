"""A shared cache under hostile use: `cache rm` removes only what the cache lists and never under a
live writer; corpus names stay inside the cache; concurrent corpus-manifest merges keep every
record; a feature folder removed mid-run stops the writer at once; --cache FILE and read-only caches."""

import errno
import json
import multiprocessing
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from mer.cache.corpus import SOURCE_FILE, merge_corpus_manifest
from mer.cache.locks import FolderRemoved, lock
from mer.cache.reader import FeatureCache
from mer.cache.writer import FeatureWriter
from mer.data.utterance import Utterance, read_utterances
from mer.errors import CacheError
from mer.hashing import sha256_file
from tests.helpers.toy import TOY_IDS, toy_arrays, toy_spec

REPO = Path(__file__).resolve().parents[1]
DEMO = ["--dataset", "demo", "--set", "corpus.size=40"]
DEMO_CORPUS = "demo-n40-s0"


def mer(*args, check=None, timeout=600):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "mer.cli", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if check is not None:
        assert proc.returncode == check, proc.stdout + proc.stderr
    return proc


def one_error_line(proc) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def snapshot(folder: Path) -> dict:
    """Every file under `folder` with its bytes: 'untouched' means equal snapshots."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def toy_utterances(ids, corpus="toy", folder="/data"):
    return [Utterance(id=i, corpus=corpus, text=f"text of {i}", label="happy", audio_path=f"{folder}/{i.split('/')[-1]}.wav")
            for i in ids]


def toy_cache(cache: Path, features=("toy",)) -> Path:
    """Corpus `toy` with its manifest and one committed shard per feature."""
    merge_corpus_manifest(cache, "toy", toy_utterances(TOY_IDS[:8]))
    for name in features:
        writer = FeatureWriter(cache, "toy", toy_spec(name=name))
        claim = writer.claim(TOY_IDS[:8])
        writer.commit(claim, writer.write_temp(claim, toy_arrays(claim.ids)), {})
    return cache


@pytest.fixture
def outside(tmp_path):
    """A folder beside the cache that no `cache rm` may touch."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "precious.txt").write_text("keep me")
    (folder / "utterances.jsonl").write_text("")  # looks like a corpus, if one followed a link here
    return folder


# ---- 1. cache rm removes only what the cache lists --------------------------------------------
@pytest.mark.parametrize("args", [
    ["no-such-corpus", "{outside}"],
    ["{outside}"],
    [".."],
    ["toy/.."],
    ["toy", "../../outside"],
    ["toy", "{outside}"],
    ["toy", "no-such-feature"],
    ["linked"],
])
def test_rm_refuses_anything_the_cache_does_not_list(tmp_path, outside, args):
    cache = toy_cache(tmp_path / "cache")
    (cache / "linked").symlink_to(outside)  # listed as a corpus, but it resolves outside the cache
    before_outside, before_cache = snapshot(outside), snapshot(cache)
    run = mer("cache", "rm", cache, *[a.format(outside=outside) for a in args], "--yes", check=2)
    line = one_error_line(run)
    assert "lists no" in line or "resolves outside the cache" in line
    assert snapshot(outside) == before_outside and snapshot(cache) == before_cache


def hold_a_claim(cache: Path) -> subprocess.Popen:
    """Another process (a running `mer extract`) holding a claim on feature `toy` until its stdin closes."""
    script = ("import sys; from pathlib import Path; from mer.cache.writer import FeatureWriter; "
              "from tests.helpers.toy import TOY_IDS, toy_spec; "
              f"w = FeatureWriter(Path({str(cache)!r}), 'toy', toy_spec()); c = w.claim(TOY_IDS[8:16]); "
              "print(c.name, flush=True); sys.stdin.read()")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "shard-00001"
    return proc


@pytest.mark.parametrize("target", [["toy", "toy"], ["toy"]])
def test_rm_refuses_a_feature_or_corpus_a_live_writer_holds_a_claim_in(tmp_path, target):
    cache = toy_cache(tmp_path / "cache", features=("toy", "other"))
    holder = hold_a_claim(cache)
    try:
        before = snapshot(cache)
        line = one_error_line(mer("cache", "rm", cache, *target, "--yes", check=2))
        claim = next((cache / "toy").glob("toy@*/shard-00001.claim"))
        assert f"{claim}: a live writer (host {os.uname().nodename}, pid {holder.pid})" in line
        assert snapshot(cache) == before
    finally:
        holder.communicate("")
    mer("cache", "rm", cache, *target, "--yes", check=0)  # the writer is gone: its claim is dead
    assert not list((cache / "toy").glob("toy@*")) and not list(cache.rglob(".removing-*"))


@pytest.mark.parametrize("answer", ["n\n", None])
def test_rm_without_a_yes_removes_nothing_and_says_so(tmp_path, answer):
    cache = toy_cache(tmp_path / "cache", features=("toy",))
    before = snapshot(cache)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "mer.cli", "cache", "rm", str(cache), "toy"], cwd=REPO, env=env,
                          input=answer, stdin=subprocess.DEVNULL if answer is None else None, capture_output=True,
                          text=True, timeout=120)
    if answer is None:  # no terminal to ask: one line naming --yes (was "interrupted", exit 130)
        assert proc.returncode == 2 and "pass --yes to remove without asking" in one_error_line(proc)
    else:
        assert proc.returncode == 0 and proc.stdout.rstrip().endswith("nothing removed")
    assert snapshot(cache) == before


def test_rm_removes_one_listed_feature_or_the_whole_corpus(tmp_path, outside):
    cache = toy_cache(tmp_path / "cache", features=("toy", "other"))
    run = mer("cache", "rm", cache, "toy", "other", "--yes", check=0)
    assert run.stdout.startswith("removed ") and "other@" in run.stdout
    assert [f.name for f in FeatureCache(cache).features("toy")] == ["toy"]
    mer("cache", "rm", cache, "toy", "--yes", check=0)
    assert FeatureCache(cache).corpora() == [] and list(cache.iterdir()) == []
    assert snapshot(outside) == {"precious.txt": b"keep me", "utterances.jsonl": b""}


# ---- 2. corpus names are plain folder names ---------------------------------------------------
BAD_NAMES = ["", ".", "..", "...", ".hidden", "a/b", "a\\b", "/abs", "x\ny", "x\x00y"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_unsafe_corpus_names_are_refused_by_the_writer_and_the_manifest_merge(tmp_path, name):
    cache = tmp_path / "cache"
    with pytest.raises(CacheError, match="pass --set corpus.name=NAME") as merge_error:
        merge_corpus_manifest(cache, name, toy_utterances(TOY_IDS[:2], corpus=name))
    with pytest.raises(CacheError, match="pass --set corpus.name=NAME") as writer_error:
        FeatureWriter(cache, name, toy_spec())
    assert "\n" not in str(merge_error.value) and "\n" not in str(writer_error.value)
    assert list(tmp_path.iterdir()) == []


def small_manifest(folder: Path, demo_root: Path, file_name: str, rows: int = 4, label="happy") -> Path:
    from mer.data.corpora import prepare

    utterances = prepare("demo", demo_root, size=40).utterances[:rows]
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["id,audio,text,label"] + [f"u{i},{u.audio_path},{u.text.replace(',', ' ')},{label}"
                                       for i, u in enumerate(utterances)]
    path = folder / file_name
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("file_name,settings", [("data.csv", ["--set", "corpus.name=.."]), ("...csv", [])])
def test_extract_with_a_corpus_name_that_climbs_writes_nothing_outside_the_cache(tmp_path, demo_root, file_name,
                                                                                  settings):
    manifest = small_manifest(tmp_path / "data", demo_root, file_name)
    run = mer("extract", "--dataset", "manifest", "--root", manifest, *settings, "--features", "mfcc40",
              "--cache", tmp_path / "cache", "--no-progress", check=2)
    assert "--set corpus.name=NAME" in one_error_line(run)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # not even the cache folder
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [file_name]


# ---- 3. the corpus manifest is merged under a lock ----------------------------------------------
def _merge_big(cache: str, tag: str, barrier) -> None:
    utterances = toy_utterances([f"big/{tag}{i}" for i in range(13_000)], corpus="big")
    barrier.wait()
    merge_corpus_manifest(Path(cache), "big", utterances)


def test_two_runs_merging_different_manifests_at_once_keep_every_record(tmp_path):
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    procs = [context.Process(target=_merge_big, args=(str(tmp_path), tag, barrier)) for tag in "ab"]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
    assert [proc.exitcode for proc in procs] == [0, 0]
    ids = [u.id for u in read_utterances(tmp_path / "big" / "utterances.jsonl")]
    assert len(ids) == 26_000 and len(set(ids)) == 26_000


@pytest.mark.parametrize("change", [dict(text="other words"), dict(start=1.0), dict(end=2.0), dict(dialogue="d9"),
                                    dict(turn=3), dict(audio_path="/data/another.wav")])
def test_another_input_for_a_stored_id_is_refused_naming_the_id_the_file_and_the_fix(tmp_path, change):
    merge_corpus_manifest(tmp_path, "toy", toy_utterances(TOY_IDS[:4]))
    path = tmp_path / "toy" / "utterances.jsonl"
    before = path.read_bytes()
    changed = toy_utterances(TOY_IDS[:4])
    changed[2] = replace(changed[2], **change)
    with pytest.raises(CacheError) as error:
        merge_corpus_manifest(tmp_path, "toy", changed)
    message = str(error.value)
    assert message.startswith(f"{path}: utterance toy/u2 has another ") and "\n" not in message
    assert f"pass --set corpus.name=OTHER, or start over with `mer cache rm {tmp_path} toy --yes`" in message
    assert path.read_bytes() == before


def test_new_annotations_replace_the_old_and_are_counted_and_a_moved_corpus_is_the_same(tmp_path):
    merge_corpus_manifest(tmp_path, "toy", toy_utterances(TOY_IDS[:20], folder="/mnt/alice/corpus"))
    relabelled = [replace(u, label="frustrated", extra={"category": "fru"}) if i < 12 else u
                  for i, u in enumerate(toy_utterances(TOY_IDS[:20], folder="/home/bob/corpus"))]
    assert merge_corpus_manifest(tmp_path, "toy", relabelled) == 12
    stored = read_utterances(tmp_path / "toy" / "utterances.jsonl")
    assert [u.label for u in stored] == ["frustrated"] * 12 + ["happy"] * 8
    assert stored[0].extra == {"category": "fru"}
    assert merge_corpus_manifest(tmp_path, "toy", relabelled) == 0


def test_extract_prints_how_many_annotations_changed(tmp_path, demo_root):
    cache = tmp_path / "cache"
    manifest = small_manifest(tmp_path / "data", demo_root, "tiny.csv")
    mer("extract", "--dataset", "manifest", "--root", manifest, "--features", "mfcc40", "--cache", cache,
        "--no-progress", check=0)
    small_manifest(tmp_path / "data", demo_root, "tiny.csv", label="sad")
    run = mer("extract", "--dataset", "manifest", "--root", manifest, "--features", "mfcc40", "--cache", cache,
              "--no-progress", check=0)
    assert f"{cache / 'tiny' / 'utterances.jsonl'}: updated the annotations of 4 utterances" in run.stderr
    assert json.loads((cache / "tiny" / SOURCE_FILE).read_text()) == {
        "dataset": "manifest", "root": str(manifest.resolve()), "options": {}}


def test_missing_feature_message_is_an_extract_command_that_runs(tmp_path, demo_root):
    cache = tmp_path / "my cache"  # a space: the command must quote it
    mer("extract", *DEMO, "--root", demo_root, "--features", "mfcc40", "--cache", cache, "--no-progress", check=0)
    with pytest.raises(CacheError) as error:
        FeatureCache(cache).open(DEMO_CORPUS, "logmfb80-d2")
    command = str(error.value).split("`")[1]
    assert shlex.split(command)[:5] == ["mer", "extract", "--dataset", "demo", "--root"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    run = subprocess.run(command + " --no-progress", shell=True, cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert len(FeatureCache(cache).open(DEMO_CORPUS, "logmfb80-d2")) == 40


def test_missing_feature_message_without_source_says_it_has_placeholders(tmp_path):
    toy_cache(tmp_path)
    with pytest.raises(CacheError, match="READER and CORPUS_ROOT are placeholders: this cache does not record "
                                         "how toy was read"):
        FeatureCache(tmp_path).open("toy", "mfcc40")


# ---- 4. a feature folder removed under a writer -------------------------------------------------
def test_lock_in_a_removed_folder_fails_at_once_and_never_recreates_it(tmp_path):
    started = time.monotonic()
    with pytest.raises(FolderRemoved, match="folder removed"):
        lock(tmp_path / "gone" / ".lock")
    assert time.monotonic() - started < 1 and not (tmp_path / "gone").exists()


def test_claim_and_commit_in_a_removed_feature_folder_fail_at_once(tmp_path):
    writer = FeatureWriter(tmp_path, "toy", toy_spec())
    claim = writer.claim(TOY_IDS[:4])
    temp = writer.write_temp(claim, toy_arrays(claim.ids))
    shutil.rmtree(writer.dir)
    with pytest.raises(FolderRemoved, match=f"^{writer.dir}: feature folder removed \\(by `mer cache rm`\\?\\)"):
        writer.commit(claim, temp, {})
    with pytest.raises(FolderRemoved, match="feature folder removed"):
        writer.claim(TOY_IDS[4:8])
    with pytest.raises(FolderRemoved, match="feature folder removed"):
        writer.write_temp(claim, toy_arrays(claim.ids))
    writer.release(claim)  # nothing to give back, and no error
    writer.refresh_manifest()
    assert not writer.dir.exists()


def test_waiting_for_a_lock_stops_at_ctrl_c(tmp_path):
    held = lock(tmp_path / ".lock")  # held by this process: a second lock() waits
    previous = signal.signal(signal.SIGALRM, signal.default_int_handler)
    signal.setitimer(signal.ITIMER_REAL, 0.3)
    started = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            lock(tmp_path / ".lock")
    finally:
        signal.signal(signal.SIGALRM, previous)
        held.release()
    assert time.monotonic() - started < 1


# Runs `mer extract` with every commit slowed down, so the test can remove a folder mid-run.
SLOW_EXTRACT = """
import sys, time
from mer.cache.writer import FeatureWriter
commit = FeatureWriter.commit
def slow_commit(self, *args, **kwargs):
    time.sleep(0.3)
    return commit(self, *args, **kwargs)
FeatureWriter.commit = slow_commit
sys.argv = ["mer"] + sys.argv[1:]
from mer.cli import main
main()
"""


def test_extract_stops_at_once_when_a_feature_folder_is_removed_mid_run(tmp_path, demo_root):
    cache = tmp_path / "cache"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_EXTRACT, "extract", *DEMO, "--root", demo_root, "--features",
                             "mfcc40,logmfb80-d2", "--cache", cache, "--shard-size", "4", "--no-progress"],
                            cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    corpus = cache / DEMO_CORPUS
    deadline = time.monotonic() + 300
    while not list(corpus.glob("logmfb80-d2@*/shard-00000.json")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    (removed,) = corpus.glob("logmfb80-d2@*")
    while removed.exists():  # not `mer cache rm`, which refuses under a live claim
        shutil.rmtree(removed, ignore_errors=True)  # (a temporary shard may appear meanwhile)
    started = time.monotonic()
    _, stderr = proc.communicate(timeout=60)
    assert time.monotonic() - started < 15
    assert proc.returncode == 2 and "Traceback" not in stderr, stderr
    assert stderr.strip().splitlines()[-1] == (f"error: {removed}: feature folder removed (by `mer cache rm`?) while "
                                               "this run wrote it; run the same `mer extract` again to recompute it")
    assert not removed.exists()  # never recreated
    (kept,) = corpus.glob("mfcc40@*")
    records = [json.loads(p.read_text()) for p in sorted(kept.glob("shard-*.json"))]
    assert records and not list(kept.glob("*.claim")) and not list(kept.glob("*.tmp-*"))
    store = FeatureCache(cache).open(DEMO_CORPUS, "mfcc40")
    for record in records:
        assert sha256_file(kept / record["file"]) == record["sha256"]
        assert all(store.get(i).shape[1] == 40 for i in record["ids"])
    assert len(store) == sum(len(r["ids"]) for r in records) < 40


# ---- 5. --cache FILE, and a read-only cache -------------------------------------------------------
def test_cache_that_is_a_file_is_one_line(tmp_path, demo_root):
    file = tmp_path / "cache.txt"
    file.write_text("not a cache")
    run = mer("extract", *DEMO, "--root", demo_root, "--features", "mfcc40", "--cache", file, "--no-progress",
              check=2)
    assert one_error_line(run) == f"error: {file}: is a file, not a folder; pass --cache a folder path"
    assert file.read_text() == "not a cache"


@pytest.mark.parametrize("command", ["ls", "info", "verify"])
def test_cache_commands_on_a_file_or_a_missing_folder_are_one_line(tmp_path, command):
    file = tmp_path / "cache.txt"
    file.write_text("not a cache")
    assert "is a file, not a cache folder" in one_error_line(mer("cache", command, file, check=2))
    missing = tmp_path / "nowhere"
    assert "no such folder" in one_error_line(mer("cache", command, missing, check=2))


def read_only(monkeypatch, cache: Path) -> None:
    """What a read-only mount does to every attempt to create or write a file or folder in `cache`."""
    real_open, real_mkdir = os.open, os.mkdir

    def refuse(path):
        if str(path).startswith(str(cache)):
            raise OSError(errno.EROFS, "Read-only file system", str(path))

    def open_(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            refuse(path)
        return real_open(path, flags, *args, **kwargs)

    def mkdir(path, *args, **kwargs):
        refuse(path)
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_)
    monkeypatch.setattr(os, "mkdir", mkdir)


def extract_config(cache, demo_root, features=("mfcc40",)):
    from mer.extract.runner import ExtractConfig

    return ExtractConfig(dataset="demo", root=demo_root, corpus_options={"size": "40"}, features=list(features),
                         cache=cache, shard_size=8, progress=False)


def test_read_only_cache_with_everything_cached_reports_it_and_writes_nothing(tmp_path, demo_root, monkeypatch):
    from mer.extract.runner import extract

    cache = tmp_path / "cache"
    extract(extract_config(cache, demo_root))
    before = {p: p.stat().st_mtime_ns for p in cache.rglob("*")}
    read_only(monkeypatch, cache)
    summary = extract(extract_config(cache, demo_root))
    assert [(f.done, f.cached) for f in summary.features] == [(0, 40)] and summary.exit_code == 0
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*")} == before


def test_read_only_cache_with_work_pending_names_the_folder_and_the_fix(tmp_path, demo_root, monkeypatch):
    from mer.extract.runner import extract

    cache = tmp_path / "cache"
    extract(extract_config(cache, demo_root))
    (feature,) = (cache / DEMO_CORPUS).glob("mfcc40@*")
    for path in feature.glob("shard-00002.*"):  # as if that shard had never been computed
        path.unlink()
    read_only(monkeypatch, cache)
    with pytest.raises(CacheError) as error:
        extract(extract_config(cache, demo_root))
    assert str(error.value).startswith(f"{feature}: cannot write here, and some utterances (e.g. ")
    assert str(error.value).endswith("still need mfcc40; pass --cache a writable folder")
    with pytest.raises(CacheError, match=f"^{cache / DEMO_CORPUS}/logmfb80-d2@.*: cannot create it "
                                         r"\(Read-only file system\); pass --cache a writable folder$"):
        extract(extract_config(cache, demo_root, ("mfcc40", "logmfb80-d2")))
