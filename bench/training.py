"""One training loop for every model trained by gradient descent: :func:`run_training`.

It shuffles with the model's seed, steps, evaluates the validation score (:func:`validation_score`: PRAUC
or Jaccard, as ``config.selection`` says; after every epoch, or every
``eval_every`` optimizer steps for step-based training such as the LEADER teacher's), stops early after
``patience`` evaluations without improvement (or runs its whole budget), restores the best weights, reports
progress through one callback (``on_progress(done, total, status)``) and says in its report whether the model
converged. With torch's deterministic algorithms on, it probes its first step and evaluation
(:class:`bench.determinism.OpProbe`) and reports which operations take a slower or no deterministic kernel.

A :class:`TorchModel` says how to build its network, collate samples into a padded batch, compute
its loss and its logits; :func:`train_network` runs it through that loop with Adam (or the model's
optimizer). The reference repositories train one patient at a time; here every step is a padded mini-batch.
Two choices of speed, the same mathematics: Adam runs its fused kernel (one pass over each parameter, the
per-tensor loop's update), and every ``nn.Dropout`` of a trained network draws its keep mask as ``rand >= p``
(:class:`UniformDropout`: the same distribution as torch's ``bernoulli_`` mask, other draws, about twice as
fast on a CPU, where that mask took 15-20% of a training step in several models).

Curriculum learning (DistilLLM-Med's easy-to-hard schedule) is an option any :class:`TorchModel` can offer by
adding :class:`CurriculumOptions` to its config's bases: the training samples are ranked by
:meth:`TorchModel.sample_difficulty` (the record's length by default; a distilled model may use its teacher's
per-sample loss), and epoch e admits the easiest ``min(1, start + (1 - start) e / epochs)`` of them
(competence-based pacing, Platanios et al., NAACL 2019), shuffled.
"""

from __future__ import annotations

import copy
import math
import time
from abc import abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from bench import determinism
from bench.contract import MedRecModel, ProgressCallback, seed_everything, training_record
from bench.metrics import per_sample_metrics, prauc_per_sample
from data_prep.code_sets import multi_hot
from data_prep.dataset import Sample


@dataclass(frozen=True)
class Schedule:
    """How long :func:`run_training` trains and when it evaluates.

    Epoch-based (``max_steps=None``): every epoch runs its batches, then one evaluation. Step-based: at most
    ``max_steps`` optimizer steps, an evaluation every ``eval_every`` steps and after the last one; ``epochs``
    still caps the passes over the data, and the report says when that cap, not the step budget, ended it.
    ``whole_batches`` drops each epoch's incomplete last batch (every step then sees ``batch_size`` samples).
    ``min_delta``: an evaluation counts as better only when it beats the best score by more than this (Keras's
    ``EarlyStopping(min_delta=...)``), so a score creeping up by less per evaluation is a plateau: patience runs
    out and the weights of the last real improvement are kept. 0 = any improvement counts.
    """

    batch_size: int
    epochs: int
    patience: int | None  # evaluations without improvement before stopping; None: the budget decides
    max_steps: int | None = None
    eval_every: int | None = None
    whole_batches: bool = False
    min_delta: float = 0.0

    def __post_init__(self) -> None:
        if self.max_steps is not None and not self.eval_every:
            raise ValueError("a step-based schedule needs eval_every")
        if self.min_delta < 0:
            raise ValueError(f"min_delta must not be negative, got {self.min_delta}")


def run_training(
    schedule: Schedule,
    n_train: int,
    seed: int,
    train_step: Callable[[np.ndarray, int], float],
    evaluate: Callable[[], float] | None,
    snapshot: Callable[[], Any],
    restore: Callable[[Any], None],
    end_of_epoch: Callable[[int], None] | None = None,
    on_progress: ProgressCallback | None = None,
    admitted: Callable[[int], np.ndarray] | None = None,
) -> dict:
    """The one training loop: seeded shuffling, evaluation, early stopping, the best weights restored.

    ``train_step(indices, epoch)`` takes one optimizer step on those training samples and returns its loss;
    ``evaluate()`` scores the current weights on validation data (``None``: minus the mean training loss since
    the last evaluation); ``snapshot``/``restore`` copy and reinstate the weights of the best evaluation.
    ``on_progress(done, total, status)`` is called after every epoch (epoch-based) or every optimizer step
    (step-based) with the epochs or steps done, their budget, and the latest loss and validation score.
    ``admitted(epoch)``, if given, is the training indices that epoch may use (a curriculum); every index otherwise.

    The report: best and last epoch and step, ``history`` (per evaluation: epoch, step, mean training loss
    and ``val_score``, what ``evaluate`` returned), ``stopped_by`` (``patience``, ``epochs`` or ``max_steps``) and
    ``converged``, False when the best evaluation is the last one (the model was still improving); with
    deterministic algorithms on, ``determinism`` (:func:`bench.determinism.describe`) of the first step and evaluation.
    """
    if n_train == 0:
        raise ValueError("no training sample")
    step_based = schedule.max_steps is not None
    total = schedule.max_steps if step_based else schedule.epochs
    rng = np.random.default_rng(seed)
    best: dict = {"score": -np.inf, "epoch": 0, "step": 0, "state": None}
    history: list[dict] = []
    losses: list[float] = []
    state = {"stale": 0, "step": 0, "epoch": 0, "status": "", "eval_seconds": 0.0}
    probe = determinism.OpProbe() if torch.are_deterministic_algorithms_enabled() else None
    started = time.perf_counter()

    def evaluation() -> bool:
        """Record one evaluation; True when patience has run out."""
        eval_started = time.perf_counter()
        loss = float(np.mean(losses)) if losses else float("nan")
        if evaluate is None:
            score = -loss
        elif probe is not None and not history:
            score = probe.record(evaluate)
        else:
            score = evaluate()
        losses.clear()
        history.append({"epoch": state["epoch"], "step": state["step"], "loss": loss, "val_score": score})
        if score > best["score"] + schedule.min_delta:
            best.update(score=score, epoch=state["epoch"], step=state["step"], state=snapshot())
            state["stale"] = 0
        else:
            state["stale"] += 1
        state["status"] = f"loss {loss:.4f}  val score {score:.4f}"
        state["eval_seconds"] += time.perf_counter() - eval_started
        return schedule.patience is not None and state["stale"] >= schedule.patience

    def batches(order: np.ndarray):
        if schedule.whole_batches:
            for k in range(max(1, len(order) // schedule.batch_size)):
                yield order[k * schedule.batch_size : (k + 1) * schedule.batch_size]
        else:
            for start in range(0, len(order), schedule.batch_size):
                yield order[start : start + schedule.batch_size]

    stopped_by = "max_steps" if step_based else "epochs"
    for epoch in range(schedule.epochs):
        state["epoch"] = epoch + 1
        stop = False
        for index in batches(rng.permutation(n_train if admitted is None else admitted(epoch))):
            state["step"] += 1
            if probe is not None and state["step"] == 1:
                losses.append(float(probe.record(lambda: train_step(index, epoch))))
            else:
                losses.append(float(train_step(index, epoch)))
            if step_based:
                stop = state["step"] % schedule.eval_every == 0 and evaluation()
                if on_progress is not None:
                    on_progress(state["step"], total, state["status"])
                if stop or state["step"] >= schedule.max_steps:
                    break
        if end_of_epoch is not None:
            end_of_epoch(epoch)
        if not step_based:
            stop = evaluation()
            if on_progress is not None:
                on_progress(epoch + 1, total, state["status"])
        if stop:
            stopped_by = "patience"
            break
        if step_based and state["step"] >= schedule.max_steps:
            break
    else:
        if step_based:
            stopped_by = "epochs"  # the passes over the data ran out before the step budget
    if not history or history[-1]["step"] != state["step"]:  # the final weights are candidates too
        evaluation()
    restore(best["state"])
    seconds = time.perf_counter() - started
    return {
        **({"determinism": probe.report()} if probe is not None else {}),
        "best_epoch": best["epoch"],
        "best_step": best["step"],
        "best_val_score": float(best["score"]),
        "epochs_run": state["epoch"],
        "steps_run": state["step"],
        "stopped_by": stopped_by,
        "converged": best["step"] != history[-1]["step"],
        "train_seconds": seconds,
        "eval_seconds": state["eval_seconds"],
        "history": history,
    }


def pad_sequences(seqs: Sequence[Sequence[int]], pad: int = 0, min_len: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded LongTensor ``[B, L]`` and a bool mask ``[B, L]`` (True = real element); L >= ``min_len``.
    The one padding of code sets (``baselines.layers.pad_visits`` pads visit sequences through it)."""
    length = max([min_len, *(len(s) for s in seqs)])
    out = np.full((len(seqs), length), pad, dtype=np.int64)
    mask = np.zeros((len(seqs), length), dtype=bool)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = list(s)
        mask[i, : len(s)] = True
    return torch.from_numpy(out), torch.from_numpy(mask)


def target_tensor(samples: Sequence[Sample], n_medications: int) -> torch.Tensor:
    return torch.from_numpy(multi_hot([s.target for s in samples], n_medications)).float()


def base_rate_logits(targets: torch.Tensor) -> torch.Tensor:
    """[M] log-odds of each medication's prevalence in the multi-hot ``targets`` [N, M], smoothed ((k + 0.5) /
    (n + 1)) so that a medication never or always prescribed gets a finite value: an output bias that starts
    the model at the frequency predictor."""
    return torch.logit((targets.sum(dim=0) + 0.5) / (targets.shape[0] + 1.0))


def start_at_base_rates(bias: torch.Tensor, samples: Sequence[Sample], n_medications: int) -> None:
    """Set an output layer's [M] ``bias`` in place to the samples' training log-odds (:func:`base_rate_logits`):
    what a config's ``base_rate_bias`` asks for (the model starts at the frequency predictor)."""
    with torch.no_grad():
        bias.copy_(base_rate_logits(target_tensor(samples, n_medications)).to(bias.device, bias.dtype))


def validation_score(model: MedRecModel, samples: Sequence[Sample], proba: np.ndarray) -> float:
    """What model selection maximises (``config.selection``): mean validation PRAUC (the harness default), or
    mean validation Jaccard of the model's own sets (the SafeDrug / GAMENet scripts keep that epoch)."""
    targets = [s.target for s in samples]
    if model.config.selection == "prauc":
        return float(prauc_per_sample(multi_hot(targets, model.dataset.n_medications), proba).mean())
    return float(per_sample_metrics(proba, model.predict_sets(samples, proba), targets, model.dataset.ddi_adj)["jaccard"].mean())


@dataclass
class CurriculumOptions:
    """Config fields of the curriculum; a model's config inherits them to offer it (``--set MODEL.curriculum=true``)."""

    curriculum: bool = False
    curriculum_start: float = 0.3  # fraction of the training samples (the easiest) admitted in the first epoch
    curriculum_epochs: int = 5  # epochs until every sample is admitted


def admitted_fraction(epoch: int, start: float, epochs: int) -> float:
    """Linear competence: ``start`` in epoch 0, every sample from epoch ``epochs`` on."""
    if not 0 < start <= 1 or epochs < 1:
        raise ValueError(f"curriculum_start must lie in (0, 1] and curriculum_epochs be at least 1, got {start} and {epochs}")
    return min(1.0, start + (1.0 - start) * epoch / epochs)


def curriculum(difficulty: np.ndarray, start: float, epochs: int) -> Callable[[int], np.ndarray]:
    """``admitted(epoch)`` for :func:`run_training`: the easiest samples first (ties in input order)."""
    order = np.argsort(np.asarray(difficulty, dtype=np.float64), kind="stable")
    admitted_fraction(0, start, epochs)  # the arguments are checked before training starts

    def admitted(epoch: int) -> np.ndarray:
        return order[: max(1, math.ceil(admitted_fraction(epoch, start, epochs) * len(order)))]

    return admitted


def record_length(sample: Sample) -> int:
    """Codes in a sample's record: every earlier visit's diagnoses, procedures and medications, and the
    current visit's diagnoses and procedures."""
    earlier = sum(len(v.diagnoses) + len(v.procedures) + len(v.medications) for v in sample.history)
    return earlier + len(sample.diagnoses) + len(sample.procedures)


def uniform_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Inverted dropout whose keep mask is ``rand >= p`` (kept values scaled by 1 / (1 - p))."""
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return torch.zeros_like(x)
    return x * torch.rand_like(x).ge_(p).mul_(1.0 / (1.0 - p))


class UniformDropout(nn.Dropout):
    """``nn.Dropout`` through :func:`uniform_dropout`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return uniform_dropout(x, self.p, self.training)


def use_uniform_dropout(network: nn.Module) -> nn.Module:
    """Every ``nn.Dropout`` submodule of ``network`` replaced, in place, by a :class:`UniformDropout` of the same p."""
    for module in list(network.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Dropout:
                setattr(module, name, UniformDropout(child.p))
    return network


class TorchModel(MedRecModel):
    """A model trained by :func:`train_network`. Subclasses implement the four abstract methods."""

    network: nn.Module | None = None

    @abstractmethod
    def build_network(self) -> nn.Module: ...

    @abstractmethod
    def collate(self, samples: Sequence[Sample]) -> Any:
        """A batch ready for :meth:`loss` / :meth:`logits`, tensors on ``self.device``."""

    @abstractmethod
    def logits(self, batch: Any) -> torch.Tensor:
        """[B, n_medications] pre-sigmoid scores."""

    def loss(self, batch: Any, epoch: int) -> torch.Tensor:
        """Default: binary cross-entropy against the target multi-hot (``batch['target']``)."""
        return nn.functional.binary_cross_entropy_with_logits(self.logits(batch), batch["target"])

    def end_of_epoch(self, epoch: int) -> None:
        """Hook for per-epoch schedules (e.g. a DDI-loss weight)."""

    def make_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.network.parameters(), lr=self.config.lr, weight_decay=self.config.weight_decay, fused=True)

    def output_bias(self) -> torch.Tensor:
        """The bias of the network's medication logits, which a config's ``base_rate_bias`` starts at the
        training log-odds (:func:`start_at_base_rates`); a model that offers that field overrides this."""
        raise NotImplementedError(f"{self.name} has no output bias for base_rate_bias")

    def train_samples(self, train: Sequence[Sample]) -> list[Sample]:
        """Samples the loop trains on: the protocol's, less those the model cannot serve (e.g. without history);
        :func:`bench.contract.check_model` fails a model whose choice differs."""
        return list(train)

    def sample_difficulty(self, train: Sequence[Sample]) -> tuple[np.ndarray, str]:
        """Each training sample's difficulty for a curriculum (higher = harder) and what it measures."""
        return np.array([record_length(s) for s in train], dtype=np.float64), "record length"

    # ----- contract ----------------------------------------------------------------------------
    def fit(self, train: Sequence[Sample], val: Sequence[Sample]) -> "TorchModel":
        seed_everything(self.seed)
        self.network = self.build_network().to(self.device)
        train = self.train_samples(train)
        if getattr(self.config, "base_rate_bias", False):
            start_at_base_rates(self.output_bias(), train, self.dataset.n_medications)
        self.fit_report = train_network(self, train, self.train_samples(val))
        return self

    @torch.no_grad()
    def predict_proba(self, samples: Sequence[Sample]) -> np.ndarray:
        self.check_samples(samples)
        if self.network is None:
            raise RuntimeError(f"{self.name} is not fitted")
        self.network.eval()
        out = np.zeros((len(samples), self.dataset.n_medications), dtype=np.float32)
        step = max(self.config.batch_size, 256)
        for start in range(0, len(samples), step):
            chunk = samples[start : start + step]
            out[start : start + len(chunk)] = torch.sigmoid(self.logits(self.collate(chunk))).float().cpu().numpy()
        return out

    def get_state(self) -> dict:
        return {"network": self.network.state_dict()}

    def set_state(self, state: dict) -> None:
        self.network = self.build_network().to(self.device)
        self.network.load_state_dict(state["network"])
        self.network.eval()


def train_network(model: TorchModel, train: Sequence[Sample], val: Sequence[Sample]) -> dict:
    """The model's optimizer over shuffled mini-batches of ``train``, one evaluation per epoch (:func:`run_training`;
    a config with a ``min_delta`` field sets the schedule's); the report records what it trained on (``training_samples``: the samples its batches were drawn from)."""
    config = model.config
    if not train:
        raise ValueError(f"{model.name}: no training sample")
    use_uniform_dropout(model.network)
    optimizer = model.make_optimizer()
    admitted, plan = None, None
    if getattr(config, "curriculum", False):
        difficulty, measure = model.sample_difficulty(train)
        admitted = curriculum(difficulty, config.curriculum_start, config.curriculum_epochs)
        plan = {"difficulty": measure, "start": config.curriculum_start, "epochs": config.curriculum_epochs}

    def train_step(index: np.ndarray, epoch: int) -> float:
        model.network.train()
        loss = model.loss(model.collate([train[i] for i in index]), epoch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    def restore(state: dict) -> None:
        model.network.load_state_dict(state)
        model.network.eval()

    report = run_training(
        Schedule(batch_size=config.batch_size, epochs=config.epochs, patience=config.patience, min_delta=getattr(config, "min_delta", 0.0)),
        len(train),
        model.seed,
        train_step,
        (lambda: validation_score(model, val, model.predict_proba(val))) if val else None,
        snapshot=lambda: copy.deepcopy(model.network.state_dict()),
        restore=restore,
        end_of_epoch=model.end_of_epoch,
        on_progress=model.on_progress,
        admitted=admitted,
    )
    if plan is not None:
        report["curriculum"] = plan
    return {**report, "training_samples": training_record(train)}


def staged_report(stages: Sequence[dict], final: dict) -> dict:
    """One fit report for a model trained in several runs of the loop (pre-training, rounds, a basic model
    first): the kept stage's (``final``) selection, convergence, history and training samples, the epochs,
    steps and evaluation time of every stage together, and their determinism probes merged."""
    probed = [stage["determinism"] for stage in stages if "determinism" in stage]
    return {
        **{k: final[k] for k in ("best_epoch", "best_step", "best_val_score", "stopped_by", "converged", "history", "training_samples")},
        **{k: sum(stage[k] for stage in stages) for k in ("epochs_run", "steps_run", "eval_seconds")},
        **({"determinism": determinism.merge(probed)} if probed else {}),
    }
