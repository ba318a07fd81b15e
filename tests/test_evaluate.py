"""bench.evaluate: resamples, cells, seed aggregation, paired tests, Holm, retention, and calibration under the null."""

from __future__ import annotations

import numpy as np
import pytest

from bench.metrics import PerSample

from bench.evaluate import (
    CellData,
    against_reference,
    cell_values,
    collect,
    compare,
    describe,
    draw_resamples,
    holm,
    retention,
    significance,
    summarise,
)

# ten single-sample patients: seven multi-visit, three single-visit
STRATUM = np.array([1] * 7 + [0] * 3)
PATIENTS = np.arange(10)
MEMBERS = {"overall": np.ones(10, bool), "multi": STRATUM == 1, "single": STRATUM == 0}


def per_sample(values, ddi_pairs=None, all_pairs=None):
    values = np.asarray(values, dtype=np.float64)
    return PerSample(
        {"prauc": values, "jaccard": values / 2, "f1": values, "precision": values, "recall": values, "avg_meds": values * 0 + 2,
         "ddi_rate": np.zeros_like(values) if ddi_pairs is None else np.asarray(ddi_pairs, float)},
        {"ddi_rate": np.ones_like(values) if all_pairs is None else np.asarray(all_pairs, float)},
    )


def test_bootstrap_resamples_patients_with_replacement_within_their_group():
    draws = draw_resamples(PATIENTS, STRATUM, "bootstrap", 200, seed=3)
    again = draw_resamples(PATIENTS, STRATUM, "bootstrap", 200, seed=3)
    np.testing.assert_array_equal(draws.weights, again.weights)
    assert not np.array_equal(draws.weights, draw_resamples(PATIENTS, STRATUM, "bootstrap", 200, seed=4).weights)
    assert (draws.weights[:, STRATUM == 1].sum(1) == 7).all() and (draws.weights[:, STRATUM == 0].sum(1) == 3).all()
    assert draws.weights.max() >= 2  # with replacement: some patient drawn twice
    assert (draws.weights == 0).any()


def test_paper_rounds_draw_80_percent_of_each_group_without_replacement():
    rounds = draw_resamples(PATIENTS, STRATUM, "paper", 10, seed=0)
    assert set(np.unique(rounds.weights)) <= {0.0, 1.0}
    assert (rounds.weights[:, STRATUM == 1].sum(1) == 6).all() and (rounds.weights[:, STRATUM == 0].sum(1) == 2).all()


@pytest.mark.parametrize("kwargs, message", [({"count": 1}, "at least 2"), ({"procedure": "nope"}, "procedure"), ({"fraction": 1.5}, "fraction")])
def test_resamples_reject_bad_arguments(kwargs, message):
    arguments = {"procedure": "bootstrap", "count": 10, "seed": 0} | kwargs
    with pytest.raises(ValueError, match=message):
        draw_resamples(PATIENTS, STRATUM, **arguments)


def test_cells_are_weighted_means_and_a_pooled_ddi_ratio():
    values = np.linspace(0.1, 1.0, 10)
    ddi, pairs = np.array([1, 0, 2, 0, 0, 0, 1, 0, 0, 3.0]), np.array([3, 1, 6, 0, 1, 1, 3, 1, 0, 6.0])
    draws = draw_resamples(PATIENTS, STRATUM, "bootstrap", 50, seed=0)
    cells = cell_values(per_sample(values, ddi, pairs), np.ones(10, bool), MEMBERS, draws)
    point, replicates = cells["multi"]["prauc"]
    assert point == pytest.approx(values[:7].mean())
    w = draws.weights[5]
    assert replicates[5] == pytest.approx((w * values * MEMBERS["multi"]).sum() / (w * MEMBERS["multi"]).sum())
    ddi_point, ddi_replicates = cells["overall"]["ddi_rate"]
    assert ddi_point == pytest.approx(ddi.sum() / pairs.sum())
    assert ddi_replicates[5] == pytest.approx((w * ddi).sum() / (w * pairs).sum())
    assert cells["overall"]["avg_meds"][0] == pytest.approx(2.0)


def test_a_patient_with_several_samples_is_resampled_as_one():
    """all-visits: the unit of resampling is the patient, never a visit."""
    patient_of = np.array([0, 0, 0, 1, 2, 2])  # patient 0 has three evaluated visits
    draws = draw_resamples(patient_of, np.array([1, 0, 1]), "bootstrap", 300, seed=1)
    assert draws.weights.shape == (300, 3)
    values = np.array([1.0, 1.0, 1.0, 0.0, 0.5, 0.5])
    members = {"overall": np.ones(6, bool)}
    _, replicates = cell_values(per_sample(values), np.ones(6, bool), members, draws)["overall"]["prauc"]
    w = draws.weights
    expected = (3 * w[:, 0] * 1.0 + w[:, 2] * 2 * 0.5) / (3 * w[:, 0] + w[:, 1] + 2 * w[:, 2])
    np.testing.assert_allclose(replicates, expected)


def test_a_group_not_fully_served_has_no_cell():
    served = np.array([True] * 7 + [False] * 3)
    cells = cell_values(per_sample(np.ones(10)), served, MEMBERS, draw_resamples(PATIENTS, STRATUM, "bootstrap", 5, 0))
    assert cells["overall"] is None and cells["single"] is None and cells["multi"] is not None


def test_seed_aggregation_adds_between_seed_variance_to_the_patient_error():
    rng = np.random.default_rng(0)
    replicates = rng.normal(0.5, 0.02, size=(3, 400))
    cell = CellData(np.array([0.50, 0.52, 0.47]), replicates)
    out = describe(cell, "bootstrap", n_patients=200)
    se_patients = replicates.mean(0).std(ddof=1)
    assert out["mean"] == pytest.approx(0.49666666)
    assert out["seed_sd"] == pytest.approx(np.std([0.50, 0.52, 0.47], ddof=1))
    assert out["se"] == pytest.approx(np.sqrt(se_patients**2 + out["seed_sd"] ** 2 / 3))
    assert out["seeds"] == [0.5, 0.52, 0.47]
    assert out["ci"][0] < out["mean"] - 1.96 * out["se"]  # few seeds: a t quantile above the normal's
    one_seed = describe(CellData(np.array([0.5]), replicates[:1]), "bootstrap", 200)
    assert one_seed["seed_sd"] is None and one_seed["se"] == pytest.approx(replicates[0].std(ddof=1))


def test_paired_resamples_cancel_what_two_models_share():
    rng = np.random.default_rng(1)
    shared = rng.normal(0.6, 0.2, 10)
    draws = draw_resamples(PATIENTS, STRATUM, "bootstrap", 500, seed=2)
    a = collect([cell_values(per_sample(shared + 0.01), np.ones(10, bool), MEMBERS, draws)])
    b = collect([cell_values(per_sample(shared), np.ones(10, bool), MEMBERS, draws)])
    test = compare(a["overall"]["prauc"], b["overall"]["prauc"], "bootstrap", 10)
    assert test["delta"] == pytest.approx(0.01) and test["se"] < 1e-9 and test["p"] < 1e-6


def test_the_ddi_rate_difference_is_tested_on_the_pooled_ratio():
    draws = draw_resamples(PATIENTS, STRATUM, "bootstrap", 400, seed=0)
    pairs = np.full(10, 10.0)
    low = collect([cell_values(per_sample(np.ones(10), np.full(10, 1.0), pairs), np.ones(10, bool), MEMBERS, draws)])
    high = collect([cell_values(per_sample(np.ones(10), np.array([1, 5, 0, 9, 3, 2, 6, 4, 8, 7.0]), pairs), np.ones(10, bool), MEMBERS, draws)])
    test = compare(low["overall"]["ddi_rate"], high["overall"]["ddi_rate"], "bootstrap", 10)
    assert test["delta"] == pytest.approx(0.1 - 0.45)
    cell = describe(high["overall"]["ddi_rate"], "bootstrap", 10)
    assert cell["ci"][0] < 0.45 < cell["ci"][1] and cell["patient_ci"][0] < 0.45 < cell["patient_ci"][1]


def test_holm_adjusts_in_order_and_keeps_missing_values():
    adjusted = holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": None})
    assert adjusted["a"] == pytest.approx(0.03) and adjusted["c"] == pytest.approx(0.06) and adjusted["b"] == pytest.approx(0.06)
    assert adjusted["d"] is None
    assert holm({"x": 0.6, "y": 0.5}) == {"y": 1.0, "x": 1.0}


def _label_data(values_by_seed, draws, members=MEMBERS, served=None):
    served = np.ones(len(values_by_seed[0]), bool) if served is None else served
    return collect([cell_values(per_sample(v), served, members, draws) for v in values_by_seed])


def test_significance_picks_the_best_baseline_per_column_and_direction():
    draws = draw_resamples(PATIENTS, STRATUM, "bootstrap", 200, seed=0)
    rng = np.random.default_rng(0)
    base = rng.uniform(0.3, 0.7, 10)
    data = {"weak": _label_data([base - 0.2], draws), "strong": _label_data([base], draws), "mine": _label_data([base + 0.05 * rng.random(10)], draws)}
    tests = significance(data, ["mine"], "bootstrap", 10)
    cell = tests["mine"]["overall"]["prauc"]
    assert cell["against"] == "strong" and cell["improves"] and cell["delta"] > 0
    assert tests["mine"]["overall"]["ddi_rate"]["against"] in {"weak", "strong"}
    versus = against_reference(data, "strong", ["weak"], "bootstrap", 10)
    assert versus["weak"]["overall"]["prauc"]["delta"] == pytest.approx(0.2)
    summary = summarise(data, "bootstrap", 10)
    kept = retention(summary, "strong", ["weak"])["weak"]["overall"]
    assert kept["prauc"] == pytest.approx(100 * (base - 0.2).mean() / base.mean()) and "ddi_rate" not in kept


def _simulated_p(rng, effect, procedure="bootstrap", seeds=1, seed_sd=0.0, n=200, resamples=300, paired=True):
    """Two models' per-patient metrics sharing a patient effect (correlation about 0.7), equal in expectation when effect = 0."""
    base = rng.normal(0.6, 0.15, n)
    stratum = (rng.random(n) < 0.35).astype(int)
    members = {"overall": np.ones(n, bool), "multi": stratum == 1, "single": stratum == 0}
    draws = draw_resamples(np.arange(n), stratum, procedure, resamples if procedure == "bootstrap" else 10, int(rng.integers(2**31)))

    def model(shift):
        out = []
        for _ in range(seeds):
            out.append(base + shift + rng.normal(0, seed_sd) + rng.normal(0, 0.1, n))
        return _label_data(out, draws, members)

    a, b = model(effect), model(0.0)
    return compare(a["overall"]["prauc"], b["overall"]["prauc"], procedure, n, paired)["p"]


@pytest.mark.slow
def test_the_default_test_holds_its_level_under_the_null_and_detects_a_real_difference():
    rng = np.random.default_rng(2024)
    null = np.array([_simulated_p(rng, 0.0, resamples=200) for _ in range(400)])  # 1,000 test sets measured 4.4%
    assert (null < 0.05).mean() <= 0.07
    planted = np.array([_simulated_p(rng, 0.04) for _ in range(60)])  # 4 standard errors
    assert (planted < 0.05).mean() >= 0.8


@pytest.mark.slow
def test_training_seed_variance_keeps_the_level_where_patients_alone_would_not():
    """Seed effects equal in expectation: ignoring them rejects far too often; the default does not."""
    rng = np.random.default_rng(7)
    with_seeds = np.array([_simulated_p(rng, 0.0, seeds=3, seed_sd=0.02, resamples=200) for _ in range(200)])
    assert (with_seeds < 0.05).mean() <= 0.07
    one_seed = np.array([_simulated_p(rng, 0.0, seeds=1, seed_sd=0.02, resamples=200) for _ in range(100)])
    assert (one_seed < 0.05).mean() > 0.2  # one seed cannot see the seed variance: why --seeds matters


def test_the_paper_procedure_rejects_a_true_null_most_of_the_time():
    """Kept only for reproduction: its rounds share most patients, so its t-test is not valid."""
    rng = np.random.default_rng(5)
    rejections = np.mean([_simulated_p(rng, 0.0, procedure="paper") < 0.05 for _ in range(100)])
    assert rejections > 0.4


def test_the_retention_interval_covers_the_true_ratio_with_patient_and_seed_variance():
    """Student = 0.9 x teacher in expectation, seed effects on both: the 95% interval of the percentage covers 90%
    in at least nine test sets of ten (by simulation), and its point is the ratio of the means."""
    from bench.evaluate import ratio_interval

    rng = np.random.default_rng(11)
    covered = []
    for _ in range(150):
        n = 200
        base = rng.normal(0.6, 0.15, n)
        stratum = (rng.random(n) < 0.35).astype(int)
        members = {"overall": np.ones(n, bool), "multi": stratum == 1, "single": stratum == 0}
        draws = draw_resamples(np.arange(n), stratum, "bootstrap", 200, int(rng.integers(2**31)))

        def model(scale):
            return _label_data([scale * base + rng.normal(0, 0.02) + rng.normal(0, 0.1, n) for _ in range(3)], draws, members)

        student, teacher = model(0.9)["overall"]["prauc"], model(1.0)["overall"]["prauc"]
        interval = ratio_interval(student, teacher, "bootstrap", n)
        assert interval["percent"] == pytest.approx(100 * student.mean / teacher.mean)
        covered.append(interval["ci"][0] <= 90.0 <= interval["ci"][1])
    assert np.mean(covered) >= 0.9
