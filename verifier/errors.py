"""Errors the verifier raises for bad input; `code` is a stable identifier for API clients."""

from __future__ import annotations


class VerifierError(ValueError):
    """Bad input to the verifier (a model, a name, a mask), with a stable `code`."""

    code = "invalid_input"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class UnknownArchitecture(VerifierError):
    code = "unknown_arch"


class UnknownDataset(VerifierError):
    code = "unknown_dataset"


class CheckpointError(VerifierError):
    """A model file that cannot be read, or does not fit its architecture."""

    code = "invalid_model"
