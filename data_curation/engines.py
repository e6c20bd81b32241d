"""Where curation tasks run: in this process, in a local process pool, or on a Ray cluster.

All engines expose ``map_unordered(fn, tasks)``, yielding ``(task, result)`` as tasks finish, in
any order (the pipeline sorts everything before writing, so outputs do not depend on the engine).
``fn`` must be a picklable module-level function that catches its own exceptions; what an engine
adds is surviving a worker that *dies* (a decoder segfault, the OOM killer): that task's result is
a :class:`WorkerDied` and every other task still runs.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol, Sequence, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class WorkerDied:
    """The result of a task whose worker process died while running it."""

    message: str


class Engine(Protocol):
    """Runs a function over tasks; see the module docstring."""

    name: str

    def map_unordered(self, fn: Callable[[T], R], tasks: Sequence[T]) -> Iterator[tuple[T, R | WorkerDied]]: ...

    def close(self) -> None: ...


def resolve_workers(workers: int | str | None) -> int:
    """``"auto"`` / None -> the CPUs this process may use; an int is returned as is."""
    if workers is None or workers == "auto":
        try:
            return len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            return os.cpu_count() or 1
    return int(workers)


class LocalEngine:
    """``workers`` 0 or 1: run in this process (no isolation); N > 1: a process pool of N.

    The pool uses the ``spawn`` context (torch, OpenCV and decoder threads make ``fork`` fragile).
    When a worker dies, the pool breaks and every unfinished future fails; the engine then reruns
    the unfinished tasks in a one-worker pool, where the task running at the crash is the first
    unfinished one in submission order — that one gets a :class:`WorkerDied` and the rest go back
    to a full pool. ``max_tasks_per_child`` recycles workers (bounds leaks in native decoders).
    """

    name = "local"

    def __init__(self, workers: int | str | None = 0, max_tasks_per_child: int | None = None) -> None:
        self.workers = resolve_workers(workers)
        self.max_tasks_per_child = max_tasks_per_child

    def _pool(self, workers: int) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context("spawn"),
            max_tasks_per_child=self.max_tasks_per_child,
        )

    def map_unordered(self, fn: Callable[[T], R], tasks: Sequence[T]) -> Iterator[tuple[T, R | WorkerDied]]:
        tasks = list(tasks)
        if self.workers <= 1:
            for task in tasks:
                yield task, fn(task)
            return
        pending = list(range(len(tasks)))
        isolate = False
        while pending:
            workers = 1 if isolate else min(self.workers, len(pending))
            done: set[int] = set()
            broken = False
            with self._pool(workers) as pool:
                futures: dict[Future, int] = {pool.submit(fn, tasks[i]): i for i in pending}
                waiting = set(futures)
                while waiting:
                    finished, waiting = wait(waiting, return_when=FIRST_COMPLETED)
                    for future in sorted(finished, key=futures.__getitem__):
                        try:
                            result = future.result()
                        except BrokenProcessPool:
                            broken = True
                            continue
                        done.add(futures[future])
                        yield tasks[futures[future]], result
            pending = [i for i in pending if i not in done]
            if not broken:
                break
            if isolate:
                culprit, pending = pending[0], pending[1:]
                logger.warning("a worker process died while running task %d; recording it as failed", culprit)
                yield tasks[culprit], WorkerDied("the worker process died while processing this input "
                                                 "(a crash in a native decoder, or out of memory)")
            isolate = not isolate

    def close(self) -> None:
        """Nothing to release: pools live only inside :meth:`map_unordered`."""


class RayEngine:
    """Tasks as ``ray.remote`` functions, gathered as they complete.

    ``address``: None starts a local Ray instance (``num_cpus`` CPUs, default all), ``"auto"`` joins
    the running cluster, or ``ray://host:port``. Inputs and the output directory must be on a file
    system every node sees. A task whose worker dies is not retried (``max_retries=0``) and
    becomes a :class:`WorkerDied`. Ray is shut down by :meth:`close` only if this engine started it.
    """

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus_per_task: float = 1.0,
                 num_cpus: int | None = None, max_in_flight: int | None = None) -> None:
        self.address = address
        self.num_cpus_per_task = float(num_cpus_per_task)
        self.num_cpus = num_cpus
        self.max_in_flight = max_in_flight
        self._started = False

    def _init(self) -> Any:
        import ray

        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"address": self.address, "ignore_reinit_error": True,
                                      "include_dashboard": False, "log_to_driver": True}
            if self.address is None and self.num_cpus is not None:
                kwargs["num_cpus"] = int(self.num_cpus)
            ray.init(**kwargs)
            self._started = True
        return ray

    def map_unordered(self, fn: Callable[[T], R], tasks: Sequence[T]) -> Iterator[tuple[T, R | WorkerDied]]:
        tasks = list(tasks)
        if not tasks:
            return
        ray = self._init()
        from ray.exceptions import RayError, RayTaskError

        remote = ray.remote(num_cpus=self.num_cpus_per_task, max_retries=0)(fn)
        limit = self.max_in_flight or max(1, 4 * int(ray.cluster_resources().get("CPU", 1)))
        queue = list(range(len(tasks)))[::-1]
        refs: dict[Any, int] = {}
        while queue or refs:
            while queue and len(refs) < limit:
                i = queue.pop()
                refs[remote.remote(tasks[i])] = i
            ready, _ = ray.wait(list(refs), num_returns=1)
            for ref in ready:
                i = refs.pop(ref)
                try:
                    result = ray.get(ref)
                except RayTaskError:
                    raise  # fn raised: a bug in the task function, not a dead worker
                except RayError as err:
                    result = WorkerDied(f"the Ray worker died while processing this input ({type(err).__name__})")
                yield tasks[i], result

    def close(self) -> None:
        if self._started:
            import ray

            ray.shutdown()
            self._started = False


def make_engine(name: str = "local", **options: Any) -> LocalEngine | RayEngine:
    """Build an engine from the config's ``engine`` node (``name`` plus that engine's options)."""
    if name == "local":
        return LocalEngine(**options)
    if name == "ray":
        return RayEngine(**options)
    raise ValueError(f"unknown engine {name!r}; choose 'local' or 'ray'")
