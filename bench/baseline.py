"""The plain-Celery baseline: no-op jobs in chords whose callback dispatches the next chord.

Same Redis (broker and result backend), same serializer and ack settings as otto_farm.celery_app, its own
queue. Started by bench/run.py as `celery -A baseline worker -Q bench.baseline` with BENCH_BROKER_URL set.
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery, chord
from kombu import Queue

QUEUE = "bench.baseline"
DONE_KEY = "bench:baseline:done:{tag}"

app = Celery("bench_baseline")


def configure(url: str) -> Celery:
    app.conf.update(
        broker_url=url,
        result_backend=url,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_queues=[Queue(QUEUE)],
        task_default_queue=QUEUE,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    return app


if os.environ.get("BENCH_BROKER_URL"):
    configure(os.environ["BENCH_BROKER_URL"])


@app.task(name="bench.noop")
def noop(i: int) -> int:
    return i


@app.task(name="bench.collect")
def collect(results: list[Any], tag: str, remaining: int, width: int) -> None:
    """The chord callback: dispatch the next chord of `width` no-ops, or mark the chain done."""
    if remaining > 0:
        dispatch(tag, remaining, width)
        return
    app.backend.client.set(DONE_KEY.format(tag=tag), f"{time.time():.6f}", ex=3600)


def dispatch(tag: str, remaining: int, width: int) -> None:
    chord([noop.s(i) for i in range(width)])(collect.s(tag, remaining - 1, width))
