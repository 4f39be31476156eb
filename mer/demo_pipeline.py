"""`make demo`: both stages on the synthetic demo corpus, ending with every model's results.

    python -m mer.demo_pipeline [--cache demo-cache] [--runs runs/demo] [--models a,b] [--seed 0]

Stage 1 extracts the demo's default features (MFCC, log-Mel + deltas, eGeMAPS, MiniLM words)
once into the cache (a second run finds them cached); stage 2 trains and tests every model
and baseline on the demo protocol (sessions 1-3 train, 4 dev, 5 test) with the models' demo
settings, and prints one table."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

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


def train(model: str, cache: Path, runs: Path, seed: int, corpus: str = "demo") -> dict:
    from mer.fuse.run import FuseConfig, run_fuse
    from mer.fuse.trainer import TrainerConfig

    out = runs / model
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with open(out / "train.log", "w") as log_file:
        # overwrite: each `make demo` trains afresh, also after a change of the models' demo settings
        document, _ = run_fuse(FuseConfig(model=model, corpus=corpus, cache=cache, out=out, overwrite=True,
                                          trainer=TrainerConfig(seed=seed)),
                               log=lambda line: print(line, file=log_file, flush=True))
    history = json.loads((out / "history.json").read_text())
    return result_row(model, document, history, time.time() - started)


def result_row(model: str, document: dict, history: dict, seconds: float) -> dict:
    test = {name: stats["mean"] for name, stats in document["summary"]["test"].items()}
    epochs = next(iter(history.values()))
    aux = {name: (epochs[0]["train"][name], epochs[-1]["train"][name])
           for name in epochs[0]["train"] if name not in ("task", "total") and not name.startswith("ce_")}
    return {"model": model, "features": document["features"], "seconds": seconds, "epochs": len(epochs),
            "accuracy": test["accuracy"], "ua": test["ua"], "weighted_f1": test["weighted_f1"], "aux": aux}


def format_table(rows: list[dict]) -> str:
    """One row per model; with a `linear` row, each model's test accuracy minus the probe's (points)."""
    probe = next((r["accuracy"] for r in rows if r["model"] == "linear"), None)
    lines = ["| model | audio | text | test acc | vs linear | UA | W-F1 | epochs | time (s) | "
             "aux losses, first -> last epoch |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        aux = ", ".join(f"{k} {a:.3f} -> {b:.3f}" for k, (a, b) in r["aux"].items())
        versus = "" if probe is None or r["model"] == "linear" else f"{100 * (r['accuracy'] - probe):+.1f}"
        lines.append(f"| {r['model']} | {r['features']['audio'] or '-'} | {r['features']['text'] or '-'} | "
                     f"{r['accuracy']:.3f} | {versus} | {r['ua']:.3f} | {r['weighted_f1']:.3f} | {r['epochs']} | "
                     f"{r['seconds']:.0f} | {aux} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path("demo-cache"))
    parser.add_argument("--runs", type=Path, default=Path("runs/demo"))
    parser.add_argument("--models", default=",".join(BASELINES + FUSION_MODELS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for training (measured on the "
                        "2-core machine: 1 thread trains MCFN 3-4x faster than 2 while data loading competes)")
    parser.add_argument("--table", type=Path, help="Also write the results table (markdown) here.")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    extract(args.cache)
    rows = []
    for model in args.models.split(","):
        print(f"training {model} ...", flush=True)
        rows.append(train(model, args.cache, args.runs, args.seed))
        r = rows[-1]
        print(f"  {model}: test accuracy {r['accuracy']:.3f}, {r['seconds']:.0f} s ({args.runs / model})", flush=True)
    table = format_table(rows)
    print()
    print(table)
    if args.table:
        args.table.write_text(table + "\n")


if __name__ == "__main__":
    main()
