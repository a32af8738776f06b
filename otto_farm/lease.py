"""A job's lease: who runs it right now, kept alive by a heartbeat, gone soon after its holder dies.

Celery on Redis redelivers a message that was not acked in time, and the reconciler re-sends a job
whose worker vanished, so two deliveries of one job can meet. Whichever takes the lease runs it; the
other waits for its result. A job holds the lease while it runs, renewed by the process's heartbeat
thread every third of its time to live; a claim (the job id in the run's claims set) says it started
and has not finished, so a claim without a lease is a job whose worker died.

Taking the lease and letting it go are one round trip each: jobs are many, and short ones are
dominated by their round trips.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import redis

from otto_farm import keys

DEFAULT_TTL_S = 30.0
LOCK_TTL_S = 10.0  # a dead holder's lock is free this long after its last heartbeat
T = TypeVar("T")

# Renew only our own lease: after a lapse, another delivery's token is there.
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""
# Let go of a lock only while it is ours.
_UNLOCK = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""
# Let go, and drop the claim if the job finished, unless another delivery took over (the claim is then
# its own).
_RELEASE = """
local holder = redis.call('get', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
if holder then redis.call('del', KEYS[1]) end
if ARGV[3] == '1' then redis.call('srem', KEYS[2], ARGV[2]) end
return 1
"""


class _Heartbeat:
    """Keeps a key holding `token` alive, renewed every third of `ttl_s` by the process's heartbeat
    thread (`_Beats`); `lost` once another holds it."""

    def __init__(self, client: redis.Redis, key: str, token: str, ttl_s: float) -> None:
        self.key, self.token, self.ttl_s = key, token, ttl_s
        self._renew = client.register_script(_RENEW)
        self.lost = threading.Event()
        _BEATS.add(self)

    def renew(self) -> bool:
        """False once the key lapsed (a long pause) and another holder took over; an unreachable store
        counts as kept, for now: the next beat tries again before the key runs out."""
        try:
            return bool(self._renew(keys=[self.key], args=[self.token, int(self.ttl_s * 1000)]))
        except redis.RedisError:
            return True

    def stop(self) -> None:
        _BEATS.remove(self)


class _Beats:
    """The process's one heartbeat thread, for all its leases and locks: a job no longer starts a thread
    of its own. Started on first use in each process (a forked pool process starts its own)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._due: dict[_Heartbeat, float] = {}
        self._pid: int | None = None

    def add(self, beat: _Heartbeat) -> None:
        with self._lock:
            self._due[beat] = time.monotonic() + beat.ttl_s / 3
            if self._pid != os.getpid():
                self._pid = os.getpid()
                threading.Thread(target=self._run, name="otto-farm heartbeats", daemon=True).start()
        self._wake.set()  # its beat may be due before the thread's next

    def remove(self, beat: _Heartbeat) -> None:
        with self._lock:
            self._due.pop(beat, None)

    def _run(self) -> None:
        while True:
            with self._lock:
                now = time.monotonic()
                due = [b for b, at in self._due.items() if at <= now]
            for beat in due:  # outside the lock: a slow store must not hold up a job's start or end
                kept = beat.renew()
                with self._lock:
                    if beat not in self._due:
                        continue  # stopped meanwhile
                    if kept:
                        self._due[beat] = time.monotonic() + beat.ttl_s / 3
                    else:
                        del self._due[beat]
                        beat.lost.set()
            with self._lock:
                wait_s = min(self._due.values(), default=time.monotonic() + 60) - time.monotonic()
            self._wake.wait(max(wait_s, 0))
            self._wake.clear()


_BEATS = _Beats()


class Lease:
    def __init__(self, client: redis.Redis, run_id: str, job_id: str, ttl_s: float = DEFAULT_TTL_S) -> None:
        self.redis, self.run_id, self.job_id, self.ttl_s = client, run_id, job_id, ttl_s
        self._keys = [keys.lease_key(job_id), keys.claims_key(run_id)]
        self._token = secrets.token_hex(8)
        self._release = client.register_script(_RELEASE)
        self._beat: _Heartbeat | None = None
        self.lost = threading.Event()  # set when someone else holds it now: stop and let them finish

    def acquire(self) -> bool:
        """Take the lease, claim the job and start the heartbeat; False while another delivery holds it.

        The claim goes in the same transaction: when the lease is taken, the holder has claimed the job
        already, so adding it again changes nothing.
        """
        with self.redis.pipeline() as pipe:
            pipe.set(self._keys[0], self._token, nx=True, px=int(self.ttl_s * 1000))
            pipe.sadd(self._keys[1], self.job_id)
            taken, _ = pipe.execute()
        if not taken:
            return False
        self._beat = _Heartbeat(self.redis, self._keys[0], self._token, self.ttl_s)
        self.lost = self._beat.lost
        return True

    def release(self, finished: bool = True) -> None:
        """Stop the heartbeat, then let go and, if the job finished, drop its claim, in one step.

        A job cut short without its result stored (Celery's hard time limit sends SIGTERM before
        SIGKILL, so its `finally` runs) keeps its claim: the sweep finds it claimed with no lease, lost.
        """
        if self._beat is not None:
            self._beat.stop()
        if not self.lost.is_set():
            self._release(keys=self._keys, args=[self._token, self.job_id, int(finished)])


class Lock:
    """A lock on a run's transitions (or the sweep): kept by a heartbeat while its holder lives, so a
    dead holder frees it within `ttl_s`, where a lock with a long fixed lease stalled a run for minutes."""

    def __init__(self, client: redis.Redis, key: str, ttl_s: float = LOCK_TTL_S) -> None:
        self.redis, self.key, self.ttl_s = client, key, ttl_s
        self._token = secrets.token_hex(8)
        self._unlock = client.register_script(_UNLOCK)
        self._beat: _Heartbeat | None = None

    def acquire(self, wait_s: float) -> bool:
        """Take it, waiting up to `wait_s` for its holder (0: only if it is free now)."""
        deadline = time.monotonic() + wait_s
        while not self.redis.set(self.key, self._token, nx=True, px=int(self.ttl_s * 1000)):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        self._beat = _Heartbeat(self.redis, self.key, self._token, self.ttl_s)
        return True

    def release(self) -> None:
        if self._beat is not None:
            self._beat.stop()
        self._unlock(keys=[self.key], args=[self._token])


def alive(client: redis.Redis, job_id: str) -> bool:
    return bool(client.exists(keys.lease_key(job_id)))


def claims(client: redis.Redis, run_id: str) -> set[str]:
    """Jobs of the run that started and have not finished: running, or lost with their worker."""
    return set(client.smembers(keys.claims_key(run_id)))  # type: ignore[arg-type]


def drop_claim(client: redis.Redis, run_id: str, job_id: str) -> None:
    """Forget a lost job's claim once it is sent again, so it counts as lost only if the new one dies."""
    client.srem(keys.claims_key(run_id), job_id)


def run_once(
    client: redis.Redis,
    run_id: str,
    job_id: str,
    ttl_s: float,
    stored: Callable[[], T | None],
    work: Callable[[Lease], T],
    keep: Callable[[T], T],
) -> T:
    """One delivery's share of a job: the stored result if there is one; else, under the job's lease,
    `work`'s result, kept by `keep` (the first kept wins) before the lease is let go, so a delivery
    waiting for it finds it. A delivery that finds the lease held waits, or takes over once it lapses;
    a holder whose lease was taken over keeps nothing (the other one's result counts).
    """
    while True:
        if (found := stored()) is not None:
            return found
        lease = Lease(client, run_id, job_id, ttl_s)
        if not lease.acquire():
            time.sleep(min(1.0, ttl_s / 3))
            continue
        kept: T | None = None
        try:
            result = work(lease)
            if not lease.lost.is_set():
                kept = keep(result)
                return kept
        finally:
            lease.release(finished=kept is not None)
