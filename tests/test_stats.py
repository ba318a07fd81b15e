"""The realism figures (``data_prep.stats``) on a cohort whose figures are known by hand, and in ``bench data info``."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from bench.cli import main
from data_prep.dataset import Patient, Visit, Vocabulary, assemble
from data_prep.stats import REALISM_KEYS, dataset_statistics, realism_statistics


def cohort():
    ddi = np.zeros((4, 4), dtype=np.uint8)
    ddi[0, 1] = ddi[1, 0] = 1
    visit = lambda meds: Visit((0,), (0,), meds)  # noqa: E731
    patients = [
        Patient("a", (visit((0, 1, 2)), visit((0, 1)), visit((2, 3))), (0,)),  # pairs: {0,1}/{0,1,2}, {2,3}/{0,1}
        Patient("b", (visit((0, 3)),), (0,)),
    ]
    return assemble(
        name="hand",
        patients=patients,
        diagnoses=Vocabulary("diagnosis", ["D"], ["d"]),
        procedures=Vocabulary("procedure", ["P"], ["p"]),
        medications=Vocabulary("medication", ["M0", "M1", "M2", "M3"], ["m0", "m1", "m2", "m3"]),
        profile_values={"age": ["18-39"]},
        ddi_adj=ddi,
        smiles=[["C"], ["CC"], ["CCC"], ["CCCC"]],
        seed=0,
    )


def test_realism_figures_by_hand():
    stats = realism_statistics(cohort())
    assert stats["visit_pairs"] == 2 and stats["multi_visit_share"] == 0.5
    assert stats["medications_in_previous_visit"] == pytest.approx((1.0 + 0.0) / 2)  # {0,1} all in {0,1,2}; {2,3} none in {0,1}
    assert stats["medications_in_any_earlier_visit"] == pytest.approx((1.0 + 0.5) / 2)  # 2 was in the first visit
    assert stats["consecutive_visit_jaccard"] == pytest.approx((2 / 3 + 0.0) / 2)
    assert stats["ddi_rate_ground_truth"] == pytest.approx(2 / (3 + 1 + 1 + 1))  # (0,1) twice among 6 pairs
    assert stats["ddi_density"] == pytest.approx(1 / 6)
    assert set(REALISM_KEYS) <= set(dataset_statistics(cohort()))


def test_data_info_prints_the_realism_figures_for_the_synthetic_cohort(tmp_path):
    arguments = ["data", "info", "--dataset", "synth", "--patients", "300", "--cache-dir", str(tmp_path)]
    shown = CliRunner().invoke(main, arguments)
    assert shown.exit_code == 0, shown.output
    for label in ("medications in previous visit", "consecutive visit jaccard", "ddi rate ground truth", "ddi density", "patients single visit"):
        assert label in shown.output
    as_json = json.loads(CliRunner().invoke(main, [*arguments, "--json"]).output)
    assert 0.55 <= as_json["medications_in_previous_visit"] <= 0.75 and as_json["patients"] == 300


def test_profile_is_a_synthetic_option(tmp_path):
    result = CliRunner().invoke(main, ["data", "info", "--dataset", "synth", "--profile", "mimic4", "--patients", "200", "--cache-dir", str(tmp_path), "--json"])
    assert result.exit_code == 0 and json.loads(result.output)["patients"] == 200
    refused = CliRunner().invoke(main, ["data", "info", "--dataset", "mimic3", "--profile", "mimic4", "--root", "x", "--aux", "y"])
    assert refused.exit_code != 0 and "--profile applies to synth" in refused.output
