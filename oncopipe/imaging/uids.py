"""DICOM UIDs: one validator for every UID read, written or used in a path.

PS3.5 9.1: a UID is components of digits separated by dots, at most 64 characters, and a
component has no leading zero (``0`` alone is a component). Two levels apply:

- **input** (:data:`INPUT_UID`): digits and dots, no empty component, at most 64
  characters. Leading zeros are tolerated on input because real exports carry them
  (pydicom's own ``rtdose.dcm`` does) and every such UID is replaced by a fresh one
  before anything is written.
- **strict** (:data:`STRICT_UID`): the full PS3.5 rule. Every UID that is written (the
  replacements, DICOM's own ``1.2.840.10008.`` UIDs that are kept, the file meta) and
  every UID that becomes part of a path or object key is strict.

Anything else (path separators, ``..``, NUL, letters, spaces inside, empty where the
attribute is required, more than 64 characters) is refused with :class:`InvalidUIDError`,
naming the file and the attribute, never the value.
"""

from __future__ import annotations

import re
from typing import Any

from oncopipe.errors import InputError

MAX_UID_LENGTH = 64
INPUT_UID = re.compile(r"[0-9]+(?:\.[0-9]+)*")
STRICT_UID = re.compile(r"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))*")
#: The UIDs that name an instance and become components of output paths and keys.
PATH_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


class InvalidUIDError(InputError):
    """A UID is not a DICOM UID; the object is not processed (and nothing written)."""

    reason_code = "invalid-uid"


def is_valid_uid(value: object, *, strict: bool = True) -> bool:
    """Return True when ``value`` is a UID under the strict (or the input) rule.

    Trailing NUL or space padding (how UIDs are stored at even length) is allowed on
    input only.
    """
    if not isinstance(value, str):
        return False
    if not strict:
        value = value.rstrip("\x00 ")
    pattern = STRICT_UID if strict else INPUT_UID
    return len(value) <= MAX_UID_LENGTH and pattern.fullmatch(value) is not None


def validate_uid(value: object, *, source: str, attribute: str, strict: bool = True) -> str:
    """Return ``value`` as a UID string (input padding removed), or raise.

    Raises:
        InvalidUIDError: empty, too long, or not digits and dots (strict: with leading
            zeros too). The message names ``source`` and ``attribute``, never the value.
    """
    text = str(value) if value is not None else ""
    if not strict:
        text = text.rstrip("\x00 ")
    if not text:
        raise InvalidUIDError(source, f"{attribute} is empty: a UID is required")
    if not is_valid_uid(text, strict=strict):
        rule = "PS3.5 9.1: digits and dots, no leading zeros" if strict else "digits and dots"
        raise InvalidUIDError(
            source,
            f"{attribute} is not a valid UID ({rule}, at most {MAX_UID_LENGTH} characters); "
            "not processed",
        )
    return text


def path_uids(ds: Any, *, source: str) -> tuple[str, str, str]:
    """Return (study, series, instance) UIDs of a dataset, validated for use in a path.

    Raises:
        InvalidUIDError: one is missing or is not a strict UID.
    """
    study, series, instance = (
        validate_uid(ds.get(keyword), source=source, attribute=keyword) for keyword in PATH_UIDS
    )
    return study, series, instance


def instance_path_parts(patient_key: str, ds: Any, *, source: str) -> tuple[str, str, str, str]:
    """Return (patient key, study, series, instance) for the path of a de-identified instance.

    Each part is safe as one path segment or key segment: strict UIDs, and a patient key
    of the shape :func:`oncopipe.pseudonym.patient_key` makes.

    Raises:
        InvalidUIDError: a UID is missing or not strict, or the patient key is not one.
    """
    from oncopipe.pseudonym import is_patient_key

    if not is_patient_key(patient_key):
        raise InvalidUIDError(source, "the patient key is not one oncopipe made")
    return (patient_key, *path_uids(ds, source=source))


def safe_key_component(value: str, *, source: str, attribute: str) -> str:
    """Return ``value`` when it is a strict UID (safe as one path segment), else raise.

    Raises:
        InvalidUIDError: as :func:`validate_uid`.
    """
    return validate_uid(value, source=source, attribute=attribute)
