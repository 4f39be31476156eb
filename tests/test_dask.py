"""Extraction on a real local dask.distributed cluster whose worker process is killed mid-run:
its shard is recomputed, never duplicated."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_extract_cli import DEMO, REPO, stored_copies, verify_json

distributed = pytest.importorskip("distributed")


def test_killed_worker_is_recovered_without_duplicates(tmp_path, demo_root):
    from dask.distributed import Client, LocalCluster

    cache = tmp_path / "cache"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=40) as cluster, Client(cluster) as client:
        client.run(sys.path.insert, 0, str(REPO))
        pids = list(client.run(os.getpid).values())
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        proc = subprocess.Popen([sys.executable, "-m", "mer.cli", "extract", *DEMO, "--root", str(demo_root),
                                 "--features", "mfcc40,opensmile-egemaps", "--cache", str(cache),
                                 "--shard-size", "4", "--no-progress", "--json", "--scheduler", cluster.scheduler_address],
                                cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 300
        while not list(cache.glob("*/opensmile-egemaps@*/shard-*.json")) and time.time() < deadline:
            time.sleep(0.05)
        os.kill(pids[0], signal.SIGKILL)  # a worker dies while tasks are in flight on it
        out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    summary = json.loads(out)
    assert all(f["done"] + f["cached"] == 40 and not f["failed"] for f in summary["features"])
    copies = stored_copies(cache)
    assert len(copies) == 80 and set(copies.values()) == {1}
    assert verify_json(cache)["ok"]
