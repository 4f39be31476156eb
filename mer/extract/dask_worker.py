"""Preloaded into each worker process of the local dask cluster that `mer extract --workers N`
starts: a terminal's Ctrl-C reaches the whole process group, and the client, not each worker,
handles it (it stops submitting and closes the cluster), so the workers ignore SIGINT rather
than print a traceback each. (Blocking SIGINT while the cluster starts, as the decoder pool
does, does not reach them: dask starts them from a thread created earlier.)"""

import signal


def dask_setup(worker) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
