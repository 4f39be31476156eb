"""A decode function for DecodePool tests: it kills its process, as a segfault in FFmpeg would,
on any file whose name contains "crash"."""

import os
from pathlib import Path

from mer.data.decoding import decode_utterances


def decode_or_die(utterances):
    if any("crash" in Path(u.audio_path).name for u in utterances):
        os._exit(11)
    return decode_utterances(utterances)
