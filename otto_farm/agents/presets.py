"""Command presets for coding CLIs (config/agent-presets.toml) and parsers for what those CLIs print.

A preset gives the `command` agent a command line, the names of the secrets it may pass on, and how to
read the CLI's stdout: Claude Code's JSON result object, Codex's JSONL event stream, or plain text.
"""

from __future__ import annotations

import functools
import json
import os
import re
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
    output: Literal["claude_json", "codex_jsonl", "aider_text", "text"] = "text"
    env: dict[str, str] = {}  # set for the CLI as given
    env_passthrough: list[str] = []  # copied from the worker's environment, where set
    # A line the CLI prints while it cannot reach its API (a regular expression): seen UNREACHABLE_LINES
    # times, the attempt ends as an API error, where the CLI itself would wait without end.
    unreachable: str | None = None

    def passthrough_env(self, source: dict[str, str] | None = None) -> dict[str, str]:
        """The preset's `env`, then the listed variables that are set in `source` (default: this
        process's environment): what the preset adds to the CLI's scrubbed environment."""
        env = os.environ if source is None else source
        return {**self.env, **{name: env[name] for name in self.env_passthrough if name in env}}


@dataclass(frozen=True)
class ParsedOutput:
    """What a CLI reported about its own run."""

    final_message: str
    usage: Usage
    stop_reason: str  # end_turn | max_turns | max_cost | error | ...
    ok: bool
    error: str | None = None
    infrastructure: bool = False  # the API failed the CLI (e.g. a 400): another attempt would too


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
# modelUsage's fields (per model, subagents' calls included) and the result's `usage` fields (top-level
# calls only, all zero when Claude Code fell back from streaming): the same counts under two spellings.
CLAUDE_MODEL_USAGE = ("inputTokens", "outputTokens", "cacheReadInputTokens", "cacheCreationInputTokens")
CLAUDE_USAGE = ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")


def parse_claude_json(stdout: str) -> ParsedOutput | None:
    """Claude Code's result object (`claude -p --output-format json`, or the last line of `stream-json`).

    Tokens are modelUsage's, summed over its models; an API error (`api_error_status`) is labelled
    `api_error <status>`, and tools the CLI refused (`permission_denials`) fail an otherwise clean run.
    """
    result = next((obj for obj in _json_objects(stdout) if obj.get("type") == "result"), None)
    if result is None:
        return None
    subtype = result.get("subtype")
    raw_errors = result.get("errors")
    errors = [str(e) for e in raw_errors if e] if isinstance(raw_errors, list) else []
    reply = result.get("result")
    text = reply if isinstance(reply, str) else "; ".join(errors)
    status = result.get("api_error_status")
    denied = _claude_denials(result.get("permission_denials"))
    failed = result.get("is_error") is True or subtype not in (None, "success")
    if isinstance(status, int) and failed:
        stop_reason, label = "api_error", f"api_error {status}"
    elif failed:
        stop_reason = CLAUDE_STOP_REASONS.get(str(subtype), "error")
        label = stop_reason if stop_reason != "error" else str(subtype if subtype != "success" else "error")
    elif denied:
        stop_reason, label = "permission_denied", f"permission_denied: {', '.join(denied)}"
    else:
        reported = result.get("stop_reason")
        stop_reason, label = (reported if isinstance(reported, str) and reported else "end_turn"), ""
    return ParsedOutput(
        final_message=text,
        usage=_claude_usage(result),
        stop_reason=stop_reason,
        ok=not label,
        error=(f"{label}: {text}" if text else label) if label else None,
        infrastructure=stop_reason == "api_error",
    )


def _claude_usage(result: dict[str, Any]) -> Usage:
    per_model = [u for u in _dict(result.get("modelUsage")).values() if isinstance(u, dict)]
    fields, sources = (
        (CLAUDE_MODEL_USAGE, per_model) if per_model else (CLAUDE_USAGE, [_dict(result.get("usage"))])
    )
    counts = [sum(pricing.count(u.get(name)) for u in sources) for name in fields]
    return Usage(
        input_tokens=counts[0],
        output_tokens=counts[1],
        cache_read_tokens=counts[2],
        cache_write_tokens=counts[3],
        # Older releases named the field cost_usd.
        cost_usd=pricing.amount(result.get("total_cost_usd", result.get("cost_usd"))),
    )


def _claude_denials(denials: Any) -> list[str]:
    """What Claude Code refused to run: a shell command's program (`python3`), else the tool's name."""
    names: list[str] = []
    for denial in denials if isinstance(denials, list) else []:
        tool_input = _dict(_dict(denial).get("tool_input"))
        command = tool_input.get("command")
        words = command.split() if isinstance(command, str) else []
        name = words[0] if words else str(_dict(denial).get("tool_name") or "tool")
        if name not in names:
            names.append(name)
    return names


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
            written = pricing.count(counts.get("cache_write_input_tokens"))
            # Codex counts cached and cache-written tokens inside input_tokens; otto-farm's Usage keeps
            # them apart.
            usage = usage + Usage(
                input_tokens=max(pricing.count(counts.get("input_tokens")) - cached - written, 0),
                output_tokens=pricing.count(counts.get("output_tokens")),
                cache_read_tokens=cached,
                cache_write_tokens=written,
            )
        elif kind in ("turn.failed", "error"):
            error = event.get("error") if kind == "turn.failed" else event
            failure = str(error.get("message") or kind) if isinstance(error, dict) else kind
    if not seen:
        return None
    ok = completed and failure is None
    if not ok and failure is None:
        failure = "no turn.completed event"
    status = CODEX_STATUS.search(failure or "")
    return ParsedOutput(
        final_message=message or (failure or ""),
        usage=usage,
        stop_reason="end_turn" if ok else "api_error" if status else "error",
        ok=ok,
        error=f"api_error {status.group(1)}: {failure}" if status else failure,
        infrastructure=status is not None,
    )


CODEX_STATUS = re.compile(r"^unexpected status (\d{3})\b")  # how Codex words the API's error answer


AIDER_COUNT = r"([\d.]+k?)"  # aider's format_tokens: 950, 2.1k, 12k
AIDER_TOKENS = re.compile(
    rf"^Tokens: {AIDER_COUNT} sent(?:, {AIDER_COUNT} cache write)?(?:, {AIDER_COUNT} cache hit)?"
    rf", {AIDER_COUNT} received\.",
    re.M,
)
AIDER_COST = re.compile(r"Cost: \$([\d.]+) message", re.M)
# litellm's exception classes, as aider prints them ("litellm.BadRequestError: ..."), by HTTP status.
AIDER_API_ERRORS = re.compile(r"^litellm\.(\w+Error): (.*)", re.M)
LITELLM_STATUS = {
    "BadRequestError": 400,
    "AuthenticationError": 401,
    "PermissionDeniedError": 403,
    "NotFoundError": 404,
    "ContextWindowExceededError": 400,
    "RateLimitError": 429,
    "InternalServerError": 500,
    "ServiceUnavailableError": 503,
}
AIDER_GAVE_UP = re.compile(r"^Only \d+ reflections allowed, stopping\.$", re.M)


def parse_aider_text(stdout: str) -> ParsedOutput | None:
    """Aider's printed report (`--no-pretty`): each reply's Tokens/Cost line summed, and what ended it.

    Aider exits 0 after an API error and after giving up on edits it could not apply, so those are read
    from its output: `api_error <status>` (an API failure, as the CLI met it) or `max_reflections`.
    """
    usage = Usage()
    for sent, written, hit, received in AIDER_TOKENS.findall(stdout):
        cache_write, cache_read = _aider_count(written), _aider_count(hit)
        # aider 0.86.2 with litellm adds cache-write tokens to "sent" twice (litellm's prompt_tokens holds
        # them already), and the cache hits once.
        sent_in = _aider_count(sent) - cache_read - 2 * cache_write
        usage = usage + Usage(
            input_tokens=max(sent_in, 0),
            output_tokens=_aider_count(received),
            cache_read_tokens=cache_read,
            cache_write_tokens=cache_write,
        )
    cost = sum(float(c) for c in AIDER_COST.findall(stdout) if c.count(".") <= 1)
    usage = usage.model_copy(update={"cost_usd": pricing.amount(cost)})
    lines = [line.strip() for line in stdout.splitlines() if line.strip()]
    final = lines[-1] if lines else ""
    if api := AIDER_API_ERRORS.search(stdout):
        kind, message = api.groups()
        status = LITELLM_STATUS.get(kind)
        label = f"api_error {status}" if status else f"api_error {kind}"
        return ParsedOutput(final, usage, "api_error", False, f"{label}: {message}", infrastructure=True)
    if gave_up := AIDER_GAVE_UP.search(stdout):
        return ParsedOutput(final, usage, "max_reflections", False, f"max_reflections: {gave_up.group(0)}")
    return ParsedOutput(final, usage, "end_turn", True)


def _aider_count(text: str) -> int:
    if not text:
        return 0
    try:
        return round(float(text[:-1]) * 1000) if text.endswith("k") else int(float(text))
    except ValueError:
        return 0


PARSERS: dict[str, Callable[[str], ParsedOutput | None]] = {
    "claude_json": parse_claude_json,
    "codex_jsonl": parse_codex_jsonl,
    "aider_text": parse_aider_text,
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
