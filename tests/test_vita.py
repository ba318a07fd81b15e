import dataclasses

import numpy as np
import pytest
import torch

from baselines.vita import VITA
from test_cognet import check_last_position_decoding
from bench.contract import CapabilityError

SMALL = dict(dim=16, encoder_feedforward=32, decoder_feedforward=32, batch_size=8, epochs=2, patience=2)


def untrained(dataset, **overrides):
    """A seeded, never-trained network (its decoding runs several steps), token widths from the training records."""
    model = VITA(dataset, VITA.Config(**{**SMALL, **overrides}), seed=0)
    visits = [v for p in dataset.patients_in("train") for v in p.visits]
    model.widths = (max(len(v.diagnoses) for v in visits), max(len(v.procedures) for v in visits))
    torch.manual_seed(0)
    model.network = model.build_network().eval()
    return model


def multi_visit(samples):
    return [s for s in samples if s.history]


def selection(model, samples):
    batch = model.inputs(samples)
    rows = torch.arange(len(samples))
    with torch.no_grad():
        scalars = model.network.real_tokens(batch["codes"], batch["code_mask"]).scalars
        present = torch.arange(batch["codes"].shape[1]).unsqueeze(0) < batch["lengths"].unsqueeze(1)
        return model.network.selection(scalars, rows, batch["lengths"] - 1, present), batch["lengths"]


def dense_context_parts(net, batch, rows, visits, keep):
    """The reference's computation on the padded token matrix [B, T, W, d] (no dropout): visit scalars, the
    kept visits' vectors and the query for ``keep``."""
    tokens = net.codes(batch["codes"])
    scalars = net.visit_scalar(net.token_scalar(tokens).squeeze(-1)).squeeze(-1)
    vectors = net.visit_vector((tokens[rows] * keep[:, :, None, None]).transpose(-1, -2)).squeeze(-1)
    return scalars, vectors, tokens[rows]


def test_real_code_reductions_equal_the_padded_token_matrix(tiny_dataset):
    """Visit scalars, visit vectors and the query computed over the real codes only equal the reference's
    maps over the whole padded token matrix (padding embeds to zero, its rows contribute biases only)."""
    model = untrained(tiny_dataset)
    net = model.network
    samples = multi_visit(tiny_dataset.samples("train"))
    batch = model.inputs(samples)
    rows = torch.tensor([2, 0, 0, 5, 1])  # any rows, repeats allowed
    visits = batch["lengths"][rows] - 1
    with torch.no_grad():
        for name, parameter in net.named_parameters():  # biases away from zero, so padding's contribution shows
            if name != "codes.weight":  # the PAD row stays zero, as training keeps it
                parameter.add_(0.05)
        tokens = net.real_tokens(batch["codes"], batch["code_mask"])
        present = torch.arange(batch["codes"].shape[1]).unsqueeze(0) < batch["lengths"].unsqueeze(1)
        keep = net.selection(tokens.scalars, rows, visits, present)
        assert 0 < float(keep.sum()) < float(present[rows].sum())  # some earlier visits dropped
        scalars, vectors, token_matrix = dense_context_parts(net, batch, rows, visits, keep)
        torch.testing.assert_close(tokens.scalars, scalars, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(keep.unsqueeze(-1) * tokens.vectors[rows] + net.visit_vector.bias, vectors, rtol=1e-5, atol=1e-5)
        context = net.context(batch, rows, visits)
        target = vectors.gather(1, visits.view(-1, 1, 1).expand(-1, 1, net.dim)).squeeze(1)
        scores = torch.einsum("rtd,rd->rt", vectors, net.attention_query(target)) / net.dim ** 0.5
        weights = torch.softmax(scores.masked_fill(keep == 0, float("-inf")) / net.config.attention_temperature, dim=-1)
        torch.testing.assert_close(context.query, torch.einsum("rt,rtwd->rwd", weights, token_matrix), rtol=1e-5, atol=1e-5)


def test_selection_keeps_the_target_never_a_later_visit_and_is_deterministic_at_evaluation(tiny_dataset):
    model = untrained(tiny_dataset)
    samples = multi_visit(tiny_dataset.samples("train"))
    keep, lengths = selection(model, samples)
    again, _ = selection(model, samples)
    torch.testing.assert_close(keep, again)
    for row, n in zip(keep, lengths.tolist()):
        assert row[n - 1] == 1 and not row[n:].any()
        assert set(row[: n - 1].tolist()) <= {0.0, 1.0}
    assert 0 < float(keep.sum() - len(samples)) < float((lengths - 1).sum())  # some earlier visits kept, some dropped


def test_training_selection_is_noisy_and_seeded(tiny_dataset):
    model = untrained(tiny_dataset)
    samples = multi_visit(tiny_dataset.samples("train"))
    model.network.train()
    draws = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        draws.append(selection(model, samples)[0])
    torch.testing.assert_close(draws[0], draws[1])
    assert not torch.equal(draws[0], draws[2])


def test_predictions_are_reproducible_with_the_published_noisy_selection(tiny_dataset):
    noisy = untrained(tiny_dataset, test_selection="gumbel")
    deterministic = untrained(tiny_dataset)
    samples = multi_visit(tiny_dataset.samples("test"))
    np.testing.assert_array_equal(noisy.predict_proba(samples), noisy.predict_proba(samples))
    assert not torch.equal(selection(noisy, samples)[0], selection(deterministic, samples)[0])


def test_copy_alignment_matters_only_with_two_or_more_earlier_visits(tiny_dataset):
    own, published = untrained(tiny_dataset), untrained(tiny_dataset, copy_alignment="published")
    samples = multi_visit(tiny_dataset.samples("train") + tiny_dataset.samples("test"))
    one = [s for s in samples if len(s.history) == 1]
    several = [s for s in samples if len(s.history) >= 2]
    np.testing.assert_allclose(own.predict_proba(one), published.predict_proba(one), atol=1e-6)  # one source visit: renormalised away
    assert not np.allclose(own.predict_proba(several), published.predict_proba(several), atol=1e-6)


def test_batched_decoding_equals_one_sample_at_a_time(tiny_dataset):
    model = untrained(tiny_dataset)
    samples = multi_visit(tiny_dataset.samples("train"))
    sets, proba = model.decode(samples)
    for i, sample in enumerate(samples):
        alone_sets, alone_proba = model.decode([sample])
        assert alone_sets[0].tolist() == sets[i].tolist()
        np.testing.assert_allclose(alone_proba[0], proba[i], atol=1e-5)


def test_later_visits_and_the_target_are_never_read(tiny_dataset):
    model = untrained(tiny_dataset)
    samples = multi_visit(tiny_dataset.samples("test"))
    other_target = [dataclasses.replace(s, target=(0, 1)) for s in samples]
    np.testing.assert_array_equal(model.predict_proba(samples), model.predict_proba(other_target))
    with pytest.raises(CapabilityError):
        model.predict_proba([s for s in tiny_dataset.samples("test") if not s.history])


def test_token_widths_come_from_training_and_longer_sets_are_cut(tiny_dataset):
    model = VITA(tiny_dataset, VITA.Config(**SMALL), seed=0).fit(tiny_dataset.samples("train"), tiny_dataset.samples("val"))
    train_visits = [v for s in tiny_dataset.samples("train") if s.history for v in (*s.history, s)]
    assert model.fit_report["token_widths"] == [max(len(v.diagnoses) for v in train_visits), max(len(v.procedures) for v in train_visits)]
    sample = multi_visit(tiny_dataset.samples("test"))[0]
    longer = dataclasses.replace(sample, diagnoses=tuple(range(tiny_dataset.n_diagnoses)))
    assert model.predict_proba([longer]).shape == (1, tiny_dataset.n_medications)


@pytest.mark.parametrize("k", [1, 4])
def test_last_position_decoding_equals_rerunning_the_whole_prefix(tiny_dataset, k):
    check_last_position_decoding(untrained(tiny_dataset), multi_visit(tiny_dataset.samples("test")) + multi_visit(tiny_dataset.samples("train")), k)
