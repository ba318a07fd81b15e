"""The ``bench`` command. Each sub-command family lives in its own module and registers on ``main``."""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Benchmark medication-recommendation models on one data layer, one protocol, one set of metrics."""


# Registration order is help order; each module adds its commands to ``main``.
from bench.cli import data, run, family  # noqa: E402,F401
