"""The kinds of error the search raises; each is a ``FrandiError``, printed by ``frandi`` as one line (exit 2).

- ``ConfigError``: a study file is malformed, or does not fit the model or the study it resumes.
- ``UsageError``: a command-line option or argument is wrong (a trial that does not exist, a port in use).
- ``ExportError``: an exported file failed its check against the student (ONNX parity, OD moved).
"""

from __future__ import annotations

from frandi_core import FrandiError


class ConfigError(FrandiError):
    """A study file is malformed: the message names the key and what to write instead."""


class UsageError(FrandiError):
    """A command-line option or argument is wrong: the message names the option and a value that works."""


class ExportError(FrandiError):
    """An exported model does not behave as the trial's student did; nothing was written."""
