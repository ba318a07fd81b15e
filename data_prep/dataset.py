"""The prepared dataset: the one structure every source is turned into and every model reads.

A source reader (synthetic, MIMIC-III, MIMIC-IV) produces patients with visits ordered by admission
time, code vocabularies with human-readable names, a DDI graph and SMILES per medication;
:func:`assemble` then adds what is shared by every source: the seeded patient-level split and the
EHR co-occurrence graph built from training patients only. Samples for the prediction protocol are
derived on demand (:meth:`PreparedDataset.samples`), never stored.

On disk a dataset is a folder of JSON and NumPy files (no pickles): ``dataset.json`` (vocabularies,
profiles, split, metadata), ``patients.json.gz`` and ``graphs.npz``. It is written to a temporary
sibling and renamed into place, so a killed write never leaves a half dataset behind.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

from data_prep.atomic import write_atomic

if TYPE_CHECKING:  # pragma: no cover
    from data_prep.molecules import MoleculeSet
    from data_prep.protocol import Protocol

SPLITS = ("train", "val", "test")
SPLIT_RATIOS = (0.8, 0.1, 0.1)  # train / val / test share of the patients
# the profile's age bands, shared by every source: lower edges in years (the first band starts at 0), then
# "unknown" for a missing age; a source whose patients are all adults uses ADULT_AGE_BANDS
AGE_BANDS = ("<18", "18-39", "40-64", "65-79", "80+", "unknown")
AGE_BAND_EDGES = (18, 40, 65, 80)
ADULT_AGE_BANDS = AGE_BANDS[1:5]
FORMAT_VERSION = 1


@dataclass(frozen=True, slots=True)
class Visit:
    """One admission: code indices into the dataset's vocabularies.

    ``conditions`` holds the latent truth of the synthetic cohort (empty for real data): its active
    conditions, "ICU stay", and the regimens in force; an oracle that knows them bounds what any
    model can reach. ``profile``, when the source records
    one per admission, is the profile at this visit (age then, this admission's insurance, ...), so
    a sample of an earlier visit never sees a later admission's values; empty: the patient's.
    """

    diagnoses: tuple[int, ...]
    procedures: tuple[int, ...]
    medications: tuple[int, ...]
    admit_time: str = ""
    conditions: tuple[str, ...] = ()
    profile: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Patient:
    patient_id: str
    visits: tuple[Visit, ...]
    profile: tuple[int, ...]  # one value index per field of ``PreparedDataset.profile_fields``

    @property
    def group(self) -> str:
        return "single" if len(self.visits) == 1 else "multi"


@dataclass(frozen=True, slots=True)
class Sample:
    """One prediction: earlier visits and the current visit's codes -> the current medication set.

    ``group`` (see :mod:`data_prep.protocol`): "single" for a single-visit patient, "multi" for a
    visit with earlier visits, "first" for the first visit of a multi-visit patient.
    """

    patient_id: str
    history: tuple[Visit, ...]
    diagnoses: tuple[int, ...]
    procedures: tuple[int, ...]
    target: tuple[int, ...]
    profile: tuple[int, ...]
    visit_number: int  # 1-based index of the current visit in the patient's record
    patient_visits: int  # visits in the patient's whole record
    conditions: tuple[str, ...] = ()

    @property
    def group(self) -> str:
        if self.patient_visits == 1:
            return "single"
        return "multi" if self.history else "first"

    @property
    def sample_id(self) -> str:
        return f"{self.patient_id}#{self.visit_number}"


@dataclass
class Vocabulary:
    """Codes of one kind, in index order, each with a human-readable name for LLM prompts."""

    kind: str
    codes: list[str]
    names: list[str]

    def __post_init__(self) -> None:
        if len(self.codes) != len(self.names):
            raise ValueError(f"{self.kind} vocabulary: {len(self.codes)} codes but {len(self.names)} names")
        if len(set(self.codes)) != len(self.codes):
            raise ValueError(f"{self.kind} vocabulary has duplicate codes")

    def __len__(self) -> int:
        return len(self.codes)

    @cached_property
    def _index(self) -> dict[str, int]:
        return {code: i for i, code in enumerate(self.codes)}

    def index(self, code: str) -> int:
        try:
            return self._index[code]
        except KeyError:
            raise KeyError(f"{self.kind} code {code!r} is not in the vocabulary") from None

    def to_json(self) -> dict:
        return {"kind": self.kind, "codes": self.codes, "names": self.names}


@dataclass
class PreparedDataset:
    name: str
    patients: list[Patient]
    diagnoses: Vocabulary
    procedures: Vocabulary
    medications: Vocabulary
    profile_fields: list[str]
    profile_values: dict[str, list[str]]  # field -> value names; Patient.profile indexes these
    ddi_adj: np.ndarray  # [M, M] uint8, symmetric, zero diagonal
    ehr_adj: np.ndarray  # [M, M] uint8 co-prescription within a visit of a training patient
    smiles: list[list[str]]  # per medication index; may be empty for a medication
    split: dict[str, str]  # patient_id -> "train" | "val" | "test"
    meta: dict = field(default_factory=dict)

    # ----- sizes and lookups -------------------------------------------------------------------
    @property
    def n_medications(self) -> int:
        return len(self.medications)

    @property
    def n_diagnoses(self) -> int:
        return len(self.diagnoses)

    @property
    def n_procedures(self) -> int:
        return len(self.procedures)

    def profile_cardinalities(self) -> list[int]:
        return [len(self.profile_values[f]) for f in self.profile_fields]

    def profile_text(self, profile: Sequence[int]) -> dict[str, str]:
        return {f: self.profile_values[f][v] for f, v in zip(self.profile_fields, profile)}

    def patients_in(self, part: str) -> list[Patient]:
        if part not in SPLITS:
            raise ValueError(f"unknown split {part!r}; expected one of {SPLITS}")
        return [p for p in self.patients if self.split[p.patient_id] == part]

    @cached_property
    def fingerprint(self) -> str:
        """A hash of the content (patients, split, vocabularies, graphs): keys downstream caches."""
        from data_prep.cache import stable_hash

        return stable_hash(
            self.name,
            [_patient_to_json(p) for p in self.patients],
            self.split,
            [self.diagnoses.codes, self.procedures.codes, self.medications.codes],
            self.ddi_adj.tobytes().hex(),
            self.smiles,
        )

    # ----- protocol samples --------------------------------------------------------------------
    def samples(self, part: str, protocol: "str | Protocol" = "last-visit") -> list[Sample]:
        """Samples of one split under a protocol (:mod:`data_prep.protocol`; LEADER's last visit by default)."""
        from data_prep.protocol import get_protocol

        return get_protocol(protocol).samples(self, part)

    # ----- molecules (derived from SMILES, never stored) ----------------------------------------
    @cached_property
    def molecules(self) -> "MoleculeSet":
        from data_prep.molecules import build_molecule_set

        return build_molecule_set(self.smiles)

    # ----- persistence -------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write atomically: a temporary sibling folder renamed into place."""
        def write(tmp: Path) -> None:
            header = {
                "format_version": FORMAT_VERSION,
                "name": self.name,
                "diagnoses": self.diagnoses.to_json(),
                "procedures": self.procedures.to_json(),
                "medications": self.medications.to_json(),
                "profile_fields": self.profile_fields,
                "profile_values": self.profile_values,
                "smiles": self.smiles,
                "split": self.split,
                "meta": self.meta,
            }
            (tmp / "dataset.json").write_text(json.dumps(header))
            with gzip.open(tmp / "patients.json.gz", "wt", compresslevel=1) as fh:
                json.dump([_patient_to_json(p) for p in self.patients], fh, separators=(",", ":"))
            np.savez_compressed(tmp / "graphs.npz", ddi_adj=self.ddi_adj, ehr_adj=self.ehr_adj)

        return write_atomic(directory, write, folder=True)

    @classmethod
    def load(cls, directory: str | Path) -> "PreparedDataset":
        directory = Path(directory)
        header_path = directory / "dataset.json"
        if not header_path.exists():
            raise FileNotFoundError(f"{directory} holds no prepared dataset (missing dataset.json)")
        header = json.loads(header_path.read_text())
        if header.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{header_path}: format version {header.get('format_version')}, expected {FORMAT_VERSION}")
        with gzip.open(directory / "patients.json.gz", "rt") as fh:
            patients = [_patient_from_json(p) for p in json.load(fh)]
        with np.load(directory / "graphs.npz") as graphs:
            ddi_adj, ehr_adj = graphs["ddi_adj"], graphs["ehr_adj"]
        return cls(
            name=header["name"],
            patients=patients,
            diagnoses=Vocabulary(**header["diagnoses"]),
            procedures=Vocabulary(**header["procedures"]),
            medications=Vocabulary(**header["medications"]),
            profile_fields=header["profile_fields"],
            profile_values=header["profile_values"],
            ddi_adj=ddi_adj,
            ehr_adj=ehr_adj,
            smiles=header["smiles"],
            split=header["split"],
            meta=header["meta"],
        )


def _patient_to_json(p: Patient) -> list:
    return [
        p.patient_id,
        list(p.profile),
        # a per-visit profile is stored only when the source has one, so other datasets keep their fingerprint
        [[list(v.diagnoses), list(v.procedures), list(v.medications), v.admit_time, list(v.conditions), *([list(v.profile)] if v.profile else [])] for v in p.visits],
    ]


def _patient_from_json(raw: list) -> Patient:
    pid, profile, visits = raw
    return Patient(
        patient_id=pid,
        profile=tuple(profile),
        visits=tuple(Visit(tuple(d), tuple(p), tuple(m), t, tuple(c), tuple(*at_visit)) for d, p, m, t, c, *at_visit in visits),
    )


# ----- the shared finishing steps ---------------------------------------------------------------
def split_patients(patient_ids: Iterable[str], seed: int, ratios: tuple[float, float, float] = SPLIT_RATIOS) -> dict[str, str]:
    """Seeded patient-level split. Sorting first makes it independent of the reader's order."""
    if len(ratios) != 3 or any(r < 0 for r in ratios) or not np.isclose(sum(ratios), 1.0):
        raise ValueError(f"split ratios must be three non-negative numbers summing to 1, got {ratios}")
    ids = sorted(set(patient_ids))
    order = np.random.default_rng(seed).permutation(len(ids))
    n_train = int(round(ratios[0] * len(ids)))
    n_val = int(round(ratios[1] * len(ids)))
    split = {}
    for rank, i in enumerate(order):
        split[ids[i]] = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
    return split


def cooccurrence_adjacency(visits: Iterable[Visit], n_medications: int) -> np.ndarray:
    """Medications prescribed together in one visit (GAMENet's EHR graph), zero diagonal.

    One sparse product (visits x medications)^T (visits x medications) instead of a loop over visits.
    """
    from scipy.sparse import csr_matrix

    rows, cols = [], []
    for i, visit in enumerate(visits):
        meds = set(visit.medications)
        rows.extend([i] * len(meds))
        cols.extend(meds)
    n_visits = (rows[-1] + 1) if rows else 0
    incidence = csr_matrix((np.ones(len(rows), dtype=np.int32), (rows, cols)), shape=(n_visits, n_medications))
    adj = ((incidence.T @ incidence).toarray() > 0).astype(np.uint8)
    np.fill_diagonal(adj, 0)
    return adj


def assemble(
    *,
    name: str,
    patients: list[Patient],
    diagnoses: Vocabulary,
    procedures: Vocabulary,
    medications: Vocabulary,
    profile_values: dict[str, list[str]],
    ddi_adj: np.ndarray,
    smiles: list[list[str]],
    seed: int,
    meta: dict | None = None,
) -> PreparedDataset:
    """Add the steps every source shares: patient-level split, then the EHR graph from train only.

    ``profile_values`` maps each profile field, in the order of ``Patient.profile``, to its value names."""
    if not patients:
        raise ValueError(f"{name}: no patient is left after preprocessing")
    ddi_adj = np.asarray(ddi_adj, dtype=np.uint8)
    if ddi_adj.shape != (len(medications), len(medications)):
        raise ValueError(f"{name}: DDI matrix has shape {ddi_adj.shape}, expected {(len(medications),) * 2}")
    ddi_adj = np.maximum(ddi_adj, ddi_adj.T)
    np.fill_diagonal(ddi_adj, 0)
    split = split_patients((p.patient_id for p in patients), seed=seed, ratios=SPLIT_RATIOS)
    train_visits = (v for p in patients if split[p.patient_id] == "train" for v in p.visits)
    return PreparedDataset(
        name=name,
        patients=patients,
        diagnoses=diagnoses,
        procedures=procedures,
        medications=medications,
        profile_fields=list(profile_values),
        profile_values=profile_values,
        ddi_adj=ddi_adj,
        ehr_adj=cooccurrence_adjacency(train_visits, len(medications)),
        smiles=smiles,
        split=split,
        meta={"seed": seed, "split_ratios": list(SPLIT_RATIOS), **(meta or {})},
    )
