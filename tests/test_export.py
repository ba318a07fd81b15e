"""SafeDrug export: the six dill pickles load back, and the vocabulary class travels by value."""

from __future__ import annotations

import json
import subprocess
import sys

import dill
import numpy as np

from data_prep.export import FILES, export_safedrug


def test_safedrug_export_round_trip(tiny_dataset, tmp_path):
    export_safedrug(tiny_dataset, tmp_path)
    loaded = {name: dill.load(open(tmp_path / name, "rb")) for name in FILES}
    records, voc = loaded["records_final.pkl"], loaded["voc_final.pkl"]
    assert len(records) == len(tiny_dataset.patients)
    assert sum(len(p) for p in records) == sum(len(p.visits) for p in tiny_dataset.patients)
    first_train = tiny_dataset.patients_in("train")[0]
    assert records[0][0] == [list(first_train.visits[0].diagnoses), list(first_train.visits[0].procedures), list(first_train.visits[0].medications)]
    med_voc = voc["med_voc"]
    assert med_voc.idx2word == dict(enumerate(tiny_dataset.medications.codes))
    assert all(med_voc.word2idx[w] == i for i, w in med_voc.idx2word.items())
    assert len(voc["diag_voc"].idx2word) == tiny_dataset.n_diagnoses and len(voc["pro_voc"].idx2word) == tiny_dataset.n_procedures
    assert np.array_equal(loaded["ddi_A_final.pkl"], tiny_dataset.ddi_adj)
    assert np.array_equal(loaded["ehr_adj_final.pkl"], tiny_dataset.ehr_adj)
    assert loaded["ddi_mask_H.pkl"].shape == tiny_dataset.molecules.fragment_mask.shape
    assert set(loaded["atc3toSMILES.pkl"]) == set(tiny_dataset.medications.codes)


def test_vocabulary_pickle_needs_no_medrec_bench(tiny_dataset, tmp_path):
    """The reference code has no data_prep: the Voc class must be stored by value, as SafeDrug's is."""
    export_safedrug(tiny_dataset, tmp_path)
    assert b"data_prep" not in (tmp_path / "voc_final.pkl").read_bytes()
    script = "import dill, sys; v = dill.load(open(sys.argv[1], 'rb')); print(len(v['med_voc'].idx2word))"
    out = subprocess.run([sys.executable, "-I", "-c", script, str(tmp_path / "voc_final.pkl")], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(tiny_dataset.n_medications)


def test_reference_style_reading_gives_the_harness_samples(tiny_dataset, tmp_path):
    """Read as the reference scripts do (positional split, per-visit [diag, proc, med] lists, vocabulary
    sizes from voc_final, SMILES per med_voc index): the same patients, visits and codes as our samples."""
    export_safedrug(tiny_dataset, tmp_path)
    records = dill.load(open(tmp_path / "records_final.pkl", "rb"))
    voc = dill.load(open(tmp_path / "voc_final.pkl", "rb"))
    counts = json.loads((tmp_path / "split.json").read_text())["patients"]
    sizes = [len(voc[name].idx2word) for name in ("diag_voc", "pro_voc", "med_voc")]
    assert all(0 <= code < size for patient in records for visit in patient for codes, size in zip(visit, sizes) for code in codes)
    smiles = dill.load(open(tmp_path / "atc3toSMILES.pkl", "rb"))
    assert [smiles[voc["med_voc"].idx2word[i]] for i in range(sizes[2])] == [list(s) for s in tiny_dataset.smiles]
    start = 0
    for part in ("train", "val", "test"):
        chunk = records[start : start + counts[part]]
        start += counts[part]
        samples = tiny_dataset.samples(part)  # last-visit protocol: one sample per patient, its last visit
        assert [patient[-1][2] for patient in chunk] == [list(s.target) for s in samples]
        assert [patient[-1][0] for patient in chunk] == [list(s.diagnoses) for s in samples]
        assert [[visit[2] for visit in patient[:-1]] for patient in chunk] == [[list(v.medications) for v in s.history] for s in samples]
    assert start == len(records)
