"""OpenAI Chat Completions (and compatible servers) behind ``ModelClient``.

One adapter serves OpenAI itself and the OpenAI-compatible local servers
(vLLM, Ollama, llama.cpp): only ``base_url``, ``api_key`` (a placeholder such as
``"not-needed"`` for local servers) and the recorded ``provider`` name differ.

The SDK's own retries are off (``max_retries=0``): the caller owns retries.

OpenAI's ``prompt_tokens`` *includes* cached prompt tokens, while this layer's
``tokens_in`` excludes them (see :mod:`agents.cost`), so ``tokens_in`` is
``prompt_tokens - cached_tokens``.
"""

from __future__ import annotations

from typing import Literal

import openai
from openai.types.chat import (
    ChatCompletionAssistantMessageParam,
    ChatCompletionMessageParam,
    ChatCompletionSystemMessageParam,
    ChatCompletionUserMessageParam,
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

__all__ = ["OpenAICompatibleModel"]


def _message_param(role: str, content: str) -> ChatCompletionMessageParam:
    """Build one SDK message, rejecting roles this layer does not send."""
    if role == "user":
        return ChatCompletionUserMessageParam(role="user", content=content)
    if role == "assistant":
        return ChatCompletionAssistantMessageParam(role="assistant", content=content)
    msg = f"chat messages take roles user/assistant here, not {role!r}"
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
        messages.extend(_message_param(m.role, m.content) for m in request.messages)
        use_completion_tokens = self._max_tokens_param == "max_completion_tokens"
        try:
            completion = await self._client.chat.completions.create(
                model=request.model,
                messages=messages,
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
                    name=call.function.name,
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
