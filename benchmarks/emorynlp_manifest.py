"""Write a text-only `mer` manifest for EmoryNLP (Zahiri & Choi, 2018: Friends transcripts, 7 emotions).

    .venv/bin/python benchmarks/emorynlp_manifest.py /work/shared/data/emorynlp /tmp/emorynlp.csv
    HF_HUB_OFFLINE=1 .venv/bin/mer extract --dataset manifest --root /tmp/emorynlp.csv --features minilm-l6 \
        --cache /tmp/emory-cache

The corpus has its own reader now (`--dataset emorynlp --root /work/shared/data/emorynlp`, see
docs/corpora.md); this script writes what that reader reads as a manifest, for tools that take one:
one row per utterance with id `{season}-{episode}-{scene}-{utterance}`, text, label (lower-cased:
neutral, joyful, peaceful, powerful, scared, mad, sad), split, speaker, dialogue, turn, and the
reader's extra fields (emotion as written, season, episode, scene, utterance_id, start_time, end_time)
as extra columns. There is no audio column: the manifest is read for text features only.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from mer.data.corpora import prepare

COLUMNS = ["id", "text", "label", "split", "speaker", "dialogue", "turn"]


def write_manifest(folder: Path, out: Path) -> dict[str, int]:
    """Read the three CSVs with the emorynlp reader and write them as a manifest; the count per split."""
    corpus = prepare("emorynlp", folder, False)
    extra = list(corpus.utterances[0].extra) if corpus.utterances else []
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS + extra)
        writer.writeheader()
        for utt in corpus.utterances:
            writer.writerow({"id": utt.id.split("/", 1)[1], "text": utt.text, "label": utt.label, "split": utt.split,
                             "speaker": utt.speaker, "dialogue": utt.dialogue.split("/", 1)[1], "turn": utt.turn,
                             **utt.extra})
    return corpus.report.counts["split"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="the folder holding emorynlp_{train,dev,test}_final.csv")
    parser.add_argument("out", type=Path, help="the manifest to write (.csv); its stem is the corpus name")
    args = parser.parse_args()
    counts = write_manifest(args.folder, args.out)
    print(f"{args.out}: {sum(counts.values())} utterances ({', '.join(f'{s} {n}' for s, n in counts.items())})")


if __name__ == "__main__":
    main()
