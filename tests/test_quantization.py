"""Quantised teachers: int8 on CPU (torch.ao dynamic quantisation with a gradient through it), bitsandbytes
int8 / NF4 on CUDA checked without a GPU (the configuration that reaches ``from_pretrained``), and a tiny
int8 teacher fine-tuned and served end to end."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from torch import nn

import leader.quantization as quantization
from leader.quantization import Int8Linear, bitsandbytes_config, check_quantization, quantize_linear_layers, weight_bytes
from leader.teacher import LeaderTeacher, TeacherConfig
from teacher_fixtures import make_tiny_teacher

TINY = {"max_steps": 4, "eval_every": 2, "batch_size": 8, "max_length": 96, "lora_layers": 1, "backbone_dropout": False, "cache_lower_layers": True}


def test_int8_linear_is_close_to_float_and_passes_the_gradient_to_its_input():
    torch.manual_seed(0)
    linear = nn.Linear(64, 32)
    x = torch.randn(3, 5, 64)
    quantized = Int8Linear(linear)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    out = quantized(a)
    out.pow(2).sum().backward()
    linear(b).pow(2).sum().backward()
    assert (out - linear(x)).abs().max() < 0.05 * linear(x).abs().max()
    assert a.grad is not None and torch.allclose(a.grad, b.grad, atol=0.05 * b.grad.abs().max().item())
    assert not any(p.requires_grad for p in quantized.parameters())


def test_only_base_linear_layers_are_quantised_and_memory_shrinks():
    model = nn.ModuleDict({"base": nn.Linear(128, 128), "lora_A": nn.ModuleDict({"default": nn.Linear(128, 4)}), "head": nn.Linear(128, 8)})
    before = weight_bytes(model)
    assert quantize_linear_layers(model) == 2
    assert isinstance(model["base"], Int8Linear) and isinstance(model["head"], Int8Linear)
    assert type(model["lora_A"]["default"]) is nn.Linear
    assert weight_bytes(model) < 0.45 * before


def test_quantisations_a_device_cannot_run_are_refused_in_one_line(monkeypatch):
    with pytest.raises(ValueError, match="nf4.*CUDA.*int8"):
        check_quantization("nf4", torch.device("cpu"))
    with pytest.raises(ValueError, match="expected one of"):
        TeacherConfig(quantization="int4")
    monkeypatch.setattr(quantization.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match="pip install bitsandbytes accelerate"):
        check_quantization("int8", torch.device("cuda"))
    check_quantization("int8", torch.device("cpu"))  # torch's own int8: nothing to install


def test_bitsandbytes_configurations_are_the_seeds():
    int8 = bitsandbytes_config("int8", torch.float32)
    assert int8.load_in_8bit and not int8.load_in_4bit
    nf4 = bitsandbytes_config("nf4", torch.bfloat16)
    assert nf4.load_in_4bit and nf4.bnb_4bit_quant_type == "nf4" and nf4.bnb_4bit_use_double_quant
    assert nf4.bnb_4bit_compute_dtype == torch.bfloat16


@pytest.mark.parametrize("kind", ["int8", "nf4"])
def test_a_cuda_teacher_loads_its_base_model_through_bitsandbytes(tiny_dataset, tmp_path, monkeypatch, kind):
    """Without a GPU: the base model's from_pretrained receives the quantisation config and a placement (a mock
    stops the load there); the same code runs on a GPU with bitsandbytes installed."""
    from transformers import AutoModel

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(quantization.importlib.util, "find_spec", lambda name: object() if name in ("bitsandbytes", "accelerate") else real_find_spec(name))
    seen = {}

    class Stop(Exception):
        pass

    def capture(path, **kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(AutoModel, "from_pretrained", capture)
    path = make_tiny_teacher(tmp_path)
    teacher = LeaderTeacher(tiny_dataset, TeacherConfig(teacher_path=str(path), quantization=kind, precision="bf16"), device="cuda:0")
    if importlib.util.find_spec("accelerate") is None:
        pytest.skip("accelerate is needed for the device placement")
    with pytest.raises(Stop):
        teacher._build()
    config = seen["quantization_config"]
    assert (config.load_in_8bit, config.load_in_4bit) == (kind == "int8", kind == "nf4")
    assert seen["device_map"] == {"": 0} and seen["local_files_only"]


def test_an_int8_teacher_fine_tunes_and_serves_on_cpu(tiny_dataset, tmp_path):
    path = make_tiny_teacher(tmp_path)
    train, val, test = (tiny_dataset.samples(part) for part in ("train", "val", "test"))
    plain = LeaderTeacher(tiny_dataset, TeacherConfig(teacher_path=str(path), **TINY), seed=1).fit_uncached(train, val)
    int8 = LeaderTeacher(tiny_dataset, TeacherConfig(teacher_path=str(path), quantization="int8", **TINY), seed=1).fit_uncached(train, val)
    base_layers = [m for name, m in int8.network.backbone.named_modules() if isinstance(m, Int8Linear)]
    lora_layers = [m for name, m in int8.network.backbone.named_modules() if type(m) is nn.Linear]
    assert base_layers and lora_layers and all(p.requires_grad for m in lora_layers for p in m.parameters())
    initial = LeaderTeacher(tiny_dataset, TeacherConfig(teacher_path=str(path), quantization="int8", **{**TINY, "max_steps": 1}), seed=1)
    initial._build()
    trained_lora = {n: p for n, p in int8.network.named_parameters() if "lora_A" in n}
    assert any(not torch.equal(p, dict(initial.network.named_parameters())[n]) for n, p in trained_lora.items())  # LoRA trained
    assert int8.fit_report["quantization"] == "int8" and int8.fit_report["base_bytes"] < plain.fit_report["base_bytes"]
    proba = int8.predict_proba(test)
    assert np.isfinite(proba).all() and np.abs(proba - plain.predict_proba(test)).max() < 0.2
    assert int8.hidden_states(test).shape == (len(test), plain.hidden_size)
