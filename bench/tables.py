"""Tables from a run's ``summary.json`` alone (never by retraining): LaTeX, Markdown, CSV and rich.

Layouts follow the LEADER paper: ``main`` is Tables IV/V (models x {Overall, Multi-visit, Single-visit}
x {PRAUC, Jaccard, F1}), ``ablation`` is Table VI (PRAUC by group, one row per label), ``safety`` adds
DDI rate and the average number of recommended medications. Each cell is "mean ± std"; per column the
best mean is bold and the second underlined (ties share the mark); a star marks a proposed model that
beats the column's best baseline with a t-test p < 0.05; a model that cannot serve a group reads "-".
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from typing import Mapping, Sequence

from rich.table import Table

from bench.evaluate import GROUPS

TABLES = ("main", "ablation", "safety")
FORMATS = ("latex", "markdown", "csv")
TABLE_METRICS = {"main": ("prauc", "jaccard", "f1"), "ablation": ("prauc",), "safety": ("ddi_rate", "avg_meds")}
GROUP_TITLES = {"overall": "Overall", "multi": "Multi-visit", "single": "Single-visit"}
METRIC_TITLES = {"prauc": "PRAUC", "jaccard": "Jaccard", "f1": "F1", "precision": "Precision", "recall": "Recall", "ddi_rate": "DDI", "avg_meds": "#Med"}
# +1: higher is better, -1: lower is better, 0: not ranked (the number of medications has no best)
DIRECTION = {"prauc": 1, "jaccard": 1, "f1": 1, "precision": 1, "recall": 1, "ddi_rate": -1, "avg_meds": 0}
ALPHA = 0.05


@dataclass(frozen=True)
class Cell:
    mean: float
    std: float
    rank: int | None  # 0 best, 1 second, None otherwise
    star: bool


def cells(summary: Mapping, metrics: Sequence[str]) -> dict[str, dict[tuple[str, str], Cell | None]]:
    """label -> (group, metric) -> Cell, with ranks per column and stars from the stored p-values."""
    models = summary["models"]
    significance = summary.get("significance", {})
    out: dict[str, dict[tuple[str, str], Cell | None]] = {label: {} for label in models}
    for group in GROUPS:
        for metric in metrics:
            present = {label: groups[group][metric] for label, groups in models.items() if groups.get(group) is not None}
            ranks = _ranks({label: stats["mean"] for label, stats in present.items()}, DIRECTION.get(metric, 0))
            for label in models:
                stats = present.get(label)
                if stats is None:
                    out[label][(group, metric)] = None
                    continue
                test = significance.get(label, {}).get(group, {}).get(metric)
                star = test is not None and test["improves"] and test["p"] is not None and test["p"] < ALPHA
                out[label][(group, metric)] = Cell(stats["mean"], stats["std"], ranks.get(label), star)
    return out


def _ranks(means: Mapping[str, float], direction: int) -> dict[str, int]:
    if direction == 0 or len(means) < 2:
        return {}
    distinct = sorted({round(v, 12) for v in means.values()}, reverse=direction > 0)
    return {label: distinct.index(round(v, 12)) for label, v in means.items() if distinct.index(round(v, 12)) < 2}


def render(summary: Mapping, fmt: str, table: str = "main") -> str:
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    if table not in TABLES:
        raise ValueError(f"unknown table {table!r}; expected one of {TABLES}")
    metrics = TABLE_METRICS[table]
    return {"latex": latex, "markdown": markdown, "csv": to_csv}[fmt](summary, metrics)


# ----- LaTeX -------------------------------------------------------------------------------------
_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def _latex_cell(cell: Cell | None) -> str:
    if cell is None:
        return "-"
    body = f"{cell.mean:.4f} \\pm {cell.std:.4f}"
    if cell.rank == 0:
        body = f"\\mathbf{{{body}}}"
    elif cell.rank == 1:
        body = f"\\underline{{{body}}}"
    return f"${body}{'^{*}' if cell.star else ''}$"


def latex(summary: Mapping, metrics: Sequence[str]) -> str:
    """A ``table`` environment (needs booktabs), in the layout of the paper's Tables IV/V/VI."""
    grid = cells(summary, metrics)
    n = len(metrics)
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\begin{tabular}{l" + (" " + "c" * n) * len(GROUPS) + "}",
        r"\toprule",
        " & ".join(["", *(f"\\multicolumn{{{n}}}{{c}}{{{GROUP_TITLES[g]}}}" for g in GROUPS)]) + r" \\",
        " ".join(f"\\cmidrule(lr){{{2 + i * n}-{1 + (i + 1) * n}}}" for i in range(len(GROUPS))),
        " & ".join(["Model", *(METRIC_TITLES[m] for _ in GROUPS for m in metrics)]) + r" \\",
        r"\midrule",
    ]
    for label, first_proposed in _rows(summary):
        if first_proposed:
            lines.append(r"\midrule")
        row = [latex_escape(label), *(_latex_cell(grid[label][(g, m)]) for g in GROUPS for m in metrics)]
        lines.append(" & ".join(row) + r" \\")
    caption = f"{latex_escape(summary.get('dataset', ''))}: mean $\\pm$ std over {summary.get('rounds', '?')} bootstrap rounds; best in bold, second underlined; $^{{*}}$: $p < {ALPHA}$ against the best baseline."
    lines += [r"\bottomrule", r"\end{tabular}", f"\\caption{{{caption}}}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def _rows(summary: Mapping) -> list[tuple[str, bool]]:
    """Labels in entry order; True on the first proposed row that follows a baseline (a rule goes above it)."""
    proposed = {e["label"] for e in summary.get("entries", []) if e.get("proposed")}
    out, seen_baseline, ruled = [], False, False
    for label in summary["models"]:
        is_proposed = label in proposed
        out.append((label, is_proposed and seen_baseline and not ruled))
        ruled = ruled or (is_proposed and seen_baseline)
        seen_baseline = seen_baseline or not is_proposed
    return out


# ----- Markdown and CSV --------------------------------------------------------------------------
def _plain_cell(cell: Cell | None, bold: tuple[str, str], underline: tuple[str, str], star: str) -> str:
    if cell is None:
        return "-"
    body = f"{cell.mean:.4f} ± {cell.std:.4f}"
    if cell.rank == 0:
        body = f"{bold[0]}{body}{bold[1]}"
    elif cell.rank == 1:
        body = f"{underline[0]}{body}{underline[1]}"
    return body + (star if cell.star else "")


def markdown(summary: Mapping, metrics: Sequence[str]) -> str:
    grid = cells(summary, metrics)
    header = ["Model", *(f"{GROUP_TITLES[g]} {METRIC_TITLES[m]}" for g in GROUPS for m in metrics)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([":---", *(":---:" for _ in header[1:])]) + "|"]
    for label, _ in _rows(summary):
        row = [label.replace("|", r"\|"), *(_plain_cell(grid[label][(g, m)], ("**", "**"), ("<u>", "</u>"), r"\*") for g in GROUPS for m in metrics)]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def to_csv(summary: Mapping, metrics: Sequence[str]) -> str:
    """Long format, one row per model x group x metric; empty mean/std for "-" cells."""
    grid = cells(summary, metrics)
    significance = summary.get("significance", {})
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["model", "group", "metric", "mean", "std", "rank", "p_value", "against"])
    for label, _ in _rows(summary):
        for group in GROUPS:
            for metric in metrics:
                cell = grid[label][(group, metric)]
                test = significance.get(label, {}).get(group, {}).get(metric) or {}
                writer.writerow(
                    [
                        label,
                        group,
                        metric,
                        "" if cell is None else f"{cell.mean:.6f}",
                        "" if cell is None else f"{cell.std:.6f}",
                        "" if cell is None or cell.rank is None else cell.rank + 1,
                        "" if test.get("p") is None else f"{test['p']:.6g}",
                        test.get("against", ""),
                    ]
                )
    return buffer.getvalue()


# ----- rich (terminal) ---------------------------------------------------------------------------
def rich_table(summary: Mapping, table: str = "main") -> Table:
    metrics = TABLE_METRICS[table]
    grid = cells(summary, metrics)
    title = {"main": "Effectiveness", "ablation": "Ablation (PRAUC)", "safety": "Safety: DDI rate and #medications"}[table]
    out = Table(title=f"{title} — {summary.get('dataset', '')}, {summary.get('rounds', '?')} bootstrap rounds (mean ± std)")
    out.add_column("Model", style="bold")
    for group in GROUPS:
        for metric in metrics:
            out.add_column(f"{GROUP_TITLES[group]}\n{METRIC_TITLES[metric]}", justify="center")
    for label, first_proposed in _rows(summary):
        if first_proposed:
            out.add_section()
        marks = {"bold": ("[bold]", "[/bold]"), "underline": ("[underline]", "[/underline]"), "star": "*"}
        out.add_row(label, *(_plain_cell(grid[label][(g, m)], **marks) for g in GROUPS for m in metrics))
    return out
