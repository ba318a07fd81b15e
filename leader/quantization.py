"""Quantised LEADER teachers (``leader_t.quantization``), DistilLLM-Med's memory-saving setting.

- On CUDA: bitsandbytes through transformers, as the seed loads its teachers: ``int8`` is
  ``BitsAndBytesConfig(load_in_8bit=True)``, ``nf4`` is 4-bit NormalFloat with double quantisation and the
  teacher's precision as compute dtype (QLoRA); the base model is then prepared for k-bit training by peft.
- On CPU: ``int8`` swaps every linear layer of the base model (never LoRA's A/B, never the head) for
  :class:`Int8Linear`: int8 per-channel weights and dynamically quantised activations (torch.ao's dynamic
  quantised ``Linear``) in the forward pass, so every forward pass of the teacher (the cached lower layers,
  training, serving) runs in int8. torch.ao's op has no gradient with respect to its input (it silently
  returns none), so :class:`Int8Linear` supplies it from the dequantised weights, as bitsandbytes does on
  GPUs: LoRA adapters in lower layers still train. ``nf4`` has no CPU kernel and is refused in one line.
"""

from __future__ import annotations

import importlib.util
import warnings

import torch
from torch import nn

QUANTIZATIONS = ("none", "int8", "nf4")


def check_quantization(quantization: str, device: torch.device) -> None:
    """One clear line for a quantisation this device cannot run."""
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"leader_t quantization {quantization!r}; expected one of {QUANTIZATIONS}")
    if quantization == "nf4" and device.type != "cuda":
        raise ValueError("leader_t quantization='nf4' needs a CUDA device (bitsandbytes 4-bit); on CPU use quantization='int8' (torch dynamic int8)")
    if quantization != "none" and device.type == "cuda":
        missing = [name for name in ("bitsandbytes", "accelerate") if importlib.util.find_spec(name) is None]
        if missing:
            raise ValueError(f"leader_t quantization={quantization!r} on CUDA needs {' and '.join(missing)}: pip install {' '.join(missing)}")


def bitsandbytes_config(quantization: str, compute_dtype: torch.dtype):
    """The ``quantization_config`` that transformers' ``from_pretrained`` takes for a CUDA teacher."""
    from transformers import BitsAndBytesConfig

    if quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    if quantization == "nf4":
        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype, bnb_4bit_use_double_quant=True
        )
    raise ValueError(f"no bitsandbytes configuration for quantization {quantization!r}")


class _Int8Matmul(torch.autograd.Function):
    """y = int8 linear(x); dL/dx = dL/dy . W (W dequantised), the weight and bias being frozen."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: "Int8Linear") -> torch.Tensor:
        ctx.layer = layer
        return layer.quantized(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        weight = ctx.layer.quantized.weight().dequantize().to(grad.dtype)
        return grad @ weight, None


class Int8Linear(nn.Module):
    """A frozen ``nn.Linear`` with int8 per-channel weights (torch.ao dynamic quantisation) and a gradient
    with respect to its input."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
        from torch.ao.quantization import per_channel_dynamic_qconfig

        self.in_features, self.out_features = linear.in_features, linear.out_features
        linear = linear.float()
        linear.qconfig = per_channel_dynamic_qconfig
        with warnings.catch_warnings():  # torch.ao announces its move to torchao on every conversion
            warnings.simplefilter("ignore")
            self.quantized = DynamicLinear.from_float(linear)
        bias = self.quantized.bias()
        if bias is not None:
            bias.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = _Int8Matmul.apply(x.float(), self) if torch.is_grad_enabled() and x.requires_grad else self.quantized(x.float())
        return out.to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-channel"


def quantize_linear_layers(model: nn.Module) -> int:
    """Swap the base model's ``nn.Linear`` layers for :class:`Int8Linear`, in place; LoRA's own layers (under
    ``lora_`` names) stay float. Returns how many were swapped."""
    swaps = []
    for name, module in model.named_modules():
        for child_name, child in module.named_children():
            full = f"{name}.{child_name}" if name else child_name
            if type(child) is nn.Linear and ".lora_" not in f".{full}":
                swaps.append((module, child_name, child))
    for parent, child_name, child in swaps:
        setattr(parent, child_name, Int8Linear(child))
    return len(swaps)


def weight_bytes(model: nn.Module) -> int:
    """Bytes held by the model's parameters, buffers and int8 weights (what its weights cost in memory)."""
    total = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    for module in model.modules():
        if isinstance(module, Int8Linear):
            weight = module.quantized.weight()
            total += weight.numel() * weight.element_size()
            bias = module.quantized.bias()
            total += 0 if bias is None else bias.numel() * bias.element_size()
    return int(total)
