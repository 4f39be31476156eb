"""The demo results table of docs/models.md: every model and baseline trained and tested on the
default demo corpus with its demo settings, on this machine, with wall time per model.

    .venv/bin/python benchmarks/demo_results.py [--cache demo-cache] [--out benchmarks/demo_results.md] [--seeds 0,1,2]

It runs exactly what `make demo` runs (mer.demo_pipeline) and writes the markdown table."""

import argparse
import platform
import time
from pathlib import Path

from mer import demo_pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default="demo-cache")
    parser.add_argument("--runs", default="runs/demo")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/demo_results.md"))
    parser.add_argument("--seeds", "--seed", default="0", help="Comma-separated seeds (several: mean +/- std).")
    args = parser.parse_args()
    started = time.strftime("%Y-%m-%d %H:%M")
    demo_pipeline.main(["--cache", args.cache, "--runs", args.runs, "--seeds", args.seeds, "--table", str(args.out)])
    table = args.out.read_text()
    header = (f"Measured {started} on {platform.machine()} ({platform.processor() or 'cpu'}), torch threads 1, "
              f"seeds {args.seeds}, demo corpus defaults (train 240 / dev 80 / test 80 utterances).\n\n")
    args.out.write_text(header + table)


if __name__ == "__main__":
    main()
