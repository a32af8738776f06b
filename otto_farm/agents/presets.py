"""Command presets for coding CLIs (config/agent-presets.toml) and parsers for what those CLIs print.

A preset gives the `command` agent a command line, the names of the secrets it may pass on, and how to
read the CLI's stdout: Claude Code's JSON result object, Codex's JSONL event stream, or plain text.
"""

from __future__ import annotations

import functools
import json
import os
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from otto_farm import pricing
from otto_farm.errors import OttoFarmError
from otto_farm.models import Strict, Usage
from otto_farm.resources import data_dir

PRESETS_FILE = "agent-presets.toml"


class Preset(Strict):
    """One table of the presets file."""

    command: str
    output: Literal["claude_json", "codex_jsonl", "text"] = "text"
    env_passthrough: list[str] = []  # copied from the worker's environment, where set

    def passthrough_env(self, source: dict[str, str] | None = None) -> dict[str, str]:
        """The listed variables that are set in `source` (default: this process's environment)."""
        env = os.environ if source is None else source
        return {name: env[name] for name in self.env_passthrough if name in env}


@dataclass(frozen=True)
class ParsedOutput:
    """What a CLI reported about its own run."""

    final_message: str
    usage: Usage
    stop_reason: str  # end_turn | max_turns | max_cost | error | ...
    ok: bool
    error: str | None = None


def presets_path() -> Path:
    return data_dir("config", PRESETS_FILE) / PRESETS_FILE


@functools.cache
def load_presets(path: Path | None = None) -> dict[str, Preset]:
    """Every preset in `path` (default: the packaged config/agent-presets.toml), by name."""
    path = path or presets_path()
    try:
        tables = tomllib.loads(path.read_text())
        return {name: Preset.model_validate(table) for name, table in tables.items()}
    except (OSError, tomllib.TOMLDecodeError, ValidationError) as exc:
        raise OttoFarmError(f"{path}: {str(exc).splitlines()[0]}") from None


def get_preset(name: str) -> Preset:
    """The named preset; KeyError for an unknown name."""
    return load_presets()[name]


def parse_output(output: str, stdout: str) -> ParsedOutput | None:
    """The CLI's report from its stdout, or None when the format is `text` or stdout does not fit it."""
    parser = PARSERS.get(output)
    return parser(stdout) if parser else None


CLAUDE_STOP_REASONS = {"error_max_turns": "max_turns", "error_max_budget_usd": "max_cost"}


def parse_claude_json(stdout: str) -> ParsedOutput | None:
    """Claude Code's result object (`claude -p --output-format json`, or the last line of `stream-json`)."""
    result = next((obj for obj in _json_objects(stdout) if obj.get("type") == "result"), None)
    if result is None:
        return None
    usage = _dict(result.get("usage"))
    subtype = result.get("subtype")
    raw_errors = result.get("errors")
    errors = [str(e) for e in raw_errors if e] if isinstance(raw_errors, list) else []
    reply = result.get("result")
    text = reply if isinstance(reply, str) else "; ".join(errors)
    ok = result.get("is_error") is not True and subtype in (None, "success")
    if ok:
        reported = result.get("stop_reason")
        stop_reason = reported if isinstance(reported, str) and reported else "end_turn"
    else:
        stop_reason = CLAUDE_STOP_REASONS.get(str(subtype), "error")
    return ParsedOutput(
        final_message=text,
        usage=Usage(
            input_tokens=pricing.count(usage.get("input_tokens")),
            output_tokens=pricing.count(usage.get("output_tokens")),
            cache_read_tokens=pricing.count(usage.get("cache_read_input_tokens")),
            cache_write_tokens=pricing.count(usage.get("cache_creation_input_tokens")),
            # Older releases named the field cost_usd.
            cost_usd=pricing.amount(result.get("total_cost_usd", result.get("cost_usd"))),
        ),
        stop_reason=stop_reason,
        ok=ok,
        error=None if ok else f"{subtype or 'error'}: {text}" if text else str(subtype or "error"),
    )


def parse_codex_jsonl(stdout: str) -> ParsedOutput | None:
    """Codex's event stream (`codex exec --json`): the last agent message, the turns' usage summed."""
    usage, message, failure, seen, completed = Usage(), "", None, False, False
    for event in _json_lines(stdout):
        kind = event.get("type")
        if not isinstance(kind, str):
            continue
        seen = True
        item = event.get("item")
        if kind == "item.completed" and isinstance(item, dict) and item.get("type") == "agent_message":
            message = str(item.get("text") or "")
        elif kind == "turn.completed":
            completed, failure = True, None
            counts = _dict(event.get("usage"))
            cached = pricing.count(counts.get("cached_input_tokens"))
            # Codex counts cached tokens inside input_tokens; otto-farm's Usage keeps them apart.
            usage = usage + Usage(
                input_tokens=max(pricing.count(counts.get("input_tokens")) - cached, 0),
                output_tokens=pricing.count(counts.get("output_tokens")),
                cache_read_tokens=cached,
            )
        elif kind in ("turn.failed", "error"):
            error = event.get("error") if kind == "turn.failed" else event
            failure = str(error.get("message") or kind) if isinstance(error, dict) else kind
    if not seen:
        return None
    ok = completed and failure is None
    if not ok and failure is None:
        failure = "no turn.completed event"
    return ParsedOutput(
        final_message=message or (failure or ""),
        usage=usage,
        stop_reason="end_turn" if ok else "error",
        ok=ok,
        error=failure,
    )


PARSERS: dict[str, Callable[[str], ParsedOutput | None]] = {
    "claude_json": parse_claude_json,
    "codex_jsonl": parse_codex_jsonl,
}


def _json_objects(stdout: str) -> Iterator[dict[str, Any]]:
    """The whole of stdout as one object, else its lines that are objects, last first."""
    try:
        whole = json.loads(stdout)
    except ValueError:
        whole = None
    if isinstance(whole, dict):
        yield whole
        return
    yield from reversed(list(_json_lines(stdout)))


def _json_lines(stdout: str) -> Iterator[dict[str, Any]]:
    # A capped capture may start mid-line, and CLIs mix in plain log lines: skip what is not an object.
    for line in stdout.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            yield obj


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
