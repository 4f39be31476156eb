"""`--scheduler ADDR`: a badly formed address is one line at once (not a traceback after the connect), and a
client whose scheduler has no worker left says so once instead of waiting silently."""

import time

import pytest

from mer import cluster
from mer.cluster import dask_client
from mer.errors import MerError

pytest.importorskip("distributed")


@pytest.mark.parametrize("address, reason", [
    ("127.0.0.1:8799x", "the port is not a number"),
    ("bogus://x", "unknown address scheme 'bogus'"),
    ("127.0.0.1", "missing port number"),
])
def test_malformed_address_is_one_line_at_once(address, reason):
    started = time.monotonic()
    with pytest.raises(MerError) as caught:
        with dask_client(address):
            pass
    message = str(caught.value)
    assert message.startswith(f"--scheduler {address}: not a dask address") and reason in message
    assert "write tcp://HOST:PORT" in message and "\n" not in message
    assert time.monotonic() - started < 5


@pytest.fixture
def scheduler_only():
    """A scheduler without any worker, the state of a cluster whose workers all died."""
    from dask.distributed import LocalCluster

    with LocalCluster(n_workers=0, processes=False, dashboard_address=None, silence_logs=40) as local:
        yield local


def test_no_workers_is_said_once_while_waiting(scheduler_only, monkeypatch, capsys):
    monkeypatch.setattr(cluster, "WORKER_CHECK_S", 0.05, raising=False)
    address = scheduler_only.scheduler_address
    with dask_client(address) as client:
        future = client.submit(sum, [1, 2])
        time.sleep(0.5)
        assert not future.done()
        lines = capsys.readouterr().err.splitlines()
        assert lines == [f"warning: no dask workers connected to {address}; the tasks wait for one "
                         f"(start one: dask worker {address})"]
        scheduler_only.scale(1)  # a worker connects: the waiting task runs, as without the check
        assert future.result(timeout=30) == 3
    assert capsys.readouterr().err == ""


def test_no_warning_while_workers_are_connected(monkeypatch, capsys):
    from dask.distributed import LocalCluster

    monkeypatch.setattr(cluster, "WORKER_CHECK_S", 0.05, raising=False)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None,
                      silence_logs=40) as local, dask_client(local.scheduler_address) as client:
        assert client.submit(sum, [1, 2]).result(timeout=30) == 3
        time.sleep(0.3)
    assert capsys.readouterr().err == ""
