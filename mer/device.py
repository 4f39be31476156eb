"""Where torch work runs: `--device auto` (the default of `mer extract` and `mer fuse`) picks CUDA when
torch sees a GPU. A device is resolved on the machine that does the work: with `--scheduler`, a worker
with a GPU uses it even when the client has none."""

from __future__ import annotations

import socket
from typing import Optional

from mer.errors import MerError

DEVICES = ("auto", "cpu", "cuda")


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_device(requested: str) -> str:
    """"auto" -> "cuda" or "cpu"; "cuda" (or "cuda:N") where torch sees no GPU is one line naming the fix."""
    if requested == "auto":
        return "cuda" if cuda_available() else "cpu"
    if requested.startswith("cuda") and not cuda_available():
        import torch

        raise MerError(f"--device {requested}: torch {torch.__version__} on {socket.gethostname()} sees no CUDA "
                       "device; pass --device auto (CUDA when present) or --device cpu")
    return requested


def cpu_note(device: str, work: str) -> Optional[str]:
    """The line that says a run uses the CPU although a GPU is there, e.g. "extracting on CPU ..."."""
    if device == "cpu" and cuda_available():
        return f"{work} on CPU although CUDA is available: pass --device cuda (or auto, the default) to use it"
    return None
