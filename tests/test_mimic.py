"""The MIMIC readers: hand-made tiny tables in tmp (MIMIC-III, MIMIC-IV hosp/) and the real demo."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from rdkit import Chem

from data_prep.mimic import MimicOptions, locate, read_mimic
from data_prep.mimic_layout import MIMIC3, MIMIC4

LAYOUTS = {"mimic3": MIMIC3, "mimic4": MIMIC4}
from data_prep.molecules import build_molecule_set

DEMO = Path(__file__).resolve().parents[2] / "shared" / "data" / "mimic-iii-demo-1.4"
AUX = DEMO.parent / "aux"

# NDCs of the real aux files: J01D (cefazolin), J05A, N05A, and A10B reachable only via the fallback.
CEFAZOLIN, ANTIVIRAL, ANTIPSYCHOTIC, FALLBACK_ONLY = "00338500341", "58016069000", "00078012706", "00002143361"

MIMIC3_TABLES = {
    "patients": "row_id,subject_id,gender,dob\n1,1,F,2100-03-01 00:00:00\n2,2,M,1850-01-01 00:00:00\n",
    # hadm_id order disagrees with time: 900 is the first admission of patient 1.
    "admissions": (
        "row_id,subject_id,hadm_id,admittime,insurance,marital_status,ethnicity\n"
        "1,1,100,2150-06-01 10:00:00,Medicare,MARRIED,WHITE\n"
        "2,1,900,2150-01-01 21:00:00,Private,,WHITE\n"
        "3,2,300,2150-02-01 08:00:00,Medicare,WIDOWED,ASIAN\n"
    ),
    "diagnoses_icd": "row_id,subject_id,hadm_id,seq_num,icd9_code\n1,1,100,1,4019\n2,1,900,1,0389\n3,1,900,2,4019\n4,2,300,1,0389\n",
    "procedures_icd": "row_id,subject_id,hadm_id,seq_num,icd9_code\n1,1,100,1,9604\n2,1,900,1,3893\n3,2,300,1,9604\n",
    "prescriptions": (
        "row_id,subject_id,hadm_id,startdate,ndc\n"
        f"1,1,900,2150-01-01 00:00:00,{CEFAZOLIN}\n"
        f"2,1,900,2150-01-04 00:00:00,{ANTIPSYCHOTIC}\n"  # three days in: outside the first 24 hours
        f"3,1,100,2150-06-02 00:00:00,{ANTIVIRAL}\n"
        "4,1,100,2150-06-01 00:00:00,0\n"
        f"5,2,300,2150-02-01 00:00:00,{FALLBACK_ONLY}\n"
    ),
}


def write_tables(folder: Path, tables: dict[str, str], *, upper: bool = False) -> Path:
    """Write tables as the demo does (lower-case, .csv) or as the full release does (upper-case, .csv.gz)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in tables.items():
        if upper:
            header, _, body = text.partition("\n")
            with gzip.open(folder / f"{name.upper()}.csv.gz", "wt") as fh:
                fh.write(header.upper() + "\n" + body)
        else:
            (folder / f"{name}.csv").write_text(text)
    return folder


def prepare(root: Path, version: str = "mimic3", **options):
    return read_mimic(locate(LAYOUTS[version], root, AUX), MimicOptions(**options))


def codes_of(dataset, patient, kind):
    vocabulary = getattr(dataset, kind)
    return [sorted(vocabulary.codes[i] for i in getattr(v, kind)) for v in patient.visits]


@pytest.fixture(scope="module")
def tiny_mimic3(tmp_path_factory):
    root = write_tables(tmp_path_factory.mktemp("mimic3"), MIMIC3_TABLES)
    return prepare(root, required_code_kinds=("diagnoses", "medications"))


def test_visits_follow_admission_time_not_hadm_id(tiny_mimic3):
    patient = next(p for p in tiny_mimic3.patients if p.patient_id == "1")
    assert [v.admit_time for v in patient.visits] == ["2150-01-01T21:00:00", "2150-06-01T10:00:00"]
    assert codes_of(tiny_mimic3, patient, "diagnoses") == [["0389", "4019"], ["4019"]]


def test_codes_stay_strings_with_leading_zeros(tiny_mimic3):
    assert "0389" in tiny_mimic3.diagnoses.codes and "389" not in tiny_mimic3.diagnoses.codes
    assert tiny_mimic3.diagnoses.names[tiny_mimic3.diagnoses.index("0389")] == "Unspecified septicemia"


def test_first_24_hours_rule_and_ndc_fallback(tiny_mimic3):
    by_id = {p.patient_id: p for p in tiny_mimic3.patients}
    # the antipsychotic started on day 4 is dropped; the day-after start (< admit + 24 h) is kept
    assert codes_of(tiny_mimic3, by_id["1"], "medications") == [["J01D"], ["J05A"]]
    assert codes_of(tiny_mimic3, by_id["2"], "medications") == [["A10B"]]  # only via ndc2atc's NDC column
    coverage = tiny_mimic3.meta["mapping_coverage"]
    assert coverage["rows_with_ndc"] == 4 and coverage["rows_mapped_via_rxcui"] == 3 and coverage["rows_mapped"] == 4


def test_options_change_the_pipeline(tmp_path):
    root = write_tables(tmp_path, MIMIC3_TABLES)
    every_hour = prepare(root, prescription_window="all", ndc_fallback=False, required_code_kinds=("medications",))
    assert "N05A" in every_hour.medications.codes and "A10B" not in every_hour.medications.codes
    assert [p.patient_id for p in every_hour.patients] == ["1"]  # patient 2's only drug needed the fallback
    # patient 2 has a single visit
    multi_only = prepare(root, min_visits=2)
    assert [p.patient_id for p in multi_only.patients] == ["1"]


def test_prescription_windows_as_the_sources_have_them(tmp_path):
    root = write_tables(tmp_path, MIMIC3_TABLES)
    rules = ("first-hours", "first-start-date", "all")
    by_rule = {rule: prepare(root, prescription_window=rule, required_code_kinds=("diagnoses", "medications")) for rule in rules}

    def first_patient(dataset):
        return codes_of(dataset, next(p for p in dataset.patients if p.patient_id == "1"), "medications")

    assert first_patient(by_rule["first-hours"]) == [["J01D"], ["J05A"]]
    # the earliest start date counts rows with an NDC only: the NDC-0 row of June 1 does not hide June 2
    assert first_patient(by_rule["first-start-date"]) == [["J01D"], ["J05A"]]
    assert first_patient(by_rule["all"]) == [["J01D", "N05A"], ["J05A"]]
    assert by_rule["all"].meta["prescription_rows_by_window"] == {"first-hours": 3, "first-start-date": 3, "all": 4}


def test_profiles_band_ages_and_keep_mimic_values(tiny_mimic3):
    by_id = {p.patient_id: tiny_mimic3.profile_text(p.profile) for p in tiny_mimic3.patients}
    assert tiny_mimic3.profile_fields == ["age", "gender", "insurance", "ethnicity", "marital_status"]
    # patient 1 is 50 at the last visit; patient 2's shifted birth date (>89 years) is 80+
    assert by_id["1"] == {"age": "40-64", "gender": "F", "insurance": "Medicare", "ethnicity": "WHITE", "marital_status": "MARRIED"}
    assert by_id["2"]["age"] == "80+"


def test_full_release_layout_reads_the_same(tmp_path, tiny_mimic3):
    root = write_tables(tmp_path, MIMIC3_TABLES, upper=True)
    upper = prepare(root, required_code_kinds=("diagnoses", "medications"))
    assert upper.patients == tiny_mimic3.patients
    assert upper.diagnoses.codes == tiny_mimic3.diagnoses.codes


def test_mimic4_hosp_layout_keeps_icd_versions_apart(tmp_path):
    hosp = write_tables(
        tmp_path / "hosp",
        {
            "patients": "subject_id,gender,anchor_age,anchor_year\n7,M,30,2150\n",
            "admissions": "subject_id,hadm_id,admittime,insurance,race,marital_status\n7,20,2160-01-01 08:00:00,Other,BLACK/AFRICAN AMERICAN,SINGLE\n",
            "diagnoses_icd": "subject_id,hadm_id,seq_num,icd_code,icd_version\n7,20,1,4019,9\n7,20,2,I10,10\n7,20,3,E119,9\n7,20,4,E119,10\n",
            "procedures_icd": "subject_id,hadm_id,seq_num,icd_code,icd_version\n7,20,1,9604,9\n",
            "prescriptions": f"subject_id,hadm_id,starttime,ndc\n7,20,2160-01-01 09:30:00,{CEFAZOLIN}\n7,20,2160-01-03 09:30:00,{ANTIVIRAL}\n",
            "d_icd_diagnoses": "icd_code,icd_version,long_title\nI10,10,Essential (primary) hypertension\n4019,9,Unspecified essential hypertension\n",
        },
    )
    dataset = prepare(tmp_path, "mimic4")
    codes = dataset.diagnoses.codes
    assert codes == ["ICD10:E119", "ICD10:I10", "ICD9:4019", "ICD9:E119"]
    names = dict(zip(codes, dataset.diagnoses.names))
    assert names["ICD10:I10"] == "Essential (primary) hypertension"
    assert names["ICD10:E119"] == "Type 2 diabetes mellitus without complications"  # from code_names
    assert dataset.medications.codes == ["J01D"]
    assert dataset.profile_text(dataset.patients[0].profile)["age"] == "40-64"  # 30 + (2160 - 2150)
    assert dataset.profile_text(dataset.patients[0].profile)["ethnicity"] == "BLACK/AFRICAN AMERICAN"
    assert prepare(hosp, "mimic4").patients == dataset.patients  # the hosp/ folder itself works too


@pytest.fixture(scope="module")
def demo():
    return prepare(DEMO)


def test_demo_prepares_end_to_end(demo):
    assert 40 <= len(demo.patients) <= 100
    assert sum(p.group == "multi" for p in demo.patients) >= 5
    assert all(v.diagnoses and v.procedures and v.medications for p in demo.patients for v in p.visits)
    for patient in demo.patients:
        times = [v.admit_time for v in patient.visits]
        assert times == sorted(times)
    coverage = demo.meta["mapping_coverage"]
    assert 0.74 < coverage["rows_mapped_via_rxcui"] / coverage["rows_with_ndc"] < 0.78
    assert 0.80 < coverage["rows_mapped"] / coverage["rows_with_ndc"] < 0.84
    assert len(set(demo.split.values())) == 3
    assert demo.meta["prescription_rows_by_window"] == {"first-hours": 3083, "first-start-date": 2057, "all": 7284}


def test_demo_graphs_and_molecules_are_valid(demo):
    assert np.array_equal(demo.ddi_adj, demo.ddi_adj.T) and not demo.ddi_adj.diagonal().any()
    assert demo.ddi_adj.sum() > 0
    assert all(demo.smiles)  # require_smiles: every medication has a molecule
    assert all(Chem.MolFromSmiles(smiles) is not None for group in demo.smiles for smiles in group)
    molecules = build_molecule_set(demo.smiles[:8])  # graphs for a few (the full set takes ~10 s)
    assert molecules.medications_with_molecules.all()
    assert not molecules.invalid_smiles
    for graph in molecules.graphs:  # single-atom molecules (ions) have no bonds
        assert graph.num_nodes > 0 and graph.x.shape[0] == graph.num_nodes
        assert graph.edge_index.numel() == 0 or int(graph.edge_index.max()) < graph.num_nodes


def test_earlier_visits_keep_their_own_profile(demo):
    """Insurance or age band of an earlier admission, not the last one's: no later admission leaks into its sample."""
    changed = [(p, v) for p in demo.patients for v in p.visits[:-1] if v.profile]
    assert changed, "the demo has patients whose profile changes between admissions"
    assert all(v.profile != p.profile for p, v in changed)
    assert all(not p.visits[-1].profile for p in demo.patients)  # the last visit's profile is the patient's
    patient, visit = changed[0]
    part = demo.split[patient.patient_id]
    sample = next(s for s in demo.samples(part, "all-visits") if s.patient_id == patient.patient_id and s.visit_number == patient.visits.index(visit) + 1)
    assert sample.profile == visit.profile
