"""MoleRec: attention confined to each drug's own fragments, a deterministic fragment order, the drug side
encoded once per batch and cached at evaluation, the DDI-loss gate, the presets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from unittest import mock

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from baselines.layers import ddi_loss
from baselines.molerec import GINEncoder, MoleRec, ddi_loss_weight, fragment_graphs, fragment_slots
from bench.training import seed_everything

FAST = dict(epochs=2, dim=16, batch_size=8, gnn_layers=2)
NO_FRAGMENT = 6  # the tiny dataset's medication without SMILES


def network(dataset, **overrides):
    seed_everything(0)
    model = MoleRec(dataset, MoleRec.Config(**{**FAST, **overrides}), seed=0)
    model.network = model.build_network()
    return model


def test_each_drug_attends_only_over_its_own_fragments(tiny_dataset):
    mask = tiny_dataset.molecules.fragment_mask.astype(bool)
    assert mask[NO_FRAGMENT].sum() == 0 and mask.any(axis=1).sum() == len(mask) - 1
    net = network(tiny_dataset).network.eval()
    with torch.no_grad():
        attention, fragments = net.encode_drugs()
    assert attention.shape == mask.shape and fragments.shape == (mask.shape[1], FAST["dim"])
    np.testing.assert_array_equal((attention > 0).numpy(), mask)  # softmax weights are positive inside the mask
    expected_sums = mask.any(axis=1).astype(np.float32)  # 1 for a drug with fragments, 0 for the one without
    np.testing.assert_allclose(attention.sum(1).numpy(), expected_sums, atol=1e-6)
    # a patient's fragment relevance reaches drug m only through m's own fragments
    batch = network(tiny_dataset).collate(tiny_dataset.samples("train")[:1])
    relevance = torch.rand(1, mask.shape[1], requires_grad=True)
    with mock.patch.object(net.fragment_relevance, "forward", return_value=relevance):
        logits = net(batch)
    for m in range(len(mask)):
        (gradient,) = torch.autograd.grad(logits[0, m], relevance, retain_graph=True)
        assert set(np.flatnonzero(gradient[0].numpy())) <= set(np.flatnonzero(mask[m])), m


def test_a_drug_without_fragments_gets_its_own_bias_not_an_average_drug(tiny_dataset):
    model = network(tiny_dataset)
    loss = model.loss(model.collate(tiny_dataset.samples("train")[:16]), epoch=0)
    loss.backward()
    gradient = model.network.fragmentless_bias.grad
    assert gradient[NO_FRAGMENT] != 0 and (gradient[np.arange(len(gradient)) != NO_FRAGMENT] == 0).all()
    # the reference's masked fill: uniform over every fragment of every drug
    uniform = network(tiny_dataset, fragmentless="uniform").network.eval()
    with torch.no_grad():
        attention, _ = uniform.encode_drugs()
    np.testing.assert_allclose(attention[NO_FRAGMENT].numpy(), 1.0 / attention.shape[1], rtol=1e-5)
    with pytest.raises(ValueError, match="fragmentless"):
        MoleRec.Config(fragmentless="average")


def test_fragment_order_is_the_sorted_vocabulary_whatever_the_hash_seed(tiny_dataset):
    fragments = tiny_dataset.molecules.fragments
    assert fragments == sorted(fragments)
    graphs = fragment_graphs(fragments)
    encoder = network(tiny_dataset).network.fragment_encoder
    assert encoder.n_graphs == len(fragments)
    np.testing.assert_array_equal(np.bincount(encoder.atom_graph.numpy()), [g.num_nodes for g in graphs])
    # the reference's list(set(...)) changes with PYTHONHASHSEED; the data layer's vocabulary does not
    script = "from data_prep.molecules import build_molecule_set; import sys, json; print(json.dumps(build_molecule_set(json.loads(sys.argv[1])).fragments))"
    smiles = [list(s) for s in tiny_dataset.smiles]
    orders = {
        subprocess.run([sys.executable, "-c", script, json.dumps(smiles)], env={**os.environ, "PYTHONHASHSEED": seed}, capture_output=True, text=True, check=True).stdout
        for seed in ("1", "2")
    }
    assert len(orders) == 1 and json.loads(orders.pop()) == fragments


def test_the_drug_side_is_encoded_once_per_batch_and_once_for_evaluation(tiny_dataset):
    model = network(tiny_dataset)
    net, samples = model.network, tiny_dataset.samples("train")
    with mock.patch.object(net, "encode_drugs", wraps=net.encode_drugs) as encode:
        net.train()
        model.loss(model.collate(samples[:8]), epoch=0)
        assert encode.call_count == 1  # eight patients, one encoding
        net.eval()
        with torch.no_grad():
            first = model.logits(model.collate(samples[:4]))
            model.logits(model.collate(samples[4:12]))
            cached_attention, _ = net.drugs(net.encode_drugs)
        assert encode.call_count == 2  # cached across evaluation batches
        net.train()
        net.eval()
        with torch.no_grad():
            again = model.logits(model.collate(samples[:4]))
        assert encode.call_count == 3  # training again clears the cache
    torch.testing.assert_close(first, again)
    with torch.no_grad():
        recomputed, _ = net.encode_drugs()
    torch.testing.assert_close(cached_attention, recomputed)


def test_loading_weights_clears_the_evaluation_cache(tiny_dataset):
    model, other = network(tiny_dataset), network(tiny_dataset, fragmentless="bias")
    with torch.no_grad():
        for p in other.network.attention_key.parameters():
            p.add_(torch.randn_like(p))
    batch = model.collate(tiny_dataset.samples("test"))
    model.network.eval()
    with torch.no_grad():
        before = model.logits(batch)
        model.network.load_state_dict(other.network.state_dict())
        after = model.logits(batch)
        other.network.eval()
        torch.testing.assert_close(after, other.logits(batch))
    assert not torch.allclose(before, after)


def test_ddi_gate_is_zero_up_to_the_target_and_anneals_above():
    rates = torch.tensor([0.0, 0.06, 0.09, 0.12, 0.5])
    weights = ddi_loss_weight(rates, target=0.06, coef=2.5)
    expected = [0.0, 0.0, 1 - np.exp(2.5 * (1 - 1.5)), 1 - np.exp(2.5 * (1 - 2.0)), 1 - np.exp(2.5 * (1 - 0.5 / 0.06))]
    assert weights.tolist() == pytest.approx(expected)
    assert (weights >= 0).all() and (weights <= 1).all() and (weights.diff() >= 0).all()
    assert ddi_loss_weight(torch.tensor([0.0, 0.1]), target=0.0, coef=2.5).tolist() == [0.0, 1.0]


def test_loss_mixes_accuracy_and_ddi_per_sample(tiny_dataset):
    samples = tiny_dataset.samples("train")[:12]
    for target_ddi in (1.0, 1e-9):
        model = network(tiny_dataset, target_ddi=target_ddi)
        model.target_ddi = target_ddi
        model.network.eval()  # no dropout: loss and logits see the same network
        batch = model.collate(samples)
        with torch.no_grad():
            logits, loss = model.logits(batch), float(model.loss(batch, epoch=0))
        proba = torch.sigmoid(logits)
        margin_target = torch.full(logits.shape, -1, dtype=torch.long)
        for i, s in enumerate(samples):
            margin_target[i, : len(s.target)] = torch.tensor(s.target)
        bce = F.binary_cross_entropy_with_logits(logits, batch["target"], reduction="none").mean(1)
        accuracy = 0.95 * bce + 0.05 * F.multilabel_margin_loss(proba, margin_target, reduction="none")
        if target_ddi == 1.0:
            assert loss == pytest.approx(float(accuracy.mean()), rel=1e-5)
        else:  # a sample whose predicted set has an interacting pair takes (almost) pure DDI
            predicted = (proba >= 0.5).float()
            interacting = ((predicted @ model.ddi_adj) * predicted).sum(1) > 0
            ddi = model.ddi_loss_scale * ddi_loss(proba, model.ddi_adj, reduction="none")
            weight = ddi_loss_weight(interacting.float() * 1.0, 1e-9, 2.5)
            assert loss == pytest.approx(float(((1 - weight) * accuracy + weight * ddi).mean()), rel=1e-4)


def test_presets_follow_the_official_script_and_harness_batches(tiny_dataset):
    paper, harness = MoleRec.Config.preset("paper"), MoleRec.Config.preset("harness")
    assert (paper.lr, paper.batch_size, paper.epochs, paper.patience, paper.selection) == (5e-4, 1, 50, 50, "jaccard")
    assert (paper.dim, paper.dropout, paper.gnn_layers, paper.substructures) == (64, 0.7, 4, "gnn")
    assert (paper.target_ddi, paper.coef, paper.ddi_loss_scale, paper.threshold) == (0.06, 2.5, 0.0005, 0.5)
    assert (harness.batch_size, harness.selection, harness.target_ddi) == (32, "prauc", 0.06)
    assert MoleRec(tiny_dataset, harness).ddi_loss_scale == pytest.approx(10 * 0.0005 * 131 / tiny_dataset.n_medications)


def test_embedding_substructures_and_relative_target_fit(tiny_dataset):
    model = MoleRec(tiny_dataset, MoleRec.Config(**{**FAST, "epochs": 1}, substructures="embedding", target_ddi=None), seed=0)
    model.fit(tiny_dataset.samples("train"), tiny_dataset.samples("val"))
    assert not hasattr(model.network, "fragment_encoder") and model.network.fragment_table.shape[0] == len(tiny_dataset.molecules.fragments)
    from bench.metrics import ddi_rate_of_sets

    truth = ddi_rate_of_sets([s.target for s in tiny_dataset.samples("train")], tiny_dataset.ddi_adj)
    assert model.fit_report["target_ddi"] == pytest.approx(0.75 * truth)
    assert np.isfinite(model.predict_proba(tiny_dataset.samples("test"))).all()


def test_sparse_fragment_reading_equals_the_dense_product(tiny_dataset):
    """``A diag(w_b) S`` summed over the mask's (drug, fragment) pairs only: the dense product's values and gradients."""
    net = network(tiny_dataset).network.train()
    attention, fragments = net.encode_drugs()
    relevance = torch.rand(5, fragments.shape[0], requires_grad=True)
    sparse = net.read_fragments(attention, relevance, fragments)
    dense = attention @ (relevance.unsqueeze(-1) * fragments)
    torch.testing.assert_close(sparse, dense)
    weights = [relevance, *(p for p in net.parameters() if p.requires_grad)]
    upstream = torch.randn_like(dense)
    for got, want in zip(torch.autograd.grad(sparse, weights, upstream, retain_graph=True, allow_unused=True),
                         torch.autograd.grad(dense, weights, upstream, allow_unused=True)):
        assert (got is None) == (want is None)
        if got is not None:
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_fragment_slots_list_each_medications_fragments_and_pad_the_rest():
    mask = np.array([[0, 1, 0, 1], [0, 0, 0, 0], [1, 1, 1, 0]], dtype=bool)  # the middle medication has no fragment
    slots, filled = fragment_slots(mask)
    assert slots.tolist() == [[1, 3, 0], [0, 0, 0], [0, 1, 2]]
    assert filled.tolist() == [[1, 1, 0], [0, 0, 0], [1, 1, 1]]


def test_gin_message_passing_equals_pyg_gineconv(tiny_dataset):
    """The encoder's gather / index_add message passing: GINEConv's values and gradients, dropout included."""
    from torch_geometric.nn import global_mean_pool

    def through_gineconv(encoder):
        h, edge_index = encoder.atoms(), torch.stack([encoder.source, encoder.target])
        for layer, (conv, bonds, norm) in enumerate(zip(encoder.convs, encoder.bonds, encoder.norms)):
            h = norm(conv(h, edge_index, bonds()))
            h = encoder.dropout(h if layer == len(encoder.convs) - 1 else F.relu(h))
        return global_mean_pool(h, encoder.atom_graph, size=encoder.n_graphs)

    seed_everything(0)
    encoder = GINEncoder(tiny_dataset.molecules.graphs, 16, 3, 0.5).train()
    with torch.no_grad():
        for conv in encoder.convs:
            conv.eps.fill_(0.3)  # GINEConv's (1 + eps) h term with a non-zero eps
    outputs = []
    for forward in (encoder.forward, lambda: through_gineconv(encoder)):
        torch.manual_seed(1)  # the same dropout masks
        out = forward()
        outputs.append((out, torch.autograd.grad((out * torch.arange(out.numel()).view_as(out)).sum(), list(encoder.parameters()))))
    (ours, our_grads), (pyg, pyg_grads) = outputs
    assert ours.abs().sum() > 0
    torch.testing.assert_close(ours, pyg)
    for got, want in zip(our_grads, pyg_grads):
        torch.testing.assert_close(got, want)

