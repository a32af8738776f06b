"""`otto-farm cancel`: stop a run: dispatch nothing more and interrupt its running jobs."""

from __future__ import annotations

from otto_farm import coordinator
from otto_farm.cli.common import RunId, connected, console, exits_cleanly


@exits_cleanly
def cancel(run_id: RunId) -> None:
    """End a running run as cancelled; what merged stays merged."""
    with connected() as (store, _):
        record = coordinator.cancel(store, run_id)
    kept = (
        f"integration branch {record.integration_branch} kept"
        if record.integration_sha
        else "nothing was merged, so there is no integration branch"
    )
    console.print(f"run {record.run_id} cancelled; {kept}")
