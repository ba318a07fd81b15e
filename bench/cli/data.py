"""``bench data prepare | info | export | aux``: prepare, describe and export datasets of any registered source.

The dataset flags (:func:`bench.cli.options.dataset_options`) come from the registered sources, as
every command that reads a dataset takes them, so every command accepts the same flags and hits the
same cache entries. Bad input (:class:`data_prep.tables.DataError`) becomes a one-line message and a
non-zero exit.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from bench.cli import main
from bench.cli.options import dataset_flags, dataset_from_options, dataset_options
from data_prep import sources
from data_prep.prepare import cache_entry
from data_prep.stats import REALISM_KEYS, dataset_statistics
from data_prep.tables import DataError

EXPORTS = ("safedrug", *(s.name for s in sources.sources() if s.export is not None))


def sources_epilog() -> str:
    """Each registered source and its flags, for the data commands' help."""
    return "\b\nSources (--dataset) and their options:\n" + "\n".join(
        f"  {s.name}: {s.summary}; " + ", ".join([*(f"--{p}" for p in s.paths), *(f"--{f.param.replace('_', '-')}" for f in dataset_flags() if s.name in f.sources)])
        for s in sources.sources()
    )


@main.group()
def data() -> None:
    """Prepare, describe and export datasets."""


@data.command(epilog=sources_epilog())
@dataset_options
def prepare(**kwargs) -> None:
    """Prepare a dataset (or find it in the cache) and say where it is."""
    dataset = dataset_from_options(**kwargs)
    stats = dataset_statistics(dataset)
    click.echo(
        f"{dataset.name}: {stats['patients']} patients ({stats['patients_multi_visit']} multi-visit), "
        f"{stats['visits']} visits -> {cache_entry(dataset.name, dataset.meta['cache_key'], kwargs['cache_dir'])}"
    )


@data.command(epilog=sources_epilog())
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
    """The medication events recognised, join rates, unnamed codes, the rows each prescription window keeps and the aux sources."""
    if "medication_source" in stats:
        source = stats["medication_source"]
        events = Table(title=f"medication events: {source['shape']} ({source['description']})")
        events.add_column("events")
        events.add_column("count", justify="right")
        for key, label in (("events", "read"), ("events_with_a_code", "with an NDC or ATC code"), ("events_mapped", "mapped to an ATC class"),
                           ("events_in_an_admission", "within an admission"), ("events_mapped_in_an_admission", "mapped, within an admission")):
            events.add_row(label, _share(source[key], source["events"]))
        console.print(events)
        console.print(f"medication codes not read: {source['medication_codes_not_read']}")
        console.print(f"how the medication sets differ from the mimic4 reader's: {source['differences']}")
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


@data.command(epilog=sources_epilog())
@dataset_options
@click.option("--format", "export_format", type=click.Choice(EXPORTS), default="safedrug", show_default=True,
              help="safedrug: SafeDrug's dill pickles; a source's name: its own layout (preparing the export gives the dataset back).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder to write the files into.")
@click.option("--ndc-aux", type=click.Path(path_type=Path), help="Source layouts: aux folder to take real NDCs from (default: --aux, else made-up NDCs).")
@click.option("--rows-per-medication", type=click.FloatRange(min=1), help="Source layouts: mean prescription rows per visit and class [MIMIC tables 2, MEDS 1].")
def export(export_format: str, out: Path, ndc_aux: Path | None, rows_per_medication: float | None, **kwargs) -> None:
    """Write the dataset in a reference code base's layout (SafeDrug's dill pickles) or in a source's own
    layout (MIMIC-IV or MIMIC-III tables, a MEDS dataset) with the aux folder that maps it back."""
    dataset = dataset_from_options(**kwargs)
    try:
        if export_format == "safedrug":
            from data_prep.export import export_safedrug

            written = export_safedrug(dataset, out)
        else:
            written = sources.get(export_format).export(dataset, out, aux=ndc_aux or kwargs.get("aux"), rows_per_medication=rows_per_medication)
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
