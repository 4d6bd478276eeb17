"""Small PDFs built byte by byte, as the estimate's tests need them."""

from __future__ import annotations

import base64
import zlib


def document(pages: int, *, object_stream: bool = False) -> bytes:
    """A PDF of ``pages`` text pages, its page objects plain (PDF 1.4) or in a compressed object
    stream (PDF 1.5 and later, as most current writers make them)."""
    content = zlib.compress(b"BT /F1 12 Tf 72 712 Td (Quarterly report) Tj ET")
    kids = " ".join(f"{3 + 2 * i} 0 R" for i in range(pages))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R /PageLabels << /Nums [0 << /S /D >>] >> >>",
        f"<< /Type /Pages /Kids [{kids}] /Count {pages} >>".encode(),
    ]
    page_objects = []
    for i in range(pages):
        page_objects.append(
            f"<</Type/Page/Parent 2 0 R/MediaBox[0 0 612 792]/Contents {4 + 2 * i} 0 R>>".encode()
        )
        stream = b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(content)
        objects += [page_objects[-1], stream + content + b"\nendstream"]
    if object_stream:  # the page objects move into one object stream
        packed = zlib.compress(b"\n".join(page_objects))
        for i in range(pages):
            objects[2 + 2 * i] = b"null"
        head = b"<< /Type /ObjStm /N %d /First 0 /Length %d /Filter /FlateDecode >>\nstream\r\n"
        objects.append(head % (pages, len(packed)) + packed + b"\nendstream")
    out = bytearray(b"%PDF-1.5\n%\xe2\xe3\xcf\xd3\n")
    for number, body in enumerate(objects, 1):
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    return bytes(out + b"trailer\n<< /Root 1 0 R >>\n%%EOF\n")


def base64_of(pdf: bytes) -> str:
    return base64.b64encode(pdf).decode()
