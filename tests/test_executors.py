"""Executors: the same grid (two models x two seeds) in process, in worker processes and on a local Ray
runtime gives the same numbers; a failed unit is reported, the others are kept, and a rerun completes."""

from __future__ import annotations

import json
import os

import pytest

from bench.executors import ExecutorConfig, run_tasks
from bench.results import RunFolder
from bench.execute import IncompleteRunError
from bench.spec import Entry

GRID = [Entry("freq", "freq"), Entry("MLP h8", "mlp", {"hidden_dim": 8, "epochs": 2})]


def grid(dataset, run_dir, executor):
    from conftest import run_spec  # here, not at the top: workers that import this module must not run conftest's thread setting

    return run_spec(dataset, GRID, run_dir, seeds=[0, 1], resamples=50, preset="quick", executor=executor)


@pytest.fixture(scope="module")
def local_ray():
    import ray  # the ray extra: tox installs it, so this never skips
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 2**20, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def _square(shared, task, progress):
    if task == 3:
        raise ValueError("three is not welcome")
    return shared * task * task


def _threads_and_progress(shared, task, progress):
    import torch

    progress(f"task {task}", task, 10, "working")
    return torch.get_num_threads()


def _timed(shared, task, progress):
    import time

    started = time.time()
    time.sleep(task)
    return started, time.time()


@pytest.mark.slow
def test_a_task_waits_for_its_prerequisites_while_a_free_worker_takes_the_next_ready_one():
    teacher, student, other = run_tasks(ExecutorConfig("processes", jobs=2), _timed, None, [1.5, 0.0, 0.0], after=[[], [0], []])
    assert student.value[0] >= teacher.value[1]  # started after the teacher ended
    assert other.value[0] < teacher.value[1]  # not queued behind the waiting student
    with pytest.raises(ValueError, match="earlier tasks only"):
        run_tasks(ExecutorConfig("processes", jobs=2), _timed, None, [0.0, 0.0], after=[[1], []])


def test_tasks_return_in_order_and_a_failure_is_one_outcome():
    outcomes = run_tasks(ExecutorConfig("local"), _square, 10, [1, 2, 3, 4])
    assert [o.value for o in outcomes] == [10, 40, None, 160]
    assert outcomes[2].error == "ValueError: three is not welcome" and all(o.ok for i, o in enumerate(outcomes) if i != 2)


@pytest.mark.parametrize("kind", ["local", "processes"])
def test_every_task_gets_the_requested_threads_and_its_progress_reaches_the_driver(kind):
    import torch

    before = torch.get_num_threads()
    reports = []
    outcomes = run_tasks(ExecutorConfig(kind, jobs=2), _threads_and_progress, None, [1, 2, 3], on_progress=lambda *r: reports.append(r), threads=2)
    assert [o.value for o in outcomes] == [2, 2, 2]  # not the caller's (conftest: 1) nor cores // jobs
    assert sorted(reports) == [(f"task {t}", t, 10, "working") for t in (1, 2, 3)]
    assert torch.get_num_threads() == before  # in process: the caller's setting is restored


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["processes", "ray"])
def test_the_grid_elsewhere_equals_local_and_a_failed_unit_is_reported_then_rerun(kind, tiny_dataset, tmp_path, request):
    if kind == "ray":
        request.getfixturevalue("local_ray")
    local = grid(tiny_dataset, tmp_path / "local", ExecutorConfig())
    folder = RunFolder(tmp_path / "r")
    blocked = folder.predictions_path("MLP h8", 1)
    blocked.mkdir(parents=True)  # a directory where the unit's predictions must go: its write fails
    with pytest.raises(IncompleteRunError, match=r"1 of 4 units failed.*\n  MLP h8 \(seed 1\): "):
        grid(tiny_dataset, tmp_path / "r", ExecutorConfig(kind, jobs=2))
    finished = [(label, seed) for label in ("freq", "MLP h8") for seed in (0, 1) if folder.predictions_path(label, seed).is_file()]
    assert finished == [("freq", 0), ("freq", 1), ("MLP h8", 0)]
    records = [json.loads(folder.metrics_path(label, seed).read_text()) for label, seed in finished]
    assert os.getpid() not in {r["environment"]["pid"] for r in records}  # the units ran in other processes
    blocked.rmdir()
    completed = grid(tiny_dataset, tmp_path / "r", ExecutorConfig(kind, jobs=2))
    assert completed["models"] == local["models"] and completed["validation"] == local["validation"]
