"""EmoDB, the Berlin Database of Emotional Speech (Burkhardt et al., 2005): 10 actors, 10 German
sentences, 7 emotions, 535 clips; labels in the file names.

Layout (the download unpacks to these folders; the root or one folder down):
    wav/03a01Fa.wav        speaker 03, sentence a01, emotion F (Freude), version a
    lablaut/ labsilb/ silb/ ...   (not read)

Emotion letters (German): W Ärger (anger), L Langeweile (boredom), E Ekel (disgust), A Angst
(fear), F Freude (happiness), T Trauer (sadness), N neutral. Published counts: anger 127,
boredom 81, disgust 46, fear 69, happiness 71, sadness 62, neutral 79. Speakers 03, 10, 11, 12,
15 are male; 08, 09, 13, 14, 16 female. The sentence code gives the text.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Union

from mer.data.corpora import CORPORA
from mer.data.corpora._named_clips import NamedClip, prepare_named
from mer.data.utterance import Corpus

NAME = "emodb"
EMOTIONS = {"W": "anger", "L": "boredom", "E": "disgust", "A": "fear", "F": "happiness", "T": "sadness",
            "N": "neutral"}
SENTENCES = {
    "a01": "Der Lappen liegt auf dem Eisschrank.",
    "a02": "Das will sie am Mittwoch abgeben.",
    "a04": "Heute abend könnte ich es ihm sagen.",
    "a05": "Das schwarze Stück Papier befindet sich da oben neben dem Holzstück.",
    "a07": "In sieben Stunden wird es soweit sein.",
    "b01": "Was sind denn das für Tüten, die da unter dem Tisch stehen?",
    "b02": "Sie haben es gerade hochgetragen und jetzt gehen sie wieder runter.",
    "b03": "An den Wochenenden bin ich jetzt immer nach Hause gefahren und habe Agnes besucht.",
    "b09": "Ich will das eben wegbringen und dann mit Karl was trinken gehen.",
    "b10": "Die wird auf dem Platz sein, wo wir sie immer hinlegen.",
}
MALE_SPEAKERS = ("03", "10", "11", "12", "15")
_NAME = re.compile(r"^(\d\d)([ab]\d\d)([A-Z])([a-z])$")
_EXPECTED = "wav/ with 03a01Fa.wav clips (EmoDB)"


@CORPORA.register(NAME)
def prepare(root, *, needs_audio: bool = True) -> Corpus:
    """Read EmoDB from `wav/` (or from the root when it holds the clips directly)."""
    return prepare_named(NAME, root, parse, needs_audio, _EXPECTED, "wav")


def parse(path: Path) -> Union[NamedClip, str]:
    match = _NAME.match(path.stem)
    if match is None:
        return "file name is not SPEAKER SENTENCE EMOTION VERSION (03a01Fa)"
    speaker, sentence, emotion, version = match.groups()
    if emotion not in EMOTIONS or sentence not in SENTENCES:
        return "a code in the file name is unknown"
    extra = {"sentence": sentence, "version": version, "gender": "male" if speaker in MALE_SPEAKERS else "female"}
    return NamedClip(path.stem, EMOTIONS[emotion], speaker, SENTENCES[sentence], extra)
