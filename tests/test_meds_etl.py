"""MEDS as the MIMIC-IV MEDS ETL writes it: the synthetic cohort exported as MEDS and rewritten into the 0.2
and 0.1.x releases' shapes (``meds_etl_shapes``) prepares with default options into the cohort it came
from; detection, the options that name a shape, and every failure as one line naming its cause."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from bench.cli import main
from data_prep.meds import MedsOptions, export_meds, locate_meds, read_meds
from data_prep.meds_etl import code_pattern
from data_prep.prepare import load_dataset
from data_prep.synthetic import SyntheticOptions, generate
from data_prep.tables import DataError
from meds_etl_shapes import as_mimic_iv_meds
from round_trip import assert_same_cohort

AUX = Path(__file__).resolve().parents[2] / "shared" / "data" / "aux"
IDENTIFIER = re.compile(r"\b[12]00\d{5}\b")  # the export's subject (10000001...) and admission (20000001...) ids


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """The synthetic cohort, its MEDS export (real NDCs: most start with 0) and the two ETL shapes."""
    synth = generate(SyntheticOptions(patients=120, seed=5))
    root = tmp_path_factory.mktemp("meds-etl")
    export_meds(synth, root / "export", aux=AUX)
    prescriptions = as_mimic_iv_meds(root / "export", root / "0.2", "0.2")
    assert prescriptions is None
    prescriptions = as_mimic_iv_meds(root / "export", root / "0.1", "0.1")
    return synth, root, prescriptions


def prepare(root: Path, **options):
    return read_meds(locate_meds(root, root / "aux"), MedsOptions(**options))


def codes(root: Path) -> list[str]:
    return pq.read_table(root / "data" / "0.parquet", columns=["code"]).column("code").to_pylist()


def failure(root: Path, **options) -> str:
    with pytest.raises(DataError) as caught:
        prepare(root, **options)
    message = str(caught.value)
    assert "\n" not in message and not IDENTIFIER.search(message), message
    return message


def test_release_0_2_prepares_with_default_options_into_the_exported_cohort(shapes):
    synth, root, _ = shapes
    written = codes(root / "0.2")
    starts = [c for c in written if c.startswith("MEDICATION//START//")]
    assert any(len(c.rsplit("//", 1)[1]) < 11 for c in starts if not c.endswith("UNK"))  # integer NDCs lost their zeros
    assert sum(c.startswith("MEDICATION//STOP//") for c in written) == len(starts)
    emar = re.compile(r"MEDICATION//(?!START//|STOP//).+//(Administered|Not Given)//([0-9]+|UNK)")
    assert sum(bool(emar.fullmatch(c)) for c in written) > len(starts)  # eMAR copies of the same orders
    assert any(c.startswith("INSURANCE//") for c in written)
    assert "insurance" not in pq.read_schema(root / "0.2" / "data" / "0.parquet").names

    prepared = prepare(root / "0.2")
    assert_same_cohort(synth, prepared)
    source = prepared.meta["medication_source"]
    unknown = sum(c.endswith("//UNK") for c in starts)
    assert source["shape"] == "mimic-iv-meds-0.2" and source["events"] == len(starts)  # START events only
    assert source["events_with_a_code"] == source["events_mapped"] == len(starts) - unknown
    admissions = prepared.meta["admissions"]  # one order per admission started before it: joined by time, it drops out
    assert source["events_mapped_in_an_admission"] == source["events_mapped"] - admissions
    assert "MEDICATION//STOP//{text}//{number}" in source["medication_codes_not_read"]
    assert "MEDICATION//{text}//{text}//{number}" in source["medication_codes_not_read"]


def test_release_0_1_prepares_with_the_prescriptions_file_into_the_exported_cohort(shapes):
    synth, root, prescriptions = shapes
    assert not any(c.rsplit("//", 1)[1].isdigit() for c in codes(root / "0.1") if c.startswith("MEDICATION//"))
    prepared = prepare(root / "0.1", prescriptions_file=str(prescriptions))
    assert_same_cohort(synth, prepared)  # BASE / ADDITIVE rows, NDC 0 and rows without poe_id are not read
    assert prepared.meta["medication_source"]["shape"] == "mimic-iv-meds-0.1"
    assert prepared.meta["files"]["option:prescriptions_file"] == str(prescriptions)

    message = failure(root / "0.1")
    assert "0.1.x" in message and "--prescriptions-file" in message and "poe_id" in message and "hadm_id" not in message


def test_the_prescriptions_file_is_part_of_the_cache_key(shapes, tmp_path):
    _, root, prescriptions = shapes
    edited = tmp_path / "prescriptions.csv.gz"
    edited.write_bytes(prescriptions.read_bytes())

    def key() -> str:
        return load_dataset("meds", paths={"root": root / "0.1", "aux": root / "0.1" / "aux"}, options={"prescriptions_file": str(edited)},
                            cache_dir=tmp_path / "cache").meta["cache_key"]

    first = key()
    assert key() == first  # the same content: the same entry
    edited.write_bytes(gzip.compress(gzip.decompress(prescriptions.read_bytes()) + b"0-0,MAIN,Extra,0,0\n"))
    assert key() != first
    with pytest.raises(DataError, match=r"--prescriptions-file .*missing.csv.gz: no such file"):
        load_dataset("meds", paths={"root": root / "0.1", "aux": root / "0.1" / "aux"}, options={"prescriptions_file": str(tmp_path / "missing.csv.gz")})


def with_codes(source: Path, out: Path, rewrite) -> Path:
    """A copy of the dataset at ``source`` with its codes rewritten (plus added rows, when ``rewrite`` returns more)."""
    table = pq.read_table(source / "data" / "0.parquet")
    table = rewrite(table)
    (out / "data").mkdir(parents=True)
    pq.write_table(table, out / "data" / "0.parquet")
    for folder in ("metadata", "aux"):
        (out / folder).symlink_to((source / folder).resolve())
    return out


def test_detection_cannot_tell_and_the_option_names_the_shape(shapes, tmp_path):
    synth, root, _ = shapes
    original = pq.read_table(root / "export" / "data" / "0.parquet", columns=["code"]).column("code").to_pylist()
    ndc_events = [i for i, c in enumerate(original) if c.startswith("MEDICATION//NDC//")]

    def add_ndc_events(table: pa.Table) -> pa.Table:  # a producer that wrote both the ETL's START events and NDC events
        export = pq.read_table(root / "export" / "data" / "0.parquet").take(pa.array(ndc_events)).select(table.column_names[:5])
        return pa.concat_tables([table, export.cast(table.schema)])

    both = with_codes(root / "0.2", tmp_path / "both", add_ndc_events)
    message = failure(both)
    assert "cannot tell which medication events" in message and "--etl-shape ndc-atc-codes or mimic-iv-meds-0.2" in message
    assert_same_cohort(synth, prepare(both, etl_shape="ndc-atc-codes"))
    assert_same_cohort(synth, prepare(both, etl_shape="mimic-iv-meds-0.2"))

    def half_named(table: pa.Table) -> pa.Table:  # START codes of both releases' forms
        code = [c.rsplit("//", 1)[0] if c.startswith("MEDICATION//START//") and i % 2 else c for i, c in enumerate(table.column("code").to_pylist())]
        return table.set_column(table.column_names.index("code"), "code", pa.array(code))

    message = failure(with_codes(root / "0.2", tmp_path / "mixed", half_named))
    assert "cannot tell the MIMIC-IV MEDS ETL release" in message and "--etl-shape mimic-iv-meds-0.2" in message


def test_code_format_failures_name_the_codes_found_and_the_option(shapes, tmp_path):
    _, root, prescriptions = shapes
    # the crash: NDC prefix pointed at the 0.2 START codes gave an IndexError (nothing maps)
    message = failure(root / "0.2", ndc_prefix="MEDICATION//START//")
    assert message.count("none of the") == 1 and "maps to an ATC class" in message and "hadm_id" not in message
    assert "found MEDICATION//{text}//{text}//{number}" in message and "--etl-shape" in message and "--ndc-prefix" in message

    message = failure(root / "0.2", etl_shape="mimic-iv-meds-0.1", prescriptions_file=str(prescriptions))
    assert "none of its events" in message and "MEDICATION//START//{text}//{number}" in message

    message = failure(root / "0.2", prescriptions_file=str(prescriptions))
    assert "drop --prescriptions-file" in message

    def all_unknown(table: pa.Table) -> pa.Table:
        code = [re.sub(r"//\d+$", "//UNK", c) if c.startswith("MEDICATION//START//") else c for c in table.column("code").to_pylist()]
        return table.set_column(table.column_names.index("code"), "code", pa.array(code))

    message = failure(with_codes(root / "0.2", tmp_path / "unk", all_unknown))
    assert "carry no code (codes ending in UNK" in message

    def renamed(table: pa.Table) -> pa.Table:  # another producer's prefix, not named by an option
        code = [c.replace("MEDICATION//", "RX//") for c in table.column("code").to_pylist()]
        return table.set_column(table.column_names.index("code"), "code", pa.array(code))

    message = failure(with_codes(root / "0.2", tmp_path / "rx", renamed))
    assert "no code starts with MEDICATION" in message and "RX//START//{text}//{number}" in message and "--pharmacy-start-prefix" in message
    assert_same_cohort(shapes[0], prepare(tmp_path / "rx", pharmacy_start_prefix="RX//START//"))

    message = failure(root / "0.2", first_hours=0.001)  # mapped, but no order starts within the window
    assert "none is left for a visit" in message and "--prescription-window" in message

    message = failure(root / "0.2", diagnosis_prefix="DX//")
    assert "no diagnoses events: no code starts with DX//" in message and "--diagnosis-prefix" in message and "DIAGNOSIS//ICD//" in message


def test_code_patterns_mask_values():
    assert code_pattern("MEDICATION//START//Heparin 5000 UNIT//63323026201") == "MEDICATION//START//{text}//{number}"
    assert code_pattern("MEDICATION//Insulin//Not Given//UNK") == "MEDICATION//{text}//{text}//UNK"
    assert code_pattern("LAB//SPECIMEN_COLLECTED//50912//STAT") == "LAB//SPECIMEN_COLLECTED//{number}//STAT"


def test_data_info_says_which_shape_and_how_it_differs_from_mimic4(shapes, tmp_path):
    _, root, _ = shapes
    arguments = ["data", "info", "--dataset", "meds", "--root", str(root / "0.2"), "--aux", str(root / "0.2" / "aux"), "--cache-dir", str(tmp_path)]
    result = CliRunner().invoke(main, [*arguments, "--json"])
    assert result.exit_code == 0, result.output
    source = json.loads(result.output)["medication_source"]
    assert source["shape"] == "mimic-iv-meds-0.2" and source["events_mapped"] > 0
    result = CliRunner().invoke(main, arguments, terminal_width=200)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "mimic-iv-meds-0.2" in text and "mapped to an ATC class" in text and "orders started before the admission" in text
