"""Write a text-only `mer` manifest for EmoryNLP (Zahiri & Choi, 2018: Friends transcripts, 7 emotions).

    .venv/bin/python benchmarks/emorynlp_manifest.py /work/shared/data/emorynlp /tmp/emorynlp.csv
    HF_HUB_OFFLINE=1 .venv/bin/mer extract --dataset manifest --root /tmp/emorynlp.csv --features minilm-l6 \
        --cache /tmp/emory-cache

Reads emorynlp_{train,dev,test}_final.csv (Utterance, Speaker, Emotion, Scene_ID, Utterance_ID, Season,
Episode, Start_Time, End_Time) and writes one row per utterance: id `{season}-{episode}-{scene}-{utt}`,
text, label (the emotion as written: Joyful, Mad, Neutral, Peaceful, Powerful, Sad, Scared), split,
speaker (the Speaker list joined with " & ": a few utterances are spoken together), dialogue
`{season}-{episode}-{scene}`, turn (0-based rank of Utterance_ID in the scene: the ids start at 1 or
later and have gaps), and utterance_id, start_time, end_time as extra columns (episode times, not
offsets into audio, so not the manifest's start/end). There is no audio column: the manifest is read
for text features only.
"""

from __future__ import annotations

import argparse
import ast
import csv
from collections import defaultdict
from pathlib import Path

SPLITS = {"train": "emorynlp_train_final.csv", "dev": "emorynlp_dev_final.csv", "test": "emorynlp_test_final.csv"}
COLUMNS = ["id", "text", "label", "split", "speaker", "dialogue", "turn", "utterance_id", "start_time", "end_time"]


def read_split(folder: Path, split: str) -> list[dict]:
    with open(folder / SPLITS[split], encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f))
    scenes: dict[str, list[int]] = defaultdict(list)
    for row in rows:
        scenes[dialogue_of(row)].append(int(row["Utterance_ID"]))
    turns = {(scene, utt): rank for scene, utts in scenes.items() for rank, utt in enumerate(sorted(set(utts)))}
    return [manifest_row(row, split, turns) for row in rows]


def dialogue_of(row: dict) -> str:
    return f"{int(row['Season'])}-{int(row['Episode'])}-{int(row['Scene_ID'])}"


def manifest_row(row: dict, split: str, turns: dict) -> dict:
    dialogue, utt = dialogue_of(row), int(row["Utterance_ID"])
    return {"id": f"{dialogue}-{utt}", "text": row["Utterance"].strip(), "label": row["Emotion"].strip(),
            "split": split, "speaker": speaker_of(row["Speaker"]), "dialogue": dialogue,
            "turn": turns[(dialogue, utt)], "utterance_id": utt,
            "start_time": row["Start_Time"], "end_time": row["End_Time"]}


def speaker_of(text: str) -> str:
    try:
        names = ast.literal_eval(text)  # "['Monica Geller']"
    except (ValueError, SyntaxError):
        return text.strip()
    return " & ".join(str(n) for n in names) if isinstance(names, (list, tuple)) else str(names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="the folder holding emorynlp_{train,dev,test}_final.csv")
    parser.add_argument("out", type=Path, help="the manifest to write (.csv); its stem is the corpus name")
    args = parser.parse_args()
    rows = [row for split in SPLITS for row in read_split(args.folder, split)]
    if len({row["id"] for row in rows}) != len(rows):
        raise SystemExit(f"{args.folder}: two rows share season, episode, scene and Utterance_ID; ids would repeat")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    counts = {split: sum(row["split"] == split for row in rows) for split in SPLITS}
    print(f"{args.out}: {len(rows)} utterances ({', '.join(f'{s} {n}' for s, n in counts.items())})")


if __name__ == "__main__":
    main()
