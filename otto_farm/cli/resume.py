"""`otto-farm resume`: send again what a run waits for and lost (a chord's jobs, a callback, the pilot)."""

from __future__ import annotations

import json

from otto_farm import recovery
from otto_farm.celery_app import QUEUES, app
from otto_farm.cli.common import RunId, connected, console, exits_cleanly

INSPECT_TIMEOUT_S = 1.0  # every live worker answers well within it; it is also how long resume waits


@exits_cleanly
def resume(run_id: RunId) -> None:
    """Re-dispatch the current batch's lost jobs; finished, running and queued ones are not sent again."""
    with connected() as (store, _):
        console.print(f"run {run_id}: {recovery.resume(store, run_id, served(), waiting())}")


def served() -> set[str]:
    """The queues some live worker consumes."""
    replies = app.control.inspect(timeout=INSPECT_TIMEOUT_S).active_queues() or {}
    return {queue["name"] for queues in replies.values() for queue in queues}


def waiting() -> set[str]:
    """The ids of the jobs still queued in the broker, not yet taken by a worker.

    On Redis a queue is a list per priority, readable without taking from it. RabbitMQ has no such
    read: there a job still queued looks lost, and resume sends it again.
    """
    with app.connection_for_read() as conn:
        if conn.transport.driver_type != "redis":
            return set()
        channel = conn.default_channel
        lists = {channel._q_for_pri(q, pri) for q in QUEUES for pri in channel.priority_steps}
        return {
            json.loads(raw)["headers"]["id"] for name in lists for raw in channel.client.lrange(name, 0, -1)
        }
