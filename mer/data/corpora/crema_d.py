"""CREMA-D (Cao et al., 2014): 91 actors (1001..1091), 12 sentences, 6 emotions, labels in the file names.

Layout (the GitHub repository, cloned WITH git-lfs; the root or one folder down):
    AudioWAV/1001_DFA_ANG_XX.wav          actor_sentence_emotion_level

Emotion codes ANG, DIS, FEA, HAP, NEU, SAD; level LO, MD, HI or XX (unspecified). 7442 clips:
1271 of each emotion but neutral (1087). Known traps: `1040_ITH_SAD_X.wav` (one X, older copies;
read as XX), a zip download holds git-lfs pointers instead of audio, `1076_MTI_NEU_XX.wav` does not
play and `1076_MTI_SAD_XX.wav` is silent (kept, noted: extraction records what fails to decode).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Union

from mer.data.corpora import CORPORA
from mer.data.corpora._named_clips import NamedClip, prepare_named
from mer.data.utterance import Corpus

NAME = "crema-d"
EMOTIONS = {"ANG": "anger", "DIS": "disgust", "FEA": "fear", "HAP": "happy", "NEU": "neutral", "SAD": "sad"}
SENTENCES = {
    "IEO": "It's eleven o'clock.",
    "TIE": "That is exactly what happened.",
    "IOM": "I'm on my way to the meeting.",
    "IWW": "I wonder what this is about.",
    "TAI": "The airplane is almost full.",
    "MTI": "Maybe tomorrow it will be cold.",
    "IWL": "I would like a new alarm clock.",
    "ITH": "I think I have a doctor's appointment.",
    "DFA": "Don't forget a jacket.",
    "ITS": "I think I've seen this before.",
    "TSI": "The surface is slick.",
    "WSI": "We'll stop in a couple of minutes.",
}
LEVELS = {"LO": "low", "MD": "medium", "HI": "high", "XX": "unspecified", "X": "unspecified"}
KNOWN_BAD = {"1076_MTI_NEU_XX": "reported unplayable", "1076_MTI_SAD_XX": "reported silent"}
_NAME = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{1,2})$", re.IGNORECASE)
_EXPECTED = "AudioWAV/ with 1001_DFA_ANG_XX.wav clips (the CREMA-D repository, cloned with git-lfs)"


@CORPORA.register(NAME)
def prepare(root, *, needs_audio: bool = True) -> Corpus:
    """Read CREMA-D from `AudioWAV/` (or from the root when it holds the clips directly)."""
    return prepare_named(NAME, root, parse, needs_audio, _EXPECTED, "AudioWAV",
                         groups=("label", "level", "sentence", "speaker"))


def parse(path: Path) -> Union[NamedClip, str]:
    match = _NAME.match(path.stem)
    if match is None:
        return "file name is not ACTOR_SENTENCE_EMOTION_LEVEL"
    actor, sentence, emotion, level = (part.upper() for part in match.groups())
    if sentence not in SENTENCES or emotion not in EMOTIONS or level not in LEVELS:
        return "a code in the file name is unknown"
    notes = ("level X read as XX",) if level == "X" else ()
    key = f"{actor}_{sentence}_{emotion}_{'XX' if level == 'X' else level}"
    if key in KNOWN_BAD:
        notes += (f"known bad clip ({KNOWN_BAD[key]}; CREMA-D issue #8)",)
    extra = {"sentence": sentence, "level": LEVELS[level]}
    return NamedClip(key, EMOTIONS[emotion], actor, SENTENCES[sentence], extra, notes)
