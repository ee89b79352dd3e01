"""The packages' fronts are real and the arrows point one way: studies, benchmarks -> search -> frandi_core, storage.

Read from the source (every import statement, also inside functions), so a violation is named by file:line.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("frandi_core", "search", "storage", "studies", "benchmarks", "tests")
# what each package must never import (its own dependencies may, the other way round)
FORBIDDEN = {
    "frandi_core": ("search", "storage", "studies", "benchmarks", "tests", "optuna", "sqlalchemy"),
    "storage": ("frandi_core", "search", "studies", "benchmarks", "tests", "torch"),
    "search": ("studies", "benchmarks", "tests"),
    "studies": ("benchmarks", "tests"),
}


# the package each test folder tests: its tests may read that package's private modules (as optuna's tests import
# optuna.storages._rdb), and no other package's
TESTED = {"core": "frandi_core", "search": "search", "reliability": "search", "storage": "storage",
          "experiments": "studies", "benchmarks": "benchmarks"}


def _imports(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line, dotted name as parts) of every module or name an import statement in ``path`` brings in."""
    rel = path.relative_to(ROOT).with_suffix("")
    package = list(rel.parts[:-1])
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name.split(".")
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = base + (node.module.split(".") if node.module else [])
            yield node.lineno, module
            for alias in node.names:  # from pkg import _private_module (or _private_name)
                yield node.lineno, [*module, alias.name]


def _sources() -> list[Path]:
    return sorted(p for name in PACKAGES for p in (ROOT / name).rglob("*.py"))


def private_imports() -> list[str]:
    """Imports of a ``_name`` (module or attribute) from outside the package that owns it, as file:line."""
    found = []
    for path in _sources():
        rel = path.relative_to(ROOT)
        inside = list(rel.parts[:-1])
        tested = TESTED.get(rel.parts[1]) if rel.parts[0] == "tests" and len(rel.parts) > 2 else None
        for line, parts in _imports(path):
            if parts[0] not in PACKAGES or parts[0] == tested:
                continue
            for i, part in enumerate(parts):
                if part.startswith("_") and not part.startswith("__"):
                    if inside[:i] != parts[:i]:  # the importing file is not in the owner package
                        found.append(f"{rel}:{line}: {'.'.join(parts[: i + 1])}")
                    break
    return list(dict.fromkeys(found))  # once per statement


def test_nothing_imports_another_package_s_private_modules() -> None:
    found = private_imports()
    assert not found, "import these through the package's __init__ (add them to its __all__):\n" + "\n".join(found)


def test_the_arrows_between_packages_point_one_way() -> None:
    found = []
    for path in _sources():
        rel = path.relative_to(ROOT)
        for line, parts in _imports(path):
            if parts[0] in FORBIDDEN.get(rel.parts[0], ()):
                found.append(f"{rel}:{line}: {rel.parts[0]} imports {parts[0]}")
    assert not found, "\n".join(found)


def test_the_check_sees_a_private_import(tmp_path, monkeypatch) -> None:
    """The walk itself: a private import planted in a copy of the tree is reported with its file and line."""
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "bad.py").write_text("import os\n\ndef f():\n    from search._worker import claim\n")
    (tmp_path / "search").mkdir()
    (tmp_path / "search" / "ok.py").write_text("from ._worker import claim\nfrom search._config import replace\n")
    (tmp_path / "tests" / "core").mkdir(parents=True)  # a test may read the package it tests, and no other
    bad = "from frandi_core._pack import pack\nfrom search._worker import x\n"
    (tmp_path / "tests" / "core" / "t.py").write_text(bad)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert private_imports() == ["benchmarks/bad.py:4: search._worker", "tests/core/t.py:2: search._worker"]
