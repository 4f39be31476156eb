"""How much two processes get from this machine: one CPU-bound, single-threaded job alone vs two
copies of it at once, as separate processes (no shared Python, no shared data).

A ratio of 2.0 means two truly independent cores. On a VM whose vCPUs share a physical core
or memory bandwidth it is lower, and it bounds what any two-process pipeline can reach here:
`--workers 2` against 1, or a decoder process beside the compute thread. The job is openSMILE
eGeMAPS (the openSMILE benchmark's work) and a torch conv1d stack (a speech encoder's front end).

usage: .venv/bin/python benchmarks/parallel_ceiling.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import subprocess
import sys

JOBS = {
    "opensmile eGeMAPS, 60 s of audio x 8": """
import time, warnings
warnings.simplefilter("ignore")
import numpy as np, opensmile
wave = (0.1 * np.random.default_rng(0).standard_normal(60 * 16000)).astype(np.float32)
smile = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02, feature_level="func")
smile.process_signal(wave[:16000], 16000)
t = time.perf_counter()
for _ in range(8):
    smile.process_signal(wave, 16000)
print(time.perf_counter() - t)
""",
    "torch conv1d stack, 1 thread": """
import time, torch
torch.set_num_threads(1)
convs = torch.nn.Sequential(torch.nn.Conv1d(1, 64, 10, 5), torch.nn.GELU(), torch.nn.Conv1d(64, 64, 3, 2),
                            torch.nn.GELU(), torch.nn.Conv1d(64, 64, 3, 2))
x = torch.randn(4, 1, 16000 * 8)
with torch.inference_mode():
    convs(x)
    t = time.perf_counter()
    for _ in range(40):
        convs(x)
print(time.perf_counter() - t)
""",
}


def run_together(code: str, copies: int) -> list[float]:
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(copies)]
    return [float(p.communicate()[0]) for p in procs]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print("| job | alone s (best) | two at once s (best round, slower copy) | two-process throughput / one |")
    print("|---|---|---|---|")
    for name, code in JOBS.items():
        alone = min(run_together(code, 1)[0] for _ in range(args.rounds))
        together = min(max(run_together(code, 2)) for _ in range(args.rounds))
        print(f"| {name} | {alone:.2f} | {together:.2f} | **{2 * alone / together:.2f}** |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
