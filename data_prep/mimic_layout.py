"""What differs between the MIMIC releases: where each keeps its tables and what it calls their columns.

The readers (:mod:`data_prep.mimic`) and the table export (:mod:`data_prep.export_tables`) both work from
a :class:`Layout`, so neither branches on the release.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Layout:
    """Where one MIMIC release keeps what the pipeline reads (and an export writes).

    ``subfolder``: the folder under the root holding the tables (MIMIC-IV's ``hosp``); ``upper_case``:
    file names and headers in upper case (the MIMIC-III release); ``versioned_codes``: ICD codes come with
    an ``icd_version`` column; ``dated_starts``: prescription starts have day resolution; ``anchored_ages``:
    ages from ``anchor_age`` / ``anchor_year`` (else from a date of birth, ``dob``)."""

    name: str
    subfolder: str
    upper_case: bool
    code_column: str
    versioned_codes: bool
    start_column: str
    stop_column: str
    dated_starts: bool
    ethnicity_column: str
    anchored_ages: bool

    @property
    def patient_columns(self) -> tuple[str, ...]:
        return ("subject_id", "gender", *(("anchor_age", "anchor_year") if self.anchored_ages else ("dob",)))


MIMIC3 = Layout("mimic3", "", True, "icd9_code", False, "startdate", "enddate", True, "ethnicity", False)
MIMIC4 = Layout("mimic4", "hosp", False, "icd_code", True, "starttime", "stoptime", False, "race", True)
