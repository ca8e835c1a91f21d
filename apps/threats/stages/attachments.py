"""The attachment policy stage, and the bounded walk through attachments and zip archives
that the malware stage shares.

What is blocked (category "policy"): file extensions in A3_BLOCKED_EXTENSIONS (also the
last of a double extension, and inside zip archives), MIME types in A3_BLOCKED_MIME_TYPES,
Windows programs whatever their name, names that pretend to be documents ("invoice.pdf.js",
right-to-left override tricks), Office documents with VBA macros, and encrypted archives
(which no scanner can look into).

Archives are unpacked in memory within limits: a total of A3_SCAN_MAX_ARCHIVE_BYTES
unpacked per message, a compression ratio of A3_SCAN_MAX_ARCHIVE_RATIO, A3_SCAN_MAX_PARTS
files and MAX_ARCHIVE_DEPTH levels of archives within archives. The declared sizes are
checked before anything is unpacked, and members are read in chunks against a running
cap, so a zip bomb costs a few kilobytes of work, then the message is "unscannable".
"""

from __future__ import annotations

import io
import logging
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

from django.conf import settings

from apps.threats.models import Category
from apps.threats.pipeline import ScanContext, StageOutcome, Unscannable, scan_stage

logger = logging.getLogger(__name__)

MAX_ARCHIVE_DEPTH = 4  # an archive in an archive in an archive in an archive
# Below this many unpacked bytes a high compression ratio is harmless (a small text file
# of repeated lines compresses 1000 to 1).
RATIO_FLOOR_BYTES = 1024 * 1024
_READ_CHUNK = 64 * 1024
MAX_REASONS = 20

_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_OLE_MAGIC = bytes.fromhex("D0CF11E0A1B11AE1")
# Unicode format characters that reorder or hide text: "invoice\u202efdp.exe" shows as
# "invoiceexe.pdf".
_BIDI_CONTROLS = dict.fromkeys(map(ord, "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f"))
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff"))

_EXTENSION_KINDS = {
    "executable files": {"exe", "scr", "com", "pif", "cpl", "msi", "msp", "dll", "sys", "appx", "msix"},
    "script files": {
        "bat",
        "cmd",
        "js",
        "jse",
        "vbs",
        "vbe",
        "wsf",
        "wsh",
        "hta",
        "ps1",
        "jar",
        "sct",
        "wsc",
    },
    "shortcut files": {"lnk", "url", "scf"},
    "registry files": {"reg"},
    "disk images": {"iso", "img", "vhd", "vhdx"},
}
# What a disguised file pretends to be...
_DOCUMENT_EXTENSIONS = {
    "pdf", "doc", "docx", "xls", "xlsx", "ppt", "pptx", "odt", "ods", "rtf", "txt", "csv",
    "jpg", "jpeg", "png", "gif", "bmp", "tif", "tiff", "mp3", "mp4", "wav", "zip", "rar",
}  # fmt: skip
# ...and what it really is, when that is not blocked outright: files that run code or
# show a fake sign-in page when opened.
_ACTIVE_EXTENSIONS = {"html", "htm", "shtml", "xhtml", "svg", "mht", "mhtml"}
_MACRO_EXTENSIONS = {"docm", "dotm", "xlsm", "xltm", "xlam", "pptm", "potm", "ppam", "ppsm", "sldm"}
_MACRO_REASON = "Office documents with macros are blocked"


@dataclass(frozen=True)
class ScanFile:
    name: str  # "" for an unnamed MIME part
    payload: bytes
    container: str = ""  # the archive it came from: "files.zip", "files.zip > inner.zip"
    content_type: str = ""  # MIME parts only
    encrypted: bool = False  # an encrypted archive member (payload empty)


@dataclass
class _Walk:
    files: list[ScanFile] = field(default_factory=list)
    problem: str = ""  # why the walk stopped early (Unscannable)


class _Limits:
    def __init__(self) -> None:
        self.bytes_left = settings.A3_SCAN_MAX_ARCHIVE_BYTES
        self.files_left = settings.A3_SCAN_MAX_PARTS
        self.ratio = settings.A3_SCAN_MAX_ARCHIVE_RATIO


def _is_zip(payload: bytes) -> bool:
    return payload[:4] in _ZIP_MAGIC


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, cap: int, label: str) -> bytes:
    """The member's bytes, read in chunks; never more than `cap` (the declared size can lie)."""
    chunks: list[bytes] = []
    total = 0
    try:
        with archive.open(info) as member:
            while chunk := member.read(_READ_CHUNK):
                total += len(chunk)
                if total > cap:
                    raise Unscannable(f"{label} unpacks to more than its declared size")
                chunks.append(chunk)
    except (
        zipfile.BadZipFile,
        zlib.error,
        EOFError,
        OSError,
        NotImplementedError,
        RuntimeError,
        ValueError,
    ) as exc:
        raise Unscannable(f"{label} cannot be unpacked ({type(exc).__name__})") from exc
    return b"".join(chunks)


def _declared_entries(data: bytes) -> int | None:
    """The member count in the end-of-central-directory record, read before zipfile
    builds a list of every member (a few hundred thousand tiny entries fit in a message)."""
    end = data.rfind(b"PK\x05\x06", max(0, len(data) - 65_557))
    if end < 0 or end + 12 > len(data):
        return None
    count = int.from_bytes(data[end + 10 : end + 12], "little")
    return None if count == 0xFFFF else count  # 0xFFFF: the zip64 record has the count


def _expand(context: ScanContext, walk: _Walk, limits: _Limits, data: bytes, label: str, depth: int) -> None:
    if depth > MAX_ARCHIVE_DEPTH:
        raise Unscannable(f"archives nested deeper than {MAX_ARCHIVE_DEPTH} levels ({label})")
    if (_declared_entries(data) or 0) > limits.files_left:
        raise Unscannable(f"more than {settings.A3_SCAN_MAX_PARTS} files in attachments and archives")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = [info for info in archive.infolist() if not info.is_dir()]
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        EOFError,
        OSError,
        ValueError,
        NotImplementedError,
    ) as exc:
        raise Unscannable(f"the archive {label} is damaged ({type(exc).__name__})") from exc
    if len(infos) > limits.files_left:
        raise Unscannable(f"more than {settings.A3_SCAN_MAX_PARTS} files in attachments and archives")
    declared = sum(info.file_size for info in infos if not info.flag_bits & 0x1)
    if declared > limits.bytes_left:
        raise Unscannable(
            f"the archive {label} unpacks to more than {settings.A3_SCAN_MAX_ARCHIVE_BYTES} bytes"
        )
    if declared > RATIO_FLOOR_BYTES and declared > limits.ratio * len(data):
        raise Unscannable(f"the archive {label} is compressed more than {limits.ratio} to 1 (a zip bomb)")
    for info in infos:
        context.check_time()
        limits.files_left -= 1
        if info.flag_bits & 0x1:
            walk.files.append(ScanFile(name=info.filename, payload=b"", container=label, encrypted=True))
            continue
        if info.file_size > RATIO_FLOOR_BYTES and info.file_size > limits.ratio * max(info.compress_size, 1):
            raise Unscannable(
                f"{info.filename} in {label} is compressed more than {limits.ratio} to 1 (a zip bomb)"
            )
        payload = _read_member(
            archive, info, min(info.file_size, limits.bytes_left), f"{info.filename} in {label}"
        )
        limits.bytes_left -= len(payload)
        walk.files.append(ScanFile(name=info.filename, payload=payload, container=label))
        if _is_zip(payload):
            _expand(context, walk, limits, payload, f"{label} > {info.filename}", depth + 1)


def _walk(context: ScanContext) -> _Walk:
    """Every MIME part and archive member within the limits. Computed once per message
    (the attachment and malware stages both read it); a walk that hit a limit keeps what
    it found before, with the reason in `problem`."""
    cached = context.shared.get("attachment_walk")
    if cached is not None:
        return cached
    walk = _Walk()
    limits = _Limits()
    try:
        for part in context.parts:
            limits.files_left -= 1
            walk.files.append(
                ScanFile(name=part.filename, payload=part.payload, content_type=part.content_type)
            )
            if _is_zip(part.payload):
                _expand(context, walk, limits, part.payload, part.filename or "(unnamed archive)", 1)
    except Unscannable as exc:
        walk.problem = str(exc)
    context.shared["attachment_walk"] = walk
    return walk


def iter_files(context: ScanContext) -> Iterator[tuple[str, bytes, str]]:
    """(name, payload, container) for every MIME part and every archive member within the
    scanning limits; raises Unscannable after the last file when a limit cut the walk short.
    Encrypted archive members are left out (they cannot be read)."""
    walk = _walk(context)
    for file in walk.files:
        if not file.encrypted:
            yield file.name, file.payload, file.container
    if walk.problem:
        raise Unscannable(walk.problem)


def _clean_name(name: str) -> str:
    # Windows ignores trailing dots and spaces: "invoice.exe. " runs as invoice.exe.
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    return base.translate(_BIDI_CONTROLS).translate(_INVISIBLE).strip().rstrip(". ").lower()


def _extensions(name: str) -> list[str]:
    return [ext.strip() for ext in _clean_name(name).split(".")[1:]]


def _kind(extension: str) -> str:
    for kind, extensions in _EXTENSION_KINDS.items():
        if extension in extensions:
            return kind
    return f".{extension} files"


def _is_windows_program(payload: bytes) -> bool:
    if payload[:2] != b"MZ" or len(payload) < 64:
        return False
    pe_offset = int.from_bytes(payload[0x3C:0x40], "little")
    return payload[pe_offset : pe_offset + 4] == b"PE\0\0"


def _has_vba(name: str, payload: bytes) -> bool:
    with warnings.catch_warnings():  # its grammar uses deprecated pyparsing names
        warnings.simplefilter("ignore", DeprecationWarning)
        from oletools.olevba import VBA_Parser  # imports slowly; most mail has no OLE files

    try:
        parser = VBA_Parser(name or "attachment", data=payload)
        try:
            return bool(parser.detect_vba_macros())
        finally:
            parser.close()
    except Exception:  # a malformed document is simply not a macro finding
        logger.debug("olevba could not read %s", name, exc_info=True)
        return False


def _subject(file: ScanFile) -> str:
    """How a reason names the file, in plain words."""
    name = file.name or f"(unnamed, {file.content_type or 'unknown type'})"
    return f"Attachment {file.container} contains {name}" if file.container else f"Attachment {name}"


def _file_findings(
    file: ScanFile, blocked_extensions: set[str], blocked_types: set[str], sniff_pe: bool
) -> list[str]:
    subject = _subject(file)
    findings: list[str] = []
    extensions = _extensions(file.name) if file.name else []
    last = extensions[-1] if extensions else ""
    pretends = extensions[-2] if len(extensions) >= 2 and extensions[-2] in _DOCUMENT_EXTENSIONS else ""
    if file.name and file.name.translate(_BIDI_CONTROLS) != file.name:
        findings.append(
            f"{subject}: the name uses hidden characters to disguise its real extension (.{last})"
        )
    if last in blocked_extensions:
        disguise = f" (disguised as a .{pretends} file)" if pretends else ""
        findings.append(f"{subject}: {_kind(last)} are blocked{disguise}")
    elif pretends and last in _ACTIVE_EXTENSIONS:
        findings.append(
            f"{subject}: a .{last} file disguised as a .{pretends} document (document-looking double extension)"
        )
    if file.content_type in blocked_types:
        findings.append(f"{subject}: files of type {file.content_type} are blocked")
    if sniff_pe and last not in blocked_extensions and _is_windows_program(file.payload):
        findings.append(f"{subject}: it is a Windows program (executable files are blocked)")
    if last in _MACRO_EXTENSIONS:
        findings.append(f"{subject}: {_MACRO_REASON}")
    elif file.container and _clean_name(file.name) == "vbaproject.bin":
        # The VBA project of an OOXML document: the document is the finding.
        findings.append(f"Attachment {file.container}: {_MACRO_REASON}")
    elif file.payload[:8] == _OLE_MAGIC and _has_vba(file.name, file.payload):
        findings.append(f"{subject}: {_MACRO_REASON}")
    if file.encrypted:
        findings.append(
            f"Attachment {file.container}: encrypted archives are blocked (they cannot be checked)"
        )
    return findings


@scan_stage("attachments", for_submissions=True)
def attachments_stage(context: ScanContext) -> StageOutcome:
    """Blocked attachments, anywhere in the message or its zip archives."""
    walk = _walk(context)
    blocked_extensions = {
        ext.strip().lstrip(".").lower() for ext in settings.A3_BLOCKED_EXTENSIONS if ext.strip()
    }
    blocked_types = {value.strip().lower() for value in settings.A3_BLOCKED_MIME_TYPES if value.strip()}
    sniff_pe = "exe" in blocked_extensions or "application/x-dosexec" in blocked_types
    reasons: list[str] = []
    for file in walk.files:
        context.check_time()
        for finding in _file_findings(file, blocked_extensions, blocked_types, sniff_pe):
            if finding not in reasons:
                reasons.append(finding)
    if not reasons:
        if walk.problem:
            raise Unscannable(walk.problem)
        return StageOutcome(data={"files": len(walk.files)})
    shown = reasons[:MAX_REASONS]
    if len(reasons) > MAX_REASONS:
        shown.append(f"…and {len(reasons) - MAX_REASONS} more blocked attachments")
    if walk.problem:
        shown.append(f"Unscannable: {walk.problem}")
    return StageOutcome(category=Category.POLICY, reasons=shown, data={"files": len(walk.files)})
