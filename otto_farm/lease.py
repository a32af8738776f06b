"""A job's lease: who runs it right now, kept alive by a heartbeat, gone soon after its holder dies.

Celery on Redis redelivers a message that was not acked in time, and the reconciler re-sends a job
whose worker vanished, so two deliveries of one job can meet. Whichever takes the lease runs it; the
other waits for its result. A job holds the lease while it runs, renewing it from a thread every
third of its time to live; a claim (the job id in the run's claims set) says it started and has not
finished, so a claim without a lease is a job whose worker died.
"""

from __future__ import annotations

import contextlib
import threading

import redis
from redis.exceptions import LockError

from otto_farm import keys

DEFAULT_TTL_S = 30.0


class Lease:
    def __init__(self, client: redis.Redis, run_id: str, job_id: str, ttl_s: float = DEFAULT_TTL_S) -> None:
        self.redis, self.run_id, self.job_id, self.ttl_s = client, run_id, job_id, ttl_s
        # Not thread-local: the heartbeat thread renews the token the job's thread took.
        self._lock = client.lock(keys.lease_key(job_id), timeout=ttl_s, blocking=False, thread_local=False)
        self._stop = threading.Event()
        self.lost = threading.Event()  # set when someone else holds it now: stop and let them finish
        self._beat: threading.Thread | None = None

    def acquire(self) -> bool:
        """Take the lease and start the heartbeat; False while another delivery holds it."""
        if not self._lock.acquire():
            return False
        self.redis.sadd(keys.claims_key(self.run_id), self.job_id)
        self._beat = threading.Thread(target=self._heartbeat, name=f"lease {self.job_id}", daemon=True)
        self._beat.start()
        return True

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                self._lock.reacquire()
            except LockError:  # it lapsed (a long pause) and another delivery took over
                self.lost.set()
                return
            except redis.RedisError:
                continue  # the store is unreachable for now; try again before the lease runs out

    def release(self) -> None:
        """Stop the heartbeat, drop the claim (the job is over) and let go."""
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        if self.lost.is_set():
            return  # the claim is the new holder's now
        self.redis.srem(keys.claims_key(self.run_id), self.job_id)
        with contextlib.suppress(LockError):  # it lapsed after the last beat: nobody else's is touched
            self._lock.release()


def alive(client: redis.Redis, job_id: str) -> bool:
    return bool(client.exists(keys.lease_key(job_id)))


def claims(client: redis.Redis, run_id: str) -> set[str]:
    """Jobs of the run that started and have not finished: running, or lost with their worker."""
    return set(client.smembers(keys.claims_key(run_id)))  # type: ignore[arg-type]


def drop_claim(client: redis.Redis, run_id: str, job_id: str) -> None:
    """Forget a lost job's claim once it is sent again, so it counts as lost only if the new one dies."""
    client.srem(keys.claims_key(run_id), job_id)
