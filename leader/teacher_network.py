"""LEADER(T)'s network: the base model with LoRA adapters, the pooled last-layer state h, and the medication
head ``W_CLS h (+ b)`` of eq. 1. With LoRA on the upper layers only, the lower (frozen) layers' output is the
same at every step, so :meth:`TeacherNetwork.lower_states` computes it once per prompt and
:meth:`TeacherNetwork.forward` can start from it (exact: those layers have no trainable weight, and they run
without dropout both ways)."""

from __future__ import annotations

import torch
from torch import nn

from bench.training import base_rate_logits
from leader.backbone import LayerStack, pool_hidden_states


class TeacherNetwork(nn.Module):
    """Base model (with LoRA adapters) -> pooled last-layer state h -> W_CLS h (eq. 1, logits)."""

    def __init__(
        self,
        backbone: nn.Module,
        forward_kwargs: set[str],
        hidden_size: int,
        n_medications: int,
        pooling: str,
        init_std: float,
        head_bias: bool,
        stack: LayerStack,
        frozen_layers: int = 0,
    ):
        super().__init__()
        self.backbone = backbone
        self.forward_kwargs = forward_kwargs
        self.pooling = pooling
        self.stack = stack  # the same modules as inside the backbone, not registered twice
        self.frozen_layers = frozen_layers  # lower layers without LoRA adapters
        self.head = nn.Linear(hidden_size, n_medications, bias=head_bias)
        nn.init.normal_(self.head.weight, std=init_std)
        if head_bias:
            nn.init.zeros_(self.head.bias)

    def __setattr__(self, name, value):
        if name == "stack":  # a plain attribute: its modules are registered through the backbone
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    @torch.no_grad()
    def set_base_rates(self, targets: torch.Tensor) -> None:
        """Head bias = the training log-odds of each medication (:func:`bench.training.base_rate_logits`)."""
        self.head.bias.copy_(base_rate_logits(targets).to(self.head.bias.device, self.head.bias.dtype))

    def _run(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, all_layers: bool = False):
        """The last layer's states [B, L, d], or (``all_layers``) every layer's, the embeddings' first."""
        extra = {}
        if "position_ids" in self.forward_kwargs:  # left padding then reads like no padding
            extra["position_ids"] = (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)
        if "use_cache" in self.forward_kwargs:
            extra["use_cache"] = False
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=all_layers, **extra)
        return out.hidden_states if all_layers else out.last_hidden_state

    def lower_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[B, L, d]: the output of the frozen lower layers (the input of the first adapted one)."""
        if not self.frozen_layers:
            raise ValueError("leader_t: every layer has LoRA adapters, there are no frozen lower layers to cache")
        captured: list[torch.Tensor] = []
        with self.stack.only(slice(0, self.frozen_layers)), self.stack.output_of(self.frozen_layers - 1, captured):
            self._run(input_ids, attention_mask)
        return captured[0]

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, lower: torch.Tensor | None = None) -> torch.Tensor:
        """h of each prompt; from ``lower`` (:meth:`lower_states`) only the upper layers run."""
        if lower is None:
            hidden = self._run(input_ids, attention_mask)
        else:
            with self.stack.only(slice(self.frozen_layers, None)), self.stack.input_of(self.frozen_layers, lower):
                hidden = self._run(input_ids, attention_mask)
        return pool_hidden_states(hidden, attention_mask, self.pooling)

    def pooled_layers(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, layers) -> torch.Tensor:
        """[B, len(layers), d]: the pooled states of several layers (0 = the embeddings) in one full pass,
        for multi-layer distillation."""
        hidden = self._run(input_ids, attention_mask, all_layers=True)
        return torch.stack([pool_hidden_states(hidden[layer], attention_mask, self.pooling) for layer in layers], dim=1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, lower: torch.Tensor | None = None) -> torch.Tensor:
        h = self.pooled(input_ids, attention_mask, lower)
        return self.head(h.to(self.head.weight.device, self.head.weight.dtype))
