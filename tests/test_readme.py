"""The README's Python example runs as written, uses ``frandi_core`` alone, and prints what the README says.

The block after the ``tests/test_readme.py runs`` marker is run in a fresh interpreter from the repository
root, so an API change that breaks it, or a figure that drifts from its ``# prints:`` line, fails here.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARKER = "<!-- tests/test_readme.py runs the python block below -->"
LINE = re.compile(r"OD (\d+\.\d+) -> (\d+\.\d+) after FR; ratio (\d+\.\d+)")

# appended to the example: the method alone must not pull in the search's dependencies
ALONE = "\nimport sys\nassert not {'optuna', 'sqlalchemy'} & set(sys.modules), 'optuna or sqlalchemy was imported'\n"


def readme_example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert text.count(MARKER) == 1, f"README.md must hold the marker {MARKER!r} exactly once"
    after = text.split(MARKER, 1)[1]
    match = re.match(r"\s*```python\n(.*?)\n```", after, flags=re.S)
    assert match, "the marker must be followed by a ```python block"
    return match.group(1)


def test_readme_example_runs_and_prints_what_it_says() -> None:
    code = readme_example()
    promised = re.search(r"# prints: (.*)", code)
    assert promised, "the example must end with a '# prints: ...' comment"
    want = LINE.fullmatch(promised.group(1).strip())
    assert want, f"unexpected '# prints:' line: {promised.group(1)!r}"

    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-c", code + ALONE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-2000:]
    got = LINE.search(run.stdout)
    assert got, f"the example printed {run.stdout!r}"

    od_before, od_after, ratio = (float(g) for g in got.groups())
    want_before, want_after, want_ratio = (float(g) for g in want.groups())
    assert od_after < od_before, "FR must lower the OD in the README's example"
    assert ratio == want_ratio, f"ratio {ratio} differs from the README's {want_ratio}"
    # synthesis and FR are seeded; a looser match leaves room for other CPUs' float rounding
    assert abs(od_before - want_before) <= 0.05, f"OD before FR {od_before} vs README {want_before}"
    assert abs(od_after - want_after) <= 0.05, f"OD after FR {od_after} vs README {want_after}"
