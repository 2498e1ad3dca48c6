"""The Anthropic Messages API behind :class:`agents.models.ModelClient`.

The SDK's own retries are off (``max_retries=0``): the caller
(:class:`agents.resilient.ResilientModel`, then the worker's nak) owns retries,
so every attempt is visible and recorded.

Tools go out natively: each :class:`agents.models.ToolSpec` as a ``tools``
entry, an assistant turn's tool calls as ``tool_use`` blocks after its text,
and a user turn's tool results as ``tool_result`` blocks before its text.
Tool names travel in their wire form (:mod:`agents.tool_names`) and the
answer's ``tool_use`` names are mapped back. A request without tools sends no
``tools`` key and plain string contents, exactly as before tools existed.
"""

from __future__ import annotations

import anthropic
from anthropic.types import (
    AssistantMessageParam,
    ContentBlockParam,
    MessageParam,
    TextBlock,
    TextBlockParam,
    ToolParam,
    ToolResultBlockParam,
    ToolUseBlock,
    ToolUseBlockParam,
    UserMessageParam,
)

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

__all__ = ["AnthropicModel"]


def _tool_param(spec: ToolSpec, names: WireNames) -> ToolParam:
    """One offered tool, under its wire name."""
    param = ToolParam(name=names.wire(spec.name), input_schema=spec.input_schema)
    if spec.description:
        param["description"] = spec.description
    return param


def _message_param(message: Message, names: WireNames) -> MessageParam:
    """Build one SDK message, rejecting turns this layer does not send.

    A turn without tool calls or results keeps its plain string content.
    """
    role = message.role
    if role == "user" and not message.tool_calls:
        if not message.tool_results:
            return UserMessageParam(role="user", content=message.content)
        # The API wants the results first in the turn, the text after them.
        blocks: list[ContentBlockParam] = [
            ToolResultBlockParam(
                type="tool_result",
                tool_use_id=result.call_id,
                content=result.content,
                is_error=result.is_error,
            )
            for result in message.tool_results
        ]
        if message.content:
            blocks.append(TextBlockParam(type="text", text=message.content))
        return UserMessageParam(role="user", content=blocks)
    if role == "assistant" and not message.tool_results:
        if not message.tool_calls:
            return AssistantMessageParam(role="assistant", content=message.content)
        # An empty text block is refused by the API: only a non-empty one goes.
        blocks = (
            [TextBlockParam(type="text", text=message.content)]
            if message.content
            else []
        )
        blocks.extend(
            ToolUseBlockParam(
                type="tool_use",
                id=call.id,
                name=names.wire(call.name),
                input=call.arguments,
            )
            for call in message.tool_calls
        )
        return AssistantMessageParam(role="assistant", content=blocks)
    msg = (
        f"cannot send a {role!r} turn with {len(message.tool_calls)} tool call(s)"
        f" and {len(message.tool_results)} tool result(s): messages take roles"
        " user/assistant, tool calls on assistant turns, tool results on user turns"
    )
    raise TerminalModelError(msg)


class AnthropicModel(ModelClient):
    """A :class:`ModelClient` over ``anthropic.AsyncAnthropic``.

    Args:
        api_key: The API key.
        base_url: Overrides the API endpoint (a proxy, a gateway, a test fake).
        timeout: Seconds before one HTTP call gives up.
        provider: The provider name recorded with every call.
        default_headers: Extra headers sent with every request.
        send_temperature: Send ``request.temperature`` in the body. The
            Messages API of SDK 2.x has no sampling parameters, so it is off by
            default; turn it on for gateways or API versions that take one.
    """

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str | None = None,
        timeout: float = 120.0,
        provider: str = "anthropic",
        default_headers: dict[str, str] | None = None,
        send_temperature: bool = False,
    ) -> None:
        self.provider = provider
        self._send_temperature = send_temperature
        self._client = anthropic.AsyncAnthropic(
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
        """Send one request to ``messages.create``.

        Args:
            request: The provider-neutral request.

        Returns:
            The answer, with usage and the full raw body.

        Raises:
            RetryableModelError: 408/409/429/5xx, connection errors, timeouts.
            TerminalModelError: Any other failure.
        """
        names = WireNames.for_request(request)
        messages = [_message_param(m, names) for m in request.messages]
        tools = [_tool_param(spec, names) for spec in request.tools]
        try:
            response = await self._client.messages.create(
                model=request.model,
                system=request.system or anthropic.omit,
                messages=messages,
                max_tokens=request.max_tokens,
                tools=tools or anthropic.omit,
                extra_body=(
                    {"temperature": request.temperature}
                    if self._send_temperature
                    else None
                ),
            )
        except anthropic.APIError as e:
            raise error_from_sdk(
                e,
                status_error=anthropic.APIStatusError,
                connection_error=anthropic.APIConnectionError,
            ) from e

        texts: list[str] = []
        tool_calls: list[ToolCall] = []
        for block in response.content:
            if isinstance(block, TextBlock):
                texts.append(block.text)
            elif isinstance(block, ToolUseBlock):
                tool_calls.append(
                    ToolCall(
                        id=block.id,
                        name=names.name(block.name),
                        arguments=tool_arguments(block.input),
                    )
                )
        usage = response.usage
        return ModelResponse(
            provider=self.provider,
            model=response.model,
            text="".join(texts),
            stop_reason=response.stop_reason,
            tokens_in=usage.input_tokens,
            tokens_out=usage.output_tokens,
            tokens_cached=usage.cache_read_input_tokens or 0,
            tool_calls=tuple(tool_calls),
            raw=response.model_dump(mode="json"),
        )
