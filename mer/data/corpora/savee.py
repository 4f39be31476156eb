"""SAVEE, Surrey Audio-Visual Expressed Emotion (Haq & Jackson, 2009): 4 male speakers (DC, JE, JK,
KL), 7 emotions, 120 clips each (30 neutral, 15 of every other emotion): 480 clips.

Layouts (any depth under the root):
    AudioData/DC/a01.wav       the original release: one folder per speaker
    ALL/DC_a01.wav             the flat copy that circulates (Kaggle)

Emotion codes: a anger, d disgust, f fear, h happiness, n neutral, sa sadness, su surprise. The
sentences are TIMIT sentences listed only in the corpus's documentation, not in a file the reader
can rely on: text is left empty, so SAVEE is an audio task. Ids are `savee/DC_a01` in both layouts.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Union

from mer.data.corpora import CORPORA
from mer.data.corpora._named_clips import NamedClip, prepare_named
from mer.data.utterance import Corpus

NAME = "savee"
EMOTIONS = {"a": "anger", "d": "disgust", "f": "fear", "h": "happiness", "n": "neutral", "sa": "sadness",
            "su": "surprise"}
SPEAKERS = ("DC", "JE", "JK", "KL")
_NAME = re.compile(r"^(?:([A-Z]{2})_)?(sa|su|a|d|f|h|n)(\d\d)$", re.IGNORECASE)
_EXPECTED = "AudioData/DC/a01.wav ... (or the flat ALL/DC_a01.wav copy) (SAVEE)"


@CORPORA.register(NAME)
def prepare(root, *, needs_audio: bool = True) -> Corpus:
    """Read SAVEE in either layout."""
    return prepare_named(NAME, root, parse, needs_audio, _EXPECTED)


def parse(path: Path) -> Union[NamedClip, str]:
    match = _NAME.match(path.stem)
    if match is None:
        return "file name is not [SPEAKER_]EMOTION NN (a01, DC_a01)"
    speaker = (match.group(1) or path.parent.name).upper()
    if speaker not in SPEAKERS:
        return "speaker unknown (neither a DC_ prefix nor a DC/ JE/ JK/ KL/ folder)"
    code, number = match.group(2).lower(), match.group(3)
    last = 30 if code == "n" else 15
    notes = () if 1 <= int(number) <= last else (f"clip number above the {last} the corpus has",)
    return NamedClip(f"{speaker}_{code}{number}", EMOTIONS[code], speaker, "", {"emotion_code": code}, notes)
