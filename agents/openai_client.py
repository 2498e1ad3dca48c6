"""OpenAI Chat Completions (and compatible servers) behind ``ModelClient``.

One adapter serves OpenAI itself and the OpenAI-compatible local servers
(vLLM, Ollama, llama.cpp): only ``base_url``, ``api_key`` (a placeholder such as
``"not-needed"`` for local servers) and the recorded ``provider`` name differ.

The SDK's own retries are off (``max_retries=0``): the caller owns retries.

OpenAI's ``prompt_tokens`` *includes* cached prompt tokens, while this layer's
``tokens_in`` excludes them (see :mod:`agents.cost`), so ``tokens_in`` is
``prompt_tokens - cached_tokens``.

Tools go out natively: each :class:`agents.models.ToolSpec` as a ``function``
tool, an assistant turn's tool calls as its ``tool_calls`` (arguments as a
JSON string), and each tool result as a ``tool`` message paired by
``tool_call_id``. The API has no error flag on a tool message, so a failed
call's content is prefixed with ``ERROR: ``. Tool names travel in their wire
form (:mod:`agents.tool_names`) and the answer's are mapped back. A request
without tools sends no ``tools`` key, exactly as before tools existed.
"""

from __future__ import annotations

from typing import Literal

import msgspec
import openai
from openai.types.chat import (
    ChatCompletionAssistantMessageParam,
    ChatCompletionFunctionToolParam,
    ChatCompletionMessageFunctionToolCallParam,
    ChatCompletionMessageParam,
    ChatCompletionSystemMessageParam,
    ChatCompletionToolMessageParam,
    ChatCompletionUserMessageParam,
)
from openai.types.shared_params import FunctionDefinition

from agents.models import (
    Message,
    ModelClient,
    ModelRequest,
    ModelResponse,
    TerminalModelError,
    ToolCall,
    ToolSpec,
    error_from_sdk,
    tool_arguments,
)
from agents.tool_names import WireNames

__all__ = ["TOOL_ERROR_PREFIX", "OpenAICompatibleModel"]

TOOL_ERROR_PREFIX = "ERROR: "
"""What starts the content of a ``tool`` message whose call failed."""


def _tool_param(spec: ToolSpec, names: WireNames) -> ChatCompletionFunctionToolParam:
    """One offered tool, as a function under its wire name."""
    function = FunctionDefinition(
        name=names.wire(spec.name), parameters=spec.input_schema
    )
    if spec.description:
        function["description"] = spec.description
    return ChatCompletionFunctionToolParam(type="function", function=function)


def _message_params(
    message: Message, names: WireNames
) -> list[ChatCompletionMessageParam]:
    """Build the SDK messages of one turn, rejecting turns this layer does not send.

    A turn without tool calls or results is one message with its string
    content; a user turn with tool results is one ``tool`` message per result,
    then the user message only if it has text.
    """
    role = message.role
    if role == "user" and not message.tool_calls:
        params: list[ChatCompletionMessageParam] = [
            ChatCompletionToolMessageParam(
                role="tool",
                tool_call_id=result.call_id,
                content=(
                    TOOL_ERROR_PREFIX + result.content
                    if result.is_error
                    else result.content
                ),
            )
            for result in message.tool_results
        ]
        if message.content or not message.tool_results:
            params.append(
                ChatCompletionUserMessageParam(role="user", content=message.content)
            )
        return params
    if role == "assistant" and not message.tool_results:
        if not message.tool_calls:
            return [
                ChatCompletionAssistantMessageParam(
                    role="assistant", content=message.content
                )
            ]
        calls = [
            ChatCompletionMessageFunctionToolCallParam(
                id=call.id,
                type="function",
                function={
                    "name": names.wire(call.name),
                    "arguments": msgspec.json.encode(call.arguments).decode(),
                },
            )
            for call in message.tool_calls
        ]
        return [
            ChatCompletionAssistantMessageParam(
                role="assistant", content=message.content or None, tool_calls=calls
            )
        ]
    msg = (
        f"cannot send a {role!r} turn with {len(message.tool_calls)} tool call(s)"
        f" and {len(message.tool_results)} tool result(s): chat messages take roles"
        " user/assistant, tool calls on assistant turns, tool results on user turns"
    )
    raise TerminalModelError(msg)


class OpenAICompatibleModel(ModelClient):
    """A :class:`ModelClient` over ``openai.AsyncOpenAI`` chat completions.

    Args:
        api_key: The API key; any placeholder for servers that ignore it.
        base_url: The endpoint, e.g. ``http://localhost:8000/v1`` for vLLM or
            ``http://localhost:11434/v1`` for Ollama; ``None`` means OpenAI.
        provider: The provider name recorded with every call (``"local"`` for
            the local lane).
        timeout: Seconds before one HTTP call gives up.
        max_tokens_param: The request field that carries ``max_tokens``:
            OpenAI's newer models accept only ``max_completion_tokens``, while
            some compatible servers know only ``max_tokens``.
        default_headers: Extra headers sent with every request.
    """

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str | None = None,
        provider: str = "openai",
        timeout: float = 120.0,
        max_tokens_param: Literal["max_tokens", "max_completion_tokens"] = "max_tokens",
        default_headers: dict[str, str] | None = None,
    ) -> None:
        self.provider = provider
        self._max_tokens_param = max_tokens_param
        self._client = openai.AsyncOpenAI(
            api_key=api_key,
            base_url=base_url,
            max_retries=0,
            timeout=timeout,
            default_headers=default_headers,
        )

    async def aclose(self) -> None:
        """Close the SDK client's connection pool."""
        await self._client.close()

    async def complete(self, request: ModelRequest) -> ModelResponse:
        """Send one request to ``chat.completions.create``.

        Args:
            request: The provider-neutral request.

        Returns:
            The first choice, with usage and the full raw body.

        Raises:
            RetryableModelError: 408/409/429/5xx, connection errors, timeouts.
            TerminalModelError: Any other failure.
        """
        messages: list[ChatCompletionMessageParam] = []
        if request.system:
            messages.append(
                ChatCompletionSystemMessageParam(role="system", content=request.system)
            )
        names = WireNames.for_request(request)
        for m in request.messages:
            messages.extend(_message_params(m, names))
        tools = [_tool_param(spec, names) for spec in request.tools]
        use_completion_tokens = self._max_tokens_param == "max_completion_tokens"
        try:
            completion = await self._client.chat.completions.create(
                model=request.model,
                messages=messages,
                tools=tools or openai.omit,
                temperature=request.temperature,
                max_tokens=openai.omit if use_completion_tokens else request.max_tokens,
                max_completion_tokens=(
                    request.max_tokens if use_completion_tokens else openai.omit
                ),
            )
        except openai.APIError as e:
            raise error_from_sdk(
                e,
                status_error=openai.APIStatusError,
                connection_error=openai.APIConnectionError,
            ) from e

        text = ""
        stop_reason: str | None = None
        tool_calls: tuple[ToolCall, ...] = ()
        if completion.choices:
            choice = completion.choices[0]
            text = choice.message.content or ""
            stop_reason = choice.finish_reason
            tool_calls = tuple(
                ToolCall(
                    id=call.id,
                    name=names.name(call.function.name),
                    arguments=tool_arguments(call.function.arguments),
                )
                for call in choice.message.tool_calls or ()
                if call.type == "function"
            )
        tokens_in = tokens_out = cached = 0
        if completion.usage is not None:
            usage = completion.usage
            details = usage.prompt_tokens_details
            cached = (details.cached_tokens or 0) if details is not None else 0
            tokens_in = max(0, usage.prompt_tokens - cached)
            tokens_out = usage.completion_tokens
        return ModelResponse(
            provider=self.provider,
            model=completion.model,
            text=text,
            stop_reason=stop_reason,
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            tokens_cached=cached,
            tool_calls=tool_calls,
            raw=completion.model_dump(mode="json"),
        )
