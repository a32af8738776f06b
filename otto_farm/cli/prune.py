"""`otto-farm prune`: delete finished runs' branches from their repositories, and their records."""

from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path
from typing import Annotated, cast

import typer

from otto_farm import gitops, keys, lease
from otto_farm.cli.common import connected, console, exits_cleanly
from otto_farm.errors import GitError, InfrastructureError, InputError
from otto_farm.models import RunRecord, RunStatus
from otto_farm.store import Store
from otto_farm.taskset import masked

DURATION = re.compile(r"^(\d+)([smhdw])$")
SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
PUSH_BATCH = 200  # branches deleted per `git push`: one connection each, and a command line that fits


@exits_cleanly
def prune(
    run_id: Annotated[str | None, typer.Argument(help="Run id (see `otto-farm runs`).")] = None,
    older_than: Annotated[
        str | None,
        typer.Option("--older-than", help="Every finished run created this long ago or more: 7d, 12h, 30m."),
    ] = None,
    integration: Annotated[
        bool, typer.Option("--integration", help="Delete its integration branch too.")
    ] = False,
) -> None:
    """Delete finished runs' `otto-farm/<run>/…` branches (the integration branch stays unless
    --integration) from their repositories, and the runs' records; a running run is never touched."""
    if (run_id is None) == (older_than is None):
        raise InputError("prune", "", "give either a run id or --older-than")
    cutoff = time.time() - _seconds(older_than) if older_than is not None else 0.0
    with connected() as (store, _):
        if run_id is not None:
            records = [store.get(run_id, tasks=())]
            if records[0].status is RunStatus.running:
                raise InputError("run", run_id, "is still running: cancel it first")
        else:
            records = _finished_before(store, cutoff)
        for record in records:
            console.print(_prune(store, record, integration), markup=False)
        if not records:
            console.print(f"no finished run created more than {older_than} ago")


def _seconds(duration: str) -> int:
    if not (m := DURATION.match(duration)):
        raise InputError("--older-than", "", f"{duration!r} is not a duration (e.g. 7d, 12h, 30m)")
    return int(m[1]) * SECONDS[m[2]]


def _finished_before(store: Store, cutoff: float) -> list[RunRecord]:
    """The runs created before `cutoff` (the runs index's score) that have ended, oldest first."""
    ids = cast(list[str], store.redis.zrangebyscore(keys.runs_index_key(), "-inf", cutoff))
    records = [store.get(run_id, tasks=()) for run_id in ids]
    return [r for r in records if r.status is not RunStatus.running]


def _delete(repo: str, branches: list[str]) -> None:
    """Delete branches of the repository at `repo` (a path or URL), in batches."""
    if not branches:
        return
    # `git push` needs a repository to push from, though a deletion sends nothing: an empty one.
    with tempfile.TemporaryDirectory(prefix="otto-farm-prune-") as tmp:
        gitops.git(["init", "-q", "--bare", tmp])
        for i in range(0, len(branches), PUSH_BATCH):
            refs = [f"refs/heads/{b}" for b in branches[i : i + PUSH_BATCH]]
            gitops.git(["push", "-q", "--no-verify", "--delete", repo, *refs], cwd=Path(tmp))


def _prune(store: Store, record: RunRecord, integration: bool) -> str:
    """Delete the run's branches, then its records (so a failed push leaves something to try again)."""
    run_id = record.run_id
    # A cancelled run's jobs stop within a second or so; one still at work would push its branch again.
    if any(lease.alive(store.redis, jid) for jid in lease.claims(store.redis, run_id)):
        raise InputError("run", run_id, "its jobs are still stopping: try again in a moment")
    try:
        heads = gitops.remote_heads(record.repo)
        kept = None if integration else record.integration_branch
        doomed = [b for b in heads if b.startswith(f"otto-farm/{run_id}/") and b != kept]
        if integration and record.integration_branch in heads and record.integration_branch not in doomed:
            doomed.append(record.integration_branch)  # one the task set named: the run made it (taskset.load)
        _delete(record.repo, doomed)
    except GitError as exc:  # its line names the repo, whose URL may carry a password
        raise InfrastructureError(f"run {run_id}: {masked(str(exc))}") from None
    store.forget(run_id)
    return (
        f"run {run_id} pruned: {len(doomed)} branch{'' if len(doomed) == 1 else 'es'} deleted from "
        f"{masked(record.repo)}, records removed"
        + (f"; integration branch {kept} kept" if kept is not None and kept in heads else "")
    )
