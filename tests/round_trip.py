"""What a round trip (export, then prepare the export) must give back: the same patients, visits,
code sets, profiles, split, DDI graph and SMILES, compared by code strings (the readers prefix
MIMIC-IV codes with their ICD version and number subjects as the source tables do)."""

from __future__ import annotations


def visit_content(dataset, patient, strip_version: bool) -> list[tuple]:
    out = []
    for visit in patient.visits:
        sets = []
        for kind in ("diagnoses", "procedures", "medications"):
            codes = getattr(dataset, kind).codes
            names = {codes[i].split(":", 1)[1] if strip_version and ":" in codes[i] else codes[i] for i in getattr(visit, kind)}
            sets.append(tuple(sorted(names)))
        out.append((visit.admit_time.replace(" ", "T"), *sets))
    return out


def assert_same_cohort(original, prepared, *, strip_version: bool = True) -> None:
    originals = sorted(original.patients, key=lambda p: p.patient_id)
    preparedes = sorted(prepared.patients, key=lambda p: p.patient_id)
    assert len(originals) == len(preparedes)
    for a, b in zip(originals, preparedes):
        assert visit_content(original, a, False) == visit_content(prepared, b, strip_version), (a.patient_id, b.patient_id)
        assert original.profile_text(a.profile) == prepared.profile_text(b.profile)
        assert original.split[a.patient_id] == prepared.split[b.patient_id]
    meds = original.medications.codes
    by_code = dict(zip(prepared.medications.codes, range(len(prepared.medications))))
    order = [by_code[c] for c in meds]
    assert (prepared.ddi_adj[order][:, order] == original.ddi_adj).all()
    assert [prepared.smiles[i] for i in order] == original.smiles
    assert [prepared.medications.names[i] for i in order] == original.medications.names
