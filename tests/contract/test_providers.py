"""The real Anthropic and OpenAI SDKs, over HTTP, against a fake provider.

Nothing inside the SDKs is mocked: the clients send real requests to
:class:`tests.fakes.providers.FakeProviderServer`, so these tests pin the
request shape, the usage and cost arithmetic, the error mapping and the
retry/fallback policy of :class:`agents.resilient.ResilientModel`.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any

import msgspec
import pytest

from agents.anthropic_client import AnthropicModel
from agents.cost import PriceTable
from agents.models import (
    CallRecord,
    Message,
    ModelRequest,
    RetryableModelError,
    TerminalModelError,
    request_body,
    request_hash,
)
from agents.openai_client import OpenAICompatibleModel
from agents.resilient import ResilientModel
from blackboard.log.events import Price
from tests.fakes.providers import (
    ANTHROPIC_PATH,
    OPENAI_PATH,
    FakeProviderServer,
    Usage,
    anthropic_success,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

PRICES = PriceTable(
    {
        "claude-main": {
            "input_per_mtok": 3.0,
            "output_per_mtok": 15.0,
            "cached_per_mtok": 0.3,
        },
        "claude-backup": {
            "input_per_mtok": 1.0,
            "output_per_mtok": 5.0,
            "cached_per_mtok": 0.1,
        },
        "gpt-main": {
            "input_per_mtok": 2.5,
            "output_per_mtok": 10.0,
            "cached_per_mtok": 1.25,
        },
        "gpt-backup": {
            "input_per_mtok": 0.15,
            "output_per_mtok": 0.6,
            "cached_per_mtok": 0.075,
        },
    }
)
MODELS = {
    "anthropic": ("claude-main", "claude-backup"),
    "openai": ("gpt-main", "gpt-backup"),
}
KEYS = {"anthropic": "sk-ant-contract", "openai": "sk-oai-contract"}
PATHS = {"anthropic": ANTHROPIC_PATH, "openai": OPENAI_PATH}

REQUEST = ModelRequest(
    model="placeholder",
    system="You are terse.",
    messages=(Message("user", "Say hi."),),
    max_tokens=64,
    prompt_version="greet@1",
    metadata={"task_type": "greet", "lane": "test"},
)

Client = AnthropicModel | OpenAICompatibleModel


class Recorder:
    """Collects what ResilientModel reports and the sleeps it asks for."""

    def __init__(self) -> None:
        self.records: list[CallRecord] = []
        self.sleeps: list[float] = []
        self.events: list[str] = []

    async def on_call(self, record: CallRecord) -> None:
        self.records.append(record)
        self.events.append(f"call:{record.model}:{record.error is None}")

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.events.append(f"sleep:{seconds}")


class Ticker:
    """A monotonic clock that advances 0.25 s every time it is read."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        self.now += 0.25
        return self.now


@pytest.fixture
def fake() -> Iterator[FakeProviderServer]:
    with FakeProviderServer(
        text="hi there",
        usage=Usage(input_tokens=1200, output_tokens=300, cached_tokens=4000),
    ) as server:
        yield server


@pytest.fixture(params=["anthropic", "openai"])
def provider(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def make_client(provider: str, fake: FakeProviderServer) -> Client:
    if provider == "anthropic":
        return AnthropicModel(
            api_key=KEYS[provider], base_url=fake.anthropic_base_url, timeout=10
        )
    return OpenAICompatibleModel(
        api_key=KEYS[provider], base_url=fake.openai_base_url, timeout=10
    )


@pytest.fixture
async def client(provider: str, fake: FakeProviderServer) -> AsyncIterator[Client]:
    model = make_client(provider, fake)
    yield model
    await model.aclose()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


def resilient(
    client: Client, provider: str, recorder: Recorder, **kwargs: Any
) -> ResilientModel:
    main, backup = MODELS[provider]
    return ResilientModel(
        [(client, main), (client, backup)],
        PRICES,
        on_call=recorder.on_call,
        sleep=recorder.sleep,
        monotonic=Ticker(),
        **kwargs,
    )


# --- success: tokens and cost ---------------------------------------------


async def test_tokens_and_cost_recorded_exactly(
    provider: str, client: Client, fake: FakeProviderServer, recorder: Recorder
) -> None:
    model = resilient(client, provider, recorder)

    response = await model.complete(REQUEST)

    assert response.text == "hi there"
    assert response.provider == provider
    assert (response.tokens_in, response.tokens_out, response.tokens_cached) == (
        1200,
        300,
        4000,
    )
    [record] = recorder.records
    main = MODELS[provider][0]
    # By hand, USD per million tokens: in, out and cache reads each billed once.
    expected = {
        # 1200 * 3.0 + 300 * 15.0 + 4000 * 0.3 = 3600 + 4500 + 1200 = 9300
        "anthropic": 0.0093,
        # 1200 * 2.5 + 300 * 10.0 + 4000 * 1.25 = 3000 + 3000 + 5000 = 11000
        "openai": 0.011,
    }[provider]
    assert record.cost_usd == expected
    assert record.price == PRICES.price_for(main)
    assert record.provider == provider
    assert record.model == main
    assert record.error is None
    assert record.call_index == 0
    assert record.latency_ms == 250.0
    assert record.text == "hi there"
    assert record.prompt_version == "greet@1"
    sent = msgspec.structs.replace(REQUEST, model=main)
    assert record.request == request_body(sent)
    assert record.request_hash == request_hash(sent)
    assert record.response["id"] in ("msg_fake_0001", "chatcmpl-fake0001")
    assert record.response["model"] == main
    assert not record.scripted
    # The SDK answered once, with no retries of its own.
    assert fake.paths() == [PATHS[provider]]


async def test_request_went_over_http_with_credentials(
    provider: str, client: Client, fake: FakeProviderServer
) -> None:
    await client.complete(REQUEST)

    [seen] = fake.requests
    key = KEYS[provider]
    assert key in (
        seen.headers.get("x-api-key"),
        seen.headers.get("authorization", "").removeprefix("Bearer "),
    )
    assert seen.headers["x-stainless-retry-count"] == "0"
    assert seen.body["model"] == "placeholder"
    assert seen.body["max_tokens"] == 64
    if provider == "anthropic":
        assert seen.body["system"] == "You are terse."
        assert seen.body["messages"] == [{"role": "user", "content": "Say hi."}]
    else:
        assert seen.body["messages"] == [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Say hi."},
        ]
    # Routing metadata is ours; it never reaches the provider.
    assert "metadata" not in seen.body


# --- retryable errors -----------------------------------------------------


async def test_429_honours_retry_after_then_succeeds(
    provider: str, client: Client, fake: FakeProviderServer, recorder: Recorder
) -> None:
    fake.enqueue(429, headers={"retry-after": "2"}, message="slow down")
    model = resilient(client, provider, recorder)

    response = await model.complete(REQUEST)

    assert response.text == "hi there"
    assert recorder.sleeps == [2.0]
    first, second = recorder.records
    assert first.error == "slow down"
    assert first.response == {}
    assert (first.tokens_in, first.cost_usd) == (0, 0.0)
    assert second.error is None
    assert [first.call_index, second.call_index] == [0, 1]
    main = MODELS[provider][0]
    # on_call ran before the sleep that followed the failed call.
    assert recorder.events == [f"call:{main}:False", "sleep:2.0", f"call:{main}:True"]
    assert fake.models() == [main, main]


async def test_retry_after_ms_is_understood(
    provider: str, client: Client, fake: FakeProviderServer, recorder: Recorder
) -> None:
    fake.enqueue(
        529 if provider == "anthropic" else 503, headers={"retry-after-ms": "1500"}
    )
    model = resilient(client, provider, recorder)

    await model.complete(REQUEST)

    assert recorder.sleeps == [1.5]


async def test_500_retried_then_falls_back_to_next_model(
    provider: str, client: Client, fake: FakeProviderServer, recorder: Recorder
) -> None:
    for _ in range(3):
        fake.enqueue(500, message="internal wobble")
    model = resilient(client, provider, recorder, max_retries_per_model=2)

    response = await model.complete(REQUEST)

    main, backup = MODELS[provider]
    assert fake.models() == [main, main, main, backup]
    # Exponential backoff 0.5 * 2**n between tries of one model, none before
    # falling back to the next.
    assert recorder.sleeps == [0.5, 1.0]
    assert [r.model for r in recorder.records] == [main, main, main, backup]
    assert [r.call_index for r in recorder.records] == [0, 1, 2, 3]
    assert [r.error for r in recorder.records] == ["internal wobble"] * 3 + [None]
    assert response.model == backup
    # The backup answered, so its price applies.
    assert recorder.records[-1].price == PRICES.price_for(backup)
    assert recorder.records[-1].price != PRICES.price_for(main)


async def test_whole_chain_exhausted_raises_last_retryable(
    provider: str, client: Client, fake: FakeProviderServer, recorder: Recorder
) -> None:
    for _ in range(3):
        fake.enqueue(503, message="main down")
    for _ in range(3):
        fake.enqueue(503, message="backup down")
    model = resilient(client, provider, recorder)

    with pytest.raises(RetryableModelError) as caught:
        await model.complete(REQUEST)

    assert caught.value.status == 503
    assert caught.value.message == "backup down"
    assert len(fake.requests) == 6
    assert len(recorder.records) == 6
    assert recorder.sleeps == [0.5, 1.0, 0.5, 1.0]


async def test_long_retry_after_skips_to_next_model(
    provider: str, client: Client, fake: FakeProviderServer, recorder: Recorder
) -> None:
    fake.enqueue(429, headers={"retry-after": "120"})
    model = resilient(client, provider, recorder, backoff_cap_s=30)

    await model.complete(REQUEST)

    main, backup = MODELS[provider]
    assert fake.models() == [main, backup]
    assert recorder.sleeps == []


async def test_cross_provider_fallback(
    fake: FakeProviderServer, recorder: Recorder
) -> None:
    anthropic = make_client("anthropic", fake)
    openai = make_client("openai", fake)
    try:
        fake.enqueue(529, message="overloaded")
        model = ResilientModel(
            [(anthropic, "claude-main"), (openai, "gpt-main")],
            PRICES,
            on_call=recorder.on_call,
            sleep=recorder.sleep,
            max_retries_per_model=0,
        )
        response = await model.complete(REQUEST)
    finally:
        await model.aclose()

    assert response.provider == "openai"
    assert fake.paths() == [ANTHROPIC_PATH, OPENAI_PATH]
    assert [(r.provider, r.model) for r in recorder.records] == [
        ("anthropic", "claude-main"),
        ("openai", "gpt-main"),
    ]
    # 1200 * 2.5 + 300 * 10.0 + 4000 * 1.25 = 11000 micro-dollars
    assert recorder.records[-1].cost_usd == 0.011


async def test_connection_refused_is_retryable_without_status(
    provider: str, recorder: Recorder
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Nothing listens on the port any more.
    base = f"http://127.0.0.1:{port}"
    model: Client = (
        AnthropicModel(api_key="k", base_url=base, timeout=5)
        if provider == "anthropic"
        else OpenAICompatibleModel(api_key="k", base_url=base + "/v1", timeout=5)
    )
    try:
        with pytest.raises(RetryableModelError) as caught:
            await model.complete(REQUEST)
    finally:
        await model.aclose()
    assert caught.value.status is None
    assert caught.value.retry_after is None


# --- terminal errors ------------------------------------------------------


async def test_400_is_terminal_at_once_without_fallback(
    provider: str, client: Client, fake: FakeProviderServer, recorder: Recorder
) -> None:
    fake.enqueue(400, message="max_tokens: must be at most 8192")
    model = resilient(client, provider, recorder)

    with pytest.raises(TerminalModelError) as caught:
        await model.complete(REQUEST)

    assert caught.value.status == 400
    assert "max_tokens: must be at most 8192" in str(caught.value)
    [record] = recorder.records
    assert record.error is not None
    assert "max_tokens: must be at most 8192" in record.error
    assert record.response == {}
    assert recorder.sleeps == []
    # One request, to the first model only: no SDK retry, no fallback.
    assert fake.models() == [MODELS[provider][0]]


async def test_401_is_terminal(
    provider: str, client: Client, fake: FakeProviderServer
) -> None:
    fake.enqueue(401, message="invalid x-api-key")

    with pytest.raises(TerminalModelError, match="invalid x-api-key") as caught:
        await client.complete(REQUEST)

    assert caught.value.status == 401
    assert caught.value.__cause__ is not None
    assert len(fake.requests) == 1


async def test_openai_compatible_local_provider_name(
    fake: FakeProviderServer,
) -> None:
    local = OpenAICompatibleModel(
        api_key="not-needed", base_url=fake.openai_base_url, provider="local"
    )
    try:
        response = await local.complete(REQUEST)
    finally:
        await local.aclose()
    assert response.provider == "local"
    # prompt_tokens (5200) include the cached ones; tokens_in does not.
    assert fake.requests[0].body["model"] == "placeholder"
    assert (response.tokens_in, response.tokens_cached) == (1200, 4000)


def test_default_price_is_zero_for_unknown_models() -> None:
    assert PRICES.price_for("some-local-model") == Price()


async def test_anthropic_tool_use_and_temperature_opt_in(
    fake: FakeProviderServer,
) -> None:
    body = anthropic_success("claude-main", "let me look", Usage(10, 5, 0))
    body["content"].append(
        {"type": "tool_use", "id": "toolu_1", "name": "search", "input": {"q": "x"}}
    )
    body["stop_reason"] = "tool_use"
    fake.enqueue(body=body)
    plain = AnthropicModel(api_key="k", base_url=fake.anthropic_base_url)
    warm = AnthropicModel(
        api_key="k", base_url=fake.anthropic_base_url, send_temperature=True
    )
    try:
        response = await plain.complete(REQUEST)
        await warm.complete(msgspec.structs.replace(REQUEST, temperature=0.7))
    finally:
        await plain.aclose()
        await warm.aclose()

    assert response.text == "let me look"
    assert response.stop_reason == "tool_use"
    [call] = response.tool_calls
    assert (call.name, call.arguments) == ("search", {"q": "x"})
    # SDK 2.x has no sampling parameters: temperature is sent only on request.
    assert "temperature" not in fake.requests[0].body
    assert fake.requests[1].body["temperature"] == 0.7
