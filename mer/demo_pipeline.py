"""`make demo`: the whole pipeline on the synthetic demo corpus, with a summary at the end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CACHE = Path(os.environ.get("MER_DEMO_CACHE", "demo-cache"))
FEATURES = "mfcc40,logmfb80-d2,opensmile-egemaps"


def mer(*args: str) -> None:
    print("$ mer " + " ".join(args), flush=True)
    code = subprocess.call([sys.executable, "-m", "mer.cli", *args])
    if code != 0:
        sys.exit(code)


def main() -> None:
    mer("extract", "--dataset", "demo", "--features", FEATURES, "--cache", str(CACHE), "--workers", "2")
    mer("cache", "verify", str(CACHE))
    mer("cache", "ls", str(CACHE))


if __name__ == "__main__":
    main()
