"""RAVDESS (Livingstone & Russo, 2018): 24 actors, two fixed sentences, labels in the file names.

Layout (any depth under the root; the official zips unpack to these folders):
    Audio_Speech_Actors_01-24/Actor_01/03-01-01-01-01-01-01.wav     modality-channel-emotion-
    Audio_Song_Actors_01-24/Actor_01/03-02-01-01-01-01-01.wav       intensity-statement-repetition-actor

Codes: modality 03 = audio-only (01, 02 are video files); vocal channel 01 speech, 02 song;
emotion 01..08 = neutral, calm, happy, sad, angry, fearful, disgust, surprised; intensity 01
normal, 02 strong (neutral has no strong); statement 01 "Kids are talking by the door.", 02 "Dogs
are sitting by the door."; repetition 01, 02; actor 01..24 (odd male, even female).
Speech: 1440 clips (60 per actor); song: 1012 (actor 18 has none; no disgust or surprised).
`vocal_channel`: speech (default), song or both; clips of the other channel are counted as skipped.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Union

from mer.data.corpora import CORPORA
from mer.data.corpora._common import choose
from mer.data.corpora._named_clips import NamedClip, prepare_named
from mer.data.utterance import Corpus

NAME = "ravdess"
EMOTIONS = ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised")  # codes 01..08
STATEMENTS = {"01": "Kids are talking by the door.", "02": "Dogs are sitting by the door."}
CHANNELS = {"01": "speech", "02": "song"}
INTENSITIES = {"01": "normal", "02": "strong"}
_NAME = re.compile(r"^(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)$")
_ACTOR_FOLDER = re.compile(r"^actor_(\d+)$", re.IGNORECASE)
_EXPECTED = "Actor_01 .. Actor_24 with 03-01-EE-II-SS-RR-AA.wav clips (Audio_Speech_Actors_01-24)"


@CORPORA.register(NAME)
def prepare(root, vocal_channel: str = "speech", *, needs_audio: bool = True) -> Corpus:
    """Read RAVDESS; `vocal_channel`: speech (default), song or both."""
    wanted = choose(vocal_channel, ("speech", "song", "both"), "vocal_channel", NAME)
    return prepare_named(NAME, root, lambda path: parse(path, wanted), needs_audio, _EXPECTED,
                         groups=("label", "speaker", "intensity", "vocal_channel"))


def parse(path: Path, wanted: str = "speech") -> Union[NamedClip, str]:
    match = _NAME.match(path.stem)
    if match is None:
        return "file name is not MM-VV-EE-II-SS-RR-AA"
    modality, channel, emotion, intensity, statement, repetition, actor = match.groups()
    if modality != "03":
        return "not an audio-only clip (modality 01 and 02 are video)"
    if channel not in CHANNELS or not 1 <= int(emotion) <= len(EMOTIONS) or intensity not in INTENSITIES \
            or statement not in STATEMENTS or repetition not in ("01", "02") or not 1 <= int(actor) <= 24:
        return "a code in the file name is out of range"
    if wanted != "both" and CHANNELS[channel] != wanted:
        return f"{CHANNELS[channel]} clip (vocal_channel={wanted})"
    extra = {"vocal_channel": CHANNELS[channel], "intensity": INTENSITIES[intensity], "statement": statement,
             "repetition": int(repetition), "gender": "male" if int(actor) % 2 else "female"}
    return NamedClip(path.stem, EMOTIONS[int(emotion) - 1], f"actor{actor}", STATEMENTS[statement], extra,
                     _folder_notes(path, actor))


def _folder_notes(path: Path, actor: str) -> tuple[str, ...]:
    folder = _ACTOR_FOLDER.match(path.parent.name)
    if folder is not None and int(folder.group(1)) != int(actor):
        return ("actor folder and file name disagree (the file name is used)",)
    return ()

