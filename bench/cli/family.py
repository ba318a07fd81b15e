"""``bench ablate FAMILY`` (e.g. the LEADER paper's Table VI) and ``bench sweep FAMILY`` (its Figures 2-3).

A model family (:class:`bench.contract.ModelFamily`, registered in the ``medrec_bench.families``
entry-point group) declares its ablation variants, alternatives, sweepable options and teacher; this
module knows no family by name. Both commands build a :class:`bench.spec.RunSpec` whose entries are
the variants and run it like ``bench run`` (:func:`bench.cli.run.execute_spec`), so every variant sees
the same split, the same resamples and the same teacher, and its results are stored like any run. Nothing is chosen on test: the sweep picks
its value by validation PRAUC and plots validation beside test; the ablation table gives validation
PRAUC beside the test columns.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import click
from rich.console import Console
from rich.table import Table

from bench import registry, tables
from bench.cli import main
from bench.cli.options import dataset_options, evaluation_options, executor_options, parse_settings, preset_option, run_spec
from bench.cli.run import execute_spec
from bench.contract import ModelFamily
from bench.plan import teacher_label
from bench.results import RunFolder, write_json
from bench.spec import Entry
from data_prep.atomic import write_atomic
from data_prep.cache import stable_hash
from data_prep.protocol import GROUPS


def parse_list(raw: str, known: dict | None, option: str) -> list[str]:
    items = [item.strip() for item in raw.split(",") if item.strip()]
    unknown = sorted(set(items) - set(known)) if known is not None else []
    if unknown:
        raise click.BadParameter(f"unknown {unknown}; choose from {', '.join(known)}", param_hint=option)
    return list(dict.fromkeys(items))


def _family(_ctx, _param, name: str) -> ModelFamily:
    try:
        return registry.family(name)
    except registry.UnknownModelError as error:
        raise click.BadParameter(str(error)) from None


def run_options(command):
    """Options shared by ablate and sweep (besides the dataset's)."""
    for option in reversed(
        [  # each item decorates the command (evaluation_options adds several options)
            click.argument("family", callback=_family),
            preset_option(),
            evaluation_options,
            click.option("--set", "settings", multiple=True, metavar="KEY=VALUE", help="An option of the family's model for every entry (JSON values), e.g. batch_size=16 or teacher_overrides='{\"teacher_path\": \"...\"}'."),
            click.option("--results-dir", type=click.Path(path_type=Path), default=Path("results"), show_default=True),
            click.option("--run-id", help="Run folder name (default: derived from the arguments, so a rerun resumes)."),
            click.option("--device", default="cpu", show_default=True),
            click.option("--deterministic", is_flag=True, help="torch's deterministic algorithms, as bench run's."),
            executor_options,
        ]
    ):
        command = option(command)
    return dataset_options(command)


def prauc_table(summary: dict, title: str, full_label: str | None = None) -> Table:
    """Validation PRAUC, test PRAUC by group; in an ablation also the full model's lead over each variant and its p-value."""
    versus = summary.get("versus_full", {})
    table = Table(title=title, caption="\n".join(tables.versus_full_notes(summary, full_label)), caption_justify="left")
    table.add_column("entry")
    table.add_column("val PRAUC", justify="right")
    for group in GROUPS:
        table.add_column(f"test PRAUC {group}", justify="right")
    if versus:
        table.add_column(f"{full_label} - entry, overall (p)", justify="right")
    for label, groups in summary["models"].items():
        validation = summary["validation"][label]["overall"]
        cells = ["-" if validation is None else f"{validation['prauc']:.4f}"]
        cells += [f"{groups[g]['prauc']['mean']:.4f} ± {groups[g]['prauc']['pm']:.4f}" if groups.get(g) else "-" for g in GROUPS]
        if versus:
            test = versus.get(label, {}).get("overall", {}).get("prauc")
            p = "n/a" if test is None or test["p"] is None else f"{test['p']:.3g}"
            cells.append("" if test is None else f"{test['delta']:+.4f} ({p})")
        table.add_row(label, *cells)
    return table


@main.command()
@run_options
@click.option("--drop", "drops", multiple=True, help="An ablation the family declares (repeatable; an unknown one lists them), e.g. LEADER's kd, feature-kd, align, shared-visit; default: all unless --compare is given.")
@click.option("--compare", default="", help="Alternatives the family declares, comma-separated (LEADER: temperature-kd, projector-kd).")
@click.option("--with-teacher", is_flag=True, help="Add the family's teacher as an entry, so the summary holds each student's retention of it.")
def ablate(family: ModelFamily, drops, compare, with_teacher, **values) -> None:
    """Run a family's full model and its ablated variants on the same splits and resamples."""
    drops = parse_list(",".join(drops), family.ablations, "--drop")
    alternatives = parse_list(compare, family.alternatives, "--compare")
    drops = drops or ([] if alternatives else list(family.ablations))
    if with_teacher and family.teacher is None:
        raise click.UsageError(f"family {family.name!r} has no teacher")
    common = parse_settings(values["settings"])
    try:
        entries = ablation_entries(family, drops, alternatives, common, with_teacher, values["preset"])
    except (ValueError, FileNotFoundError) as error:
        raise click.UsageError(str(error)) from None
    proposed = (family.label, *(e.label for e in entries if e.model == family.teacher))
    spec = run_spec(values, entries, proposed=proposed, full_model=family.label,
                    command={"command": "ablate", "family": family.name, "drops": drops, "compare": alternatives, "with_teacher": with_teacher})
    summary, run_dir = execute_spec(spec, values, Console(stderr=True))
    Console().print(prauc_table(summary, f"{family.label} ablation ({run_dir})", family.label))
    if summary.get("retention_intervals"):  # the ablation layout's PRAUC; bench table --table retention has Jaccard and F1 too
        Console().print(tables.rich_retention(summary, tables.table_metrics("ablation")))


def _merged(common: dict, overrides: dict) -> dict:
    """The variant's settings over the common ones; a dict setting (teacher_overrides) is merged key by key."""
    out = dict(common)
    for key, value in overrides.items():
        out[key] = {**common[key], **value} if isinstance(value, dict) and isinstance(common.get(key), dict) else value
    return out


def ablation_entries(family: ModelFamily, drops: Sequence[str], alternatives: Sequence[str], common: dict, with_teacher: bool,
                     preset: str = "paper") -> list[Entry]:
    """The full model first, then each variant: the common settings with the variant's change on top.

    ``with_teacher`` puts the teacher entries first: one per distinct teacher the students distil from
    (the model's ``teacher_entries(config)``, LEADER's several teachers), else the family's teacher."""
    students = [Entry(family.label, family.model, dict(common))]
    for variant in [family.ablations[d] for d in drops] + [family.alternatives[a] for a in alternatives]:
        students.append(Entry(variant.label, family.model, _merged(common, variant.overrides)))
    if not with_teacher:
        return students
    model_class = registry.get(family.model)
    base, teacher_config = common.get("teacher_overrides", {}), registry.get(family.teacher).config_class
    teachers: dict[str, Entry] = {}  # one entry per distinct teacher configuration, the first label seen
    for student in students:
        for name, options in model_class.teacher_entries(model_class.config_class.preset(preset, **student.overrides)).items():
            identity = stable_hash(teacher_config.preset(preset, **options).to_dict())
            teachers.setdefault(identity, Entry(teacher_label(family.teacher_label, name, options, base, preset), family.teacher, options))
    return [*(teachers.values() or [Entry(family.teacher_label, family.teacher, dict(base))]), *students]


@main.command()
@run_options
@click.option("--param", required=True, help="An option the family declares sweepable (LEADER: alpha, the KD weight; beta, the alignment weight).")
@click.option("--values", "raw_values", required=True, help="Comma-separated values, e.g. 0.1,0.2,0.4,0.8.")
def sweep(family: ModelFamily, param, raw_values, **values) -> None:
    """Train the family's model once per value of one option; choose the value on validation; plot validation and test PRAUC."""
    if len(parse_list(param, family.sweepable, "--param")) != 1:
        raise click.BadParameter("sweep one option at a time", param_hint="--param")
    swept = [_number(v, raw_values) for v in parse_list(raw_values, None, "--values")]
    if not swept:
        raise click.BadParameter("give at least one value", param_hint="--values")
    common = parse_settings(values["settings"])
    entries = [Entry(f"{param}={value:g}", family.model, {**common, param: value}) for value in swept]
    spec = run_spec(values, entries, proposed=(), command={"command": "sweep", "family": family.name, "param": param, "values": swept})
    summary, run_dir = execute_spec(spec, values, Console(stderr=True))
    labels = [e.label for e in entries]
    written = write_sweep(summary, family.label, param, swept, labels, RunFolder(run_dir).root)
    Console().print(prauc_table(summary, f"{family.label}: sweep of {param} ({run_dir})"))
    best = choose_on_validation(summary, labels)
    Console().print(f"chosen on validation PRAUC: {best} (test PRAUC {summary['models'][best]['overall']['prauc']['mean']:.4f}, reported, not used to choose)")
    Console().print("wrote " + ", ".join(str(p) for p in written))


def _number(text: str, raw: str) -> int | float:
    """An integer stays an integer (a width, a count); anything else must be a float."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    raise click.BadParameter(f"{raw!r} is not a comma-separated list of numbers", param_hint="--values")


def choose_on_validation(summary: dict, labels: Sequence[str], metric: str = "prauc") -> str:
    """The label with the best overall validation ``metric`` (mean over seeds); test plays no part."""
    return max(labels, key=lambda label: summary["validation"][label]["overall"][metric])


SWEEP_COLUMNS = ["param", "value", "group", "val_prauc", "test_prauc", "test_prauc_pm", "chosen"]


def write_sweep(summary: dict, model_label: str, param: str, values: Sequence[float], labels: Sequence[str], folder: Path) -> list[Path]:
    """sweep_<param>.json / .csv (value, group, validation PRAUC, test PRAUC and interval, the chosen value)
    and sweep_<param>.png (Figures 2-3: validation PRAUC, which chooses, beside test PRAUC), all atomic."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = choose_on_validation(summary, labels)
    rows = []
    for value, label in zip(values, labels):
        for group in GROUPS:
            cell, validation = summary["models"][label].get(group), summary["validation"][label].get(group)
            if cell is not None and validation is not None:
                rows.append({"param": param, "value": value, "group": group, "val_prauc": validation["prauc"], "test_prauc": cell["prauc"]["mean"],
                             "test_prauc_pm": cell["prauc"]["pm"], "chosen": label == chosen})
    json_path, csv_path, png_path = (folder / f"sweep_{param}.{ext}" for ext in ("json", "csv", "png"))
    write_json(json_path, {"param": param, "values": list(values), "run": str(folder), "chosen_on_validation": chosen, "points": rows})

    def write_csv(tmp: Path) -> None:
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=SWEEP_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)

    write_atomic(csv_path, write_csv)

    # values at evenly spaced positions in the given order, as the paper's figures (beta: 0.1 ... 0)
    figure, (on_validation, on_test) = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    positions = list(range(len(values)))
    for group in GROUPS:
        points = {r["value"]: r for r in rows if r["group"] == group}
        if len(points) == len(values):
            on_validation.plot(positions, [points[v]["val_prauc"] for v in values], marker="o", label=group)
            on_test.errorbar(positions, [points[v]["test_prauc"] for v in values], yerr=[points[v]["test_prauc_pm"] for v in values],
                             marker="o", capsize=3, label=group)
    for axis, title in ((on_validation, "validation (chooses)"), (on_test, "test (95% interval)")):
        axis.set_xticks(positions, [f"{v:g}" for v in values])
        axis.set_xlabel(param)
        axis.axvline(labels.index(chosen), color="grey", linestyle=":", linewidth=1)
        axis.set_title(f"{model_label} PRAUC, {title}")
        axis.legend()
    on_validation.set_ylabel("PRAUC")
    figure.tight_layout()
    write_atomic(png_path, lambda tmp: figure.savefig(tmp, dpi=150, format="png"))
    plt.close(figure)
    return [json_path, csv_path, png_path]
