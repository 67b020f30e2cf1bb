"""Errors of the training package, with their CLI exit codes (60-69; agent/errors.py owns the rest)."""

from __future__ import annotations

from ..errors import AgentError


class TrainError(AgentError):
    exit_code = 60


class ModelRejected(TrainError):
    """A model file that is missing, unknown to the manifest, or whose sha256 differs from it. Never loaded."""

    exit_code = 61

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"model {name}: {reason}")
        self.name = name


class WeightsError(TrainError):
    """Weights that do not decode, or whose count/shapes do not match the model's manifest entry."""

    exit_code = 62


class RuntimeMissing(TrainError):
    """Neither ai-edge-litert nor tflite-runtime can be imported on this image."""

    exit_code = 63


class FeatureError(TrainError):
    """Feature extraction asked for something the table cannot give (bad window size, wrong columns)."""

    exit_code = 64


class TrainDataError(TrainError):
    """Training data the round cannot use: no samples, wrong shapes, labels out of range, non-finite values."""

    exit_code = 65


class LdpUnavailable(TrainError):
    """Local DP asked for but dp-accounting (the `ldp` extra) is not installed: nothing is trained or sent."""

    exit_code = 66


class LdpLedgerError(TrainError):
    """The local-DP ledger cannot be read or is malformed: privacy spent so far is unknown, so nothing is sent."""

    exit_code = 67
