"""``bench data prepare | info | export | aux``, and the dataset options every dataset-reading command shares.

``dataset_options`` + ``dataset_from_options`` are the one way a command (``bench run`` included)
picks a dataset, so every command accepts the same flags and hits the same cache entries. Bad input
(:class:`data_prep.tables.DataError`) becomes a one-line message and a non-zero exit.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from bench.cli import main
from data_prep.dataset import PreparedDataset
from data_prep.prepare import DATASETS, cache_entry, load_dataset
from data_prep.stats import REALISM_KEYS, dataset_statistics
from data_prep.synthetic import PROFILES
from data_prep.tables import DataError

# MIMIC pipeline flags -> MimicOptions fields (only flags the user gives are passed on).
MEDS_PREFIX_KINDS = ("admission", "discharge", "diagnosis", "procedure", "ndc", "atc", "gender")
MIMIC_FLAGS = ("prescription_window", "first_hours", "ndc_fallback", "top_diagnoses", "top_procedures", "top_medications", "min_visits", "ddi_source", "ddi_side_effects")


def dataset_options(command):
    """Add --dataset, --root, --aux, --patients, --split-seed, --cache-dir, --refresh and MIMIC options."""
    flags = [
        click.option("--dataset", type=click.Choice(DATASETS), default="synth", show_default=True, help="Data source."),
        click.option("--root", type=click.Path(path_type=Path), help="MIMIC folder (MIMIC-IV: the folder holding hosp/) or MEDS dataset folder."),
        click.option("--aux", type=click.Path(path_type=Path), help="Folder of auxiliary mapping files (ndc2RXCUI.txt, ...)."),
        click.option("--patients", type=click.IntRange(min=1), help="Synthetic cohort size (synth only) [the profile's: 6350 for mimic3]."),
        click.option(
            "--profile",
            type=click.Choice(list(PROFILES)),
            help="Synthetic cohort: the column of the LEADER paper's Table III to match (mimic3: 6,350 ICU patients; mimic4: 8,906 admissions) [mimic3].",
        ),
        click.option("--split-seed", type=int, help="Seed of the patient-level 8:1:1 split."),
        click.option("--cache-dir", type=click.Path(path_type=Path), help="Prepared-dataset cache (default: the user cache)."),
        click.option("--refresh", is_flag=True, help="Prepare again even when the cache holds the dataset."),
        click.option(
            "--prescription-window",
            type=click.Choice(["first-hours", "first-start-date", "all"]),
            help="MIMIC/MEDS: which prescriptions count [first-hours: start < admit + --first-hours, the LEADER paper's sentence; "
            "first-start-date: each stay's earliest start date, the GAMENet/SafeDrug scripts; all: LEADER's released preprocessing].",
        ),
        click.option("--first-hours", type=float, help="MIMIC/MEDS: the first-hours window, in hours [24]."),
        click.option(
            "--meds-prefix",
            "meds_prefixes",
            multiple=True,
            metavar="KIND=PREFIX",
            help="MEDS: the code prefix of one event kind (admission, discharge, diagnosis, procedure, ndc, atc, gender; "
            "defaults: the MIMIC-IV MEDS ETL's codes), e.g. --meds-prefix ndc=MEDICATION//NDC//.",
        ),
        click.option("--ndc-fallback/--no-ndc-fallback", default=None, help="MIMIC: map NDCs missing from ndc2RXCUI via ndc2atc_level4's NDC column [on]."),
        click.option("--top-diagnoses", type=click.IntRange(min=1), help="MIMIC: keep the k most frequent diagnoses [2000]."),
        click.option("--top-procedures", type=click.IntRange(min=1), help="MIMIC: keep the k most frequent procedures [1000]."),
        click.option("--top-medications", type=click.IntRange(min=1), help="MIMIC: keep the k most frequent medications [300]."),
        click.option("--min-visits", type=click.IntRange(min=1), help="MIMIC: drop patients with fewer visits [1]."),
        click.option("--ddi-source", type=click.Choice(["auto", "twosides", "pairs"]), help="MIMIC: DDI graph source [auto]."),
        click.option(
            "--ddi-side-effects",
            type=click.Choice(["most-frequent", "least-frequent"]),
            help="MIMIC, TWOSIDES: which 40 side effects define the DDI graph [most-frequent; least-frequent reproduces GAMENet].",
        ),
    ]
    return functools.reduce(lambda wrapped, flag: flag(wrapped), reversed(flags), command)


def dataset_from_options(
    *, dataset: str, root=None, aux=None, patients=None, profile=None, split_seed=None, cache_dir=None, refresh=False, **pipeline
) -> PreparedDataset:
    """Load the dataset the ``dataset_options`` flags describe, with a status line; one-line errors."""
    options = {key: value for key, value in pipeline.items() if key in MIMIC_FLAGS and value is not None}
    for item in pipeline.get("meds_prefixes") or ():
        if dataset != "meds":
            raise click.UsageError("--meds-prefix applies to --dataset meds only")
        kind, sep, prefix = item.partition("=")
        if not sep or kind not in MEDS_PREFIX_KINDS:
            raise click.UsageError(f"--meds-prefix {item!r}: expected KIND=PREFIX with KIND one of {', '.join(MEDS_PREFIX_KINDS)}")
        options[f"{kind}_prefix"] = prefix
    if options and dataset == "synth":
        raise click.UsageError(f"--{'/--'.join(k.replace('_', '-') for k in options)} apply to MIMIC and MEDS datasets only")
    for flag, value in (("patients", patients), ("profile", profile)):
        if value is not None:
            if dataset != "synth":
                raise click.UsageError(f"--{flag} applies to --dataset synth only")
            options[flag] = value
    if split_seed is not None:
        options["split_seed"] = split_seed
    console = Console(stderr=True)
    try:
        with console.status(f"{dataset}: starting") as status:
            return load_dataset(
                dataset,
                root=root,
                aux=aux,
                cache_dir=cache_dir,
                refresh=refresh,
                options=options,
                status=lambda message: status.update(f"{dataset}: {message}"),
            )
    except DataError as exc:
        raise click.ClickException(str(exc)) from None


@main.group()
def data() -> None:
    """Prepare, describe and export datasets."""


@data.command()
@dataset_options
def prepare(**kwargs) -> None:
    """Prepare a dataset (or find it in the cache) and say where it is."""
    dataset = dataset_from_options(**kwargs)
    stats = dataset_statistics(dataset)
    click.echo(
        f"{dataset.name}: {stats['patients']} patients ({stats['patients_multi_visit']} multi-visit), "
        f"{stats['visits']} visits -> {cache_entry(dataset, kwargs['cache_dir'])}"
    )


@data.command()
@dataset_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
def info(as_json: bool, **kwargs) -> None:
    """The statistics of the LEADER paper's Table III, the realism figures (medication persistence, ground-truth
    DDI rate, DDI density) and mapping coverage."""
    dataset = dataset_from_options(**kwargs)
    stats = dataset_statistics(dataset)
    if as_json:
        click.echo(json.dumps(stats, indent=1))
        return
    console = Console()
    table = Table(title=f"{dataset.name}: statistics (LEADER Table III)")
    table.add_column("item")
    table.add_column("value", justify="right")
    for key, value in stats.items():
        if not isinstance(value, dict) and key not in REALISM_KEYS:
            table.add_row(key.replace("_", " "), f"{value:.4f}" if isinstance(value, float) else str(value))
    table.add_row("split (train / val / test)", " / ".join(str(n) for n in stats["split"].values()))
    console.print(table)
    realism = Table(title=f"{dataset.name}: realism (over {stats['visit_pairs']} visits with an earlier visit)")
    realism.add_column("item")
    realism.add_column("value", justify="right")
    for key in REALISM_KEYS:
        realism.add_row(key.replace("_", " "), f"{stats[key]:.4f}")
    console.print(realism)
    _print_source_tables(console, stats)
    coverage = stats.get("mapping_coverage")
    if coverage:
        mapped = Table(title="NDC -> ATC3 mapping coverage")
        for column in ("", "via ndc2RXCUI", "with NDC fallback", "of"):
            mapped.add_column(column, justify="right")
        rows, ndcs = coverage["rows_with_ndc"], coverage["distinct_ndcs"]
        mapped.add_row("prescription rows with an NDC", _share(coverage["rows_mapped_via_rxcui"], rows), _share(coverage["rows_mapped"], rows), str(rows))
        mapped.add_row("distinct NDCs", _share(coverage["distinct_ndcs_mapped_via_rxcui"], ndcs), _share(coverage["distinct_ndcs_mapped"], ndcs), str(ndcs))
        console.print(mapped)


def _print_source_tables(console: Console, stats: dict) -> None:
    """Join rates, unnamed codes, the rows each prescription window keeps and the aux sources."""
    if "join_rates" in stats:
        joins = Table(title="rows whose hadm_id joins admissions")
        for column in ("table", "joined", "of rows with an hadm_id"):
            joins.add_column(column, justify="right")
        for table, rate in stats["join_rates"].items():
            joins.add_row(table, _share(rate["joined"], rate["rows"]), str(rate["rows"]))
        console.print(joins)
    if "unnamed_codes" in stats:
        unnamed = ", ".join(f"{kind} {count}" for kind, count in stats["unnamed_codes"].items())
        console.print(f"codes without a name in the ICD tables (shown as 'ICD-9 diagnosis 1234'): {unnamed}")
    if "prescription_rows_by_window" in stats:
        windows = Table(title="mapped prescription rows each window keeps (rows of known admissions)")
        windows.add_column("window")
        windows.add_column("rows", justify="right")
        for rule, rows in stats["prescription_rows_by_window"].items():
            windows.add_row(rule, str(rows))
        console.print(windows)
    if "aux_sources" in stats:
        sources = Table(title="where each graph and mapping came from")
        sources.add_column("item")
        sources.add_column("source")
        for item, source in stats["aux_sources"].items():
            sources.add_row(item, source)
        console.print(sources)


def _share(part: int, whole: int) -> str:
    return f"{part} ({100 * part / max(whole, 1):.1f}%)"


@data.command()
@dataset_options
@click.option("--format", "export_format", type=click.Choice(["safedrug", "mimic4", "mimic3", "meds"]), default="safedrug", show_default=True)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder to write the files into.")
@click.option("--ndc-aux", type=click.Path(path_type=Path), help="mimic4/mimic3/meds: aux folder to take real NDCs from (default: --aux, else made-up NDCs).")
@click.option("--rows-per-medication", type=click.FloatRange(min=1), default=2.0, show_default=True, help="mimic4/mimic3: mean prescription rows per visit and class.")
def export(export_format: str, out: Path, ndc_aux: Path | None, rows_per_medication: float, **kwargs) -> None:
    """Write the dataset in a reference code base's layout (SafeDrug's dill pickles), as MIMIC-IV or
    MIMIC-III tables, or as a MEDS dataset; the last three come with the aux folder that maps them back."""
    dataset = dataset_from_options(**kwargs)
    ndc_source = ndc_aux or kwargs.get("aux")
    try:
        if export_format == "safedrug":
            from data_prep.export import export_safedrug

            written = export_safedrug(dataset, out)
        elif export_format == "meds":
            from data_prep.meds import export_meds

            written = export_meds(dataset, out, aux=ndc_source)
        else:
            from data_prep.export_tables import TableExportOptions, export_tables

            written = export_tables(dataset, out, export_format, aux=ndc_source, options=TableExportOptions(rows_per_medication=rows_per_medication))
    except DataError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"wrote {len(written)} files to {out}: {', '.join(str(p.relative_to(out)) for p in written)}")


@data.command()
@click.option("--from", "source", type=click.Path(path_type=Path), required=True, help="Folder of the files SafeDrug/GAMENet publish.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Aux folder to write (pass it to --aux).")
@click.option("--ddi-top-k", type=click.IntRange(min=1), default=40, show_default=True, help="Side effects for ddi_atc3_pairs.csv.")
def aux(source: Path, out: Path, ddi_top_k: int) -> None:
    """Build the aux folder prepare reads from the published files (atc3toSMILES.pkl read as plain data only)."""
    from data_prep.published_aux import build_aux

    try:
        made = build_aux(source, out, ddi_top_k=ddi_top_k)
    except DataError as exc:
        raise click.ClickException(str(exc)) from None
    for name, what in made.items():
        click.echo(f"{name}: {what}")
    click.echo(f"aux folder: {out}")
