"""Message builders for threat-scanning tests: raw RFC 5322 bytes with CRLF line ends.

plain("Hi", "Hello")                          a text message
with_attachment("x.exe", b"...")              a text message with one attachment
zip_of({"a.txt": b"..."}, encrypted=True)     a zip archive (bytes)
gtube() / eicar()                             the standard spam and virus test strings
ole_with_vba() / docm_with_macro()            Office documents that contain VBA macros
"""

from __future__ import annotations

import io
import struct
import zipfile
from email import policy
from email.message import EmailMessage

GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"

SENDER = "carol@example.org"
RECIPIENT = "alice@alpha.test"


def gtube() -> str:
    return GTUBE


def eicar() -> bytes:
    return EICAR


def _message(subject: str, sender: str, to: str, headers: dict[str, str] | None) -> EmailMessage:
    message = EmailMessage(policy=policy.SMTP)
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message["Message-ID"] = "<test@example.org>"
    for name, value in (headers or {}).items():
        message[name] = value
    return message


def plain(
    subject: str = "Hello",
    body: str = "Just saying hello.\n",
    sender: str = SENDER,
    to: str = RECIPIENT,
    headers: dict[str, str] | None = None,
) -> bytes:
    message = _message(subject, sender, to, headers)
    message.set_content(body)
    return message.as_bytes()


def html(
    html_body: str,
    subject: str = "Hello",
    sender: str = SENDER,
    to: str = RECIPIENT,
    text_body: str = "See the HTML version.\n",
) -> bytes:
    """multipart/alternative with a text and an HTML part."""
    message = _message(subject, sender, to, None)
    message.set_content(text_body)
    message.add_alternative(html_body, subtype="html")
    return message.as_bytes()


def with_attachment(
    filename: str,
    content: bytes,
    content_type: str = "application/octet-stream",
    body: str = "See the attached file.\n",
    subject: str = "A file",
    sender: str = SENDER,
    to: str = RECIPIENT,
) -> bytes:
    message = _message(subject, sender, to, None)
    message.set_content(body)
    maintype, _, subtype = content_type.partition("/")
    message.add_attachment(content, maintype=maintype, subtype=subtype, filename=filename)
    return message.as_bytes()


def zip_of(files: dict[str, bytes], encrypted: bool = False) -> bytes:
    """A deflated zip of `files`. `encrypted` sets the encryption flag on every member
    (what scanners look at; the stdlib cannot write real ZipCrypto)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    data = bytearray(buffer.getvalue())
    if encrypted:
        for signature, flag_offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
            start = 0
            while (found := data.find(signature, start)) >= 0:
                (flags,) = struct.unpack_from("<H", data, found + flag_offset)
                struct.pack_into("<H", data, found + flag_offset, flags | 0x1)
                start = found + 4
    return bytes(data)


# --- Office documents with macros --------------------------------------------------------
# A minimal OLE2 compound file (version 3, 512-byte sectors) holding a VBA project's
# streams: VBA/dir, VBA/Module1 (with the "Attribut" marker of compressed VBA source) and
# PROJECT. Stream data is padded to 4096 bytes so every stream lives in regular sectors
# and no mini stream is needed.

_FREE, _END, _FATSECT, _NOSTREAM = 0xFFFFFFFF, 0xFFFFFFFE, 0xFFFFFFFD, 0xFFFFFFFF
_STREAM_BYTES = 4096


def _direntry(name: str, kind: int, child: int, left: int, right: int, start: int, size: int) -> bytes:
    encoded = (name + "\0").encode("utf-16-le") if name else b""
    return (
        encoded.ljust(64, b"\0")
        + struct.pack("<HBB", len(encoded), kind, 1)
        + struct.pack("<III", left, right, child)
        + b"\0" * 16  # CLSID
        + struct.pack("<I", 0)  # state bits
        + b"\0" * 16  # creation and modification times
        + struct.pack("<IQ", start, size)
    )


def ole_with_vba(
    module_source: str = 'Attribute VB_Name = "Module1"\r\nSub AutoOpen()\r\nEnd Sub\r\n',
) -> bytes:
    """An OLE2 document (like a .doc or .xls) whose VBA project olevba detects."""
    streams = [
        # Compressed VBA containers start with 0x01; olevba looks for "Attribut\0" in them.
        b"\x01" + b"Attribut\x00" + module_source.encode("latin-1"),
        b"\x01\x00\x00",  # VBA/dir (not a valid project description; detection needs none)
        b'ID="{00000000-0000-0000-0000-000000000000}"\r\nModule=Module1\r\n',
    ]
    sectors_per_stream = _STREAM_BYTES // 512
    directory_sectors = 2  # eight 128-byte entries
    first_data_sector = 1 + directory_sectors  # sector 0 holds the FAT
    starts = [first_data_sector + i * sectors_per_stream for i in range(len(streams))]
    module, dir_, project = starts
    # Directory: 0 Root, 1 storage VBA, 2 stream PROJECT, 3 VBA/dir, 4 VBA/Module1; the
    # rest unused ("no siblings, no child"). Siblings form a trivial binary tree.
    entries = [
        _direntry("Root Entry", 5, 1, _NOSTREAM, _NOSTREAM, _END, 0),
        _direntry("VBA", 1, 3, _NOSTREAM, 2, 0, 0),
        _direntry("PROJECT", 2, _NOSTREAM, _NOSTREAM, _NOSTREAM, project, _STREAM_BYTES),
        _direntry("dir", 2, _NOSTREAM, _NOSTREAM, 4, dir_, _STREAM_BYTES),
        _direntry("Module1", 2, _NOSTREAM, _NOSTREAM, _NOSTREAM, module, _STREAM_BYTES),
    ]
    unused = _direntry("", 0, _NOSTREAM, _NOSTREAM, _NOSTREAM, 0, 0)
    directory = b"".join(entries) + unused * (directory_sectors * 4 - len(entries))

    fat = [_FATSECT]
    fat += [i + 2 for i in range(directory_sectors - 1)] + [_END]
    for start in starts:
        fat += [start + i + 1 for i in range(sectors_per_stream - 1)] + [_END]
    fat += [_FREE] * (128 - len(fat))
    header = (
        bytes.fromhex("D0CF11E0A1B11AE1")
        + b"\0" * 16
        + struct.pack("<HHHHH", 0x3E, 3, 0xFFFE, 9, 6)
        + b"\0" * 6
        + struct.pack("<IIII", 0, 1, 1, 0)  # dir sectors (v3: 0), FAT sectors, first dir sector
        + struct.pack("<IIIII", _STREAM_BYTES, _END, 0, _END, 0)  # mini cutoff, mini FAT, DIFAT
        + struct.pack("<I", 0)  # the header's DIFAT: the one FAT sector is sector 0
        + struct.pack("<I", _FREE) * 108
    )
    body = struct.pack("<128I", *fat) + directory
    for data in streams:
        body += data.ljust(_STREAM_BYTES, b"\0")
    return header + body


def docm_with_macro() -> bytes:
    """A Word document (OOXML zip) carrying a VBA project, as Word writes .docm files."""
    return zip_of(
        {
            "[Content_Types].xml": b'<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/'
            b'package/2006/content-types"/>',
            "word/document.xml": b"<w:document/>",
            "word/vbaProject.bin": ole_with_vba(),
        }
    )
