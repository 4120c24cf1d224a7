"""Run per-image work on a Ray cluster: one model replica per worker, retried when a worker dies.

:class:`RayRunner` starts a pool of Ray actors. Each actor calls ``setup(context, device)`` once (it
loads the model from its spec) and then ``fn(state, item)`` for one item at a time; results come
back to the driver, which writes them (a single writer, so run directories need neither locks nor a
shared filesystem). An actor that dies is restarted by Ray and its unfinished call is retried; items
whose results already reached the driver are never recomputed.

Adapter files named in ``HEADFLOW_ADAPTERS`` (the CLI's ``--adapter``) are passed to every actor in its
runtime environment, so workers register the same families as the driver (the files must exist at the same
paths on every node).

Where state lives: the Ray connection lasts from the first :meth:`RayRunner.map` to
:meth:`RayRunner.close` (only a cluster the runner started itself is shut down); the actors, and the
models they hold, last for one :meth:`~RayRunner.map` call. Ray is imported only inside these
methods, so headflow imports and runs without Ray installed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from .errors import HeadflowError, param_error

INSTALL_HINT = 'Install it with: pip install "headflow[ray]" (or pip install "ray>=2.9").'


def _import_ray():
    try:
        import ray
    except ImportError:
        raise HeadflowError(f"--ray / RayRunner needs Ray, which is not installed. {INSTALL_HINT}") from None
    return ray


def _probe(address: str, timeout: float = 5.0) -> None:
    """Fail fast (ConnectionError) if ``HOST:PORT`` does not accept TCP connections; other forms are left to Ray."""
    import socket

    host, _, port = address.split("://")[-1].rpartition(":")
    if not host or not port.isdigit():
        return
    with socket.create_connection((host, int(port)), timeout=timeout):
        pass


class _Worker:
    """The actor body (wrapped with ``ray.remote`` at run time): holds ``setup``'s state."""

    def __init__(self, setup: Callable[[Any, str], Any], context: Any, cpus: float) -> None:
        import ray
        import torch

        torch.set_num_threads(max(1, int(cpus)))
        self.state = setup(context, "cuda" if ray.get_gpu_ids() else "cpu")

    def call(self, fn: Callable[[Any, Any], Any], key: Any, item: Any) -> tuple[Any, Any]:
        return key, fn(self.state, item)


class RayRunner:
    """Map a function over items on Ray actors, one model replica per GPU (or per CPU worker).

    Parameters
    ----------
    address : str
        ``"auto"`` (the cluster this machine belongs to, e.g. after ``ray start``), ``"HOST:PORT"``
        (a head node), or ``"local"`` (start a local cluster for this process). If Ray is already
        initialised in this process, that connection is used as it is.
    num_workers : int, optional
        Actors to start; default: as many as the cluster's GPUs (or CPUs) allow, at most one per item.
    cpus_per_worker : float
        CPUs reserved per actor (also its torch thread count).
    gpus_per_worker : float, optional
        GPUs per actor; default 1 if the cluster has GPUs, else 0 (CPU workers).
    max_retries : int
        How often a dead actor is restarted and its unfinished call retried.

    Examples
    --------
    >>> runner = RayRunner("local", num_workers=2)  # doctest: +SKIP
    >>> HeadAttribution("tiny:llava", n_masks=32).run(data, out, runner=runner)  # doctest: +SKIP
    >>> runner.close()  # doctest: +SKIP
    """

    def __init__(self, address: str = "auto", *, num_workers: int | None = None, cpus_per_worker: float = 1,
                 gpus_per_worker: float | None = None, max_retries: int = 3) -> None:
        if not isinstance(address, str) or not address:
            raise param_error("address", "RayRunner", "'auto', 'local' or 'HOST:PORT'", address)
        if num_workers is not None and (not isinstance(num_workers, int) or num_workers < 1):
            raise param_error("num_workers", "RayRunner", "an int in [1, inf) or None", num_workers)
        if not isinstance(cpus_per_worker, (int, float)) or cpus_per_worker <= 0:
            raise param_error("cpus_per_worker", "RayRunner", "a number in (0, inf)", cpus_per_worker)
        if gpus_per_worker is not None and (not isinstance(gpus_per_worker, (int, float)) or gpus_per_worker < 0):
            raise param_error("gpus_per_worker", "RayRunner", "a number in [0, inf) or None", gpus_per_worker)
        if not isinstance(max_retries, int) or max_retries < 0:
            raise param_error("max_retries", "RayRunner", "an int in [0, inf)", max_retries)
        self.address, self.num_workers, self.cpus_per_worker = address, num_workers, cpus_per_worker
        self.gpus_per_worker, self.max_retries = gpus_per_worker, max_retries
        self._started = False

    # -- connection ------------------------------------------------------------------------
    def connect(self):
        """Connect to (or start) the cluster; returns the ``ray`` module."""
        ray = _import_ray()
        if not ray.is_initialized():
            try:
                if self.address == "local":
                    ray.init(include_dashboard=False)
                else:
                    _probe(self.address)  # Ray itself retries an unreachable address for minutes
                    ray.init(address=self.address)
            except OSError as exc:  # ConnectionError (Ray, refused), TimeoutError, unknown host
                reason = (str(exc).splitlines() or [type(exc).__name__])[0].rstrip(".")
                raise HeadflowError(
                    f"Cannot connect to a Ray cluster at {self.address!r}: {reason}. Start one with "
                    "'ray start --head --port=6379' (then --ray HOST:6379), or use --ray local."
                ) from None
            self._started = True
        return ray

    def close(self) -> None:
        """Shut Ray down if this runner started it (a connection made by the caller is left open)."""
        if self._started:
            import ray

            ray.shutdown()
            self._started = False

    def __enter__(self) -> "RayRunner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def resolved(self, n_items: int) -> dict[str, float]:
        """The worker count and per-worker resources that :meth:`map` would use for ``n_items``."""
        ray = self.connect()
        total = ray.cluster_resources()
        gpus = self.gpus_per_worker if self.gpus_per_worker is not None else (1 if total.get("GPU", 0) >= 1 else 0)
        if self.num_workers is not None:
            n = self.num_workers
        elif gpus > 0:
            n = int(total.get("GPU", 0) // gpus)
        else:
            n = int(total.get("CPU", 1) // self.cpus_per_worker)
        return {"num_workers": max(1, min(n, n_items)), "cpus_per_worker": self.cpus_per_worker,
                "gpus_per_worker": gpus}

    # -- work ------------------------------------------------------------------------------
    def map(self, setup: Callable[[Any, str], Any], fn: Callable[[Any, Any], Any],
            items: Iterable[tuple[Any, Any]], *, n_items: int, on_result: Callable[[Any, Any], None],
            context: Any = None) -> None:
        """Run ``fn(state, item)`` for every ``(key, item)`` and hand each result to ``on_result(key, result)``.

        Parameters
        ----------
        setup : callable ``(context, device) -> state``
            Runs once per actor (and again after a restart); must be importable (module level).
        fn : callable ``(state, item) -> result``
            Runs on an actor, one item per call; must be importable (module level).
        items : iterable of (key, item)
            Consumed lazily, as workers become free.
        n_items : int
            Number of items (sizes the pool).
        on_result : callable
            Called on the driver, in completion order, as soon as each result arrives.
        context : any
            Put once into the object store and passed to every ``setup`` (masks, baselines).

        Raises
        ------
        HeadflowError
            If ``fn`` raised a HeadflowError on a worker, or a worker died more than ``max_retries`` times.
        """
        if n_items == 0:
            return
        from .models.adapter import ADAPTERS_ENV

        ray = self.connect()
        plan = self.resolved(n_items)
        options: dict[str, Any] = {}
        if os.environ.get(ADAPTERS_ENV):  # --adapter files: each worker registers the same families
            options["runtime_env"] = {"env_vars": {ADAPTERS_ENV: os.environ[ADAPTERS_ENV]}}
        actor_cls = ray.remote(_Worker).options(
            num_cpus=plan["cpus_per_worker"], num_gpus=plan["gpus_per_worker"],
            max_restarts=self.max_retries, max_task_retries=self.max_retries, **options)
        context_ref = ray.put(context)
        actors = [actor_cls.remote(setup, context_ref, plan["cpus_per_worker"]) for _ in range(plan["num_workers"])]
        pending: dict[Any, Any] = {}  # object ref -> actor
        queue = iter(items)
        try:
            for actor in actors:
                self._submit(queue, actor, fn, pending)
            while pending:
                [ref], _ = ray.wait(list(pending), num_returns=1)
                actor = pending.pop(ref)
                key, result = self._get(ray, ref)
                on_result(key, result)
                self._submit(queue, actor, fn, pending)
        finally:
            for actor in actors:
                ray.kill(actor, no_restart=True)

    @staticmethod
    def _submit(queue, actor, fn, pending: dict) -> None:
        for key, item in queue:
            pending[actor.call.remote(fn, key, item)] = actor
            return

    def _get(self, ray, ref):
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, HeadflowError):
                raise HeadflowError(str(exc.cause)) from exc
            raise
        except ray.exceptions.RayActorError as exc:
            raise HeadflowError(
                f"A Ray worker died more than max_retries={self.max_retries} times ({type(exc).__name__}). Finished "
                "rows are saved; run the same command again to resume."
            ) from exc
