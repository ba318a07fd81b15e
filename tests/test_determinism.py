"""Deterministic algorithms and the probe of which operations cost or lack a deterministic kernel.

No GPU here: the probe classifies the operations a model runs on the CPU by what torch's documentation says
deterministic mode does with them on CUDA, so these tests hold on any machine.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from bench import determinism, registry
from bench.determinism import OpProbe


def probed(work) -> dict:
    probe = OpProbe()
    probe.record(work)
    return probe.report()


def test_the_probe_classifies_forward_and_backward_operations():
    x = torch.randn(6, 3, requires_grad=True)

    def work():
        picked = x[torch.tensor([0, 2, 2])]  # backward: index_put with accumulate=True
        copied = torch.zeros(6, 3).index_copy(0, torch.tensor([1, 4]), x[:2])
        gathered = x.gather(0, torch.tensor([[0, 1, 1]]))  # backward: scatter_add
        loss = torch.nn.functional.nll_loss(torch.log_softmax(x, 1), torch.tensor([0, 1, 2, 0, 1, 2]))
        (picked.sum() + copied.sum() + gathered.sum() + loss + x.cumsum(0).sum()).backward()

    report = probed(work)
    assert "index_copy" in report["cuda_slower"] and "index_copy" in report["cpu_slower"]
    assert any(label.startswith("scatter_add_") for label in report["cuda_slower"])
    assert any(label.startswith("index_put (accumulate=True)") for label in report["cpu_slower"])
    assert report["cuda_raises"] == ["NLLLoss", "cumsum (floating point)"] and report["cpu_raises"] == []


def test_rules_read_the_arguments_that_decide():
    index = torch.tensor([0, 0, 1])
    source = torch.ones(3)
    assert probed(lambda: torch.zeros(2).scatter_reduce(0, index, source, "prod"))["cuda_raises"] == ["scatter_reduce (prod)"]
    assert probed(lambda: torch.zeros(2).scatter_reduce(0, index, source, "sum"))["cuda_slower"] == ["scatter_reduce (sum, mean)"]
    assert probed(lambda: torch.arange(5).cumsum(0))["cuda_raises"] == []  # integers: deterministic
    assert probed(lambda: torch.bincount(index))["cuda_raises"] == []
    assert probed(lambda: torch.bincount(index, weights=source))["cuda_raises"] == ["bincount with weights"]


def test_required_enables_for_the_block_only():
    assert not torch.are_deterministic_algorithms_enabled()
    with determinism.required():
        assert torch.are_deterministic_algorithms_enabled()
    with determinism.required(False):
        assert not torch.are_deterministic_algorithms_enabled()
    assert not torch.are_deterministic_algorithms_enabled()


FAST = {"epochs": 1, "max_steps": 2, "eval_every": 2, "max_length": 64, "patience": 1, "pretrain_epochs": 1}


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    from teacher_fixtures import make_tiny_teacher

    return str(make_tiny_teacher(tmp_path_factory.mktemp("teacher")))


@pytest.mark.parametrize("name", [n for n in registry.available() if n not in ("freq", "repeat")])  # no training loop
def test_no_model_uses_an_operation_without_a_deterministic_cuda_kernel(name, tiny_dataset, tiny_teacher):
    """With deterministic algorithms on, every fit reports its probe, and none finds an operation that would
    raise on CUDA (so ``--deterministic`` runs every registered model on a GPU)."""
    model_class = registry.get(name)
    fields = {f.name for f in dataclasses.fields(model_class.config_class)}
    overrides = {k: v for k, v in FAST.items() if k in fields}
    if "teacher_path" in fields:
        overrides["teacher_path"] = tiny_teacher
    if "teacher_overrides" in fields:
        overrides["teacher_overrides"] = {"teacher_path": tiny_teacher, "max_steps": 2, "eval_every": 2, "max_length": 64}
    with determinism.required():
        model = model_class(tiny_dataset, model_class.config_class.preset("quick", **overrides), seed=0)
        model.fit(tiny_dataset.samples("train"), tiny_dataset.samples("val"))
    report = model.fit_report["determinism"]
    assert report["enabled"] and report["cuda_raises"] == [] and report["cpu_raises"] == []
