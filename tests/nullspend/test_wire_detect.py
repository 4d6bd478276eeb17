"""Recognising a saved raw response, JSON body or SSE stream, by its shape."""

from __future__ import annotations

from pathlib import Path

import pytest

from nullspend.wire import (
    ANTHROPIC_MESSAGES,
    FORMATS,
    GEMINI,
    OPENAI_CHAT,
    OPENAI_RESPONSES,
    WireFormat,
    detect_format,
)
from tests.nullspend.wire_testing import FIXTURES, sse


def test_registry_is_keyed_by_name() -> None:
    assert FORMATS == {
        "openai.chat": OPENAI_CHAT,
        "openai.responses": OPENAI_RESPONSES,
        "anthropic.messages": ANTHROPIC_MESSAGES,
        "gemini.generate_content": GEMINI,
    }
    assert {fmt.provider for fmt in FORMATS.values()} == {"openai", "anthropic", "google"}


@pytest.mark.parametrize("path", sorted(FIXTURES.iterdir()), ids=lambda p: p.name)
def test_every_fixture_is_recognised(path: Path) -> None:
    expected = {
        "openai_chat": OPENAI_CHAT,
        "openai_responses": OPENAI_RESPONSES,
        "anthropic": ANTHROPIC_MESSAGES,
        "gemini": GEMINI,
    }
    fmt = next(f for prefix, f in expected.items() if path.name.startswith(prefix))
    assert detect_format(path.read_bytes()) is fmt


@pytest.mark.parametrize(
    ("data", "fmt"),
    [
        (b'  {"object": "chat.completion.chunk", "choices": []}', OPENAI_CHAT),
        (b'\xef\xbb\xbf{"object": "response", "output": []}', OPENAI_RESPONSES),
        (b'{"type": "message", "content": []}', ANTHROPIC_MESSAGES),
        (b'{"candidates": []}', GEMINI),
        (b'{"usageMetadata": {"promptTokenCount": 1}}', GEMINI),
        # Streams whose first events say nothing are recognised by a later event.
        (sse(("ping", {"type": "ping"}), ("message_start", {})), ANTHROPIC_MESSAGES),
        (sse((None, {"type": "response.created"})), OPENAI_RESPONSES),
        (
            sse(
                (None, "[DONE"),
                (None, {"model": "", "object": ""}),
                (None, {"object": "chat.completion.chunk"}),
            ),
            OPENAI_CHAT,
        ),
        (b': keep-alive\r\n\r\ndata: {"candidates": []}\r\n\r\n', GEMINI),
    ],
)
def test_shapes(data: bytes, fmt: WireFormat) -> None:
    assert detect_format(data) is fmt


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"{}",
        b'{"object": "list"}',
        b"[1, 2]",
        b"data: [DONE]\n\n",
        b"event: error\ndata: {}\n\n",
    ],
)
def test_unknown_shapes_raise_a_clear_error(data: bytes) -> None:
    with pytest.raises(ValueError, match="unrecognised response"):
        detect_format(data)


def test_broken_json_body_says_so() -> None:
    with pytest.raises(ValueError, match="not valid JSON"):
        detect_format(b'{"object": "chat.completion", ')
