"""Typed errors: library code raises these, only the CLI turns them into messages and exit codes.

Also the one answer to "why was this not folded", shared by the ONNX pass and the torch side.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Rejection:
    """Why something may not fold: a reason a user can act on (it reaches the report as is)
    and, where one can be named, the nodes (ONNX) or modules (torch) it concerns."""

    reason: str
    nodes: tuple[str, ...] = ()


class LconnxError(Exception):
    """Base class for every error lconnx raises on purpose."""

    exit_code = 1


class ModelLoadError(LconnxError):
    """The input is missing, empty, truncated, not ONNX, or an invalid graph."""


class UnsafeExternalDataError(ModelLoadError):
    """An external-data location points outside the model's folder."""


class UnsupportedModelError(LconnxError):
    """The model is valid ONNX but uses something lconnx cannot handle."""


class OutputPathError(LconnxError):
    """The output path is unusable (equal to the input, or its folder is missing)."""


class VerificationError(LconnxError):
    """The optimized model disagrees with the original beyond the allowed bound."""

    exit_code = 3


class RequirementError(LconnxError):
    """A gate the user set (``--require-folded``) is not met: fewer sites folded."""

    exit_code = 4


class MissingDependencyError(LconnxError):
    """An optional dependency (onnxruntime) is needed for this operation."""


class UsageError(LconnxError, ValueError):
    """An argument that cannot work: exit 2 on the command line, like argparse's own usage
    errors; a ValueError too, for callers of the library that catch that."""

    exit_code = 2


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message: what a one-line error can quote."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
