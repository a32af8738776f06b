"""The integration gate on real runs: a red base stops a run before any agent, a semantic conflict
between two tasks of a batch is caught after the merge, its culprit found and retried, and the
integration branch passes the suite at every batch head."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

from otto_farm import coordinator, gate, taskset
from otto_farm.gitops import git
from otto_farm.models import ChainLink, GateCheck, RunRecord, RunStatus, TaskStatus
from otto_farm.scripted_server import ScriptedReply
from otto_farm.store import Store

from conftest import SCENARIOS, fresh_repo, wait_for, wait_for_run

SUITE = "python -m unittest discover -s tests -t ."


def suite_passes(repo: Path, sha: str, tmp_path: Path) -> bool:
    """Whether the full suite passes on commit `sha` of the repository, in a checkout of its own."""
    checkout = tmp_path / f"check-{sha[:10]}"
    git(["worktree", "add", "-q", "--detach", str(checkout), sha], cwd=repo)
    return subprocess.run(SUITE.split(), cwd=checkout, capture_output=True).returncode == 0


def test_a_red_base_ends_the_run_before_any_agent_runs(make_repo, write_taskset, store, worker, settings):
    repo = make_repo({"README.md": "demo\n"})
    verify = "test -f done.txt || { echo 'done.txt: missing'; exit 1; }"
    data = {
        "repo": str(repo),
        "verify": verify,
        "gate": {"verify": None},  # the task set's verify, which the base fails
        "agent": {"command": "touch done.txt"},
        "tasks": [{"key": "a", "prompt": "p"}],
    }
    record = wait_for_run(store, coordinator.start(store, taskset.load(write_taskset(data))).run_id)
    assert record.status is RunStatus.base_red and record.batches == []
    assert record.error == f"base main fails the gate `{verify}`: done.txt: missing"
    # The events follow the record's update: wait for the last one before reading them.
    wait_for(lambda: "run_finished" in [e["kind"] for _, e in store.events(record.run_id)])
    kinds = [e["kind"] for _, e in store.events(record.run_id)]
    assert "task_started" not in kinds and kinds[-2:] == ["gate_failed", "run_finished"]
    proc = subprocess.run(
        [sys.executable, "-m", "otto_farm", "submit", str(write_taskset(data, name="again.yaml"))],
        env={**os.environ, **settings.env()},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1 and "base main fails the gate" in proc.stdout


def semantic_conflict(store: Store, repo: Path, gate_on: bool) -> RunRecord:
    """tasks/scenarios/semantic-conflict on `repo`, with the gate or without it (`--no-gate`)."""
    loaded = taskset.load(SCENARIOS / "semantic-conflict" / "tasks.yaml", repo=str(repo))
    if not gate_on:
        ts = loaded.taskset
        off = ts.model_copy(update={"gate": ts.gate.model_copy(update={"enabled": False})})
        loaded = dataclasses.replace(loaded, taskset=off)
    return wait_for_run(store, coordinator.start(store, loaded).run_id)


def test_a_semantic_conflict_is_caught_its_culprit_retried_and_every_head_passes(store, worker, tmp_path):
    """Three tasks of one batch, each green alone; merged, one's caller of a renamed function breaks the
    suite. The gate finds it, keeps the others, and its retry (told by the gate) passes."""
    repo = fresh_repo("semantic-conflict", tmp_path / "on")
    record = semantic_conflict(store, repo, gate_on=True)
    assert record.status is RunStatus.passed, record.error
    first = record.batches[0]
    assert first.gate is not None and list(first.gate.culprits) == ["shout"]
    assert "test_shout" in first.gate.culprits["shout"]  # the gate's own words
    # Red; then the prefixes: rename alone green, rename + shout red; then rename + count again, green.
    assert [(c.label, c.passed) for c in first.gate.checks] == [
        ("full", False),
        ("p1", True),
        ("p2", False),
        ("full", True),
    ]
    assert record.tasks["rename"].merged_sha == record.tasks["count"].merged_sha == first.merged_sha
    shout = record.tasks["shout"]
    assert (
        shout.status is TaskStatus.passed and shout.runs == 2 and shout.merged_sha == record.integration_sha
    )
    assert "rule 0: when ['once merged', 'test_shout']" in shout.last.attempts[-1].agent_output
    heads = [b.merged_sha for b in record.batches]
    assert all(suite_passes(repo, sha, tmp_path) for sha in heads if sha)
    assert [e["kind"] for _, e in store.events(record.run_id)].count("culprit_found") == 1


def test_without_the_gate_the_same_run_says_passed_on_a_red_branch(store, worker, tmp_path):
    repo = fresh_repo("semantic-conflict", tmp_path / "off")
    record = semantic_conflict(store, repo, gate_on=False)
    assert record.status is RunStatus.passed and record.integration_sha
    assert not suite_passes(repo, record.integration_sha, tmp_path)


def test_a_flaky_gate_is_reported_as_flaky_not_as_a_culprit(
    make_repo, write_taskset, run_taskset, store, tmp_path
):
    marker = tmp_path / "gate-ran"
    once = f"test -f {marker} || {{ touch {marker}; exit 1; }}"
    data = {
        "repo": str(make_repo()),
        "verify": "true",
        "sandbox": {"kind": "none"},  # the gate keeps its count outside the worktree
        # Red the first time it checks a candidate, green when run again.
        "gate": {"verify": f"git log --merges -1 | grep -q . || exit 0; {once}"},
        "agent": {"command": "touch a.txt"},
        "tasks": [{"key": "a", "prompt": "p"}],
    }
    record = run_taskset(write_taskset(data))
    assert record.status is RunStatus.passed
    [check] = record.batches[0].gate.checks
    assert check.passed and check.flaky and record.batches[0].gate.culprits == {}
    wait_for(lambda: "gate_flaky" in [e["kind"] for _, e in store.events(record.run_id)])  # after the update


def test_the_culprit_is_the_first_red_prefixs_last_task() -> None:
    chain = [ChainLink(key=k, sha=k * 40) for k in "abcd"]

    def prefixes(*passed: bool) -> dict[str, GateCheck]:
        return {
            gate.prefix_label(n): GateCheck(run_id="r", batch=0, round=1, label="", sha="", passed=ok)
            for n, ok in enumerate(passed, 1)
        }

    assert gate.culprit(chain, prefixes(True, False, False)) == 1  # a passes, a+b fails: b
    assert gate.culprit(chain, prefixes(False, False, False)) == 0
    assert gate.culprit(chain, prefixes(True, True, True)) == 3  # only the whole candidate is red: d


def test_a_pilot_answers_a_gate_failure_with_a_fix_task_that_runs_and_merges(
    store, worker, pilot_server, tmp_path
):
    """The pilot reads the culprit's gate output and adds a fix task (skipping the culprit): the fix
    task runs, passes its verify and the gate, and is merged."""
    pilot_server.script(
        ScriptedReply(
            tool_input={
                "retry_strategies": {"shout": {"action": "skip", "reason": "fix-shout replaces it"}},
                "new_tasks": [
                    {
                        "key": "fix-shout",
                        "prompt": "Build textkit/shout.py on welcome, the new name of greet.",
                        "depends_on": ["rename"],
                        "verify": "python -m unittest tests.test_shout",
                    }
                ],
                "batches": [["fix-shout"]],
            }
        )
    )
    repo = fresh_repo("semantic-conflict", tmp_path / "repo")
    loaded = taskset.load(SCENARIOS / "semantic-conflict" / "tasks.yaml", repo=str(repo))
    ts = loaded.taskset
    with_pilot = ts.model_copy(update={"pilot": ts.pilot.model_copy(update={"enabled": True})})
    record = wait_for_run(
        store, coordinator.start(store, dataclasses.replace(loaded, taskset=with_pilot)).run_id
    )
    assert "test_shout" in pilot_server.requests[0].body["messages"][0]["content"]  # the gate's words
    fix = record.tasks["fix-shout"]
    assert record.batches[0].pilot.outcome == "applied"
    assert fix.status is TaskStatus.passed and fix.merged_sha == record.integration_sha
    assert record.tasks["shout"].status is TaskStatus.skipped
    assert suite_passes(repo, record.integration_sha, tmp_path)
