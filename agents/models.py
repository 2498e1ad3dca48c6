"""The model client layer: requests, responses, the client seam and its errors.

Every model provider sits behind :class:`ModelClient`, a one-method Protocol
(``complete``). The adapters (:mod:`agents.anthropic_client`,
:mod:`agents.openai_client`) and the deterministic twin
(:mod:`agents.scripted`) implement it; :mod:`agents.resilient` wraps a chain of
them with retries, fallback, rate limits and cost accounting.

Provider failures are turned into a retry posture at the boundary, so callers
never see an SDK exception::

    ModelError
     ├── RetryableModelError   408, 409, 429, 5xx, connection errors, timeouts
     │                         (carries ``status`` and ``retry_after``)
     └── TerminalModelError    every other status: the request is wrong and
                               sending it again will not help

Pure: no SDK imports, no clock, no I/O.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol, cast, runtime_checkable

import msgspec

from blackboard.errors import BlackboardError
from blackboard.log.events import ModelCalled, Price

if TYPE_CHECKING:
    from datetime import datetime

__all__ = [
    "CallRecord",
    "Message",
    "ModelClient",
    "ModelError",
    "ModelRequest",
    "ModelResponse",
    "RetryableModelError",
    "SupportsAclose",
    "TerminalModelError",
    "ToolCall",
    "ToolResult",
    "ToolSpec",
    "approx_tokens",
    "error_for_status",
    "error_from_sdk",
    "input_text",
    "is_retryable_status",
    "parse_retry_after",
    "provider_error_message",
    "request_body",
    "request_hash",
    "tool_arguments",
]


# --- data -----------------------------------------------------------------


class ToolSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A tool as a model is offered it: a name, what it does, its arguments."""

    name: str
    """The tool's name as the model calls it (``workspace.write``...)."""
    description: str = ""
    """What the tool does, for the model."""
    input_schema: dict[str, Any] = msgspec.field(
        default_factory=lambda: {"type": "object", "properties": {}}
    )
    """A JSON Schema (an object) of the tool's arguments."""


class ToolCall(msgspec.Struct, frozen=True, kw_only=True):
    """One tool call a model asked for, in no provider's shape."""

    id: str
    """The provider's id of the call (``toolu_...``, ``call_...``)."""
    name: str
    """The tool's name as offered (``workspace.write``)."""
    arguments: dict[str, Any] = msgspec.field(default_factory=dict)
    """The arguments, decoded. Arguments a model sent that are not a JSON
    object are kept as ``{"_raw": text}`` so the tool can refuse them."""


class ToolResult(msgspec.Struct, frozen=True, kw_only=True):
    """What a tool call returned, sent back to the model."""

    call_id: str
    """The :attr:`ToolCall.id` it answers."""
    content: str
    """The result as text (JSON for structured results)."""
    is_error: bool = False
    """True when the tool failed or was refused; ``content`` says why."""


class Message(msgspec.Struct, frozen=True, omit_defaults=True):
    """One conversational turn.

    An assistant turn may carry the tool calls the model made; the user turn
    after it carries their results. Both are omitted from the encoding when
    empty, so a request without tools hashes as it always has.
    """

    role: str
    """``"user"`` or ``"assistant"``; the system prompt is ``ModelRequest.system``."""
    content: str
    """The turn's text."""
    tool_calls: tuple[ToolCall, ...] = ()
    """On an assistant turn: the tool calls the model made."""
    tool_results: tuple[ToolResult, ...] = ()
    """On a user turn: the results of the previous turn's tool calls."""


class ModelRequest(msgspec.Struct, frozen=True, kw_only=True):
    """A provider-neutral request for one completion."""

    model: str
    """The provider's model name; a fallback chain replaces it per attempt."""
    system: str = ""
    """The system prompt; empty means none."""
    messages: tuple[Message, ...]
    """The conversation, oldest first."""
    max_tokens: int = 1024
    """The most output tokens the model may produce."""
    temperature: float = 0.0
    """Sampling temperature (the Anthropic adapter sends it only on request)."""
    prompt_version: str = ""
    """The version of the prompt template that built this request."""
    metadata: dict[str, str] = msgspec.field(default_factory=dict)
    """Routing facts such as ``task_type`` and ``lane``; never sent to providers."""
    tools: tuple[ToolSpec, ...] = ()
    """Tools the model may call. Last, and left out of :func:`request_body`
    and :func:`request_hash` when empty: a request without tools records and
    hashes as it did before tools existed, so older logs still verify."""


class ModelResponse(msgspec.Struct, frozen=True, kw_only=True):
    """A provider-neutral completion."""

    provider: str
    """The provider that answered (``anthropic``, ``openai``, ``local``...)."""
    model: str
    """The model name the provider reports."""
    text: str
    """The text blocks of the answer, joined."""
    stop_reason: str | None
    """Why generation stopped, in the provider's own words."""
    tokens_in: int
    """Billed uncached input tokens (cached ones are in ``tokens_cached``)."""
    tokens_out: int
    """Output tokens."""
    tokens_cached: int = 0
    """Input tokens read from the provider's prompt cache."""
    tool_calls: tuple[ToolCall, ...] = ()
    """Tool calls the model asked for, in order (the raw body has the
    provider's own shape)."""
    raw: dict[str, Any]
    """The provider's full response body, JSON-able."""
    scripted: bool = False
    """True when the answer came from :class:`agents.scripted.ScriptedModel`."""


class CallRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One provider call, successful or not, as the worker records it.

    Every field is :class:`blackboard.log.events.ModelCalled`'s own (same name,
    type and default); :meth:`to_event` adds what only the worker knows (ids,
    time, lane, attempt) and makes the event, in this one place.
    """

    provider: str
    model: str
    request: dict[str, Any]
    """``msgspec.to_builtins`` of the request that was sent."""
    response: dict[str, Any]
    """The provider's raw body, or ``{}`` when the call failed."""
    text: str = ""
    stop_reason: str | None = None
    tool_calls: tuple[dict[str, Any], ...] = ()
    """``msgspec.to_builtins`` of the response's :class:`ToolCall` list."""
    tokens_in: int = 0
    tokens_out: int = 0
    tokens_cached: int = 0
    cost_usd: float = 0.0
    price: Price = Price()
    latency_ms: float = 0.0
    call_index: int = 0
    """Position of this call within one ``complete()``: 0, 1, 2..."""
    request_hash: str = ""
    prompt_version: str = ""
    error: str | None = None
    """``None`` on success, else the error's message."""
    scripted: bool = False

    def to_event(
        self,
        *,
        event_id: str,
        goal_id: str,
        task_id: str,
        at: datetime,
        actor: str,
        lane: str,
        call_index: int,
        attempt: int,
        dispatch: int,
    ) -> ModelCalled:
        """The ``ModelCalled`` event recording this call.

        Args:
            event_id: The event's id.
            goal_id: The task's goal.
            task_id: The task that made the call.
            at: When it is recorded.
            actor: The worker.
            lane: The task's lane.
            call_index: The call's place in the attempt (counted across every
                ``complete()`` of it, unlike the record's own ``call_index``).
            attempt: The attempt, within ``dispatch``.
            dispatch: The task's dispatch.
        """
        fields = msgspec.structs.asdict(self)
        fields["call_index"] = call_index
        return ModelCalled(
            event_id=event_id,
            goal_id=goal_id,
            task_id=task_id,
            at=at,
            actor=actor,
            lane=lane,
            attempt=attempt,
            dispatch=dispatch,
            **fields,
        )


# --- the seam -------------------------------------------------------------


class ModelClient(Protocol):
    """Anything that can complete a :class:`ModelRequest`."""

    provider: str
    """The provider name recorded with every call."""

    async def complete(self, request: ModelRequest) -> ModelResponse:
        """Complete one request.

        Args:
            request: The provider-neutral request.

        Returns:
            The provider-neutral response.

        Raises:
            RetryableModelError: The provider may answer if asked again later.
            TerminalModelError: The request will never succeed as it is.
        """
        ...


@runtime_checkable
class SupportsAclose(Protocol):
    """A client holding connections that must be closed."""

    async def aclose(self) -> None:
        """Release the client's connections."""
        ...


# --- errors ---------------------------------------------------------------


class ModelError(BlackboardError):
    """Base of every error raised by a model client."""

    message: str
    scripted: bool = False
    """True when :class:`agents.scripted.ScriptedModel` raised it (as
    :attr:`ModelResponse.scripted` marks its answers): a failed call is
    recorded as scripted too."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class RetryableModelError(ModelError):
    """The provider is busy or unreachable: the same request may succeed later."""

    status: int | None
    retry_after: float | None

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class TerminalModelError(ModelError):
    """The request is wrong (or forbidden): sending it again will not help."""

    status: int | None

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def is_retryable_status(status: int) -> bool:
    """Return whether an HTTP status is worth retrying (408, 409, 429, 5xx)."""
    return status in (408, 409, 429) or 500 <= status <= 599


def error_for_status(
    status: int, message: str, *, retry_after: float | None = None
) -> ModelError:
    """Map an HTTP status to the error a caller should see.

    Args:
        status: The HTTP status code.
        message: The provider's explanation.
        retry_after: Seconds the provider asked us to wait, if it said.

    Returns:
        A :class:`RetryableModelError` or a :class:`TerminalModelError`.
    """
    if is_retryable_status(status):
        return RetryableModelError(message, status=status, retry_after=retry_after)
    return TerminalModelError(message, status=status)


class _SDKStatusError(Protocol):
    """What the Anthropic and OpenAI SDKs' ``APIStatusError`` both carry.

    Both SDKs are generated by Stainless: the same classes, the same attributes.
    """

    status_code: int
    body: object
    message: str

    @property
    def response(self) -> _HasHeaders: ...


class _HasHeaders(Protocol):
    @property
    def headers(self) -> Mapping[str, str]: ...


def error_from_sdk(
    error: Exception,
    *,
    status_error: type[Exception],
    connection_error: type[Exception],
) -> ModelError:
    """Map an SDK error to the retry posture callers act on; raise it ``from``.

    408, 409, 429 and 5xx are retryable and honour ``retry-after``; connection
    errors and timeouts (a subclass of the SDK's connection error) are
    retryable without a status: no answer is never a "no"; anything else is
    terminal and carries the provider's own message.

    Args:
        error: What the SDK raised (its ``APIError`` or a subclass).
        status_error: The SDK's ``APIStatusError`` (an HTTP answer).
        connection_error: The SDK's ``APIConnectionError`` (no answer).

    Returns:
        A :class:`RetryableModelError` or a :class:`TerminalModelError`.
    """
    if isinstance(error, status_error):
        e = cast("_SDKStatusError", error)
        return error_for_status(
            e.status_code,
            provider_error_message(e.body, e.message),
            retry_after=parse_retry_after(e.response.headers),
        )
    message = str(getattr(error, "message", "") or error)
    if isinstance(error, connection_error):
        return RetryableModelError(message, status=None)
    return TerminalModelError(message, status=getattr(error, "status_code", None))


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Read how long the provider asked us to wait.

    ``retry-after-ms`` (milliseconds) wins over ``retry-after`` (seconds). An
    HTTP-date ``retry-after`` is ignored: reading it needs a clock.

    Args:
        headers: Response headers; lookups are tried in lower case.

    Returns:
        Seconds to wait, or ``None`` when the headers do not say.
    """
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) / scale
        except ValueError:
            continue
        if math.isfinite(seconds) and seconds >= 0:
            return seconds
    return None


def provider_error_message(body: object, fallback: str) -> str:
    """Extract the human message from a provider's error body.

    Understands ``{"error": {"message": ...}}`` (Anthropic, OpenAI, vLLM),
    ``{"message": ...}`` (an already-unwrapped error) and ``{"error": "..."}``
    (Ollama).

    Args:
        body: The decoded error body, or raw text, or ``None``.
        fallback: What to return when the body carries no message.

    Returns:
        The provider's message.
    """
    if isinstance(body, Mapping):
        error = body.get("error")
        if isinstance(error, Mapping) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(error, str) and error:
            return error
        if isinstance(body.get("message"), str):
            return str(body["message"])
    if isinstance(body, str) and body.strip():
        return body.strip()
    return fallback


# --- pure helpers ---------------------------------------------------------

_ENCODER = msgspec.json.Encoder(order="deterministic")
_NO_TOOLS = b',"tools":[]}'


def request_hash(request: ModelRequest) -> str:
    """Return the sha256 hex digest of the request's canonical JSON encoding.

    ``tools`` is the request's last field; when empty it is cut from the
    encoding, so a request without tools hashes exactly as before the field
    existed (recorded answers of older logs are still found by their hash).
    """
    raw = _ENCODER.encode(request)
    if not request.tools and raw.endswith(_NO_TOOLS):
        raw = raw[: -len(_NO_TOOLS)] + b"}"
    return hashlib.sha256(raw).hexdigest()


def request_body(request: ModelRequest) -> dict[str, Any]:
    """The request as it is recorded: builtins, ``tools`` left out when empty."""
    body: dict[str, Any] = msgspec.to_builtins(request)
    if not request.tools:
        body.pop("tools", None)
    return body


def tool_arguments(raw: object) -> dict[str, Any]:
    """A tool call's arguments as a dict, whatever the provider sent.

    OpenAI sends a JSON string, Anthropic an object. Anything that does not
    decode to an object (a truncated string, a list) is kept as
    ``{"_raw": text}``, for the tool's schema check to refuse with a reason
    the model can read, never dropped.
    """
    value: object = raw
    if isinstance(raw, str | bytes):
        try:
            value = msgspec.json.decode(raw) if raw else {}
        except msgspec.DecodeError:
            return {
                "_raw": raw if isinstance(raw, str) else raw.decode(errors="replace")
            }
    if isinstance(value, dict):
        return {str(k): v for k, v in value.items()}
    return {"_raw": _ENCODER.encode(value).decode()}


def input_text(request: ModelRequest) -> str:
    """Return the system prompt and every turn's text, joined by newlines.

    A turn's tool calls and tool results count as text too (their names,
    arguments and contents), for token estimates and scripted matching.
    """
    parts = [request.system] if request.system else []
    for m in request.messages:
        parts.append(m.content)
        parts.extend(
            f"{c.name} {_ENCODER.encode(c.arguments).decode()}" for c in m.tool_calls
        )
        parts.extend(r.content for r in m.tool_results)
    return "\n".join(parts)


def approx_tokens(text: str) -> int:
    """Estimate a token count the usual way: four characters a token, at least 1."""
    return max(1, math.ceil(len(text) / 4))
