"""Errors about what the user gave (a checkpoint, a layout, a destination), as opposed to bugs.

The CLI reports each as one ``error:`` line and exits 2, on every rank of a multi-rank job;
anything else is a traceback. This module imports nothing heavy, so ``mcore-adapter --help``
and argument errors answer without importing torch.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input: the message says what was expected, what was found and what to do."""


class CheckpointError(UserError, ValueError):
    """A checkpoint directory is missing files or holds inconsistent ones."""


class ConversionError(UserError, ValueError):
    """A checkpoint does not match its template: an unmapped, missing or misshapen tensor."""


class UnsupportedModelError(UserError, KeyError):
    """No template is registered for a ``model_type``."""

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0])


class OutputExistsError(UserError, FileExistsError):
    """The destination exists (without ``force``) or overlaps the source."""


class OutputSpaceError(UserError, OSError):
    """The destination's file system has less free space than the output needs."""
