"""The shards of a manifest (``distributed.shards``) run on one input and merged into the model's output.

Rules:
- Each shard has one ONNX Runtime session of its own, made from its file (models travel by path).
- ``local``: the sessions live in this process and run one after the other.
- ``ray``: each session lives in a Ray actor of its own (one CPU each; restarted when its process dies, its
  call retried: ``distributed.cluster``); an input over ``INLINE`` bytes is put in Ray's object store once (a
  smaller one goes with each call), and every shard's call is issued before any is awaited, so the shards run
  at once where there are CPUs for them. A session's intra-op threads are ``SessionConfig.threads``, one per
  actor when it is None. The Ray connection is the caller's ``Cluster`` or one made for the run: a
  ``ClusterConfig``'s (its workers: one CPU per shard unless it says), a local instance of one CPU per shard
  without one.
- Every call pays Ray's round trip (``ShardRunner.ping``: an actor call that does nothing) and the transfer of
  its input and outputs, so the actors pay where a shard's work is long against them.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import replace
from typing import Mapping, Optional, Union

import numpy as np

from onnx_decomp.config import ClusterConfig, SessionConfig
from onnx_decomp.distributed.cluster import Cluster, gather, ray_cluster
from onnx_decomp.distributed.shards import Manifest
from onnx_decomp.errors import DecompError
from onnx_decomp.runtime.sessions import make_session, run_session

logger = logging.getLogger(__name__)

BACKENDS = ("local", "ray")
INLINE = 100 * 1024  # bytes: a smaller input goes with each call (Ray's own limit for inlined arguments)
LOCAL = SessionConfig(spin=False)  # sessions run in turn: idle threads do not spin on the others' cores


class ShardSession:
    """One shard's session (module rules), in this process or as a Ray actor's body."""

    def __init__(self, path: str, input_name: str, session: SessionConfig):
        self.path, self.input_name = path, input_name
        self.session = make_session(path, session)

    def run(self, x: np.ndarray) -> np.ndarray:
        return run_session(self.session, {self.input_name: x}, what=self.path)[0]

    def ping(self) -> None:
        """Nothing: a call's round trip alone."""

    def pid(self) -> int:
        return os.getpid()


class ShardRunner:
    """The shards of ``manifest`` ready to run on ``backend`` (module rules); a context manager that lets the
    actors go when it ends, and a call ``runner(x)`` -> the model's output for ``x``."""

    def __init__(self, manifest: Union[Manifest, str, os.PathLike], backend: str = "local",
                 session: SessionConfig = LOCAL, cluster: Union[None, ClusterConfig, Cluster] = None):
        if backend not in BACKENDS:
            raise DecompError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        self.manifest = manifest if isinstance(manifest, Manifest) else Manifest.load(manifest)
        self.backend, self.session, self.cluster = backend, session, cluster
        self._stack = contextlib.ExitStack()
        self.sessions: list[ShardSession] = []
        self.actors: list = []

    def __enter__(self) -> "ShardRunner":
        shards = [(self.manifest.path(shard), shard.input) for shard in self.manifest.shards]
        if self.backend == "local":
            self.sessions = [ShardSession(path, name, self.session) for path, name in shards]
            return self
        connection = self.cluster
        if not isinstance(connection, Cluster):  # a local instance of one CPU per shard unless the config says
            connection = replace(connection or ClusterConfig(), workers=getattr(connection, "workers", None)
                                 or len(shards))
        with self._stack as stack:
            cluster = stack.enter_context(ray_cluster(connection))
            cpus = cluster.ray.cluster_resources().get("CPU", 0)
            if cpus < len(shards):
                logger.warning("%d shard actors need a CPU each and Ray has %g: they wait for them", len(shards), cpus)
            session = self.session if self.session.threads else replace(self.session, threads=1)
            self.ray = cluster.ray
            self.actors = [cluster.actors(ShardSession, 1, path, name, session)[0] for path, name in shards]
            gather([actor.ping.remote() for actor in self.actors])  # sessions made before the first call
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *exc) -> None:
        for actor in self.actors:  # gone now, even where the caller's cluster lives on
            self.ray.kill(actor)
        self._stack.close()
        self.sessions, self.actors = [], []

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.backend == "local":
            return self.manifest.merge([session.run(x) for session in self.sessions])
        shared = self.ray.put(x) if x.nbytes > INLINE else x
        return self.manifest.merge(gather([actor.run.remote(shared) for actor in self.actors]))

    def ping(self) -> None:
        """One round trip to every actor at once (module rule; nothing on the local backend)."""
        gather([actor.ping.remote() for actor in self.actors])


def run_shards(manifest: Union[Manifest, str, os.PathLike], inputs: Mapping[str, np.ndarray], backend: str = "local",
               session: Optional[SessionConfig] = None, cluster: Union[None, ClusterConfig, Cluster] = None
               ) -> dict[str, np.ndarray]:
    """The model's output, by name, from its shards run once on ``inputs`` (by name) on ``backend``."""
    with ShardRunner(manifest, backend, session or LOCAL, cluster) as runner:
        return {runner.manifest.output: runner(inputs[runner.manifest.input])}
