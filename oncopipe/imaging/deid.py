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
- What the table does not list: public attributes unknown to the data dictionary are
  removed (nobody can say what they hold), and so is every unlisted element of a binary
  or unknown value representation (OB, OD, OF, OL, OV, OW, UN) that is not on the binary
  safelist (pixel data, LUTs, waveform samples: ``binary_safelist.csv``), at every
  nesting level. Unlisted person names and free text are removed too.
- Encapsulated documents (Encapsulated PDF, CDA, STL/OBJ/MTL: SOP classes
  ``1.2.840.10008.5.1.4.1.1.104.*``, or an Encapsulated Document element at the top level)
  are refused (reason ``encapsulated-document``): the document is the payload, it has no
  imaging value and no cleaning rule; a nested Encapsulated Document is removed.
- Every UID is validated (:mod:`oncopipe.imaging.uids`) before it is replaced, kept or
  used in a path; an object with an invalid one is refused (reason ``invalid-uid``).
- Pixel data is never touched. Objects with burned-in annotation (BurnedInAnnotation YES,
  or modalities that carry burned-in text: US, SC) are refused: there is no cleaning rule
  for their pixels.
- Input (read by :mod:`oncopipe.imaging.dicom_read`): DICOM Part 10 files, and raw data
  sets without the 128-byte preamble and file meta (older exports; pydicom's own
  ``rtstruct.dcm``), which are read and written out as proper Part 10 files. Empty,
  random, truncated or over-long input (an element whose length runs past the end of the
  file) is refused naming the file; nothing is allocated from a length field before it
  is checked against the bytes there are.

Errors never carry tag values (they are PHI); they name the file and the attribute.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import os
import warnings
from collections.abc import Iterable
from datetime import date, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

from oncopipe.errors import InputError
from oncopipe.imaging.dicom_read import (
    KNOWN_VRS,
    PARSE_ERRORS,
    InvalidDicomError as InvalidDicomError,
    keyword_of,
    pydicom_names,
    read_dicom as read_dicom,
    read_dicom_file as read_dicom_file,
)
from oncopipe.imaging.options import DeidOptions
from oncopipe.imaging.profile import BINARY_VRS, load_binary_safelist, load_rules
from oncopipe.imaging.uids import (
    PATH_UIDS,
    InvalidUIDError as InvalidUIDError,  # re-exported
    is_valid_uid,
    path_uids,
    validate_uid,
)
from oncopipe.pseudonym import date_shift_days, patient_key

#: Modalities that carry burned-in text and for which no pixel cleaning rule exists.
BURNED_IN_MODALITIES = frozenset({"US", "SC", "XC", "OT"})
#: Encapsulated PDF, CDA, STL, OBJ, MTL (PS3.4 B.5): documents, refused as a whole.
ENCAPSULATED_DOCUMENT_CLASS_PREFIX = "1.2.840.10008.5.1.4.1.1.104."
ENCAPSULATED_DOCUMENT_TAG = 0x00420011
METHOD_CODE_SEQUENCE_TAG = 0x00120064  # Deidentification Method Code Sequence
#: DICOM's own UIDs (SOP classes, transfer syntaxes, coding schemes): kept as they are.
DICOM_UID_ROOT = "1.2.840.10008."
#: Part 10 file meta elements that survive; the implementation UID and version name are
#: the writer's (pydicom fills them in), AE titles and private information go.
KEPT_META = frozenset({0x00020001, 0x00020002, 0x00020003, 0x00020010})
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


class EncapsulatedDocumentError(DeidentificationError):
    """The object is an encapsulated document (PDF, CDA, 3D model): never released."""

    reason_code = "encapsulated-document"


def deterministic_uid(secret: bytes, uid: str) -> str:
    """Return the replacement of a UID: ``2.25.`` + 38 decimal digits of an HMAC."""
    digest = hmac.new(secret, b"uid:" + uid.strip().encode("ascii", "replace"), hashlib.sha256)
    return "2.25." + str(int.from_bytes(digest.digest()[:16], "big"))


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
        import pydicom

        # pydicom's validation messages quote values (PHI): never let them reach a log, also
        # for data sets read elsewhere (as :func:`read_dicom` does for those it reads).
        pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
        pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE
        self.rules, self.patterns = load_rules()
        self._binary_safelist = load_binary_safelist()
        self._enabled = self.options.enabled
        # each (tag, stored VR) gets its action once per set of options, not per element
        self._decisions = _decision_memo(self._enabled)

    def deidentify(self, ds: Any, *, source: str) -> tuple[Any, str]:
        """De-identify ``ds`` in place; return it and the patient key.

        Raises:
            DeidentificationError: no PatientID, burned-in annotation, or a value that
                cannot be processed (named by attribute, never by value).
            EncapsulatedDocumentError: an encapsulated document (PDF, CDA, 3D model).
            InvalidUIDError: a UID that is not a DICOM UID, or no Study/Series/SOP
                Instance UID.
        """
        meta = getattr(ds, "file_meta", None)
        classes = [str(_peek_uid(ds, "SOPClassUID") or "")]
        if meta is not None:
            classes.append(str(_peek_uid(meta, "MediaStorageSOPClassUID") or ""))
        if any(c.startswith(ENCAPSULATED_DOCUMENT_CLASS_PREFIX) for c in classes) or (
            ENCAPSULATED_DOCUMENT_TAG in ds
        ):
            raise EncapsulatedDocumentError(
                source,
                "encapsulated document (PDF, CDA or 3D model): the document is free content "
                "with no cleaning rule and no imaging value; not released",
            )
        validate_uid(classes[0], source=source, attribute="SOPClassUID", strict=False)
        source_id = str(ds.get("PatientID", "") or "").strip()
        if not source_id:
            raise DeidentificationError(
                source, "no PatientID: the object cannot be tied to a patient"
            )
        # every value counts: a multi-valued or padded, lower-case spelling must not pass
        burned = _peek_cs(ds, 0x00280301)  # BurnedInAnnotation
        modalities = _peek_cs(ds, 0x00080060)  # Modality
        sop_class = classes[0]
        if "YES" in burned:
            raise DeidentificationError(
                source, "BurnedInAnnotation is YES: pixel data may show identity; not released"
            )
        carrying = sorted(set(modalities) & BURNED_IN_MODALITIES)
        if carrying or sop_class in SECONDARY_CAPTURE_CLASSES:
            raise DeidentificationError(
                source,
                f"modality {'/'.join(carrying) or 'secondary capture'} commonly carries "
                "burned-in text and no pixel cleaning rule is configured; not released",
            )
        key = patient_key(self.secret, source_id)
        days = date_shift_days(self.secret, source_id)
        identifiers = self._identifying_strings(ds) if "clean_descriptors" in self._enabled else []
        self._walk(ds, days, identifiers, source)
        # every UID was checked on the walk; these three make paths and must be there
        path_uids({k: _peek_uid(ds, k) for k in PATH_UIDS}, source=source)
        if meta is not None:
            # Only what Part 10 requires survives: AE titles and private information go.
            for tag in list(meta.keys()):
                if int(tag) not in KEPT_META:
                    del meta[tag]
            if "TransferSyntaxUID" in meta:
                validate_uid(meta.TransferSyntaxUID, source=source, attribute="TransferSyntaxUID")
            # The meta names the instance it carries: the de-identified one.
            _set_ascii(meta, 0x00020002, "UI", str(_peek_uid(ds, "SOPClassUID")))
            _set_ascii(meta, 0x00020003, "UI", str(_peek_uid(ds, "SOPInstanceUID")))
        used = ["basic", *sorted(n for n in self._enabled if n in METHOD_CODES)]
        _set_ascii(ds, 0x00100020, "LO", key)  # PatientID
        _set_ascii(ds, 0x00120062, "CS", "YES")  # PatientIdentityRemoved
        # LO holds 64 characters: the options are listed in the code sequence below
        _set_ascii(ds, 0x00120063, "LO",  # DeidentificationMethod
                   f"oncopipe PS3.15 E.1-1 basic profile + {len(used) - 1} options")  # fmt: skip
        implicit, little = ds.original_encoding
        if implicit is None or little is None:  # built in memory: no encoding to match
            ds.DeidentificationMethodCodeSequence = self._method_codes(used)
        else:
            from pydicom.dataelem import RawDataElement
            from pydicom.tag import BaseTag

            # the same constant items in every file: encoded once per encoding, and written
            # as they are (building and encoding the 3 items was a quarter of the time)
            value = _encoded_method_codes(tuple(used), implicit, little)
            ds[METHOD_CODE_SEQUENCE_TAG] = RawDataElement(
                BaseTag(METHOD_CODE_SEQUENCE_TAG), "SQ", len(value), value, 0, implicit, little
            )
        if "retain_long_modified_dates" in self._enabled:
            _set_ascii(ds, 0x00280303, "CS", "MODIFIED")  # LongitudinalTemporalInformationModified
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
        from pydicom.dataelem import DataElement, RawDataElement
        from pydicom.dataset import Dataset

        # What the walk writes anew (UIDs, dummies, empty values) is ASCII: where the data set
        # was read from bytes, it is stored encoded as they are and written as it is
        # (:func:`_ascii_element`); a data set built in memory gets DataElements.
        encoding = ds.original_encoding
        encoded = None not in encoding
        self._remove_private(ds)
        for tag in list(ds.keys()):
            number = int(tag)
            group = number >> 16
            item = ds.get_item(tag)
            if group & 1:  # a safelisted private element (or its creator)
                if item.VR == "UI":  # written as it is: it must be a UID
                    _check_kept_uid_in(ds, tag, source)
                continue
            if 0x5000 <= group <= 0x50FF or (0x6000 <= group <= 0x60FF and group % 2 == 0):
                del ds[tag]  # curves and overlays
                continue
            if group == 0:  # DIMSE command elements never belong in a stored object
                del ds[tag]
                continue
            if number == 0x00100020 and top:  # PatientID: replaced by the key at the end
                continue
            decision = self._decisions.get((number, item.VR))
            if decision is None:
                decision = self._decide(number, item.VR)
            # Elements that are kept are not decoded: reading and writing them stays raw.
            raw_vr, vr, action = decision
            if action in ("K", "KU") and raw_vr != "SQ":
                if vr == "UI":  # written as it is: it must be a UID
                    _check_kept_uid_in(ds, tag, source)
                continue
            if action == "X":
                del ds[tag]  # no need to decode what is removed
                continue
            if action in ("Z", "D") and raw_vr not in ("SQ", "UI"):
                value = _replacement(action, raw_vr)
                if encoded and len(raw_vr) == 2 and raw_vr != "UN":  # UN: pydicom sets the known VR
                    ds[tag] = _constant_element(number, raw_vr, value or "", encoding)
                else:
                    ds[tag] = DataElement(tag, raw_vr, value)
                continue
            if action == "C" and raw_vr == "TM":
                continue  # whole-day shifts keep the time of day (as _apply does)
            if (
                action == "U" and encoded and raw_vr == "UI" and item.VR in (None, "UI")
                and isinstance(item, RawDataElement) and item.value is not None
            ):  # fmt: skip
                # the UIDs are read with pydicom's UI converter, without decoding the element
                # into the data set, and their replacements stored encoded
                rule = self.rules.get(number)
                name = keyword_of(number) or (rule.name if rule else "") or f"({number:08X})"
                new = [self._uid(str(v), name, source) for v in _uids_of(item)]
                ds[tag] = _ascii_element(number, "UI", "\\".join(new), encoding)
                continue
            element = ds[tag]
            rule = self.rules.get(number)
            name = element.keyword or (rule.name if rule else "") or f"({number:08X})"
            try:
                self._apply(ds, element, action, days, identifiers, name=name, source=source)
            except (ValueError, TypeError) as e:
                raise DeidentificationError(
                    source,
                    f"attribute {name} ({number:08X}) could not be processed ({type(e).__name__})",
                ) from e
            if tag in ds and element.VR == "SQ":
                for item in ds[tag].value:
                    if isinstance(item, Dataset):
                        self._walk(item, days, identifiers, source, top=False)

    def _decide(self, number: int, stored_vr: str | None) -> tuple[str, str, str]:
        """Return (stored VR, VR judged by, action) of an element; memoised per options."""
        rule = self.rules.get(number)
        known_vr = KNOWN_VRS[number] or None
        raw_vr = stored_vr if stored_vr is not None else known_vr or "UN"
        # A known attribute written as UN is judged by what it is (pydicom decodes it so)
        vr = known_vr if raw_vr == "UN" and known_vr else raw_vr
        if rule:
            action = rule.action(self._enabled)
        else:
            action = self._unlisted(vr, number, known=known_vr is not None)
        decision = (raw_vr, vr, action)
        if len(self._decisions) < 65536:  # bounded: unknown tags in hostile files are many
            self._decisions[(number, stored_vr)] = decision
        return decision

    def _uid(self, uid: str, attribute: str, source: str) -> str:
        """Return the replacement of a UID, or DICOM's own UID unchanged.

        Raises:
            InvalidUIDError: the UID is not one (checked before it is hashed or kept).
        """
        uid = validate_uid(uid, source=source, attribute=attribute, strict=False)
        # DICOM's own UIDs (SOP classes, transfer syntaxes, coding schemes) identify
        # nothing; they are written as they are, so they must satisfy the strict rule
        if uid.startswith(DICOM_UID_ROOT):
            return validate_uid(uid, source=source, attribute=attribute)
        return deterministic_uid(self.secret, uid)

    def _unlisted(self, vr: str, tag: int, *, known: bool) -> str:
        """The action for an attribute the table does not list.

        The table cannot list every attribute of every IOD: dates and times of unlisted
        attributes are shifted with the option (else removed), their UIDs replaced like
        the listed ones (except DICOM's own ``1.2.840.10008.`` UIDs), and unlisted free
        text and person names removed. A public attribute the data dictionary does not
        know is removed (nobody can say what it holds), and so is an element of a binary
        or unknown value representation unless the binary safelist names it: its bytes
        cannot be inspected (an encapsulated PDF, a vendor's blob). Everything else is
        kept, as the Basic Profile allows.
        """
        if not known and (tag & 0xFFFF) != 0:  # group lengths are recomputed on write
            return "X"
        if BINARY_VRS.intersection(vr.split(" or ")):
            return "K" if tag in self._binary_safelist else "X"
        if vr in ("DA", "DT"):
            return "C" if "retain_long_modified_dates" in self._enabled else "X"
        if vr == "UI":
            return "U"
        if vr in ("LT", "ST", "UT", "UC", "PN"):
            return "X"
        return "K"

    def _apply(
        self,
        ds: Any,
        element: Any,
        action: str,
        days: int,
        identifiers: list[str],
        *,
        name: str,
        source: str,
    ) -> None:
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
                    element.value = [self._uid(str(v), name, source) for v in element.value]
                else:
                    element.value = self._uid(str(element.value), name, source)
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
                uid = validate_uid(element.value, source=source, attribute=name, strict=False)
                element.value = deterministic_uid(self.secret, uid)
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
        private = [tag for tag in ds.keys() if (tag >> 16) & 1]  # odd group
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
        return _method_code_items(used)


def _method_code_items(used: Iterable[str]) -> list[Any]:
    """The Deidentification Method Code Sequence items (CID 7050) of the options used."""
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


@lru_cache(maxsize=32)
def _encoded_method_codes(used: tuple[str, ...], implicit: bool, little: bool) -> bytes:
    """The value of the method code sequence, encoded as a data set read that way stores it."""
    from pydicom.dataelem import DataElement
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_sequence

    buffer = DicomBytesIO()
    buffer.is_implicit_VR, buffer.is_little_endian = implicit, little
    element = DataElement(METHOD_CODE_SEQUENCE_TAG, "SQ", _method_code_items(used))
    write_sequence(buffer, element, ["iso8859"])  # the codes are plain ASCII
    return bytes(buffer.getvalue())


def _ascii_element(tag: int, vr: str, text: str, encoding: tuple[bool, bool]) -> Any:
    """A new element holding ASCII ``text``, encoded the way its data set stores elements.

    pydicom writes such an element as it is. A DataElement instead is validated when set
    and encoded on write: for the twenty-odd values a CT slice gets anew, that was a third
    of the de-identification time (``benchmarks/profiles.md``). Only for what this module
    makes (UIDs, dates, dummies, empty values, the patient key): ASCII, which every DICOM
    character set encodes as ASCII. Padded to even length as pydicom pads (UI with NUL).
    """
    data = text.encode("ascii")
    if len(data) % 2:
        data += b"\0" if vr == "UI" else b" "
    implicit, little = encoding
    pd = pydicom_names()
    return pd.RawDataElement(pd.BaseTag(tag), vr, len(data), data, 0, implicit, little)


@lru_cache(maxsize=4096)
def _constant_element(tag: int, vr: str, text: str, encoding: tuple[bool, bool]) -> Any:
    """:func:`_ascii_element` for the dummy and empty values (immutable: shared by files)."""
    return _ascii_element(tag, vr, text, encoding)


def _set_ascii(ds: Any, tag: int, vr: str, text: str) -> None:
    """Set an element to ASCII ``text``: encoded (:func:`_ascii_element`) or a DataElement."""
    encoding = ds.original_encoding
    if None in encoding:
        ds[tag] = pydicom_names().DataElement(tag, vr, text)
    else:
        ds[tag] = _ascii_element(tag, vr, text, encoding)


def _uids_of(raw: Any) -> list[Any]:
    """The UIDs of a raw UI element as pydicom reads them (padding removed; [] if empty)."""
    pd = pydicom_names()
    value = pd.convert_UI(raw.value, raw.is_little_endian)
    if isinstance(value, pd.MultiValue):
        return list(value)
    return [value] if value else []


def _peek_uid(ds: Any, keyword: str) -> Any:
    """``ds.get(keyword)`` for a UI attribute, without decoding a raw element into ``ds``.

    A decoded element is encoded again on write; a raw one is written as it is.
    """
    pd = pydicom_names()
    tag = pd.tag_for_keyword(keyword)
    item = ds.get_item(tag) if tag is not None else None
    if item is None:
        return None
    if isinstance(item, pd.RawDataElement) and item.VR in (None, "UI") and item.value is not None:
        return pd.convert_UI(item.value, item.is_little_endian)
    return ds[tag].value


def _peek_cs(ds: Any, tag: int) -> list[str]:
    """The values of a CS attribute, stripped and upper-cased, without decoding a raw
    element into ``ds``: every value of a multi-valued one (``US\\CT``), none if absent."""
    pd = pydicom_names()
    item = ds.get_item(tag)
    if item is None:
        return []
    if isinstance(item, pd.RawDataElement) and item.VR in (None, "CS") and item.value is not None:
        value = pd.convert_string(item.value, item.is_little_endian)  # CS: default repertoire
    else:
        value = ds[tag].value
    if value is None:
        return []
    values = [value] if isinstance(value, str | bytes) else list(value)
    out = []
    for v in values:
        text = v.decode("ascii", "replace") if isinstance(v, bytes) else str(v)
        out += [part.strip().upper() for part in text.split("\\") if part.strip()]
    return out


def _check_kept_uid_in(ds: Any, tag: Any, source: str) -> None:
    """:func:`_check_kept_uid` on ``ds[tag]``, from its bytes when they need no decoding.

    Bytes that are exactly what pydicom writes for strictly valid UIDs (ASCII, NUL-padded
    to even length) are checked as they are and stay raw; anything else is decoded and
    checked as before.

    Raises:
        InvalidUIDError: naming the attribute, never the value.
    """
    item = ds.get_item(tag)
    if (
        isinstance(item, pydicom_names().RawDataElement) and item.VR in (None, "UI")  # UN: as UI
        and item.value is not None and _canonical_uids(item.value)
    ):  # fmt: skip
        return
    _check_kept_uid(ds[tag], source)


def _canonical_uids(data: bytes) -> bool:
    """True when ``data`` is the encoding of one or more strictly valid UIDs."""
    if len(data) % 2:
        return False
    text = data[:-1] if data.endswith(b"\0") else data  # one NUL pads an odd-length value
    try:
        parts = text.decode("ascii").split("\\")
    except UnicodeDecodeError:
        return False
    return all(is_valid_uid(part) for part in parts)


@lru_cache(maxsize=4)  # a deployment uses one or two sets of options
def _decision_memo(enabled: frozenset[str]) -> dict[tuple[int, str | None], tuple[str, str, str]]:
    """The memo of :meth:`Deidentifier._decide` for one set of options.

    Shared by instances: :func:`deidentify_bytes` makes a Deidentifier per file.
    """
    return {}


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


def _check_kept_uid(element: Any, source: str) -> None:
    """Refuse a UID element that is written unchanged unless its UIDs are strictly valid.

    Raises:
        InvalidUIDError: naming the attribute, never the value.
    """
    if element.value in (None, ""):
        return
    values = element.value if element.VM > 1 else [element.value]
    for value in values:
        validate_uid(value, source=source, attribute=element.keyword or str(element.tag))


def write_dicom(ds: Any, *, source: str = "dataset") -> bytes:
    """Serialise a dataset as DICOM Part 10 (preamble, file meta) in its transfer syntax.

    Raises:
        DeidentificationError: a value cannot be encoded (named by type, never by value).
    """
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds.save_as(buffer, enforce_file_format=True)
    except PARSE_ERRORS as e:
        raise DeidentificationError(
            source, f"the de-identified object cannot be encoded ({type(e).__name__})"
        ) from e
    return buffer.getvalue()


def _release(
    ds: Any, *, source: str, secret: bytes, options: DeidOptions | None
) -> tuple[bytes, str, Any]:
    try:
        ds, key = Deidentifier(secret, options).deidentify(ds, source=source)
    except InputError:
        raise
    except PARSE_ERRORS as e:  # a nested value that does not decode, and its like
        raise DeidentificationError(
            source, f"an attribute could not be processed ({type(e).__name__})"
        ) from e
    return write_dicom(ds, source=source), key, ds


def deidentify_bytes(
    data: bytes, *, source: str, secret: bytes, options: DeidOptions | None = None
) -> tuple[bytes, str, Any]:
    """De-identify DICOM bytes; return (new Part 10 bytes, patient key, the dataset).

    Raises:
        InputError: the file is not readable DICOM (:class:`InvalidDicomError`), or
            cannot be released (:class:`DeidentificationError` and its subclasses,
            :class:`InvalidUIDError`).
    """
    ds = read_dicom(data, source=source)
    return _release(ds, source=source, secret=secret, options=options)


def write_deidentified(out: Path, patient_key: str, ds: Any, data: bytes, *, source: str) -> Path:
    """Write a released instance to ``out/<patient>/<study>/<series>/<instance>.dcm``.

    Every segment is validated (strict UIDs, an oncopipe patient key) and the target
    must lie inside ``out``; the file appears whole or not at all (written beside, then
    renamed).

    Returns:
        The path written.

    Raises:
        InvalidUIDError: a segment is not safe, or the target would lie outside ``out``.
    """
    from oncopipe.imaging.uids import instance_path_parts

    patient, study, series, instance = instance_path_parts(patient_key, ds, source=source)
    root = out.resolve()
    target = (root / patient / study / series / f"{instance}.dcm").resolve()
    if not target.is_relative_to(root):  # cannot happen with strict UIDs; never trust it
        raise InvalidUIDError(source, "the output path would lie outside the output folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.part")
    try:
        partial.write_bytes(data)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def deidentify_file(
    path: Path, *, source: str | None = None, secret: bytes, options: DeidOptions | None = None
) -> tuple[bytes, str, Any]:
    """De-identify a DICOM file, like :func:`deidentify_bytes` (reads no more than it holds).

    Raises:
        InputError: as :func:`deidentify_bytes`.
    """
    name = source or str(path)
    return _release(read_dicom_file(path, source=name), source=name, secret=secret, options=options)
