"""Export to the SafeDrug pickle layout, so the published reference code runs on exactly our data.

Files (as SafeDrug's ``processing.py`` writes them and its ``SafeDrug.py`` / ``util.py`` read them,
all with ``dill``): ``records_final.pkl`` (patients -> visits -> [diagnosis, procedure, medication
index lists]), ``voc_final.pkl`` ({"diag_voc", "pro_voc", "med_voc"}, objects with ``idx2word`` and
``word2idx`` dicts), ``ddi_A_final.pkl`` and ``ehr_adj_final.pkl`` (float [M, M] arrays),
``ddi_mask_H.pkl`` (float [M, n_fragments] BRICS mask) and ``atc3toSMILES.pkl`` ({ATC3: [SMILES]},
every medication present, so ``buildMPNN``'s ``molecule[atc3]`` finds each one).

Every file is written to a temporary sibling and renamed into place: a killed export leaves the old
file or none.

The reference code splits ``records_final.pkl`` by position; records are written in our split's
order (train, then validation, then test patients), and ``split.json`` gives the counts, so the
reference's own split can be aligned with ours.
"""

from __future__ import annotations

import json
from pathlib import Path

import dill
import numpy as np

from data_prep.dataset import SPLITS, PreparedDataset, Vocabulary
from data_prep.atomic import write_atomic

# The reference pickles hold a ``Voc`` class defined in the script's ``__main__``; a class made here
# with that module name and no methods is pickled by value, so the reference loads it without us.
Voc = type("Voc", (), {"__module__": "__main__", "__doc__": "SafeDrug's vocabulary: idx2word and word2idx dicts."})
FILES = ("records_final.pkl", "voc_final.pkl", "ddi_A_final.pkl", "ehr_adj_final.pkl", "ddi_mask_H.pkl", "atc3toSMILES.pkl")


def make_voc(vocabulary: Vocabulary):
    voc = Voc()
    voc.idx2word = dict(enumerate(vocabulary.codes))
    voc.word2idx = {code: i for i, code in enumerate(vocabulary.codes)}
    return voc


def export_safedrug(dataset: PreparedDataset, out: str | Path) -> list[Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ordered = [p for part in SPLITS for p in dataset.patients_in(part)]
    records = [[[list(v.diagnoses), list(v.procedures), list(v.medications)] for v in p.visits] for p in ordered]
    vocabularies = {
        "diag_voc": make_voc(dataset.diagnoses),
        "pro_voc": make_voc(dataset.procedures),
        "med_voc": make_voc(dataset.medications),
    }
    contents = {
        "records_final.pkl": records,
        "voc_final.pkl": vocabularies,
        "ddi_A_final.pkl": dataset.ddi_adj.astype(np.float64),
        "ehr_adj_final.pkl": dataset.ehr_adj.astype(np.float64),
        "ddi_mask_H.pkl": dataset.molecules.fragment_mask.astype(np.float64),
        "atc3toSMILES.pkl": dict(zip(dataset.medications.codes, (list(s) for s in dataset.smiles))),
    }
    written = []
    for name in FILES:
        written.append(write_atomic(out / name, lambda tmp, content=contents[name]: tmp.write_bytes(dill.dumps(content))))
    counts = {part: len(dataset.patients_in(part)) for part in SPLITS}
    split = json.dumps({"order": list(SPLITS), "patients": counts}, indent=1)
    return written + [write_atomic(out / "split.json", lambda tmp: tmp.write_text(split))]
