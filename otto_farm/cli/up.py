"""`otto-farm up` / `otto-farm down`: the embedded Redis and local workers, in the background."""

from __future__ import annotations

from otto_farm.cli.common import Workers, console, exits_cleanly
from otto_farm.embedded import Embedded
from otto_farm.errors import InputError
from otto_farm.settings import Settings


def _farm() -> Embedded:
    settings = Settings.load()
    if not settings.embedded:
        raise InputError(
            "OTTO_FARM_BROKER_URL", "", "a broker is configured; up/down manage the embedded one only"
        )
    return Embedded(settings)


@exits_cleanly
def up(workers: Workers = 2) -> None:
    """Start the embedded Redis and local workers in the background."""
    farm = _farm()
    if not farm.redis_up():
        farm.start_redis()
    if not farm.workers_up():
        farm.start_workers(workers)
    console.print(f"farm up: Redis on {farm.socket}, workers logging to {farm.home / 'worker.log'}")


@exits_cleanly
def down() -> None:
    """Stop the embedded Redis and local workers started by `up`."""
    farm = _farm()
    farm.stop()
    console.print("farm down")
