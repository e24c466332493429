"""Exception hierarchy: every error mpsearch raises on purpose derives from :class:`MPSearchError`."""

from __future__ import annotations


class MPSearchError(Exception):
    """Root of mpsearch's errors. The message is one line naming the problem and the fix."""


class ConfigError(MPSearchError):
    """A configuration value, hardware profile or CLI override is invalid."""


class CandidateError(MPSearchError):
    """A bit-width candidate does not fit the model (unknown layer, unsupported bit-width)."""


class LoweringError(MPSearchError):
    """A model or candidate cannot be lowered to a TVM kernel graph."""


class HardwareError(MPSearchError):
    """Building or measuring on the hardware target failed."""


class InfeasibleBudgetError(MPSearchError):
    """No candidate in the search space can meet the requested budget."""


class Interrupted(KeyboardInterrupt):
    """The run was stopped (Ctrl-C, SIGINT) during ``stage``; what finished is kept and a re-run resumes.

    A KeyboardInterrupt, not an MPSearchError: handlers that record an error and go on (a failed
    measurement, a failed sweep job) must not swallow a request to stop.
    """

    def __init__(self, stage: str) -> None:
        super().__init__(f"interrupted during the {stage} stage")
        self.stage = stage
