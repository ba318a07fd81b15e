import numpy as np
import pytest
import torch
from torch.nn import functional as F

from baselines.safedrug import MoleculeEncoder, SafeDrug, ddi_loss_weight
from bench.metrics import ddi_rate_of_sets

FAST = dict(epochs=2, dim=16, batch_size=8)


@pytest.fixture(scope="module")
def fitted(tiny_dataset):
    model = SafeDrug(tiny_dataset, SafeDrug.Config(**FAST), seed=0)
    return model.fit(tiny_dataset.samples("train"), tiny_dataset.samples("val"))


def test_fit_predict_shape_and_range(fitted, tiny_dataset):
    test = tiny_dataset.samples("test")
    proba = fitted.predict_proba(test)
    assert proba.shape == (len(test), tiny_dataset.n_medications)
    assert np.isfinite(proba).all() and (proba >= 0).all() and (proba <= 1).all()
    assert fitted.fit_report["epochs_run"] == 2


def test_same_seed_same_probabilities(fitted, tiny_dataset):
    again = SafeDrug(tiny_dataset, SafeDrug.Config(**FAST), seed=0).fit(tiny_dataset.samples("train"), tiny_dataset.samples("val"))
    test = tiny_dataset.samples("test")
    np.testing.assert_array_equal(fitted.predict_proba(test), again.predict_proba(test))


def test_mpnn_receives_gradients_and_trains(tiny_dataset):
    model = SafeDrug(tiny_dataset, SafeDrug.Config(**FAST, target_ddi=0.06, kp=0.05), seed=0)  # no fit resolves them
    model.network = model.build_network()
    mpnn = model.network.molecules
    names = [name for name, _ in mpnn.named_parameters()]
    assert "atom_features.weight" in names and any(name.startswith("updates") for name in names)
    before = {name: p.detach().clone() for name, p in mpnn.named_parameters()}
    optimizer = model.make_optimizer()
    loss = model.loss(model.collate(tiny_dataset.samples("train")[:16]), epoch=0)
    optimizer.zero_grad()
    loss.backward()
    for name, p in mpnn.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 1e-6, name
    optimizer.step()
    changed = [name for name, p in mpnn.named_parameters() if not torch.equal(before[name], p.detach())]
    assert sorted(changed) == sorted(names)


def test_brics_mask_shape_and_local_branch_reads_only_own_fragments(tiny_dataset):
    mask = tiny_dataset.molecules.fragment_mask
    n_fragments = len(tiny_dataset.molecules.fragments)
    assert mask.shape == (tiny_dataset.n_medications, n_fragments)
    model = SafeDrug(tiny_dataset, SafeDrug.Config(**FAST), seed=0)
    layer = model.build_network().fragment_to_medication
    assert tuple(layer.mask.shape) == mask.shape
    # d(medication m) / d(fragment f) is non-zero exactly where medication m has fragment f
    jacobian = torch.autograd.functional.jacobian(layer, torch.rand(1, n_fragments))[0, :, 0, :]
    np.testing.assert_array_equal((jacobian != 0).numpy(), mask.astype(bool))
    assert mask[6].sum() == 0  # medication 6 has no SMILES: no fragment, only the bias


def test_medication_without_molecules_is_not_stuck_at_one_half(fitted, tiny_dataset):
    proba = fitted.predict_proba(tiny_dataset.samples("test"))
    assert not np.allclose(proba[:, 6], 0.5)


def test_ddi_loss_weight_reacts_to_target():
    weights = ddi_loss_weight(torch.tensor([0.03, 0.06, 0.085, 0.20]), target=0.06, kp=0.05)
    # below or at target: pure accuracy loss; half-way through the band: 0.5; far above: pure DDI, never negative
    assert weights.tolist() == pytest.approx([0.0, 0.0, 0.5, 1.0])
    # the same rate weighs more on DDI the lower the target
    rates = [float(ddi_loss_weight(torch.tensor(0.09), target=t, kp=0.05)) for t in (0.08, 0.06, 0.04)]
    assert rates[0] < rates[1] < rates[2]


def _hand_ddi_loss(proba: torch.Tensor, ddi_adj: np.ndarray) -> float:
    total = 0.0
    for row in proba.tolist():
        total += sum(row[i] * row[j] for i in range(len(row)) for j in range(len(row)) if ddi_adj[i, j])
    return total / len(proba)


def test_loss_is_pure_ddi_far_above_target_and_pure_accuracy_below(tiny_dataset):
    samples = tiny_dataset.samples("train")[:6]
    for target_ddi, kp in ((-1.0, 1e-6), (1.0, 0.05)):
        model = SafeDrug(tiny_dataset, SafeDrug.Config(**FAST, target_ddi=target_ddi, kp=kp), seed=0)
        model.network = model.build_network().eval()  # no dropout: loss and logits see the same network
        batch = model.collate(samples)
        with torch.no_grad():
            logits = model.logits(batch)
            loss = float(model.loss(batch, epoch=0))
        proba = torch.sigmoid(logits)
        if target_ddi < 0:
            assert loss == pytest.approx(model.ddi_loss_scale * _hand_ddi_loss(proba, tiny_dataset.ddi_adj), rel=1e-5)
        else:
            margin_target = torch.full(logits.shape, -1, dtype=torch.long)
            for i, s in enumerate(samples):
                margin_target[i, : len(s.target)] = torch.tensor(s.target)
            bce = F.binary_cross_entropy_with_logits(logits, batch["target"])
            assert loss == pytest.approx(float(0.95 * bce + 0.05 * F.multilabel_margin_loss(proba, margin_target)), rel=1e-5)


def test_ddi_loss_scale_follows_the_vocabulary_unless_given(tiny_dataset):
    harness = SafeDrug.Config.preset("harness", **FAST)
    assert SafeDrug(tiny_dataset, harness).ddi_loss_scale == pytest.approx(10 * 0.0005 * 131 / tiny_dataset.n_medications)
    assert SafeDrug(tiny_dataset, SafeDrug.Config(**FAST)).ddi_loss_scale == 0.0005  # the paper's
    paper = SafeDrug.Config.preset("paper")
    assert (paper.lr, paper.batch_size, paper.target_ddi, paper.kp) == (5e-4, 1, 0.06, 0.05)
    assert (harness.lr, SafeDrug.Config.preset("harness").batch_size) == (2e-3, 32)


def test_fit_resolves_the_target_ddi_against_the_training_targets(fitted, tiny_dataset):
    truth = ddi_rate_of_sets([s.target for s in tiny_dataset.samples("train")], tiny_dataset.ddi_adj)
    assert truth > 0
    assert fitted.target_ddi == fitted.fit_report["target_ddi"] == 0.06  # the paper's
    relative = SafeDrug(tiny_dataset, SafeDrug.Config(**{**FAST, "epochs": 1}, target_ddi=None), seed=0)
    relative.fit(tiny_dataset.samples("train"), tiny_dataset.samples("val"))
    assert relative.target_ddi == relative.fit_report["target_ddi"] == pytest.approx(0.75 * truth)


def test_padded_batch_scores_like_one_by_one(fitted, tiny_dataset):
    by_length = {}
    for s in tiny_dataset.samples("train"):
        by_length.setdefault(len(s.history), s)
    assert len(by_length) >= 3  # single-visit samples and histories of several lengths in one batch
    batch = list(by_length.values())
    alone = np.concatenate([fitted.predict_proba([s]) for s in batch])
    np.testing.assert_allclose(fitted.predict_proba(batch), alone, rtol=1e-5, atol=1e-6)


def test_each_sample_mixes_its_losses_by_its_own_ddi_rate(tiny_dataset):
    """The reference steps one visit at a time, so beta is per visit: a batch averages per-sample mixes."""
    samples = tiny_dataset.samples("train")[:3]
    adj = tiny_dataset.ddi_adj
    a, b = np.argwhere(adj > 0)[0]  # an interacting pair
    c = next(m for m in range(len(adj)) if m not in (a, b) and adj[a, m] == 0 and adj[b, m] == 0)
    logits = torch.full((3, len(adj)), -4.0)
    logits[0, [a, b]] = 2.0  # rate 1: pure DDI loss
    logits[1, [a, c]] = 2.0  # rate 0: pure accuracy loss
    logits[2, [a, b, c]] = 2.0  # rate 1/3 with target 0.1, kp 0.4: DDI weight 7/12
    model = SafeDrug(tiny_dataset, SafeDrug.Config(**FAST, target_ddi=0.1, kp=0.4), seed=0)
    model.network = model.build_network()  # sets the DDI adjacency the loss reads
    model.logits = lambda batch: logits
    batch = model.collate(samples)
    loss = float(model.loss(batch, epoch=0))
    proba = torch.sigmoid(logits)
    expected = []
    for i, (s, weight) in enumerate(zip(samples, (1.0, 0.0, (1 / 3 - 0.1) / 0.4))):
        margin_target = torch.full((1, len(adj)), -1, dtype=torch.long)
        margin_target[0, : len(s.target)] = torch.tensor(s.target)
        accuracy = 0.95 * float(F.binary_cross_entropy_with_logits(logits[i], batch["target"][i])) + 0.05 * float(
            F.multilabel_margin_loss(proba[i : i + 1], margin_target)
        )
        ddi = model.ddi_loss_scale * _hand_ddi_loss(proba[i : i + 1], adj)
        expected.append((1 - weight) * accuracy + weight * ddi)
    assert loss == pytest.approx(float(np.mean(expected)), rel=1e-5)


@pytest.mark.parametrize("layers, pooling", [(1, "mean"), (2, "mean"), (2, "sum"), (3, "mean")])
def test_molecule_encoder_by_atom_class_equals_message_passing_over_every_atom(tiny_dataset, layers, pooling):
    """The class-compressed MPNN gives the reference's per-atom message passing (h <- (I + A) relu(W h)),
    pooled per molecule and averaged per medication, with the same gradients."""
    from torch_geometric.data import Batch
    from torch_geometric.nn import SimpleConv, global_add_pool, global_mean_pool
    from torch_geometric.utils.smiles import x_map

    molecules = tiny_dataset.molecules
    torch.manual_seed(0)
    encoder = MoleculeEncoder(molecules.graphs, molecules.average_projection, 8, layers, pooling)
    batch = Batch.from_data_list(molecules.graphs)
    sizes = torch.tensor([len(values) for values in x_map.values()])
    atoms = batch.x + torch.cumsum(sizes, 0) - sizes

    def per_atom() -> torch.Tensor:
        h = encoder.atom_features(atoms)
        for update in encoder.updates:
            h = SimpleConv(aggr="sum", combine_root="sum")(torch.relu(update(h)), batch.edge_index)
        pool = global_mean_pool if pooling == "mean" else global_add_pool
        return torch.from_numpy(molecules.average_projection) @ pool(h, batch.batch, size=len(molecules.graphs))

    assert encoder.readout.shape[1] < len(atoms)  # fewer classes than atoms: the point of it
    expected = per_atom()
    expected_grads = torch.autograd.grad(expected.square().sum(), list(encoder.parameters()))
    got = encoder()
    got_grads = torch.autograd.grad(got.square().sum(), list(encoder.parameters()))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    for g, e in zip(got_grads, expected_grads):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)
