"""The pages of a PDF carried inline as base64 (an Anthropic ``document``, an OpenAI ``file``
part), counted from the base64 text itself: each ``/Type`` name is found where it reads in
base64 and only a few bytes around it are decoded, as are the object streams (PDF 1.5 and
later) that hold the page objects of most current PDFs. Decoding a 2 MB document whole would
cost several times parsing its request, on the proxy's path."""

from __future__ import annotations

import re
import zlib
from base64 import b64encode
from binascii import Error as Base64Error
from binascii import a2b_base64
from collections.abc import Iterator

_NAME_END = rb"(?![^\s()<>\[\]{}/%])"  # a PDF name ends at whitespace or a delimiter
# An object's type: a page (not /Pages, /PageLabel) or an object stream.
_TYPE = re.compile(rb"/Type\s*/(Page|ObjStm)" + _NAME_END)
_PAGE = re.compile(rb"/Type\s*/Page" + _NAME_END)
_STREAM = re.compile(rb"stream\r?\n")
_TYPE_BYTES = 24  # "/Type", the whitespace a writer puts after it, "/ObjStm" and one byte
_DICTIONARY_BYTES = 1024  # where an object stream's dictionary ends and its data begins
_CHUNK = 1 << 14  # bytes of an object stream decoded at a time
# Object streams hold dictionaries only, which inflate some 5 to 10 times: past this multiple
# of the PDF's own size, inflating is a bomb's work, not a count's.
_INFLATE_LIMIT = 8


def _needles(word: bytes) -> tuple[tuple[str, int, int], ...]:
    """``word`` as it reads in base64 at each of its three byte alignments: the characters it
    alone decides, their offset in their 4-character group, and the alignment."""
    needles = []
    for shift in range(3):
        encoded = b64encode(bytes(shift) + word + bytes(2)).decode()
        first, end = -(-8 * shift // 6), 8 * (shift + len(word)) // 6
        needles.append((encoded[first:end], first, shift))
    return tuple(needles)


_TYPE_NEEDLES = _needles(b"/Type")


class _Base64:
    """A document's bytes, decoded from its base64 text on demand."""

    def __init__(self, text: str) -> None:
        self.start = text.find(",") + 1 if text.startswith("data:") else 0  # a data URL's
        if any(space in text for space in "\n\r\t "):  # wrapped lines: the groups shift
            text, self.start = "".join(text[self.start :].split()), 0
        self.text = text
        self.size = (len(text) - self.start) // 4 * 3

    def read(self, begin: int, end: int) -> bytes:
        group = max(begin, 0) // 3
        data = a2b_base64(self.text[self.start + 4 * group : self.start + 4 * -(-end // 3)])
        return data[max(begin, 0) - 3 * group : end - 3 * group]

    def find(self, needles: tuple[tuple[str, int, int], ...]) -> Iterator[int]:
        """Where the word ``needles`` spell starts, in bytes."""
        for needle, first, shift in needles:
            at = self.text.find(needle, self.start)
            while at >= 0:
                group, offset = divmod(at - self.start - first, 4)
                if offset == 0:
                    yield 3 * group + shift
                at = self.text.find(needle, at + 1)


def is_pdf(text: str) -> bool:
    """Whether ``text`` (base64, or a base64 data URL) holds a PDF: its header is within its
    first 1,024 bytes, where readers look for it."""
    try:
        return b"%PDF-" in _Base64(text[:2048]).read(0, 1024)
    except Base64Error:
        return False


def pdf_pages(text: str) -> int | None:
    """The pages of the PDF ``text`` holds (base64, or a base64 data URL): its page objects,
    those in object streams included (an old revision's too: never fewer than it shows).
    None when it shows none or an object stream cannot be read (encrypted, another filter, cut
    short)."""
    pdf = _Base64(text)
    room = _INFLATE_LIMIT * pdf.size
    pages = 0
    try:
        for at in pdf.find(_TYPE_NEEDLES):
            kind = _TYPE.match(pdf.read(at, at + _TYPE_BYTES))
            if kind is None:
                continue
            if kind[1] == b"Page":
                pages += 1
                continue
            stream = _STREAM.search(pdf.read(at, at + _DICTIONARY_BYTES))
            if stream is None:
                return None
            begin, inflater, objects = at + stream.end(), zlib.decompressobj(), []
            while not inflater.eof:
                chunk = pdf.read(begin, begin + _CHUNK)
                if not chunk or room <= 0:
                    return None
                objects.append(inflater.decompress(chunk, room))
                room -= len(objects[-1])
                begin += _CHUNK
            pages += len(_PAGE.findall(b"".join(objects)))
    except (Base64Error, zlib.error):
        return None
    return pages or None
