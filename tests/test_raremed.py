import dataclasses

import numpy as np
import pytest
import torch

from baselines import raremed
from baselines.raremed import RAREMed
from bench.training import base_rate_logits
from data_prep.code_sets import multi_hot

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


def published_layout_encoding(network, diagnoses, procedures, positions: bool) -> torch.Tensor:
    """One visit as the module encoded it before packing: ``[CLS] dx.. [SEP] px..`` from the two halves'
    tables, relevance by position within the half, the full encoder, its [CLS] row."""
    halves = []
    for special, table, relevance, codes, segment in ((0, network.diagnoses, network.diagnosis_relevance, diagnoses, 0),
                                                      (1, network.procedures, network.procedure_relevance, procedures, 1)):
        n = 1 + len(codes)
        index = torch.arange(n) if positions else torch.zeros(n, dtype=torch.long)
        segments = torch.full((n,), segment).index_fill(0, torch.tensor([0]), 0)
        halves.append(torch.cat([network.special.weight[special : special + 1], table(torch.tensor(codes))]) + relevance(index) + network.segment(segments))
    return network.encoder(torch.cat(halves)[None])[0, 0]


@pytest.mark.parametrize("relevance", ["position", "published"])
def test_packed_encoding_equals_the_full_encoder_per_visit(tiny_dataset, relevance, monkeypatch):
    monkeypatch.setattr(raremed, "ATTENTION_ROWS", 4)  # several attention groups
    model = RAREMed(tiny_dataset, RAREMed.Config(**{**SMALL, "layers": 2, "relevance": relevance}), seed=0)
    torch.manual_seed(0)
    model.network = model.build_network().eval()
    samples = tiny_dataset.samples("train")
    assert len({len(s.diagnoses) + len(s.procedures) for s in samples}) > 1 and len(samples) > 8  # widths differ, 3+ groups
    with torch.no_grad():
        batched = model.network(model.visit_batch([s.diagnoses for s in samples], [s.procedures for s in samples]))
        alone = torch.stack([published_layout_encoding(model.network, s.diagnoses, s.procedures, relevance == "position") for s in samples])
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)


def test_packed_training_step_equals_the_padded_encoder(tiny_dataset, monkeypatch):
    """In training (dropout off, so both are deterministic) the packed layers give the padded
    ``nn.TransformerEncoder``'s [CLS] vectors and the same gradients for every weight."""
    monkeypatch.setattr(raremed, "ATTENTION_ROWS", 4)  # several attention groups
    model = RAREMed(tiny_dataset, RAREMed.Config(**{**SMALL, "layers": 2, "dropout": 0.0}), seed=0)
    torch.manual_seed(0)
    network = model.build_network().train()
    samples = tiny_dataset.samples("train")
    batch = model.visit_batch([s.diagnoses for s in samples], [s.procedures for s in samples])
    tables = torch.cat([network.special.weight, network.diagnoses.weight, network.procedures.weight])
    relevance = torch.cat([network.diagnosis_relevance.weight, network.procedure_relevance.weight])
    padded = tables[batch["tokens"]] + relevance[batch["relevance"]] + network.segment(batch["segments"])
    reference = network.encoder(padded, src_key_padding_mask=~batch["mask"])[:, 0]
    weights = [p for p in network.parameters() if p.requires_grad]
    expected = torch.autograd.grad((reference**2).sum(), weights, allow_unused=True)
    packed = network(batch)
    torch.testing.assert_close(packed, reference, atol=1e-5, rtol=1e-5)
    for got, want in zip(torch.autograd.grad((packed**2).sum(), weights, allow_unused=True), expected):
        assert (got is None) == (want is None)
        if got is not None:
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_pretraining_with_patience_stops_on_validation_visits_only(tiny_dataset, monkeypatch):
    seen = []
    real = RAREMed.held_out_score
    monkeypatch.setattr(RAREMed, "held_out_score", lambda self, task, held_out: seen.append(list(held_out)) or real(self, task, held_out))
    config = RAREMed.Config(**{**SMALL, "pretrain_epochs": 6, "pretrain_patience": 1, "pretrain_min_delta": 10.0})
    report = RAREMed(tiny_dataset, config, seed=0).fit(tiny_dataset.samples("train"), tiny_dataset.samples("val")).fit_report
    val_visits = sum(len(p.visits) for p in tiny_dataset.patients_in("val"))
    assert seen and all(len(visits) == val_visits for visits in seen)
    for task in ("matching", "reconstruction"):  # no score beats the first by 10: stopped after epoch 2, epoch 1's weights kept
        stage = report["stages"][task]
        assert (stage["best_epoch"], stage["epochs_run"], stage["stopped_by"], stage["converged"]) == (1, 2, "patience", True)


def test_base_rate_bias_is_the_medication_head_bias_when_fine_tuning_starts(tiny_dataset, monkeypatch):
    captured = {}

    def stop(model, train, val):
        captured["bias"] = model.network.medications.bias.detach().clone()
        raise FineTuningStarts

    monkeypatch.setattr(raremed, "train_network", stop)
    train = tiny_dataset.samples("train")
    with pytest.raises(FineTuningStarts):
        RAREMed(tiny_dataset, RAREMed.Config(**{**SMALL, "base_rate_bias": True}), seed=0).fit(train, tiny_dataset.samples("val"))
    expected = base_rate_logits(torch.from_numpy(multi_hot([s.target for s in train], tiny_dataset.n_medications)).float())
    torch.testing.assert_close(captured["bias"], expected)


def test_fine_tuning_runs_at_finetune_lr(tiny_dataset, monkeypatch):
    rates = []

    def stop(model, train, val):
        rates.extend(group["lr"] for group in model.optimizer.param_groups)
        raise FineTuningStarts

    monkeypatch.setattr(raremed, "train_network", stop)
    with pytest.raises(FineTuningStarts):
        RAREMed(tiny_dataset, RAREMed.Config(**{**SMALL, "finetune_lr": 3e-3}), seed=0).fit(tiny_dataset.samples("train"), tiny_dataset.samples("val"))
    assert rates == [3e-3]
