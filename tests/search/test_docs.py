"""The README documents every study key and command option that exists, and nothing that does not.

Read from the README's key table (``| `[section]` | keys |``: the backticked names outside parentheses) and its
Commands section (the ``frandi COMMAND ...`` lines and the paragraph after them), against the study file's
dataclasses and the command line's parser.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

import pytest

from search._config import SECTIONS
from search.cli import COMMANDS, _parser

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")


def documented_keys() -> dict[str, set[str]]:
    """Section -> the key names its README table row lists (backticked, outside any parentheses)."""
    keys: dict[str, set[str]] = {}
    for section, cell in re.findall(r"^\| `\[(\w+)\]` \| (.*) \|$", README, flags=re.M):
        depth, found, i = 0, set(), 0
        while i < len(cell):
            c = cell[i]
            if c == "`":
                end = cell.index("`", i + 1)
                token = cell[i + 1 : end]
                if depth == 0 and re.fullmatch(r"[a-z_][a-z0-9_]*", token):
                    found.add(token)
                i = end
            elif c == "(":
                depth += 1
            elif c == ")":
                depth -= 1
            i += 1
        keys[section] = found
    return keys


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_every_study_key_is_documented_and_every_documented_key_exists(section: str) -> None:
    real = {f.name for f in dataclasses.fields(SECTIONS[section])}
    documented = documented_keys().get(section, set())
    assert real - documented == set(), f"[{section}] keys the README's table does not document"
    assert documented - real == set(), f"[{section}] keys the README's table documents but the code does not have"


def options(command: str) -> set[str]:
    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    parser = sub.choices[command]
    return {o for a in parser._actions for o in a.option_strings if o.startswith("--")} - {"--help"}


def commands_section() -> str:
    return README.split("## Commands", 1)[1].split("\n## ", 1)[0]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_option_is_documented_and_exists(command: str) -> None:
    text = commands_section()
    line = re.search(rf"^frandi {command} STUDY\.toml(.*)$", text, flags=re.M)
    assert line, f"the README's Commands section has no 'frandi {command} STUDY.toml' line"
    prose = text.split("```", 2)[2]  # the paragraphs after the block
    said = set(re.findall(r"--[a-z][a-z-]*", line.group(1).split("#")[0]))
    said |= {o for o in options(command) if re.search(rf"`{command}`[^.;]*?`{o}\b", prose)}
    if "Every command takes the study file first and `--storage URL`" in text:
        said.add("--storage")
    assert options(command) - said == set(), f"frandi {command} options the README does not mention"
    assert set(re.findall(r"--[a-z][a-z-]*", line.group(1).split("#")[0])) - options(command) == set()
