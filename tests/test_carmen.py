"""Carmen: training-only co-occurrence context, the two-visit query window, the DDI encoder's node inputs,
the drug side shared by a batch, the optional DDI loss and its gate, the presets."""

from __future__ import annotations

import dataclasses
from unittest import mock

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from baselines.carmen import Carmen, training_cooccurrence
from baselines.layers import ddi_loss
from bench.training import seed_everything

FAST = dict(epochs=2, dim=16, batch_size=8, ddi_layers=3)
TWIN_EDGES = [0, 3, 1, 4]  # the tiny DDI graph is 0-3 and 1-4: four drugs with the same neighbourhood
ISOLATED = [2, 5, 6, 7]  # no interaction


def model_with_network(dataset, **overrides):
    seed_everything(0)
    model = Carmen(dataset, Carmen.Config(**{**FAST, **overrides}), seed=0)
    model.network = model.build_network()
    return model


def test_cooccurrence_counts_training_visits_only(tiny_dataset):
    diagnoses, procedures, medications = training_cooccurrence(tiny_dataset)
    train = [v for p in tiny_dataset.patients_in("train") for v in p.visits]
    med = 0
    counts = np.zeros(tiny_dataset.n_diagnoses)
    for v in train:
        if med in v.medications:
            counts[list(v.diagnoses)] += 1
    np.testing.assert_allclose(diagnoses[med], counts / counts.sum(), rtol=1e-6)
    for matrix in (diagnoses, procedures, medications):
        assert set(np.round(matrix.sum(1), 5)) <= {0.0, 1.0}
    assert (np.diag(medications) == 0).all()
    # test patients' records do not enter the context
    test_ids = {p.patient_id for p in tiny_dataset.patients_in("test")}
    changed = dataclasses.replace(tiny_dataset, patients=[
        dataclasses.replace(p, visits=tuple(dataclasses.replace(v, medications=(0, 1, 2, 3)) for v in p.visits)) if p.patient_id in test_ids else p
        for p in tiny_dataset.patients
    ])
    for before, after in zip((diagnoses, procedures, medications), training_cooccurrence(changed)):
        np.testing.assert_array_equal(before, after)


def test_the_query_reads_the_current_and_previous_visit_only(tiny_dataset):
    model = model_with_network(tiny_dataset)
    model.network.eval()
    sample = next(s for s in tiny_dataset.samples("test") + tiny_dataset.samples("train") if len(s.history) >= 2)
    other_codes = lambda visit: dataclasses.replace(visit, diagnoses=(0, 1, 2, 3), procedures=(0, 1))  # noqa: E731
    older_changed = dataclasses.replace(sample, history=(other_codes(sample.history[0]), *sample.history[1:]))
    previous_changed = dataclasses.replace(sample, history=(*sample.history[:-1], other_codes(sample.history[-1])))
    with torch.no_grad():
        base, older, previous = (model.logits(model.collate([s])) for s in (sample, older_changed, previous_changed))
    torch.testing.assert_close(base, older)
    assert not torch.allclose(base, previous)
    assert model.collate([sample])["lengths"].tolist() == [2]


def test_ddi_encoder_inputs_learned_per_drug_or_the_references_constant(tiny_dataset):
    for features, distinct in (("constant", False), ("learned", True)):
        encoder = model_with_network(tiny_dataset, ddi_node_features=features).network.ddi_encoder
        with torch.no_grad():
            embeddings = encoder()
        # drugs with the same neighbourhood are told apart only by their own input vectors
        twins = embeddings[TWIN_EDGES]
        assert torch.allclose(twins, twins[:1].expand_as(twins)) != distinct
        # "minus" messages cancel a drug without interactions: x_i - alpha_ii x_i = 0, only the bias is left
        isolated = embeddings[ISOLATED]
        torch.testing.assert_close(isolated, encoder.biases[-1].detach().expand_as(isolated))
        assert torch.isfinite(embeddings).all()
    with pytest.raises(ValueError, match="ddi_node_features"):
        Carmen.Config(ddi_node_features="random")


def test_every_atom_reads_its_own_drugs_context(tiny_dataset):
    molecules = model_with_network(tiny_dataset).network.molecules.eval()
    context = torch.zeros(tiny_dataset.n_medications, FAST["dim"], requires_grad=True)
    drugs = molecules(context)
    for m in range(tiny_dataset.n_medications):
        (gradient,) = torch.autograd.grad(drugs[m].sum(), context, retain_graph=True)
        touched = set(np.flatnonzero(gradient.abs().sum(1).numpy()))
        assert touched <= {m}, m
    assert (drugs[6] == 0).all()  # no SMILES: no atoms


def test_the_drug_side_is_encoded_once_per_batch_and_cached_for_evaluation(tiny_dataset):
    model = model_with_network(tiny_dataset)
    net, samples = model.network, tiny_dataset.samples("train")
    with mock.patch.object(net, "encode_drugs", wraps=net.encode_drugs) as encode:
        net.train()
        model.loss(model.collate(samples[:8]), epoch=0)
        net.eval()
        with torch.no_grad():
            model.logits(model.collate(samples[:4]))
            model.logits(model.collate(samples[4:12]))
    assert encode.call_count == 2


def test_no_ddi_loss_by_default_and_the_gate_when_asked(tiny_dataset):
    samples = tiny_dataset.samples("train")[:12]
    for ddi_on, target in ((False, None), (True, -1.0), (True, 1.0)):
        model = model_with_network(tiny_dataset, ddi_loss=ddi_on, target_ddi=target)
        model.target_ddi = target
        model.network.eval()
        batch = model.collate(samples)
        with torch.no_grad():
            logits, loss = model.logits(batch), float(model.loss(batch, epoch=0))
        proba = torch.sigmoid(logits)
        margin_target = torch.full(logits.shape, -1, dtype=torch.long)
        for i, s in enumerate(samples):
            margin_target[i, : len(s.target)] = torch.tensor(s.target)
        accuracy = 0.95 * F.binary_cross_entropy_with_logits(logits, batch["target"]) + 0.05 * F.multilabel_margin_loss(proba, margin_target)
        if target == -1.0:  # every sample far above the target: pure DDI, never a negative accuracy weight
            assert loss == pytest.approx(float(0.0005 * ddi_loss(proba, model.ddi_adj)), rel=1e-5)
        else:
            assert loss == pytest.approx(float(accuracy), rel=1e-5)


def test_target_ddi_is_resolved_only_with_the_ddi_loss(tiny_dataset):
    train, val = tiny_dataset.samples("train"), tiny_dataset.samples("val")
    off = Carmen(tiny_dataset, Carmen.Config(**{**FAST, "epochs": 1}), seed=0).fit(train, val)
    assert off.target_ddi is None and "target_ddi" not in off.fit_report
    on = Carmen(tiny_dataset, Carmen.Config(**{**FAST, "epochs": 1}, ddi_loss=True), seed=0).fit(train, val)
    assert on.fit_report["target_ddi"] == 0.005  # the published --target_ddi


def test_presets_follow_the_official_command():
    paper, harness = Carmen.Config.preset("paper"), Carmen.Config.preset("harness")
    assert (paper.lr, paper.weight_decay, paper.batch_size, paper.epochs, paper.patience, paper.selection) == (5e-4, 1e-5, 16, 400, 31, "jaccard")
    assert (paper.dim, paper.max_visits, paper.ddi_encoding, paper.ddi_layers, paper.ddi_heads, paper.ddi_loss) == (64, 2, True, 10, 2, False)
    assert (paper.mpnn_layers, paper.mpnn_eps, paper.mpnn_dropout, paper.dropout, paper.threshold) == (2, 0.3, 0.5, 0.5, 0.5)
    assert (harness.selection, harness.patience) == ("prauc", 10)


def test_sparse_atom_messages_and_additive_ddi_mask_match_the_gather_scatter_and_masked_softmax(tiny_dataset):
    """The CSR adjacency product equals PyG's SimpleConv sum of weighted messages (with the same dropped-out
    edge weights), and the DDI encoder's -inf bias gives masked_softmax's weights."""
    from torch_geometric.data import Batch
    from torch_geometric.nn import SimpleConv

    from baselines.layers import masked_softmax

    molecules = model_with_network(tiny_dataset).network.molecules.train()
    edge_index = Batch.from_data_list(tiny_dataset.molecules.graphs).edge_index
    h = torch.randn(molecules.n_atoms, FAST["dim"], requires_grad=True)
    torch.manual_seed(3)
    weights = molecules.edge_dropout(molecules.edge_weight)
    expected = SimpleConv(aggr="sum")(h, edge_index, weights)
    adjacency = torch.sparse_csr_tensor(molecules.crow_indices, molecules.col_indices, weights[molecules.by_target],
                                        (molecules.n_atoms, molecules.n_atoms), check_invariants=False)
    torch.testing.assert_close(adjacency @ h, expected)
    (grad_expected,) = torch.autograd.grad(expected.pow(2).sum(), h)
    (grad,) = torch.autograd.grad((adjacency @ h).pow(2).sum(), h)
    torch.testing.assert_close(grad, grad_expected)

    encoder = model_with_network(tiny_dataset).network.ddi_encoder
    scores = torch.randn(2, 1, encoder.n_nodes).expand(-1, encoder.n_nodes, -1)
    neighbours = encoder.non_neighbours == 0
    assert neighbours.diagonal().all()
    torch.testing.assert_close(torch.softmax(scores + encoder.non_neighbours, -1), masked_softmax(scores, neighbours))
