"""The dask.distributed client behind `--scheduler ADDR` and `--workers N`: `mer extract` sends it
shard-sized tasks, `mer fuse` one task per (run, fold). The client process keeps what must not be
done twice (claims and commits of shards, the run directory); workers compute and return.

This module is also the preload of the local cluster's worker processes (see `dask_setup`)."""

from __future__ import annotations

import contextlib
import os
import signal
from typing import Iterator, Optional

from mer.errors import MerError

CONNECT_TIMEOUT_S = 30


@contextlib.contextmanager
def dask_client(scheduler: Optional[str] = None, workers: int = 1, threads: Optional[int] = None) -> Iterator:
    """A client of the scheduler at `scheduler`, or of a local cluster of `workers` processes with one task
    thread each and `threads` BLAS/OpenMP threads (default: the cores shared out among them)."""
    from dask.distributed import Client, LocalCluster

    if scheduler:
        with _connect(scheduler) as client:
            yield client
        return
    import dask

    threads = threads or max(1, (os.cpu_count() or 1) // workers)
    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    # not daemonic: a fold's DataLoader workers (--loader-workers) are child processes, which a daemon may not have
    with dask.config.set({"distributed.worker.daemon": False}), \
            LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                         silence_logs=40, env=env, preload=[__name__]) as cluster, Client(cluster) as client:
        yield client


def daemonic() -> bool:
    """Whether this process is a daemon (a dask worker started with dask's default `distributed.worker.daemon:
    True`), which may not start child processes such as DataLoader workers."""
    import multiprocessing

    return bool(multiprocessing.current_process().daemon)


def check_can_fork_workers(loader_workers: int) -> None:
    """A one-line error, with the fix, where DataLoader workers cannot start (daemonic)."""
    if loader_workers > 0 and daemonic():
        raise MerError(f"--loader-workers {loader_workers}: this dask worker is a daemonic process, which cannot start "
                       "DataLoader workers; start the dask workers with "
                       "`DASK_DISTRIBUTED__WORKER__DAEMON=False dask worker ADDR`, or use --loader-workers 0")


def _connect(scheduler: str):
    from dask.distributed import Client

    try:
        return Client(scheduler, timeout=CONNECT_TIMEOUT_S)
    except OSError as exc:
        raise MerError(f"cannot reach the dask scheduler at {scheduler} ({exc}); "
                       "check the address or start one with `dask scheduler`") from None


def dask_setup(worker) -> None:
    """Run in each worker process of a local cluster. A terminal's Ctrl-C reaches the whole process group,
    and the client, not each worker, handles it (it stops submitting and closes the cluster), so the workers
    ignore SIGINT rather than print a traceback each. (Blocking SIGINT while the cluster starts does not reach
    them: dask starts them from a thread created earlier.)"""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
