"""What every NullSpend client offers on top of reserve and settle, whether it talks to a server
or runs embedded: scoping (customer, session, tags) and the tracked provider SDK clients."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, Self

from nullspend.tracked.metering import Scope

if TYPE_CHECKING:
    import anthropic
    import openai


class _Scoping:
    scope: Scope = Scope()
    _scoped_copy: bool = False
    """Made by ``scoped``: what it shares (connections, a settle queue) is the original's to
    close, so its own ``close()`` only sends what is queued."""

    def scoped(
        self,
        *,
        customer: str | None = None,
        session_id: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> Self:
        """This client (sharing its connections or its engine) with calls attributed to
        ``customer``, ``session_id`` and ``tags``, on top of this one's: its tracked provider
        clients are held to those budgets."""
        twin = copy.copy(self)
        twin.scope = self.scope.narrowed(customer, session_id, tags)
        twin._scoped_copy = True
        return twin

    def customer(self, customer: str) -> Self:
        """``scoped(customer=customer)``."""
        return self.scoped(customer=customer)


class TrackedClients(_Scoping):
    """For the synchronous clients."""

    def openai(self, *, allow_unmetered: bool = False, **kwargs: Any) -> openai.OpenAI:
        """A real ``openai.OpenAI`` whose calls are reserved, priced and settled here; ``kwargs``
        go to its constructor. A denial raises the typed ``DeniedError`` (also an
        ``openai.OpenAIError``) before anything is sent. A request that may spend but cannot
        be priced (a batch, embeddings, images, audio) is refused so
        (``UnmeteredRouteError``), unless ``allow_unmetered``: then it is sent uncounted."""
        from nullspend.tracked.providers import openai_client

        return openai_client(self, allow_unmetered, **kwargs)  # type: ignore[arg-type]

    def anthropic(self, *, allow_unmetered: bool = False, **kwargs: Any) -> anthropic.Anthropic:
        """A real ``anthropic.Anthropic``, tracked as ``openai()`` is (a denial is also an
        ``anthropic.AnthropicError``; a message batch may spend unpriced)."""
        from nullspend.tracked.providers import anthropic_client

        return anthropic_client(self, allow_unmetered, **kwargs)  # type: ignore[arg-type]


class AsyncTrackedClients(_Scoping):
    """For the asyncio clients."""

    def openai(self, *, allow_unmetered: bool = False, **kwargs: Any) -> openai.AsyncOpenAI:
        """A real ``openai.AsyncOpenAI``, tracked (see ``TrackedClients.openai``)."""
        from nullspend.tracked.providers import async_openai_client

        return async_openai_client(self, allow_unmetered, **kwargs)  # type: ignore[arg-type]

    def anthropic(
        self, *, allow_unmetered: bool = False, **kwargs: Any
    ) -> anthropic.AsyncAnthropic:
        """A real ``anthropic.AsyncAnthropic``, tracked (see ``TrackedClients.openai``)."""
        from nullspend.tracked.providers import async_anthropic_client

        return async_anthropic_client(self, allow_unmetered, **kwargs)  # type: ignore[arg-type]
