"""The embedded synthetic ICU cohort (``--dataset synth``): no download, deterministic for a seed.

Real code systems, invented patients, calibrated to the LEADER paper's Table III and the MIMIC-III demo
(README, "The synthetic cohort"). Diagnoses and procedures are ICD-9-CM codes of the MIMIC-III code spaces
with their CMS descriptions (:mod:`data_prep.code_names`); medications are WHO ATC level-3 classes, as in
the MIMIC pipelines, each with up to three SMILES of real drugs of the class (ChEMBL approved drugs). The
curated facts live in ``data_prep/resources/`` (each file's header says where it comes from):
``atc3_classes.csv`` (class names), ``drugs.csv`` (drugs and their ATC codes), ``drug_smiles.csv`` (their
ChEMBL SMILES), ``ddi_class_pairs.csv`` (the processed TWOSIDES graph of the MIMIC pipelines),
``icd9_code_pool.csv`` (the MIMIC-III diagnosis and procedure code spaces, roughly by frequency) and
``synthetic_conditions.json`` (the generative model).

The generative model, per patient and visit:

1. A profile (age band, gender, insurance, ethnicity, marital status) scales every condition's risk.
2. Chronic conditions (hypertension, heart failure, COPD, cancer, ...) are drawn once per patient, in the
   file's order so that one can raise another's risk; a few start at a later visit. They persist, and
   each is coded in a visit only with probability ``chronic_coding_rate``.
3. Acute conditions (sepsis, pneumonia, cardiac surgery, ...) are drawn per visit with risks raised by
   the chronic ones; a visit without any gets one admission reason drawn by risk. A visit is an ICU stay
   with probability ``icu_share``, and always when a critical condition (sepsis, respiratory failure,
   ...) is active.
4. Regimens persist: a condition's alternative treatments (hypertension: a calcium-channel blocker, a
   beta blocker, an ACE inhibitor, ...) and a patient's care habits (electrolyte repletion, a bowel
   regimen, oral care, analgesia, ...) are chosen once per patient and kept from admission to admission,
   redrawn at a later visit with probability ``regimen_switch_rate``. The current visit's codes say
   that a patient has hypertension, not which regimen the patient is on: history does.
5. Each coded condition emits 1-3 (acute) or 1-2 (chronic) diagnosis codes of its family, Zipf-weighted,
   and every visit adds Poisson(``tail_diagnoses_mean``) codes from the rest of the code space (a long
   Zipf tail that carries no treatment signal); procedures likewise (conditions, ICU care, a tail).
6. Medications are noisy-OR draws over the active conditions and chosen regimens. Interacting classes
   are co-prescribed whenever the regimens call for them, as in MIMIC: nothing avoids an interaction.

The latent truth of each visit (its conditions, whether it is an ICU stay, the regimens in force) is kept
in ``Visit.conditions``; :func:`oracle_proba` returns each medication's probability under it, an upper
bound for what models can reach. Profiles (``--profile``) match one column of Table III: ``mimic3``
(6,350 patients, ICU stays only) and ``mimic4`` (8,906 patients, hospital admissions of which a share are
ICU stays, fewer codes per visit). Everything is vectorised over visits; Python loops run only over
conditions, regimen groups and code families, and once over visits to build the dataset's records.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass
from functools import cache
from importlib import resources

import numpy as np

from data_prep.code_names import icd9_diagnosis_names, icd9_procedure_names
from data_prep.dataset import ADULT_AGE_BANDS as AGE_BANDS
from data_prep.dataset import Patient, PreparedDataset, Sample, Visit, Vocabulary, assemble
from data_prep.sources import DatasetSource, Located

AGE_BAND_WEIGHTS = (0.14, 0.36, 0.30, 0.20)
GENDERS = ("F", "M")
GENDER_WEIGHTS = (0.44, 0.56)
ETHNICITIES = ("WHITE", "BLACK/AFRICAN AMERICAN", "HISPANIC OR LATINO", "ASIAN", "OTHER", "UNKNOWN/NOT SPECIFIED")
ETHNICITY_WEIGHTS = (0.70, 0.09, 0.04, 0.03, 0.04, 0.10)
INSURANCES = ("Medicare", "Private", "Medicaid", "Government", "Self Pay")
INSURANCE_BY_AGE = ((0.05, 0.55, 0.30, 0.06, 0.04), (0.15, 0.55, 0.20, 0.05, 0.05), (0.85, 0.12, 0.02, 0.01, 0.0), (0.92, 0.07, 0.01, 0.0, 0.0))
MARITAL_STATUSES = ("MARRIED", "SINGLE", "WIDOWED", "DIVORCED", "SEPARATED")
MARITAL_BY_AGE = ((0.30, 0.60, 0.0, 0.05, 0.05), (0.50, 0.25, 0.05, 0.15, 0.05), (0.55, 0.10, 0.20, 0.12, 0.03), (0.35, 0.05, 0.50, 0.08, 0.02))
PROFILE_VALUES: dict[str, tuple[str, ...]] = {
    "age": AGE_BANDS,
    "gender": GENDERS,
    "insurance": INSURANCES,
    "ethnicity": ETHNICITIES,
    "marital_status": MARITAL_STATUSES,
}
SMILES_PER_CLASS = 3
FIRST_ADMISSION = np.datetime64("2100-01-01T00:00:00", "s")
ICU_STAY = "ICU stay"
# The code pool's order is only roughly by frequency: the tail's Zipf weights 1 / (rank + offset)**exponent
# flatten its first ranks (without the offset its first code would be on half of all visits).
TAIL_ZIPF_OFFSET = 10.0  # the latent state of a visit spent (partly) in an intensive care unit

# The columns of the LEADER paper's Table III that a profile matches: patients (single-/multi-visit), and per
# visit the medications, diagnoses and procedures (by mechanism: the ICU share and the tails' sizes).
PROFILES: dict[str, dict] = {
    # MIMIC-III: 908 single- / 5,442 multi-visit patients, 10.51 dx / 3.84 px / 11.64 meds per visit; every
    # admission of the MIMIC-III pipelines has an ICU stay.
    "mimic3": {"patients": 6350, "single_visit_fraction": 908 / 6350, "icu_share": 1.0, "chronic_rate_scale": 1.0, "acute_rate_scale": 1.0, "tail_diagnoses_mean": 3.5, "tail_procedures_mean": 0.6},
    # MIMIC-IV: 2,877 single- / 6,029 multi-visit patients, 8.41 dx / 2.11 px / 7.02 meds per visit; its hospital
    # module holds every admission, most of them without an ICU stay.
    "mimic4": {"patients": 8906, "single_visit_fraction": 2877 / 8906, "icu_share": 0.1, "chronic_rate_scale": 0.5, "acute_rate_scale": 0.35, "tail_diagnoses_mean": 5.0, "tail_procedures_mean": 0.3},
}


@dataclass(frozen=True)
class SyntheticOptions:
    """Size, seeds and the knobs of the generative model (all recorded in the dataset's meta).

    Fields left at ``None`` take the value of ``profile`` (:data:`PROFILES`)."""

    profile: str = "mimic3"
    """The column of the LEADER paper's Table III to match: mimic3 or mimic4."""
    patients: int | None = None
    """Cohort size (default: the profile's, 6,350 for mimic3 and 8,906 for mimic4)."""
    seed: int = 0
    """Seed of the draws that make the patients."""
    split_seed: int = 0
    """Seed of the patient-level 8:1:1 split."""
    single_visit_fraction: float | None = None
    """Share of single-visit patients (default: the profile's)."""
    icu_share: float | None = None
    """Share of visits that are ICU stays when no critical condition makes them one."""
    chronic_rate_scale: float | None = None
    """Multiplies every chronic condition's prevalence (a hospital population is less comorbid than an ICU's)."""
    acute_rate_scale: float | None = None
    """Multiplies every acute condition's rate (and less acutely ill)."""
    tail_diagnoses_mean: float | None = None
    """Poisson mean of the diagnosis codes a visit draws from the tail."""
    tail_procedures_mean: float | None = None
    """Poisson mean of the procedure codes a visit draws from the tail."""
    max_visits: int = 20
    """Most visits of a patient."""
    visit_count_decay: float = 0.37
    """P(k visits) ~ decay**(k-2) for multi-visit patients (MIMIC-III: 2.37 visits a patient)."""
    code_zipf_exponent: float = 1.5
    """Sibling k of a condition's code family has weight 1/k**exponent."""
    tail_zipf_exponent: float = 1.0
    """Code k of the tail (in the code pool's order) has weight 1/k**exponent."""
    chronic_coding_rate: float = 0.8
    """Chance that a present chronic condition is coded in a visit."""
    chronic_onset_rate: float = 0.05
    """Onset chance of a chronic condition per later visit, relative to its baseline risk."""
    regimen_switch_rate: float = 0.15
    """Chance per later visit that a regimen or care habit is chosen again."""
    mean_days_between_visits: float = 200.0
    """Mean days between a patient's visits."""

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise ValueError(f"synthetic cohort: unknown profile {self.profile!r}; known: {', '.join(PROFILES)}")
        for name, value in PROFILES[self.profile].items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        if self.patients < 1:
            raise ValueError(f"synthetic cohort: patients must be at least 1, got {self.patients}")
        if self.max_visits < 2:
            raise ValueError(f"synthetic cohort: max_visits must be at least 2, got {self.max_visits}")
        for name in ("single_visit_fraction", "icu_share", "chronic_coding_rate", "chronic_onset_rate", "regimen_switch_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"synthetic cohort: {name} must lie in [0, 1], got {getattr(self, name)}")
        for name in ("chronic_rate_scale", "acute_rate_scale", "tail_diagnoses_mean", "tail_procedures_mean", "tail_zipf_exponent", "code_zipf_exponent"):
            if getattr(self, name) < 0:
                raise ValueError(f"synthetic cohort: {name} must be at least 0, got {getattr(self, name)}")



# ----- the curated tables ------------------------------------------------------------------------
def _resource_text(filename: str) -> str:
    return resources.files("data_prep").joinpath("resources", filename).read_text(encoding="utf-8")


def _resource_rows(filename: str, columns: tuple[str, ...]) -> list[dict[str, str]]:
    """The rows of a CSV resource; lines starting with ``#`` (provenance notes) are skipped."""
    reader = csv.DictReader(line for line in io.StringIO(_resource_text(filename)) if not line.startswith("#"))
    missing = [c for c in columns if c not in (reader.fieldnames or [])]
    if missing:
        raise ValueError(f"data_prep/resources/{filename}: missing column(s) {missing}")
    return list(reader)


def _drug_smiles() -> dict[str, str]:
    """Drug name (as in ``drugs.csv``) -> its ChEMBL SMILES."""
    return {row["drug"]: row["smiles"] for row in _resource_rows("drug_smiles.csv", ("drug", "smiles")) if row["smiles"]}


@dataclass(frozen=True)
class CohortModel:
    """The generative model as arrays. Conditions in file order (C), then the ICU state, then every regimen
    alternative (A): S = C + 1 + A latent states; M medication classes, P procedures."""

    condition_names: tuple[str, ...]
    chronic: np.ndarray  # [C] bool
    critical: np.ndarray  # [C] bool: the condition makes the visit an ICU stay
    rates: np.ndarray  # [C]
    requires: np.ndarray  # [C] index of a required chronic condition, -1 for none
    profile_risk: dict[str, np.ndarray]  # field -> [n values, C] multipliers
    condition_risk: np.ndarray  # [C, C] multiplier on column condition when row condition is present
    diagnosis_families: tuple[tuple[str, ...], ...]  # per condition, codes from the most to the least frequent
    tail_diagnoses: tuple[str, ...]  # the rest of the code space, most frequent first
    diagnosis_codes: tuple[str, ...]  # every diagnosis code of the model, sorted
    procedure_codes: tuple[str, ...]  # every procedure code of the model, sorted
    tail_procedures: np.ndarray  # indices into procedure_codes, most frequent first
    state_names: tuple[str, ...]  # [S]
    group_of_alternative: np.ndarray  # [A] its regimen group
    group_owner: np.ndarray  # [G] the condition whose regimens the group holds, -1 for care habits
    group_icu_only: np.ndarray  # [G] bool: care given on ICU stays only
    alternative_weight: np.ndarray  # [A] prior share within its group
    procedure_prob: np.ndarray  # [S, P]
    medication_codes: tuple[str, ...]  # ATC level-3 classes, sorted
    medication_names: tuple[str, ...]
    medication_prob: np.ndarray  # [S, M]
    ddi_pairs: np.ndarray  # [K, 2] medication indices
    smiles: tuple[tuple[str, ...], ...]  # per medication class

    @property
    def state_index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.state_names)}

    def diagnosis_indices(self, codes: tuple[str, ...]) -> np.ndarray:
        return np.searchsorted(self.diagnosis_codes, codes)


SOURCE = "data_prep/resources/synthetic_conditions.json"


def _check_probabilities(where: str, table: dict[str, float]) -> None:
    bad = {k: v for k, v in table.items() if not 0.0 <= float(v) <= 1.0}
    if bad:
        raise ValueError(f"{SOURCE}, {where}: probabilities outside [0, 1]: {bad}")


def _code_pool() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The diagnosis and procedure code spaces of ``icd9_code_pool.csv``, in the file's (frequency) order."""
    rows = _resource_rows("icd9_code_pool.csv", ("kind", "code"))
    return tuple(r["code"] for r in rows if r["kind"] == "diagnosis"), tuple(r["code"] for r in rows if r["kind"] == "procedure")


def _diagnosis_families(conditions: list[dict], pool: tuple[str, ...]) -> tuple[list[tuple[str, ...]], tuple[str, ...]]:
    """Each condition's listed codes, then the pool codes under its prefixes that no earlier condition claimed;
    the tail is the rest of the pool, in its order."""
    claimed = {code for c in conditions for code in c["diagnoses"]}
    families = []
    for cond in conditions:
        prefixes = tuple(cond.get("diagnosis_prefixes", ()))
        extra = [code for code in pool if prefixes and code.startswith(prefixes) and code not in claimed]
        claimed.update(extra)
        families.append(tuple(dict.fromkeys([*cond["diagnoses"], *extra])))
    return families, tuple(code for code in pool if code not in claimed)


@cache
def cohort_model() -> CohortModel:
    """Read and check the curated tables once; every code must exist in its code system."""
    classes = {row["atc3"]: row["name"] for row in _resource_rows("atc3_classes.csv", ("atc3", "name"))}
    medication_codes = tuple(sorted(classes))
    med_index = {code: i for i, code in enumerate(medication_codes)}

    spec = json.loads(_resource_text("synthetic_conditions.json"))
    conditions, care = spec["conditions"], spec["care"]
    names = [c["name"] for c in conditions]
    if len(set(names)) != len(names):
        raise ValueError(f"{SOURCE}: duplicate condition names")
    index = {name: i for i, name in enumerate(names)}
    known_dx, known_sg = icd9_diagnosis_names(), icd9_procedure_names()

    def check_codes(where: str, codes, known: dict[str, str], system: str) -> None:
        unknown = [c for c in codes if c not in known]
        if unknown:
            raise ValueError(f"{SOURCE}, {where}: {unknown} are not {system} codes")

    def check_classes(where: str, codes) -> None:
        unknown = [c for c in codes if c not in med_index]
        if unknown:
            raise ValueError(f"{SOURCE}, {where}: ATC classes {unknown} are not in atc3_classes.csv")

    dx_pool, px_pool = _code_pool()
    check_codes("icd9_code_pool.csv", dx_pool, known_dx, "ICD-9-CM diagnosis")
    check_codes("icd9_code_pool.csv", px_pool, known_sg, "ICD-9-CM procedure")
    families, tail_dx = _diagnosis_families(conditions, dx_pool)
    curated_px = {p for c in conditions for p in c["procedures"]} | set(spec["background"]["procedures"])
    procedure_codes = tuple(sorted(curated_px | set(px_pool)))
    proc_index = {code: i for i, code in enumerate(procedure_codes)}

    # regimen groups: each condition with regimens, then each care group
    groups = [(c, f"{cond['name']}: ", cond["regimens"], False) for c, cond in enumerate(conditions) if cond.get("regimens")]
    for group in care:
        if group["setting"] not in ("icu", "all"):
            raise ValueError(f"{SOURCE}, care {group['name']!r}: setting must be 'icu' or 'all', got {group['setting']!r}")
        groups.append((-1, f"care, {group['name']}: ", group["alternatives"], group["setting"] == "icu"))
    alternatives = [(g, prefix + alt["name"], alt) for g, (_, prefix, alts, _) in enumerate(groups) for alt in alts]
    state_names = (*names, ICU_STAY, *(name for _, name, _ in alternatives))
    if len(set(state_names)) != len(state_names):
        raise ValueError(f"{SOURCE}: duplicate regimen names within a condition or care group")

    n_cond, n_states = len(conditions), len(state_names)
    profile_risk = {field: np.ones((len(values), n_cond)) for field, values in PROFILE_VALUES.items()}
    condition_risk = np.ones((n_cond, n_cond))
    medication_prob, procedure_prob = np.zeros((n_states, len(medication_codes))), np.zeros((n_states, len(procedure_codes)))
    requires = np.full(n_cond, -1)
    for c, cond in enumerate(conditions):
        where = f"condition {cond['name']!r}"
        check_codes(where, cond["diagnoses"], known_dx, "ICD-9-CM diagnosis")
        check_codes(where, cond["procedures"], known_sg, "ICD-9-CM procedure")
        check_classes(where, cond["medications"])
        _check_probabilities(where, {**cond["medications"], **cond["procedures"]})
        if not families[c]:
            raise ValueError(f"{SOURCE}, {where}: no diagnosis code")
        for field, table in cond["risk"].items():
            if field == "age":
                if len(table) != len(AGE_BANDS):
                    raise ValueError(f"{SOURCE}, {where}: risk.age needs {len(AGE_BANDS)} multipliers, one per band {AGE_BANDS}")
                profile_risk["age"][:, c] = table
            elif field == "conditions":
                for other, factor in table.items():
                    if other not in index or not conditions[index[other]]["chronic"] or (cond["chronic"] and index[other] >= c):
                        raise ValueError(f"{SOURCE}, {where}: risk.conditions names {other!r}, not an earlier chronic condition")
                    condition_risk[index[other], c] = factor
            elif field in PROFILE_VALUES:
                for value, factor in table.items():
                    if value not in PROFILE_VALUES[field]:
                        raise ValueError(f"{SOURCE}, {where}: risk.{field} value {value!r} is not one of {PROFILE_VALUES[field]}")
                    profile_risk[field][PROFILE_VALUES[field].index(value), c] = factor
            else:
                raise ValueError(f"{SOURCE}, {where}: unknown risk field {field!r}")
        if "requires" in cond:
            required = cond["requires"]
            if required not in index or not conditions[index[required]]["chronic"] or cond["chronic"]:
                raise ValueError(f"{SOURCE}, {where}: requires {required!r}, which is not a chronic condition (or {where} is chronic)")
            requires[c] = index[required]
        for code, p in cond["medications"].items():
            medication_prob[c, med_index[code]] = p
        for code, p in cond["procedures"].items():
            procedure_prob[c, proc_index[code]] = p

    background = spec["background"]["procedures"]
    check_codes("background", background, known_sg, "ICD-9-CM procedure")
    _check_probabilities("background", background)
    for code, p in background.items():
        procedure_prob[n_cond, proc_index[code]] = p
    for a, (g, name, alt) in enumerate(alternatives):
        check_classes(f"regimen {name!r}", alt["medications"])
        _check_probabilities(f"regimen {name!r}", alt["medications"])
        if not alt["weight"] > 0:
            raise ValueError(f"{SOURCE}, regimen {name!r}: weight must be positive")
        for code, p in alt["medications"].items():
            medication_prob[n_cond + 1 + a, med_index[code]] = p

    ddi_rows = _resource_rows("ddi_class_pairs.csv", ("atc3_a", "atc3_b"))
    check_classes("ddi_class_pairs.csv", [r["atc3_a"] for r in ddi_rows] + [r["atc3_b"] for r in ddi_rows])
    ddi_pairs = np.array([[med_index[r["atc3_a"]], med_index[r["atc3_b"]]] for r in ddi_rows], dtype=np.int64)
    unused = [code for code, p in zip(medication_codes, medication_prob.sum(0)) if p == 0]
    if unused:
        raise ValueError(f"{SOURCE}: no condition or regimen prescribes the classes {unused} of atc3_classes.csv")

    return CohortModel(
        condition_names=tuple(names),
        chronic=np.array([bool(c["chronic"]) for c in conditions]),
        critical=np.array([bool(c.get("icu", False)) for c in conditions]),
        rates=np.array([float(c["rate"]) for c in conditions]),
        requires=requires,
        profile_risk=profile_risk,
        condition_risk=condition_risk,
        diagnosis_families=tuple(families),
        tail_diagnoses=tail_dx,
        diagnosis_codes=tuple(sorted({code for family in families for code in family} | set(tail_dx))),
        procedure_codes=procedure_codes,
        tail_procedures=np.array([proc_index[code] for code in px_pool if code not in curated_px], dtype=np.int64),
        state_names=state_names,
        group_of_alternative=np.array([g for g, _, _ in alternatives], dtype=np.int64),
        group_owner=np.array([owner for owner, _, _, _ in groups], dtype=np.int64),
        group_icu_only=np.array([icu_only for _, _, _, icu_only in groups]),
        alternative_weight=np.array([float(alt["weight"]) for _, _, alt in alternatives]),
        procedure_prob=procedure_prob,
        medication_codes=medication_codes,
        medication_names=tuple(classes[c] for c in medication_codes),
        medication_prob=medication_prob,
        ddi_pairs=ddi_pairs,
        smiles=_class_smiles(medication_codes),
    )


def _class_smiles(medication_codes: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
    """Up to three SMILES per class, from its drugs in the order of ``drugs.csv`` (most used first)."""
    smiles = _drug_smiles()
    per_class: dict[str, list[str]] = {code: [] for code in medication_codes}
    for row in _resource_rows("drugs.csv", ("drug", "atc_code")):
        drug, atc3 = row["drug"], row["atc_code"][:4]
        if atc3 not in per_class:
            raise ValueError(f"data_prep/resources/drugs.csv: {drug} has ATC code {row['atc_code']}, whose class is not in atc3_classes.csv")
        if drug not in smiles:
            raise ValueError(f"data_prep/resources/drugs.csv: {drug} has no SMILES in drug_smiles.csv; add its ChEMBL SMILES there")
        if len(per_class[atc3]) < SMILES_PER_CLASS:
            per_class[atc3].append(smiles[drug])
    without = [code for code, smiles in per_class.items() if not smiles]
    if without:
        raise ValueError(f"data_prep/resources/drugs.csv: classes {without} have no drug with a SMILES")
    return tuple(tuple(per_class[code]) for code in medication_codes)


# ----- vectorised sampling helpers ---------------------------------------------------------------
def _categorical(rng: np.random.Generator, weights: np.ndarray) -> np.ndarray:
    """One draw per row of ``weights`` [n, k] (rows need not be normalised)."""
    cumulative = np.cumsum(weights, axis=1)
    u = rng.random(len(weights)) * cumulative[:, -1]
    return np.minimum((cumulative <= u[:, None]).sum(axis=1), weights.shape[1] - 1)


def _noisy_or(active: np.ndarray, prob: np.ndarray) -> np.ndarray:
    """P(item) = 1 - prod over active states of (1 - p): [n, S] x [S, K] -> [n, K]."""
    with np.errstate(divide="ignore"):
        log_keep = np.log1p(-np.minimum(prob, 1.0)).astype(np.float32)
    log_keep = np.maximum(log_keep, -1e4)  # a certain item (p = 1) stays finite in the product
    return -np.expm1(active.astype(np.float32) @ log_keep)


def _within_patient_cumsum(values: np.ndarray, first_visit: np.ndarray, patient_of_visit: np.ndarray) -> np.ndarray:
    """Cumulative sum along each patient's visits (visits of a patient are contiguous)."""
    total = np.cumsum(values, axis=0)
    before_first = total[first_visit] - values[first_visit]
    return total - before_first[patient_of_visit]


def _zipf_weights(n: int, exponent: float, offset: float = 0.0) -> np.ndarray:
    """Zipf(-Mandelbrot) weights 1 / (k + offset)**exponent of ranks k = 1..n, normalised."""
    weights = 1.0 / (np.arange(1, n + 1) + offset) ** exponent
    return weights / weights.sum()


def _draw_codes(rng, visits: np.ndarray, family: np.ndarray, counts: np.ndarray, exponent: float, offset: float = 0.0):
    """``counts[i]`` Zipf-weighted draws (with replacement) from the code indices ``family`` for visit ``visits[i]``."""
    width = int(counts.max(initial=0))
    draws = rng.choice(len(family), size=(len(visits), width), p=_zipf_weights(len(family), exponent, offset))
    keep = np.arange(width) < counts[:, None]
    return np.repeat(visits, counts), family[draws[keep]]


# ----- generation --------------------------------------------------------------------------------
def _profiles(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    age = rng.choice(len(AGE_BANDS), size=n, p=AGE_BAND_WEIGHTS)
    return {
        "age": age,
        "gender": rng.choice(len(GENDERS), size=n, p=GENDER_WEIGHTS),
        "insurance": _categorical(rng, np.asarray(INSURANCE_BY_AGE)[age]),
        "ethnicity": rng.choice(len(ETHNICITIES), size=n, p=ETHNICITY_WEIGHTS),
        "marital_status": _categorical(rng, np.asarray(MARITAL_BY_AGE)[age]),
    }


def _visit_counts(rng: np.random.Generator, options: SyntheticOptions) -> np.ndarray:
    multi_counts = np.arange(2, options.max_visits + 1)
    weights = options.visit_count_decay ** (multi_counts - 2.0)
    multi = rng.choice(multi_counts, size=options.patients, p=weights / weights.sum())
    return np.where(rng.random(options.patients) < options.single_visit_fraction, 1, multi)


def _chronic_risk(rng, model: CohortModel, profile_risk: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Baseline chronic conditions per patient [N, C] and their risks, drawn in file order."""
    n = len(profile_risk)
    present = np.zeros((n, len(model.condition_names)), dtype=bool)
    risk = np.zeros_like(profile_risk)
    for c in np.flatnonzero(model.chronic):
        comorbidity = np.prod(np.where(present[:, :c], model.condition_risk[:c, c], 1.0), axis=1)
        risk[:, c] = np.minimum(scale * model.rates[c] * profile_risk[:, c] * comorbidity, 0.95)
        present[:, c] = rng.random(n) < risk[:, c]
    return present, risk


def _acute_conditions(rng, model: CohortModel, chronic_active: np.ndarray, profile_risk: np.ndarray, scale: float) -> np.ndarray:
    """Acute conditions per visit [V, C]; a visit that draws none gets one admission reason by risk."""
    acute = ~model.chronic
    log_comorbidity = chronic_active.astype(np.float32) @ np.log(model.condition_risk[:, acute]).astype(np.float32)
    risk = scale * model.rates[acute] * profile_risk[:, acute] * np.exp(log_comorbidity)
    required = model.requires[acute]
    has_required = np.where(required >= 0, chronic_active[:, np.maximum(required, 0)], True)
    risk = np.minimum(risk * has_required, 0.95)
    drawn = rng.random(risk.shape) < risk
    none = np.flatnonzero(~drawn.any(axis=1))
    drawn[none, _categorical(rng, risk[none])] = True
    out = np.zeros(chronic_active.shape, dtype=bool)
    out[:, acute] = drawn
    return out


def _persistent_choices(rng, model: CohortModel, first_visit: np.ndarray, n_visits: int, switch_rate: float) -> np.ndarray:
    """The alternative each regimen group holds at each visit [V, G]: drawn at a patient's first visit and kept,
    drawn again at a later visit with probability ``switch_rate``."""
    n_groups = len(model.group_owner)
    switch = rng.random((n_visits, n_groups)) < switch_rate
    switch[first_visit] = True
    last_draw = np.maximum.accumulate(np.where(switch, np.arange(n_visits)[:, None], 0), axis=0)  # patients are contiguous
    u = rng.random((n_visits, n_groups))
    choice = np.zeros((n_visits, n_groups), dtype=np.int64)
    for g in range(n_groups):
        weights = model.alternative_weight[model.group_of_alternative == g]
        cumulative = np.cumsum(weights) / weights.sum()
        choice[:, g] = np.minimum(np.searchsorted(cumulative, u[last_draw[:, g], g], side="right"), len(weights) - 1)
    return choice


def _regimens_in_force(model: CohortModel, choice: np.ndarray, active: np.ndarray, icu: np.ndarray) -> np.ndarray:
    """[V, A]: the chosen alternative of each group whose condition is active (care habits: on every visit, or on
    ICU stays for ICU care)."""
    owner = model.group_owner
    group_on = np.where(owner >= 0, active[:, np.maximum(owner, 0)], ~model.group_icu_only | icu[:, None])
    first = np.concatenate([[0], np.cumsum(np.bincount(model.group_of_alternative))[:-1]])
    position = np.arange(len(model.group_of_alternative)) - first[model.group_of_alternative]
    return group_on[:, model.group_of_alternative] & (choice[:, model.group_of_alternative] == position)


def _admit_times(rng, options: SyntheticOptions, first_visit: np.ndarray, patient_of_visit: np.ndarray) -> np.ndarray:
    """Increasing MIMIC-style timestamps ("2131-05-07 14:02:00") within each patient."""
    gaps = (1 + rng.exponential(options.mean_days_between_visits, len(patient_of_visit))) * 86400
    gaps[first_visit] = rng.uniform(0, 80 * 365, len(first_visit)) * 86400
    seconds = _within_patient_cumsum(gaps.astype(np.int64) // 60 * 60, first_visit, patient_of_visit)
    stamps = np.datetime_as_string(FIRST_ADMISSION + seconds.astype("timedelta64[s]"), unit="s")
    return np.char.replace(stamps, "T", " ")


def _split_by_visit(visit_of_item: np.ndarray, items: list, n_visits: int) -> list[tuple]:
    """Items sorted by visit -> one tuple per visit."""
    bounds = np.searchsorted(visit_of_item, np.arange(n_visits + 1)).tolist()
    return [tuple(items[bounds[v] : bounds[v + 1]]) for v in range(n_visits)]


def _code_sets(visits: np.ndarray, codes: np.ndarray, all_codes: tuple[str, ...], n_visits: int) -> tuple[list[str], list[tuple]]:
    """Per-visit sorted sets of vocabulary indices, and the vocabulary: the codes that occur, sorted.

    ``codes`` index the sorted ``all_codes``, so the vocabulary's order is the codes' order."""
    used, code_index = np.unique(codes, return_inverse=True)
    keys = np.unique(visits.astype(np.int64) * len(used) + code_index)
    return [all_codes[i] for i in used.tolist()], _split_by_visit(keys // len(used), (keys % len(used)).tolist(), n_visits)


def _diagnoses(rng, model: CohortModel, options: SyntheticOptions, active: np.ndarray) -> tuple[list[str], list[tuple]]:
    """Codes of the coded conditions' families plus Poisson(tail mean) codes of the tail, per visit."""
    n_total = len(active)
    coded = active & (~model.chronic | (rng.random(active.shape, dtype=np.float32) < options.chronic_coding_rate))
    visit_parts, code_parts = [], []
    for c, family in enumerate(model.diagnosis_families):
        rows = np.flatnonzero(coded[:, c])
        extra = rng.binomial(1, 0.3, len(rows)) if model.chronic[c] else rng.binomial(2, 0.5, len(rows))
        visits, codes = _draw_codes(rng, rows, model.diagnosis_indices(family), 1 + extra, options.code_zipf_exponent)
        visit_parts.append(visits)
        code_parts.append(codes)
    tail = model.diagnosis_indices(model.tail_diagnoses)
    counts = rng.poisson(options.tail_diagnoses_mean, n_total)
    visits, codes = _draw_codes(rng, np.arange(n_total), tail, counts, options.tail_zipf_exponent, TAIL_ZIPF_OFFSET)
    return _code_sets(np.concatenate(visit_parts + [visits]), np.concatenate(code_parts + [codes]), model.diagnosis_codes, n_total)


def _procedures(rng, model: CohortModel, options: SyntheticOptions, states: np.ndarray) -> tuple[list[str], list[tuple]]:
    """Noisy-OR draws over the latent states plus Poisson(tail mean) tail codes; a visit left without any gets one
    tail code (the MIMIC pipelines drop visits with an empty code set)."""
    n_total = len(states)
    procs = rng.random((n_total, len(model.procedure_codes)), dtype=np.float32) < _noisy_or(states, model.procedure_prob)
    counts = rng.poisson(options.tail_procedures_mean, n_total)
    counts[(counts == 0) & ~procs.any(axis=1)] = 1
    tail_visits, tail_codes = _draw_codes(rng, np.arange(n_total), model.tail_procedures, counts, options.tail_zipf_exponent, TAIL_ZIPF_OFFSET)
    visits, columns = np.nonzero(procs)
    return _code_sets(np.concatenate([visits, tail_visits]), np.concatenate([columns, tail_codes]), model.procedure_codes, n_total)


def generate(options: SyntheticOptions = SyntheticOptions()) -> PreparedDataset:
    """Draw the cohort and assemble it into the prepared dataset ``synth``."""
    model = cohort_model()
    rng = np.random.default_rng(options.seed)
    n_patients, n_conditions = options.patients, len(model.condition_names)

    n_visits = _visit_counts(rng, options)
    profiles = _profiles(rng, n_patients)
    patient_of_visit = np.repeat(np.arange(n_patients), n_visits)
    first_visit = np.concatenate([[0], np.cumsum(n_visits)[:-1]])
    n_total = len(patient_of_visit)

    profile_risk = np.ones((n_patients, n_conditions))
    for field, table in model.profile_risk.items():
        profile_risk *= table[profiles[field]]
    baseline, chronic_risk = _chronic_risk(rng, model, profile_risk, options.chronic_rate_scale)
    onset = rng.random((n_total, n_conditions), dtype=np.float32) < chronic_risk[patient_of_visit] * options.chronic_onset_rate
    onset[first_visit] = False
    chronic_active = baseline[patient_of_visit] | (_within_patient_cumsum(onset.astype(np.int32), first_visit, patient_of_visit) > 0)
    active = chronic_active | _acute_conditions(rng, model, chronic_active, profile_risk[patient_of_visit], options.acute_rate_scale)
    icu = (rng.random(n_total) < options.icu_share) | (active & model.critical).any(axis=1)
    choice = _persistent_choices(rng, model, first_visit, n_total, options.regimen_switch_rate)
    states = np.concatenate([active, icu[:, None], _regimens_in_force(model, choice, active, icu)], axis=1)

    diagnosis_codes, diagnoses = _diagnoses(rng, model, options, active)
    procedure_codes, procedures = _procedures(rng, model, options, states)

    medication_prob = _noisy_or(states, model.medication_prob)
    meds = rng.random(medication_prob.shape, dtype=np.float32) < medication_prob
    empty = np.flatnonzero(~meds.any(axis=1))
    meds[empty, medication_prob[empty].argmax(axis=1)] = True
    used_meds = np.flatnonzero(meds.any(axis=0))
    meds = meds[:, used_meds]
    med_visits, med_columns = np.nonzero(meds)
    medications = _split_by_visit(med_visits, med_columns.tolist(), n_total)

    state_visits, state_columns = np.nonzero(states)
    latent = _split_by_visit(state_visits, [model.state_names[s] for s in state_columns.tolist()], n_total)
    admit_times = _admit_times(rng, options, first_visit, patient_of_visit).tolist()

    id_width = len(str(n_patients))
    profile_rows = np.stack([profiles[f] for f in PROFILE_VALUES], axis=1).tolist()
    patients = []
    for p, (start, count) in enumerate(zip(first_visit.tolist(), n_visits.tolist())):
        visits_of_patient = tuple(
            Visit(diagnoses[v], procedures[v], medications[v], admit_times[v], latent[v]) for v in range(start, start + count)
        )
        patients.append(Patient(f"S{p + 1:0{id_width}d}", visits_of_patient, tuple(profile_rows[p])))

    ddi = np.zeros((len(model.medication_codes),) * 2, dtype=np.uint8)
    ddi[model.ddi_pairs[:, 0], model.ddi_pairs[:, 1]] = 1
    ddi |= ddi.T
    dx_names, sg_names = icd9_diagnosis_names(), icd9_procedure_names()
    return assemble(
        name="synth",
        patients=patients,
        diagnoses=Vocabulary("diagnosis", diagnosis_codes, [dx_names[c] for c in diagnosis_codes]),
        procedures=Vocabulary("procedure", procedure_codes, [sg_names[c] for c in procedure_codes]),
        medications=Vocabulary(
            "medication", [model.medication_codes[m] for m in used_meds], [model.medication_names[m] for m in used_meds]
        ),
        profile_values={f: list(v) for f, v in PROFILE_VALUES.items()},
        ddi_adj=ddi[np.ix_(used_meds, used_meds)],
        smiles=[list(model.smiles[m]) for m in used_meds],
        seed=options.split_seed,
        meta={"source": "synthetic", "options": asdict(options), "conditions": list(model.condition_names)},
    )


def oracle_proba(dataset: PreparedDataset, samples: list[Sample]) -> np.ndarray:
    """Each medication's probability under the sample's latent truth (current visit: its conditions, ICU stay
    and regimens in force), [n, M]: the generative model's own noisy-OR, the best any model can do without
    seeing the dice, an upper bound for the metrics.
    """
    model = cohort_model()
    index = model.state_index
    med_index = {code: i for i, code in enumerate(model.medication_codes)}
    foreign = [code for code in dataset.medications.codes if code not in med_index]
    if foreign:
        raise ValueError(f"oracle_proba needs the synthetic cohort; dataset {dataset.name!r} has medications {foreign[:5]} it does not know")
    active = np.zeros((len(samples), len(model.state_names)), dtype=bool)
    for i, sample in enumerate(samples):
        if not sample.conditions:
            raise ValueError(f"oracle_proba needs the latent conditions of the synthetic cohort; sample {sample.sample_id} has none")
        unknown = [c for c in sample.conditions if c not in index]
        if unknown:
            raise ValueError(f"oracle_proba: sample {sample.sample_id} has unknown latent state(s) {unknown}")
        active[i, [index[c] for c in sample.conditions]] = True
    columns = [med_index[code] for code in dataset.medications.codes]
    return _noisy_or(active, model.medication_prob)[:, columns].astype(np.float64)


SOURCE = DatasetSource(
    name="synth",
    summary="the embedded synthetic cohort (no download)",
    options=SyntheticOptions,
    locate=lambda paths: Located({}, generate),
    credentialed=False,
)
