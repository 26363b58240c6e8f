"""DICOM input, read safely: Part 10 files and raw data sets, every length checked.

Used by de-identification (:mod:`oncopipe.imaging.deid`) and by the volumes job
(:mod:`oncopipe.imaging.volume`). Input: DICOM Part 10 files, and raw data sets without
the 128-byte preamble and file meta (older exports; pydicom's own ``rtstruct.dcm``), which
are given proper file meta. Empty, random, truncated or over-long input (an element whose
length runs past the end of the file) is refused with :class:`InvalidDicomError` naming the
file; nothing is allocated from a length field before it is checked against the bytes
there are: pydicom reads a cut-off value without complaint, so each element's declared
length is compared with the bytes there, and sequences are decoded to check their items.
Errors never carry tag values (they are PHI).
"""

from __future__ import annotations

import io
import os
import struct
import warnings
from functools import cache, lru_cache
from pathlib import Path
from typing import IO, Any

from oncopipe.errors import InputError
from oncopipe.imaging.uids import (
    InvalidUIDError as InvalidUIDError,  # re-exported
    validate_uid,
)


class InvalidDicomError(InputError):
    """The bytes are not readable DICOM (empty, not DICOM, truncated, malformed)."""

    reason_code = "invalid-dicom"


@cache
def pydicom_names() -> Any:
    """The pydicom names the element helpers below use, imported on first use.

    An import statement costs ~2 us even for a loaded module, and these helpers run some
    thirty times per file; pydicom still is not imported with this module.
    """
    from types import SimpleNamespace

    from pydicom.datadict import keyword_for_tag, tag_for_keyword
    from pydicom.dataelem import DataElement, RawDataElement
    from pydicom.multival import MultiValue
    from pydicom.tag import BaseTag
    from pydicom.values import convert_string, convert_UI

    return SimpleNamespace(
        keyword_for_tag=keyword_for_tag, tag_for_keyword=tag_for_keyword,
        DataElement=DataElement, RawDataElement=RawDataElement, MultiValue=MultiValue,
        BaseTag=BaseTag, convert_UI=convert_UI, convert_string=convert_string,
    )  # fmt: skip


@lru_cache(maxsize=4096)
def keyword_of(tag: int) -> str:
    return str(pydicom_names().keyword_for_tag(tag))


#: Errors a parser raises on bytes that are not what they claim to be.
PARSE_ERRORS = (
    EOFError, OSError, ValueError, KeyError, AttributeError, TypeError, IndexError,
    struct.error, OverflowError, NotImplementedError, RecursionError, MemoryError,
)  # fmt: skip


UNDEFINED_LENGTH = 0xFFFFFFFF
_ZERO_HEADER = bytes(8)
#: A file up to this size is read in one call and parsed from memory (its DICOM is held
#: in memory anyway: pydicom reads every value); measured 1.3-1.7x faster on CT slices
#: than parsing through the buffered file. Larger files are parsed through the file.
_READ_WHOLE_BYTES = 256 * 2**20


class _KnownVRs(dict[int, str]):
    """Tag -> VR from pydicom's data dictionary (repeating groups included), memoised."""

    def __missing__(self, tag: int) -> str:
        from pydicom.datadict import dictionary_VR

        try:
            vr = dictionary_VR(tag)
        except KeyError:
            vr = ""
        if len(self) < 65536:  # bounded: unknown tags in hostile files are many
            self[tag] = vr
        return vr


KNOWN_VRS = _KnownVRs()


class _BoundedReader:
    """A read-only binary file whose ``read(n)`` never asks for more than is left.

    pydicom reads an element's value with ``read(length)`` straight from the length
    field; a buffered file allocates ``length`` bytes before reading, so a header that
    claims 4 GB would cost 4 GB. This wrapper caps every read at the remaining size (the
    short read is then reported as truncation). Hand-written: neither pydicom nor the
    standard library offers such a cap.

    It also bounds time: pydicom reads a run of zero bytes as endless zero-length
    elements (8 bytes each: a 4 GB zero-filled tail would take many minutes). Two
    element headers in a row that are all zeros (tag (0000,0000), never legal in a file)
    stop the read.
    """

    def __init__(self, handle: IO[bytes], size: int, name: str) -> None:
        self._handle = handle
        self._size = size
        self._zero_headers = 0
        self.name = name

    def read(self, n: int = -1) -> bytes:
        left = max(self._size - self._handle.tell(), 0)
        data = self._handle.read(left if n is None or n < 0 else min(n, left))
        return self._checked(n, data)

    def _checked(self, n: int | None, data: bytes) -> bytes:
        """Count element headers of zeros in a row; refuse the second one."""
        if n == 8 and data == _ZERO_HEADER:
            self._zero_headers += 1
            if self._zero_headers > 1:
                raise InvalidDicomError(
                    self.name,
                    "truncated or malformed: zero bytes where DICOM elements should be "
                    "(padding that is not a Data Set Trailing Padding element?)",
                )
        else:
            self._zero_headers = 0
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._handle.seek(offset, whence)

    def tell(self) -> int:
        return self._handle.tell()

    def close(self) -> None:
        self._handle.close()


class _MemoryReader(_BoundedReader):
    """:class:`_BoundedReader` over bytes in memory, with the same zero-header bound.

    ``io.BytesIO.read(n)`` never allocates more than is left, so no cap is needed, and
    position calls go straight to the buffer (the capped reader was a tenth of a CT
    slice's read).
    """

    def __init__(self, data: bytes, name: str) -> None:
        buffer = io.BytesIO(data)
        super().__init__(buffer, len(data), name)
        self._read = buffer.read
        self.seek = buffer.seek  # type: ignore[method-assign,assignment]
        self.tell = buffer.tell  # type: ignore[method-assign]

    def read(self, n: int | None = -1) -> bytes:
        return self._checked(n, self._read(n))


def _looks_like_raw_dataset(head: bytes) -> bool:
    """Return True when the first bytes can start a data set written without Part 10 header.

    Every IOD has SOP Class UID (0008,0016), so a raw data set starts in group 0002 (file
    meta without the preamble) or 0008, little endian (big endian raw data sets are not
    accepted).
    """
    if len(head) < 8:
        return False
    group, element = struct.unpack("<HH", head[:4])
    return group in (0x0002, 0x0008) and element <= 0x0016


def _parse(handle: Any, size: int, head: bytes, *, source: str) -> Any:
    """Parse a DICOM file or raw data set from ``handle``; see :func:`read_dicom`."""
    import pydicom
    from pydicom.dataset import FileMetaDataset

    if size == 0:
        raise InvalidDicomError(source, "empty file (0 bytes)")
    part10 = len(head) >= 132 and head[128:132] == b"DICM"
    if not part10 and not _looks_like_raw_dataset(head):
        raise InvalidDicomError(
            source,
            "not a DICOM Part 10 file ('DICM' missing at byte 128) nor a raw DICOM data set",
        )
    # pydicom's validation messages quote values (PHI): never let them reach a log.
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(handle, force=not part10)
            _check_ends_whole(ds, size, source)
            _decode_all(ds, source)
            if getattr(ds, "file_meta", None) is not None:
                _decode_all(ds.file_meta, source)
    except InputError:
        raise
    except PARSE_ERRORS as e:
        raise InvalidDicomError(
            source, f"unreadable DICOM ({type(e).__name__}): truncated or malformed"
        ) from e
    if len(ds) == 0:
        raise InvalidDicomError(
            source, "truncated or malformed: no data set after the file meta information"
        )
    if not part10:
        ds = _as_part10(ds, source)
    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:
        raise InvalidDicomError(
            source, "truncated or malformed: the file meta information has no TransferSyntaxUID"
        )
    pd = pydicom_names()
    for tag in meta.keys():  # every UID of the file meta, whether it is kept or replaced
        item = meta.get_item(tag)
        if isinstance(item, pd.RawDataElement) and item.value is not None and item.VR == "UI":
            # read with pydicom's UI converter and left raw (de-identification replaces or
            # removes most of the meta: decoding it all was 7 % of a file's time)
            vr, value = "UI", pd.convert_UI(item.value, item.is_little_endian)
        elif isinstance(item, pd.RawDataElement) and item.VR not in ("UN", None):
            continue  # not a UID
        else:
            element = meta[tag]
            vr, value = element.VR, element.value
        # an empty Media Storage UID is tolerated: de-identification sets both from the data set
        if vr == "UI" and (value or int(tag) == 0x00020010):
            validate_uid(value, source=source, attribute=keyword_of(int(tag)), strict=False)
    validate_uid(meta.TransferSyntaxUID, source=source, attribute="TransferSyntaxUID")
    if not isinstance(meta, FileMetaDataset):  # pragma: no cover - pydicom always sets one
        raise InvalidDicomError(source, "no file meta information")
    try:
        meta.TransferSyntaxUID.is_compressed  # noqa: B018 - raises for a non-transfer syntax
    except ValueError as e:
        raise InvalidDicomError(
            source, "the TransferSyntaxUID is not a transfer syntax pydicom can read"
        ) from e
    _check_pixel_length(ds, source)
    # pydicom keeps the reader for deferred values; nothing is deferred here, and the
    # reader holds the whole file: a series held as datasets would take twice its size
    if hasattr(ds, "buffer"):
        ds.buffer = None
    return ds


def _check_ends_whole(ds: Any, size: int, source: str) -> None:
    """Refuse a file that ends inside an element header.

    pydicom stops without a word when fewer than 8 bytes are left for the next tag: the
    bytes after the last element show such a cut.

    Raises:
        InvalidDicomError: 1 to 7 bytes follow the end of the last element.
    """
    from pydicom.dataelem import RawDataElement

    tags = list(ds.keys())
    if not tags:
        return
    last = ds.get_item(tags[-1])
    if not isinstance(last, RawDataElement) or last.length == UNDEFINED_LENGTH:
        return  # its end is not known here (a delimiter ends it); pydicom checks that
    left = size - (last.value_tell + last.length)
    if 0 < left < 8:
        raise InvalidDicomError(
            source, f"truncated or malformed: the file ends {left} bytes into an element header"
        )


def _decode_all(ds: Any, source: str) -> None:
    """Check every element, at every level; refuse one whose length runs past the data.

    pydicom reads a cut-off value without complaint (a short read): the declared length
    of each raw element is compared with what was there. Sequences are decoded to check
    their items; other values are left raw (decoding them costs time and proves nothing).

    Raises:
        InvalidDicomError: an element claims more bytes than the file holds.
    """
    from pydicom.dataelem import RawDataElement

    for tag in list(ds.keys()):
        raw = ds.get_item(tag)
        if (
            isinstance(raw, RawDataElement)
            and raw.length != UNDEFINED_LENGTH
            and raw.value is not None
            and len(raw.value) < raw.length
        ):
            raise InvalidDicomError(
                source,
                f"truncated or malformed: element ({tag.group:04X},{tag.element:04X}) claims "
                f"{raw.length} bytes, the file holds {len(raw.value)} of them",
            )
        vr = raw.VR
        if vr is None:  # implicit VR: the dictionary says whether it is a sequence
            vr = KNOWN_VRS[int(tag)] or "UN"
        if vr == "SQ":  # other values stay raw: decoded when used, or never if removed
            element = ds[tag]
            if element.VR == "SQ":
                for item in element.value:
                    _decode_all(item, source)


def _as_part10(ds: Any, source: str) -> Any:
    """Give a raw data set (read without preamble) the file meta of a Part 10 file.

    The transfer syntax is the encoding pydicom found (implicit or explicit VR little
    endian); encapsulated pixel data cannot be told apart without the file meta, so such
    a raw data set is refused.

    Raises:
        InvalidDicomError: no SOP Class/Instance UID (not a DICOM object), or encapsulated
            pixel data.
    """
    from pydicom.dataelem import RawDataElement
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    for keyword in ("SOPClassUID", "SOPInstanceUID"):
        if keyword not in ds:
            raise InvalidDicomError(
                source,
                f"not a DICOM Part 10 file nor a DICOM data set (no {keyword})",
            )
    pixel = ds.get_item(0x7FE00010) if 0x7FE00010 in ds else None
    if pixel is not None and (
        getattr(pixel, "is_undefined_length", False)
        or (isinstance(pixel, RawDataElement) and pixel.length == UNDEFINED_LENGTH)
    ):
        raise InvalidDicomError(
            source,
            "raw data set (no Part 10 header) with encapsulated pixel data: its transfer "
            "syntax cannot be known; export it as a Part 10 file",
        )
    implicit, little = ds.original_encoding
    if not little:
        raise InvalidDicomError(source, "raw data set in big endian: not supported")
    meta = getattr(ds, "file_meta", None)
    if meta is None:
        meta = FileMetaDataset()
    if "TransferSyntaxUID" not in meta:
        meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta = meta
    return ds


def read_dicom(data: bytes, *, source: str) -> Any:
    """Parse DICOM bytes: a Part 10 file, or a raw data set (given Part 10 file meta).

    Raises:
        InvalidDicomError: empty, not DICOM, truncated, over-long or malformed (the
            message names ``source`` and never a value).
        InvalidUIDError: the transfer syntax is not a UID.
    """
    return _parse(_MemoryReader(data, source), len(data), data[:132], source=source)


def read_dicom_file(path: Path, *, source: str | None = None) -> Any:
    """Parse a DICOM file like :func:`read_dicom`, reading no more than the file holds.

    Raises:
        InvalidDicomError: as :func:`read_dicom`, and for a file that cannot be opened.
    """
    name = source or str(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            if size <= _READ_WHOLE_BYTES:  # one read, then parsed from memory
                return read_dicom(handle.read(size), source=name)
            head = handle.read(132)
            handle.seek(0)
            ds = _parse(_BoundedReader(handle, size, name), size, head, source=name)
    except OSError as e:
        raise InvalidDicomError(name, f"cannot be read ({type(e).__name__})") from e
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
        raise InvalidDicomError(source, "pixel data without Rows/Columns/BitsAllocated") from e
    item = ds.get_item(0x7FE00010)  # its length, without decoding the element
    raw = isinstance(item, pydicom_names().RawDataElement) and item.value is not None
    length = len(item.value) if raw else len(ds.PixelData)
    if length < expected:
        raise InvalidDicomError(
            source, f"truncated or malformed: pixel data has {length} of {expected} bytes"
        )
