"""Images and files in a request, in every shape the providers' APIs and the frameworks' content
blocks carry them. The provider bills an image by its pixels (tiles or patches, at a rate of
the model's) and a file by its content, not by their bytes in the body: an image given by URL
is a few dozen bytes and bills thousands of tokens; one given inline is megabytes of base64 and
bills the same. The estimate counts each image at the most one can bill (``pricing.estimate``),
its bytes left out of the prompt's text, and a file the body only names at the model's context
window (its content is not in the body; the window bounds what it can bill).

- OpenAI Chat Completions: ``{"type": "image_url"}``; ``{"type": "file", "file": {"file_id"
  | "file_data"}}``.
- OpenAI Responses: ``{"type": "input_image"}``; ``{"type": "input_file", "file_id" |
  "file_url" | "file_data"}``.
- Anthropic Messages: ``{"type": "image"}``; ``{"type": "document", "source": {"type": "url" |
  "file" | "base64" | "text" | "content"}}``.
- Gemini: ``{"inline_data": {"mime_type": "image/..."}}``; ``{"file_data": {...}}`` names one.
- LangChain's content blocks (``{"type": "image" | "file", "url" | "base64" | "data" |
  "file_id" | "source_type"}``) and LlamaIndex's (``{"block_type": "image" | "document"}``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

_IMAGES = frozenset({"image_url", "image", "input_image"})
_FILES = frozenset({"file", "input_file", "document"})
# What any of those shapes spells somewhere in a body: a body with none of these has no media,
# and is not walked (the proxy estimates every request).
_MARKERS = (b'"image', b'"input_image', b'"file', b'"input_file', b'"document', b"_data")
# A file part that carries its content (base64 or text) rather than naming it.
_INLINE = ("file_data", "data", "base64", "text")
_INLINE_SOURCES = frozenset({"base64", "text", "content"})
_GEMINI_NAMED_FILE = "gemini:file_data"


@dataclass(slots=True)
class Media:
    images: int = 0
    named_files: int = 0
    """Files the body names (a URL, a file id) without their content."""
    image_bytes: int = 0
    """What the images take of the body, as compact JSON: not prompt text."""


def may_carry_media(raw_body: bytes) -> bool:
    return any(marker in raw_body for marker in _MARKERS)


def media_of(body: Any) -> Media:
    """The images and named files anywhere in ``body`` (messages, tool results, input items)."""
    media = Media()
    _walk(body, media)
    return media


def _walk(value: Any, media: Media) -> None:
    if isinstance(value, dict):
        kind = value.get("type") or value.get("block_type") or _gemini_kind(value)
        if kind in _IMAGES:
            media.images += 1
            media.image_bytes += len(_compact(value))
            return
        if kind in _FILES:
            if not _carries_content(value):
                media.named_files += 1
            return
        if kind == _GEMINI_NAMED_FILE:
            media.named_files += 1
            return
        for item in value.values():
            _walk(item, media)
    elif isinstance(value, list):
        for item in value:
            _walk(item, media)


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


def _compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str).encode()
