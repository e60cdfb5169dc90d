"""A Ray connection for one run, and the fold workers on it.

Rules:
- Ray is optional (extra ``ray``): asking for it without it installed is one line naming the extra.
- With ``ClusterConfig.address`` the run joins the cluster there (``ray.init(address=...)``): every node
  needs onnx-decomp installed, and the model and calibration files must be readable at the same paths where
  the workers run (models travel by path, never by value); joining a cluster with token authentication (Ray
  2.60's ``ray start`` turns it on where it finds a token) takes ``RAY_AUTH_MODE=token`` and the cluster's
  token in the environment (Ray's rule); an address where no cluster answers is one line. Otherwise a local instance is
  started for the run with one CPU per worker, bound to the loopback address only (Ray's single-node switch
  ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, set before Ray is imported: a warning says when Ray was imported
  first), without a dashboard, and shut down when the run ends. A Ray already initialised in the process is
  used as it is and left running (each worker holds one of its CPUs: a warning says when fewer are free, for
  the workers then wait for them).
- Workers are actors that Ray restarts whenever their process dies (``max_restarts=-1``); a call that was
  running on a dead worker is retried on the restarted one (``max_task_retries=-1``). Every call carries
  what it depends on (``distributed.folds``), so a retried call returns what the first would have.
- An error a worker raises reaches the caller as itself (a ``DecompError`` stays one line).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Iterator, Optional, Union

from onnx_decomp.config import ClusterConfig
from onnx_decomp.errors import DecompError

logger = logging.getLogger(__name__)

INSTALL = "pip install 'onnx-decomp[ray]'"
OBJECT_STORE = 2 * 2**30  # bytes of shared memory for a local instance's object store
TOKEN_MODE = "RAY_AUTH_MODE=token"  # what a driver joining a cluster with token authentication sets


def import_ray(local: bool):
    """The ``ray`` module (module rule: one line when it is missing; loopback only for a local instance)."""
    if local:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
    except ImportError:
        raise DecompError(f"--workers and --ray-address need Ray: {INSTALL}") from None
    constants = getattr(getattr(ray, "_private", None), "ray_constants", None)
    if local and getattr(constants, "ENABLE_RAY_CLUSTER", False) and not ray.is_initialized():
        logger.warning("Ray was imported before onnx-decomp set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0: the local "
                       "instance may listen beyond the loopback address (set it before importing Ray)")
    return ray


def gather(futures):
    """``ray.get`` that re-raises a worker's own exception (module rule)."""
    ray = import_ray(False)
    try:
        return ray.get(futures)
    except ray.exceptions.RayTaskError as error:
        cause = error.cause
        raise (cause if isinstance(cause, Exception) else error) from None


class Cluster:
    """The Ray connection of one run (module rules) and the actors made on it; ``worker``: the fold workers'
    class (None: ``distributed.folds.FoldWorker``; the tests give a subclass that kills itself mid-call)."""

    def __init__(self, config: ClusterConfig, worker: Optional[type] = None):
        self.config, self.worker = config, worker
        self.ray = import_ray(config.address is None)
        self._started = False
        self._actors: list = []
        self._fold_workers: Optional[list] = None

    def __enter__(self) -> "Cluster":
        if not self.ray.is_initialized():
            if self.config.address is not None:
                try:
                    self.ray.init(address=self.config.address, log_to_driver=False)
                except ConnectionError as error:
                    raise DecompError(f"{error}: is a cluster up there? One with token authentication also "
                                      f"needs {TOKEN_MODE} in the environment and its token") from None
            else:
                self.ray.init(num_cpus=self.config.size, include_dashboard=False, log_to_driver=False,
                              object_store_memory=OBJECT_STORE)
            self._started = True
        return self

    def __exit__(self, *exc) -> None:
        for actor in self._actors:
            self.ray.kill(actor)
        self._actors, self._fold_workers = [], None
        if self._started:
            self.ray.shutdown()

    def actors(self, body: type, count: int, *args) -> list:
        """``count`` actors running ``body(*args)``, restarted and their calls retried (module rule)."""
        remote = self.ray.remote(max_restarts=-1, max_task_retries=-1, num_cpus=1)(body)
        made = [remote.remote(*args) for _ in range(count)]
        self._actors += made
        return made

    @property
    def fold_workers(self) -> list:
        """The run's ``ClusterConfig.size`` fold workers (``distributed.folds``), made on first use."""
        if self._fold_workers is None:
            from onnx_decomp.distributed.folds import FoldWorker
            free = self.ray.available_resources().get("CPU", 0)
            if free < self.config.size:
                logger.warning("%d fold workers need a CPU each and Ray has %g free: they wait for them",
                               self.config.size, free)
            self._fold_workers = self.actors(self.worker or FoldWorker, self.config.size, self.config.threads)
            logger.info("%d fold workers on Ray (%s)", self.config.size, self.config.address or "local instance")
        return self._fold_workers


def pids(actors: list) -> list[int]:
    """The process id of every actor (each has a ``pid`` method) now."""
    return gather([actor.pid.remote() for actor in actors])


@contextlib.contextmanager
def ray_cluster(cluster: Union[None, ClusterConfig, Cluster]) -> Iterator[Optional[Cluster]]:
    """The run's cluster: None (one process), a ``Cluster`` the caller holds (used as it is), or one made for
    a ``ClusterConfig`` and closed when the run ends."""
    if isinstance(cluster, Cluster) or cluster is None or (cluster.workers is None and cluster.address is None):
        yield cluster if isinstance(cluster, Cluster) else None
        return
    with Cluster(cluster) as made:
        yield made


def cpu_seconds(pid: int) -> float:
    """CPU time a process has used so far (Linux ``/proc``; 0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def kill_when_busy(pid: int, seconds: float, poll: float = 0.05) -> threading.Thread:
    """A thread that kills process ``pid`` (SIGKILL) once it has used ``seconds`` of CPU time: a worker killed
    in the middle of its work, for ``tools/bench_ray.py`` (the tests kill a worker from inside a call)."""
    def watch() -> None:
        while Path(f"/proc/{pid}").exists():
            if cpu_seconds(pid) >= seconds:
                os.kill(pid, signal.SIGKILL)
                logger.info("killed worker %d after %.1f s of CPU", pid, seconds)
                return
            time.sleep(poll)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread
