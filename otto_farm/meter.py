"""Every Messages API call of the fleet, metered: the key's shared rate limit (limiter.py), the run's
budget (budget.py), and the answers that mean "not now" waited out instead of failing the task.

The Anthropic agent's calls and the pilot's go through `Meter.call`. The SDK's own retries are off
(`max_retries=0` at the call sites): a 429 pauses every worker's calls for the key for its
`retry-after`, a 529 backs off and, after FALLBACK_AFTER in a row, moves to the fallback model; neither
costs the task anything but time. An answer whose rate-limit headers say a limit is spent pauses the
fleet until that limit's reset, so the next call meets no 429. A turn that does not return within
`idle_s` is a stall, not a timeout. What the waiting cost is counted in the call's Usage
(limit_wait_s, rate_limited, overloaded). Waiting is not the agent's working time: every deadline the
meter keeps (`later`) moves by what it waited, up to WAIT_ALLOWANCE_S, which Celery's time limits of
the jobs that call the API leave room for (chords.py).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis

from otto_farm import pricing
from otto_farm.budget import Budget, BudgetSpent
from otto_farm.limiter import Limiter, estimate_tokens, key_id
from otto_farm.models import Limits, Usage

FALLBACK_AFTER = 3  # overloaded answers in a row before the fallback model is tried
SERVER_RETRIES = 2  # other server or connection errors: tried again this often, then the call fails
BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)  # after the n-th overload or server error in a row
RATE_LIMIT_PAUSE_S = 5.0  # a 429 that names no retry-after
WAIT_ALLOWANCE_S = 300.0  # the most a meter's waits move a job's deadline: the longest retry-after heeded


class CallFailed(Exception):
    """A call that cannot be made or did not return: `kind` says why (budget, timeout, stalled, api)."""

    def __init__(self, kind: str, message: str, usage: Usage) -> None:
        super().__init__(message)
        self.kind, self.usage = kind, usage


@dataclass
class Metered:
    response: Any  # the SDK's Message
    model: str  # the model that answered: the fallback after repeated overloads
    usage: Usage  # its tokens and cost, and what waiting for it cost


class Meter:
    def __init__(self, limiter: Limiter | None = None, budget: Budget | None = None) -> None:
        self.limiter, self.budget = limiter, budget
        self.waited_s = 0.0  # for the limits, a 429 or an overloaded API, over the meter's calls
        # Told True when a call starts waiting for the limit and False when it goes on: the task's phase.
        self.on_wait: Callable[[bool], None] | None = None

    @classmethod
    def for_run(cls, client: redis.Redis, run_id: str, cap_usd: float | None, limits: Limits) -> Meter:
        """The meter of one run's calls on this worker, for the API key and base URL it is configured with."""
        env = os.environ
        secret = env.get("ANTHROPIC_API_KEY") or env.get("ANTHROPIC_AUTH_TOKEN")
        key = key_id(secret, env.get("ANTHROPIC_BASE_URL"))
        return cls(Limiter(client, key, limits), Budget(client, run_id, cap_usd))

    def spend(self, usage: Usage) -> None:
        """Count a call made elsewhere (a command agent's CLI, whose cost comes when it exits)."""
        if self.budget is not None:
            self.budget.spend(usage.cost_usd)

    def later(self, deadline: float) -> float:
        """`deadline` (time.monotonic()) moved by what the calls waited, up to WAIT_ALLOWANCE_S."""
        return deadline + min(self.waited_s, WAIT_ALLOWANCE_S)

    def check(self) -> None:
        """BudgetSpent once the run has spent its cap."""
        if self.budget is not None:
            self.budget.check()

    def call(
        self,
        send: Callable[[str, float], Any],
        *,
        model: str,
        payload: Any,
        max_tokens: int,
        deadline: float,
        idle_s: float | None = None,
        fallback: str | None = None,
    ) -> Metered:
        """`send(model, timeout_s)` once the limits and budget allow, again after a 429 or 529, until it
        answers or `deadline` (time.monotonic(), moved by the waits: `later`) passes; CallFailed
        otherwise. `send` returns the SDK's raw response (`with_raw_response`), whose headers say what
        is left of the key's limits."""
        import anthropic  # here: the SDK takes seconds to import and the CLI imports the pilot

        waits = Usage()
        overloads = errors = 0
        estimate = estimate_tokens(payload)
        while True:
            try:
                self.check()
                waited = self._take(estimate, max_tokens, deadline + WAIT_ALLOWANCE_S)
                waits.limit_wait_s += waited
                self.waited_s += waited
            except BudgetSpent as exc:
                raise CallFailed("budget", str(exc), waits) from exc
            except TimeoutError as exc:  # the limits would have it wait past the deadline
                raise CallFailed("timeout", f"out of time: {exc}", waits) from exc
            left = self.later(deadline) - time.monotonic()
            if left <= 0:
                raise CallFailed("timeout", "no time left for the call", waits)
            timeout = min(left, idle_s) if idle_s else left
            try:
                raw = send(model, timeout)
                response = raw.parse()
            except anthropic.RateLimitError as exc:
                waits.rate_limited += 1
                self._refund(estimate, max_tokens)
                self._pause(_retry_after(exc.response.headers) or RATE_LIMIT_PAUSE_S, deadline)
                continue
            except anthropic.APITimeoutError as exc:
                self._refund(estimate, max_tokens)
                if idle_s is not None and idle_s < left:
                    raise CallFailed("stalled", f"Anthropic API: no answer in {idle_s:g} s", waits) from exc
                raise CallFailed(
                    "timeout", f"Anthropic API: APITimeoutError: {left:.1f} s left", waits
                ) from exc
            except (anthropic.InternalServerError, anthropic.APIConnectionError) as exc:
                self._refund(estimate, max_tokens)
                overloaded = isinstance(exc, anthropic.APIStatusError) and exc.status_code == 529
                if overloaded:
                    waits.overloaded += 1
                    overloads += 1
                    model = fallback if fallback and overloads >= FALLBACK_AFTER else model
                else:
                    errors += 1
                    if errors > SERVER_RETRIES:
                        raise CallFailed("api", _describe(exc), waits) from exc
                self._sleep(BACKOFF_S[min(overloads + errors, len(BACKOFF_S)) - 1], deadline)
                continue
            except anthropic.APIError as exc:  # the request itself is refused: asking again will not help
                self._refund(estimate, max_tokens)
                raise CallFailed("api", _describe(exc), waits) from exc
            if (spent_for := _spent_until(raw.headers)) is not None:
                self._pause(spent_for, deadline)
            usage = pricing.api_usage(model, response.usage)
            if self.limiter is not None:
                self.limiter.settle(usage.input_tokens - estimate, usage.output_tokens - max_tokens)
            self.spend(usage)
            return Metered(response, model, usage + waits + Usage(api_calls=1))

    def _take(self, estimate: int, max_tokens: int, deadline: float) -> float:
        if self.limiter is None:
            return 0.0
        told = False

        def waiting(_: float) -> None:
            nonlocal told
            if not told and self.on_wait is not None:
                self.on_wait(True)
            told = True

        try:
            waited = self.limiter.take(estimate, max_tokens, waiting, deadline)
        finally:
            if told and self.on_wait is not None:
                self.on_wait(False)
        return waited

    def _refund(self, estimate: int, max_tokens: int) -> None:
        """A call the API refused used no tokens: give back what `take` reserved."""
        if self.limiter is not None:
            self.limiter.settle(-estimate, -max_tokens)

    def _pause(self, seconds: float, deadline: float) -> None:
        if self.limiter is not None:
            self.limiter.pause(seconds)  # every worker's next take waits it out, counted there
        else:
            self._sleep(seconds, deadline)

    def _sleep(self, seconds: float, deadline: float) -> None:
        """Wait `seconds`, no further than `deadline` can move; counted as waited."""
        nap = max(0.0, min(seconds, deadline + WAIT_ALLOWANCE_S - time.monotonic()))
        time.sleep(nap)
        self.waited_s += nap


def _retry_after(headers: Any) -> float | None:
    """The seconds a 429 asks for: `retry-after-ms`, else `retry-after` (seconds), else None."""
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        try:
            value = float(headers.get(name) or "")
        except ValueError:
            continue
        if value > 0:
            return min(value / scale, 300.0)
    return None


def _spent_until(headers: Any) -> float | None:
    """Seconds until the latest reset of a limit the API says is spent (`anthropic-ratelimit-<limit>-
    remaining: 0`), or None."""
    waits = []
    for limit in ("requests", "tokens", "input-tokens", "output-tokens"):
        if headers.get(f"anthropic-ratelimit-{limit}-remaining") != "0":
            continue
        try:
            reset = datetime.fromisoformat(headers.get(f"anthropic-ratelimit-{limit}-reset") or "")
        except ValueError:
            continue
        waits.append(min((reset - datetime.now(UTC)).total_seconds(), 300.0))
    return max(waits) if waits and max(waits) > 0 else None


def _describe(exc: Exception) -> str:
    return f"Anthropic API: {type(exc).__name__}: {exc}"[:2000]
