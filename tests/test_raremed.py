import dataclasses

import numpy as np
import pytest
import torch

from baselines import raremed
from baselines.raremed import RAREMed

SMALL = dict(dim=16, layers=1, heads=2, ffn_dim=32, batch_size=8, lr=1e-3, pretrain_epochs=2, epochs=2, patience=2)


class FineTuningStarts(Exception):
    pass


def pretrained_weights(dataset, val, monkeypatch):
    """The network's weights when fine-tuning would start (pre-training only)."""
    captured = {}

    def stop(model, train, val):
        captured.update({k: v.clone() for k, v in model.network.state_dict().items()})
        raise FineTuningStarts

    monkeypatch.setattr(raremed, "train_network", stop)
    with pytest.raises(FineTuningStarts):
        RAREMed(dataset, RAREMed.Config(**SMALL), seed=0).fit(dataset.samples("train"), val)
    return captured


def test_pretraining_never_reads_validation_or_test_records(tiny_dataset, monkeypatch):
    with_val = pretrained_weights(tiny_dataset, tiny_dataset.samples("val"), monkeypatch)
    with_test = pretrained_weights(tiny_dataset, tiny_dataset.samples("test"), monkeypatch)
    untrained = RAREMed(tiny_dataset, RAREMed.Config(**SMALL), seed=0)
    torch.manual_seed(0)
    initial = untrained.build_network().state_dict()
    assert any(not torch.equal(initial[k], with_val[k]) for k in initial)  # pre-training changed the weights
    assert all(torch.equal(with_val[k], with_test[k]) for k in with_val)  # whatever the held-out records


def test_pretraining_reads_every_visit_of_the_training_records(tiny_dataset, monkeypatch):
    seen = []
    real = RAREMed.reconstruction_loss
    monkeypatch.setattr(RAREMed, "reconstruction_loss", lambda self, visits, index: seen.extend(visits[i] for i in index) or real(self, visits, index))
    config = RAREMed.Config(**{**SMALL, "pretrain_epochs": 1})
    RAREMed(tiny_dataset, config, seed=0).fit(tiny_dataset.samples("train"), tiny_dataset.samples("val"))
    expected = sum(len(p.visits) for p in tiny_dataset.patients_in("train"))
    assert len(seen) == expected  # one epoch: each visit once, earlier visits included


def test_predictions_read_the_current_visit_only(tiny_dataset):
    model = RAREMed(tiny_dataset, RAREMed.Config(**SMALL), seed=0).fit(tiny_dataset.samples("train"), tiny_dataset.samples("val"))
    samples = [s for s in tiny_dataset.samples("test") if s.history]
    without_history = [dataclasses.replace(s, history=()) for s in samples]
    np.testing.assert_array_equal(model.predict_proba(without_history), model.predict_proba(samples))


@pytest.mark.parametrize("relevance, order_matters", [("position", True), ("published", False)])
def test_relevance_embedding_reads_positions_only_when_fixed(tiny_dataset, relevance, order_matters):
    model = RAREMed(tiny_dataset, RAREMed.Config(**SMALL, relevance=relevance), seed=0)
    torch.manual_seed(0)
    model.network = model.build_network().eval()
    samples = [s for s in tiny_dataset.samples("test") if len(s.diagnoses) > 1]
    reversed_codes = [dataclasses.replace(s, diagnoses=s.diagnoses[::-1]) for s in samples]
    same = np.allclose(model.predict_proba(samples), model.predict_proba(reversed_codes), atol=1e-6)
    assert same != order_matters


def test_padding_does_not_change_a_visit_encoding(tiny_dataset):
    model = RAREMed(tiny_dataset, RAREMed.Config(**SMALL), seed=0)
    torch.manual_seed(0)
    model.network = model.build_network().eval()
    samples = tiny_dataset.samples("test")
    together = model.predict_proba(samples)
    alone = np.concatenate([model.predict_proba([s]) for s in samples])
    np.testing.assert_allclose(together, alone, atol=1e-5)


@pytest.mark.parametrize("matching_loss", ["bce", "published"])
def test_both_matching_losses_train(tiny_dataset, matching_loss):
    config = RAREMed.Config(**{**SMALL, "epochs": 1, "matching_loss": matching_loss})
    report = RAREMed(tiny_dataset, config, seed=0).fit(tiny_dataset.samples("train"), tiny_dataset.samples("val")).fit_report
    assert set(report["stages"]) == {"matching", "reconstruction", "finetune"}
    assert np.isfinite([h["loss"] for h in report["stages"]["matching"]["history"]]).all()
