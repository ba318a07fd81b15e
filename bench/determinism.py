"""Deterministic kernels, and which operations of a model make them cost or fail.

:func:`enable` turns on torch's deterministic algorithms (``--deterministic``; :func:`bench.contract.check_model`
on a CUDA device). Under that mode torch replaces some nondeterministic kernels by slower deterministic ones
and raises on the operations that have none; the set depends on the device, and most of it on CUDA only.
:class:`OpProbe` records the ATen operations a model runs (forward and backward, through a
``TorchDispatchMode``) and classifies them against :data:`CUDA_DETERMINISM`, the list in
``torch.use_deterministic_algorithms``'s documentation, so a run on any device, a CPU included, says which
operations take a slower deterministic path on CUDA and which have no deterministic CUDA kernel at all.
The training loop probes its first optimizer step and its first evaluation when deterministic algorithms are
on, and puts the result in the fit report (``determinism``).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode

SLOWER, RAISES = "slower deterministic kernel", "no deterministic kernel (raises)"


@dataclass(frozen=True)
class Rule:
    """How deterministic mode treats one ATen operation: ``kind`` (:data:`SLOWER` or :data:`RAISES`) on
    ``devices``, for the calls ``applies(args, kwargs)`` accepts; ``label`` names it as torch's documentation does."""

    label: str
    kind: str
    devices: tuple[str, ...] = ("cuda",)
    applies: Callable[[tuple, dict], bool] = lambda args, kwargs: True


def _argument(args: tuple, kwargs: dict, position: int, name: str, default: Any) -> Any:
    return args[position] if len(args) > position else kwargs.get(name, default)


def _accumulates(args: tuple, kwargs: dict) -> bool:
    return bool(_argument(args, kwargs, 3, "accumulate", False))


def _floating(args: tuple, kwargs: dict) -> bool:
    return bool(args) and isinstance(args[0], torch.Tensor) and (args[0].is_floating_point() or args[0].is_complex())


def _reduce_in(*reductions: str) -> Callable[[tuple, dict], bool]:
    return lambda args, kwargs: _argument(args, kwargs, 4, "reduce", None) in reductions


_INDEX_PUT = (
    Rule("index_put (accumulate=False)", SLOWER, ("cpu", "cuda"), lambda a, k: not _accumulates(a, k)),
    Rule("index_put (accumulate=True), e.g. the backward of indexing with a tensor", SLOWER, ("cpu",), _accumulates),
)
_PUT = (
    Rule("put_ (accumulate=False)", RAISES, ("cpu", "cuda"), lambda a, k: not _accumulates(a, k)),
    Rule("put_ (accumulate=True)", SLOWER, ("cpu",), _accumulates),
    Rule("put_ (accumulate=True)", RAISES, ("cuda",), _accumulates),
)
_SCATTER_REDUCE = (
    Rule("scatter_reduce (sum, mean)", SLOWER, applies=_reduce_in("sum", "mean")),
    Rule("scatter_reduce (prod)", RAISES, applies=_reduce_in("prod")),
)

# ATen operation (overload packet name) -> how deterministic mode treats it; from the documentation of
# torch.use_deterministic_algorithms (torch 2.13), where each entry names the module or function a user calls
CUDA_DETERMINISM: dict[str, tuple[Rule, ...]] = {
    **{op: (Rule("convolution (cuDNN deterministic algorithms)", SLOWER),) for op in ("convolution", "convolution_backward", "cudnn_convolution")},
    **{f"replication_pad{d}d_backward": (Rule(f"ReplicationPad{d}d backward", SLOWER),) for d in (1, 2, 3)},
    "index_put": _INDEX_PUT,
    "index_put_": _INDEX_PUT,
    "_index_put_impl_": _INDEX_PUT,
    "put": _PUT,
    "put_": _PUT,
    "scatter_add": (Rule("scatter_add_, e.g. the backward of gather", SLOWER),),
    "scatter_add_": (Rule("scatter_add_, e.g. the backward of gather", SLOWER),),
    "index_add": (Rule("index_add, e.g. the backward of index_select", SLOWER),),
    "index_add_": (Rule("index_add, e.g. the backward of index_select", SLOWER),),
    "index_copy": (Rule("index_copy", SLOWER, ("cpu", "cuda")),),
    "index_copy_": (Rule("index_copy", SLOWER, ("cpu", "cuda")),),
    "scatter": (Rule("scatter (tensor source)", SLOWER, applies=lambda a, k: len(a) > 3 and isinstance(a[3], torch.Tensor)),),
    "scatter_": (Rule("scatter (tensor source)", SLOWER, applies=lambda a, k: len(a) > 3 and isinstance(a[3], torch.Tensor)),),
    "scatter_reduce": _SCATTER_REDUCE,
    "scatter_reduce_": _SCATTER_REDUCE,
    "max_pool3d_with_indices_backward": (Rule("MaxPool3d backward", SLOWER),),
    "avg_pool3d_backward": (Rule("AvgPool3d backward", RAISES),),
    "_adaptive_avg_pool2d_backward": (Rule("AdaptiveAvgPool2d backward", RAISES),),
    "_adaptive_avg_pool3d_backward": (Rule("AdaptiveAvgPool3d backward", RAISES),),
    "adaptive_max_pool2d_backward": (Rule("AdaptiveMaxPool2d backward", RAISES),),
    "fractional_max_pool2d_backward": (Rule("FractionalMaxPool2d backward", RAISES),),
    "fractional_max_pool3d_backward": (Rule("FractionalMaxPool3d backward", RAISES),),
    **{f"max_unpool{d}d": (Rule(f"MaxUnpool{d}d", RAISES, ("cpu", "cuda")),) for d in (2, 3)},
    **{f"upsample_{mode}_backward": (Rule(f"interpolate ({mode}) backward", RAISES),) for mode in ("linear1d", "bilinear2d", "bicubic2d", "trilinear3d")},
    **{f"reflection_pad{d}d_backward": (Rule(f"ReflectionPad{d}d backward", RAISES),) for d in (1, 2, 3)},
    **{op: (Rule("NLLLoss", RAISES),) for op in ("nll_loss_forward", "nll_loss_backward", "nll_loss2d_forward", "nll_loss2d_backward")},
    "_ctc_loss_backward": (Rule("CTCLoss backward", RAISES),),
    "_embedding_bag_backward": (Rule("EmbeddingBag backward (mode='max')", RAISES, applies=lambda a, k: _argument(a, k, 8, "mode", 0) == 2),),
    "_embedding_bag_dense_backward": (Rule("EmbeddingBag backward (mode='max')", RAISES, applies=lambda a, k: _argument(a, k, 7, "mode", 0) == 2),),
    "histc": (Rule("histc", RAISES),),
    "bincount": (Rule("bincount with weights", RAISES, applies=lambda a, k: _argument(a, k, 1, "weights", None) is not None),),
    "median": (Rule("median with indices", RAISES, applies=lambda a, k: len(a) > 1 or "dim" in k),),
    "grid_sampler_2d_backward": (Rule("grid_sample backward", RAISES),),
    "cumsum": (Rule("cumsum (floating point)", RAISES, applies=_floating),),
    "cumsum_": (Rule("cumsum (floating point)", RAISES, applies=_floating),),
}


def enable() -> None:
    """Deterministic algorithms for every kernel torch has them for (cuBLAS workspace, cuDNN without
    autotuning); an operation with none raises, naming itself, instead of varying silently."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


@contextmanager
def required(on: bool = True) -> Iterator[None]:
    """:func:`enable` for the block when ``on``, then the previous setting back (a check, not a whole run)."""
    previous = torch.are_deterministic_algorithms_enabled()
    if on:
        enable()
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


class _Recorder(TorchDispatchMode):
    def __init__(self, probe: "OpProbe"):
        super().__init__()
        self.probe = probe

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for rule in CUDA_DETERMINISM.get(func._overloadpacket.__name__, ()):
            if rule.applies(args, kwargs):
                self.probe.found.add(rule)
        return func(*args, **kwargs)


class OpProbe:
    """Collects the deterministic-mode rules of every operation run inside :meth:`record`."""

    def __init__(self) -> None:
        self.found: set[Rule] = set()

    def record(self, work: Callable[[], Any]) -> Any:
        with _Recorder(self):
            return work()

    def report(self, device: torch.device | str | None = None) -> dict:
        """Which recorded operations take a slower deterministic kernel and which have none, per device."""
        return describe(self.found, device)


def describe(rules: Iterable[Rule], device: torch.device | str | None = None) -> dict:
    out: dict = {"enabled": torch.are_deterministic_algorithms_enabled()}
    if device is not None:
        out["device"] = str(device)
    for scope in ("cuda", "cpu"):
        for kind, key in ((SLOWER, "slower"), (RAISES, "raises")):
            out[f"{scope}_{key}"] = sorted({r.label for r in rules if r.kind == kind and scope in r.devices})
    return out


def merge(reports: Iterable[dict]) -> dict:
    """One report for several probed loops (a model with several training stages)."""
    reports = [r for r in reports if r]
    if not reports:
        return {}
    out = dict(reports[0])
    for key in out:
        if isinstance(out[key], list):
            out[key] = sorted({label for r in reports for label in r.get(key, [])})
    return out
