import struct

import pytest

from apps.threats.pipeline import ScanContext, pipeline_run
from apps.threats.stages.attachments import MAX_ARCHIVE_DEPTH, attachments_stage, iter_files
from tests.threats import mailgen

pytestmark = pytest.mark.django_db

# The smallest Windows program header scanners recognise: "MZ", and at 0x3C the offset
# of the "PE\0\0" signature.
PE_PROGRAM = b"MZ" + b"\0" * 0x3A + struct.pack("<I", 0x40) + b"PE\0\0" + b"\0" * 200


def scan(raw: bytes, **context):
    return pipeline_run(ScanContext(raw=raw, **context), stages=[attachments_stage])


def test_an_executable_attachment_is_blocked():
    result = scan(mailgen.with_attachment("invoice.exe", b"program"))

    assert result.category == "policy"
    assert result.reasons == ["Attachment invoice.exe: executable files are blocked"]


@pytest.mark.parametrize(
    ("filename", "reason"),
    [
        ("run.bat", "Attachment run.bat: script files are blocked"),
        ("INVOICE.EXE", "Attachment INVOICE.EXE: executable files are blocked"),
        ("invoice.exe.", "Attachment invoice.exe.: executable files are blocked"),
        (
            "invoice.pdf.exe",
            "Attachment invoice.pdf.exe: executable files are blocked (disguised as a .pdf file)",
        ),
        ("scan.pdf.js", "Attachment scan.pdf.js: script files are blocked (disguised as a .pdf file)"),
        ("disk.iso", "Attachment disk.iso: disk images are blocked"),
        (
            "statement.pdf.html",
            "Attachment statement.pdf.html: a .html file disguised as a .pdf document (document-looking double extension)",
        ),
    ],
)
def test_blocked_names(filename, reason):
    result = scan(mailgen.with_attachment(filename, b"content"))

    assert result.category == "policy"
    assert reason in result.reasons


def test_a_right_to_left_override_name_is_blocked():
    # Shows as "invoiceexe.pdf" in a mail client.
    result = scan(mailgen.with_attachment("invoice\u202efdp.exe", b"content"))

    assert result.category == "policy"
    assert any("hidden characters to disguise its real extension (.exe)" in r for r in result.reasons)


@pytest.mark.parametrize("filename", ["report.pdf", "photo.jpg", "notes.txt", "page.html", "data.tar.gz"])
def test_ordinary_attachments_pass(filename):
    result = scan(mailgen.with_attachment(filename, b"ordinary content"))

    assert result.category == ""
    assert result.reasons == []


def test_a_blocked_mime_type_is_blocked_whatever_the_name():
    raw = mailgen.with_attachment("data.bin", b"content", content_type="application/x-msdownload")

    result = scan(raw)

    assert result.category == "policy"
    assert result.reasons == ["Attachment data.bin: files of type application/x-msdownload are blocked"]


def test_a_windows_program_with_an_innocent_name_is_blocked():
    result = scan(mailgen.with_attachment("photo.jpg", PE_PROGRAM, content_type="image/jpeg"))

    assert result.category == "policy"
    assert result.reasons == ["Attachment photo.jpg: it is a Windows program (executable files are blocked)"]


def test_blocked_extensions_come_from_settings(settings):
    settings.A3_BLOCKED_EXTENSIONS = ["pdf"]

    pdf = scan(mailgen.with_attachment("report.pdf", b"%PDF-1.7"))
    exe = scan(mailgen.with_attachment("tool.exe", b"content"))

    assert pdf.reasons == ["Attachment report.pdf: .pdf files are blocked"]
    assert exe.category == ""


def test_an_executable_inside_a_zip_is_blocked():
    archive = mailgen.zip_of({"readme.txt": b"hello", "bin/tool.exe": b"program"})

    result = scan(mailgen.with_attachment("files.zip", archive, "application/zip"))

    assert result.category == "policy"
    assert result.reasons == ["Attachment files.zip contains bin/tool.exe: executable files are blocked"]


def test_an_executable_in_a_nested_zip_is_blocked():
    inner = mailgen.zip_of({"run.js": b"alert(1)"})
    outer = mailgen.zip_of({"inner.zip": inner, "notes.txt": b"hi"})

    result = scan(mailgen.with_attachment("outer.zip", outer, "application/zip"))

    assert result.category == "policy"
    assert result.reasons == ["Attachment outer.zip > inner.zip contains run.js: script files are blocked"]


def test_archives_nested_too_deep_are_unscannable():
    archive = mailgen.zip_of({"notes.txt": b"hi"})
    for level in range(MAX_ARCHIVE_DEPTH + 1):
        archive = mailgen.zip_of({f"level{level}.zip": archive})

    result = scan(mailgen.with_attachment("deep.zip", archive, "application/zip"))

    assert result.category == "unscannable"
    assert any(f"nested deeper than {MAX_ARCHIVE_DEPTH} levels" in r for r in result.reasons)


def test_an_encrypted_zip_is_blocked():
    archive = mailgen.zip_of({"secret.docx": b"content"}, encrypted=True)

    result = scan(mailgen.with_attachment("secret.zip", archive, "application/zip"))

    assert result.category == "policy"
    assert result.reasons == [
        "Attachment secret.zip: encrypted archives are blocked (they cannot be checked)"
    ]


def test_a_blocked_name_inside_an_encrypted_zip_is_still_seen():
    archive = mailgen.zip_of({"payload.exe": b"program"}, encrypted=True)

    result = scan(mailgen.with_attachment("secret.zip", archive, "application/zip"))

    assert "Attachment secret.zip contains payload.exe: executable files are blocked" in result.reasons


def test_an_ole_document_with_vba_macros_is_blocked():
    raw = mailgen.with_attachment("report.doc", mailgen.ole_with_vba(), "application/msword")

    result = scan(raw)

    assert result.category == "policy"
    assert result.reasons == ["Attachment report.doc: Office documents with macros are blocked"]


def test_an_ooxml_document_with_a_vba_project_is_blocked_whatever_its_extension():
    # Saved as .docx to look harmless; the VBA project inside gives it away.
    raw = mailgen.with_attachment("report.docx", mailgen.docm_with_macro())

    result = scan(raw)

    assert result.category == "policy"
    assert result.reasons == ["Attachment report.docx: Office documents with macros are blocked"]


def test_a_docm_is_blocked_by_its_extension():
    result = scan(mailgen.with_attachment("budget.xlsm", b"PK not really"))

    assert result.category == "policy"
    assert result.reasons == ["Attachment budget.xlsm: Office documents with macros are blocked"]


def test_an_ooxml_document_without_macros_passes():
    docx = mailgen.zip_of({"[Content_Types].xml": b"<Types/>", "word/document.xml": b"<w:document/>"})

    result = scan(mailgen.with_attachment("letter.docx", docx))

    assert result.category == ""


def test_submitted_mail_is_checked_too():
    result = scan(mailgen.with_attachment("invoice.exe", b"program"), submitted=True)

    assert result.category == "policy"


def test_iter_files_yields_parts_and_archive_members():
    inner = mailgen.zip_of({"b.txt": b"bee"})
    archive = mailgen.zip_of({"a.txt": b"ay", "inner.zip": inner})
    context = ScanContext(raw=mailgen.with_attachment("files.zip", archive, "application/zip", body="Body\n"))

    files = list(iter_files(context))

    assert files[0] == ("", b"Body\r\n", "")
    assert files[1] == ("files.zip", archive, "")
    assert ("a.txt", b"ay", "files.zip") in files
    assert ("inner.zip", inner, "files.zip") in files
    assert ("b.txt", b"bee", "files.zip > inner.zip") in files
    assert len(files) == 5


def test_many_blocked_files_give_a_bounded_list_of_reasons():
    archive = mailgen.zip_of({f"tool{i}.exe": b"x" for i in range(50)})

    result = scan(mailgen.with_attachment("tools.zip", archive, "application/zip"))

    assert result.category == "policy"
    assert len(result.reasons) == 21
    assert result.reasons[-1] == "…and 30 more blocked attachments"
