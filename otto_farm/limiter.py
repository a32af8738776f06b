"""One rate limiter for the fleet: every worker's Messages API calls for one API key share its limits.

The limits (requests, input and output tokens per minute) belong to the key, so they live in the farm's
Redis, where every worker on every machine takes its share before a call. Each limit is a token bucket
that refills at limit/60 per second up to one minute's worth; a call takes from all of them at once or
waits. A call's input is estimated before it is sent and settled after, from the usage the API reports
(the difference is refunded or owed). A 429's `retry-after` pauses every worker's calls for that key.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

import redis

from otto_farm import keys
from otto_farm.models import Limits

# Redis's clock, so workers on machines whose clocks differ share one timeline. Before Redis 7 a script
# must ask for effects replication to write after reading the time.
_NOW = """
pcall(redis.replicate_commands)
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
"""
# KEYS[1]: the key's hash. ARGV: force (1: take even into debt, never wait), then name, per-minute
# capacity and cost per bucket. Returns how long to wait (as a string: Redis truncates Lua numbers), 0 taken.
_TAKE = (
    _NOW
    + """
local pause = tonumber(redis.call('HGET', KEYS[1], 'pause_until') or '0')
local force = ARGV[1] == '1'
if pause > now and not force then return tostring(pause - now) end
local levels, wait = {}, 0
for i = 2, #ARGV, 3 do
  local name, cap, cost = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local level = tonumber(redis.call('HGET', KEYS[1], name) or cap)
  local at = tonumber(redis.call('HGET', KEYS[1], name .. ':at') or now)
  level = math.min(cap, level + (now - at) * cap / 60)
  levels[i] = level
  -- A call larger than the bucket waits for a full bucket, then goes into debt.
  local need = math.min(cost, cap)
  if level < need then wait = math.max(wait, (need - level) * 60 / cap) end
end
if wait > 0 and not force then return tostring(wait) end
for i = 2, #ARGV, 3 do
  redis.call('HSET', KEYS[1], ARGV[i], math.min(tonumber(ARGV[i + 1]), levels[i] - tonumber(ARGV[i + 2])),
    ARGV[i] .. ':at', now)
end
redis.call('EXPIRE', KEYS[1], 3600)
return '0'
"""
)
_PAUSE = (
    _NOW
    + """
local until_ = now + tonumber(ARGV[1])
if until_ > tonumber(redis.call('HGET', KEYS[1], 'pause_until') or '0') then
  redis.call('HSET', KEYS[1], 'pause_until', until_)
  redis.call('EXPIRE', KEYS[1], 3600)
end
"""
)
POLL_S = 1.0  # at most this long between looks while waiting: a pause or refund may end it sooner


def key_id(api_key: str | None, base_url: str | None) -> str:
    """Which limits a call counts against: a fingerprint of the key and where it is sent, never the key."""
    return hashlib.sha256(f"{base_url or ''}\0{api_key or ''}".encode()).hexdigest()[:16]


def estimate_tokens(payload: Any) -> int:
    """A call's input tokens before it is sent: about four characters a token, rounded up."""
    return len(str(payload)) // 4 + 1


class Limiter:
    def __init__(self, client: redis.Redis, key: str, limits: Limits) -> None:
        self.key = keys.limiter_key(key)
        self.limits = limits
        self._take = client.register_script(_TAKE)
        self._pause = client.register_script(_PAUSE)

    def _args(self, requests: int, input_tokens: int, output_tokens: int) -> list[Any]:
        out: list[Any] = []
        for name, cap, cost in (
            ("requests", self.limits.requests_per_minute, requests),
            ("input", self.limits.input_tokens_per_minute, input_tokens),
            ("output", self.limits.output_tokens_per_minute, output_tokens),
        ):
            if cap is not None:
                out += [name, cap, cost]
        return out

    def take(
        self,
        input_tokens: int,
        output_tokens: int,
        waiting: Callable[[float], None] | None = None,
        deadline: float | None = None,
    ) -> float:
        """Take one request and these tokens, waiting as long as the limits ask; the seconds waited.

        `waiting(seconds_so_far)` is told while it waits (the task's phase shows it). Past `deadline`
        (time.monotonic()), TimeoutError.
        """
        start = time.monotonic()
        args = self._args(1, input_tokens, output_tokens)
        waited = 0.0
        while (wait := float(self._take(keys=[self.key], args=["0", *args]))) > 0:
            waited = time.monotonic() - start
            if deadline is not None and time.monotonic() + min(wait, POLL_S) > deadline:
                raise TimeoutError(f"waited {waited:.0f} s for the API's rate limit")
            if waiting is not None:
                waiting(waited)
            time.sleep(min(wait, POLL_S))
            waited = time.monotonic() - start
        return waited

    def settle(self, input_delta: int, output_delta: int) -> None:
        """The call's real usage minus what `take` reserved: owed (positive) or refunded (negative)."""
        if args := self._args(0, input_delta, output_delta):
            self._take(keys=[self.key], args=["1", *args])

    def pause(self, seconds: float) -> None:
        """No call for this key from any worker for `seconds` (a 429's retry-after)."""
        self._pause(keys=[self.key], args=[max(0.0, seconds)])
