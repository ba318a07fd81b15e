"""Tables from a run's ``summary.json`` alone (never by retraining): LaTeX, Markdown, CSV and rich.

Layouts follow the LEADER paper: ``main`` is Tables IV/V (models x {Overall, Multi-visit, Single-visit}
x {PRAUC, Jaccard, F1}), ``ablation`` is Table VI (PRAUC by group, one row per label), ``safety`` adds
DDI rate and the average number of recommended medications. Each cell is "mean ± spread": with the
default statistics the half-width of the 95% interval over test patients and training seeds, with
``--stats paper`` the std over the paper's rounds. Per column the best mean is bold and the second
underlined (ties share the mark); a star marks a proposed model that beats the column's best baseline
(in an ablation: its best variant; p < 0.05, Holm-corrected across the row's columns when the run or the
table asks for it); a dagger marks a cell the same test does not separate from the column's best
(p >= 0.05; Holm down the column when asked); a model that cannot serve a group reads "-". Rows follow the run's entries (``--models all``: the registry's
table order), with a rule between the table's blocks (floors, the paper's models, its proposed models,
the models beyond its comparison: each entry's ``section``). Markdown and terminal tables add each
model's training seconds (mean over seeds). Every rendering says which procedure, seeds and decision
rules made it (:func:`notes`) and what its marks and blocks mean (:func:`layout_notes`). ``retention``
is DistilLLM-Med's headline: one row per student and teacher of the run, each student's PRAUC, Jaccard
and F1 as a percentage of that teacher's, per group, with the 95% interval over test patients and
training seeds (``retention_intervals`` of the summary).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from typing import Mapping, Sequence

from rich.table import Table

from bench.evaluate import holm as holm_adjust
from bench.metrics import METRICS, Metric
from data_prep.protocol import GROUPS

# layout -> its title; the metrics each shows (and in which column order) are declared by the metric table
TABLES = {"main": "Effectiveness", "ablation": "Ablation (PRAUC)", "safety": "Safety: DDI rate and #medications", "retention": "Retention of each teacher"}
FORMATS = ("latex", "markdown", "csv")
GROUP_TITLES = {"overall": "Overall", "multi": "Multi-visit", "single": "Single-visit"}
ALPHA = 0.05


def table_metrics(table: str) -> tuple[Metric, ...]:
    """The metrics a table layout shows, in the metric table's order."""
    if table not in TABLES:
        raise ValueError(f"unknown table {table!r}; expected one of {tuple(TABLES)}")
    return tuple(m for m in METRICS if table in m.tables)


@dataclass(frozen=True)
class Cell:
    mean: float
    spread: float  # half-width of the 95% interval, or the paper procedure's std
    rank: int | None  # 0 best, 1 second, None otherwise
    star: bool
    p: float | None  # the test's p-value against the column's best baseline (Holm-adjusted when asked)
    fmt: str = ".4f"  # the metric's number format
    tied: bool = False  # not the column's best, and the test does not separate it from the best

    def text(self, plus_minus: str = "±") -> str:
        return f"{self.mean:{self.fmt}} {plus_minus} {self.spread:{self.fmt}}"


def _pvalues(summary: Mapping, metrics: Sequence[Metric], holm: bool) -> dict[str, dict[tuple[str, str], float | None]]:
    """label -> (group, metric) -> p of the proposed labels; Holm across the row's columns when asked."""
    out = {}
    for label, groups in summary.get("significance", {}).items():
        raw = {(g, m.name): groups.get(g, {}).get(m.name, {}).get("p") for g in GROUPS for m in metrics if m.name in groups.get(g, {})}
        out[label] = holm_adjust(raw) if holm else raw
    return out


def _holm(summary: Mapping, holm: bool | None) -> bool:
    return bool(summary.get("stats", {}).get("holm")) if holm is None else holm


def _versus_best(summary: Mapping, metrics: Sequence[Metric], holm: bool) -> dict[tuple[str, str, str], float | None]:
    """(label, group, metric) -> p of the label against its column's best; Holm down each column when asked."""
    stored = summary.get("versus_best") or {}
    out: dict[tuple[str, str, str], float | None] = {}
    for group in GROUPS:
        for metric in metrics:
            column = {(label, group, metric.name): tests[group][metric.name].get("p")
                      for label, tests in stored.items() if metric.name in tests.get(group, {})}
            out.update(holm_adjust(column) if holm else column)
    return out


def cells(summary: Mapping, metrics: Sequence[Metric], holm: bool | None = None) -> dict[str, dict[tuple[str, str], Cell | None]]:
    """label -> (group, metric name) -> Cell, with ranks per column, stars from the stored p-values and
    daggers where the stored test against the column's best (``versus_best``) does not separate the two."""
    models = summary["models"]
    significance = summary.get("significance", {})
    pvalues = _pvalues(summary, metrics, _holm(summary, holm))
    versus_best = _versus_best(summary, metrics, _holm(summary, holm))
    out: dict[str, dict[tuple[str, str], Cell | None]] = {label: {} for label in models}
    for group in GROUPS:
        for metric in metrics:
            key = (group, metric.name)
            present = {label: groups[group][metric.name] for label, groups in models.items() if groups.get(group) is not None}
            ranks = _ranks({label: stats["mean"] for label, stats in present.items()}, metric.direction)
            for label in models:
                stats = present.get(label)
                if stats is None:
                    out[label][key] = None
                    continue
                test = significance.get(label, {}).get(group, {}).get(metric.name)
                p = pvalues.get(label, {}).get(key)
                star = test is not None and test["improves"] and p is not None and p < ALPHA
                against_best = versus_best.get((label, group, metric.name), 0.0)
                tied = metric.tested and ranks.get(label) != 0 and (against_best is None or against_best >= ALPHA)
                out[label][key] = Cell(stats["mean"], stats["pm"], ranks.get(label), star, p, metric.fmt, tied)
    return out


def notes(summary: Mapping, holm: bool | None = None) -> list[str]:
    """The caption of a cell table (main, safety, ablation layouts): what made the numbers (statistics,
    seeds, decision rules, models' own notes, unconverged units) and what its marks mean."""
    stats = summary.get("stats", {})
    seeds = summary.get("seeds", [])
    if stats.get("procedure") == "paper":
        spread = f"± std over {stats.get('resamples')} rounds of 80% of the test patients (the LEADER paper's procedure; its t-test is not valid)"
    else:
        spread = f"± half-width of the 95% interval over test patients ({stats.get('resamples')} bootstrap resamples)" + (
            f" and {len(seeds)} training seeds" if len(seeds) > 1 else "; one training seed, so seed variance is not included")
    lines = [f"{source_line(summary)}: mean {spread}.", marks_note(summary, holm), decision_note(summary)]
    for entry in summary.get("entries", []):
        if entry.get("note"):
            lines.append(f"{entry['label']}: {entry['note']}")
        unconverged = [seed for seed, ok in entry.get("converged", {}).items() if ok is False]
        if unconverged:
            lines.append(f"{entry['label']}: not converged at seed(s) {', '.join(map(str, unconverged))} (best validation epoch was the last)")
    return lines


SECTION_NOTES = {
    "floors": "floors (rules and minimal models every result must beat)",
    "paper": "the models of the paper's comparison",
    "later": "models beyond the paper's comparison, by publication",
    "other": "models that declare neither",
}


def layout_notes(summary: Mapping, holm: bool | None = None) -> list[str]:
    """What a results table's daggers and rules mean, for the runs whose summary has them."""
    lines = []
    if summary.get("versus_best"):
        correction = ", Holm-corrected down the column" if _holm(summary, holm) else ""
        lines.append(f"† not separated from the column's best (the same test, p ≥ {ALPHA}{correction}).")
    entries = summary.get("entries", [])
    sections = list(dict.fromkeys(e["section"] for e in entries if e.get("section")))
    if len(sections) > 1:
        proposed = {e.get("section") for e in entries if e.get("proposed")}
        blocks = [SECTION_NOTES.get(name, name) + (", its proposed models last" if name in proposed else "") for name in sections]
        lines.append("Row blocks, top to bottom: " + "; ".join(blocks) + ".")
    later = [f"{e['label']} ({e['publication']})" for e in entries if e.get("section") == "later" and e.get("publication")]
    if later:
        lines.append("Beyond the paper's comparison: " + "; ".join(later) + ".")
    return lines


def source_line(summary: Mapping) -> str:
    return f"{summary.get('dataset', '')}, protocol {summary.get('protocol', '?')}, seeds {','.join(map(str, summary.get('seeds', [])))}"


def test_note(summary: Mapping) -> str:
    """The test behind a p-value of the summary."""
    stats = summary.get("stats", {})
    if stats.get("procedure") == "paper":
        return f"{'paired' if stats.get('paired', True) else 'unpaired'} t-test over the rounds"
    return "paired bootstrap of the difference" + (" with seed variance (Welch t)" if len(summary.get("seeds", [])) > 1 else "")


def marks_note(summary: Mapping, holm: bool | None = None) -> str:
    """What bold, underline and stars mean: stars compare each proposed row with the column's best other
    row, which in an ablation (a run with a full model) is its best variant, not a baseline."""
    correction = ", Holm-corrected across the row" if _holm(summary, holm) else ""
    tested = sorted(label for label, groups in summary.get("significance", {}).items() if groups)
    marks = "Best in bold, second underlined"
    if tested:
        others = "the column's best ablated variant" if summary.get("versus_full") else "the column's best baseline"
        marks += f"; * p < {ALPHA}: {', '.join(tested)} against {others} ({test_note(summary)}{correction})"
    return marks + "; - the model cannot serve the group."


def decision_note(summary: Mapping) -> str:
    rules = {}
    for entry in summary.get("entries", []):
        decisions = {d["rule"] + (f" {d['threshold']:g}" if d.get("threshold") is not None else "") for d in entry.get("decision", {}).values()}
        rules[entry["label"]] = "; ".join(sorted(decisions))
    return "Decision rules: " + "; ".join(f"{label}: {rule}" for label, rule in rules.items()) + "."


def versus_full_notes(summary: Mapping, full_label: str | None) -> list[str]:
    """The caption of ``bench ablate``/``bench sweep``'s PRAUC table: validation PRAUC (which chooses), test
    PRAUC with its interval by group and, in an ablation, the full model's lead over each entry with its p-value."""
    stats = summary.get("stats", {})
    spread = "± std over the paper procedure's rounds" if stats.get("procedure") == "paper" else "± half-width of the 95% interval over test patients" + (
        " and training seeds" if len(summary.get("seeds", [])) > 1 else "")
    lines = [f"{source_line(summary)}: validation PRAUC (point estimate; what a choice is made on), test PRAUC mean {spread}."]
    if full_label and summary.get("versus_full"):
        lines.append(f"Last column: {full_label}'s overall test PRAUC minus the entry's, and the p-value of the difference ({test_note(summary)}).")
    return [*lines, decision_note(summary)]


def _ranks(means: Mapping[str, float], direction: int) -> dict[str, int]:
    if direction == 0 or len(means) < 2:
        return {}
    distinct = sorted({round(v, 12) for v in means.values()}, reverse=direction > 0)
    return {label: distinct.index(round(v, 12)) for label, v in means.items() if distinct.index(round(v, 12)) < 2}


def render(summary: Mapping, fmt: str, table: str = "main", holm: bool | None = None) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    metrics = table_metrics(table)
    if table == "retention":
        return {"latex": retention_latex, "markdown": retention_markdown, "csv": retention_csv}[fmt](summary, metrics)
    if fmt == "latex":
        return latex(summary, metrics, holm, table)
    return {"markdown": markdown, "csv": to_csv}[fmt](summary, metrics, holm)


def train_seconds(summary: Mapping, label: str) -> float | None:
    """A label's training seconds, the mean over its seeds (None when the summary has none)."""
    values = [v for v in (summary.get("train_seconds") or {}).get(label, {}).values() if v is not None]
    return sum(values) / len(values) if values else None


def _seconds_text(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.0f}"


# ----- LaTeX -------------------------------------------------------------------------------------
_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def _latex_cell(cell: Cell | None) -> str:
    if cell is None:
        return "-"
    body = cell.text("\\pm")
    if cell.rank == 0:
        body = f"\\mathbf{{{body}}}"
    elif cell.rank == 1:
        body = f"\\underline{{{body}}}"
    marks = ("*" if cell.star else "") + ("\\dagger" if cell.tied else "")
    return f"${body}{'^{' + marks + '}' if marks else ''}$"


def latex(summary: Mapping, metrics: Sequence[Metric], holm: bool | None = None, table: str = "main") -> str:
    """A ``table`` environment (needs booktabs), in the layout of the paper's Tables IV/V/VI: a rule above each
    block of rows (:func:`_rows`), the caption saying what the table shows and how its numbers were made."""
    grid = cells(summary, metrics, holm)
    rows: list[list[str] | None] = []
    for label, ruled in _rows(summary):
        if ruled:
            rows.append(None)
        rows.append([latex_escape(label), *(_latex_cell(grid[label][(g, m.name)]) for g in GROUPS for m in metrics)])
    shown = ", ".join(m.title for m in metrics)
    title = f"{TABLES[table]}: {shown} of each {'variant' if table == 'ablation' else 'model'} by patient group ({', '.join(GROUP_TITLES[g].lower() for g in GROUPS)}) on the {summary.get('dataset', '')} test set."
    return _latex_frame(["Model"], metrics, rows, " ".join([title, *notes(summary, holm), *layout_notes(summary, holm)]))


def _latex_frame(heads: Sequence[str], metrics: Sequence[Metric], rows: Sequence[Sequence[str] | None], caption: str) -> str:
    """A booktabs ``table``: the ``heads`` columns, then each group's ``metrics``; a row None is a rule;
    ``caption`` is plain text (escaped here)."""
    n, k = len(metrics), len(heads)
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\begin{tabular}{" + "l" * k + (" " + "c" * n) * len(GROUPS) + "}",
        r"\toprule",
        " & ".join([*("" for _ in heads), *(f"\\multicolumn{{{n}}}{{c}}{{{GROUP_TITLES[g]}}}" for g in GROUPS)]) + r" \\",
        " ".join(f"\\cmidrule(lr){{{k + 1 + i * n}-{k + (i + 1) * n}}}" for i in range(len(GROUPS))),
        " & ".join([*heads, *(latex_escape(m.title) for _ in GROUPS for m in metrics)]) + r" \\",
        r"\midrule",
    ]
    lines += [r"\midrule" if row is None else " & ".join(row) + r" \\" for row in rows]
    caption = latex_escape(caption).replace("±", r"$\pm$").replace("<", "$<$").replace("≥", r"$\geq$").replace("†", r"$^{\dagger}$")
    lines += [r"\bottomrule", r"\end{tabular}", f"\\caption{{{caption}}}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def _rows(summary: Mapping) -> list[tuple[str, bool]]:
    """Labels in entry order, True where a rule goes above the row: where the block changes (each entry's
    ``section``: floors, the paper's models, later models) and above the first proposed row that follows a
    baseline of its block, as the paper's Table IV sets LEADER apart."""
    entries = {e["label"]: e for e in summary.get("entries", [])}
    out, previous, seen_baseline, ruled = [], None, False, False
    for label in summary["models"]:
        entry = entries.get(label, {})
        section, is_proposed = entry.get("section"), bool(entry.get("proposed"))
        if previous is not None and section != previous[0]:
            seen_baseline, ruled = False, False
            rule = True
        else:
            rule = is_proposed and seen_baseline and not ruled
        out.append((label, rule))
        ruled = ruled or (is_proposed and seen_baseline) or (rule and is_proposed)
        seen_baseline = seen_baseline or not is_proposed
        previous = (section,)
    return out


# ----- Markdown and CSV --------------------------------------------------------------------------
def _plain_cell(cell: Cell | None, bold: tuple[str, str], underline: tuple[str, str], star: str) -> str:
    if cell is None:
        return "-"
    body = cell.text()
    if cell.rank == 0:
        body = f"{bold[0]}{body}{bold[1]}"
    elif cell.rank == 1:
        body = f"{underline[0]}{body}{underline[1]}"
    return body + (star if cell.star else "") + ("†" if cell.tied else "")


def markdown(summary: Mapping, metrics: Sequence[Metric], holm: bool | None = None) -> str:
    """The table as Markdown (the README's main table: ``bench table --run R --format markdown``), with each
    model's training seconds when the summary has them; a blank row marks where LaTeX draws a rule."""
    grid = cells(summary, metrics, holm)
    timed = bool(summary.get("train_seconds"))
    header = ["Model", *(f"{GROUP_TITLES[g]} {m.title}" for g in GROUPS for m in metrics), *(["Train s"] if timed else [])]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([":---", *(":---:" for _ in header[1:])]) + "|"]
    for label, _ in _rows(summary):
        row = [label.replace("|", r"\|"), *(_plain_cell(grid[label][(g, m.name)], ("**", "**"), ("<u>", "</u>"), r"\*") for g in GROUPS for m in metrics)]
        lines.append("| " + " | ".join([*row, *([_seconds_text(train_seconds(summary, label))] if timed else [])]) + " |")
    seconds = ["Train s: training seconds, the mean over seeds (as measured where each unit trained)."] if timed else []
    return "\n".join([*lines, "", *notes(summary, holm), *layout_notes(summary, holm), *seconds]) + "\n"


def to_csv(summary: Mapping, metrics: Sequence[Metric], holm: bool | None = None) -> str:
    """Long format, one row per model x group x metric; empty cells for "-"; seeds' values ';'-joined."""
    grid = cells(summary, metrics, holm)
    significance = summary.get("significance", {})
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["model", "group", "metric", "mean", "spread", "ci_low", "ci_high", "seed_sd", "seed_values", "rank", "p_value", "against"])
    for label, _ in _rows(summary):
        for group in GROUPS:
            for metric in (m.name for m in metrics):
                cell = grid[label][(group, metric)]
                stats = (summary["models"][label].get(group) or {}).get(metric, {})
                test = significance.get(label, {}).get(group, {}).get(metric) or {}
                ci = stats.get("ci") or ["", ""]
                writer.writerow(
                    [
                        label,
                        group,
                        metric,
                        "" if cell is None else f"{cell.mean:.6f}",
                        "" if cell is None else f"{cell.spread:.6f}",
                        *(f"{v:.6f}" if v != "" else "" for v in ci),
                        "" if stats.get("seed_sd") is None else f"{stats['seed_sd']:.6f}",
                        ";".join(f"{v:.6f}" for v in stats.get("seeds", [])),
                        "" if cell is None or cell.rank is None else cell.rank + 1,
                        "" if cell is None or cell.p is None else f"{cell.p:.6g}",
                        test.get("against", ""),
                    ]
                )
    return buffer.getvalue()


# ----- rich (terminal) ---------------------------------------------------------------------------
def rich_table(summary: Mapping, table: str = "main") -> Table:
    metrics = table_metrics(table)
    grid = cells(summary, metrics)
    timed = bool(summary.get("train_seconds"))
    out = Table(title=f"{TABLES[table]} — {summary.get('dataset', '')}", caption="\n".join([*notes(summary), *layout_notes(summary)]), caption_justify="left")
    out.add_column("Model", style="bold")
    for group in GROUPS:
        for metric in metrics:
            out.add_column(f"{GROUP_TITLES[group]}\n{metric.title}", justify="center")
    if timed:
        out.add_column("Train s", justify="right")
    for label, ruled in _rows(summary):
        if ruled:
            out.add_section()
        marks = {"bold": ("[bold]", "[/bold]"), "underline": ("[underline]", "[/underline]"), "star": "*"}
        seconds = [_seconds_text(train_seconds(summary, label))] if timed else []
        out.add_row(label, *(_plain_cell(grid[label][(g, m.name)], **marks) for g in GROUPS for m in metrics), *seconds)
    return out


# ----- retention (DistilLLM-Med) ------------------------------------------------------------------
def retention_rows(summary: Mapping) -> list[tuple[str, str, Mapping]]:
    """(student, teacher, group -> metric -> interval) for every teacher entry and student of the run."""
    by_teacher = summary.get("retention_intervals") or {}
    if not by_teacher:
        raise ValueError("this run has no teacher entry, so no retention (run the teacher too: bench ablate ... --with-teacher, or bench run with it)")
    return [(student, teacher, groups) for teacher, students in by_teacher.items() for student, groups in students.items()]


def retention_notes(summary: Mapping) -> list[str]:
    line = ("Retention: the student's mean as a percentage of the teacher's, [95% interval]: the paired bootstrap of the ratio over "
            "test patients and the training seeds' variance of each (delta method).")
    if summary.get("stats", {}).get("procedure") == "paper":
        line = "Retention: the student's mean as a percentage of the teacher's, ± the std of the ratio over the paper procedure's rounds."
    return [line, f"{source_line(summary)}.", decision_note(summary)]


def _retention_text(interval: Mapping | None, percent: str = "%") -> str:
    if interval is None:
        return "-"
    if interval.get("ci") is None:
        return f"{interval['percent']:.1f}{percent} ± {interval['pm']:.1f}"
    low, high = interval["ci"]
    return f"{interval['percent']:.1f}{percent} [{low:.1f}, {high:.1f}]"


def _retention_cells(groups: Mapping, metrics: Sequence[Metric], percent: str = "%") -> list[str]:
    return [_retention_text((groups.get(g) or {}).get(m.name), percent) for g in GROUPS for m in metrics]


def retention_markdown(summary: Mapping, metrics: Sequence[Metric]) -> str:
    header = ["Student", "Teacher", *(f"{GROUP_TITLES[g]} {m.title}" for g in GROUPS for m in metrics)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([":---", ":---", *(":---:" for _ in header[2:])]) + "|"]
    for student, teacher, groups in retention_rows(summary):
        lines.append("| " + " | ".join([student.replace("|", r"\|"), teacher.replace("|", r"\|"), *_retention_cells(groups, metrics)]) + " |")
    return "\n".join([*lines, "", *retention_notes(summary)]) + "\n"


def retention_latex(summary: Mapping, metrics: Sequence[Metric]) -> str:
    rows = [
        [latex_escape(student), latex_escape(teacher), *(cell.replace("±", r"$\pm$") for cell in _retention_cells(groups, metrics, r"\%"))]
        for student, teacher, groups in retention_rows(summary)
    ]
    return _latex_frame(["Student", "Teacher"], metrics, rows, " ".join(retention_notes(summary)))


def retention_csv(summary: Mapping, metrics: Sequence[Metric]) -> str:
    """One row per student x teacher x group x metric: percentage, interval, both means."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["student", "teacher", "group", "metric", "percent", "ci_low", "ci_high", "student_mean", "teacher_mean"])
    models = summary["models"]
    for student, teacher, groups in retention_rows(summary):
        for group in GROUPS:
            for metric in (m.name for m in metrics):
                interval = (groups.get(group) or {}).get(metric)
                if interval is None:
                    continue
                ci = interval.get("ci") or ["", ""]
                writer.writerow([student, teacher, group, metric, f"{interval['percent']:.4f}", *(f"{v:.4f}" if v != "" else "" for v in ci),
                                 f"{models[student][group][metric]['mean']:.6f}", f"{models[teacher][group][metric]['mean']:.6f}"])
    return buffer.getvalue()


def rich_retention(summary: Mapping, metrics: Sequence[Metric] | None = None) -> Table:
    """The retention table on a terminal (``metrics``: those of the retention layout unless given)."""
    metrics = table_metrics("retention") if metrics is None else metrics
    out = Table(title=f"{TABLES['retention']} — {summary.get('dataset', '')}", caption="\n".join(retention_notes(summary)), caption_justify="left")
    out.add_column("Student", style="bold")
    out.add_column("Teacher")
    for group in GROUPS:
        for metric in metrics:
            out.add_column(f"{GROUP_TITLES[group]}\n{metric.title}", justify="center")
    previous = None
    for student, teacher, groups in retention_rows(summary):
        if previous is not None and teacher != previous:
            out.add_section()
        previous = teacher
        out.add_row(student, teacher, *_retention_cells(groups, metrics))
    return out
