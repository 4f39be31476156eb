"""The dask.distributed client behind `--scheduler ADDR` and `--workers N`: `mer extract` sends it
shard-sized tasks, `mer fuse` one task per (run, fold). The client process keeps what must not be
done twice (claims and commits of shards, the run directory); workers compute and return.

This module is also the preload of the local cluster's worker processes (see `dask_setup`)."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Callable, Iterator, Optional

from mer.errors import MerError

CONNECT_TIMEOUT_S = 30
WORKER_CHECK_S = 30  # how often a client of --scheduler asks whether any worker is left


@contextlib.contextmanager
def dask_client(scheduler: Optional[str] = None, workers: int = 1, threads: Optional[int] = None) -> Iterator:
    """A client of the scheduler at `scheduler`, or of a local cluster of `workers` processes with one task
    thread each and `threads` BLAS/OpenMP threads (default: the cores shared out among them)."""
    from dask.distributed import Client, LocalCluster

    if scheduler:
        with _connect(scheduler) as client, watch_workers(client):
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


def check_scheduler_address(address: str) -> None:
    """A one-line error, before any connection is tried, where `address` is not a dask address."""
    from distributed.comm.addressing import parse_address
    from distributed.comm.registry import get_backend

    try:
        scheme, location = parse_address(address)
        get_backend(scheme).get_address_host_port(location)
    except NotImplementedError:  # dask's answer for schemes that have no HOST:PORT (inproc://, ucx://):
        return  # nothing to parse here; connecting says whether it works
    except (ValueError, TypeError) as exc:
        raise MerError(f"--scheduler {address}: not a dask address ({_reason(exc)}); write tcp://HOST:PORT, "
                       "the address `dask scheduler` prints") from None


def _reason(exc: Exception) -> str:
    text = str(exc)
    return "the port is not a number" if text.startswith("invalid literal for int()") else text.split(" (known")[0]


def _connect(scheduler: str):
    from dask.distributed import Client

    check_scheduler_address(scheduler)
    try:
        return Client(scheduler, timeout=CONNECT_TIMEOUT_S)
    except OSError as exc:
        raise MerError(f"cannot reach the dask scheduler at {scheduler} ({exc}); "
                       "check the address or start one with `dask scheduler`") from None
    except (ValueError, TypeError) as exc:  # what check_scheduler_address cannot see (a scheme dask cannot use)
        raise MerError(f"--scheduler {scheduler}: not a usable dask address ({exc}); write tcp://HOST:PORT, "
                       "the address `dask scheduler` prints") from None


@contextlib.contextmanager
def watch_workers(client, warn: Optional[Callable[[str], None]] = None) -> Iterator[None]:
    """While the block runs, one line (on stderr by default) each time the scheduler is left without workers:
    its tasks then wait, silently, until a worker connects. Checked every WORKER_CHECK_S seconds."""
    stop = threading.Event()
    watcher = threading.Thread(target=_watch, args=(client, stop, warn or _to_stderr), daemon=True,
                               name="mer-watch-workers")
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join(timeout=5)


def _watch(client, stop: threading.Event, warn: Callable[[str], None]) -> None:
    address, warned = client.scheduler.address, False
    while not stop.wait(WORKER_CHECK_S):
        try:
            idle = not client.nthreads()  # not scheduler_info(): it replaces the info the client caches
        except Exception:  # noqa: BLE001 (the client lost the scheduler or is closing: its own error tells)
            return
        if idle and not warned:
            warn(f"warning: no dask workers connected to {address}; the tasks wait for one "
                 f"(start one: dask worker {address})")
        warned = idle


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def dask_setup(worker) -> None:
    """Run in each worker process of a local cluster. A terminal's Ctrl-C reaches the whole process group,
    and the client, not each worker, handles it (it stops submitting and closes the cluster), so the workers
    ignore SIGINT rather than print a traceback each. (Blocking SIGINT while the cluster starts does not reach
    them: dask starts them from a thread created earlier.)"""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
