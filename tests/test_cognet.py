import dataclasses
import math

import numpy as np
import pytest
import torch

from baselines.cognet import COGNet, PackedEncoderLayer, beam_search, rare_first_rank
from bench.contract import CapabilityError

SMALL = dict(dim=16, encoder_feedforward=32, decoder_feedforward=32, batch_size=8)


def untrained(dataset, **overrides):
    """A seeded network that was never trained: its distributions are spread out, so decoding runs
    several steps and hypotheses differ (a trained tiny model often stops at once)."""
    torch.manual_seed(0)
    model = COGNet(dataset, COGNet.Config(**{**SMALL, **overrides}), seed=0)
    model.network = model.build_network().eval()
    return model


def multi_visit(samples):
    return [s for s in samples if s.history]


def greedy_one_by_one(model, sample):
    """Greedy decoding with de-duplication, one sample at a time: the most probable token not yet
    emitted (SOS counts as emitted), until END or the step cap."""
    net, n_meds = model.network, model.dataset.n_medications
    batch = model.inputs([sample])
    context = net.context(batch, torch.tensor([0]), batch["lengths"] - 1)
    tokens, used, generated = [net.sos], {net.sos}, []
    with torch.no_grad():
        for _ in range(min(model.config.max_decode_length, n_meds + 1)):
            log_proba = net(torch.tensor([tokens]), context)[0, -1].clone()
            log_proba[list(used)] = float("-inf")
            token = int(log_proba.argmax())
            if token == net.end:
                break
            tokens.append(token)
            used.add(token)
            generated.append(token)
    return sorted(generated)


def test_beam_of_one_is_greedy_decoding_with_deduplication(tiny_dataset):
    model = untrained(tiny_dataset)
    samples = multi_visit(tiny_dataset.samples("train"))
    sets, _ = model.decode(samples, beam_size=1)
    expected = [greedy_one_by_one(model, s) for s in samples]
    assert [s.tolist() for s in sets] == expected
    assert len({len(s) for s in expected}) > 2  # the comparison covers empty, short and long sets


def test_copy_distribution_sums_to_one_over_earlier_medications_only(tiny_dataset):
    model = untrained(tiny_dataset)
    net = model.network
    samples = multi_visit(tiny_dataset.samples("train"))
    batch = model.inputs(samples)
    # every visit of every record (t = 0 has nothing to copy), as loss_visits="all" trains
    rows = torch.cat([torch.full((int(n),), b) for b, n in enumerate(batch["lengths"])])
    visits = torch.cat([torch.arange(int(n)) for n in batch["lengths"]])
    context = net.context(batch, rows, visits)
    hidden = torch.randn(len(rows), 3, SMALL["dim"])
    with torch.no_grad():
        copy = net.copy_distribution(hidden, context)
    checked_later = 0
    for r, (b, t) in enumerate(zip(rows.tolist(), visits.tolist())):
        record = [v.medications for v in samples[b].history] + [samples[b].target]
        earlier = {m for meds in record[:t] for m in meds}
        assert bool(context.has_copy[r]) == bool(earlier)
        if not earlier:
            continue  # generation alone: the copy branch is not used
        np.testing.assert_allclose(copy[r].sum(-1).numpy(), 1.0, rtol=1e-5)
        support = {int(m) for m in torch.nonzero(copy[r].sum(0) > 0).flatten()}
        assert support <= earlier
        later = {m for meds in record[t:] for m in meds} - earlier  # the visit's own and later medications
        assert all(float(copy[r, :, m].max()) == 0.0 for m in later)
        checked_later += len(later)
    assert checked_later > 0


def test_beam_search_keeps_finished_hypotheses_and_never_repeats():
    # tokens: 0, 1 medications, 2 SOS, 3 END; log-probabilities depend on the prefix
    table = {
        (2,): [0.5, 0.4, 0.0, 0.1],
        (2, 0): [0.3, 0.1, 0.0, 0.1],  # 0 again is the best raw choice but is already used
        (2, 1): [0.05, 0.3, 0.0, 0.9],
        (2, 0, 1): [0.2, 0.2, 0.0, 0.6],
        (2, 1, 0): [0.2, 0.2, 0.0, 0.6],
    }

    def step(tokens, rows):
        return torch.log(torch.tensor([table.get(tuple(t), [0.25] * 4) for t in tokens.tolist()]))

    greedy = beam_search(step, 1, 1, 5, 4, sos=2, end=3, device=torch.device("cpu"))
    assert greedy.tokens[0].tolist()[:4] == [2, 0, 1, 3]  # 0.5 * 0.1 * 0.6 = 0.03, never 0 twice
    beam = beam_search(step, 1, 2, 5, 4, sos=2, end=3, device=torch.device("cpu"))
    assert beam.tokens[0].tolist()[:3] == [2, 1, 3]  # 0.4 * 0.9 = 0.36, finished at step 2, kept to the end
    # each step's probabilities are those of the kept hypothesis's prefix, traced back through the beam reordering
    for result, tokens in ((greedy, (2, 0, 1)), (beam, (2, 1))):
        for t in range(len(tokens)):
            np.testing.assert_allclose(result.step_log_proba[0, t].exp().numpy(), table[tokens[: t + 1]], rtol=1e-6)


def test_predicted_probabilities_come_from_the_decoding_steps(tiny_dataset):
    model = untrained(tiny_dataset)
    samples = multi_visit(tiny_dataset.samples("test"))
    sets, proba = model.decode(samples)
    assert np.isfinite(proba).all() and (proba > 0).all() and (proba <= 1).all()
    assert [s.tolist() for s in model.predict_sets(samples)] == [s.tolist() for s in sets]
    np.testing.assert_array_equal(model.predict_proba(samples), proba)


def test_batch_decodes_like_one_by_one(tiny_dataset):
    model = untrained(tiny_dataset)
    samples = multi_visit(tiny_dataset.samples("train"))
    assert len({len(s.history) for s in samples}) >= 3
    sets, proba = model.decode(samples)
    alone = [model.decode([s]) for s in samples]
    assert [s.tolist() for s in sets] == [a[0][0].tolist() for a in alone]
    np.testing.assert_allclose(proba, np.concatenate([a[1] for a in alone]), rtol=1e-4, atol=1e-6)


def test_single_visit_samples_follow_the_config(tiny_dataset):
    single = [s for s in tiny_dataset.samples("train") if not s.history][:3]
    with pytest.raises(CapabilityError, match="needs earlier medications"):
        untrained(tiny_dataset).predict_proba(single)
    generation_only = untrained(tiny_dataset, score_single_visit=True)
    assert not generation_only.capabilities.needs_history_medications
    assert generation_only.predict_proba(single).shape == (3, tiny_dataset.n_medications)
    assert COGNet.capabilities.needs_history_medications  # LEADER's Table I: multi-visit only by default


def test_rare_first_order_counts_each_training_visit_once(tiny_dataset):
    counts = np.zeros(tiny_dataset.n_medications, dtype=np.int64)
    for patient in tiny_dataset.patients_in("train"):
        for visit in patient.visits:
            counts[list(visit.medications)] += 1
    expected = np.argsort(counts, kind="stable")  # rarest first, ties by index
    for protocol in ("last-visit", "all-visits"):  # a visit in several samples' histories counts once
        rank = rare_first_rank(tiny_dataset.samples("train", protocol), tiny_dataset.n_medications)
        np.testing.assert_array_equal(np.argsort(rank), expected)
    assert len(set(counts.tolist())) > 2


def test_training_targets_are_rare_first_then_end(tiny_dataset):
    model = untrained(tiny_dataset)
    train = multi_visit(tiny_dataset.samples("train"))
    model.rank = rare_first_rank(train, tiny_dataset.n_medications)
    batch = model.collate(train[:8])
    assert batch["tokens"].shape[1] == max(len(s.target) for s in train[:8]) + 1
    for sample, tokens, targets in zip(train[:8], batch["tokens"], batch["targets"]):
        expected = sorted(sample.target, key=lambda m: model.rank[m])
        n = len(expected)
        assert tokens[: n + 1].tolist() == [model.network.sos, *expected]
        assert targets[: n + 1].tolist() == [*expected, model.network.end]
        assert (targets[n + 1 :] < 0).all() and (tokens[n + 1 :] == model.network.pad).all()


def test_ddi_weight_starts_small(tiny_dataset):
    for seed in range(5):
        torch.manual_seed(seed)
        beta = float(COGNet(tiny_dataset, COGNet.Config(**SMALL)).build_network().ddi_weight.detach())
        assert -0.1 <= beta <= 0.1  # initialised, never read from uninitialised memory


def test_fit_learns_and_is_deterministic(tiny_dataset):
    config = COGNet.Config(**SMALL, epochs=3, patience=3)
    first = COGNet(tiny_dataset, config, seed=0).fit(tiny_dataset.samples("train"), tiny_dataset.samples("val"))
    history = first.fit_report["history"]
    assert history[-1]["loss"] < history[0]["loss"] and math.isfinite(first.fit_report["best_val_score"])
    again = COGNet(tiny_dataset, config, seed=0).fit(tiny_dataset.samples("train"), tiny_dataset.samples("val"))
    test = multi_visit(tiny_dataset.samples("test"))
    np.testing.assert_array_equal(first.predict_proba(test), again.predict_proba(test))


def test_validation_beam_size_decodes_the_selection_only(tiny_dataset):
    """``validation_beam_size`` is the beam of the decoding that scores validation epochs while fitting;
    every prediction afterwards, validation or test, decodes with ``beam_size``."""
    model = untrained(tiny_dataset, validation_beam_size=1, beam_size=3)
    samples = multi_visit(tiny_dataset.samples("val"))
    model.selecting = True
    np.testing.assert_array_equal(model.predict_proba(samples), model.decode(samples, beam_size=1)[1])
    model.selecting = False
    np.testing.assert_array_equal(model.predict_proba(samples), model.decode(samples, beam_size=3)[1])
    config = COGNet.Config(**SMALL, epochs=1, patience=1, validation_beam_size=1)
    fitted = COGNet(tiny_dataset, config, seed=0).fit(tiny_dataset.samples("train"), tiny_dataset.samples("val"))
    assert fitted.fit_report["validation_beam_size"] == 1 and not fitted.selecting
    with pytest.raises(ValueError, match="validation_beam_size"):
        COGNet.Config(validation_beam_size=0)


def full_prefix_search(model, samples, k):
    """The beam search as it was first written: every step re-runs the decoder over each beam's whole prefix."""
    net, n_meds = model.network, model.dataset.n_medications
    context = model.target_context(model.inputs(samples))
    return beam_search(lambda tokens, beams: net(tokens, context.select(beams // k))[:, -1],
                       len(samples), k, min(model.config.max_decode_length, n_meds + 1), n_meds + 2, net.sos, net.end, model.device)


def check_last_position_decoding(model, samples, k):
    """The decoder's last-position step equals the full prefix's last row, and the beams equal the full-prefix search's
    (COGNet's and VITA's shared beam search)."""
    net = model.network
    context = model.target_context(model.inputs(samples))
    tokens = torch.randint(0, model.dataset.n_medications, (len(samples) * k, 5))
    with torch.no_grad():
        expected = net(tokens, context.select(torch.arange(len(samples) * k) // k))[:, -1]
        torch.testing.assert_close(net.next_token(tokens, context), expected, rtol=1e-5, atol=1e-5)
        projected = dataclasses.replace(context, projected=net.decoder.project(context))  # keys and values projected once
        torch.testing.assert_close(net.next_token(tokens, projected.select(torch.arange(len(samples)))), expected, rtol=1e-5, atol=1e-5)
    reference = full_prefix_search(model, samples, k)
    sets, _ = model.decode(samples, beam_size=k)
    assert reference.tokens.shape[1] > 3  # several steps ran
    assert [s.tolist() for s in sets] == [sorted(t for t in row if t < model.dataset.n_medications) for row in reference.tokens.tolist()]


@pytest.mark.parametrize("k", [1, 4])
def test_last_position_decoding_equals_rerunning_the_whole_prefix(tiny_dataset, k):
    check_last_position_decoding(untrained(tiny_dataset), multi_visit(tiny_dataset.samples("test")) + multi_visit(tiny_dataset.samples("train")), k)


def test_decoding_is_reused_for_the_same_samples_and_weights_only(tiny_dataset, monkeypatch):
    """``predict_proba`` and ``predict_sets`` share one beam search per sample set; any change of the weights
    (an optimizer step, a loaded state), the beam or the samples decodes again, never a stale result."""
    model = untrained(tiny_dataset)
    searches = []
    search = model.beam_decode
    monkeypatch.setattr(model, "beam_decode", lambda samples, k: searches.append(len(samples)) or search(samples, k))
    val, test = multi_visit(tiny_dataset.samples("val")), multi_visit(tiny_dataset.samples("test"))
    val_proba, test_proba = model.predict_proba(val), model.predict_proba(test)
    val_sets, test_sets = model.predict_sets(list(val)), model.predict_sets(test)  # the harness's order
    assert searches == [len(val), len(test)]
    assert [s.tolist() for s in test_sets] == [s.tolist() for s in search(test, model.config.beam_size)[0]]
    test_proba[:] = 0  # callers get copies
    np.testing.assert_array_equal(model.predict_proba(test), search(test, model.config.beam_size)[1])
    model.decode(val, beam_size=1)
    model.predict_proba(test[:-1])
    assert searches == [len(val), len(test), len(val), len(test) - 1]

    optimizer = model.make_optimizer()  # the fused Adam of training, whose steps leave version counters alone
    model.network.train()
    batch = model.collate(test)
    model.loss(batch, 0).backward()
    optimizer.step()
    after_step = model.predict_proba(test)
    assert searches[-1] == len(test) and not np.array_equal(after_step, test_proba)
    np.testing.assert_array_equal(after_step, search(test, model.config.beam_size)[1])

    state = {k: v.clone() for k, v in untrained(tiny_dataset).network.state_dict().items()}
    model.network.load_state_dict(state)
    before = len(searches)
    np.testing.assert_array_equal(model.predict_proba(test), untrained(tiny_dataset).decode(test)[1])
    assert len(searches) == before + 1


@pytest.mark.parametrize("training", [False, True])
def test_packed_encoder_layer_equals_the_padded_transformer_layer(training):
    """The encoder layer run on real tokens equals ``nn.MultiheadAttention`` and the post-LN block on the padded
    sets at the real positions, in training too: the attention core is the same call, so the same dropout draws."""
    torch.manual_seed(0)
    layer = PackedEncoderLayer(16, 2, 32, 0.2).train(training)
    attend = torch.rand(7, 9) < 0.5
    attend[:, 0] |= ~attend.any(1)  # every set attends somewhere, as ``with_pad`` makes it
    x = torch.randn(7, 9, 16) * attend.unsqueeze(-1)  # zeros at padding, as the embeddings
    torch.manual_seed(1)
    packed = layer(x[attend], attend)
    torch.manual_seed(1)
    attended = layer.attention(x, x, x, key_padding_mask=~attend, need_weights=False)[0][attend]
    real = layer.norms[0](x[attend] + layer.dropouts[0](attended))
    expected = layer.norms[1](real + layer.dropouts[1](layer.feedforward(real)))
    torch.testing.assert_close(packed[attend], expected)
    assert not packed[~attend].any()
