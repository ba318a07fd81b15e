from __future__ import annotations

import dataclasses
import re
import sys
from collections import Counter

import numpy as np
import pytest
from rdkit import Chem

from bench.metrics import per_sample_metrics
from data_prep import synthetic
from data_prep.code_names import icd9_diagnosis_names, icd9_procedure_names
from data_prep.dataset import PreparedDataset
from data_prep.stats import realism_statistics
from data_prep.synthetic import ICU_STAY, SyntheticOptions, cohort_model, generate, oracle_proba

SMALL = SyntheticOptions(patients=200)


@pytest.fixture(scope="module")
def cohort():
    return generate(SMALL)


def all_visits(dataset):
    return [v for p in dataset.patients for v in p.visits]


def test_same_seed_same_dataset_other_seed_other_dataset(cohort):
    assert generate(SMALL).fingerprint == cohort.fingerprint
    assert generate(SyntheticOptions(patients=200, seed=1)).fingerprint != cohort.fingerprint
    other_split = generate(SyntheticOptions(patients=200, split_seed=1))
    assert other_split.patients == cohort.patients and other_split.split != cohort.split


def test_saved_and_loaded_cohort_is_identical(cohort, tmp_path):
    assert PreparedDataset.load(cohort.save(tmp_path / "synth")).fingerprint == cohort.fingerprint


def test_the_default_is_table_iii_size_and_mix_per_profile():
    assert SyntheticOptions().patients == 908 + 5442 and SyntheticOptions().single_visit_fraction == pytest.approx(908 / 6350)
    mimic4 = SyntheticOptions(profile="mimic4")
    assert mimic4.patients == 2877 + 6029 and mimic4.single_visit_fraction == pytest.approx(2877 / 8906)
    assert SyntheticOptions(profile="mimic4", patients=50, icu_share=0.5).icu_share == 0.5  # explicit values win


def test_single_visit_share_visit_counts_and_split(cohort):
    counts = np.array([len(p.visits) for p in cohort.patients])
    assert len(counts) == 200
    assert 0.06 < np.mean(counts == 1) < 0.25  # Table III's MIMIC-III: 908 of 6,350
    assert counts.max() <= 20 and set(counts[counts > 1]) <= set(range(2, 21))
    assert Counter(cohort.split.values()) == {"train": 160, "val": 20, "test": 20}


def test_visits_have_increasing_mimic_style_admit_times(cohort):
    stamp = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")
    for patient in cohort.patients:
        times = [v.admit_time for v in patient.visits]
        assert all(stamp.match(t) for t in times)
        assert all(a < b for a, b in zip(times, times[1:]))


def test_visit_sizes_are_mimic_like_and_never_empty(cohort):
    visits = all_visits(cohort)
    assert all(v.diagnoses and v.procedures and v.medications and v.conditions for v in visits)
    assert 8.5 <= np.mean([len(v.diagnoses) for v in visits]) <= 13
    assert 2.5 <= np.mean([len(v.procedures) for v in visits]) <= 5
    assert 9.5 <= np.mean([len(v.medications) for v in visits]) <= 14


def test_codes_are_real_icd9_and_atc_with_their_names(cohort):
    dx, sg = icd9_diagnosis_names(), icd9_procedure_names()
    assert cohort.diagnoses.names == [dx[c] for c in cohort.diagnoses.codes]
    assert cohort.procedures.names == [sg[c] for c in cohort.procedures.codes]
    assert cohort.diagnoses.names[cohort.diagnoses.index("4280")] == "Congestive heart failure, unspecified"
    assert cohort.diagnoses.names[cohort.diagnoses.index("0389")] == "Unspecified septicemia"
    assert cohort.medications.names[cohort.medications.index("C03C")] == "high-ceiling diuretics"
    assert all(re.fullmatch(r"[A-Z]\d{2}[A-Z]", code) for code in cohort.medications.codes)


def test_profiles_have_exactly_the_specified_fields_and_values(cohort):
    assert cohort.profile_fields == ["age", "gender", "insurance", "ethnicity", "marital_status"]
    assert cohort.profile_values["age"] == ["18-39", "40-64", "65-79", "80+"]
    assert cohort.profile_values["gender"] == ["F", "M"]
    assert {"Medicare", "Medicaid", "Private"} <= set(cohort.profile_values["insurance"])
    profiles = [cohort.profile_text(p.profile) for p in cohort.patients]
    old = [p["insurance"] for p in profiles if p["age"] in ("65-79", "80+")]
    assert Counter(old).most_common(1)[0][0] == "Medicare"
    assert {p["gender"] for p in profiles} == {"F", "M"}


def test_chronic_conditions_persist_and_their_drugs_recur(cohort):
    chronic = {name for name, is_chronic in zip(cohort_model().condition_names, cohort_model().chronic) if is_chronic}
    for patient in cohort.patients:
        for earlier, later in zip(patient.visits, patient.visits[1:]):
            assert chronic & set(earlier.conditions) <= set(later.conditions)
    thyroid = cohort.medications.index("H03A")  # given only for hypothyroidism, a chronic condition
    pairs = [(thyroid in a.medications, thyroid in b.medications) for p in cohort.patients for a, b in zip(p.visits, p.visits[1:])]
    base_rate = np.mean([b for _, b in pairs])
    recurrence = np.mean([b for a, b in pairs if a])
    assert recurrence > 0.7 and recurrence > 4 * base_rate


def test_rare_codes_get_the_drugs_of_their_common_siblings():
    dataset = generate(SyntheticOptions(patients=1000))
    family = cohort_model().diagnosis_families[cohort_model().state_index["hypothyroidism"]]
    common, rare = family[0], set(family[3:])
    levothyroxine = dataset.medications.index("H03A")  # levothyroxine: given for hypothyroidism only
    code_of = dataset.diagnoses.codes

    def levothyroxine_rate(codes: set[str]) -> float:
        hits = [levothyroxine in v.medications for v in all_visits(dataset) if codes & {code_of[d] for d in v.diagnoses}]
        return float(np.mean(hits))

    counts = Counter(code_of[d] for v in all_visits(dataset) for d in v.diagnoses)
    assert counts[common] > 3 * max(counts[c] for c in rare)  # Zipf: the tail siblings are rare
    assert abs(levothyroxine_rate({common}) - levothyroxine_rate(rare)) < 0.1


def test_the_interaction_graph_is_the_published_twosides_graph_and_symmetric(cohort):
    adj = cohort.ddi_adj
    assert (adj == adj.T).all() and not adj.diagonal().any()
    header = synthetic._resource_text("ddi_class_pairs.csv").splitlines()[0]
    assert header.startswith("#") and "MICRON" in header and "TWOSIDES" in synthetic._resource_text("ddi_class_pairs.csv")
    pairs = {(r["atc3_a"], r["atc3_b"]) for r in synthetic._resource_rows("ddi_class_pairs.csv", ("atc3_a", "atc3_b"))}
    codes = cohort.medications.codes
    assert {tuple(sorted((codes[i], codes[j]))) for i, j in zip(*np.nonzero(np.triu(adj)))} == {p for p in pairs if set(p) <= set(codes)}


@pytest.fixture(scope="module")
def realism():
    """The default profile at 1,500 patients: its persistence, interaction and per-visit figures do not depend on size."""
    dataset = generate(SyntheticOptions(patients=1500))
    return realism_statistics(dataset), dataset


def test_the_default_cohort_lies_in_the_ranges_of_mimic(realism):
    """Issue #20's ranges: the open MIMIC demos for persistence and interactions, Table III for the rest."""
    stats, dataset = realism
    visits = all_visits(dataset)
    assert 0.6 <= stats["multi_visit_share"] <= 0.9
    assert 2.0 <= len(visits) / len(dataset.patients) <= 3.0
    assert 100 <= dataset.n_medications <= 140
    assert 9.5 <= np.mean([len(v.medications) for v in visits]) <= 14
    assert 8.5 <= np.mean([len(v.diagnoses) for v in visits]) <= 13
    assert 2.5 <= np.mean([len(v.procedures) for v in visits]) <= 5
    assert 0.55 <= stats["medications_in_previous_visit"] <= 0.75
    assert 0.40 <= stats["consecutive_visit_jaccard"] <= 0.60
    assert 0.06 <= stats["ddi_rate_ground_truth"] <= 0.10
    assert 0.05 <= stats["ddi_density"] <= 0.10
    assert dataset.n_diagnoses >= 1000  # already at 1,500 patients; the procedures' tail needs the default size for 500+
    assert len(cohort_model().diagnosis_codes) >= 1000 and len(cohort_model().procedure_codes) >= 500


def test_the_mimic4_profile_has_fewer_codes_per_visit_and_more_single_visit_patients(realism):
    mimic4 = generate(SyntheticOptions(profile="mimic4", patients=1500))
    visits, mimic3_visits = all_visits(mimic4), all_visits(realism[1])
    assert 0.25 < np.mean([len(p.visits) == 1 for p in mimic4.patients]) < 0.40  # Table III: 2,877 of 8,906
    for kind in ("diagnoses", "procedures", "medications"):
        assert np.mean([len(getattr(v, kind)) for v in visits]) < np.mean([len(getattr(v, kind)) for v in mimic3_visits])
    assert np.mean([ICU_STAY in v.conditions for v in visits]) < 0.6 <= np.mean([ICU_STAY in v.conditions for v in mimic3_visits])


def test_regimens_persist_and_history_tells_what_the_current_codes_cannot(realism):
    """A hypertensive patient's class (calcium-channel blocker, beta blocker, ACE inhibitor, ...) is the patient's
    own choice: the diagnosis code is the same for all, the previous visit tells which."""
    dataset = realism[1]
    ccb = dataset.medications.index("C08C")
    regimen = "essential hypertension: calcium-channel blocker"
    kept, pairs, after_ccb, without = 0, 0, [], []
    for patient in dataset.patients:
        for earlier, later in zip(patient.visits, patient.visits[1:]):
            if "essential hypertension" in earlier.conditions and "essential hypertension" in later.conditions:
                pairs += 1
                kept += (regimen in earlier.conditions) == (regimen in later.conditions)
                (after_ccb if ccb in earlier.medications else without).append(ccb in later.medications)
    assert kept / pairs > 0.8  # redrawn with probability regimen_switch_rate (0.15), often to the same class
    assert np.mean(after_ccb) > 0.6 and np.mean(without) < 0.25


def test_smiles_parse_and_every_medication_has_one_to_three(cohort):
    assert all(1 <= len(s) <= 3 for s in cohort.smiles)
    assert all(Chem.MolFromSmiles(s) is not None for smiles in cohort.smiles for s in smiles)
    furosemide = Chem.CanonSmiles("NS(=O)(=O)c1cc(C(=O)O)c(NCc2ccco2)cc1Cl")
    assert furosemide in {Chem.CanonSmiles(s) for s in cohort.smiles[cohort.medications.index("C03C")]}


def test_oracle_beats_the_most_frequent_predictor(cohort):
    samples = cohort.samples("train")  # 160 samples: a stable comparison at this size
    oracle = oracle_proba(cohort, samples)
    assert oracle.shape == (len(samples), cohort.n_medications) and ((oracle >= 0) & (oracle <= 1)).all()
    frequency = np.zeros(cohort.n_medications)
    for visit in all_visits(cohort):
        frequency[list(visit.medications)] += 1
    most_frequent = np.tile(frequency / frequency.max(), (len(samples), 1))
    targets = [s.target for s in samples]

    def prauc(proba):
        predicted = [np.flatnonzero(row >= 0.5) for row in proba]
        return per_sample_metrics(proba, predicted, targets, cohort.ddi_adj)["prauc"].mean()

    assert prauc(oracle) > prauc(most_frequent) + 0.1


def test_oracle_refuses_data_without_latent_conditions(tiny_dataset, cohort):
    with pytest.raises(ValueError, match="synthetic cohort"):
        oracle_proba(tiny_dataset, tiny_dataset.samples("test"))
    sample = cohort.samples("test")[0]
    stripped = dataclasses.replace(sample, conditions=())
    with pytest.raises(ValueError, match=f"sample {re.escape(sample.sample_id)} has none"):
        oracle_proba(cohort, [stripped])


def test_cohort_needs_no_datamol(monkeypatch):
    """The SMILES ship in data_prep/resources/drug_smiles.csv: a plain `pip install` makes the cohort."""
    monkeypatch.setitem(sys.modules, "datamol", None)  # `import datamol` fails, find_spec finds nothing
    cohort_model.cache_clear()
    try:
        assert all(1 <= len(smiles) <= 3 for smiles in cohort_model().smiles)
    finally:
        cohort_model.cache_clear()


def test_every_drug_has_one_chembl_smiles_row_in_the_same_order():
    drugs = synthetic._resource_rows("drugs.csv", ("drug",))
    smiles = synthetic._resource_rows("drug_smiles.csv", ("drug", "chembl_id", "smiles"))
    assert [row["drug"] for row in smiles] == [row["drug"] for row in drugs]
    assert all(re.fullmatch(r"CHEMBL\d+", row["chembl_id"]) and Chem.MolFromSmiles(row["smiles"]) for row in smiles)


def test_a_drug_without_smiles_is_named(monkeypatch):
    text = synthetic._resource_text

    def without_furosemide(filename: str) -> str:
        lines = text(filename).splitlines(keepends=True)
        return "".join(line for line in lines if not line.startswith("furosemide,")) if filename == "drug_smiles.csv" else text(filename)

    monkeypatch.setattr(synthetic, "_resource_text", without_furosemide)
    with pytest.raises(ValueError, match="drugs.csv: furosemide has no SMILES in drug_smiles.csv"):
        synthetic._class_smiles(cohort_model().medication_codes)


@pytest.mark.parametrize("bad", [{"patients": 0}, {"max_visits": 1}, {"regimen_switch_rate": 1.5}, {"profile": "mimic5"}, {"tail_diagnoses_mean": -1.0}])
def test_bad_options_are_refused(bad):
    with pytest.raises(ValueError, match="synthetic cohort"):
        SyntheticOptions(**bad)
