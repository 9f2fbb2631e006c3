"""Errors users see. Each reads as one line: what is wrong, where, and what is supported.

The CLI prints `sbc: error: <message>` for any SbcError and exits non-zero; anything else is
a bug in sbc and keeps its traceback.
"""


class SbcError(Exception):
    """Base of every error sbc reports to users."""


class InvalidModelError(SbcError):
    """The input file is not a valid ONNX model (or not ONNX at all)."""


class UnsupportedError(SbcError):
    """An op, attribute, dtype or opset sbc does not support; says what is supported."""


class CompileError(SbcError):
    """The model is valid but cannot be compiled as asked (e.g. a data-dependent shape)."""


class InputError(SbcError, ValueError):
    """Inputs given to a compiled module do not match its signature."""


class ArtifactError(SbcError):
    """A .sbc artifact is corrupt, truncated, foreign or from an incompatible version."""


class TargetUnavailableError(SbcError):
    """The target's device, driver or SDK is not present on this machine."""
