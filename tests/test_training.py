"""The one training loop (``bench.training.run_training``): when it evaluates and stops, which weights it
keeps, what it reports, and the progress hook, with stand-in steps and scores (no network needed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from bench.training import Schedule, pad_sequences, run_training


def run(schedule: Schedule, scores: list[float], n_train: int = 10, **kwargs):
    """Each evaluation returns the next score; the 'weights' are the number of steps taken so far."""
    taken, seen, progress = [0], [], []
    report = run_training(
        schedule,
        n_train,
        seed=0,
        train_step=lambda index, epoch: seen.append(list(index)) or taken.__setitem__(0, taken[0] + 1) or 1.0,
        evaluate=lambda: scores.pop(0),
        snapshot=lambda: taken[0],
        restore=lambda state: taken.__setitem__(0, state),
        on_progress=lambda done, total, status: progress.append((done, total)),
        **kwargs,
    )
    return report, taken[0], seen, progress


def test_epochs_stop_by_patience_and_keep_the_best_weights():
    report, weights, seen, progress = run(Schedule(batch_size=4, epochs=10, patience=2), [0.1, 0.5, 0.4, 0.3, 0.9])
    assert report["epochs_run"] == 4 and report["best_epoch"] == 2 and report["stopped_by"] == "patience"
    assert report["converged"] and weights == report["best_step"] == 6  # 3 batches (4, 4, 2) per epoch
    assert sorted(i for batch in seen[:3] for i in batch) == list(range(10))  # every sample once per epoch
    assert progress == [(1, 10), (2, 10), (3, 10), (4, 10)]


def test_best_epoch_last_is_not_converged():
    report, *_ = run(Schedule(batch_size=5, epochs=3, patience=5), [0.1, 0.2, 0.3])
    assert report["stopped_by"] == "epochs" and report["best_epoch"] == 3 and not report["converged"]


def test_gains_below_min_delta_are_a_plateau():
    scores = [0.10, 0.50, 0.505, 0.509, 0.508, 0.9]
    report, weights, *_ = run(Schedule(batch_size=10, epochs=6, patience=3, min_delta=0.01), list(scores))
    assert report["stopped_by"] == "patience" and report["epochs_run"] == 5  # 0.505, 0.509, 0.508: no real gain
    assert report["best_epoch"] == 2 and weights == 2 and report["converged"]
    report, *_ = run(Schedule(batch_size=10, epochs=6, patience=3), list(scores))  # without: every gain counts
    assert report["best_epoch"] == 6 and report["stopped_by"] == "epochs"
    with pytest.raises(ValueError, match="min_delta"):
        Schedule(batch_size=3, epochs=1, patience=1, min_delta=-0.1)


def test_steps_evaluate_every_few_steps_and_after_the_last():
    report, _, seen, progress = run(Schedule(batch_size=4, epochs=50, patience=9, max_steps=7, eval_every=3, whole_batches=True), [0.1, 0.3, 0.2])
    assert [h["step"] for h in report["history"]] == [3, 6, 7] and report["best_step"] == 6 and report["converged"]
    assert report["stopped_by"] == "max_steps" and all(len(batch) == 4 for batch in seen)  # whole batches only
    assert progress == [(step, 7) for step in range(1, 8)]


def test_the_epoch_cap_is_reported_when_it_cuts_the_step_budget():
    report, *_ = run(Schedule(batch_size=4, epochs=2, patience=9, max_steps=100, eval_every=3, whole_batches=True), [0.1, 0.2])
    assert report["steps_run"] == 4 and report["stopped_by"] == "epochs"  # 2 whole batches of 4 per epoch


def test_shuffling_follows_the_seed_and_bad_input_is_refused():
    first, second = run(Schedule(batch_size=3, epochs=1, patience=1), [0.0])[2], run(Schedule(batch_size=3, epochs=1, patience=1), [0.0])[2]
    assert first == second
    with pytest.raises(ValueError, match="no training sample"):
        run(Schedule(batch_size=3, epochs=1, patience=1), [0.0], n_train=0)
    with pytest.raises(ValueError, match="eval_every"):
        Schedule(batch_size=3, epochs=1, patience=1, max_steps=5)


def test_pad_sequences_right_pads_with_a_mask():
    codes, mask = pad_sequences([(3, 1), (), (2,)])
    assert codes.tolist() == [[3, 1], [0, 0], [2, 0]] and mask.tolist() == [[True, True], [False, False], [True, False]]
    assert pad_sequences([(), ()])[0].shape == (2, 1)
    assert np.array_equal(pad_sequences([[5]], min_len=3)[1].numpy(), [[True, False, False]])


def test_a_curriculum_admits_the_easiest_samples_first_then_all():
    from bench.training import admitted_fraction, curriculum

    difficulty = np.array([5.0, 1.0, 4.0, 2.0, 3.0, 0.0, 9.0, 8.0, 7.0, 6.0])
    admitted = curriculum(difficulty, start=0.3, epochs=2)
    assert admitted(0).tolist() == [5, 1, 3]
    assert sorted(admitted(1).tolist()) == [0, 1, 2, 3, 4, 5, 9]  # ceil(0.65 x 10) = 7 easiest
    assert sorted(admitted(2).tolist()) == sorted(admitted(9).tolist()) == list(range(10))
    assert admitted_fraction(1, 0.5, 4) == pytest.approx(0.625)
    with pytest.raises(ValueError, match="curriculum_start"):
        curriculum(difficulty, start=0.0, epochs=2)
    _, _, seen, _ = run(Schedule(batch_size=2, epochs=3, patience=9), [0.1, 0.2, 0.3], admitted=admitted)
    first_epoch = sorted(i for batch in seen[:2] for i in batch)
    assert first_epoch == [1, 3, 5] and len(seen) == 2 + 4 + 5  # 3, 7, then 10 samples in batches of 2


def test_any_torch_model_offers_a_curriculum_through_its_config():
    import dataclasses

    import torch
    from torch import nn

    from bench.contract import ModelConfig
    from bench.training import CurriculumOptions, TorchModel, record_length, train_network
    from conftest import make_tiny_dataset

    @dataclasses.dataclass
    class Config(ModelConfig, CurriculumOptions):
        pass

    class Linear(TorchModel):
        name = "linear"
        config_class = Config

        def build_network(self):
            return nn.Linear(self.dataset.n_diagnoses, self.dataset.n_medications)

        def collate(self, samples):
            from bench.training import target_tensor

            x = torch.zeros(len(samples), self.dataset.n_diagnoses)
            for row, s in enumerate(samples):
                x[row, list(s.diagnoses)] = 1
            self.batches.append([s.sample_id for s in samples])
            return {"x": x, "target": target_tensor(samples, self.dataset.n_medications)}

        def logits(self, batch):
            return self.network(batch["x"])

    dataset = make_tiny_dataset()
    train, val = dataset.samples("train"), dataset.samples("val")
    model = Linear(dataset, Config(epochs=2, batch_size=4, curriculum=True, curriculum_start=0.25, curriculum_epochs=4))
    model.batches = []
    model.network = model.build_network()
    report = train_network(model, train, val)
    assert report["curriculum"] == {"difficulty": "record length", "start": 0.25, "epochs": 4}
    lengths = {s.sample_id: record_length(s) for s in train}
    easiest = sorted(lengths.values())[: int(np.ceil(0.25 * len(train)))]
    first_epoch = [sid for batch in model.batches[: int(np.ceil(len(easiest) / 4))] for sid in batch]
    assert sorted(lengths[sid] for sid in first_epoch) == easiest


def test_uniform_dropout_keeps_one_minus_p_and_the_expectation_and_replaces_every_dropout():
    from bench.training import UniformDropout, use_uniform_dropout

    torch.manual_seed(0)
    x = torch.ones(200_000)
    dropped = UniformDropout(0.3).train()(x)
    kept = dropped != 0
    assert abs(kept.float().mean().item() - 0.7) < 0.005
    torch.testing.assert_close(dropped[kept], torch.full_like(dropped[kept], 1 / 0.7))
    assert abs(dropped.mean().item() - 1.0) < 0.01
    assert UniformDropout(0.3).eval()(x) is x and not UniformDropout(1.0).train()(x).any()
    network = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.2), nn.TransformerEncoderLayer(8, 2, dropout=0.1))
    use_uniform_dropout(network)
    dropouts = [m for m in network.modules() if isinstance(m, nn.Dropout)]
    assert len(dropouts) == 4 and all(type(m) is UniformDropout for m in dropouts)
    assert [m.p for m in dropouts] == [0.2, 0.1, 0.1, 0.1]
