"""Hostile and broken input: every case ends as an outcome (unscannable or policy) with a
reason, without an exception or a failed stage, and quickly."""

import base64
import io
import struct
import time
import zipfile

import pytest

from apps.threats.pipeline import ScanContext, pipeline_run
from apps.threats.stages.attachments import attachments_stage
from apps.threats.stages.content import gtube_stage, rules_stage
from apps.threats.stages.malware import malware_stage
from apps.threats.stages.urls import urls_stage
from tests.threats import mailgen

pytestmark = pytest.mark.django_db

STAGES = [gtube_stage, rules_stage, attachments_stage, malware_stage, urls_stage]
HEADERS = b"From: carol@example.org\r\nTo: alice@alpha.test\r\nSubject: test\r\nMIME-Version: 1.0\r\n"


def zeros_zip(megabytes: int, name: str = "zeros.bin") -> bytes:
    """A zip of `megabytes` MiB of zeros, written in chunks (compresses about 1000:1)."""
    buffer = io.BytesIO()
    chunk = b"\0" * (1024 * 1024)
    with (
        zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive,
        archive.open(name, "w", force_zip64=True) as member,
    ):
        for _ in range(megabytes):
            member.write(chunk)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def bomb_200mb() -> bytes:
    return zeros_zip(200)


def scan(raw: bytes, limit_seconds: float = 5.0):
    started = time.monotonic()
    result = pipeline_run(ScanContext(raw=raw), stages=STAGES)
    elapsed = time.monotonic() - started
    assert elapsed < limit_seconds, f"scanning took {elapsed:.1f} s"
    assert result.failed_stages == [], result.stages
    return result


def unscannable_reason(result) -> str:
    assert result.category == "unscannable", result.reasons
    reasons = [r for r in result.reasons if r.startswith("Unscannable: ")]
    assert reasons
    return reasons[0]


def test_a_200_mb_zip_bomb_is_unscannable_without_unpacking_it(bomb_200mb):
    assert len(bomb_200mb) < 1024 * 1024

    result = scan(mailgen.with_attachment("zeros.zip", bomb_200mb, "application/zip"), limit_seconds=2)

    assert "unpacks to more than 104857600 bytes" in unscannable_reason(result)


def test_a_zip_compressed_past_the_ratio_is_unscannable():
    bomb = zeros_zip(20)  # under the size cap, far past 100:1

    result = scan(mailgen.with_attachment("zeros.zip", bomb, "application/zip"), limit_seconds=2)

    assert "compressed more than 100 to 1 (a zip bomb)" in unscannable_reason(result)


def test_a_zip_that_lies_about_its_sizes_is_unscannable():
    # The headers claim 1 KiB for 5 MiB of zeros: the reader must stop at the claimed size.
    data = bytearray(zeros_zip(5))
    for signature, size_offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        found = data.find(signature)
        if struct.unpack_from("<I", data, found + size_offset)[0] != 0xFFFFFFFF:
            struct.pack_into("<I", data, found + size_offset, 1024)
    extra = data.find(b"\x01\x00", data.find(b"PK\x01\x02") + 46)  # the zip64 sizes, if any
    if extra > 0:
        struct.pack_into("<Q", data, extra + 4, 1024)

    result = scan(mailgen.with_attachment("liar.zip", bytes(data), "application/zip"), limit_seconds=2)

    assert "liar.zip" in unscannable_reason(result)


def test_a_zip_with_too_many_members_is_unscannable():
    archive = mailgen.zip_of({f"f{i}.txt": b"x" for i in range(1500)})

    result = scan(mailgen.with_attachment("many.zip", archive, "application/zip"))

    assert "more than 1000 files" in unscannable_reason(result)


def test_a_damaged_zip_is_unscannable():
    damaged = mailgen.zip_of({"a.txt": b"hello" * 100})[:60]

    result = scan(mailgen.with_attachment("damaged.zip", damaged, "application/zip"))

    assert "the archive damaged.zip is damaged" in unscannable_reason(result)


def test_deeply_nested_mime_is_unscannable():
    raw = HEADERS + b'Content-Type: multipart/mixed; boundary="b0"\r\n\r\n'
    for level in range(1, 100):
        raw += f'--b{level - 1}\r\nContent-Type: multipart/mixed; boundary="b{level}"\r\n\r\n'.encode()
    raw += b"--b99\r\nContent-Type: text/plain\r\n\r\nhello\r\n--b99--\r\n"
    for level in range(98, -1, -1):
        raw += f"--b{level}--\r\n".encode()

    result = scan(raw)

    assert "MIME nesting deeper than" in unscannable_reason(result)


def test_ten_thousand_parts_are_unscannable():
    part = b"--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
    raw = HEADERS + b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n' + part * 10_000 + b"--b--\r\n"

    result = scan(raw, limit_seconds=10)

    assert "more than 1000 MIME parts" in unscannable_reason(result)


def test_broken_base64_is_unscannable():
    raw = (
        HEADERS + b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
        b'--b\r\nContent-Type: application/pdf; name="x.pdf"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
        b"JVBERi0xLjcK!!!@@@***\r\nnot*base64\r\n--b--\r\n"
    )

    result = scan(raw)

    assert "broken base64" in unscannable_reason(result)


def test_a_one_megabyte_header_is_unscannable():
    raw = HEADERS + b"X-Padding: " + b"a" * (1024 * 1024) + b"\r\n\r\nhello\r\n"

    result = scan(raw)

    assert "header section larger than" in unscannable_reason(result)


def test_a_blocked_attachment_beside_a_bomb_is_policy_with_both_reasons(bomb_200mb):
    message = mailgen.with_attachment("zeros.zip", bomb_200mb, "application/zip")
    # Put an executable in front of the bomb, in its own archive.
    tools = base64.b64encode(mailgen.zip_of({"tool.exe": b"program"})).decode()
    boundary_line = message.split(b"\r\n--", 2)[1].split(b"\r\n", 1)[0]
    extra = (
        f"\r\n--{boundary_line.decode()}\r\nContent-Type: application/zip\r\n"
        f'Content-Disposition: attachment; filename="tools.zip"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
        f"{tools}\r\n"
    ).encode()
    first = message.index(b"\r\n--" + boundary_line)
    raw = message[:first] + extra + message[first:]

    result = scan(raw, limit_seconds=2)

    assert result.category == "policy"
    assert "Attachment tools.zip contains tool.exe: executable files are blocked" in result.reasons
    assert any(r.startswith("Unscannable: ") for r in result.reasons)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\r\n\r\n",
        b"\x00\xff" * 5000,
        b"no headers at all, just text",
        HEADERS + b"Content-Type: multipart/mixed\r\n\r\nno boundary parameter\r\n",
        HEADERS + b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\nunterminated',
        HEADERS + b"Content-Type: text/html\r\n\r\n<a href='http://[::1'>x</a><<<<>>>&#xffffffff;<a href=",
        HEADERS + b"Content-Type: text/plain; charset=no-such-charset\r\n\r\n\xff\xfe http://x.example\r\n",
    ],
)
def test_garbage_never_breaks_a_stage(raw):
    result = scan(raw)

    assert result.category in ("", "unscannable")
