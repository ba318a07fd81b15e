"""Every kind of bad input gives one DataError naming the file and the fault, and leaves no cache entry."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from bench.cli import main
from data_prep.prepare import load_dataset
from data_prep.tables import DataError

DEMO = Path(__file__).resolve().parents[2] / "shared" / "data" / "mimic-iii-demo-1.4"
AUX = DEMO.parent / "aux"


@pytest.fixture
def folders(tmp_path):
    """Links to the demo tables and aux files; a case replaces the one file it breaks."""
    root, aux = tmp_path / "mimic", tmp_path / "aux"
    for source, target in ((DEMO, root), (AUX, aux)):
        target.mkdir()
        for path in source.iterdir():
            (target / path.name).symlink_to(path)
    return root, aux, tmp_path / "cache"


def replace(path: Path, text: str) -> None:
    path.unlink()
    path.write_text(text)


def expect_error(folders, pattern: str) -> None:
    root, aux, cache = folders
    with pytest.raises(DataError, match=pattern):
        load_dataset("mimic3", paths={"root": root, "aux": aux}, cache_dir=cache)
    assert not cache.exists() or not any(cache.iterdir())


def test_missing_table(folders):
    (folders[0] / "PROCEDURES_ICD.csv").unlink()
    expect_error(folders, r"mimic: missing table procedures_icd")


def test_missing_column(folders):
    path = folders[0] / "DIAGNOSES_ICD.csv"
    replace(path, "row_id,subject_id,hadm_id,seq_num\n1,10006,142345,1\n")
    expect_error(folders, r"DIAGNOSES_ICD.csv: missing column\(s\) icd9_code \(the header has: row_id, subject_id")


def test_truncated_gzip_table(folders):
    root = folders[0]
    data = gzip.compress((DEMO / "PRESCRIPTIONS.csv").read_bytes())
    (root / "PRESCRIPTIONS.csv").unlink()
    (root / "PRESCRIPTIONS.csv.gz").write_bytes(data[: len(data) // 2])
    expect_error(folders, r"PRESCRIPTIONS.csv.gz: unreadable or truncated file")


def test_codes_written_as_numbers(folders):
    path = folders[0] / "DIAGNOSES_ICD.csv"
    replace(path, "row_id,subject_id,hadm_id,seq_num,icd9_code\n1,10006,142345,1,V290\n2,10006,142345,2,4019.0\n3,10006,142345,3,389.0\n")
    expect_error(folders, r"DIAGNOSES_ICD.csv: column icd9_code holds codes written as numbers \(digits, a decimal point, digits: 2 rows, the first on line 3\)")


# Each breaks one table the way a truncated download or a bad export does; the message may name the file,
# a line, a column and counts, never a value of a row (ids and dates of credentialed data).
ROW_VALUES = ("126853", "43746", "167181", "142345", "10006", "4019.0", "2199-13-45", "ICD11")


def break_table(folders, name: str, edit) -> Path:
    path = folders[0] / name
    lines = (DEMO / name).read_text().splitlines()
    replace(path, "\n".join(edit(lines)) + "\n")
    return path


@pytest.mark.parametrize(
    "name, edit, message",
    [
        # cut off mid-row: pyarrow's parse error would quote the row
        ("PRESCRIPTIONS.csv", lambda lines: lines[:5] + ["126853,43746,167181,2199-13-45 00:00:00,4019.0"],
         r"PRESCRIPTIONS.csv: line 6 has 5 columns where the header has 19: a truncated or malformed file"),
        ("ADMISSIONS.csv", lambda lines: lines + [lines[1]], r"ADMISSIONS.csv: 1 hadm_id\(s\) appear on more than one row \(the first repeat on line \d+\)"),
        ("ADMISSIONS.csv", lambda lines: lines[:3] + [",".join(f[:3] + ["2199-13-45"] + f[4:]) for f in [lines[3].split(",")]] + lines[4:],
         r"ADMISSIONS.csv: column admittime holds 1 values that are not date-times \(the first on line 4\)"),
    ],
)
def test_malformed_rows_are_named_by_line_never_by_their_values(folders, name, edit, message):
    break_table(folders, name, edit)
    root, aux, cache = folders
    with pytest.raises(DataError, match=message) as caught:
        load_dataset("mimic3", paths={"root": root, "aux": aux}, cache_dir=cache)
    assert not [value for value in ROW_VALUES if value in str(caught.value)]


def test_a_pyarrow_error_keeps_its_category_and_drops_the_row_it_quotes():
    import pyarrow as pa

    from data_prep.tables import describe_read_error

    error = pa.ArrowInvalid("CSV parse error: Expected 19 columns, got 14: 126853,43746,167181")
    assert describe_read_error(error) == "ArrowInvalid: CSV parse error"


def test_icd_versions_other_than_9_and_10_are_counted_not_quoted(tmp_path):
    from data_prep.mimic import _versioned
    from data_prep.tables import read_table

    path = tmp_path / "diagnoses_icd.csv"
    path.write_text("subject_id,hadm_id,icd_code,icd_version\n10006,142345,4019,9\n10006,142345,A01,ICD11\n")
    table = read_table(path, ["icd_code", "icd_version"])
    with pytest.raises(DataError, match=r"column icd_version must be 9 or 10, but 1 rows hold another value \(the first on line 3\)") as caught:
        _versioned(table["icd_code"], table["icd_version"], path)
    assert "ICD11" not in str(caught.value)


def test_aux_file_in_the_wrong_format(folders):
    replace(folders[1] / "ndc2RXCUI.txt", "ndc,rxcui\n00002140701,853004\n")
    expect_error(folders, r"ndc2RXCUI.txt: not a Python dict literal")


def test_aux_atc_table_without_atc_column(folders):
    path = folders[1] / "ndc2atc_level4.csv.gz"
    path.unlink()
    path.write_bytes(gzip.compress(b"YEAR,MONTH,NDC,RXCUI,CODE\n2014,11,0002-1433-61,1551300,A10BJ\n"))
    expect_error(folders, r"ndc2atc_level4.csv.gz: missing column ATC5 or ATC4")


def test_drug_atc_lines_are_checked(tmp_path):
    from data_prep.aux_maps import load_stitch_to_atc3

    (tmp_path / "drug-atc.csv").write_text("CID1,A01AA01\nnot-a-cid,hello\n")
    with pytest.raises(DataError, match=r"drug-atc.csv: line 2 is not 'CID...,ATC,...'") as caught:
        load_stitch_to_atc3(tmp_path / "drug-atc.csv")
    assert "hello" not in str(caught.value) and "not-a-cid" not in str(caught.value)


def test_cli_turns_bad_input_into_one_line_and_a_nonzero_exit(folders):
    root, aux, cache = folders
    (root / "ADMISSIONS.csv").unlink()
    result = CliRunner().invoke(main, ["data", "info", "--dataset", "mimic3", "--root", str(root), "--aux", str(aux), "--cache-dir", str(cache)])
    assert result.exit_code != 0
    assert result.output.strip().splitlines() == [f"Error: {root}: missing table admissions (looked for admissions.csv or admissions.csv.gz, any case)"]
    assert not cache.exists() or not any(cache.iterdir())


def test_codes_that_lost_their_leading_zeros(folders):
    """A spreadsheet saved 0389 as 389: no code starts with 0, and codes known only with a leading 0 are common."""
    path = folders[0] / "DIAGNOSES_ICD.csv"
    text = (DEMO / "DIAGNOSES_ICD.csv").read_text().splitlines()
    rows = [text[0]] + [",".join(f[:-1] + [f[-1].lstrip("0")]) for f in (line.split(",") for line in text[1:])]
    replace(path, "\n".join(rows) + "\n")
    expect_error(folders, r"DIAGNOSES_ICD.csv: column icd9_code has no code starting with 0, but \d+ rows hold codes known only with a leading zero \(")


def test_codes_of_another_code_system(folders):
    path = folders[0] / "DIAGNOSES_ICD.csv"
    lines = (DEMO / "DIAGNOSES_ICD.csv").read_text().splitlines()
    rows = [lines[0]] + [",".join(line.split(",")[:-1] + [f"Z{i % 90:02d}X"]) for i, line in enumerate(lines[1:])]
    replace(path, "\n".join(rows) + "\n")
    expect_error(folders, r"DIAGNOSES_ICD.csv: column icd9_code: 100% of rows hold codes unknown to the ICD diagnoses code system")


def test_hadm_ids_that_do_not_join_are_a_clear_error_with_join_rates(folders):
    """hadm_id written as 142345.0 in prescriptions: nothing joins, no visit has medications, no patient is left."""
    path = folders[0] / "PRESCRIPTIONS.csv"
    lines = (DEMO / "PRESCRIPTIONS.csv").read_text().splitlines()
    rows = [lines[0]] + [",".join(f[:2] + [f"{f[2]}.0"] + f[3:]) for f in (line.split(",") for line in lines[1:])]
    replace(path, "\n".join(rows) + "\n")
    expect_error(folders, r"no patient is left after preprocessing \(rows whose hadm_id joins admissions: diagnoses_icd 100%, procedures_icd 100%, prescriptions 0%\)")
    root, aux, cache = folders
    result = CliRunner().invoke(main, ["data", "prepare", "--dataset", "mimic3", "--root", str(root), "--aux", str(aux), "--cache-dir", str(cache)])
    assert result.exit_code != 0 and len(result.output.strip().splitlines()) == 1


def test_join_rates_and_unnamed_codes_are_reported(folders):
    root, aux, cache = folders
    result = CliRunner().invoke(main, ["data", "info", "--json", "--dataset", "mimic3", "--root", str(root), "--aux", str(aux), "--cache-dir", str(cache)])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.output)
    assert stats["join_rates"]["prescriptions"] == {"rows": 10398, "joined": 10398}
    assert stats["unnamed_codes"] == {"diagnoses": 20, "procedures": 2}
