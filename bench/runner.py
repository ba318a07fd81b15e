"""Run a :class:`~bench.spec.RunSpec` into a run folder: plan, execute, summarise.

The pieces, one job each:

- :mod:`bench.spec`: the run, described once (entries, seeds, dataset, protocol, decision, statistics...);
- :mod:`bench.plan`: its entries resolved to models and configs, its units and the order they run in;
- :mod:`bench.execute`: each unit trained (or reused), predicted, decided and written, on any executor;
- :mod:`bench.summary`: cells, intervals, tests and retention from the folder's files alone;
- :mod:`bench.progress`: the plan and each unit's progress, on a terminal or in a log.

Every unit is trained before any is evaluated; resuming is by files (:mod:`bench.results`): a finished
unit is never refit, and rerunning the same spec retries only the units that failed.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from bench.execute import execute
from bench.plan import Plan, plan_run
from bench.progress import Display
from bench.results import RunFolder, read_json, write_json
from bench.spec import RunSpec
from bench.summary import summarise_run
from data_prep.dataset import PreparedDataset
from data_prep.protocol import get_protocol


def run(dataset: PreparedDataset, spec: RunSpec, run_dir: str | Path, console: Console | None = None) -> dict:
    """Train (or reuse), predict and evaluate every entry of ``spec`` at every seed into ``run_dir``;
    return the summary (also written as ``summary.json``). ``console``: where progress goes (None: silent).
    Units that fail are reported together (:class:`bench.execute.IncompleteRunError`) after the others
    have finished and been kept."""
    if not get_protocol(spec.protocol).samples(dataset, "test"):
        raise ValueError(f"dataset {dataset.name!r} has no test sample")
    folder = RunFolder(run_dir)
    plan = plan_run(spec, dataset, folder)
    record_spec(folder, plan, dataset)
    display = Display(console)
    display.plan(plan, dataset.fingerprint)
    with display:
        execute(plan, dataset, folder, display)
    summary = summarise_run(plan, dataset, folder)
    write_json(folder.summary_path, summary)
    return summary


def record_spec(folder: RunFolder, plan: Plan, dataset: PreparedDataset) -> None:
    """``config.json``: the spec, the data's fingerprint, the resolved labels and every entry's config. A
    folder made by other data or another protocol is refused: its files would mix two runs."""
    record = {
        **plan.spec.to_json(),
        "dataset_fingerprint": dataset.fingerprint,
        "proposed": list(plan.proposed),
        "teacher": plan.teacher,
        "entries": [{**r.entry.__dict__, "config": r.config.to_dict()} for r in plan.entries],
    }
    if folder.config_path.exists():
        previous = read_json(folder.config_path)
        for key in ("dataset_fingerprint", "protocol"):
            if previous.get(key) != record[key]:
                raise ValueError(
                    f"{folder.root} holds a run with {key}={previous.get(key)!r}, not {record[key]!r}; "
                    "choose another --run-id or results directory"
                )
    if dataset.meta.get("credentialed", True):  # predictions and weights of credentialed data: readable by their owner only
        folder.root.mkdir(parents=True, exist_ok=True)
        folder.root.chmod(0o700)
    write_json(folder.config_path, record)
