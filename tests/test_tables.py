"""Table rendering of a known summary: bold best, underlined second, stars, "-" cells, escaping."""

from __future__ import annotations

import csv
import io

import pytest
from pylatexenc.latexwalker import (
    LatexCharsNode,
    LatexCommentNode,
    LatexEnvironmentNode,
    LatexGroupNode,
    LatexMacroNode,
    LatexMathNode,
    LatexSpecialsNode,
    LatexWalker,
    LatexWalkerParseError,
)

from bench.tables import latex_escape, notes, render, retention_notes, rich_table, versus_full_notes


def cell(values):
    """mean ± half-width as a bootstrap summary holds them (here: the two values' mean and half their gap)."""
    mean, pm = sum(values) / 2, abs(values[1] - values[0]) / 2
    return {"mean": mean, "pm": pm, "ci": [mean - pm, mean + pm], "seed_sd": None, "seeds": [mean]}


def cells(prauc, jaccard, f1):
    return {"prauc": cell(prauc), "jaccard": cell(jaccard), "f1": cell(f1), "ddi_rate": cell([0.05, 0.07]), "avg_meds": cell([10.0, 12.0])}


def known_summary():
    models = {
        "freq": {g: cells([0.50, 0.52], [0.30, 0.30], [0.40, 0.42]) for g in ("overall", "multi", "single")},
        "micron": {"overall": None, "multi": cells([0.70, 0.72], [0.45, 0.47], [0.60, 0.62]), "single": None},
        "leader_s": {g: cells([0.7488, 0.7538], [0.40, 0.42], [0.61, 0.63]) for g in ("overall", "multi", "single")},
    }
    significance = {
        "leader_s": {
            "overall": {"prauc": {"against": "freq", "p": 0.001, "improves": True}, "jaccard": {"against": "freq", "p": 0.2, "improves": True}},
            "multi": {"prauc": {"against": "micron", "p": 0.03, "improves": True}, "jaccard": {"against": "micron", "p": 0.001, "improves": False}},
        }
    }
    rules = {"freq": "top 8 most frequent", "micron": "previous medications, add >= 0.7, remove < 0.3 (validated)", "leader_s": "threshold 0.5"}
    return {
        "dataset": "synth",
        "protocol": "last-visit",
        "seeds": [0],
        "stats": {"procedure": "bootstrap", "resamples": 1000, "paired": True, "holm": False},
        "entries": [
            {"label": label, "proposed": label == "leader_s", "decision": {"0": {"rule": rule, "threshold": None}}, "converged": {"0": label != "micron"}}
            for label, rule in rules.items()
        ],
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
    assert leader[3] == r"$\mathbf{0.7513 \pm 0.0025}^{*}$"  # p = 0.03
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
    assert first == {"model": "leader_s", "group": "overall", "metric": "prauc", "mean": "0.751300", "spread": "0.002500", "ci_low": "0.748800",
                     "ci_high": "0.753800", "seed_sd": "", "seed_values": "0.751300", "rank": "1", "p_value": "0.001", "against": "freq"}
    assert next(r for r in rows if r["model"] == "micron" and r["group"] == "single")["mean"] == ""


def test_holm_removes_a_star_that_does_not_survive_the_rows_correction():
    rows = latex_rows(render(known_summary(), "latex", holm=True))
    assert rows["leader\\_s"][0] == r"$\mathbf{0.7513 \pm 0.0025}^{*}$"  # 0.001 x 4
    assert rows["leader\\_s"][3] == r"$\mathbf{0.7513 \pm 0.0025}$"  # 0.03 x 2 = 0.06
    summary = known_summary()
    summary["stats"]["holm"] = True
    assert render(summary, "latex") == render(known_summary(), "latex", holm=True)


def test_every_rendering_says_how_its_numbers_were_made():
    text = "\n".join(notes(known_summary()))
    assert "95% interval over test patients (1000 bootstrap resamples); one training seed" in text
    assert "freq: top 8 most frequent" in text and "leader_s: threshold 0.5" in text
    assert "micron: not converged at seed(s) 0" in text
    paper = known_summary() | {"stats": {"procedure": "paper", "resamples": 10, "paired": False}}
    assert "std over 10 rounds" in "\n".join(notes(paper)) and "unpaired t-test" in "\n".join(notes(paper))
    assert "Decision rules" in render(known_summary(), "latex") and "Decision rules" in render(known_summary(), "markdown")


def test_bad_format_or_table_and_escaping():
    with pytest.raises(ValueError, match="format"):
        render(known_summary(), "html")
    with pytest.raises(ValueError, match="table"):
        render(known_summary(), "latex", "figure")
    assert latex_escape("w/o KD_1 & 50% #2") == r"w/o KD\_1 \& 50\% \#2"


def test_rich_table_has_a_column_per_group_and_metric():
    table = rich_table(known_summary())
    assert len(table.columns) == 10 and table.row_count == 3


# ----- Table IV with the models beyond the paper: blocks, daggers, training time -------------------------
def blocks_summary():
    """Floors, the paper's baselines and proposed model, and a later model, as a run of ``--models all`` records
    them; VITA serves the multi-visit group only; its multi-visit PRAUC is not separated from the best."""
    summary = known_summary()
    summary["models"] = {
        "freq": summary["models"]["freq"],
        "micron": summary["models"]["micron"],
        "leader_s": summary["models"]["leader_s"],
        "vita": {"overall": None, "multi": cells([0.74, 0.76], [0.44, 0.46], [0.59, 0.61]), "single": None},
    }
    sections = {"freq": "floors", "micron": "paper", "leader_s": "paper", "vita": "later"}
    summary["entries"] = [
        {"label": label, "proposed": label == "leader_s", "section": section, "decision": {"0": {"rule": "threshold 0.5", "threshold": None}},
         "converged": {"0": True}, **({"publication": "Kim et al., AAAI 2024"} if label == "vita" else {})}
        for label, section in sections.items()
    ]
    test = lambda best, p: {"against": best, "delta": -0.01, "p": p}  # noqa: E731
    summary["versus_best"] = {"vita": {"multi": {"prauc": test("leader_s", 0.4), "jaccard": test("micron", 0.01)}},
                              "micron": {"multi": {"prauc": test("leader_s", 0.001)}}}
    summary["train_seconds"] = {"freq": {"0": 0.01}, "micron": {"0": 5.2}, "leader_s": {"0": 74.6, "1": 75.4}, "vita": {"0": 55.0}}
    return summary


def test_latex_sets_the_floors_the_papers_models_and_later_models_apart():
    text = render(blocks_summary(), "latex")
    assert latex_errors(text) == []
    body = text[text.index("\\midrule"):text.index("\\bottomrule")].splitlines()
    labels = [line.split(" & ")[0] for line in body]
    # header rule, floors, rule, the paper's baselines, rule, its proposed model, rule, the later models
    assert labels == ["\\midrule", "freq", "\\midrule", "micron", "\\midrule", "leader\\_s", "\\midrule", "vita"]
    rows = latex_rows(text)
    assert rows["vita"][3] == r"$\underline{0.7500 \pm 0.0100}^{\dagger}$"  # p = 0.4 against the best: not separated
    assert rows["vita"][4] == r"$\underline{0.4500 \pm 0.0100}$"  # second, and p = 0.01: separated
    assert rows["micron"][3] == r"$0.7100 \pm 0.0100$" and rows["vita"][0] == "-"
    caption = text[text.index("\\caption"):]
    assert caption.startswith("\\caption{Effectiveness: PRAUC, Jaccard, F1 of each model by patient group (overall, multi-visit, single-visit) on the synth test set.")
    assert "vita (Kim et al., AAAI 2024)" in caption and "not separated from the column's best" in caption


def test_without_blocks_or_tests_the_layout_is_the_papers():
    text = render(known_summary(), "latex")
    assert "\\dagger" not in text and "Row blocks" not in text and text.count("\\midrule") == 2


def test_holm_down_the_column_can_unseparate_a_cell():
    summary = blocks_summary()
    summary["versus_best"]["leader_s"] = {"multi": {"jaccard": {"against": "micron", "delta": -0.05, "p": 0.03}}}
    summary["versus_best"]["vita"]["multi"]["jaccard"]["p"] = 0.03
    assert latex_rows(render(summary, "latex"))["vita"][4] == r"$\underline{0.4500 \pm 0.0100}$"
    assert latex_rows(render(summary, "latex", holm=True))["vita"][4] == r"$\underline{0.4500 \pm 0.0100}^{\dagger}$"  # 0.03 x 2


def test_markdown_main_table_has_daggers_and_training_seconds_per_model():
    md = render(blocks_summary(), "markdown").splitlines()
    assert md[0].endswith("| Single-visit F1 | Train s |")
    rows = {line.split(" | ")[0].lstrip("| "): line.rstrip(" |").split(" | ")[1:] for line in md[2:6]}
    assert list(rows) == ["freq", "micron", "leader_s", "vita"]
    assert rows["leader_s"][-1] == "75" and rows["freq"][-1] == "0" and rows["vita"][3] == "<u>0.7500 ± 0.0100</u>†"
    assert any(line.startswith("† not separated from the column's best") for line in md)
    assert "Train s: training seconds, the mean over seeds" in md[-1]
    assert [c.header for c in rich_table(blocks_summary()).columns][-1] == "Train s"


# ----- LaTeX: what pdflatex (article + booktabs) would reject, found by a LaTeX parser ---------
TEXT_COMMANDS = {"centering", "caption", "toprule", "midrule", "bottomrule", "cmidrule", "multicolumn", "underline", "textbf", "\\", "_", "&", "%", "#", "$", "{", "}"}
MATH_COMMANDS = {"mathbf", "underline", "pm", "dagger", "geq", "_", "&", "%", "#", "{", "}"}
RULES = {"toprule", "midrule", "bottomrule", "cmidrule"}


def latex_errors(text: str) -> list[str]:
    """Unbalanced braces, environments or math (the parser raises), commands LaTeX and booktabs do not
    define, math-only commands or ``#``/``^``/``_`` outside math, ``%`` comments that swallow the rest
    of a row, and tabular rows whose cells do not fill the column spec or that lack their ``\\``."""
    try:
        nodes, _, _ = LatexWalker(text, tolerant_parsing=False).get_latex_nodes()
    except LatexWalkerParseError as exc:
        return [f"parse error: {str(exc).splitlines()[0]}"]
    errors: list[str] = []

    def walk(nodes, math: bool, tabular_row: bool = False) -> None:
        for node in nodes:
            if node is None:
                continue
            if isinstance(node, LatexCommentNode):
                errors.append(f"comment %{node.comment} hides the rest of its line")
            elif isinstance(node, LatexCharsNode):
                stray = sorted(set(node.chars) & ({"#"} if math else {"#", "^", "_"}))
                if stray:
                    errors.append(f"{stray} in {node.chars.strip()!r} ({'math' if math else 'text'})")
            elif isinstance(node, LatexSpecialsNode) and node.specials_chars == "&" and not tabular_row:
                errors.append("& outside a tabular row")
            elif isinstance(node, LatexMacroNode):
                if node.macroname not in (MATH_COMMANDS if math else TEXT_COMMANDS):
                    errors.append(f"\\{node.macroname} is not defined {'in math' if math else 'in text'}")
                walk(node.nodeargd.argnlist if node.nodeargd else [], math)
            elif isinstance(node, LatexEnvironmentNode):
                if node.environmentname not in ("table", "tabular"):
                    errors.append(f"environment {node.environmentname} is not expected")
                if node.environmentname == "tabular":
                    errors.extend(tabular_errors(node))
                walk(node.nodelist, math, tabular_row=node.environmentname == "tabular")
            elif isinstance(node, (LatexGroupNode, LatexMathNode)):
                walk(node.nodelist, math or isinstance(node, LatexMathNode))

    walk(nodes, math=False)
    return errors


def tabular_errors(tabular: LatexEnvironmentNode) -> list[str]:
    spec = tabular.nodeargd.argnlist[-1].latex_verbatim().strip("{}").replace(" ", "")
    if set(spec) - set("lcr|"):
        return [f"column spec {spec!r}: only l, c, r and | are checked"]
    columns, errors = sum(c in "lcr" for c in spec), []
    rows: list[list] = [[]]
    for node in tabular.nodelist:
        if isinstance(node, LatexMacroNode) and node.macroname == "\\":
            rows.append([])
        elif not (isinstance(node, LatexCharsNode) and not node.chars.strip()):
            rows[-1].append(node)
    for number, row in enumerate(rows, 1):
        nodes = iter(row)
        cells, content = 1, False
        for node in nodes:
            if isinstance(node, LatexMacroNode) and node.macroname in RULES:
                if content:
                    errors.append(f"row {number}: \\{node.macroname} after the row's content (no \\\\ before it)")
                if node.macroname == "cmidrule":
                    span = next(n for n in nodes if isinstance(n, LatexGroupNode)).latex_verbatim().strip("{}")
                    first, last = (int(c) for c in span.split("-"))
                    if not 1 <= first <= last <= columns:
                        errors.append(f"row {number}: \\cmidrule{{{span}}} outside columns 1-{columns}")
                continue
            content = True
            if isinstance(node, LatexSpecialsNode) and node.specials_chars == "&":
                cells += 1
            elif isinstance(node, LatexMacroNode) and node.macroname == "multicolumn":
                cells += int(next(nodes).latex_verbatim().strip("{}")) - 1
        if content and number == len(rows):
            errors.append(f"row {number}: content after the last \\\\")
        elif content and cells != columns:
            errors.append(f"row {number}: {cells} cells, the spec {spec!r} has {columns} columns")
    return errors


@pytest.mark.parametrize(
    "table",
    [
        "main",
        "ablation",
        "safety",
    ],
)
def test_latex_tables_have_nothing_pdflatex_would_reject(table):
    assert latex_errors(render(known_summary(), "latex", table)) == []


@pytest.mark.parametrize(
    "old, new, error",
    [
        ("micron & - & - & - &", "micron & - & - & - & - &", "row 4: 11 cells, the spec 'lccccccccc' has 10 columns"),
        ("Model & PRAUC", "Model & #PRAUC", "['#'] in '#PRAUC' (text)"),
        ("$\\mathbf{0.4600 \\pm 0.0100}$", "\\mathbf{0.4600 \\pm 0.0100}", "\\mathbf is not defined in text"),
        ("{Overall}", "{Overall", "parse error"),
        ("0.6200 \\pm 0.0100}$ \\\\\n\\bottomrule", "0.6200 \\pm 0.0100}$\n\\bottomrule", "\\bottomrule after the row's content"),
        ("\\toprule", "\\toprul", "\\toprul is not defined in text"),
        ("Model & PRAUC &", "Model & PRAUC (%) &", "comment %) &"),
        ("\\cmidrule(lr){8-10}", "\\cmidrule(lr){8-11}", "\\cmidrule{8-11} outside columns 1-10"),
    ],
)
def test_the_latex_check_finds_what_pdflatex_rejects(old, new, error):
    text = render(known_summary(), "latex")
    assert latex_errors(text) == [] and old in text
    assert any(error in found for found in latex_errors(text.replace(old, new, 1))), latex_errors(text.replace(old, new, 1))


# ----- retention (DistilLLM-Med) --------------------------------------------------------------------------
def retention_summary():
    summary = known_summary()
    summary["models"]["LEADER(T)"] = {g: cells([0.80, 0.82], [0.50, 0.50], [0.65, 0.67]) for g in ("overall", "multi", "single")}
    interval = lambda percent: {"percent": percent, "pm": 3.0, "ci": [percent - 3.0, percent + 3.0], "se": 1.5}  # noqa: E731
    summary["retention_intervals"] = {
        "LEADER(T)": {
            "leader_s": {g: {"prauc": interval(92.5), "jaccard": interval(81.0), "f1": interval(94.0)} for g in ("overall", "multi", "single")},
            "micron": {"overall": {}, "multi": {"prauc": interval(88.0), "jaccard": interval(92.0), "f1": interval(93.0)}, "single": {}},
        }
    }
    return summary


def test_retention_renders_each_student_as_a_percentage_of_each_teacher_with_intervals():
    summary = retention_summary()
    text = render(summary, "markdown", "retention")
    assert "| leader_s | LEADER(T) | 92.5% [89.5, 95.5] | 81.0% [78.0, 84.0] |" in text
    assert "| micron | LEADER(T) | - | - | - | 88.0% [85.0, 91.0] |" in text
    assert "Retention: the student's mean as a percentage of the teacher's" in text
    latex = render(summary, "latex", "retention")
    assert "92.5\\% [89.5, 95.5]" in latex and latex_errors(latex) == []
    rows = list(csv.DictReader(io.StringIO(render(summary, "csv", "retention"))))
    first = rows[0]
    assert (first["student"], first["teacher"], first["group"], first["metric"], first["percent"]) == ("leader_s", "LEADER(T)", "overall", "prauc", "92.5000")
    assert float(first["teacher_mean"]) == pytest.approx(0.81) and len(rows) == 9 + 3
    from bench.tables import rich_retention

    table = rich_retention(summary)
    assert [c.header for c in table.columns][:3] == ["Student", "Teacher", "Overall\nPRAUC"] and table.row_count == 2
    with pytest.raises(ValueError, match="no teacher entry"):
        render(known_summary(), "markdown", "retention")


def test_each_caption_describes_its_own_table():
    """Stars name what they compare with; the ablate/sweep PRAUC table (no marks, a full-model column) says so; retention cells are percentages."""
    main = "\n".join(notes(known_summary()))
    assert "leader_s against the column's best baseline" in main
    ablation = known_summary() | {"versus_full": {"freq": {}}}
    assert "against the column's best ablated variant" in "\n".join(notes(ablation))
    assert "*" not in "\n".join(notes(known_summary() | {"significance": {}}))
    prauc = "\n".join(versus_full_notes(ablation, "leader_s"))
    assert "leader_s's overall test PRAUC minus the entry's" in prauc
    assert not any(word in prauc for word in ("bold", "underlined", "best baseline"))
    assert "minus" not in "\n".join(versus_full_notes(known_summary() | {"versus_full": {}}, None))  # a sweep compares nothing
    summary = known_summary() | {"retention_intervals": {"freq": {"leader_s": {}}}}
    assert not any(word in "\n".join(retention_notes(summary)) for word in ("bold", "half-width", "best baseline"))
