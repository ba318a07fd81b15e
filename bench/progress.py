"""What a run shows while it works: its plan before anything trains, then each unit's progress.

:class:`Display` is the one receiver of progress reports ``(name, done, total, status)``: the training
loops' ``on_progress`` (through :func:`bench.execute.execute_unit`), relayed from worker processes by the
executors. On a terminal each unit gets a rich bar; otherwise (a log file, CI) it logs a line per tenth
of a unit's work. Without a console it shows nothing.
"""

from __future__ import annotations

from contextlib import nullcontext

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bench import registry
from bench.plan import Plan
from bench.results import TimingHistory


class Display:
    """Progress of each unit: a rich bar on a terminal, otherwise a log line per tenth of the work."""

    def __init__(self, console: Console | None):
        self.console = console
        self.progress = None
        self.tasks: dict[str, int] = {}
        self.logged: dict[str, int] = {}  # the last tenth of each unit's work logged (output not a terminal)
        if console is not None:
            self.progress = Progress(
                TextColumn("[bold]{task.description:<22}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[status]}"),
                console=console,
                disable=not console.is_terminal,
            )

    def __enter__(self):
        return self.progress.__enter__() if self.progress is not None else nullcontext()

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def report(self, name: str, done: int, total: int, status: str) -> None:
        """A unit's progress (its training loop's ``(done, total, status)``), from this process or a worker."""
        if self.progress is None:
            return
        if name not in self.tasks:
            self.tasks[name] = self.progress.add_task(name, total=total, status="")
            self.logged[name] = -1
        self.progress.update(self.tasks[name], completed=done, total=total, status=status)
        tenth = 10 * done // max(total, 1)
        if not self.console.is_terminal and (tenth > self.logged[name] or done == total):
            self.logged[name] = tenth
            self.console.log(f"{name}: {done}/{total} {status}")

    def note(self, name: str, status: str) -> None:
        self.report(name, 1, 1, status)

    def plan(self, plan: Plan, fingerprint: str) -> None:
        """Before anything trains: each unit (a teacher its students need first among them), whether it trains
        or is reused, its budget and its last time here."""
        if self.console is None:
            return
        history = TimingHistory()
        table = Table(title=f"plan: {len(plan.pending)} of {len(plan.units) + len(plan.prerequisites)} units to train", title_justify="left")
        for column in ("entry", "seed", "action", "budget", "last time on this machine"):
            table.add_column(column)
        estimate, unknown = 0.0, 0
        for unit in [*plan.prerequisites, *plan.units]:
            if unit not in plan.pending:
                if not unit.prerequisite:
                    table.add_row(unit.label, str(unit.seed), "reuse (run folder)", "", "")
                continue
            seconds = history.get(TimingHistory.key(unit.model, unit.config.to_dict(), fingerprint, plan.spec.protocol))
            estimate += seconds or 0.0
            unknown += seconds is None
            budget = registry.get(unit.model).training_budget(unit.config)
            action = "fine-tune once, before its students (or load it from its cache)" if unit.prerequisite else "train"
            table.add_row(unit.label, str(unit.seed), action, budget, "not measured yet" if seconds is None else f"{seconds:.0f} s")
        self.console.print(table)
        if plan.pending:
            self.console.print(f"estimated training time: {estimate:.0f} s for the units trained here before" + (f", plus {unknown} unit(s) never trained here" if unknown else ""))
