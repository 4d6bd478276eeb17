"""Images, files and earlier spoken answers in a request, in every shape the providers' APIs and
the frameworks' content blocks carry them. The provider bills an image by its pixels (tiles or
patches, at a rate of the model's) and a file by its content, not by their bytes in the body: an
image given by URL is a few dozen bytes and bills thousands of tokens; one given inline is
megabytes of base64 and bills the same. The estimate counts each image at the most one can bill
(``pricing.estimate``), its bytes left out of the prompt's text, an inline PDF by its pages
(``wire.pdf`` counts them), a file the body only names at the model's context window (its
content is not in the body; the window bounds what it can bill), and a spoken answer brought
back by id at the most one answer can hold.

- OpenAI Chat Completions: ``{"type": "image_url"}``; ``{"type": "file", "file": {"file_id"
  | "file_data"}}``.
- OpenAI Responses: ``{"type": "input_image"}``; ``{"type": "input_file", "file_id" |
  "file_url" | "file_data"}``.
- Anthropic Messages: ``{"type": "image"}``; ``{"type": "document", "source": {"type": "url" |
  "file" | "base64" | "text" | "content"}}``.
- Gemini: ``{"inline_data": {"mime_type": "image/..."}}``; ``{"file_data": {...}}`` names one.
- An earlier spoken answer (Chat Completions): an assistant message's ``"audio": {"id": ...}``.
- LangChain's content blocks (``{"type": "image" | "file", "url" | "base64" | "data" |
  "file_id" | "source_type"}``) and LlamaIndex's (``{"block_type": "image" | "document"}``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nullspend.wire.pdf import is_pdf, pdf_pages

_IMAGES = frozenset({"image_url", "image", "input_image"})
_FILES = frozenset({"file", "input_file", "document"})
# A request's fields that hold schemas (whose "type" may be anything), never media: not walked.
_SCHEMAS = frozenset({"tools", "functions", "response_format", "text", "generationConfig"})
# A file part that carries its content (base64 or text) rather than naming it.
_INLINE = ("file_data", "data", "base64", "text")
_INLINE_SOURCES = frozenset({"base64", "text", "content"})
_GEMINI_NAMED_FILE = "gemini:file_data"
_GEMINI_KEYS = frozenset({"inline_data", "inlineData", "file_data", "fileData"})
# Where media sits in a message or block: its content (a tool result's too), a Responses tool
# output's items, a Gemini turn's parts.
_CONTENT = ("content", "output", "parts")


@dataclass(slots=True)
class Media:
    images: int = 0
    original_images: int = 0
    """Of ``images``, those asked for at their original size (OpenAI's ``detail: "original"``)."""
    named_files: int = 0
    """Files the body names (a URL, a file id) without their content, and inline PDFs whose
    pages cannot be counted: each may bill up to the model's context window."""
    image_bytes: int = 0
    """About what the images take of the body (their strings' lengths): not prompt text."""
    pdf_pages: int = 0
    """Pages of the PDFs the body carries inline (base64) whose pages could be counted: each
    page is billed as its text and an image of it, not by its bytes."""
    pdf_bytes: int = 0
    """What those PDFs take of the body (their base64's length)."""
    audio_references: int = 0
    """Earlier spoken answers brought back by id (a Chat Completions assistant message's
    ``"audio": {"id": ...}``): billed as audio input, their content not in the body."""


def media_of(body: Any) -> Media:
    """The images and named files in ``body``'s messages (and the content of their tool
    results, Responses input items and Gemini parts), its schemas (tools, response formats)
    left out. Walked as parsed, and only where content goes: the proxy walks every request, and
    a scan of all of a long conversation would cost more than parsing it."""
    media = Media()
    if isinstance(body, dict):
        for key, value in body.items():
            if key not in _SCHEMAS and isinstance(value, list):
                _walk(value, media)
    elif isinstance(body, list):
        _walk(body, media)
    return media


def _walk(items: list[Any], media: Media) -> None:
    # Exact type checks, not isinstance: parsed JSON holds only these, and the walk is per
    # request.
    for item in items:
        if type(item) is list:
            _walk(item, media)
            continue
        if type(item) is not dict:
            continue
        kind = item.get("type")
        if kind is None:
            kind = item.get("block_type")
            if kind is None and not _GEMINI_KEYS.isdisjoint(item):
                kind = _gemini_kind(item)
        if type(kind) is str:  # not a schema's "type" (a dict, a list)
            if kind in _IMAGES:
                media.images += 1
                media.original_images += _detail(item) == "original"
                media.image_bytes += _size(item)
                continue
            if kind in _FILES:
                if not _carries_content(item):
                    media.named_files += 1
                elif (data := _inline_data(item)) is not None and is_pdf(data):
                    pages = pdf_pages(data)
                    if pages is None:  # bounded as a file it only names is
                        media.named_files += 1
                    else:
                        media.pdf_pages += pages
                        media.pdf_bytes += len(data)
                continue
            if kind == _GEMINI_NAMED_FILE:
                media.named_files += 1
                continue
        if type(audio := item.get("audio")) is dict and audio.get("id"):
            media.audio_references += 1
        for key in _CONTENT:  # a message's, a tool result's, an input item's, a Gemini turn's
            if type(inner := item.get(key)) is list:
                _walk(inner, media)


def _gemini_kind(part: dict[str, Any]) -> str | None:
    """A Gemini part's media: ``inline_data`` carries it, ``file_data`` names it."""
    for key, named in (
        ("inline_data", False),
        ("inlineData", False),
        ("file_data", True),
        ("fileData", True),
    ):
        data = part.get(key)
        if isinstance(data, dict):
            mime = data.get("mime_type") or data.get("mimeType") or ""
            if isinstance(mime, str) and mime.startswith("image/"):
                return "image"
            return _GEMINI_NAMED_FILE if named else None
    return None


def _carries_content(part: dict[str, Any]) -> bool:
    inner = part.get("file")
    if isinstance(inner, dict):  # Chat Completions keeps it one level down
        part = inner
    source = part.get("source")
    if isinstance(source, dict):
        return source.get("type") in _INLINE_SOURCES
    return any(part.get(field) for field in _INLINE) or part.get("source_type") == "base64"


def _inline_data(part: dict[str, Any]) -> str | None:
    """The text a file part carries inline (base64 or plain): an Anthropic source's ``data``,
    OpenAI's ``file_data``, LangChain's ``data`` or ``base64``."""
    inner = part.get("file")
    if isinstance(inner, dict):  # Chat Completions keeps it one level down
        part = inner
    source = part.get("source")
    if isinstance(source, dict):
        part = source
    for field in ("file_data", "data", "base64"):
        if type(value := part.get(field)) is str:
            return value
    return None


def _detail(image: dict[str, Any]) -> object:
    inner = image.get("image_url")  # Chat Completions keeps it one level down
    return inner.get("detail") if isinstance(inner, dict) else image.get("detail")


def _size(value: Any) -> int:
    """About the length of ``value`` as JSON, from its strings alone (a base64 image is one
    long string): re-encoding megabytes of it would cost milliseconds."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(len(key) + _size(item) for key, item in value.items() if isinstance(key, str))
    if isinstance(value, list):
        return sum(_size(item) for item in value)
    return 0
