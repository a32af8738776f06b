"""The integration gate's transitions: the base is checked before any agent runs; a batch's candidate
moves the integration branch once it passes, or its merge chain's prefixes are checked at once for the
culprit, which is left out while the rest is merged again and checked, until green (gate.py)."""

from __future__ import annotations

from pathlib import Path

from otto_farm import gate, gitops, runparts, taskrun
from otto_farm.coordinator import (
    close_batch,
    dispatch_next,
    fail,
    mark_conflicts,
    send_next_step,
)
from otto_farm.models import BatchStatus, ChainLink, GateCheck, RunRecord, RunStatus, TaskStatus, utcnow
from otto_farm.store import LOCK_WAIT_S, Store


def finish_gate(
    store: Store,
    work_dir: Path,
    run_id: str,
    index: int,
    round_no: int,
    results: list[dict[str, object]],
    wait_s: float = LOCK_WAIT_S,
) -> None:
    """The gate chord's callback: the integration branch moves to what passed; a red candidate's prefixes
    are checked for the culprit, which is left out and the rest merged again and checked, until green."""
    checks = {c.label: c for c in (store.add_gate_check(GateCheck.model_validate(r)) for r in results)}
    window = runparts.Window(index) if index >= 0 else None  # a batch's round reads its window
    with store.lock(run_id, wait_s):
        current = store.get(run_id, tasks=(), window=window)
        if current.status is not RunStatus.running:
            return
        try:
            record = _round(store, work_dir, current, index, round_no, checks)
        except Exception as exc:  # the callback boundary: a merge or push that failed ends the run
            fail(store, run_id, f"the gate of batch {index + 1} failed: {exc}")
            return
    if record is None or record.status is RunStatus.cancelled:
        return  # nothing to do, or cancelled meanwhile (`cancel` takes no lock)
    _announce(store, current, record, index, checks)


def _round(
    store: Store, work_dir: Path, current: RunRecord, index: int, round_no: int, checks: dict[str, GateCheck]
) -> RunRecord | None:
    """The round's outcome applied to the run, or None where there is nothing to do (yet)."""
    if index < 0:
        return _base_gated(store, work_dir, current, checks[gate.BASE])
    batch = current.batches[index]
    if batch.status is not BatchStatus.gating or batch.gate is None or batch.gate.round != round_no:
        return None  # a redelivered callback
    if set(batch.gate.pending) - set(checks):
        store.emit(current.run_id, "callback_early", batch=index, round=round_no)
        return None  # the sweep finishes the round once every check is in
    return _gated(store, work_dir, current, index, checks)


def _announce(
    store: Store, current: RunRecord, record: RunRecord, index: int, checks: dict[str, GateCheck]
) -> None:
    """The round's events, then what it asks for: the first batch, the run's end, or the batch's next step."""
    run_id = record.run_id
    for check in checks.values():
        kind = "gate_flaky" if check.flaky else "gate_passed" if check.passed else "gate_failed"
        store.emit(run_id, kind, batch=index, label=check.label, sha=check.sha, duration_s=check.duration_s)
    if index < 0:
        if record.status is RunStatus.running:
            dispatch_next(store, run_id, after=-1)
        else:
            store.emit(run_id, "run_finished", status=record.status.value, error=record.error)
        return
    before, found = current.batches[index].gate, record.batches[index].gate
    for key in set(found.culprits if found else ()) - set(before.culprits if before else ()):
        store.emit(run_id, "culprit_found", batch=index, task=key)
    send_next_step(store, record, index)


def _base_gated(store: Store, work_dir: Path, current: RunRecord, check: GateCheck) -> RunRecord | None:
    """The base's check is in: the integration branch starts there, or the run ends `base_red`."""
    if current.base_gate is not None:
        return None  # a redelivered callback
    if check.error is not None:
        fail(store, current.run_id, f"the gate could not run on the base: {check.error}")
        return None
    if check.passed:
        _push(work_dir, current, check.sha, current.base)

    def change(record: RunRecord) -> None:
        if record.status is not RunStatus.running:
            return
        record.base_gate = check
        if check.passed:
            record.integration_sha = check.sha
        else:
            record.status, record.finished_at = RunStatus.base_red, utcnow()
            first = next((line for line in check.output.splitlines() if line.strip()), "no output")
            record.error = f"base {record.base} fails the gate `{record.taskset.gate_command}`: {first}"

    return store.update(current.run_id, change)


def _gated(
    store: Store, work_dir: Path, current: RunRecord, index: int, checks: dict[str, GateCheck]
) -> RunRecord | None:
    """One round of a batch's gate is in: promote, search the prefixes, or leave the culprit out."""
    batch = current.batches[index]
    state = batch.gate
    assert state is not None
    if broken := next((c for c in checks.values() if c.error), None):
        fail(store, current.run_id, f"the gate could not run on batch {index + 1}: {broken.error}")
        return None
    chain, merged_out = state.chain, gitops.MergeOutcome(sha="")
    if not state.search and checks[gate.FULL].passed:
        green, kept, culprit = chain[-1].sha, chain, None
    elif not state.search and len(chain) > 1:  # look for the first red prefix, all at once
        green, kept, culprit = "", chain, None
    else:
        k = gate.culprit(chain, checks) if state.search else 0
        full = next(c for c in reversed([*state.checks, *checks.values()]) if c.label == gate.FULL)
        red = checks.get(gate.prefix_label(k + 1), full)
        culprit, kept = (chain[k].key, red.output), chain[:k]
        green = chain[k - 1].sha if k else batch.base_sha
        rest = [(c.key, taskrun.branch_name(current.run_id, c.key)) for c in chain[k + 1 :]]
        if rest:  # merged again without the culprit, from the last green prefix, and checked again
            merged_out = gitops.merge(
                gitops.RepoCache(work_dir, current.repo),
                gate.candidate_branch(current.run_id),
                green,
                current.base,
                rest,
                current.run_id,
                candidate=True,
            )
    if green and not merged_out.chain:
        _push(work_dir, current, green, gate.candidate_branch(current.run_id))

    def change(record: RunRecord) -> None:
        if record.status is not RunStatus.running:
            return
        b = record.batches[index]
        g = b.gate
        assert g is not None
        g.checks.extend(checks.values())
        g.round += 1
        if culprit is not None:
            key, output = culprit
            g.culprits[key] = output
            task = record.tasks[key]
            task.status, task.gate_output = TaskStatus.failed, output
            task.reason = f"gate_failed: its merge broke `{record.taskset.gate_command}`"
        mark_conflicts(record, merged_out.conflicts)
        if not green:
            g.search, g.pending = True, {gate.prefix_label(n): chain[n - 1].sha for n in range(1, len(chain))}
        elif merged_out.chain:
            g.chain = [*kept, *(ChainLink(key=k, sha=sha) for k, sha in merged_out.chain)]
            g.search, g.pending = False, {gate.FULL: merged_out.sha}
        else:
            g.pending, g.finished_at = {}, utcnow()
            close_batch(record, index, green)

    return store.update(current.run_id, change, window=runparts.Window(index))


def _push(work_dir: Path, record: RunRecord, sha: str, ref: str) -> None:
    """The integration branch moves to `sha`, which passed the gate; `ref` has it on the remote (this
    worker's cache may not: another control worker may have merged the candidate)."""
    cache = gitops.RepoCache(work_dir, record.repo)
    if not cache.has_commit(sha):
        cache.fetch([ref])
    gitops.push_sha(cache, sha, record.integration_branch, record.run_id, record.taskset.integration_branch)
