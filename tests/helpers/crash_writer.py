"""A writer that dies with SIGKILL at a chosen step of the shard protocol (run as a script).

usage: python crash_writer.py CACHE STAGE   STAGE in after-claim, mid-temp, after-rename
It claims ids u0..u9 of corpus `toy` for the `toy` spec, gets as far as STAGE, then kills itself."""

import os
import signal
import sys
from pathlib import Path

import numpy as np

from mer.cache.layout import shard_name
from mer.cache.writer import FeatureWriter
from tests.helpers.toy import TOY_IDS, toy_arrays, toy_spec


def main(cache: str, stage: str) -> None:
    writer = FeatureWriter(Path(cache), "toy", toy_spec())
    claim = writer.claim(TOY_IDS[:10])
    if stage == "after-claim":
        os.kill(os.getpid(), signal.SIGKILL)
    temp = writer.write_temp(claim, toy_arrays(claim.ids))
    if stage == "mid-temp":  # a torn temporary file: half its bytes
        data = temp.read_bytes()
        temp.write_bytes(data[: len(data) // 2])
        os.kill(os.getpid(), signal.SIGKILL)
    os.replace(temp, writer.dir / f"{shard_name(claim.index)}.h5")  # commit's first step, then die
    os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    main(*sys.argv[1:3])
