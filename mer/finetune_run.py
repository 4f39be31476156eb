"""A `mer finetune` run directory, as `mer finetune` writes it and `mer extract` / `mer fuse` read it:

    RUN/config.json           the encoder and its training options, the corpus, protocol, seed, folds and
                              each fold's train/dev/test ids (a digest), the hyper-parameters, `run` (the digest
                              of all that) and `command` (the `mer finetune` command that resumes the run)
    RUN/checkpoints/<fold>/   the fold's fine-tuned encoder, a save_pretrained folder (config, weights,
                              tokenizer), and head.safetensors (its classification head)
    RUN/folds/<fold>.json     written last, so its presence means the fold is trained: metrics, the ids it
                              trained on

The cache holds the features of each fold's checkpoint as the feature `finetuned:<RUN folder name>`, one
config per fold and extraction choice; the spec's config names the run (digest) and the fold.
This module reads only files: the extractor (mer/extract/finetuned.py) and `mer fuse` both use it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from mer.errors import MerError

FINETUNED_PREFIX = "finetuned:"
CONFIG_FILE = "config.json"
HEAD_FILE = "head.safetensors"


def is_finetuned(feature: str) -> bool:
    """`finetuned:RUN_DIR`: the features of a `mer finetune` run, one checkpoint per fold."""
    return feature.startswith(FINETUNED_PREFIX)


@dataclass(frozen=True)
class FinetuneRun:
    directory: Path
    config: dict

    @classmethod
    def read(cls, directory: Path) -> "FinetuneRun":
        path = Path(directory) / CONFIG_FILE
        try:
            return cls(Path(directory).resolve(), json.loads(path.read_text()))
        except FileNotFoundError:
            raise MerError(f"{path}: not a `mer finetune` run directory (no {CONFIG_FILE}); fine-tune into it "
                           f"first: mer finetune --encoder ENCODER --dataset D --cache C --out {directory}") from None
        except (OSError, ValueError) as exc:
            raise MerError(f"{path}: unreadable ({exc}); run the `mer finetune` command again with another --out") \
                from None

    @property
    def digest(self) -> str:
        return self.config["run"]

    @property
    def feature_name(self) -> str:
        """The cache feature its folds' features are stored as."""
        return f"{FINETUNED_PREFIX}{self.directory.name}"

    @property
    def command(self) -> str:
        return self.config["command"]

    def checkpoint(self, fold: str) -> Path:
        """The fold's encoder folder, once the fold is trained."""
        if self.fold_record(fold) is None:
            raise MerError(f"{self.directory}: fold {fold!r} is not fine-tuned yet (folds {', '.join(self.folds)}); "
                           f"run `{self.command}` (it resumes)")
        return self.directory / "checkpoints" / fold

    @property
    def folds(self) -> list[str]:
        return list(self.config["folds"])

    def fold_record(self, fold: str) -> Optional[dict]:
        path = self.directory / "folds" / f"{fold}.json"
        return json.loads(path.read_text()) if path.is_file() else None
