"""`otto-farm resume`: send again what a run waits for and may have lost (a chord, a callback, the pilot)."""

from __future__ import annotations

from otto_farm import recovery
from otto_farm.cli.common import RunId, connected, console, exits_cleanly


@exits_cleanly
def resume(run_id: RunId) -> None:
    """Re-dispatch the current batch's lost jobs; finished tasks are not run again."""
    with connected() as (store, _):
        console.print(f"run {run_id}: {recovery.resume(store, run_id)}")
