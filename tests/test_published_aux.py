"""bench data aux: the aux folder from the files SafeDrug/GAMENet publish; pickles are read as plain data only."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import dill
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from bench.cli import main
from data_prep.mimic import MimicOptions, locate, read_mimic
from data_prep.mimic_layout import MIMIC3, MIMIC4

LAYOUTS = {"mimic3": MIMIC3, "mimic4": MIMIC4}
from data_prep.published_aux import build_aux, load_plain_pickle
from data_prep.stats import dataset_statistics
from data_prep.tables import DataError
from test_aux_maps import write_twosides

DEMO = Path(__file__).resolve().parents[2] / "shared" / "data" / "mimic-iii-demo-1.4"
AUX = DEMO.parent / "aux"


class RunsACommand:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def published_folder(folder: Path) -> Path:
    """What the repositories publish: atc3toSMILES.pkl (dill), ndc2RXCUI.txt, ndc2atc_level4.csv, TWOSIDES."""
    folder.mkdir()
    smiles = pd.read_csv(AUX / "atc3_smiles.csv").groupby("atc3", sort=False)["smiles"].agg(list).to_dict()
    (folder / "atc3toSMILES.pkl").write_bytes(dill.dumps(smiles))
    for name in ("ndc2RXCUI.txt", "ndc2atc_level4.csv.gz"):
        shutil.copyfile(AUX / name, folder / name)
    write_twosides(folder)
    (folder / "ddi_A_final.pkl").write_bytes(pickle.dumps(np.eye(3)))
    return folder


def test_plain_data_pickles_load_and_anything_else_is_refused(tmp_path):
    plain = {"A01A": ["CCO", "CCN"], "B01A": ("C",), "n": {1, 2.5, None, True}}
    (tmp_path / "plain.pkl").write_bytes(pickle.dumps(plain, protocol=2))
    assert load_plain_pickle(tmp_path / "plain.pkl") == plain
    marker = tmp_path / "ran"
    for name, value in (("command.pkl", {"A01A": RunsACommand(marker)}), ("array.pkl", np.zeros(2))):
        (tmp_path / name).write_bytes(pickle.dumps(value))
        with pytest.raises(DataError, match=rf"{name}: the pickle holds a .* object; only plain data"):
            load_plain_pickle(tmp_path / name)
    assert not marker.exists()
    (tmp_path / "truncated.pkl").write_bytes(pickle.dumps(plain)[:10])
    with pytest.raises(DataError, match="truncated.pkl: not a readable pickle"):
        load_plain_pickle(tmp_path / "truncated.pkl")


def test_aux_folder_from_published_files_prepares_the_demo(tmp_path):
    source = published_folder(tmp_path / "published")
    made = build_aux(source, tmp_path / "aux", ddi_top_k=2)
    assert "atc3toSMILES.pkl" in made["atc3_smiles.csv"] and "ddi_A_final.pkl" in made["not used"]
    written = pd.read_csv(tmp_path / "aux" / "atc3_smiles.csv")
    assert written.equals(pd.read_csv(AUX / "atc3_smiles.csv").drop_duplicates().reset_index(drop=True))
    dataset = read_mimic(locate(MIMIC3, DEMO, tmp_path / "aux"), MimicOptions())
    reference = read_mimic(locate(MIMIC3, DEMO, AUX), MimicOptions())
    assert [p.patient_id for p in dataset.patients] == [p.patient_id for p in reference.patients]
    assert dataset.smiles == reference.smiles
    assert dataset.meta["ddi_source"].startswith("TWOSIDES drug-DDI.csv")
    sources = dataset_statistics(dataset)["aux_sources"]  # what bench data info shows
    assert "atc3toSMILES.pkl" in sources["molecules (SMILES)"] and sources["ddi_graph"].startswith("TWOSIDES")


def test_cli_refuses_a_pickle_that_is_not_plain_data(tmp_path):
    source = published_folder(tmp_path / "published")
    (source / "atc3toSMILES.pkl").write_bytes(pickle.dumps({"A01A": RunsACommand(tmp_path / "ran")}))
    result = CliRunner().invoke(main, ["data", "aux", "--from", str(source), "--out", str(tmp_path / "aux")])
    assert result.exit_code != 0
    assert len(result.output.strip().splitlines()) == 1 and "only plain data" in result.output
    assert not (tmp_path / "ran").exists()
