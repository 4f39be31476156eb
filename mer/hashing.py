"""Content hashes of files (cache shards, weight files, configs)."""

import hashlib
from pathlib import Path


def sha256_file(path: Path, digest=None) -> str:
    """sha256 of a file read in 4 MiB blocks; with `digest`, update that hash object instead."""
    own = digest is None
    digest = hashlib.sha256() if own else digest
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()
