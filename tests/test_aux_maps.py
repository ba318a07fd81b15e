"""Auxiliary mappings: NDC normalisation, NDC -> ATC3 with fallback, DDI sources and side-effect selection."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data_prep.aux_maps import (
    AuxFiles,
    ddi_adjacency,
    load_ndc_to_rxcui,
    map_ndc_to_atc3,
    normalise_ndc,
    twosides_pairs,
)
from data_prep.tables import DataError

AUX = Path(__file__).resolve().parents[2] / "shared" / "data" / "aux"


def test_hyphenated_ndcs_become_eleven_digits():
    ndc = pd.Series(["0002-1407-01", "12345-678-90", "12345-6789-1", "bad", None, "123456-1-1"])
    assert normalise_ndc(ndc).tolist() == ["00002140701", "12345067890", "12345678901", None, None, None]


def test_fallback_maps_ndcs_that_ndc2rxcui_lacks():
    rxcui_atc = pd.DataFrame({"ndc11": ["00000000001", "00000000002"], "rxcui": ["10", "20"], "atc3": ["A01A", "B01A"]})
    ndc = pd.Series(["11111111111", "00000000002", "0", None])
    with_fallback = map_ndc_to_atc3(ndc, {"11111111111": "10"}, rxcui_atc)
    assert with_fallback.atc3.tolist()[:2] == ["A01A", "B01A"]
    assert with_fallback.coverage["rows_with_ndc"] == 2 and with_fallback.coverage["rows_mapped_via_rxcui"] == 1
    without = map_ndc_to_atc3(ndc, {"11111111111": "10"}, rxcui_atc, ndc_fallback=False)
    assert without.atc3.isna().tolist() == [False, True, True, True]


def test_ndc2rxcui_is_a_literal_not_code(tmp_path):
    path = tmp_path / "ndc2RXCUI.txt"
    path.write_text("__import__('os').system('echo pwned')")
    with pytest.raises(DataError, match="ndc2RXCUI.txt: not a Python dict literal"):
        load_ndc_to_rxcui(path)
    real = load_ndc_to_rxcui(AUX / "ndc2RXCUI.txt")
    assert len(real) > 4000 and "idx" not in real


def write_twosides(folder):
    """A tiny TWOSIDES file (SafeDrug's drug-DDI.csv columns): effect C0001 on 3 pairs, C0002 on 2, C0003 on 1."""
    rows = [
        ("CID1", "CID2", "C0001", "hypotension"),
        ("CID1", "CID3", "C0001", "hypotension"),
        ("CID2", "CID3", "C0001", "hypotension"),
        ("CID1", "CID4", "C0002", "nausea"),
        ("CID2", "CID4", "C0002", "nausea"),
        ("CID3", "CID4", "C0003", "rash"),
    ]
    frame = pd.DataFrame(rows, columns=["STITCH 1", "STITCH 2", "Polypharmacy Side Effect", "Side Effect Name"])
    frame.to_csv(folder / "drug-DDI.csv", index=False)
    (folder / "drug-atc.csv").write_text("CID1,A01AA01\nCID2,B01AC06,B01AA03\nCID3,C07AB02\nCID4,N02BE01\n")
    return folder / "drug-DDI.csv", folder / "drug-atc.csv"


def test_twosides_most_versus_least_frequent_side_effects(tmp_path):
    ddi, atc = write_twosides(tmp_path)
    most = twosides_pairs(ddi, atc, top_k=1, side_effects="most-frequent")
    assert most == {("A01A", "B01A"), ("A01A", "C07A"), ("B01A", "C07A")}
    least = twosides_pairs(ddi, atc, top_k=1, side_effects="least-frequent")
    assert least == {("C07A", "N02B")}
    assert twosides_pairs(ddi, atc, top_k=2, side_effects="least-frequent") == least | {("A01A", "N02B"), ("B01A", "N02B")}


def test_ddi_source_selection_and_symmetry(tmp_path):
    for name in ("ndc2RXCUI.txt", "ndc2atc_level4.csv.gz", "atc_coding.csv.gz", "atc3_smiles.csv", "ddi_atc3_pairs.csv"):
        (tmp_path / name).symlink_to(AUX / name)
    assert "ddi_pairs" in AuxFiles.locate(tmp_path).used()
    write_twosides(tmp_path)
    used = AuxFiles.locate(tmp_path).used()
    assert "twosides_ddi" in used and "ddi_pairs" not in used
    adj = ddi_adjacency({("A01A", "B01A"), ("B01A", "B01A"), ("A01A", "Z99Z")}, ["A01A", "B01A", "C07A"])
    assert np.array_equal(adj, adj.T) and not adj.diagonal().any()
    assert adj.sum() == 2
