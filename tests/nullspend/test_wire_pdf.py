"""Inline PDFs' pages, counted from their base64 without decoding it whole."""

from __future__ import annotations

import base64
import zlib

import pytest

from nullspend.wire.pdf import is_pdf, pdf_pages
from tests.nullspend.pdf_documents import base64_of, document


@pytest.mark.parametrize("pages", [1, 2, 3, 10, 57])
@pytest.mark.parametrize("object_stream", [False, True], ids=["plain", "object-stream"])
def test_the_pages_are_counted_at_any_alignment(pages: int, object_stream: bool) -> None:
    """Each page object is found wherever its bytes fall in their base64 groups; with an object
    stream, in its inflated bytes. /Pages and /PageLabels are no page."""
    pdf = document(pages, object_stream=object_stream)
    for padding in range(3):  # shifts every object by one byte in its base64 group
        shifted = pdf.replace(b"%PDF-1.5\n", b"%PDF-1.5\n" + b" " * padding, 1)
        assert pdf_pages(base64_of(shifted)) == pages


def test_a_data_url_and_wrapped_lines_are_read_as_the_plain_base64() -> None:
    pdf = document(4)
    assert pdf_pages("data:application/pdf;base64," + base64_of(pdf)) == 4
    assert pdf_pages(base64.encodebytes(pdf).decode()) == 4  # 76-character lines
    assert is_pdf("data:application/pdf;base64," + base64_of(pdf))


@pytest.mark.parametrize(
    "text",
    [base64_of(b"plain text, not a PDF"), "not base64 at all!", "", "data:text/plain;base64,"],
)
def test_what_is_no_pdf_is_not_taken_for_one(text: str) -> None:
    assert not is_pdf(text)


def test_a_pdf_whose_pages_cannot_be_counted_says_so() -> None:
    """No page object found, an object stream that is not zlib (encrypted, another filter) or
    cut short, or one that inflates like a bomb: None, never a low count."""
    assert pdf_pages(base64_of(b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog >>\nendobj\n")) is None
    packed = document(3, object_stream=True)
    at = packed.index(b"/ObjStm")
    start = packed.index(b"stream\r\n", at) + len(b"stream\r\n")
    scrambled = packed[:start] + bytes(b ^ 0x5A for b in packed[start : start + 40])
    assert pdf_pages(base64_of(scrambled + packed[start + 40 :])) is None
    assert pdf_pages(base64_of(packed[: start + 10])) is None
    bomb = zlib.compress(b"\0" * 10_000_000)
    head = b"%PDF-1.5\n1 0 obj\n<< /Type /ObjStm /N 1 /First 0 >>\nstream\n"
    assert pdf_pages(base64_of(head + bomb + b"\nendstream\nendobj\n")) is None
