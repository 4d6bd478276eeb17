"""``nullspend_llamaindex.instrument()`` with the real llama-index-llms-openai and
llama-index-llms-anthropic, against the fake upstream: every call priced from what it
reports, denials raised before any request, for LLM objects and classes made before and after
``instrument()``."""

from __future__ import annotations

import asyncio
import functools
import gc
import http.server
import json
import shutil
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from llama_index.core.base.llms.types import (
    AudioBlock,
    ChatMessage,
    CompletionResponse,
    DocumentBlock,
    ImageBlock,
    TextBlock,
)
from llama_index.core.llms import CustomLLM, LLMMetadata, MockLLM
from llama_index.core.llms.callbacks import llm_completion_callback
from llama_index.core.prompts import ChatPromptTemplate, PromptTemplate
from llama_index.core.tools import FunctionTool
from llama_index.llms.openai import OpenAI, OpenAIResponses
from pydantic import BaseModel, ValidationError

from nullspend.client import NullSpend, renewal
from nullspend.embedded import LocalBudget, LocalNullSpend
from nullspend.errors import CustomerBudgetExceededError, DeniedError
from nullspend.money import PICODOLLARS_PER_MICRODOLLAR
from nullspend.pricing import default_catalog
from nullspend.pricing.estimate import estimate_request_body
from nullspend.wire import OPENAI_CHAT
from nullspend_llamaindex import instrument
from tests.estimates import reserved_estimates
from tests.nullspend.pdf_documents import document
from tests.nullspend_server.conftest import RunningServer, start_server
from tests.sdk.test_client import budget
from tests.sdk.test_tracked_openai import COST, USAGE

ANTHROPIC_USAGE = {"input": 20, "cached": 6000, "output": 87, "reasoning": 0, "cache_write": 1500}
ANTHROPIC_COST = 20 * 3 + 6000 * 0.3 + 1500 * 3.75 + 87 * 15
HELLO = [ChatMessage(role="user", content="Hello")]
ROOT = Path(__file__).resolve().parents[2]


def openai_llm(fake: tuple[str, Any]) -> OpenAI:
    return OpenAI(
        model="gpt-4o-mini",
        api_base=f"{fake[0]}/v1",
        api_key="sk-test",
        max_retries=0,
        default_headers={"x-fake-usage": json.dumps(USAGE)},
    )


def responses_llm(
    fake: tuple[str, Any],
    kind: type[OpenAIResponses] = OpenAIResponses,
    headers: dict[str, str] | None = None,
    **fields: Any,
) -> OpenAIResponses:
    """gpt-4o-mini on the Responses API of the fake provider, at most 100 output tokens."""
    return kind(
        model="gpt-4o-mini",
        api_base=f"{fake[0]}/v1",
        api_key="sk-test",
        max_retries=0,
        max_output_tokens=100,
        default_headers={"x-fake-usage": json.dumps(USAGE), **(headers or {})},
        **fields,
    )


def test_chat_complete_and_streams_are_priced(fake: tuple[str, Any]) -> None:
    made_before = openai_llm(fake)
    ns = LocalNullSpend()
    instrument(client=ns, tags={"team": "rag"})
    assert made_before.chat(HELLO).message.content
    assert made_before.complete("Hello").text
    streamed = list(made_before.stream_chat(HELLO))
    assert streamed

    async def run() -> None:
        await made_before.achat(HELLO)
        chunks = [c async for c in await made_before.astream_chat(HELLO)]
        assert chunks

    asyncio.run(run())
    events = ns.cost_events().data
    assert len(events) == 5  # complete calls chat inside: one call, one event
    assert len(fake[1].state.requests) == 5
    # Streams too: the gate asks an OpenAI stream for its usage.
    assert [e.cost_microdollars for e in events] == [COST] * 5
    assert all(e.tags == {"team": "rag"} and e.provider == "openai" for e in events)
    assert {e.model for e in events} == {"gpt-4o-mini"}


def test_a_stream_asked_for_its_usage_reaches_the_caller_as_it_would_without(
    fake: tuple[str, Any],
) -> None:
    """The usage chunk the gate asked for is not passed on; a caller that asked for usage
    itself gets it, as without NullSpend."""
    ns = LocalNullSpend()
    instrument(client=ns)
    # The same stream with the gate out of the way (the class's own method, unwrapped).
    ungated = getattr(OpenAI.stream_chat, "__wrapped__", OpenAI.stream_chat)
    plain = [(r.delta, r.message.content) for r in ungated(openai_llm(fake), HELLO)]
    assert len(plain) > 1
    assert ns.cost_events().data == []
    llm = openai_llm(fake)
    assert [(r.delta, r.message.content) for r in llm.stream_chat(HELLO)] == plain
    completed = [r.text for r in llm.stream_complete("Hello")]
    assert completed
    assert completed[-1] == plain[-1][1]

    async def streamed() -> list[Any]:
        return [(r.delta, r.message.content) async for r in await llm.astream_chat(HELLO)]

    assert asyncio.run(streamed()) == plain
    asked = openai_llm(fake)
    asked.additional_kwargs = {"stream_options": {"include_usage": True}}
    responses = list(asked.stream_chat(HELLO))
    assert len(responses) == len(plain) + 1
    assert responses[-1].raw.usage is not None
    assert [e.cost_microdollars for e in ns.cost_events().data] == [COST] * 4


def test_denied_before_any_request(fake: tuple[str, Any]) -> None:
    ns = LocalNullSpend([LocalBudget.customer("acme", 10)])
    instrument(client=ns, customer="acme")
    llm = openai_llm(fake)
    with pytest.raises(CustomerBudgetExceededError):
        llm.chat(HELLO)
    with pytest.raises(DeniedError):
        asyncio.run(llm.achat(HELLO))
    with pytest.raises(DeniedError):
        list(llm.stream_chat(HELLO))
    assert fake[1].state.requests == []


def test_llm_classes_defined_after_instrument_are_gated(fake: tuple[str, Any]) -> None:
    instrument(client=LocalNullSpend([LocalBudget.total(0)]))

    class Mine(OpenAI):  # defined after instrument()
        def chat(self, messages: Any, **kwargs: Any) -> Any:
            return super().chat(messages, **kwargs)

    with pytest.raises(DeniedError):
        Mine(model="gpt-4o-mini", api_base=f"{fake[0]}/v1", api_key="sk").chat(HELLO)
    assert fake[1].state.requests == []


ANTHROPIC_SCRIPT = """
import asyncio, gc, json, sys
from typing import Any
sys.path.insert(0, sys.argv[3])  # the repository: tests.estimates
from pydantic import BaseModel
from llama_index.core.llms import CustomLLM, LLMMetadata
from llama_index.core.llms.callbacks import llm_completion_callback
from llama_index.core.base.llms.types import CachePoint, CacheControl, ChatMessage, DocumentBlock
from llama_index.core.base.llms.types import ChatResponse, TextBlock
import anthropic
from llama_index.core.prompts import PromptTemplate
from llama_index.llms.anthropic import Anthropic
from nullspend.embedded import LocalBudget, LocalNullSpend
from nullspend.errors import DeniedError
from nullspend_llamaindex import instrument
from tests.estimates import reserved_estimates

base, usage = sys.argv[1], json.loads(sys.argv[2])
def hello():  # new each time: cache_idx marks the messages it is given
    return [ChatMessage(role="user", content="Hello")]


class HouseClaude(Anthropic):  # a user's own subclass
    pass


class StreamingClaude(Anthropic):  # a user's chat reading a stream as the SDK allows
    def chat(self, messages, **kwargs):
        request = {"role": "user", "content": "Hi"}
        with self._client.messages.create(
            model=self.model, max_tokens=50, messages=[request], stream=True
        ) as events:
            assert isinstance(events, anthropic.Stream) and next(events).type == "message_start"
            text = "".join(e.delta.text for e in events if e.type == "content_block_delta")
        return ChatResponse(message=ChatMessage(role="assistant", content=text))


class Car(BaseModel):
    make: str
    model: str


class Router(CustomLLM):  # a user's LLM that hands each call to a provider's
    primary: Any = None

    @property
    def metadata(self):
        return LLMMetadata(model_name="router")

    @llm_completion_callback()
    def complete(self, prompt, formatted=False, **kwargs):
        return self.primary.complete(prompt, **kwargs)

    @llm_completion_callback()
    def stream_complete(self, prompt, formatted=False, **kwargs):
        yield from self.primary.stream_complete(prompt, **kwargs)


def claude(cls=Anthropic, fake_usage=None, **headers):
    headers = {"x-fake-usage": json.dumps(fake_usage or usage), **headers}
    return cls(model="claude-sonnet-4-5-20250929", base_url=base, api_key="sk-ant-test",
               max_retries=0, max_tokens=200, default_headers=headers)


def run(what, budgets=()):
    # Each scenario on an engine of its own: what it recorded, reserved, and was refused.
    ns = LocalNullSpend(list(budgets))
    instrument(client=ns)
    reserved = reserved_estimates(ns)
    try:
        what()
        denied = False
    except DeniedError:
        denied = True
    gc.collect()
    events = [e.model_dump(mode="json") for e in ns.cost_events().data]
    return {"events": events, "reserved": reserved, "denied": denied}


async def astream(llm):
    return [r async for r in await llm.astream_chat(hello())]


car = PromptTemplate("Which car is this: {text}")
toyota = {"x-fake-answer": '{"make": "Toyota", "model": "Corolla"}'}
out = {
    "chat": run(lambda: claude().chat(hello())),
    "stream_1h": run(lambda: list(claude(**{"x-fake-usage": json.dumps(
        {**usage, "cache_write_1h": usage["cache_write"]})}).stream_chat(hello()))),
    "astream_output_only_delta": run(
        lambda: asyncio.run(astream(claude(**{"x-fake-fault": "output-only-delta"})))),
    "dropped_unread": run(lambda: claude().stream_chat(hello())),
    "subclass": run(lambda: claude(HouseClaude).chat(hello())),
    "structured": run(lambda: claude(**toyota).structured_predict(Car, car, text="red")),
    "structured_llm": run(lambda: claude(**toyota).as_structured_llm(Car).chat(hello())),
    "stream_structured_dropped": run(
        lambda: claude(**toyota).stream_structured_predict(Car, car, text="red")),
    "subclass_stream": run(lambda: claude(StreamingClaude).chat(hello())),
    "stream_structured_denied": run(
        lambda: list(claude().stream_structured_predict(Car, car, text="red")),
        [LocalBudget.total(1)]),
}
llm = claude()
llm.tools = [{"type": "web_search_20250305", "name": "web_search", "max_uses": 3}]
out["constructor_tools"] = run(lambda: llm.chat(hello()))
llm = claude()
llm.tools = [{"type": "advisor_20260301", "name": "advisor", "model": "claude-opus-4-8",
              "max_uses": 2, "max_tokens": 1000}]
out["advisor"] = run(lambda: llm.chat(hello()))
llm = claude()
llm.cache_idx = -1
out["cache_idx"] = run(lambda: llm.chat(hello()))
out["plain"] = run(lambda: claude().chat(hello()))
with open(sys.argv[4], "wb") as pdf:
    pdf.write(b"%PDF-1.4 " + b"x" * 300_000)
blocks = [TextBlock(text="Summarise"), DocumentBlock(path=sys.argv[4])]
by_path = [ChatMessage(role="user", blocks=blocks)]
out["document_by_path"] = run(lambda: claude().chat(by_path))
out["max_tokens_per_call"] = run(lambda: claude().chat(hello(), max_tokens=4096))
bigger = claude()
bigger.additional_kwargs = {"max_tokens": 4096}
out["max_tokens_additional"] = run(lambda: bigger.chat(hello()))
out["router"] = run(lambda: Router(primary=claude()).complete("Hello"))
print(json.dumps(out))
"""


@pytest.fixture(scope="session")
def anthropic_below_1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Python environment with ``anthropic<1``: llama-index-llms-anthropic breaks on the
    anthropic 2.x the rest of the workspace uses (``Cannot instantiate typing.Union``)."""
    venv = tmp_path_factory.mktemp("anthropic-below-1") / "venv"
    # uv as CI installs it: a command, or a module of the system's Python
    uv = [found] if (found := shutil.which("uv")) else ["python3", "-m", "uv"]
    subprocess.run([*uv, "venv", "-q", "--python", sys.executable, str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [
            *uv,
            "pip",
            "install",
            "-q",
            "--python",
            str(python),
            "anthropic<1",
            "llama-index-llms-anthropic",
            "-e",
            str(ROOT / "packages/nullspend-core"),
            "-e",
            str(ROOT / "packages/nullspend-llamaindex"),
        ],
        check=True,
    )
    return python


def test_anthropic(fake: tuple[str, Any], anthropic_below_1: Path, tmp_path: Path) -> None:
    """llama-index-llms-anthropic on every path that reaches the provider, each priced as the
    provider bills it and held to the cap. Its streams' input side is only in the events no
    LlamaIndex step carries, its structured output comes from ``beta.messages.parse`` (no end
    event), and its streams' requests go out before their first step: all heard from its
    client."""
    done = subprocess.run(
        [
            str(anthropic_below_1),
            "-c",
            ANTHROPIC_SCRIPT,
            fake[0],
            json.dumps(ANTHROPIC_USAGE),
            str(ROOT),
            str(tmp_path / "report.pdf"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "PydanticSerializationUnexpectedValue" not in done.stderr  # nothing on the user's
    out = json.loads(done.stdout)
    catalog = default_catalog()
    claude = catalog.resolve("claude-sonnet-4-5")
    assert claude is not None
    prices = claude.prices

    def cost_of(out_key: str) -> list[int]:
        return [e["cost_microdollars"] for e in out[out_key]["events"]]

    (event,) = out["chat"]["events"]
    assert (event["provider"], event["cost_microdollars"]) == ("anthropic", ANTHROPIC_COST)
    assert (event["cached_input_tokens"], event["cache_write_5m_tokens"]) == (6000, 1500)
    assert cost_of("subclass") == [ANTHROPIC_COST]  # was $0, read as an OpenAI answer
    # A stream's 1-hour cache writes are split in message_start only (was priced as 5 min).
    written_1h = (
        1500 * (prices.cache_write_1h - prices.cache_write_5m) // PICODOLLARS_PER_MICRODOLLAR
    )
    assert cost_of("stream_1h") == [ANTHROPIC_COST + written_1h]
    # The older API's last delta counts output only: its cache counts are in message_start.
    assert cost_of("astream_output_only_delta") == [ANTHROPIC_COST]
    # A stream dropped unread was sent all the same (was released: $0).
    assert cost_of("dropped_unread") == out["dropped_unread"]["reserved"]
    # Structured output, answered by beta.messages.parse (was charged its estimate, 0 tokens).
    (structured,) = out["structured"]["events"]
    assert structured["cost_microdollars"] == ANTHROPIC_COST
    asked = 8192 * prices.output // PICODOLLARS_PER_MICRODOLLAR  # the output parse asks for
    assert out["structured"]["reserved"][0] >= asked
    assert out["structured_llm"]["reserved"][0] >= asked  # was the LLM's max_tokens: 200
    (wrapped,) = out["structured_llm"]["events"]
    assert (wrapped["model"], wrapped["cost_microdollars"]) == (
        "claude-sonnet-4-5-20250929",  # was the parsed answer's own "model" field: "Corolla"
        ANTHROPIC_COST,
    )
    assert out["stream_structured_denied"]["denied"]  # was not gated at all
    assert cost_of("stream_structured_dropped") == [ANTHROPIC_COST]  # parsed, then dropped
    # Its stream heard through the SDK's own object: still a context manager and an iterator.
    assert cost_of("subclass_stream") == [ANTHROPIC_COST]
    # Tools given to the constructor are sent with every call: their searches are reserved.
    (with_search,), (plain,) = out["constructor_tools"]["reserved"], out["plain"]["reserved"]
    assert with_search - plain >= 3 * prices.web_search // PICODOLLARS_PER_MICRODOLLAR
    # An advisor tool's calls (two, to 1,000 tokens each on Opus at $25) are reserved.
    (with_advisor,) = out["advisor"]["reserved"]
    assert with_advisor - plain >= 2 * 1000 * 25
    # cache_idx writes the prompt to the cache: estimated at the write rate.
    (cached,) = out["cache_idx"]["reserved"]
    assert cached > plain
    # A document named by path goes out inline, base64: 300 KB is some 130,000 tokens.
    (by_path,) = out["document_by_path"]["reserved"]
    assert by_path - plain >= 130_000 * prices.input // PICODOLLARS_PER_MICRODOLLAR
    # The max_tokens a call or additional_kwargs sends is what it may bill (was the LLM's 200:
    # a 20,000 µ$ cap let three such calls spend 60,060).
    for sent_more in ("max_tokens_per_call", "max_tokens_additional"):
        (reserved,) = out[sent_more]["reserved"]
        assert reserved - plain >= (4096 - 200) * prices.output // PICODOLLARS_PER_MICRODOLLAR
    # A user's router LLM around Anthropic's: its answer read as Anthropic's (was $0, "openai").
    (routed,) = out["router"]["events"]
    assert (routed["provider"], routed["cost_microdollars"]) == ("anthropic", ANTHROPIC_COST)
    assert len(fake[1].state.requests) == 17  # the denied one never went out


def test_server_mode(server: RunningServer, fake: tuple[str, Any]) -> None:
    with NullSpend(server.admin_key, server.base_url) as ns:
        instrument(client=ns, session_id="s-3")
        openai_llm(fake).chat(HELLO)
        (event,) = ns.cost_events().data
        assert (event.cost_microdollars, event.session_id) == (COST, "s-3")
        assert event.reservation_id is not None


def test_a_stream_that_outlasts_its_reservation_is_charged_its_usage(
    database_url: str, fake: tuple[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stream longer than the server's reservation TTL was charged its estimate when its
    reservation expired, and its settle refused: the gate now renews the reservation while
    steps come, sync and async."""
    monkeypatch.setattr(renewal, "RENEW_SECONDS", 0.3)
    server = start_server(database_url, reservation_ttl_seconds=1, heartbeat_seconds=0.2)
    try:
        with NullSpend(server.admin_key, server.base_url) as ns:
            instrument(client=ns)
            llm = openai_llm(fake)
            llm.default_headers = {**(llm.default_headers or {}), "x-fake-fault": "slow:300"}
            started = time.monotonic()
            assert list(llm.stream_chat(HELLO))

            async def astream() -> None:
                assert [c async for c in await llm.astream_chat(HELLO)]

            asyncio.run(astream())
            assert time.monotonic() - started > 4  # each twice the TTL
            events = ns.cost_events().data
            assert [(e.cost_microdollars, e.tags) for e in events] == [(COST, {})] * 2
    finally:
        server.stop()


def test_an_image_reserves_the_most_it_can_bill_not_its_blocks_bytes(
    fake: tuple[str, Any],
) -> None:
    """An image given by URL was estimated at the few bytes its block prints as, where OpenAI
    bills gpt-4o-mini up to 48,169 tokens for one: it now reserves that bound."""
    ns = LocalNullSpend()
    instrument(client=ns)
    reserved = reserved_estimates(ns)
    llm = openai_llm(fake)
    image = ChatMessage(
        role="user", blocks=[TextBlock(text="What is this?"), ImageBlock(url="https://e.com/a.png")]
    )
    llm.chat([image])
    llm.chat(HELLO)
    per_image = default_catalog().resolve("gpt-4o-mini").entry.image_input_tokens
    assert per_image is not None
    assert reserved[0] - reserved[1] >= per_image * 15 // 100  # $0.15 per million input tokens


def test_an_image_in_a_tuple_or_a_structured_prompt_is_reserved(fake: tuple[str, Any]) -> None:
    """Blocks were read only from a list of messages: an image in messages given as a tuple,
    or in the chat template ``structured_predict`` fills in (a receipt to read), reserved 74
    and 83 µ$ where the proxy reserves 7,295 and 7,307 for the requests sent."""
    ns = LocalNullSpend()
    instrument(client=ns)
    reserved = reserved_estimates(ns)
    llm = openai_llm(fake)
    llm.max_tokens = 100
    receipt = [
        ChatMessage(
            role="user",
            blocks=[TextBlock(text="Read this receipt"), ImageBlock(url="https://e.com/r.png")],
        )
    ]
    llm.chat(HELLO)
    llm.chat(tuple(receipt))
    with pytest.raises(ValidationError):  # the fake answers text, no Verdict: charged all the same
        llm.structured_predict(Verdict, ChatPromptTemplate(message_templates=receipt))
    per_image = default_catalog().resolve("gpt-4o-mini").entry.image_input_tokens
    assert per_image is not None
    # $0.15 per million input tokens
    assert min(reserved[1:]) - reserved[0] >= per_image * 15 // 100
    assert len(ns.cost_events().data) == 3


def test_a_pdf_reserves_what_its_pages_bill_not_its_bytes(
    fake: tuple[str, Any], tmp_path: Path
) -> None:
    """A 100-page PDF of 21 kB (inline or by path) was estimated by its bytes, 1,519 µ$, where
    the provider bills each page as its text and an image of it and the proxy reserves 19,260
    µ$ for the request the LLM sent: it now reserves what the proxy does. So is one whose name
    does not end in ``.pdf`` (``report.PDF``, ``contract``), which LlamaIndex sends all the
    same (Anthropic's LLMs send any document as a PDF): those were still estimated by their
    bytes, 1,520 µ$."""
    ns = LocalNullSpend()
    instrument(client=ns)
    reserved = reserved_estimates(ns)
    pdf = document(100)
    names = ("report.pdf", "report.PDF", "contract")
    for name in names:
        (tmp_path / name).write_bytes(pdf)
    llm = openai_llm(fake)
    llm.max_tokens = 100
    by_path = [DocumentBlock(path=tmp_path / name) for name in names]
    for block in (DocumentBlock(data=pdf), *by_path):
        llm.chat([ChatMessage(role="user", blocks=[TextBlock(text="Summarize"), block])])
    sent = [estimate_request_body(r["json"], OPENAI_CHAT) for r in fake[1].state.requests]
    assert reserved == [estimate.microdollars for estimate in sent]


def test_audio_named_by_url_reserves_what_its_request_carries(
    fake: tuple[str, Any], tmp_path: Path
) -> None:
    """An ``AudioBlock(url=...)`` is fetched by llama-index-llms-openai and sent inline: five
    minutes of speech (12.8 MB sent) were reserved 73 µ$, the few bytes of its URL, where the
    proxy reserves 19,260 µ$ for the request the LLM sent. It is now bounded as a file the
    request names, by the model's window, as its path is."""
    (tmp_path / "talk.wav").write_bytes(_wav(seconds=300))
    files = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0),
        functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path)),
    )
    threading.Thread(target=files.serve_forever, daemon=True).start()
    try:
        ns = LocalNullSpend()
        instrument(client=ns)
        reserved = reserved_estimates(ns)
        llm = openai_llm(fake)
        llm.model, llm.max_tokens = "gpt-4o-mini-audio-preview", 100
        url = f"http://127.0.0.1:{files.server_port}/talk.wav"
        for block in (AudioBlock(url=url, format="wav"), AudioBlock(path=tmp_path / "talk.wav")):
            llm.chat([ChatMessage(role="user", blocks=[TextBlock(text="Transcribe"), block])])
    finally:
        files.shutdown()
    sent = [estimate_request_body(r["json"], OPENAI_CHAT) for r in fake[1].state.requests]
    assert reserved == [estimate.microdollars for estimate in sent]


def _wav(seconds: int) -> bytes:
    """Silence, 16 kHz 16-bit mono."""
    data = bytes(32_000 * seconds)
    header = struct.pack("<IHHIIHH", 16, 1, 1, 16_000, 32_000, 2, 16)
    return (
        b"RIFF"
        + struct.pack("<I", 36 + len(data))
        + b"WAVEfmt "
        + header
        + b"data"
        + (struct.pack("<I", len(data)) + data)
    )


def test_openai_responses_instructions_are_reserved(fake: tuple[str, Any]) -> None:
    """``OpenAIResponses`` sends its ``instructions`` with every request, billed as input: the
    gate left them out, and reserved 880 µ$ for a call with a long system prompt billed
    17,256, which a 10,000 µ$ cap let through."""
    ns = LocalNullSpend()
    instrument(client=ns)
    reserved = reserved_estimates(ns)
    responses_llm(fake).chat(HELLO)
    responses_llm(fake, instructions="Answer as a pirate. " * 1_500).chat(HELLO)
    per_token = default_catalog().resolve("gpt-4o-mini").prices.input
    added = (reserved[1] - reserved[0]) * PICODOLLARS_PER_MICRODOLLAR // per_token
    assert added >= len("Answer as a pirate. " * 1_500) // 3 - 1


def test_what_the_request_is_sent_is_what_it_reserves_for(fake: tuple[str, Any]) -> None:
    """The estimate read the LLM object's max_tokens, not the request's: an
    ``additional_kwargs`` max_tokens (which llama-index-llms-openai sends in its place) or
    ``n`` completions (each billed) were reserved as one short completion."""
    ns = LocalNullSpend()
    instrument(client=ns)
    reserved = reserved_estimates(ns)
    openai_llm(fake).chat(HELLO)
    more = openai_llm(fake)
    more.max_tokens, more.additional_kwargs = 100, {"max_tokens": 4096}
    more.chat(HELLO)
    openai_llm(fake).chat(HELLO, n=4, max_tokens=100)
    output = default_catalog().resolve("gpt-4o-mini").prices.output  # type: ignore[union-attr]
    assert reserved[1] >= 4096 * output // PICODOLLARS_PER_MICRODOLLAR
    assert reserved[2] >= 4 * 100 * output // PICODOLLARS_PER_MICRODOLLAR


def test_an_llm_that_calls_no_provider_costs_nothing(fake: tuple[str, Any]) -> None:
    """MockLLM (what ``Settings.llm = None`` makes) was gated as an unknown model: each call
    reserved $1 and, no provider answer coming, was charged it; a $5 cap then refused the sixth
    query of a program that spends nothing."""
    ns = LocalNullSpend([LocalBudget.total(5_000_000)])
    instrument(client=ns)
    for _ in range(8):
        assert MockLLM().complete("Hello").text
    assert ns.cost_events().data == []
    assert ns.budget_status()[0].spend_microdollars == 0


class Router(CustomLLM):
    """A user's LLM that hands each call to a provider's."""

    primary: Any = None

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(model_name="router")

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> Any:
        return self.primary.complete(prompt, **kwargs)

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> Any:
        yield from self.primary.stream_complete(prompt, **kwargs)


def test_a_users_router_llm_is_priced_at_the_model_it_calls(fake: tuple[str, Any]) -> None:
    """A user's LLM handing each call to a provider's (a router, a fallback): each call is
    priced at the provider's model it reached. (Around Anthropic's, such calls were read in
    OpenAI's fields, $0 each: in ``test_anthropic``.)"""
    ns = LocalNullSpend()
    instrument(client=ns)
    assert Router(primary=openai_llm(fake)).complete("Hello").text
    (event,) = ns.cost_events().data
    assert (event.model, event.cost_microdollars) == ("gpt-4o-mini", COST)


def test_a_users_router_llm_is_held_to_the_cap_at_the_model_it_calls(
    fake: tuple[str, Any], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A router naming no model the catalog knows reserved the unpriced placeholder, $1, and
    its call to o1 (estimated at $6, denied by a $1.50 cap when made directly) went through,
    to spend $1.80. The provider's call is now reserved on its own, the placeholder given
    back: denied as the direct call is, and within a larger cap reserved as it is."""
    o1 = openai_llm(fake)
    o1.model = "o1"
    o1.default_headers = {"x-fake-usage": json.dumps({"input": 100, "output": 30_000})}
    instrument(client=LocalNullSpend([LocalBudget.total(1_500_000)]))
    with pytest.raises(DeniedError):
        o1.complete("Hello")
    with pytest.raises(DeniedError):
        Router(primary=o1).complete("Hello")
    with pytest.raises(DeniedError):
        list(Router(primary=o1).stream_complete("Hello"))
    assert fake[1].state.requests == []
    ns = LocalNullSpend([LocalBudget.total(100_000_000)])
    instrument(client=ns)
    reserved = reserved_estimates(ns)
    o1.complete("Hello")
    Router(primary=o1).complete("Hello")
    assert reserved[-1] == reserved[0]
    events = ns.cost_events().data
    assert [e.model for e in events] == ["o1", "o1"]
    (status,) = ns.budget_status()
    assert (status.reserved_microdollars, status.spend_microdollars) == (
        0,
        2 * events[0].cost_microdollars,
    )
    # A long stream through it renews the provider call's reservation, not the one given back.
    monkeypatch.setattr(renewal, "RENEW_SECONDS", 0.0)
    assert list(Router(primary=openai_llm(fake)).stream_complete("Hello"))
    assert "already released" not in caplog.text


def test_a_users_llm_calling_several_at_once_is_charged_each_call(
    fake: tuple[str, Any],
) -> None:
    """A user's LLM sampling its model three times at once (``asyncio.gather``): all three
    calls were taken as covered by its one reservation and only the first answer recorded, 157
    µ$ for three requests billed 471. Each call after the first is now reserved and recorded
    on its own, as they are when made one after another."""
    ns = LocalNullSpend()
    instrument(client=ns)

    class Ensemble(CustomLLM):
        members: Any = None

        @property
        def metadata(self) -> LLMMetadata:
            return LLMMetadata(model_name="gpt-4o-mini")

        @llm_completion_callback()
        def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> Any:
            answers = [m.complete(prompt) for m in self.members]
            return CompletionResponse(text=" | ".join(a.text for a in answers))

        @llm_completion_callback()
        async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> Any:
            answers = await asyncio.gather(*(m.acomplete(prompt) for m in self.members))
            return CompletionResponse(text=" | ".join(a.text for a in answers))

        def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> Any:
            raise NotImplementedError

    ensemble = Ensemble(members=[openai_llm(fake) for _ in range(3)])
    ensemble.complete("Hello")
    asyncio.run(ensemble.acomplete("Hello"))
    assert len(fake[1].state.requests) == 6
    events = ns.cost_events().data
    assert [(e.model, e.cost_microdollars) for e in events] == [("gpt-4o-mini", COST)] * 6


def test_a_call_that_failed_after_it_was_sent_is_charged_its_estimate(
    fake: tuple[str, Any],
) -> None:
    """A stream broken before its first chunk, or a call cancelled while it waits, had been
    taken by the provider, which bills it: they were released ($0), where Anthropic's were
    charged. Now charged their estimates, as the proxy charges a call its client left."""
    ns = LocalNullSpend()
    instrument(client=ns)
    reserved = reserved_estimates(ns)
    broken = openai_llm(fake)
    broken.default_headers = {**(broken.default_headers or {}), "x-fake-fault": "drop-after:0"}
    with pytest.raises(httpx.RemoteProtocolError):
        list(broken.stream_chat(HELLO))
    hanging = openai_llm(fake)
    hanging.default_headers = {**(hanging.default_headers or {}), "x-fake-fault": "hang"}

    async def give_up() -> None:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                await hanging.achat(HELLO)

    asyncio.run(give_up())
    assert sorted(e.cost_microdollars for e in ns.cost_events().data) == sorted(reserved)


def first_attempt_hangs(llm: OpenAI) -> None:
    """``llm``'s first attempt at each call hangs (the provider took it and never answers),
    its retry is answered; one second's timeout, one retry."""

    def first_hangs(request: httpx.Request) -> None:
        if request.headers.get("x-stainless-retry-count") == "0":
            request.headers["x-fake-fault"] = "hang"

    async def first_hangs_async(request: httpx.Request) -> None:
        first_hangs(request)

    llm.max_retries, llm.timeout, llm.max_tokens = 1, 1.0, 100
    llm._http_client = httpx.Client(event_hooks={"request": [first_hangs]})
    llm._async_http_client = httpx.AsyncClient(event_hooks={"request": [first_hangs_async]})


def test_each_attempt_the_provider_took_and_the_client_retried_is_charged(
    fake: tuple[str, Any],
) -> None:
    """An attempt the openai SDK timed out on after sending it was taken by the provider,
    which bills it, and was retried (``max_retries``): a chat whose first attempt timed out
    and whose retry answered made two requests and was charged the answer alone, 157 µ$, and
    one that timed out twice its estimate once. Each attempt left is now charged its
    estimate, as the proxy charges a call its client left, and each attempt is reserved on its
    own (as the tracked clients meter each attempt)."""
    ns = LocalNullSpend()
    instrument(client=ns)
    reserved = reserved_estimates(ns)
    llm = openai_llm(fake)
    first_attempt_hangs(llm)
    assert llm.chat(HELLO).message.content
    assert list(llm.stream_chat(HELLO))

    async def answered() -> None:
        assert (await llm.achat(HELLO)).message.content

    asyncio.run(answered())
    never = openai_llm(fake)
    never.max_retries, never.timeout, never.max_tokens = 1, 1.0, 100
    never.default_headers = {**(never.default_headers or {}), "x-fake-fault": "hang"}
    with pytest.raises(openai.APITimeoutError):
        never.chat(HELLO)
    assert len(fake[1].state.requests) == 8
    estimate = reserved[0]
    assert reserved == [estimate] * 8
    costs = [e.cost_microdollars for e in ns.cost_events().data]
    assert sorted(costs) == sorted([estimate, COST] * 3 + [estimate] * 2)


@pytest.mark.parametrize("method", ["chat", "stream_chat", "achat", "astream_chat"])
def test_a_retry_after_an_attempt_the_provider_took_is_held_to_the_cap(
    fake: tuple[str, Any], method: str
) -> None:
    """The gate reserved one estimate per call, but charged each attempt the SDK timed out on
    and retried: under a cap that allows one estimate, a chat whose first attempt timed out
    was retried and spent its estimate and the answer's 157 µ$ past it. Each further attempt
    is now reserved on its own: the retry is refused before it is sent, the timed-out attempt
    charged its estimate, and nothing is left reserved."""
    sizing = LocalNullSpend()
    instrument(client=sizing)
    reserved = reserved_estimates(sizing)
    openai_llm(fake).chat(HELLO, max_tokens=100)
    (estimate,) = reserved
    ns = LocalNullSpend([LocalBudget.total(estimate)])
    instrument(client=ns)
    llm = openai_llm(fake)
    first_attempt_hangs(llm)

    async def call_async() -> None:
        if method == "achat":
            await llm.achat(HELLO)
        else:
            [chunk async for chunk in await llm.astream_chat(HELLO)]

    def call() -> None:
        if method == "chat":
            llm.chat(HELLO)
        elif method == "stream_chat":
            list(llm.stream_chat(HELLO))
        else:
            asyncio.run(call_async())

    fake[1].state.requests.clear()
    with pytest.raises(DeniedError):
        call()
    assert len(fake[1].state.requests) == 1  # the retry was not sent
    (status,) = ns.budget_status()
    assert (status.spend_microdollars, status.reserved_microdollars) == (estimate, 0)
    assert [e.cost_microdollars for e in ns.cost_events().data] == [estimate]


def test_a_retry_after_an_attempt_left_is_held_to_a_servers_cap(
    server: RunningServer, fake: tuple[str, Any]
) -> None:
    """With a server, an async call's further attempt is reserved off the event loop, and its
    denial reaches the caller as the typed error, through the SDK's retry loop."""
    sizing = LocalNullSpend()
    instrument(client=sizing)
    reserved = reserved_estimates(sizing)
    openai_llm(fake).chat(HELLO, max_tokens=100)
    (estimate,) = reserved
    with NullSpend(server.admin_key, server.base_url) as ns:
        key_id = ns.introspect().key_id
        budget(server, entityType="api_key", entityId=key_id, limitMicrodollars=estimate)
        instrument(client=ns)
        llm = openai_llm(fake)
        first_attempt_hangs(llm)
        fake[1].state.requests.clear()
        with pytest.raises(DeniedError):
            asyncio.run(llm.achat(HELLO))
        assert len(fake[1].state.requests) == 1
        (status,) = ns.budget_status()
        assert (status.spend_microdollars, status.reserved_microdollars) == (estimate, 0)


def test_a_refused_call_and_one_never_sent_are_released(fake: tuple[str, Any]) -> None:
    """The provider's refusal (400, 429) bills nothing, nor does a call its SDK refuses before
    sending, even inside ``except APITimeoutError`` (a retry): the first version of the charge
    for calls taken by the provider read the errors those were raised while handling (the SDK
    raises its status errors ``from None``) and charged them."""
    ns = LocalNullSpend()
    instrument(client=ns)
    for status in (400, 429):
        refused = openai_llm(fake)
        refused.default_headers = {
            **(refused.default_headers or {}),
            "x-fake-fault": f"status:{status}",
        }
        with pytest.raises(openai.APIStatusError):
            refused.chat(HELLO)
    assert ns.cost_events().data == []
    hanging = openai_llm(fake)
    hanging.default_headers = {**(hanging.default_headers or {}), "x-fake-fault": "hang"}
    hanging.timeout = 0.5
    try:
        hanging.chat(HELLO)
    except openai.APITimeoutError:
        with pytest.raises(TypeError):
            openai_llm(fake).chat(HELLO, not_an_argument=1)
    assert len(ns.cost_events().data) == 1  # the timed-out call only


@pytest.mark.parametrize("configured_by", ["arguments", "environment"])
def test_server_mode_configured_by_arguments_or_the_environment(
    server: RunningServer,
    fake: tuple[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    configured_by: str,
) -> None:
    if configured_by == "environment":
        monkeypatch.setenv("NULLSPEND_API_KEY", server.admin_key)
        monkeypatch.setenv("NULLSPEND_BASE_URL", server.base_url)
        active = instrument(customer="acme")
    else:
        active = instrument(server.admin_key, server.base_url, customer="acme")
    assert isinstance(active.client, NullSpend)
    llm = openai_llm(fake)
    assert llm.complete("Hello").text
    assert asyncio.run(llm.acomplete("Hello")).text
    with active.client as ns:
        events = ns.cost_events(customer="acme").data
    assert [e.cost_microdollars for e in events] == [COST, COST]


def test_embedded_mode_with_the_budgets_declared_in_code(
    fake: tuple[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NULLSPEND_API_KEY", raising=False)
    monkeypatch.delenv("NULLSPEND_BASE_URL", raising=False)
    active = instrument(budgets=(LocalBudget.total(1),))
    assert isinstance(active.client, LocalNullSpend)
    with pytest.raises(DeniedError):
        openai_llm(fake).complete("Hello")
    assert fake[1].state.requests == []


def test_embedded_spend_in_a_file_outlives_the_instrumentation(
    fake: tuple[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``path=``, as the LangChain handler and ``connect`` take it: instrument() had none, so
    its embedded spend was in memory only, a cap that started over with every process."""
    monkeypatch.delenv("NULLSPEND_API_KEY", raising=False)
    monkeypatch.delenv("NULLSPEND_BASE_URL", raising=False)
    spend = tmp_path / "spend.db"
    active = instrument(budgets=(LocalBudget.total(10**6),), path=spend)
    openai_llm(fake).complete("Hello")
    assert isinstance(active.client, LocalNullSpend)
    (event,) = active.client.cost_events().data
    active.client.close()
    with LocalNullSpend([LocalBudget.total(10**6)], path=spend) as reopened:
        assert reopened.budget_status()[0].spend_microdollars == event.cost_microdollars > 0


class ThreadWatchingNullSpend(NullSpend):
    """A server client that notes the thread of each reserve, settle and release it sends."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.threads: list[int] = []

    def _attempt(self, call: Any) -> Any:
        if call.path.startswith("/api/reservations"):
            self.threads.append(threading.get_ident())
        return super()._attempt(call)


def test_async_calls_never_wait_on_the_server_on_the_event_loop(
    server: RunningServer, fake: tuple[str, Any]
) -> None:
    with ThreadWatchingNullSpend(server.admin_key, server.base_url) as ns:
        instrument(client=ns)
        llm = openai_llm(fake)

        async def run() -> int:
            await llm.achat(HELLO)
            assert [c async for c in await llm.astream_chat(HELLO)]
            return threading.get_ident()

        loop_thread = asyncio.run(run())
        events = ns.cost_events().data  # waits for the settles queued in the background
        assert len(ns.threads) == 4  # two reserves, two settles
        assert loop_thread not in ns.threads
        assert len(events) == 2
        assert COST in {e.cost_microdollars for e in events}


def test_a_stream_stopped_early_is_charged_not_released(fake: tuple[str, Any]) -> None:
    ns = LocalNullSpend()
    instrument(client=ns)
    for _ in openai_llm(fake).stream_chat(HELLO):
        break  # tokens were generated: the call is not free
    (event,) = ns.cost_events().data
    assert event.cost_microdollars > 0


def test_the_responses_api_is_priced_from_its_own_usage(fake: tuple[str, Any]) -> None:
    """``OpenAIResponses`` answers in the Responses API's fields (input_tokens, not
    prompt_tokens), its streams end on a response.completed event, and its cap is
    max_output_tokens: read as Chat Completions, every call was recorded at $0."""
    ns = LocalNullSpend()
    instrument(client=ns)
    llm = responses_llm(fake)
    llm.chat(HELLO)
    assert list(llm.stream_chat(HELLO))
    asyncio.run(llm.achat(HELLO))
    llm.complete("Hello")
    events = ns.cost_events().data
    assert [e.cost_microdollars for e in events] == [COST] * 4
    assert {(e.input_tokens, e.cached_input_tokens, e.output_tokens) for e in events} == {
        (176, 1024, 90)
    }
    reserved = reserved_estimates(ns)
    llm.chat(HELLO)
    gpt = default_catalog().resolve("gpt-4o-mini")
    assert gpt is not None
    # The output part of the estimate is the call's max_output_tokens, not the model's cap.
    assert reserved[0] < 200 * gpt.prices.output // PICODOLLARS_PER_MICRODOLLAR


def test_a_request_for_speech_is_estimated_at_the_audio_output_rate(
    fake: tuple[str, Any],
) -> None:
    """An LLM asked for speech may bill its whole output as audio, at eight times the text
    rate on gpt-4o-audio-preview: estimated at the text rate, a hard cap was passed."""
    ns = LocalNullSpend()
    instrument(client=ns)
    reserved = reserved_estimates(ns)
    audio = default_catalog().resolve("gpt-4o-audio-preview")
    assert audio is not None
    assert audio.prices.audio_output is not None
    llm = openai_llm(fake)
    llm.model, llm.max_tokens = "gpt-4o-audio-preview", 1_000
    llm.modalities, llm.audio_config = ["text", "audio"], {"voice": "alloy", "format": "wav"}
    llm.chat(HELLO)
    assert reserved[0] >= 1_000 * audio.prices.audio_output // PICODOLLARS_PER_MICRODOLLAR > 0


def test_tool_schemas_are_in_the_estimate(fake: tuple[str, Any]) -> None:
    """The provider bills tool schemas as input: leaving them out of the estimate lets
    concurrent calls spend past a hard cap."""
    ns = LocalNullSpend()
    instrument(client=ns)
    reserved = reserved_estimates(ns)

    def lookup(query: str, region: str, limit: int) -> str:
        """Look a customer record up by free text, within one sales region, at most limit rows."""
        return query

    tools = [FunctionTool.from_defaults(lookup, name=f"lookup_{i}") for i in range(20)]
    llm = openai_llm(fake)
    llm.chat(HELLO)
    llm.chat_with_tools(tools, chat_history=HELLO)
    plain, with_tools = reserved
    assert plain is not None
    assert with_tools is not None
    schemas = json.dumps([llm._prepare_chat_with_tools(tools)["tools"]])
    gpt = default_catalog().resolve("gpt-4o-mini")
    assert gpt is not None
    at_least = len(schemas) // 4 * gpt.prices.input // PICODOLLARS_PER_MICRODOLLAR
    assert with_tools - plain >= at_least > 0


def test_a_stream_dropped_before_its_first_step_holds_nothing(fake: tuple[str, Any]) -> None:
    """LlamaIndex sends a stream's request at its first step: one dropped before it sent
    nothing, and its reservation is given back. One dropped part way was spent: charged."""
    ns = LocalNullSpend([LocalBudget.total(10**6)])
    instrument(client=ns)
    llm = openai_llm(fake)

    async def dropped_async() -> None:
        stream = await llm.astream_chat(HELLO)
        del stream

    unused = llm.stream_chat(HELLO)
    del unused
    asyncio.run(dropped_async())
    gc.collect()
    assert fake[1].state.requests == []
    assert [b.reserved_microdollars for b in ns.budget_status()] == [0]
    part_way = llm.stream_chat(HELLO)
    next(part_way)
    del part_way
    gc.collect()
    (status,) = ns.budget_status()
    assert status.reserved_microdollars == 0
    assert len(ns.cost_events().data) == 1  # charged, not released


def test_a_turn_continuing_a_stored_conversation_is_held_to_the_cap(
    fake: tuple[str, Any],
) -> None:
    """``OpenAIResponses(track_previous_responses=True)`` sends each turn with the previous
    response's id: the provider bills the stored turns it does not send. Such a turn is
    estimated at the model's context window, so a cap smaller than that refuses it first."""
    ns = LocalNullSpend([LocalBudget.total(5_000)])
    instrument(client=ns)
    llm = responses_llm(fake, track_previous_responses=True)
    llm.chat(HELLO)  # the first turn continues nothing
    with pytest.raises(DeniedError):
        llm.chat(HELLO)
    assert len(fake[1].state.requests) == 1


class SlowToReserveNullSpend(NullSpend):
    """A server client whose reservations take half a second to be answered."""

    def reserve_id(self, *args: Any, **kwargs: Any) -> str:
        time.sleep(0.5)
        return super().reserve_id(*args, **kwargs)


def test_an_async_call_cancelled_while_reserving_holds_nothing(
    server: RunningServer, fake: tuple[str, Any]
) -> None:
    """A timeout around ``achat`` fires while its reservation is still being made in a worker
    thread: the thread goes on and makes it, and nobody would use it. It is released once made,
    not held against the cap for its hour."""
    with SlowToReserveNullSpend(server.admin_key, server.base_url) as ns:
        budget(
            server, entityType="api_key", entityId=ns.introspect().key_id, limitMicrodollars=10**9
        )
        instrument(client=ns)

        async def time_out() -> None:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(openai_llm(fake).achat(HELLO), 0.1)

        asyncio.run(time_out())
        deadline = time.monotonic() + 5
        while not ns.budget_status() or ns.budget_status()[0].reserved_microdollars:
            assert time.monotonic() < deadline, "the reservation nobody uses is still held"
            time.sleep(0.05)
    assert fake[1].state.requests == []


class Verdict(BaseModel):
    text: str
    score: int


def test_structured_predict_on_the_responses_api_is_held_to_the_cap(
    fake: tuple[str, Any],
) -> None:
    """``OpenAIResponses.structured_predict`` calls its client's ``responses.parse`` directly,
    not through ``chat``: it is gated too, so a cap refuses it before the request, and a call
    made is charged its usage (no answer reaches LlamaIndex's events: it was charged its
    estimate: half the bill here)."""
    from llama_index.core.prompts import PromptTemplate

    prompt = PromptTemplate("Rate this review: {review}")
    answer = json.dumps({"text": "fine", "score": 4})
    refusing = LocalNullSpend([LocalBudget.total(1)])
    instrument(client=refusing)
    llm = responses_llm(fake, headers={"x-fake-answer": answer})
    with pytest.raises(DeniedError):
        llm.structured_predict(Verdict, prompt, review="Good value.")
    with pytest.raises(DeniedError):
        asyncio.run(llm.astructured_predict(Verdict, prompt, review="Good value."))
    assert fake[1].state.requests == []
    counting = LocalNullSpend()
    instrument(client=counting)
    # as_structured_llm's chat first, on a client no structured_predict has used yet
    structured = responses_llm(fake, headers={"x-fake-answer": answer}).as_structured_llm(Verdict)
    assert json.loads(structured.chat(HELLO).message.content or "")["score"] == 4
    assert llm.structured_predict(Verdict, prompt, review="Good value.").score == 4
    assert asyncio.run(llm.astructured_predict(Verdict, prompt, review="Good value.")).score == 4
    assert [e.cost_microdollars for e in counting.cost_events().data] == [COST] * 3


def test_structured_output_on_the_responses_api_is_estimated_as_it_is_asked_for(
    fake: tuple[str, Any],
) -> None:
    """``OpenAIResponses.structured_predict`` sends its parse no output cap (the LLM's
    ``max_output_tokens`` is for its chat): estimated at the LLM's 100 tokens, 10 concurrent
    calls spent 2.7 times a cap. And an answer the openai SDK fails to parse (a field missing)
    raised inside its parse, the call released: 20 such calls went past a strict cap."""
    from llama_index.core.prompts import PromptTemplate

    prompt = PromptTemplate("Rate this review: {review}")
    gpt = default_catalog().resolve("gpt-4o-mini")
    assert gpt is not None
    assert gpt.max_output_tokens
    ns = LocalNullSpend([LocalBudget.total(10**6)])
    reserved = reserved_estimates(ns)
    instrument(client=ns)
    asked_for = responses_llm(fake, headers={"x-fake-answer": json.dumps({"text": "fine"})})
    with pytest.raises(ValidationError):
        asked_for.structured_predict(Verdict, prompt, review="Good value.")
    assert fake[1].state.requests[-1]["json"].get("max_output_tokens") is None
    (estimate,) = reserved
    assert estimate >= gpt.max_output_tokens * gpt.prices.output // PICODOLLARS_PER_MICRODOLLAR
    assert [e.cost_microdollars for e in ns.cost_events().data] == [estimate]  # billed
    capped = responses_llm(fake, headers={"x-fake-answer": json.dumps({"text": "fine"})})
    with pytest.raises(ValidationError):
        capped.structured_predict(Verdict, prompt, llm_kwargs={"max_output_tokens": 50})
    assert reserved[1] < estimate  # the cap the parse was sent
    # Arguments the SDK refuses before sending: nothing billed, nothing charged.
    sent_before = len(fake[1].state.requests)
    with pytest.raises(TypeError):
        capped.structured_predict(Verdict, prompt, llm_kwargs={"no_such_parameter": 1})
    assert len(fake[1].state.requests) == sent_before
    assert len(ns.cost_events().data) == 2
    assert ns.budget_status()[0].reserved_microdollars == 0


def test_a_structured_answer_that_fails_to_parse_is_charged(fake: tuple[str, Any]) -> None:
    """The provider answered and billed; the structured LLM then failed to read the answer
    (a tool call missing a field). The call is charged its usage, not released: released, such
    calls passed a strict cap without end."""
    ns = LocalNullSpend([LocalBudget.total(10**6)])
    instrument(client=ns)
    incomplete = json.dumps({"name": "Verdict", "arguments": {"text": "fine"}})
    llm = openai_llm(fake)
    llm.default_headers = {**(llm.default_headers or {}), "x-fake-tool-call": incomplete}
    with pytest.raises(ValidationError):
        llm.as_structured_llm(Verdict).chat(HELLO)
    assert [e.cost_microdollars for e in ns.cost_events().data] == [COST]


def test_a_wrappers_stream_is_asked_for_its_usage(fake: tuple[str, Any]) -> None:
    """``as_structured_llm(...).stream_chat`` passes its keyword arguments to the OpenAI LLM it
    wraps, but the wrapper was not taken for an OpenAI LLM: its stream was never asked for its
    usage and was charged its estimate, 63 times the bill here."""
    ns = LocalNullSpend()
    instrument(client=ns)
    llm = openai_llm(fake)
    answer = json.dumps({"name": "Verdict", "arguments": {"text": "fine", "score": 4}})
    llm.default_headers = {**(llm.default_headers or {}), "x-fake-tool-call": answer}
    structured = llm.as_structured_llm(Verdict)

    async def astream() -> list[Any]:
        return [chunk async for chunk in await structured.astream_chat(HELLO)]

    async def astream_predicted() -> list[Any]:
        stream = await llm.astream_structured_predict(Verdict, PromptTemplate("{x}"), x="Hi")
        return [part async for part in stream]

    assert list(structured.stream_chat(HELLO))
    assert asyncio.run(astream())
    # stream_structured_predict streams through stream_chat too (OpenAI's is not gated whole,
    # as Anthropic's own is: gated whole, its stream was never asked for its usage).
    assert list(llm.stream_structured_predict(Verdict, PromptTemplate("{x}"), x="Hi"))
    assert asyncio.run(astream_predicted())
    sent = [r["json"].get("stream_options") for r in fake[1].state.requests]
    assert sent == [{"include_usage": True}] * 4
    assert [e.cost_microdollars for e in ns.cost_events().data] == [COST] * 4


def test_a_subclass_or_a_wrapper_of_the_responses_llm_is_read_as_one(
    fake: tuple[str, Any],
) -> None:
    """A subclass of ``OpenAIResponses`` defined elsewhere, and ``as_structured_llm`` around
    one, speak the Responses API: read as Chat Completions, their usage read as zero."""

    class HouseResponses(OpenAIResponses):
        pass

    ns = LocalNullSpend()
    instrument(client=ns)
    responses_llm(fake, HouseResponses).chat(HELLO)
    answer = json.dumps({"text": "fine", "score": 4})
    structured = responses_llm(fake, headers={"x-fake-answer": answer}).as_structured_llm(Verdict)
    assert json.loads(str(structured.chat(HELLO).message.content))["score"] == 4
    # The wrapper's answer comes from the client's responses.parse, which the gate hears.
    assert [e.cost_microdollars for e in ns.cost_events().data] == [COST, COST]


def test_a_call_served_in_the_priority_tier_is_priced_and_estimated_at_its_rates(
    fake: tuple[str, Any],
) -> None:
    """``additional_kwargs={"service_tier": "priority"}``: OpenAI bills about twice the
    standard rates, named in its answer; the estimate prices the tier asked for."""
    from nullspend.pricing import cost
    from nullspend.usage import Usage

    usage = Usage(input_tokens=1200 - 1024, cache_read_tokens=1024, output_tokens=90)
    expected = cost(usage, "gpt-4o-mini", service_tier="priority").total_microdollars
    assert expected > COST
    ns = LocalNullSpend()
    instrument(client=ns)
    reserved = reserved_estimates(ns)
    priority = {"service_tier": "priority"}
    chat = openai_llm(fake)
    chat.additional_kwargs = priority
    llms = [chat, responses_llm(fake, additional_kwargs=priority)]
    for llm in llms:
        llm.chat(HELLO)
        assert list(llm.stream_chat(HELLO))
    assert [e.cost_microdollars for e in ns.cost_events().data] == [expected] * 4
    responses_llm(fake).chat(HELLO)
    assert reserved[2] > reserved[-1]  # the same Responses call, standard


def test_the_searches_a_built_in_web_search_may_make_are_reserved(fake: tuple[str, Any]) -> None:
    """OpenAIResponses' built-in web search is billed per search on top of the tokens: the
    estimate reserves the five a search tool without a limit is assumed to make."""
    ns = LocalNullSpend()
    reserved = reserved_estimates(ns)
    instrument(client=ns)
    responses_llm(fake).chat(HELLO)
    responses_llm(fake, built_in_tools=[{"type": "web_search_preview"}]).chat(HELLO)
    plain, searching = reserved
    gpt = default_catalog().resolve("gpt-4o-mini")
    assert gpt is not None
    fee = gpt.prices.web_search // PICODOLLARS_PER_MICRODOLLAR
    assert searching - plain >= 5 * fee > 0
