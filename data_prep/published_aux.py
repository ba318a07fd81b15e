"""``bench data aux --from DIR --out DIR``: the aux folder ``prepare`` reads, built from the files the
SafeDrug / GAMENet repositories publish.

The published pipelines ship ``atc3toSMILES.pkl`` (a pickle of {ATC3: [SMILES]}), ``ndc2RXCUI.txt``,
``ndc2atc_level4.csv``, ``drug-atc.csv`` and, for the DDI graph, the raw TWOSIDES table
``drug-DDI.csv`` (or its processed matrix ``ddi_A_final.pkl``). What this module makes of each:

- ``atc3toSMILES.pkl`` -> ``atc3_smiles.csv`` (``atc3,smiles``, file order kept). It is read with
  :class:`PlainDataUnpickler`, which builds only plain containers, numbers and strings and refuses
  everything else (a class, a function, a numpy array) with one message: a pickle from the internet
  can run code when loaded by a general unpickler, so none is ever used on a file we did not write;
- ``ndc2RXCUI.txt``, ``ndc2atc_level4.csv[.gz]``, ``drug-atc.csv``, ``atc_coding.csv[.gz]``: checked
  with the same loaders ``prepare`` uses, then copied;
- ``drug-DDI.csv[.gz]`` (+ ``drug-atc.csv``): copied (``prepare`` builds the DDI graph from it, with the
  side-effect selection of ``--ddi-side-effects``), and ``ddi_atc3_pairs.csv`` is derived from it
  with the K most frequent side effects, for pipelines that read processed pairs;
- ``ddi_A_final.pkl`` / ``voc_final.pkl`` hold a numpy matrix and instances of the script's ``Voc``
  class, which a plain-data unpickler must refuse: they are reported as not usable, and the DDI
  graph has to come from ``drug-DDI.csv``.

``sources.json`` in the output folder records which published file each aux file came from;
``bench data info`` shows it.
"""

from __future__ import annotations

import io
import json
import pickle
import shutil
from pathlib import Path

import pandas as pd

from data_prep.aux_maps import (
    ATC_CODE,
    load_atc_names,
    load_ndc_to_rxcui,
    load_rxcui_to_atc,
    load_stitch_to_atc3,
    twosides_pairs,
)
from data_prep.atomic import write_atomic
from data_prep.tables import DataError

PLAIN_GLOBALS = {("builtins", "set"), ("builtins", "frozenset"), ("__builtin__", "set"), ("__builtin__", "frozenset")}
SOURCES_FILE = "sources.json"


class PlainDataUnpickler(pickle.Unpickler):
    """Loads only dicts, lists, tuples, sets, strings, bytes, numbers, booleans and None.

    Those are built by pickle opcodes without looking up any global; every global lookup (the only
    way a pickle reaches a class or a function) is refused, except the set types of old protocols."""

    def __init__(self, file, path: Path):
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str):
        if (module, name) in PLAIN_GLOBALS:
            return set if name == "set" else frozenset
        raise DataError(
            f"{self.path}: the pickle holds a {module}.{name} object; only plain data (dicts, lists, strings, numbers) is "
            "loaded from a pickle we did not write - convert the file to CSV or use the published source it was made from"
        )

    def persistent_load(self, pid):
        raise DataError(f"{self.path}: the pickle refers to external objects; only plain data is loaded")


def load_plain_pickle(path: str | Path):
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    try:
        return PlainDataUnpickler(io.BytesIO(data), path).load()
    except DataError:
        raise
    except Exception as exc:  # a truncated or non-pickle file: every unpickling failure is bad input here
        raise DataError(f"{path}: not a readable pickle ({type(exc).__name__}: {exc})") from None


def atc3_smiles_table(path: str | Path) -> pd.DataFrame:
    """``atc3toSMILES.pkl`` -> rows of (atc3, smiles), checked: ATC level-3 keys, lists of strings."""
    path = Path(path)
    mapping = load_plain_pickle(path)
    if not isinstance(mapping, dict):
        raise DataError(f"{path}: expected a dict of ATC3 -> SMILES list, got a {type(mapping).__name__}")
    rows = []
    for atc3, smiles in mapping.items():
        if not isinstance(atc3, str) or not ATC_CODE.fullmatch(atc3) or len(atc3) != 4:
            raise DataError(f"{path}: key {atc3!r} is not an ATC level-3 code")
        smiles = [smiles] if isinstance(smiles, str) else smiles
        if not isinstance(smiles, (list, tuple, set)) or not all(isinstance(s, str) for s in smiles):
            raise DataError(f"{path}: the value of {atc3} is not a list of SMILES strings")
        rows += [(atc3, s) for s in dict.fromkeys(smiles)]
    return pd.DataFrame(rows, columns=["atc3", "smiles"])


def first_present(folder: Path, *names: str) -> Path | None:
    return next((folder / n for n in names if (folder / n).is_file()), None)


def build_aux(source: str | Path, out: str | Path, *, ddi_top_k: int = 40) -> dict[str, str]:
    """Build the aux folder ``out`` from the published files in ``source``; returns what came from where."""
    source, out = Path(source), Path(out)
    if not source.is_dir():
        raise DataError(f"{source}: not a folder (expected the published files: atc3toSMILES.pkl, ndc2RXCUI.txt, ...)")
    out.mkdir(parents=True, exist_ok=True)
    made: dict[str, str] = {}
    unusable = [n for n in ("ddi_A_final.pkl", "voc_final.pkl", "records_final.pkl") if (source / n).is_file()]

    smiles = first_present(source, "atc3toSMILES.pkl", "atc3_smiles.csv")
    if smiles is None:
        raise DataError(f"{source}: missing atc3toSMILES.pkl (SafeDrug's data/ folder publishes it)")
    if smiles.suffix == ".pkl":
        table = atc3_smiles_table(smiles)
        write_atomic(out / "atc3_smiles.csv", lambda tmp: table.to_csv(tmp, index=False))
        made["atc3_smiles.csv"] = f"{smiles.name}: {table['atc3'].nunique()} classes, {len(table)} SMILES (read as plain data)"
    else:
        _copy(smiles, out)
        made["atc3_smiles.csv"] = f"{smiles.name} (copied)"

    checks = {
        ("ndc2RXCUI.txt",): load_ndc_to_rxcui,
        ("ndc2atc_level4.csv.gz", "ndc2atc_level4.csv"): load_rxcui_to_atc,
        ("atc_coding.csv.gz", "atc_coding.csv"): load_atc_names,
        ("drug-atc.csv",): load_stitch_to_atc3,
    }
    required = {"ndc2RXCUI.txt", "ndc2atc_level4.csv.gz"}
    for names, check in checks.items():
        path = first_present(source, *names)
        if path is None:
            if names[0] in required:
                raise DataError(f"{source}: missing {' or '.join(names)} (published in the SafeDrug and GAMENet repositories)")
            continue
        check(path)
        _copy(path, out)
        made[path.name] = "copied (checked)"

    ddi = first_present(source, "drug-DDI.csv.gz", "drug-DDI.csv")
    if ddi is not None:
        if "drug-atc.csv" not in made:
            raise DataError(f"{source}: drug-DDI.csv needs drug-atc.csv beside it to map STITCH ids to ATC")
        _copy(ddi, out)
        made[ddi.name] = "copied: prepare builds the DDI graph from it (see --ddi-side-effects)"
        pairs = sorted(twosides_pairs(ddi, source / "drug-atc.csv", top_k=ddi_top_k, side_effects="most-frequent"))
        frame = pd.DataFrame(pairs, columns=["atc3_a", "atc3_b"])
        write_atomic(out / "ddi_atc3_pairs.csv", lambda tmp: frame.to_csv(tmp, index=False))
        made["ddi_atc3_pairs.csv"] = f"{ddi.name}: {len(frame)} ATC3 pairs of the {ddi_top_k} most frequent side effects"
    elif first_present(source, "ddi_atc3_pairs.csv") is not None:
        _copy(source / "ddi_atc3_pairs.csv", out)
        made["ddi_atc3_pairs.csv"] = "copied"
    else:
        hint = f" ({', '.join(unusable)} hold numpy arrays or class instances and are not read)" if unusable else ""
        raise DataError(f"{source}: no DDI source: need drug-DDI.csv (TWOSIDES, with drug-atc.csv) or ddi_atc3_pairs.csv{hint}")
    if unusable:
        made["not used"] = f"{', '.join(unusable)}: numpy arrays / class instances, refused by the plain-data unpickler"
    report = json.dumps({"from": str(source), "files": made}, indent=1)
    write_atomic(out / SOURCES_FILE, lambda tmp: tmp.write_text(report))
    return made


def _copy(path: Path, out: Path) -> None:
    write_atomic(out / path.name, lambda tmp: shutil.copyfile(path, tmp))


def aux_sources(folder: str | Path) -> dict[str, str]:
    """What ``sources.json`` of an aux folder says (empty when the folder was not built by build_aux)."""
    path = Path(folder) / SOURCES_FILE
    try:
        return json.loads(path.read_text())["files"]
    except (FileNotFoundError, KeyError, json.JSONDecodeError):
        return {}
