"""What frandi raises for user-facing problems: one base class, and a kind per thing that can fail.

Each message names what is wrong and what to do. The ``frandi`` command prints any of them as its one line
(exit 2); Python callers can catch the kind they care about (as ``optuna.exceptions`` is organized).
"""

from __future__ import annotations


class FrandiError(ValueError):
    """A user-facing problem: the message names what is wrong and what to do."""


class DataError(FrandiError):
    """Labeled data (for training or the accuracy check) cannot be read as asked."""


class MissingDependency(FrandiError):
    """An optional package a feature needs is not installed; the message names the pip command."""
