"""Experiments reproducing the paper's claims on real data; each is ``python -m studies.experiments.NAME``.

The benchmarks reuse their shared parts from here: one Bench per model, reports, figures and search runs.
"""

from __future__ import annotations

from ._common import (
    Bench,
    Report,
    bench,
    channel_policy,
    fewer_macs,
    figure,
    markdown_table,
    parse,
    parser,
    save,
    uniform_wa,
)
from ._searches import SearchRun, policy_of, run_search, variant

__all__ = [
    "Bench",
    "Report",
    "SearchRun",
    "bench",
    "channel_policy",
    "fewer_macs",
    "figure",
    "markdown_table",
    "parse",
    "parser",
    "policy_of",
    "run_search",
    "save",
    "uniform_wa",
    "variant",
]
