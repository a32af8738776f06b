"""`otto-farm up` / `otto-farm down`: the embedded Redis and local workers, in the background."""

from __future__ import annotations

from typing import Annotated

import typer

from otto_farm.cli.common import Workers, console, exits_cleanly
from otto_farm.embedded import Embedded
from otto_farm.errors import InputError
from otto_farm.models import RunStatus
from otto_farm.settings import Settings
from otto_farm.store import Store


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
    with farm.locked():  # a submit's own farm running already is kept from now on
        already = farm.redis_up() and farm.workers_up()
        farm.start(workers)
        farm.keep()
    if already:
        console.print(
            f"farm already up: Redis on {farm.socket}, workers logging to {farm.home / 'worker.log'}; "
            "its workers stay as they are (`otto-farm down` first to start others)"
        )
        return
    console.print(f"farm up: Redis on {farm.socket}, workers logging to {farm.home / 'worker.log'}")


@exits_cleanly
def down(
    force: Annotated[bool, typer.Option("--force", help="Stop even while runs are running.")] = False,
) -> None:
    """Stop the embedded Redis and local workers; refused while runs are running, unless --force."""
    farm = _farm()
    if not farm.home.is_dir():  # nothing to stop, and no state dir to make
        console.print(f"no farm under {farm.home}")
        return
    with farm.locked():
        running = _running_runs(farm) if farm.redis_up() else []
        if running and not force:
            raise InputError(
                "down",
                "",
                f"run {', '.join(running)} still running: `otto-farm cancel RUN` ends it, "
                "`otto-farm down --force` interrupts it",
            )
        farm.stop()
    # Their jobs were cut short; the runs stay `running`, and the next `up`'s sweep sends their lost jobs.
    gone = f"; run {', '.join(running)} interrupted: `otto-farm up` goes on with it" if running else ""
    console.print("farm down" + gone)


def _running_runs(farm: Embedded) -> list[str]:
    store = Store.from_url(farm.settings.resolved_store_url)
    return [r for r in store.active_runs() if store.get(r, tasks=()).status is RunStatus.running]
