"""bench.metrics against values computed by hand, edge cases included."""

from __future__ import annotations

import numpy as np
import pytest

from bench.metrics import aggregate, ddi_rate_of_sets, multi_hot, per_sample_metrics

# four medications; 1 and 2 interact
DDI = np.zeros((4, 4), dtype=np.uint8)
DDI[1, 2] = DDI[2, 1] = 1


def compute():
    proba = np.array(
        [
            [0.2, 0.9, 0.8, 0.1],  # ranking 1(T) 2(F) 0(T) 3(F): AP = (1/1 + 2/3) / 2 = 5/6
            [0.1, 0.2, 0.3, 0.4],  # target {3} ranked first: AP = 1
            [0.5, 0.5, 0.5, 0.5],  # empty target: PRAUC defined as 0
            [0.9, 0.8, 0.7, 0.0],  # target {0}: AP = 1
        ]
    )
    predicted = [[1, 2], [], [], [0, 1, 2]]
    targets = [[0, 1], [3], [], [0]]
    return per_sample_metrics(proba, predicted, targets, DDI)


def test_per_sample_values_match_hand_calculation():
    m = compute()
    np.testing.assert_allclose(m["prauc"], [5 / 6, 1.0, 0.0, 1.0])
    # sample 0: {1,2} vs {0,1}: inter 1, union 3; sample 3: {0,1,2} vs {0}: inter 1, union 3
    np.testing.assert_allclose(m["jaccard"], [1 / 3, 0.0, 0.0, 1 / 3])
    np.testing.assert_allclose(m["precision"], [1 / 2, 0.0, 0.0, 1 / 3])
    np.testing.assert_allclose(m["recall"], [1 / 2, 0.0, 0.0, 1.0])
    np.testing.assert_allclose(m["f1"], [0.5, 0.0, 0.0, 2 * (1 / 3) / (4 / 3)])
    np.testing.assert_allclose(m["avg_meds"], [2, 0, 0, 3])
    np.testing.assert_allclose(m["ddi_rate"], [1, 0, 0, 1])  # a pooled metric: interacting pairs per sample ...
    np.testing.assert_allclose(m.denominator("ddi_rate"), [1, 0, 0, 3])  # ... over all pairs
    np.testing.assert_allclose(m.denominator("jaccard"), [1, 1, 1, 1])


def test_aggregate_means_and_pools_ddi_over_pairs():
    agg = aggregate(compute())
    assert agg["prauc"] == pytest.approx((5 / 6 + 1 + 0 + 1) / 4)
    assert agg["jaccard"] == pytest.approx((2 / 3) / 4)
    assert agg["f1"] == pytest.approx((0.5 + 0.5) / 4)
    assert agg["avg_meds"] == pytest.approx(5 / 4)
    # pooled: (1 + 1) / (1 + 3) = 0.5, not the mean of per-sample rates (1 + 1/3) / 2
    assert agg["ddi_rate"] == pytest.approx(0.5)


def test_aggregate_on_a_subset_and_without_any_pair():
    m = compute()
    assert aggregate(m, np.array([0]))["ddi_rate"] == pytest.approx(1.0)
    subset = aggregate(m, np.array([1, 2]))
    assert subset["ddi_rate"] == 0.0
    assert subset["jaccard"] == 0.0 and subset["avg_meds"] == 0.0
    assert subset["prauc"] == pytest.approx(0.5)


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="expected"):
        per_sample_metrics(np.zeros((2, 3)), [[0], [1]], [[0], [1]], DDI)


def test_multi_hot_and_ground_truth_ddi_rate():
    np.testing.assert_array_equal(multi_hot([[0, 2], []], 3), [[1, 0, 1], [0, 0, 0]])
    # {1,2}: 1 interacting pair of 1; {0,1,2}: 1 of 3; {3}: no pair -> 2 / 4
    assert ddi_rate_of_sets([[1, 2], [0, 1, 2], [3]], DDI) == pytest.approx(0.5)
    assert ddi_rate_of_sets([[0], []], DDI) == 0.0


@pytest.mark.parametrize("decimals", [1, 6])
def test_vectorised_prauc_equals_scikit_learn_row_by_row(decimals):
    from sklearn.metrics import average_precision_score

    from bench.metrics import prauc_per_sample

    rng = np.random.default_rng(decimals)
    y_true = rng.random((200, 30)) < 0.2
    y_true[0] = False  # an empty true set is defined as 0
    proba = np.round(rng.random((200, 30)), decimals)  # 1 decimal: many tied scores
    expected = [average_precision_score(t, p) if t.any() else 0.0 for t, p in zip(y_true, proba)]
    assert np.allclose(prauc_per_sample(y_true, proba), expected, atol=1e-12)
