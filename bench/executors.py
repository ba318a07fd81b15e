"""Where the units of a run (one entry at one training seed) execute: in process, in worker processes, on Ray.

The run folder stays the single source of truth: a unit reads its inputs, trains (or reuses its
weights), predicts and writes its files atomically; the driver only schedules, then evaluates from
the files. So any executor resumes any other's folder, a killed worker or driver leaves finished units
usable, and an entry's numbers depend on its seed and inputs only.

- ``local`` (default): one unit after another in this process, with a progress bar per epoch.
- ``processes``: ``--jobs N`` worker processes on this machine (spawned, so no state leaks between
  units), torch threads divided between them.
- ``ray``: each unit is one Ray task (``--ray-address auto`` or ``HOST:PORT``; none starts a local
  runtime) requesting its CPUs and, on a GPU run, a fraction of a GPU; the run folder must be on
  storage every node sees. Ray is an optional extra (``pip install medrec-bench[ray]``), imported only here.

Every executor returns one :class:`Outcome` per task: a failure is reported with its error and does
not stop the other units; Ray retries a failed task ``retries`` times first.
"""

from __future__ import annotations

import multiprocessing
import os
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any, Callable, Sequence

EXECUTORS = ("local", "processes", "ray")


@dataclass(frozen=True)
class Outcome:
    value: Any = None
    error: str | None = None  # one line: the exception; the traceback went to the worker's log

    @property
    def ok(self) -> bool:
        return self.error is None


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def _guarded(function: Callable, shared: Any, task: Any) -> Outcome:
    try:
        return Outcome(function(shared, task))
    except Exception as error:  # reported per unit; KeyboardInterrupt still stops the run
        traceback.print_exc()
        return Outcome(error=_describe(error))


@dataclass(frozen=True)
class ExecutorConfig:
    kind: str = "local"
    jobs: int = 2  # processes: worker processes
    ray_address: str | None = None  # ray: "auto", "HOST:PORT", or None for a local runtime
    cpus_per_task: float = 1.0
    gpus_per_task: float = 0.0  # fractional GPUs for small models, on a GPU run
    retries: int = 1  # ray: attempts after a failed one

    def __post_init__(self) -> None:
        if self.kind not in EXECUTORS:
            raise ValueError(f"unknown executor {self.kind!r}; expected one of {EXECUTORS}")
        if self.jobs < 1:
            raise ValueError(f"--jobs must be at least 1, got {self.jobs}")


def run_tasks(
    config: ExecutorConfig,
    function: Callable[[Any, Any], Any],
    shared: Any,
    tasks: Sequence[Any],
    on_done: Callable[[int, Outcome], None] | None = None,
) -> list[Outcome]:
    """``function(shared, task)`` for every task, by the configured executor; outcomes in task order.

    ``shared`` (the dataset) is sent to each worker once. ``function`` must be importable at module
    level for ``processes`` and ``ray`` (it is pickled by reference). ``on_done(index, outcome)`` is
    called in the driver as each task finishes.
    """
    if not tasks:
        return []
    runner = {"local": _run_local, "processes": _run_processes, "ray": _run_ray}[config.kind]
    return runner(config, function, shared, list(tasks), on_done or (lambda index, outcome: None))


def _run_local(config, function, shared, tasks, on_done):
    outcomes = []
    for index, task in enumerate(tasks):
        outcomes.append(_guarded(function, shared, task))
        on_done(index, outcomes[-1])
    return outcomes


def _limit_threads(threads: int) -> None:
    """In a worker: its share of the machine's cores, so N workers do not oversubscribe them."""
    import torch

    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)


_WORKER_SHARED: Any = None  # a process worker's copy of ``shared``, received once by its initializer


def _start_worker(threads: int, shared: Any) -> None:
    global _WORKER_SHARED
    _limit_threads(threads)
    _WORKER_SHARED = shared


def _in_worker(function: Callable, task: Any) -> Outcome:
    return _guarded(function, _WORKER_SHARED, task)


def _run_processes(config, function, shared, tasks, on_done):
    workers = min(config.jobs, len(tasks))  # a wave of fewer tasks (a lone teacher) gets the cores to itself
    threads = max(1, (os.cpu_count() or 1) // workers)
    context = multiprocessing.get_context("spawn")
    outcomes: list[Outcome | None] = [None] * len(tasks)
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_start_worker, initargs=(threads, shared)) as pool:
        futures = {pool.submit(_in_worker, function, task): index for index, task in enumerate(tasks)}
        for future in as_completed(futures):
            index = futures[future]
            try:
                outcomes[index] = future.result()
            except Exception as error:  # the worker itself died (killed, out of memory)
                outcomes[index] = Outcome(error=f"worker process died: {_describe(error)}")
            on_done(index, outcomes[index])
    return outcomes


def _run_ray(config, function, shared, tasks, on_done):
    try:
        import ray
    except ImportError:
        raise RuntimeError("--executor ray needs Ray: pip install 'medrec-bench[ray]'") from None
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=config.ray_address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        remote = ray.remote(_ray_task).options(
            num_cpus=config.cpus_per_task, num_gpus=config.gpus_per_task, max_retries=config.retries, retry_exceptions=True
        )
        shared_ref = ray.put(shared)  # one copy in the object store, read by every task
        pending = {remote.remote(function, shared_ref, task, config.cpus_per_task): index for index, task in enumerate(tasks)}
        outcomes: list[Outcome | None] = [None] * len(tasks)
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            index = pending.pop(done[0])
            try:
                outcomes[index] = Outcome(ray.get(done[0]))
            except Exception as error:  # retries spent: RayTaskError wraps the unit's own exception
                cause = getattr(error, "cause", None) or error
                outcomes[index] = Outcome(error=_describe(cause))
            on_done(index, outcomes[index])
        return outcomes
    finally:
        if started_here:
            ray.shutdown()


def _ray_task(function, shared, task, cpus: float):
    _limit_threads(max(1, int(cpus)))
    return function(shared, task)
