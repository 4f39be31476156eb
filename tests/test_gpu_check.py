"""benchmarks/gpu_check.sh --dry-run: the GPU check's own code on the CPU (tiny models, a few clips),
so that the script prepared for a short GPU lease cannot rot between leases."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("extraction", "spectral", "training")
FUSION_MODELS = ("mcsan", "cm-roberta", "mcfn", "mfdr", "mgcma")
# Import names of packages the H200 image holds (/work/.library/device/KINDS.md, "Python packages already there").
DEVICE_IMAGE = {"numpy", "scipy", "torch", "torchaudio", "transformers", "tokenizers", "huggingface_hub", "safetensors",
                "h5py", "tqdm", "psutil", "pytest", "click", "sklearn", "matplotlib", "yaml", "packaging", "filelock",
                "PIL", "typing_extensions", "jinja2", "regex", "requests", "pandas"}


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check")
    env = {**os.environ, "PYTHON": sys.executable, "HF_HUB_OFFLINE": "1"}
    # a generous budget: a slow shared CI machine must not skip steps, which would hide their rot
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run", str(out), "--budget", "400"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out, json.loads((out / "gpu_check.json").read_text())


@pytest.mark.slow
def test_dry_run_measures_every_step(dry_run):
    out, document = dry_run
    rows = document["rows"]
    assert {r["section"] for r in rows} == set(SECTIONS)
    problems = [r for r in rows if r.get("verdict") in ("ERROR", "SKIPPED") and "half precision" not in r.get("note", "")]
    assert not problems, problems
    trained = [r["what"] for r in rows if r["section"] == "training" and "samples/s" in str(r.get("throughput"))]
    assert [what.split(" ")[0] for what in trained] == list(FUSION_MODELS)
    assert any("batched vs one clip at a time, end to end" in r["what"] for r in rows)
    table = (out / "gpu_check.md").read_text()
    assert table.count("\n| ") == len(rows) + 1  # one table: the header and a line per row
    assert (out / "gpu_check.log").is_file()


@pytest.mark.slow
def test_what_the_check_imports_is_on_the_device_or_carried(dry_run):
    _, document = dry_run
    wheels = ROOT / "benchmarks" / "gpu_wheels.txt"
    carried = set(re.findall(r"# import: (\w+)", wheels.read_text()))
    missing = set(document["meta"]["third_party_imports"]) - DEVICE_IMAGE - carried
    assert not missing, f"not in the H200 image (KINDS.md) nor in {wheels.name}: {sorted(missing)}"
