"""`make demo`: both stages on the synthetic demo corpus, ending with every model's results.

    python -m mer.demo_pipeline [--cache demo-cache] [--runs runs/demo] [--models a,b] [--seeds 0[,1,2]]

Stage 1 extracts the demo's default features (MFCC, log-Mel + deltas, eGeMAPS, MiniLM words)
once into the cache (a second run finds them cached); stage 2 trains and tests every model
and baseline on the demo protocol (sessions 1-3 train, 4 dev, 5 test) with the models' demo
settings, and prints one table, each model beside the `linear` probe on the same features (pooled
per utterance; one probe per feature set the models read): the difference in points and McNemar's
exact p over the same test utterances. With several seeds every model trains once per seed
(runs/demo/seed<k>/<model>) and the table gives the mean test accuracy +/- its std over the
seeds: one demo test split is 80 utterances and a seed moves a single result by several points."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

DEMO_FEATURES = "mfcc40,logmfb80-d2,opensmile-egemaps,minilm-l6"
BASELINES = ["linear", "audio-only", "text-only", "concat", "late"]  # linear: the reference row (docs/baselines.md)
FUSION_MODELS = ["mcsan", "cm-roberta", "mcfn", "mfdr", "mgcma"]


def extract(cache: Path) -> None:
    command = [sys.executable, "-m", "mer.cli", "extract", "--dataset", "demo", "--features", DEMO_FEATURES,
               "--cache", str(cache), "--workers", "2"]
    print("$ mer " + " ".join(command[3:]), flush=True)
    if subprocess.call(command) != 0:
        sys.exit("stage 1 failed")
    if subprocess.call([sys.executable, "-m", "mer.cli", "cache", "verify", str(cache)]) != 0:
        sys.exit("the cache does not verify")


def train(model: str, cache: Path, runs: Path, seed: int, corpus: str = "demo", settings: Optional[dict] = None,
          name: Optional[str] = None) -> dict:
    """One run of `model` (`--set` `settings`) into runs/`name` (default: the model's name) -> its table row."""
    from mer.fuse.run import FuseConfig, run_fuse
    from mer.fuse.trainer import TrainerConfig

    out = runs / (name or model)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with open(out / "train.log", "w") as log_file:
        # overwrite: each `make demo` trains afresh, also after a change of the models' demo settings
        document, _ = run_fuse(FuseConfig(model=model, corpus=corpus, cache=cache, out=out, overwrite=True,
                                          settings=dict(settings or {}), trainer=TrainerConfig(seed=seed)),
                               log=lambda line: print(line, file=log_file, flush=True))
    history = json.loads((out / "history.json").read_text())
    return {**result_row(model, document, history, time.time() - started), "run": str(out)}


def result_row(model: str, document: dict, history: dict, seconds: float) -> dict:
    test = {name: stats["mean"] for name, stats in document["summary"]["test"].items()}
    epochs = next(iter(history.values()))
    aux = {name: (epochs[0]["train"][name], epochs[-1]["train"][name])
           for name in epochs[0]["train"] if name not in ("task", "total") and not name.startswith("ce_")}
    return {"model": model, "features": document["features"], "seconds": seconds, "epochs": len(epochs),
            "accuracy": test["accuracy"], "ua": test["ua"], "weighted_f1": test["weighted_f1"], "aux": aux}


def mean_row(rows: list[dict]) -> dict:
    """One model's rows over seeds -> one row: the metrics' means, the accuracy's std, the summed time."""
    mean = {key: float(np.mean([r[key] for r in rows])) for key in ("accuracy", "ua", "weighted_f1")}
    return {**rows[0], **mean, "accuracy_std": float(np.std([r["accuracy"] for r in rows])), "seeds": len(rows),
            "seconds": sum(r["seconds"] for r in rows), "runs": [r.get("run") for r in rows]}


def probe_settings(features: dict) -> dict:
    """`linear`'s settings for the probe on exactly `features` ({"audio": name or None, "text": ...}):
    pooled per utterance, concatenated when both are given."""
    modality = "both" if features["audio"] and features["text"] else ("audio" if features["audio"] else "text")
    return {"modality": modality, **{f"{role}_feature": name for role, name in features.items() if name}}


def missing_probes(rows: list[dict]) -> list[dict]:
    """The feature sets that rows read and no `linear` row does, in the rows' order."""
    probed = [r["features"] for r in rows if r["model"] == "linear"]
    missing: list[dict] = []
    for row in rows:
        if row["features"] not in probed + missing:
            missing.append(row["features"])
    return missing


def probe_name(features: dict) -> str:
    return "linear-" + "+".join(name for name in (features["audio"], features["text"]) if name)


def probe_of(row: dict, rows: list[dict]) -> Optional[dict]:
    """The `linear` row on the same features as `row` (None for a probe itself, or when there is none)."""
    if row["model"] == "linear":
        return None
    return next((r for r in rows if r["model"] == "linear" and r["features"] == row["features"]), None)


def add_paired_tests(rows: list[dict]) -> None:
    """Each row's McNemar p against the probe on its features, seed by seed (`p_vs_linear`): the runs test
    the same utterances, and on the demo's 80 a difference of a few points is often within chance."""
    from mer.fuse.compare import load_run, paired

    for row in rows:
        probe = probe_of(row, rows)
        if probe is not None:  # the same seeds on both sides: a mismatch is a bug, not a row to skip
            pairs = zip(probe["runs"], row["runs"], strict=True)
            row["p_vs_linear"] = [paired(load_run(Path(a), "linear"), load_run(Path(b), row["model"]),
                                         "accuracy")["tests"][0]["p"] for a, b in pairs]


def format_table(rows: list[dict]) -> str:
    """One row per model; where a `linear` row reads the same features, each model's test accuracy minus that
    probe's (points) and the paired test's p (add_paired_tests; over seeds, its range). Rows of several seeds
    (mean_row) show the mean +/- std, and the epochs and aux losses of the first seed."""
    lines = ["| model | audio | text | test acc | vs linear | McNemar p | UA | W-F1 | epochs | time (s) | "
             "aux losses, first -> last epoch |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        aux = ", ".join(f"{k} {a:.3f} -> {b:.3f}" for k, (a, b) in r["aux"].items())
        probe = probe_of(r, rows)
        versus = "" if probe is None else f"{100 * (r['accuracy'] - probe['accuracy']):+.1f}"
        lines.append(f"| {r['model']} | {r['features']['audio'] or '-'} | {r['features']['text'] or '-'} | "
                     f"{_accuracy(r)} | {versus} | {_p_values(r)} | {r['ua']:.3f} | {r['weighted_f1']:.3f} | "
                     f"{r['epochs']} | {r['seconds']:.0f} | {aux} |")
    return "\n".join(lines)


def _p_values(row: dict) -> str:
    """The p over the seeds: one value, or its range ("" without a paired test)."""
    values = [p for p in row.get("p_vs_linear", []) if p is not None]
    if not values:
        return ""
    low, high = f"{min(values):.2f}", f"{max(values):.2f}"
    return low if low == high else f"{low} to {high}"


def _accuracy(row: dict) -> str:
    return f"{row['accuracy']:.3f}" if row.get("seeds", 1) == 1 else f"{row['accuracy']:.3f} +/- {row['accuracy_std']:.3f}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path("demo-cache"))
    parser.add_argument("--runs", type=Path, default=Path("runs/demo"))
    parser.add_argument("--models", default=",".join(BASELINES + FUSION_MODELS))
    parser.add_argument("--seeds", "--seed", default="0", help="Comma-separated seeds (several: mean +/- std).")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for training (measured on the "
                        "2-core machine: 1 thread trains MCFN 3-4x faster than 2 while data loading competes)")
    parser.add_argument("--table", type=Path, help="Also write the results table (markdown) here.")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    extract(args.cache)
    seeds = [int(seed) for seed in args.seeds.split(",")]
    runs = [args.runs] if len(seeds) == 1 else [args.runs / f"seed{seed}" for seed in seeds]

    def over_seeds(model: str, settings: Optional[dict] = None, name: Optional[str] = None) -> dict:
        print(f"training {name or model} ...", flush=True)
        row = mean_row([train(model, args.cache, run_root, seed, settings=settings, name=name)
                        for run_root, seed in zip(runs, seeds)])
        print(f"  {name or model}: test accuracy {_accuracy(row)}, {row['seconds']:.0f} s", flush=True)
        return row

    models = args.models.split(",")
    rows = [over_seeds(model) for model in models]
    if "linear" in models:  # the reference of each model is the probe on its own features
        probes = [over_seeds("linear", probe_settings(f), probe_name(f)) for f in missing_probes(rows)]
        rows = [r for r in rows if r["model"] == "linear"] + probes + [r for r in rows if r["model"] != "linear"]
    add_paired_tests(rows)
    table = format_table(rows)
    print()
    print(table)
    if args.table:
        args.table.write_text(table + "\n")


if __name__ == "__main__":
    main()
