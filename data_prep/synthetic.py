"""The embedded synthetic ICU cohort (``--dataset synth``): no download, deterministic for a seed.

Real code systems, invented patients. Diagnoses and procedures are ICD-9-CM codes with their CMS
descriptions (:mod:`data_prep.code_names`); medications are WHO ATC level-3 classes, as in the MIMIC
pipelines, each with up to three SMILES of real drugs of the class (ChEMBL approved drugs). The curated
facts live in ``data_prep/resources/``: ``atc3_classes.csv`` (class names), ``drugs.csv`` (drugs and
their ATC codes), ``drug_smiles.csv`` (their ChEMBL SMILES; its header says where they come from),
``ddi_class_pairs.csv`` (known class-level interactions) and ``synthetic_conditions.json`` (the
generative model).

The generative model, per patient and visit:

1. A profile (age band, gender, insurance, ethnicity, marital status; insurance and marital status
   depend on age) scales every condition's risk.
2. Chronic conditions (hypertension, heart failure, COPD, ...) are drawn once per patient, in the
   file's order so that one can raise another's risk (diabetes -> chronic kidney disease); a few
   start at a later visit. They persist, so earlier medications predict later ones, and each is
   coded in a visit only with probability ``chronic_coding_rate``: history tells what the current
   codes may omit.
3. Acute conditions (sepsis, pneumonia, acute kidney injury, ...) are drawn per visit with risks
   raised by the chronic ones; a visit without any gets one admission reason drawn by risk.
4. Each active condition emits 1-3 (acute) or 1-2 (chronic) codes of its family, Zipf-weighted so
   that the last siblings are rare; rare codes get the same drugs as common ones, so a model that
   reads code names can generalise where an identity-based one cannot. Untreated background codes
   add noise.
5. Procedures and medication classes are noisy-OR draws over the active conditions plus background
   ICU care. Known interacting class pairs form the DDI graph; where a visit draws both classes of a
   pair, one is dropped with probability ``ddi_avoidance``, so such pairs are rarely co-prescribed.

:func:`oracle_proba` returns each medication's probability under a sample's true conditions (the
noisy-OR before the DDI avoidance step, which removes a small fraction of drugs): an upper bound
for what models can reach. Everything is vectorised over visits; Python loops run only over the
few dozen conditions and interaction pairs, and once over visits to build the dataset's records.
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


@dataclass(frozen=True)
class SyntheticOptions:
    """Size, seeds and the knobs of the generative model (all recorded in the dataset's meta)."""

    patients: int = 2000
    """Cohort size."""
    seed: int = 0
    """Seed of the draws that make the patients."""
    split_seed: int = 0
    """Seed of the patient-level 8:1:1 split."""
    single_visit_fraction: float = 1 / 3
    """Share of single-visit patients."""
    max_visits: int = 10
    """Most visits of a patient."""
    visit_count_decay: float = 0.6
    """P(k visits) ~ decay**(k-2) for multi-visit patients."""
    code_zipf_exponent: float = 1.5
    """Sibling k of a code family has weight 1/k**exponent."""
    chronic_coding_rate: float = 0.8
    """Chance that a present chronic condition is coded in a visit."""
    chronic_onset_rate: float = 0.05
    """Onset chance of a chronic condition per later visit, relative to its baseline risk."""
    noise_diagnoses_mean: float = 3.0
    """Background diagnosis codes per visit: 1 + Poisson(mean)."""
    ddi_avoidance: float = 0.6
    """Chance that a drawn interacting pair of classes loses one of them."""
    mean_days_between_visits: float = 200.0
    """Mean days between a patient's visits."""

    def __post_init__(self) -> None:
        if self.patients < 1:
            raise ValueError(f"synthetic cohort: patients must be at least 1, got {self.patients}")
        if self.max_visits < 2:
            raise ValueError(f"synthetic cohort: max_visits must be at least 2, got {self.max_visits}")
        for name in ("single_visit_fraction", "chronic_coding_rate", "chronic_onset_rate", "ddi_avoidance"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"synthetic cohort: {name} must lie in [0, 1], got {getattr(self, name)}")


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
    """The generative model as arrays; conditions in file order, C conditions, M classes, P procedures."""

    condition_names: tuple[str, ...]
    chronic: np.ndarray  # [C] bool
    rates: np.ndarray  # [C]
    requires: np.ndarray  # [C] index of a required chronic condition, -1 for none
    profile_risk: dict[str, np.ndarray]  # field -> [n values, C] multipliers
    condition_risk: np.ndarray  # [C, C] multiplier on column condition when row condition is present
    diagnosis_families: tuple[tuple[str, ...], ...]  # codes from the most to the least frequent
    noise_diagnoses: tuple[str, ...]
    diagnosis_codes: tuple[str, ...]  # every diagnosis code of the model, sorted
    procedure_codes: tuple[str, ...]
    procedure_prob: np.ndarray  # [C, P]
    background_procedure_prob: np.ndarray  # [P]
    medication_codes: tuple[str, ...]  # ATC level-3 classes, sorted
    medication_names: tuple[str, ...]
    medication_prob: np.ndarray  # [C, M]
    background_medication_prob: np.ndarray  # [M]
    ddi_pairs: np.ndarray  # [K, 2] medication indices
    smiles: tuple[tuple[str, ...], ...]  # per medication class

    @property
    def condition_index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.condition_names)}

    def diagnosis_indices(self, codes: tuple[str, ...]) -> np.ndarray:
        return np.searchsorted(self.diagnosis_codes, codes)


def _check_probabilities(where: str, table: dict[str, float]) -> None:
    bad = {k: v for k, v in table.items() if not 0.0 <= float(v) <= 1.0}
    if bad:
        raise ValueError(f"data_prep/resources/synthetic_conditions.json, {where}: probabilities outside [0, 1]: {bad}")


@cache
def cohort_model() -> CohortModel:
    """Read and check the curated tables once; every code must exist in its code system."""
    source = "data_prep/resources/synthetic_conditions.json"
    classes = {row["atc3"]: row["name"] for row in _resource_rows("atc3_classes.csv", ("atc3", "name"))}
    medication_codes = tuple(sorted(classes))
    med_index = {code: i for i, code in enumerate(medication_codes)}

    spec = json.loads(_resource_text("synthetic_conditions.json"))
    conditions, background = spec["conditions"], spec["background"]
    names = [c["name"] for c in conditions]
    if len(set(names)) != len(names):
        raise ValueError(f"{source}: duplicate condition names")
    index = {name: i for i, name in enumerate(names)}
    known_dx, known_sg = icd9_diagnosis_names(), icd9_procedure_names()

    def check_codes(where: str, codes, known: dict[str, str], system: str) -> None:
        unknown = [c for c in codes if c not in known]
        if unknown:
            raise ValueError(f"{source}, {where}: {unknown} are not {system} codes")

    def check_classes(where: str, codes) -> None:
        unknown = [c for c in codes if c not in med_index]
        if unknown:
            raise ValueError(f"{source}, {where}: ATC classes {unknown} are not in atc3_classes.csv")

    procedure_codes = tuple(sorted({p for c in conditions for p in c["procedures"]} | set(background["procedures"])))
    proc_index = {code: i for i, code in enumerate(procedure_codes)}
    n_cond, n_med, n_proc = len(conditions), len(medication_codes), len(procedure_codes)
    profile_risk = {field: np.ones((len(values), n_cond)) for field, values in PROFILE_VALUES.items()}
    condition_risk = np.ones((n_cond, n_cond))
    medication_prob, procedure_prob = np.zeros((n_cond, n_med)), np.zeros((n_cond, n_proc))
    requires = np.full(n_cond, -1)
    for c, cond in enumerate(conditions):
        where = f"condition {cond['name']!r}"
        check_codes(where, cond["diagnoses"], known_dx, "ICD-9-CM diagnosis")
        check_codes(where, cond["procedures"], known_sg, "ICD-9-CM procedure")
        check_classes(where, cond["medications"])
        _check_probabilities(where, {**cond["medications"], **cond["procedures"]})
        if not cond["diagnoses"]:
            raise ValueError(f"{source}, {where}: no diagnosis code")
        for field, table in cond["risk"].items():
            if field == "age":
                if len(table) != len(AGE_BANDS):
                    raise ValueError(f"{source}, {where}: risk.age needs {len(AGE_BANDS)} multipliers, one per band {AGE_BANDS}")
                profile_risk["age"][:, c] = table
            elif field == "conditions":
                for other, factor in table.items():
                    if other not in index or not conditions[index[other]]["chronic"] or (cond["chronic"] and index[other] >= c):
                        raise ValueError(f"{source}, {where}: risk.conditions names {other!r}, not an earlier chronic condition")
                    condition_risk[index[other], c] = factor
            elif field in PROFILE_VALUES:
                for value, factor in table.items():
                    if value not in PROFILE_VALUES[field]:
                        raise ValueError(f"{source}, {where}: risk.{field} value {value!r} is not one of {PROFILE_VALUES[field]}")
                    profile_risk[field][PROFILE_VALUES[field].index(value), c] = factor
            else:
                raise ValueError(f"{source}, {where}: unknown risk field {field!r}")
        if "requires" in cond:
            required = cond["requires"]
            if required not in index or not conditions[index[required]]["chronic"] or cond["chronic"]:
                raise ValueError(f"{source}, {where}: requires {required!r}, which is not a chronic condition (or {where} is chronic)")
            requires[c] = index[required]
        for code, p in cond["medications"].items():
            medication_prob[c, med_index[code]] = p
        for code, p in cond["procedures"].items():
            procedure_prob[c, proc_index[code]] = p

    check_codes("background", background["diagnoses"], known_dx, "ICD-9-CM diagnosis")
    check_codes("background", background["procedures"], known_sg, "ICD-9-CM procedure")
    check_classes("background", background["medications"])
    _check_probabilities("background", {**background["medications"], **background["procedures"]})
    background_med = np.zeros(n_med)
    background_med[[med_index[c] for c in background["medications"]]] = list(background["medications"].values())
    background_proc = np.zeros(n_proc)
    background_proc[[proc_index[c] for c in background["procedures"]]] = list(background["procedures"].values())

    ddi_rows = _resource_rows("ddi_class_pairs.csv", ("atc3_a", "atc3_b", "interaction"))
    check_classes("ddi_class_pairs.csv", [r["atc3_a"] for r in ddi_rows] + [r["atc3_b"] for r in ddi_rows])
    ddi_pairs = np.array([[med_index[r["atc3_a"]], med_index[r["atc3_b"]]] for r in ddi_rows], dtype=np.int64)
    unused = [code for code, p in zip(medication_codes, medication_prob.sum(0) + background_med) if p == 0]
    if unused:
        raise ValueError(f"{source}: no condition or background care prescribes the classes {unused} of atc3_classes.csv")

    return CohortModel(
        condition_names=tuple(names),
        chronic=np.array([bool(c["chronic"]) for c in conditions]),
        rates=np.array([float(c["rate"]) for c in conditions]),
        requires=requires,
        profile_risk=profile_risk,
        condition_risk=condition_risk,
        diagnosis_families=tuple(tuple(c["diagnoses"]) for c in conditions),
        noise_diagnoses=tuple(background["diagnoses"]),
        diagnosis_codes=tuple(sorted({code for c in conditions for code in c["diagnoses"]} | set(background["diagnoses"]))),
        procedure_codes=procedure_codes,
        procedure_prob=procedure_prob,
        background_procedure_prob=background_proc,
        medication_codes=medication_codes,
        medication_names=tuple(classes[c] for c in medication_codes),
        medication_prob=medication_prob,
        background_medication_prob=background_med,
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


def _noisy_or(active: np.ndarray, prob: np.ndarray, background: np.ndarray) -> np.ndarray:
    """P(item) = 1 - prod over active conditions and background of (1 - p): [n, C] x [C, K] -> [n, K]."""
    with np.errstate(divide="ignore"):
        log_keep = np.log1p(-np.minimum(prob, 1.0)).astype(np.float32)
        log_keep_background = np.log1p(-np.minimum(background, 1.0)).astype(np.float32)
    log_keep = np.maximum(log_keep, -1e4)  # a certain item (p = 1) stays finite in the product
    return -np.expm1(active.astype(np.float32) @ log_keep + np.maximum(log_keep_background, -1e4))


def _within_patient_cumsum(values: np.ndarray, first_visit: np.ndarray, patient_of_visit: np.ndarray) -> np.ndarray:
    """Cumulative sum along each patient's visits (visits of a patient are contiguous)."""
    total = np.cumsum(values, axis=0)
    before_first = total[first_visit] - values[first_visit]
    return total - before_first[patient_of_visit]


def _zipf_weights(n: int, exponent: float) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1) ** exponent
    return weights / weights.sum()


def _draw_codes(rng, visits: np.ndarray, family: np.ndarray, counts: np.ndarray, exponent: float):
    """``counts[i]`` Zipf-weighted draws (with replacement) from the code indices ``family`` for visit ``visits[i]``."""
    width = int(counts.max(initial=0))
    draws = rng.choice(len(family), size=(len(visits), width), p=_zipf_weights(len(family), exponent))
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


def _chronic_risk(rng, model: CohortModel, profile_risk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Baseline chronic conditions per patient [N, C] and their risks, drawn in file order."""
    n = len(profile_risk)
    present = np.zeros((n, len(model.condition_names)), dtype=bool)
    risk = np.zeros_like(profile_risk)
    for c in np.flatnonzero(model.chronic):
        comorbidity = np.prod(np.where(present[:, :c], model.condition_risk[:c, c], 1.0), axis=1)
        risk[:, c] = np.minimum(model.rates[c] * profile_risk[:, c] * comorbidity, 0.95)
        present[:, c] = rng.random(n) < risk[:, c]
    return present, risk


def _acute_conditions(rng, model: CohortModel, chronic_active: np.ndarray, profile_risk: np.ndarray) -> np.ndarray:
    """Acute conditions per visit [V, C]; a visit that draws none gets one admission reason by risk."""
    acute = ~model.chronic
    log_comorbidity = chronic_active.astype(np.float32) @ np.log(model.condition_risk[:, acute]).astype(np.float32)
    risk = model.rates[acute] * profile_risk[:, acute] * np.exp(log_comorbidity)
    required = model.requires[acute]
    has_required = np.where(required >= 0, chronic_active[:, np.maximum(required, 0)], True)
    risk = np.minimum(risk * has_required, 0.95)
    drawn = rng.random(risk.shape) < risk
    none = np.flatnonzero(~drawn.any(axis=1))
    drawn[none, _categorical(rng, risk[none])] = True
    out = np.zeros(chronic_active.shape, dtype=bool)
    out[:, acute] = drawn
    return out


def _avoid_interactions(rng, meds: np.ndarray, pairs: np.ndarray, avoidance: float) -> None:
    """Where a visit holds both classes of an interacting pair, drop one of them (in place)."""
    for a, b in pairs:
        broken = meds[:, a] & meds[:, b] & (rng.random(len(meds)) < avoidance)
        drop_first = rng.random(len(meds)) < 0.5
        meds[broken & drop_first, a] = False
        meds[broken & ~drop_first, b] = False


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
    baseline, chronic_risk = _chronic_risk(rng, model, profile_risk)
    onset = rng.random((n_total, n_conditions), dtype=np.float32) < chronic_risk[patient_of_visit] * options.chronic_onset_rate
    onset[first_visit] = False
    chronic_active = baseline[patient_of_visit] | (_within_patient_cumsum(onset.astype(np.int32), first_visit, patient_of_visit) > 0)
    active = chronic_active | _acute_conditions(rng, model, chronic_active, profile_risk[patient_of_visit])

    coded = active & (~model.chronic | (rng.random(active.shape, dtype=np.float32) < options.chronic_coding_rate))
    visit_parts, code_parts = [], []
    for c, family in enumerate(model.diagnosis_families):
        rows = np.flatnonzero(coded[:, c])
        extra = rng.binomial(1, 0.3, len(rows)) if model.chronic[c] else rng.binomial(2, 0.5, len(rows))
        visits, codes = _draw_codes(rng, rows, model.diagnosis_indices(family), 1 + extra, options.code_zipf_exponent)
        visit_parts.append(visits)
        code_parts.append(codes)
    noise_counts = np.minimum(1 + rng.poisson(options.noise_diagnoses_mean, n_total), len(model.noise_diagnoses))
    noise = model.diagnosis_indices(model.noise_diagnoses)
    visits, codes = _draw_codes(rng, np.arange(n_total), noise, noise_counts, options.code_zipf_exponent)
    diagnosis_codes, diagnoses = _code_sets(
        np.concatenate(visit_parts + [visits]), np.concatenate(code_parts + [codes]), model.diagnosis_codes, n_total
    )

    procedure_prob = _noisy_or(active, model.procedure_prob, model.background_procedure_prob)
    procs = rng.random(procedure_prob.shape, dtype=np.float32) < procedure_prob
    empty = np.flatnonzero(~procs.any(axis=1))
    procs[empty, _categorical(rng, np.broadcast_to(model.background_procedure_prob, (len(empty), procs.shape[1])))] = True
    proc_visits, proc_columns = np.nonzero(procs)
    procedure_codes, procedures = _code_sets(proc_visits, proc_columns, model.procedure_codes, n_total)

    medication_prob = _noisy_or(active, model.medication_prob, model.background_medication_prob)
    meds = rng.random(medication_prob.shape, dtype=np.float32) < medication_prob
    _avoid_interactions(rng, meds, model.ddi_pairs, options.ddi_avoidance)
    empty = np.flatnonzero(~meds.any(axis=1))
    meds[empty, medication_prob[empty].argmax(axis=1)] = True
    used_meds = np.flatnonzero(meds.any(axis=0))
    meds = meds[:, used_meds]
    med_visits, med_columns = np.nonzero(meds)
    medications = _split_by_visit(med_visits, med_columns.tolist(), n_total)

    cond_visits, cond_columns = np.nonzero(active)
    conditions = _split_by_visit(cond_visits, [model.condition_names[c] for c in cond_columns.tolist()], n_total)
    admit_times = _admit_times(rng, options, first_visit, patient_of_visit).tolist()

    id_width = len(str(n_patients))
    profile_rows = np.stack([profiles[f] for f in PROFILE_VALUES], axis=1).tolist()
    patients = []
    for p, (start, count) in enumerate(zip(first_visit.tolist(), n_visits.tolist())):
        visits_of_patient = tuple(
            Visit(diagnoses[v], procedures[v], medications[v], admit_times[v], conditions[v]) for v in range(start, start + count)
        )
        patients.append(Patient(f"S{p + 1:0{id_width}d}", visits_of_patient, tuple(profile_rows[p])))

    ddi = np.zeros((len(model.medication_codes),) * 2, dtype=np.uint8)
    ddi[model.ddi_pairs[:, 0], model.ddi_pairs[:, 1]] = 1
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
    """Each medication's probability under the sample's true conditions (current visit), [n, M].

    The generative model's own noisy-OR, before the DDI avoidance step: the best any model can do
    without seeing the dice, an upper bound for the metrics.
    """
    model = cohort_model()
    index = model.condition_index
    med_index = {code: i for i, code in enumerate(model.medication_codes)}
    foreign = [code for code in dataset.medications.codes if code not in med_index]
    if foreign:
        raise ValueError(f"oracle_proba needs the synthetic cohort; dataset {dataset.name!r} has medications {foreign[:5]} it does not know")
    active = np.zeros((len(samples), len(model.condition_names)), dtype=bool)
    for i, sample in enumerate(samples):
        if not sample.conditions:
            raise ValueError(f"oracle_proba needs the latent conditions of the synthetic cohort; sample {sample.sample_id} has none")
        unknown = [c for c in sample.conditions if c not in index]
        if unknown:
            raise ValueError(f"oracle_proba: sample {sample.sample_id} has unknown condition(s) {unknown}")
        active[i, [index[c] for c in sample.conditions]] = True
    columns = [med_index[code] for code in dataset.medications.codes]
    return _noisy_or(active, model.medication_prob, model.background_medication_prob)[:, columns].astype(np.float64)


SOURCE = DatasetSource(
    name="synth",
    summary="the embedded synthetic cohort (no download)",
    options=SyntheticOptions,
    locate=lambda paths: Located({}, generate),
    credentialed=False,
)
