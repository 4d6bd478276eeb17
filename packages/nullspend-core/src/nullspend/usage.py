"""The normalised usage record every provider's wire format maps into."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Protocol


class EventCounts(Protocol):
    """A cost event's token columns, as every event model names them."""

    @property
    def input_tokens(self) -> int: ...
    @property
    def cached_input_tokens(self) -> int: ...
    @property
    def cache_write_5m_tokens(self) -> int: ...
    @property
    def cache_write_1h_tokens(self) -> int: ...
    @property
    def output_tokens(self) -> int: ...
    @property
    def reasoning_tokens(self) -> int: ...
    @property
    def audio_input_tokens(self) -> int: ...
    @property
    def audio_output_tokens(self) -> int: ...
    @property
    def web_search_requests(self) -> int: ...


# Not frozen: frozen init costs ~0.8 us more, and two are built for every priced call.
@dataclass(slots=True)
class Usage:
    """Token counts of one model call, split into components that are priced differently.

    The components are disjoint except ``reasoning_tokens``, which is the part of
    ``output_tokens`` the model spent thinking (priced as output, shown in the breakdown).
    ``input_tokens`` is uncached, non-audio input: what OpenAI and Gemini report as prompt tokens
    minus cached, cache-written and audio tokens; what Anthropic reports as ``input_tokens``.
    """

    input_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_5m_tokens: int = 0
    cache_write_1h_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    audio_input_tokens: int = 0
    audio_output_tokens: int = 0
    web_search_requests: int = 0

    def __post_init__(self) -> None:
        # Checked field by field only when something is off: this runs for every priced call.
        # The bitwise or of integers is negative exactly when one of them is (and costs less
        # than min(), a call).
        if (
            self.input_tokens
            | self.cache_read_tokens
            | self.cache_write_5m_tokens
            | self.cache_write_1h_tokens
            | self.output_tokens
            | self.reasoning_tokens
            | self.audio_input_tokens
            | self.audio_output_tokens
            | self.web_search_requests
        ) < 0:
            negative = {k: v for k, v in self.as_dict().items() if v < 0}
            raise ValueError(f"usage counts cannot be negative: {negative}")
        if self.reasoning_tokens > self.output_tokens:
            raise ValueError(
                f"usage.reasoning_tokens ({self.reasoning_tokens}) is part of output_tokens "
                f"({self.output_tokens}) and cannot exceed it"
            )

    @property
    def prompt_tokens(self) -> int:
        """Every token on the input side: the quantity long-context price tiers are based on."""
        return (
            self.input_tokens
            + self.cache_read_tokens
            + self.cache_write_5m_tokens
            + self.cache_write_1h_tokens
            + self.audio_input_tokens
        )

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.output_tokens + self.audio_output_tokens

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def of_event(cls, event: EventCounts) -> Usage:
        """The usage a cost event records: ``event_columns`` read back."""
        return cls(
            input_tokens=event.input_tokens,
            cache_read_tokens=event.cached_input_tokens,
            cache_write_5m_tokens=event.cache_write_5m_tokens,
            cache_write_1h_tokens=event.cache_write_1h_tokens,
            output_tokens=event.output_tokens,
            reasoning_tokens=event.reasoning_tokens,
            audio_input_tokens=event.audio_input_tokens,
            audio_output_tokens=event.audio_output_tokens,
            web_search_requests=event.web_search_requests,
        )

    def event_columns(self) -> dict[str, int]:
        """The counts as a cost event records them (there, cache reads are
        ``cached_input_tokens``), for every engine that writes events."""
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cached_input_tokens": self.cache_read_tokens,
            "cache_write_5m_tokens": self.cache_write_5m_tokens,
            "cache_write_1h_tokens": self.cache_write_1h_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "audio_input_tokens": self.audio_input_tokens,
            "audio_output_tokens": self.audio_output_tokens,
            "web_search_requests": self.web_search_requests,
        }


def sum_usage(*parts: Usage) -> Usage:
    """The counts of several calls (or parts of one) added up, component by component."""
    return Usage(**{name: sum(getattr(part, name) for part in parts) for name in _COUNTS})


_COUNTS = tuple(Usage.__dataclass_fields__)
