"""`mer cache rm`: remove a corpus, or one feature of it, that the cache itself lists (never a path,
never anything outside the cache) and never under a live writer's claim."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import uuid
from pathlib import Path
from typing import Optional

from mer.cache.corpus import CORPUS_LOCK
from mer.cache.layout import LOCK_FILE, is_plain_name
from mer.cache.locks import HeldLock, is_held_here, lock, try_lock
from mer.cache.reader import FeatureCache
from mer.errors import CacheError

TRASH_PREFIX = ".removing-"  # a hidden name that no listing of corpora or features matches


def removal_target(cache_root: Path, corpus: str, feature: Optional[str] = None) -> Path:
    """The folder that `remove` deletes: a corpus or a feature the cache lists, inside the cache."""
    cache = FeatureCache(cache_root)
    if not cache.root.is_dir():
        raise CacheError(f"{cache_root}: not a cache folder; check the path")
    listing = f"`mer cache ls {shlex.quote(str(cache_root))}` lists what is there"
    if not is_plain_name(corpus) or corpus not in cache.corpora():
        raise CacheError(f"{cache_root}: the cache lists no corpus {corpus!r} (give a name, not a path); {listing}")
    target = cache.root / corpus
    if feature is not None:
        target = _feature_dir(cache, corpus, feature, listing)
    if target.resolve() != cache.root.resolve() / target.relative_to(cache.root):
        raise CacheError(f"{target}: a link that resolves outside the cache; remove it by hand")
    return target


def _feature_dir(cache: FeatureCache, corpus: str, feature: str, listing: str) -> Path:
    matches = cache.configs(corpus, feature) if is_plain_name(feature) else []
    if not matches:
        raise CacheError(f"{cache.root / corpus}: the cache lists no feature {feature!r} (give a name, not a path); "
                         f"{listing}")
    if len(matches) > 1:
        options = ", ".join(f"{f.name}@{f.config_hash}" for f in matches)
        raise CacheError(f"{cache.root / corpus}: {feature!r} exists in several configs ({options}); "
                         "name one as FEATURE@HASH")
    return matches[0].directory


def remove(cache_root: Path, corpus: str, feature: Optional[str] = None) -> Path:
    """Delete what `removal_target` names, under the writers' locks, unless a live writer holds a claim
    in it. The folder is first renamed away, so readers and writers see it whole or gone."""
    target = removal_target(cache_root, corpus, feature)
    feature_dirs = [target] if feature else [p for p in target.iterdir() if p.is_dir() and not p.is_symlink()]
    lock_files = ([] if feature else [target / CORPUS_LOCK]) + [d / LOCK_FILE for d in feature_dirs]
    held: list[HeldLock] = []
    try:
        for path in lock_files:  # no writer claims or commits while we look and delete
            held.append(lock(path, timeout=30))
        for directory in feature_dirs:
            _refuse_live_claims(directory, cache_root, corpus, feature)
        _rename_away_and_delete(target)
    finally:
        for h in held:
            h.release()
    return target


def _refuse_live_claims(feature_dir: Path, cache_root: Path, corpus: str, feature: Optional[str]) -> None:
    for claim in sorted(feature_dir.glob("shard-*.claim")):
        if not is_held_here(claim):
            free = try_lock(claim, create=False)
            if free is not None:  # a dead writer's claim: deleted with the rest
                free.release()
                continue
            if not claim.exists():
                continue
        host, pid = _claim_owner(claim)
        again = " ".join(shlex.quote(str(p)) for p in ["mer", "cache", "rm", cache_root, corpus, feature] if p)
        raise CacheError(f"{claim}: a live writer (host {host}, pid {pid}) is computing this shard; let its "
                         f"`mer extract` finish or stop it, then run `{again} --yes` again")


def _claim_owner(claim: Path) -> tuple[str, str]:
    if is_held_here(claim):  # never open a file this process locks: closing it would drop the lock
        return socket.gethostname(), str(os.getpid())
    try:
        info = json.loads(claim.read_text())
        return str(info.get("host", "?")), str(info.get("pid", "?"))
    except (OSError, ValueError):
        return "?", "?"


def _rename_away_and_delete(target: Path) -> None:
    trash = target.parent / f"{TRASH_PREFIX}{uuid.uuid4().hex[:8]}"
    trash.mkdir()
    os.rename(target, trash / target.name)
    shutil.rmtree(trash)
