"""TESS, the Toronto emotional speech set (Dupuis & Pichora-Fuller, 2010): two actresses (OAF,
aged 64, and YAF, aged 26) each say "Say the word _" with 200 target words in 7 emotions: 2800 clips.

Layout (University of Toronto dataverse / Kaggle copy; any depth under the root):
    OAF_angry/OAF_back_angry.wav   OAF_Pleasant_surprise/OAF_back_ps.wav   YAF_pleasant_surprised/YAF_back_ps.wav

The folder names are not consistent (OAF_Fear, OAF_Sad, YAF_fear, OAF_Pleasant_surprise,
YAF_pleasant_surprised): the label comes from the FILE name (`ps` = pleasant surprise), and a
folder that disagrees with it is noted. The Kaggle copy nests the whole tree twice; the second
copy of each clip is counted as a duplicate. Text = the target word (the carrier phrase
"Say the word" is the same in every clip).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Union

from mer.data.corpora import CORPORA
from mer.data.corpora._named_clips import NamedClip, prepare_named
from mer.data.utterance import Corpus

NAME = "tess"
EMOTIONS = {"angry": "angry", "disgust": "disgust", "fear": "fear", "happy": "happy", "neutral": "neutral",
            "ps": "pleasant_surprise", "sad": "sad"}
SPEAKERS = {"OAF": 64, "YAF": 26}  # speaker -> age
_FOLDER_EMOTIONS = {"pleasant_surprise": "ps", "pleasant_surprised": "ps"}
_NAME = re.compile(r"^(OAF|YAF)_([a-z]+)_([a-z]+)$", re.IGNORECASE)
_FOLDER = re.compile(r"^(OAF|YAF)_(.+)$", re.IGNORECASE)
_EXPECTED = "OAF_angry/ ... YAF_sad/ with OAF_back_angry.wav clips (TESS Toronto emotional speech set data)"


@CORPORA.register(NAME)
def prepare(root, *, needs_audio: bool = True) -> Corpus:
    """Read TESS from every OAF_*/YAF_* clip under `root`."""
    return prepare_named(NAME, root, parse, needs_audio, _EXPECTED)


def parse(path: Path) -> Union[NamedClip, str]:
    match = _NAME.match(path.stem)
    if match is None:
        return "file name is not SPEAKER_word_emotion"
    speaker, word, emotion = match.group(1).upper(), match.group(2).lower(), match.group(3).lower()
    if emotion not in EMOTIONS:
        return "unknown emotion code in the file name"
    extra = {"word": word, "age": SPEAKERS[speaker], "emotion_code": emotion}
    return NamedClip(f"{speaker}_{word}_{emotion}", EMOTIONS[emotion], speaker, word, extra,
                     _folder_notes(path, speaker, emotion))


def _folder_notes(path: Path, speaker: str, emotion: str) -> tuple[str, ...]:
    folder = _FOLDER.match(path.parent.name)
    if folder is None:
        return ()
    named = folder.group(2).lower()
    if folder.group(1).upper() != speaker or _FOLDER_EMOTIONS.get(named, named) != emotion:
        return ("folder and file name disagree (the file name is used)",)
    return ()
