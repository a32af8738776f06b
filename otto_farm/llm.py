"""The pilot's LLM client: the protocol `pilot.ask` calls, and the Messages API behind it.

Real and scripted servers plug in the same way: a test points the SDK at otto_farm.scripted_server.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Protocol, cast

from pydantic import BaseModel

from otto_farm.meter import Meter
from otto_farm.models import Usage

MAX_TOKENS = 4096
# An answer is at most MAX_TOKENS of output (~16 KB); anything far larger is not a model's answer, and is
# cut before it reaches a process boundary or the run record.
MAX_ANSWER_CHARS = 64 * 1024


class LLMReply(BaseModel):
    tool_input: dict[str, Any] | None = None
    text: str = ""
    usage: Usage = Usage()


class LLMClient(Protocol):
    def call(
        self, *, model: str, system: str, prompt: str, tool: dict[str, Any], timeout_s: float
    ) -> LLMReply: ...


class AnthropicClient:
    """The Messages API through the anthropic SDK; key and base URL come from the environment. Its calls
    share the fleet's rate limit and the run's budget through `meter`."""

    def __init__(self, meter: Meter | None = None) -> None:
        self.meter = meter or Meter()

    def call(
        self, *, model: str, system: str, prompt: str, tool: dict[str, Any], timeout_s: float
    ) -> LLMReply:
        import anthropic  # here, not at the top: the SDK takes seconds to import, and the CLI never needs it
        from anthropic.types import ToolChoiceToolParam, ToolParam

        choice: ToolChoiceToolParam = {"type": "tool", "name": tool["name"]}
        messages: Any = [{"role": "user", "content": prompt}]
        with anthropic.Anthropic(max_retries=0) as client:  # the meter waits out 429s and 529s

            def send(model: str, timeout: float) -> Any:
                return client.messages.with_raw_response.create(
                    model=model,
                    max_tokens=MAX_TOKENS,
                    system=system,
                    messages=messages,
                    tools=[cast(ToolParam, tool)],
                    tool_choice=choice,
                    timeout=timeout,
                )

            call = self.meter.call(
                send,
                model=model,
                payload=[system, messages, tool],
                max_tokens=MAX_TOKENS,
                deadline=time.monotonic() + timeout_s,
            )
        message, usage = call.response, call.usage
        # Only the forced tool is an answer: any other tool_use block is not a decision.
        tool_input = next(
            (b.input for b in message.content if b.type == "tool_use" and b.name == tool["name"]), None
        )
        text = "".join(b.text for b in message.content if b.type == "text")[:MAX_ANSWER_CHARS]
        return LLMReply(
            tool_input=tool_input if isinstance(tool_input, dict) else None, text=text, usage=usage
        )


# The SDK's own words for a missing key are a TypeError naming its constructor's arguments.
SDK_NO_KEY = "Could not resolve authentication method"
NO_KEY = "no API key: ANTHROPIC_API_KEY (or ANTHROPIC_AUTH_TOKEN) is not set where the pilot runs"


def has_key(env: Mapping[str, str]) -> bool:
    """Whether the anthropic SDK finds a key in this environment: without one, every call fails."""
    return bool(env.get("ANTHROPIC_API_KEY") or env.get("ANTHROPIC_AUTH_TOKEN"))
