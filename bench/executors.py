"""Where the units of a run (one entry at one training seed) execute: in process, in worker processes, on Ray.

The run folder stays the single source of truth: a unit reads its inputs, trains (or reuses its
weights), predicts and writes its files atomically; the driver only schedules, then evaluates from
the files. So any executor resumes any other's folder, a killed worker or driver leaves finished units
usable, and an entry's numbers depend on its seed and inputs only.

- ``processes`` (the command line's default): ``--jobs N`` worker processes on this machine (spawned, so no state leaks
  between units), taking the tasks in order; by default as many as the machine's cores hold tasks of
  ``threads`` threads. One job runs the tasks in this process.
- ``local`` (the default of :class:`ExecutorConfig`, for library calls): one task after another in
  this process.
- ``ray``: each unit is one Ray task (``--ray-address auto`` or ``HOST:PORT``; none starts a local
  runtime) requesting its threads as CPUs and, on a GPU run, a fraction of a GPU; the run folder must
  be on storage every node sees. Ray is an optional extra (``pip install medrec-bench[ray]``),
  imported only here.

A task's thread count is not the executor's to choose: it changes a model's numbers (a reduction
split over more threads adds in another order), so it comes with the tasks (``threads``) and every
executor gives each task exactly that many. Progress: ``function(shared, task, progress)`` may call
``progress(name, done, total, status)``; local and process workers deliver it to the driver's
``on_progress`` (from workers through a queue), Ray tasks report only their end. Every executor
returns one :class:`Outcome` per task: a failure is reported with its error and does not stop the
other units; Ray retries a failed task ``retries`` times first.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import traceback
from contextlib import contextmanager
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

EXECUTORS = ("processes", "local", "ray")
ProgressReport = Callable[[str, int, int, str], None]  # (name, done, total, status)


def no_progress(name: str, done: int, total: int, status: str) -> None:
    pass


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the platform says, else all)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass(frozen=True)
class Outcome:
    value: Any = None
    error: str | None = None  # one line: the exception; the traceback went to the worker's log

    @property
    def ok(self) -> bool:
        return self.error is None


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def _guarded(function: Callable, shared: Any, task: Any, progress: ProgressReport) -> Outcome:
    try:
        return Outcome(function(shared, task, progress))
    except Exception as error:  # reported per unit; KeyboardInterrupt still stops the run
        traceback.print_exc()
        return Outcome(error=_describe(error))


@dataclass(frozen=True)
class ExecutorConfig:
    kind: str = "local"
    jobs: int | None = None  # processes: worker processes; None: usable cores // threads per task
    ray_address: str | None = None  # ray: "auto", "HOST:PORT", or None for a local runtime
    gpus_per_task: float = 0.0  # fractional GPUs for small models, on a GPU run
    retries: int = 1  # ray: attempts after a failed one

    def __post_init__(self) -> None:
        if self.kind not in EXECUTORS:
            raise ValueError(f"unknown executor {self.kind!r}; expected one of {EXECUTORS}")
        if self.jobs is not None and self.jobs < 1:
            raise ValueError(f"--jobs must be at least 1, got {self.jobs}")

    def workers(self, threads: int, tasks: int) -> int:
        """Worker processes for ``tasks`` tasks of ``threads`` threads each."""
        return max(1, min(self.jobs or usable_cores() // threads, tasks))


def run_tasks(
    config: ExecutorConfig,
    function: Callable[[Any, Any], Any],
    shared: Any,
    tasks: Sequence[Any],
    on_done: Callable[[int, Outcome], None] | None = None,
    on_progress: ProgressReport | None = None,
    threads: int = 1,
    after: Sequence[Sequence[int]] | None = None,
) -> list[Outcome]:
    """``function(shared, task, progress)`` for every task, by the configured executor, each task
    with ``threads`` torch threads; outcomes in task order.

    ``after[i]``: earlier tasks that must end before task i starts (a student after its teacher). Local
    workers run the tasks in order; process workers take the first task whose prerequisites have
    ended, so a free worker never sits waiting on one; Ray tasks start at once (a task that needs
    another's output must wait for it itself).

    ``shared`` (the dataset) is sent to each worker once. ``function`` must be importable at module
    level for ``processes`` and ``ray`` (it is pickled by reference). ``on_done(index, outcome)`` is
    called in the driver as each task finishes, ``on_progress`` as tasks report progress.
    """
    if not tasks:
        return []
    after = [list(a) for a in after] if after is not None else [[] for _ in tasks]
    if len(after) != len(tasks) or any(not 0 <= j < i for i, a in enumerate(after) for j in a):
        raise ValueError("after[i] must list earlier tasks only, one list per task")
    done, progress = on_done or (lambda index, outcome: None), on_progress or no_progress
    if config.kind == "processes" and config.workers(threads, len(tasks)) > 1:
        return _run_processes(config, function, shared, list(tasks), done, progress, threads, after)
    runner = _run_ray if config.kind == "ray" else _run_local  # one process worker: nothing to spawn
    return runner(config, function, shared, list(tasks), done, progress, threads)


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block with ``threads`` torch threads, then restore the caller's setting."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _run_local(config, function, shared, tasks, on_done, on_progress, threads):
    outcomes = []
    with torch_threads(threads):
        for index, task in enumerate(tasks):
            outcomes.append(_guarded(function, shared, task, on_progress))
            on_done(index, outcomes[-1])
    return outcomes


def _limit_threads(threads: int) -> None:
    """In a worker process: its tasks' threads, for torch and for the libraries OpenMP drives."""
    import torch

    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)


_WORKER: dict = {}  # a process worker's copy of ``shared`` and its progress queue, received once by its initializer


def _start_worker(threads: int, shared: Any, queue: Any) -> None:
    _limit_threads(threads)
    _WORKER.update(shared=shared, queue=queue)


def _to_queue(name: str, done: int, total: int, status: str) -> None:
    _WORKER["queue"].put((name, done, total, status))


def _in_worker(function: Callable, task: Any) -> Outcome:
    return _guarded(function, _WORKER["shared"], task, _to_queue)


def _run_processes(config, function, shared, tasks, on_done, on_progress, threads, after):
    context = multiprocessing.get_context("spawn")
    workers = config.workers(threads, len(tasks))
    outcomes: list[Outcome | None] = [None] * len(tasks)
    with context.Manager() as manager:
        queue = manager.Queue()
        relay = threading.Thread(target=_relay, args=(queue, on_progress), daemon=True)
        relay.start()
        try:
            with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_start_worker, initargs=(threads, shared, queue)) as pool:
                waiting, running, ended = list(range(len(tasks))), {}, set()
                while waiting or running:
                    for index in [i for i in waiting if ended.issuperset(after[i])][: workers - len(running)]:
                        waiting.remove(index)
                        running[pool.submit(_in_worker, function, tasks[index])] = index
                    finished, _ = wait(running, return_when=FIRST_COMPLETED)
                    for future in finished:
                        index = running.pop(future)
                        try:
                            outcomes[index] = future.result()
                        except Exception as error:  # the worker itself died (killed, out of memory)
                            outcomes[index] = Outcome(error=f"worker process died: {_describe(error)}")
                        ended.add(index)
                        on_done(index, outcomes[index])
        finally:
            queue.put(None)
            relay.join()
    return outcomes


def _relay(queue: Any, on_progress: ProgressReport) -> None:
    """In the driver: the workers' progress reports, until the end marker."""
    while (item := queue.get()) is not None:
        on_progress(*item)


def _run_ray(config, function, shared, tasks, on_done, on_progress, threads):
    try:
        import ray
    except ImportError:
        raise RuntimeError("--executor ray needs Ray: pip install 'medrec-bench[ray]'") from None
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=config.ray_address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        remote = ray.remote(_ray_task).options(
            num_cpus=threads, num_gpus=config.gpus_per_task, max_retries=config.retries, retry_exceptions=True
        )
        shared_ref = ray.put(shared)  # one copy in the object store, read by every task
        pending = {remote.remote(function, shared_ref, task, threads): index for index, task in enumerate(tasks)}
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


def _ray_task(function, shared, task, threads: int):
    _limit_threads(threads)
    return function(shared, task, no_progress)
