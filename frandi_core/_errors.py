"""The one error type frandi_core raises for bad user input."""

from __future__ import annotations


class FrandiError(ValueError):
    """A user-facing problem: the message names what is wrong and what to do."""
