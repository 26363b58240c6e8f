"""Exceptions of the runtime library.

Every message names the file (object key) and, where there is one, the record, and
never carries PHI: no patient identifiers, no note text, no DICOM tag values.
"""

from __future__ import annotations


class OncopipeError(Exception):
    """Base class of every error oncopipe raises on purpose."""


class ConfigError(OncopipeError):
    """A setting is missing or invalid; the message names the key and the allowed values."""


class InputError(OncopipeError):
    """An input object cannot be processed; it belongs in quarantine with this reason.

    Attributes:
        source: the object key or path of the offending input.
        reason_code: a short machine-readable code (``unknown-type``, ``invalid-samplesheet``...).
    """

    reason_code = "invalid-input"

    def __init__(self, source: str, message: str, *, details: list[str] | None = None) -> None:
        self.source = source
        self.message = message
        self.details = list(details or [])
        super().__init__(f"{source}: {message}")

    def __reduce__(self) -> tuple[object, ...]:
        # picklable whatever a subclass's constructor takes (errors cross process pools)
        return (_rebuild, (type(self), self.args), dict(self.__dict__))


def _rebuild(cls: type[InputError], args: tuple[object, ...]) -> InputError:
    error = Exception.__new__(cls)
    error.args = args
    return error


class UnknownObjectError(InputError):
    """The router cannot tell what an ingest object is, so no stage can take it."""

    reason_code = "unknown-type"


class MissingPatientError(InputError):
    """An object cannot be tied to a patient (no sample sheet row, no patient header)."""

    reason_code = "no-patient"
