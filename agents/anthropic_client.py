"""The Anthropic Messages API behind :class:`agents.models.ModelClient`.

The SDK's own retries are off (``max_retries=0``): the caller
(:class:`agents.resilient.ResilientModel`, then the worker's nak) owns retries,
so every attempt is visible and recorded.
"""

from __future__ import annotations

import anthropic
from anthropic.types import (
    AssistantMessageParam,
    MessageParam,
    TextBlock,
    ToolUseBlock,
    UserMessageParam,
)

from agents.models import (
    ModelClient,
    ModelRequest,
    ModelResponse,
    TerminalModelError,
    ToolCall,
    error_from_sdk,
    tool_arguments,
)

__all__ = ["AnthropicModel"]


def _message_param(role: str, content: str) -> MessageParam:
    """Build one SDK message, rejecting roles this layer does not send."""
    if role == "user":
        return UserMessageParam(role="user", content=content)
    if role == "assistant":
        return AssistantMessageParam(role="assistant", content=content)
    msg = f"messages take roles user/assistant here, not {role!r}"
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
        messages = [_message_param(m.role, m.content) for m in request.messages]
        try:
            response = await self._client.messages.create(
                model=request.model,
                system=request.system or anthropic.omit,
                messages=messages,
                max_tokens=request.max_tokens,
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
                        name=block.name,
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
