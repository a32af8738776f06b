"""Coding agents behind one protocol, looked up by the config's short provider name."""

from __future__ import annotations

from collections.abc import Callable

from otto_farm.agents.base import Agent, AgentOutcome, AgentRequest
from otto_farm.agents.command import CommandAgent
from otto_farm.models import AgentConfig


def _anthropic_agent() -> Agent:
    # Imported on first use: the anthropic SDK takes seconds to import, which every CLI call would pay.
    from otto_farm.agents.anthropic_agent import AnthropicAgent

    return AnthropicAgent()


AGENTS: dict[str, Callable[[], Agent]] = {"command": CommandAgent, "anthropic": _anthropic_agent}


def get_agent(config: AgentConfig) -> Agent:
    return AGENTS[config.provider]()


__all__ = ["AGENTS", "Agent", "AgentOutcome", "AgentRequest", "get_agent"]
