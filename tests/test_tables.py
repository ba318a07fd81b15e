"""Table rendering of a known summary: bold best, underlined second, stars, "-" cells, escaping."""

from __future__ import annotations

import csv
import io
import re
import shutil
import subprocess

import pytest

from bench.evaluate import summarise
from bench.tables import latex_escape, render, rich_table


def cells(prauc, jaccard, f1):
    return {"prauc": prauc, "jaccard": jaccard, "f1": f1, "ddi_rate": [0.05, 0.07], "avg_meds": [10.0, 12.0]}


def known_summary():
    models = summarise(
        {
            "freq": {g: cells([0.50, 0.52], [0.30, 0.30], [0.40, 0.42]) for g in ("overall", "multi", "single")},
            "micron": {"overall": None, "multi": cells([0.70, 0.72], [0.45, 0.47], [0.60, 0.62]), "single": None},
            "leader_s": {g: cells([0.7488, 0.7538], [0.40, 0.42], [0.61, 0.63]) for g in ("overall", "multi", "single")},
        }
    )
    significance = {
        "leader_s": {
            "overall": {"prauc": {"against": "freq", "p": 0.001, "improves": True}, "jaccard": {"against": "freq", "p": 0.2, "improves": True}},
            "multi": {"prauc": {"against": "micron", "p": 0.01, "improves": True}, "jaccard": {"against": "micron", "p": 0.001, "improves": False}},
        }
    }
    return {
        "dataset": "synth",
        "rounds": 2,
        "entries": [{"label": "freq", "proposed": False}, {"label": "micron", "proposed": False}, {"label": "leader_s", "proposed": True}],
        "models": models,
        "significance": significance,
    }


def latex_rows(text):
    return {line.split(" & ")[0]: line.rstrip(" \\").split(" & ")[1:] for line in text.splitlines() if line.count(" & ") >= 3 and not line.startswith(("Model", " &"))}


def test_latex_marks_best_second_stars_and_dashes():
    text = render(known_summary(), "latex")
    rows = latex_rows(text)
    assert set(rows) == {"freq", "micron", "leader\\_s"}
    leader, micron, freq = rows["leader\\_s"], rows["micron"], rows["freq"]
    # overall PRAUC: leader best and significant; freq second
    assert leader[0] == r"$\mathbf{0.7513 \pm 0.0025}^{*}$"
    assert freq[0] == r"$\underline{0.5100 \pm 0.0100}$"
    # overall Jaccard: best, but p = 0.2 gives no star
    assert leader[1] == r"$\mathbf{0.4100 \pm 0.0100}$"
    # multi Jaccard: significant but worse than micron: no star
    assert micron[4] == r"$\mathbf{0.4600 \pm 0.0100}$" and leader[4] == r"$\underline{0.4100 \pm 0.0100}$"
    assert leader[3] == r"$\mathbf{0.7513 \pm 0.0025}^{*}$"
    assert micron[0] == micron[6] == "-" and len(micron) == len(freq) == 9
    assert r"\multicolumn{3}{c}{Single-visit}" in text and text.count(r"\midrule") == 2  # header rule + rule before proposed


def test_ablation_table_has_prauc_by_group_only():
    rows = latex_rows(render(known_summary(), "latex", "ablation"))
    assert [len(r) for r in rows.values()] == [3, 3, 3]
    assert rows["micron"] == ["-", r"$\underline{0.7100 \pm 0.0100}$", "-"]


def test_safety_table_bolds_the_lowest_ddi_and_never_ranks_medication_counts():
    rows = latex_rows(render(known_summary(), "latex", "safety"))
    assert rows["micron"][0] == "-"
    assert all(r"\mathbf" in row[2] for row in rows.values())  # multi-visit DDI rate: all tie
    assert not any(r"\mathbf" in row[1] or r"\underline" in row[1] for row in rows.values())


def test_markdown_and_csv():
    md = render(known_summary(), "markdown").splitlines()
    assert md[0].startswith("| Model | Overall PRAUC | Overall Jaccard | Overall F1 | Multi-visit PRAUC")
    leader = md[4].split(" | ")
    assert leader[1] == r"**0.7513 ± 0.0025**\*" and "| micron | - |" in md[3]
    rows = list(csv.DictReader(io.StringIO(render(known_summary(), "csv"))))
    assert len(rows) == 3 * 3 * 3
    first = next(r for r in rows if r["model"] == "leader_s" and r["group"] == "overall" and r["metric"] == "prauc")
    assert first == {"model": "leader_s", "group": "overall", "metric": "prauc", "mean": "0.751300", "std": "0.002500", "rank": "1", "p_value": "0.001", "against": "freq"}
    assert next(r for r in rows if r["model"] == "micron" and r["group"] == "single")["mean"] == ""


def test_bad_format_or_table_and_escaping():
    with pytest.raises(ValueError, match="format"):
        render(known_summary(), "html")
    with pytest.raises(ValueError, match="table"):
        render(known_summary(), "latex", "figure")
    assert latex_escape("w/o KD_1 & 50% #2") == r"w/o KD\_1 \& 50\% \#2"


def test_rich_table_has_a_column_per_group_and_metric():
    table = rich_table(known_summary())
    assert len(table.columns) == 10 and table.row_count == 3


def test_latex_is_balanced_and_compiles_when_latex_is_installed(tmp_path):
    text = render(known_summary(), "latex")
    assert text.count("{") == text.count("}") and text.count("$") % 2 == 0
    assert re.search(r"\\begin\{tabular\}\{l ccc ccc ccc\}", text)
    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex is not installed; the parse checks above ran")
    document = "\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n" + text + "\\end{document}\n"
    (tmp_path / "t.tex").write_text(document)
    result = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "t.tex"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-2000:]
