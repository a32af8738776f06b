"""The fleet's rate limiter on the test Redis: shared by processes, settled from usage, paused by 429s."""

from __future__ import annotations

import multiprocessing
import time

import pytest

from otto_farm.limiter import Limiter, key_id
from otto_farm.models import Limits
from otto_farm.store import Store


def limiter(store: Store, **limits: int) -> Limiter:
    return Limiter(store.redis, key_id("sk-test", "http://127.0.0.1:1"), Limits(**limits))


def test_the_key_id_names_no_secret():
    kid = key_id("sk-ant-secret", "https://api.example")
    assert "secret" not in kid and kid != key_id("sk-ant-other", "https://api.example")


def test_a_full_bucket_is_taken_at_once_then_calls_wait_for_the_refill(store):
    lim = limiter(store, requests_per_minute=60)  # one a second
    start = time.monotonic()
    assert all(lim.take(0, 0) == 0 for _ in range(60))
    waits: list[float] = []
    assert lim.take(0, 0, waiting=waits.append) > 0.5
    assert waits and time.monotonic() - start >= 0.9  # the 61st waited for one refill, visibly


def test_real_usage_is_settled_after_the_call(store):
    lim = limiter(store, input_tokens_per_minute=6000)  # 100 a second
    assert lim.take(1000, 0) == 0
    lim.settle(5000, 0)  # the call used 6000: the bucket is empty
    with pytest.raises(TimeoutError, match="rate limit"):
        lim.take(1000, 0, deadline=time.monotonic() + 2)  # needs 10 s of refill
    lim.settle(-6000, 0)  # a refund (the estimate was high) fills it again
    assert lim.take(1000, 0) == 0


def test_a_pause_holds_every_caller_of_the_key(store):
    lim, other = limiter(store, requests_per_minute=10_000), limiter(store, requests_per_minute=10_000)
    lim.pause(1.0)
    lim.pause(0.1)  # a shorter pause never shortens a longer one
    assert other.take(0, 0) >= 0.9


def _calls(url: str, seconds: float, out: multiprocessing.Queue) -> None:
    lim = limiter(Store.from_url(url), requests_per_minute=120)  # 2 a second, a bucket of 120
    end, times = time.monotonic() + seconds, []
    while time.monotonic() < end:
        lim.take(0, 0, deadline=end + 2)
        times.append(time.time())
    out.put(times)


def test_two_processes_share_one_limit(store, settings):
    lim = limiter(store, requests_per_minute=120)
    for _ in range(118):  # all but two of the bucket: the processes then live on the refill
        lim.take(0, 0)
    t0 = time.time()
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_calls, args=(settings.resolved_store_url, 3.0, out)) for _ in range(2)]
    for p in procs:
        p.start()
    made = [out.get(timeout=30), out.get(timeout=30)]
    for p in procs:
        p.join(10)
    assert all(made), made  # each process was served
    # Both together made no more calls than the two left and two a second refilled since: the limit is
    # the key's, where each process alone would have made as many.
    times = sorted(made[0] + made[1])
    assert len(times) <= 2 + 2 * (times[-1] - t0) + 1, (t0, times)
    assert len(times) >= 2 * 3.0 - 1  # and it is not starved: about two a second kept flowing
