"""Every baseline beside a scikit-learn linear probe, on the same cached features and folds.

    python benchmarks/vs_linear.py --cache /tmp/ravdess-cache --corpus ravdess --audio opensmile-compare16 \
        --text minilm-l6
    python benchmarks/vs_linear.py --cache /tmp/emory-cache --corpus emorynlp --protocol manifest --text minilm-l6

For each model, `mer fuse` (run_fuse, the model's default config; `--set key=value` overrides
every model) gives the mean test accuracy over the protocol's folds. The probe is scikit-learn's
LogisticRegression(C) after StandardScaler on the same cached vectors of the features that model
reads (mean over frames/words; concatenated when both), per fold fitted on train (what the models
train on) and, second, on train + dev (the probe selects nothing on dev; this is the reference
the issue quotes), and tested on the fold's test split. Printed: one markdown table with each
model's difference to both probes in points (x100)."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BASELINES = ["audio-only", "text-only", "concat", "late", "linear"]


def pooled(store, ids: list[str]) -> np.ndarray:
    """(utterances, dim): the mean over each utterance's rows (an utterance-level vector: itself)."""
    rows = []
    for utt_id in ids:
        array = np.asarray(store.get(utt_id), dtype=np.float64)
        array = array.reshape(-1, array.shape[-1])
        rows.append(array.mean(0) if len(array) else np.zeros(array.shape[-1]))
    return np.stack(rows)


_POOLED: dict = {}


def sklearn_probe(cache_root: Path, corpus: str, features: list[str], protocol: str, c: float, seed: int,
                  parts: tuple[str, ...]) -> float:
    """Mean test accuracy over the protocol's folds of StandardScaler + LogisticRegression(C) fitted on
    `parts` ("train", or "train" and "dev": the probe selects nothing on dev, so it may learn from it)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from mer.cache.reader import FeatureCache
    from mer.data.protocols import make_folds

    cache = FeatureCache(cache_root)
    fold_set = make_folds(protocol, cache.utterances(corpus), seed=seed)
    every = sorted({i for fold in fold_set.folds for part in ("train", "dev", "test") for i in fold.part(part)})
    key = (cache_root, corpus, tuple(features), tuple(every))
    if key not in _POOLED:  # read once per feature set, not per fold and probe
        matrix = np.concatenate([pooled(cache.open(corpus, name), every) for name in features], axis=1)
        _POOLED[key] = dict(zip(every, matrix))
    rows = _POOLED[key]
    accuracy = []
    for fold in fold_set.folds:
        def xy(ids):
            return (np.stack([rows[i] for i in ids]), np.array([fold_set.labels.index(fold_set.targets[i]) for i in ids]))

        (x_train, y_train), (x_test, y_test) = xy([i for p in parts for i in fold.part(p)]), xy(list(fold.test_ids))
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000))
        accuracy.append(float((probe.fit(x_train, y_train).predict(x_test) == y_test).mean()))
    return float(np.mean(accuracy))


def fuse(model: str, cache: Path, corpus: str, protocol: str, features: dict, settings: dict, seed: int) -> dict:
    from mer.fuse.run import FuseConfig, run_fuse
    from mer.fuse.trainer import TrainerConfig

    chosen = {f"{role}_feature": name for role, name in features.items() if name}
    if model == "linear":
        chosen["modality"] = "both" if len(chosen) == 2 else ("audio" if features.get("audio") else "text")
    with tempfile.TemporaryDirectory() as out:
        started = time.time()
        document, _ = run_fuse(FuseConfig(model=model, corpus=corpus, cache=cache, protocol=protocol, out=Path(out),
                                          settings={**chosen, **settings}, trainer=TrainerConfig(seed=seed)),
                               log=lambda line: None)
    test = document["summary"]["test"]
    return {"accuracy": test["accuracy"]["mean"], "seconds": time.time() - started,
            "epochs": [f["best_epoch"] + 1 for f in document["folds"]]}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--audio", help="audio feature (an utterance- or frame-level cache feature)")
    parser.add_argument("--text", help="text feature")
    parser.add_argument("--models", help="default: the baselines the given features allow")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--c", type=float, default=0.1, help="the probe's inverse L2 strength")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--protocol", help="default: the corpus's own (mer.data.protocols.default_protocol)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    import torch

    from mer.data.protocols import default_protocol

    from threadpoolctl import threadpool_limits

    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)  # BLAS threads too: lbfgs on 224 x 6373 took 4.6 s a fold with all of them on
    # 2 shared cores, 1.0 s with one
    features = {"audio": args.audio, "text": args.text}
    if not any(features.values()):
        sys.exit("give --audio, --text or both")
    usable = [m for m in BASELINES if (m != "audio-only" or args.audio) and (m != "text-only" or args.text)
              and (m not in ("concat", "late") or (args.audio and args.text))]
    models = args.models.split(",") if args.models else usable
    settings = dict(s.split("=", 1) for s in args.settings)
    protocol = args.protocol or default_protocol(args.corpus)
    print(f"{args.corpus}, protocol {protocol}, seed {args.seed}: mean test accuracy over folds; probe = "
          f"StandardScaler + LogisticRegression(C={args.c:g}) on the model's features, fitted on train (the models' "
          "training data) or on train + dev")
    print("| model | features | accuracy | probe (train) | vs probe | probe (train+dev) | vs probe | best epochs | "
          "time (s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    probes: dict[tuple, tuple[float, float]] = {}
    for model in models:
        used = {role: name for role, name in features.items()
                if name and (model not in ("audio-only", "text-only") or model.startswith(role))}
        key = tuple(used.values())
        if key not in probes:
            probes[key] = tuple(sklearn_probe(args.cache, args.corpus, list(key), protocol, args.c, args.seed, parts)
                                for parts in (("train",), ("train", "dev")))
        r = fuse(model, args.cache, args.corpus, protocol, used, settings, args.seed)
        on_train, on_train_dev = probes[key]
        gains = [f"{probe:.3f} | {100 * (r['accuracy'] - probe):+.1f}" for probe in probes[key]]
        print(f"| {model} | {' + '.join(key)} | {r['accuracy']:.3f} | {' | '.join(gains)} | "
              f"{','.join(map(str, r['epochs']))} | {r['seconds']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
