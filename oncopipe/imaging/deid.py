"""DICOM de-identification core: one dataset in, a de-identified dataset out.

Applies the Basic Application Level Confidentiality Profile (:mod:`oncopipe.imaging.profile`)
to every element, recursing into every sequence item:

- PatientID becomes the pseudonymous patient key (:func:`oncopipe.pseudonym.patient_key`).
- UIDs with action U are replaced deterministically from the project secret
  (``2.25.<decimal of HMAC-SHA256>``): the same UID maps to the same UID in every file
  and run, so Study/Series/SOP/Frame of Reference references stay consistent, inside
  sequences and in the file meta information too.
- Dates (option "Retain Longitudinal Temporal Information with Modified Dates") are
  shifted by a per-patient number of days derived from the secret: consistent across
  files and runs, different between patients.
- Private elements are removed (except an explicit safelist), overlays (60xx) and curves
  (50xx) are removed; PatientIdentityRemoved, DeidentificationMethod and the method code
  sequence record what was done.
- Pixel data is never touched. Objects with burned-in annotation (BurnedInAnnotation YES,
  or modalities that carry burned-in text: US, SC) are refused: there is no cleaning rule
  for their pixels.

Errors never carry tag values (they are PHI); they name the file and the attribute.
"""

from __future__ import annotations

import hashlib
import hmac
import io
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from oncopipe.errors import InputError
from oncopipe.imaging.profile import load_rules
from oncopipe.pseudonym import patient_key

#: Modalities that carry burned-in text and for which no pixel cleaning rule exists.
BURNED_IN_MODALITIES = frozenset({"US", "SC", "XC", "OT"})
SECONDARY_CAPTURE_CLASSES = frozenset(
    {"1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.7.1", "1.2.840.10008.5.1.4.1.1.7.2",
     "1.2.840.10008.5.1.4.1.1.7.3", "1.2.840.10008.5.1.4.1.1.7.4"}
)  # fmt: skip
#: CID 7050 codes of the profile and its options (DCM coding scheme).
METHOD_CODES = {
    "basic": ("113100", "Basic Application Confidentiality Profile"),
    "retain_long_modified_dates": (
        "113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    "retain_patient_characteristics": ("113108", "Retain Patient Characteristics Option"),
    "retain_device_identity": ("113109", "Retain Device Identity Option"),
    "clean_descriptors": ("113105", "Clean Descriptors Option"),
    "retain_safe_private": ("113111", "Retain Safe Private Option"),
}  # fmt: skip
DUMMY = {
    "PN": "ANONYMIZED", "LO": "ANONYMIZED", "SH": "ANONYMIZED", "LT": "ANONYMIZED",
    "ST": "ANONYMIZED", "UT": "ANONYMIZED", "UC": "ANONYMIZED", "CS": "ANONYMIZED",
    "AE": "ANONYMIZED", "DA": "19000101", "TM": "000000.00", "DT": "19000101000000.00",
    "AS": "000D", "IS": "0", "DS": "0", "UR": "", "UN": b"",
}  # fmt: skip


class DeidentificationError(InputError):
    """The object cannot be released de-identified; it belongs in quarantine."""

    reason_code = "not-deidentifiable"


@dataclass(frozen=True)
class DeidOptions:
    """Profile options, configurable per deployment (PS3.15 E.3)."""

    retain_long_modified_dates: bool = True
    retain_patient_characteristics: bool = True
    clean_descriptors: bool = False
    retain_device_identity: bool = False
    #: (private creator, element low byte) pairs known to carry no identity.
    safe_private: tuple[tuple[str, int], ...] = field(default_factory=tuple)

    @property
    def enabled(self) -> frozenset[str]:
        names = {
            name
            for name in ("retain_long_modified_dates", "retain_patient_characteristics",
                         "clean_descriptors", "retain_device_identity")
            if getattr(self, name)
        }  # fmt: skip
        if self.safe_private:
            names.add("retain_safe_private")
        return frozenset(names)


def deterministic_uid(secret: bytes, uid: str) -> str:
    """Return the replacement of a UID: ``2.25.`` + 38 decimal digits of an HMAC."""
    digest = hmac.new(secret, b"uid:" + uid.strip().encode("ascii", "replace"), hashlib.sha256)
    return "2.25." + str(int.from_bytes(digest.digest()[:16], "big"))


def date_shift_days(secret: bytes, source_patient_id: str) -> int:
    """Return the per-patient date shift: between 1 and 3650 days into the past."""
    digest = hmac.new(secret, b"dateshift:" + source_patient_id.strip().encode(), hashlib.sha256)
    return -(1 + int.from_bytes(digest.digest()[:4], "big") % 3650)


def _shift(value: str, vr: str, days: int) -> str:
    if not value:
        return value
    if vr == "DA":
        return (date(int(value[:4]), int(value[4:6]), int(value[6:8])) + timedelta(days)).strftime(
            "%Y%m%d"
        )
    # DT: shift the date part, keep the time and offset as written
    moved = datetime(int(value[:4]), int(value[4:6] or 1), int(value[6:8] or 1)) + timedelta(days)
    return moved.strftime("%Y%m%d")[: max(len(value[:8]), 4)] + value[8:]


class Deidentifier:
    """De-identifies datasets with one secret and one set of options."""

    def __init__(self, secret: bytes, options: DeidOptions | None = None) -> None:
        self.secret = secret
        self.options = options or DeidOptions()
        self.rules, self.patterns = load_rules()
        self._enabled = self.options.enabled

    def deidentify(self, ds: Any, *, source: str) -> tuple[Any, str]:
        """De-identify ``ds`` in place; return it and the patient key.

        Raises:
            DeidentificationError: no PatientID, burned-in annotation, or a value that
                cannot be processed (named by attribute, never by value).
        """
        source_id = str(ds.get("PatientID", "") or "").strip()
        if not source_id:
            raise DeidentificationError(
                source, "no PatientID: the object cannot be tied to a patient"
            )
        burned = str(ds.get("BurnedInAnnotation", "") or "").upper()
        modality = str(ds.get("Modality", "") or "").upper()
        sop_class = str(ds.get("SOPClassUID", "") or "")
        if burned == "YES":
            raise DeidentificationError(
                source, "BurnedInAnnotation is YES: pixel data may show identity; not released"
            )
        if modality in BURNED_IN_MODALITIES or sop_class in SECONDARY_CAPTURE_CLASSES:
            raise DeidentificationError(
                source,
                f"modality {modality or 'secondary capture'} commonly carries burned-in text and "
                "no pixel cleaning rule is configured; not released",
            )
        key = patient_key(self.secret, source_id)
        days = date_shift_days(self.secret, source_id)
        identifiers = self._identifying_strings(ds) if "clean_descriptors" in self._enabled else []
        self._walk(ds, days, identifiers, source)
        if getattr(ds, "file_meta", None) is not None:
            meta = ds.file_meta
            if "MediaStorageSOPInstanceUID" in meta:
                meta.MediaStorageSOPInstanceUID = deterministic_uid(
                    self.secret, str(meta.MediaStorageSOPInstanceUID)
                )
            # Only what Part 10 requires survives: AE titles and private information go.
            required = {0x00020001, 0x00020002, 0x00020003, 0x00020010, 0x00020012, 0x00020013}
            for tag in list(meta.keys()):
                if int(tag) not in required:
                    del meta[tag]
        ds.PatientID = key
        ds.PatientIdentityRemoved = "YES"
        used = ["basic", *sorted(n for n in self._enabled if n in METHOD_CODES)]
        # LO holds 64 characters: the options are listed in the code sequence below
        ds.DeidentificationMethod = f"oncopipe PS3.15 E.1-1 basic profile + {len(used) - 1} options"
        ds.DeidentificationMethodCodeSequence = self._method_codes(used)
        if "retain_long_modified_dates" in self._enabled:
            ds.LongitudinalTemporalInformationModified = "MODIFIED"
        return ds, key

    # -- internals ---------------------------------------------------------------------------
    def _identifying_strings(self, ds: Any) -> list[str]:
        """Values that must not survive in a cleaned descriptor (names, IDs)."""
        found: list[str] = []
        keywords = (
            "PatientName", "PatientID", "OtherPatientIDs", "PatientBirthName",
            "PatientMotherBirthName", "ReferringPhysicianName", "AccessionNumber",
        )  # fmt: skip
        for keyword in keywords:
            value = ds.get(keyword)
            if value:
                for part in str(value).replace("^", " ").split():
                    if len(part) >= 3:
                        found.append(part)
        return sorted(set(found), key=len, reverse=True)

    def _walk(
        self, ds: Any, days: int, identifiers: list[str], source: str, top: bool = True
    ) -> None:
        from pydicom.datadict import dictionary_VR
        from pydicom.dataelem import DataElement
        from pydicom.dataset import Dataset

        self._remove_private(ds)
        for tag in list(ds.keys()):
            number = int(tag)
            group = number >> 16
            if group & 1:  # a safelisted private element (or its creator)
                continue
            if 0x5000 <= group <= 0x50FF or (0x6000 <= group <= 0x60FF and group % 2 == 0):
                del ds[tag]  # curves and overlays
                continue
            if number == 0x00100020 and top:  # PatientID: replaced by the key at the end
                continue
            rule = self.rules.get(number)
            # Elements that are kept are not decoded: reading and writing them stays raw.
            raw_vr = ds.get_item(tag).VR
            if raw_vr is None:
                try:
                    raw_vr = dictionary_VR(tag)
                except KeyError:
                    raw_vr = "UN"
            action = rule.action(self._enabled) if rule else self._unlisted(raw_vr)
            if action in ("K", "KU") and raw_vr != "SQ":
                continue
            if action == "X":
                del ds[tag]  # no need to decode what is removed
                continue
            if action in ("Z", "D") and raw_vr not in ("SQ", "UI"):
                ds[tag] = DataElement(tag, raw_vr, _replacement(action, raw_vr))
                continue
            element = ds[tag]
            try:
                self._apply(ds, element, action, days, identifiers)
            except (ValueError, TypeError) as e:
                name = rule.name if rule else element.keyword or f"{number:08X}"
                raise DeidentificationError(
                    source,
                    f"attribute {name} ({number:08X}) could not be processed ({type(e).__name__})",
                ) from e
            if tag in ds and element.VR == "SQ":
                for item in ds[tag].value:
                    if isinstance(item, Dataset):
                        self._walk(item, days, identifiers, source, top=False)

    def _uid(self, uid: str) -> str:
        # DICOM's own UIDs (SOP classes, transfer syntaxes, coding schemes) identify nothing
        if uid.startswith("1.2.840.10008."):
            return uid
        return deterministic_uid(self.secret, uid)

    def _unlisted(self, vr: str) -> str:
        """The action for an attribute the table does not list.

        The table cannot list every attribute of every IOD: dates and times of unlisted
        attributes are shifted with the option (else removed), their UIDs replaced like
        the listed ones (except DICOM's own ``1.2.840.10008.`` UIDs), and unlisted free
        text removed. Everything else is kept, as the Basic Profile allows.
        """
        if vr in ("DA", "DT"):
            return "C" if "retain_long_modified_dates" in self._enabled else "X"
        if vr == "UI":
            return "U"
        if vr in ("LT", "ST", "UT", "UC"):
            return "X"
        return "K"

    def _apply(self, ds: Any, element: Any, action: str, days: int, identifiers: list[str]) -> None:
        vr = element.VR
        if action in ("K", "KU"):
            return
        if action == "X":
            del ds[element.tag]
            return
        if vr == "SQ":
            if action == "Z":
                element.value = []  # D and C keep the items, which are de-identified too
            return
        if action == "U":
            if element.value:
                if element.VM > 1:
                    element.value = [self._uid(str(v)) for v in element.value]
                else:
                    element.value = self._uid(str(element.value))
            return
        if action == "Z":
            if vr in ("OB", "OW", "UN"):
                element.value = b""
            elif vr in ("US", "SS", "UL", "SL", "FL", "FD"):
                element.value = None
            else:
                element.value = ""
            return
        if action == "D":
            if vr == "UI":
                element.value = deterministic_uid(self.secret, str(element.value or ""))
            elif vr in DUMMY:
                element.value = DUMMY[vr]
            else:
                element.value = b"" if vr in ("OB", "OW") else None
            return
        if action == "C":
            if vr in ("DA", "DT") and "retain_long_modified_dates" in self._enabled:
                if element.VM > 1:
                    element.value = [_shift(str(v), vr, days) for v in element.value]
                else:
                    element.value = _shift(str(element.value or ""), vr, days)
            elif vr in ("TM",):
                return  # whole-day shifts keep the time of day
            elif isinstance(element.value, str):
                text = element.value
                for identifier in identifiers:
                    text = _replace_insensitive(text, identifier, "")
                element.value = " ".join(text.split())
            return
        raise ValueError(f"unknown action {action}")

    def _remove_private(self, ds: Any) -> None:
        """Remove private elements, keeping safelisted ones and their creators."""
        private = [tag for tag in ds.keys() if tag.group & 1]
        if not private:
            return
        keep: set[int] = set()
        if self.options.safe_private:
            for tag in private:
                group, number = tag.group, tag.element
                if number < 0x1000:
                    continue
                creator_tag = (group << 16) | (number >> 8)
                creator = str(ds[creator_tag].value) if creator_tag in ds else ""
                if (creator, number & 0xFF) in self.options.safe_private:
                    keep.update((int(tag), creator_tag))
        for tag in private:
            if int(tag) not in keep:
                del ds[tag]

    def _method_codes(self, used: Iterable[str]) -> Any:
        from pydicom.dataset import Dataset

        items = []
        for name in used:
            value, meaning = METHOD_CODES[name]
            item = Dataset()
            item.CodeValue = value
            item.CodingSchemeDesignator = "DCM"
            item.CodeMeaning = meaning
            items.append(item)
        return items


def _replacement(action: str, vr: str) -> Any:
    """Return the Z (empty) or D (dummy) value of a VR."""
    if action == "Z" or vr not in DUMMY:
        if vr in ("OB", "OW", "UN"):
            return b""
        return None if vr in ("US", "SS", "UL", "SL", "FL", "FD") else ""
    return DUMMY[vr]


def _replace_insensitive(text: str, old: str, new: str) -> str:
    lower, needle = text.lower(), old.lower()
    out, start = [], 0
    while (index := lower.find(needle, start)) >= 0:
        out.append(text[start:index] + new)
        start = index + len(old)
    out.append(text[start:])
    return "".join(out)


def read_dicom(data: bytes, *, source: str) -> Any:
    """Parse DICOM Part 10 bytes.

    Raises:
        InputError: empty, truncated, not DICOM, or no file meta information.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    if not data:
        raise InputError(source, "empty file (0 bytes)")
    # pydicom's validation messages quote values (PHI): never let them reach a log.
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=False)
        ds.PatientID  # noqa: B018 - parse the header now, not lazily later
        for element in ds:  # decode every element: truncation surfaces here
            _ = element.value
    except InvalidDicomError as e:
        raise InputError(source, "not a DICOM Part 10 file (no DICM preamble/meta)") from e
    except (EOFError, OSError, ValueError, KeyError, AttributeError, TypeError) as e:
        raise InputError(
            source, f"unreadable DICOM ({type(e).__name__}): truncated or malformed"
        ) from e
    if getattr(ds, "file_meta", None) is None or "TransferSyntaxUID" not in ds.file_meta:
        raise InputError(source, "no file meta information (TransferSyntaxUID missing)")
    _check_pixel_length(ds, source)
    return ds


def _check_pixel_length(ds: Any, source: str) -> None:
    """Refuse native pixel data shorter than its geometry says (a truncated upload).

    pydicom reads a truncated last element without complaint; the pixel data is the
    last element of an image, so this is where a cut-off upload shows.
    """
    if "PixelData" not in ds or ds.file_meta.TransferSyntaxUID.is_compressed:
        return
    try:
        expected = (
            int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1) or 1)
            * int(ds.get("NumberOfFrames", 1) or 1) * int(ds.BitsAllocated)
        ) // 8  # fmt: skip
    except (AttributeError, TypeError, ValueError) as e:
        raise InputError(source, "pixel data without Rows/Columns/BitsAllocated") from e
    if len(ds.PixelData) < expected:
        raise InputError(
            source,
            f"truncated or malformed: pixel data has {len(ds.PixelData)} of {expected} bytes",
        )


def write_dicom(ds: Any) -> bytes:
    """Serialise a dataset as DICOM Part 10 in its own transfer syntax."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def deidentify_bytes(
    data: bytes, *, source: str, secret: bytes, options: DeidOptions | None = None
) -> tuple[bytes, str, Any]:
    """De-identify DICOM bytes; return (new bytes, patient key, the dataset).

    Raises:
        InputError: the file is not readable DICOM, or cannot be released.
    """
    ds = read_dicom(data, source=source)
    ds, key = Deidentifier(secret, options).deidentify(ds, source=source)
    return write_dicom(ds), key, ds
