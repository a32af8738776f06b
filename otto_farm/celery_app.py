"""The Celery app: JSON only, three queues, settings for long jobs. Job definitions live in jobs.py."""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu import Queue

from otto_farm.errors import OttoFarmError
from otto_farm.queues import CONTROL_QUEUE, PILOT_QUEUE, QUEUES, TASKS_QUEUE, worker_argv
from otto_farm.settings import VISIBILITY_TIMEOUT_S, Settings

# The queues' names and a worker's command line live apart, so what needs only them does not import Celery.
__all__ = ["CONTROL_QUEUE", "PILOT_QUEUE", "QUEUES", "TASKS_QUEUE", "app", "configure", "worker_argv"]


def celery_config(settings: Settings) -> dict[str, Any]:
    return {
        "broker_url": settings.broker_url,
        "result_backend": settings.result_backend or settings.resolved_store_url,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_queues": [Queue(q) for q in QUEUES],
        "task_default_queue": CONTROL_QUEUE,
        "task_routes": {
            "otto_farm.run_task": {"queue": TASKS_QUEUE},
            "otto_farm.pilot": {"queue": PILOT_QUEUE},
        },
        # A job is acked when it ends, so a lost worker's job goes back to the queue.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # Redis only (amqp ignores it): RabbitMQ's consumer_timeout plays this part (docs/deploy.md).
        "broker_transport_options": {"visibility_timeout": VISIBILITY_TIMEOUT_S},
        "result_backend_transport_options": {"visibility_timeout": VISIBILITY_TIMEOUT_S},
        "result_expires": 7 * 24 * 3600,
        # Not STARTED in the result backend: a write per job that nobody reads; Flower takes a job's
        # start from worker events, `otto-farm status` from the run's event stream.
        "task_track_started": False,
        "worker_send_task_events": True,
        # No task-sent events: they doubled the cost of sending a chord (bench/, issue 7). Flower shows
        # a job from the moment a worker receives it; the queue lengths show what waits.
        "task_send_sent_event": False,
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
    }


app = Celery("otto_farm", include=["otto_farm.jobs"])


def configure(settings: Settings) -> Celery:
    """Point the app at these settings; the CLI calls it once the embedded Redis (if any) is up."""
    app.conf.update(celery_config(settings))
    # Celery caches its broker pools and its result backend (per thread, for Redis): left alone, they
    # would still publish to the previous broker and wait for results on the previous Redis.
    app._pool = None
    app.amqp._producer_pool = None
    app._backend_cache = None
    vars(app._local).pop("backend", None)
    return app


try:
    _settings = Settings.load()
    if not _settings.embedded:
        configure(_settings)
    elif _settings.socket_path.exists():
        configure(_settings.with_embedded())
except OttoFarmError:
    pass  # the CLI reports the problem in one line when it loads the settings itself
