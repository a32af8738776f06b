"""Run state in Redis: one JSON run record per run, updated atomically, and an event stream per run."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, cast

import redis

from otto_farm import keys
from otto_farm.errors import InfrastructureError, InputError
from otto_farm.models import RunRecord

EVENTS_MAXLEN = 10_000
CANCEL_TTL_S = 7 * 24 * 3600  # long after any job of the run could still be running


def new_run_id() -> str:
    """Sorts by creation time; the random tail keeps two runs of one second apart."""
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


class Store:
    """Run records and events on one Redis connection pool."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    @classmethod
    def from_url(cls, url: str) -> Store:
        return cls(redis.Redis.from_url(url, decode_responses=True, health_check_interval=30))

    def ping(self) -> None:
        try:
            self.redis.ping()
        except redis.RedisError as exc:
            raise InfrastructureError(f"run store unreachable: {exc}") from exc

    def create(self, record: RunRecord) -> None:
        if not self.redis.set(keys.run_key(record.run_id), record.model_dump_json(), nx=True):
            raise InfrastructureError(f"run {record.run_id} exists already")
        self.redis.zadd(keys.runs_index_key(), {record.run_id: record.created_at.timestamp()})
        self.redis.sadd(keys.active_runs_key(), record.run_id)
        self.emit(record.run_id, "run_started", total=len(record.tasks))

    def get(self, run_id: str) -> RunRecord:
        raw = self.redis.get(keys.run_key(run_id))
        if raw is None:
            raise InputError("run", run_id, "no such run")
        return RunRecord.model_validate_json(raw)

    def update(self, run_id: str, change: Callable[[RunRecord], None]) -> RunRecord:
        """Apply `change` to the record under WATCH/MULTI, retrying on a concurrent write.

        `change` may run more than once, so it must only touch the record it is given.
        """
        key = keys.run_key(run_id)
        while True:
            with self.redis.pipeline() as pipe:
                try:
                    pipe.watch(key)
                    raw = pipe.get(key)
                    if raw is None:
                        raise InputError("run", run_id, "no such run")
                    record = RunRecord.model_validate_json(raw)
                    change(record)
                    pipe.multi()
                    pipe.set(key, record.model_dump_json())
                    pipe.execute()
                    return record
                except redis.WatchError:
                    continue

    def run_ids(self, limit: int = 50) -> list[str]:
        return cast(list[str], self.redis.zrevrange(keys.runs_index_key(), 0, limit - 1))

    def active_runs(self) -> list[str]:
        """Runs the reconciler looks after: those not yet seen ended."""
        return sorted(cast(set[str], self.redis.smembers(keys.active_runs_key())))

    def retire(self, run_id: str) -> None:
        self.redis.srem(keys.active_runs_key(), run_id)

    def emit(self, run_id: str, kind: str, **fields: Any) -> None:
        entry: dict[Any, Any] = {"kind": kind, "ts": f"{time.time():.3f}"}
        entry.update({k: str(v) for k, v in fields.items() if v is not None})
        self.redis.xadd(keys.events_key(run_id), entry, maxlen=EVENTS_MAXLEN, approximate=True)

    def events(
        self, run_id: str, after: str = "0", block_ms: int | None = None
    ) -> list[tuple[str, dict[str, str]]]:
        """Events after the id `after`; with `block_ms`, wait that long for the first new one."""
        reply = cast(list[Any], self.redis.xread({keys.events_key(run_id): after}, block=block_ms))
        return [(eid, data) for _, entries in reply for eid, data in entries] if reply else []

    def request_cancel(self, run_id: str) -> None:
        self.redis.set(keys.cancel_key(run_id), "1", ex=CANCEL_TTL_S)

    def cancel_requested(self, run_id: str) -> bool:
        return bool(self.redis.exists(keys.cancel_key(run_id)))

    def lock(self, run_id: str, timeout_s: float) -> Any:
        """A lease serialising a run's batch callbacks; expires if its holder dies."""
        return self.redis.lock(keys.batch_lock_key(run_id), timeout=timeout_s, blocking_timeout=timeout_s)
