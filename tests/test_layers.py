"""The shared baseline layers against hand computations."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from baselines.layers import (
    CodeSetEmbedding,
    GraphConvolutionNetwork,
    ddi_loss,
    ddi_rate_of_predictions,
    ddi_rates,
    ddi_target,
    last_step,
    margin_loss,
    masked_softmax,
    normalized_adjacency,
    pad_visits,
)

# a path 0 - 1 - 2 plus an isolated node 3
PATH = np.array([[0, 1, 0, 0], [1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0]], dtype=np.uint8)


def test_row_normalisation_matches_hand_computation():
    # degrees of A + I: 2, 3, 2, 1
    expected = np.array(
        [[1 / 2, 1 / 2, 0, 0], [1 / 3, 1 / 3, 1 / 3, 0], [0, 1 / 2, 1 / 2, 0], [0, 0, 0, 1]],
        dtype=np.float32,
    )
    np.testing.assert_allclose(normalized_adjacency(PATH, "row"), expected, rtol=1e-6)


def test_symmetric_normalisation_matches_hand_computation():
    s2, s3 = 1 / np.sqrt(2), 1 / np.sqrt(3)
    expected = np.array(
        [[s2 * s2, s2 * s3, 0, 0], [s3 * s2, s3 * s3, s3 * s2, 0], [0, s2 * s3, s2 * s2, 0], [0, 0, 0, 1]],
        dtype=np.float32,
    )
    np.testing.assert_allclose(normalized_adjacency(PATH, "symmetric"), expected, rtol=1e-6)


def test_normalisation_rejects_unknown_mode_and_non_square():
    with pytest.raises(ValueError, match="normalisation"):
        normalized_adjacency(PATH, "column")
    with pytest.raises(ValueError, match="square"):
        normalized_adjacency(np.zeros((2, 3)))


def test_gcn_is_two_propagations_over_identity_features():
    adj = normalized_adjacency(PATH)
    gcn = GraphConvolutionNetwork(adj, dim=5, dropout=0.0)
    a = torch.from_numpy(adj)
    expected = a @ (torch.relu(a @ torch.eye(4) @ gcn.weight1 + gcn.bias1) @ gcn.weight2) + gcn.bias2
    torch.testing.assert_close(gcn(), expected)
    assert gcn().shape == (4, 5)


def test_pad_visits_shapes_masks_and_empty_sets():
    codes, mask, lengths = pad_visits([[[3, 1], []], [[2]]])
    assert codes.shape == mask.shape == (2, 2, 2)
    assert lengths.tolist() == [2, 1]
    assert codes[0, 0].tolist() == [3, 1] and mask[0, 0].tolist() == [True, True]
    assert not mask[0, 1].any() and not mask[1, 1].any()
    with pytest.raises(ValueError, match="at least one visit"):
        pad_visits([[]])


def test_code_set_embedding_sum_and_mean_ignore_padding():
    codes, mask, _ = pad_visits([[[1, 2], []], [[2]]])
    summed = CodeSetEmbedding(4, 3, reduce="sum")
    table = summed.embedding.weight
    out = summed(codes, mask)
    torch.testing.assert_close(out[0, 0], table[1] + table[2])
    torch.testing.assert_close(out[0, 1], torch.zeros(3))
    torch.testing.assert_close(out[1, 0], table[2])
    averaged = CodeSetEmbedding(4, 3, reduce="mean")
    averaged.load_state_dict(summed.state_dict())
    torch.testing.assert_close(averaged(codes, mask)[0, 0], (table[1] + table[2]) / 2)
    torch.testing.assert_close(averaged(codes, mask)[0, 1], torch.zeros(3))


def test_masked_softmax_and_last_step():
    scores = torch.tensor([[1.0, 2.0, 5.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, False], [False, False, False]])
    weights = masked_softmax(scores, mask)
    torch.testing.assert_close(weights[0], torch.cat([torch.softmax(torch.tensor([1.0, 2.0]), 0), torch.zeros(1)]))
    assert weights[1].tolist() == [0.0, 0.0, 0.0]
    sequence = torch.arange(12.0).view(2, 3, 2)
    assert last_step(sequence, torch.tensor([2, 3])).tolist() == [[2.0, 3.0], [10.0, 11.0]]


def test_margin_loss_equals_reference_index_form():
    proba = torch.tensor([[0.9, 0.2, 0.6, 0.1], [0.3, 0.3, 0.3, 0.3], [0.5, 0.4, 0.3, 0.2]])
    target = torch.tensor([[0.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    indices = torch.tensor([[1, 2, -1, -1], [-1, -1, -1, -1], [0, 1, 2, 3]])
    per_sample = margin_loss(proba, target, reduction="none")
    torch.testing.assert_close(per_sample, F.multilabel_margin_loss(proba, indices, reduction="none"))
    # sample 0 by hand: targets {1, 2}, others {0, 3}; sum of hinge(1 - (p_t - p_o)) / M
    hand = (1 - (0.2 - 0.9)) + (1 - (0.2 - 0.1)) + (1 - (0.6 - 0.9)) + (1 - (0.6 - 0.1))
    assert per_sample[0].item() == pytest.approx(hand / 4)
    assert per_sample[1].item() == 0.0 and per_sample[2].item() == 0.0


def test_ddi_loss_and_rates():
    adj = torch.zeros(4, 4)
    adj[0, 1] = adj[1, 0] = 1.0
    proba = torch.tensor([[0.5, 0.4, 0.9, 0.0], [0.0, 0.0, 1.0, 1.0]])
    assert ddi_loss(proba, adj, reduction="none").tolist() == pytest.approx([2 * 0.5 * 0.4, 0.0])
    assert ddi_loss(proba, adj).item() == pytest.approx(0.2)
    predicted = torch.tensor([[True, True, True, False], [False, False, True, True], [True, False, False, False]])
    assert ddi_rates(predicted, adj).tolist() == pytest.approx([1 / 3, 0.0, 0.0])
    # pooled: 1 interacting pair out of 3 + 1 + 0 pairs
    assert ddi_rate_of_predictions(predicted, adj) == pytest.approx(0.25)
    assert ddi_rate_of_predictions(torch.zeros(2, 4, dtype=torch.bool), adj) == 0.0


def test_ddi_target_is_three_quarters_of_the_training_ground_truth_unless_given():
    adj = np.zeros((4, 4), dtype=np.uint8)
    adj[0, 1] = adj[1, 0] = 1
    # pairs: {0, 1, 2} has 3 with one interacting, {2, 3} has 1 without: pooled rate 1/4
    train = [SimpleNamespace(target=(0, 1, 2)), SimpleNamespace(target=(2, 3)), SimpleNamespace(target=(3,))]
    assert ddi_target(None, train, adj) == pytest.approx(0.75 * 0.25)
    assert ddi_target(0.06, train, adj) == 0.06  # an absolute target (the papers') is kept as given
    assert ddi_target(None, train[1:], adj) == 0.0


def test_code_set_embedding_reads_real_codes_only():
    """Padding positions may hold any code: neither the output nor the gradients depend on them, in any shape."""
    torch.manual_seed(0)
    codes = torch.randint(0, 6, (2, 3, 4))
    mask = torch.rand(2, 3, 4) < 0.5
    embedding = CodeSetEmbedding(6, 5, reduce="mean")
    out = embedding(codes, mask)
    reference = (embedding.embedding(codes) * mask.unsqueeze(-1)).sum(-2) / mask.sum(-1, keepdim=True).clamp(min=1)
    torch.testing.assert_close(out, reference)
    noisy = torch.where(mask, codes, torch.randint(0, 6, codes.shape))
    torch.testing.assert_close(embedding(noisy, mask), out)
    out.sum().backward()
    used = torch.zeros(6, dtype=torch.bool)
    used[codes[mask]] = True
    assert (embedding.embedding.weight.grad[~used] == 0).all() and (embedding.embedding.weight.grad[used] != 0).any()
    assert embedding(codes[0, 0], mask[0, 0]).shape == (5,)
