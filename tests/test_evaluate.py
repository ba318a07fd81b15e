"""Bootstrap draws, per-group cells, t-tests and retention of bench.evaluate."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from bench.evaluate import against_reference, bootstrap_draws, bootstrap_model, describe, retention, significance, summarise, t_test

GROUPS_OF_SAMPLES = ["multi"] * 7 + ["single"] * 3


def test_draws_are_seeded_stratified_and_without_replacement():
    draws = bootstrap_draws(GROUPS_OF_SAMPLES, rounds=10, seed=3)
    again = bootstrap_draws(GROUPS_OF_SAMPLES, rounds=10, seed=3)
    other = bootstrap_draws(GROUPS_OF_SAMPLES, rounds=10, seed=4)
    assert all(np.array_equal(a[g], b[g]) for a, b in zip(draws, again) for g in a)
    assert any(not np.array_equal(a["overall"], b["overall"]) for a, b in zip(draws, other))
    for draw in draws:
        assert len(draw["multi"]) == 6 and len(draw["single"]) == 2  # round(0.8 * 7), round(0.8 * 3)
        assert set(draw["multi"]) <= set(range(7)) and set(draw["single"]) <= {7, 8, 9}
        assert len(set(draw["overall"])) == len(draw["overall"]) == 8
        assert set(draw["overall"]) == set(draw["multi"]) | set(draw["single"])
    assert len({tuple(d["overall"]) for d in draws}) > 1


def test_draws_reject_bad_arguments():
    with pytest.raises(ValueError, match="round"):
        bootstrap_draws(GROUPS_OF_SAMPLES, rounds=0, seed=0)
    with pytest.raises(ValueError, match="fraction"):
        bootstrap_draws(GROUPS_OF_SAMPLES, rounds=1, seed=0, fraction=1.5)


def per_sample(values):
    values = np.asarray(values, dtype=np.float64)
    zeros = np.zeros_like(values)
    return {"prauc": values, "jaccard": values / 2, "f1": values, "precision": values, "recall": values, "n_pred": values * 0 + 2, "ddi_pairs": zeros, "all_pairs": zeros + 1}


def test_bootstrap_values_are_means_over_the_drawn_samples():
    values = np.arange(10, dtype=float)
    draws = bootstrap_draws(GROUPS_OF_SAMPLES, rounds=4, seed=0)
    cells = bootstrap_model(per_sample(values), np.ones(10, bool), GROUPS_OF_SAMPLES, draws)
    for r, draw in enumerate(draws):
        for group in ("overall", "multi", "single"):
            assert cells[group]["prauc"][r] == pytest.approx(values[draw[group]].mean())
            assert cells[group]["jaccard"][r] == pytest.approx(values[draw[group]].mean() / 2)
            assert cells[group]["avg_meds"][r] == 2.0


def test_groups_the_model_cannot_serve_are_none():
    draws = bootstrap_draws(GROUPS_OF_SAMPLES, rounds=3, seed=0)
    served = np.array([g == "multi" for g in GROUPS_OF_SAMPLES])
    cells = bootstrap_model(per_sample(np.ones(10)), served, GROUPS_OF_SAMPLES, draws)
    assert cells["overall"] is None and cells["single"] is None
    assert cells["multi"]["prauc"] == [1.0, 1.0, 1.0]
    only_multi = bootstrap_model(per_sample(np.ones(7)), np.ones(7, bool), ["multi"] * 7, bootstrap_draws(["multi"] * 7, 2, 0))
    assert only_multi["single"] is None and only_multi["overall"] is not None


def test_describe_uses_population_std():
    cell = describe([1.0, 2.0, 3.0, 4.0])
    assert cell["mean"] == 2.5 and cell["std"] == pytest.approx(np.sqrt(1.25)) and cell["values"] == [1, 2, 3, 4]


A = [0.51, 0.55, 0.53, 0.56, 0.52]
B = [0.50, 0.52, 0.50, 0.54, 0.51]


def test_t_tests_match_scipy_and_the_textbook_formulas():
    d = np.subtract(A, B)
    t_paired = d.mean() / (d.std(ddof=1) / np.sqrt(len(d)))
    assert t_test(A, B, paired=True) == pytest.approx(2 * stats.t.sf(abs(t_paired), len(d) - 1))
    assert t_test(A, B, paired=True) == pytest.approx(stats.ttest_rel(A, B).pvalue)
    pooled = np.sqrt((np.var(A, ddof=1) + np.var(B, ddof=1)) / 2 * (2 / len(A)))
    t_unpaired = (np.mean(A) - np.mean(B)) / pooled
    assert t_test(A, B, paired=False) == pytest.approx(2 * stats.t.sf(abs(t_unpaired), 2 * len(A) - 2))
    assert t_test(A, A, paired=True) is None


def summary_of(**models):
    return summarise({label: {"overall": {"prauc": v, "jaccard": v}, "multi": {"prauc": v, "jaccard": v}, "single": None if label == "hist" else {"prauc": v, "jaccard": v}} for label, v in models.items()})


def test_significance_tests_against_the_best_baseline_of_each_column():
    summary = summary_of(weak=[0.1] * 5, strong=B, hist=[0.9, 0.91, 0.92, 0.9, 0.93], mine=A)
    result = significance(summary, proposed=["mine"], metrics=("prauc",))
    assert result["mine"]["overall"]["prauc"] == {"against": "hist", "p": t_test(A, summary["hist"]["overall"]["prauc"]["values"]), "improves": False}
    # the single-visit column has no "hist" cell: the best baseline there is "strong"
    assert result["mine"]["single"]["prauc"]["against"] == "strong"
    assert result["mine"]["single"]["prauc"]["improves"] is True
    assert result["mine"]["single"]["prauc"]["p"] == pytest.approx(stats.ttest_rel(A, B).pvalue)
    unpaired = significance(summary, proposed=["mine"], paired=False, metrics=("prauc",))
    assert unpaired["mine"]["single"]["prauc"]["p"] == pytest.approx(stats.ttest_ind(A, B).pvalue)


def test_retention_is_the_student_mean_as_a_percentage_of_the_teacher():
    summary = summary_of(teacher=[0.8] * 3, student=[0.6] * 3, hist=[0.4] * 3)
    result = retention(summary, "teacher", ["student", "hist"], metrics=("prauc", "jaccard"))
    assert result["student"]["overall"] == {"prauc": pytest.approx(75.0), "jaccard": pytest.approx(75.0)}
    assert "single" not in result["hist"] and result["hist"]["multi"]["prauc"] == pytest.approx(50.0)


def test_against_reference_gives_the_reference_lead_and_a_paired_p_value():
    summary = summary_of(full=A, variant=B, hist=[0.4] * 5)
    result = against_reference(summary, "full", ["variant", "hist"], metrics=("prauc",))
    cell = result["variant"]["single"]["prauc"]
    assert cell["delta"] == pytest.approx(np.mean(A) - np.mean(B))
    assert cell["p"] == pytest.approx(stats.ttest_rel(A, B).pvalue)
    assert "single" not in result["hist"]  # no cell where either side cannot serve the group
