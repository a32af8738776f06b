"""The pilot in real runs: workers call the scripted Messages-API server through the anthropic SDK."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from jsonschema import Draft202012Validator
from test_cli import otto

from otto_farm.celery_app import app
from otto_farm.models import BatchRecord, BatchStatus, RunStatus, TaskSpec, TaskState, TaskStatus
from otto_farm.pilot import PilotDecision
from otto_farm.scripted_server import ScriptedReply, schema_problem
from otto_farm.store import new_run_id

from conftest import branch_files, make_record

GOOD_ANSWER = {
    "failure_analysis": {"b": {"category": "spec_ambiguity", "explanation": "b needs the marker"}},
    "retry_strategies": {"b": {"action": "retry_different", "guidance": "write USE-GOOD", "reason": "spec"}},
    "routed_context": [{"target_task": "c", "context": "ROUTED-FOR-C"}],
    "skip_tasks": [],
    "new_learnings": ["LEARNED-ONE"],
    "batches": [["b", "c", "d"]],
}
# b retried with the guidance it needs, and a fix task that runs once b is merged.
FIX = {"key": "fix-b", "prompt": "build fix-b on b", "depends_on": ["b"], "verify": "grep -q good b.txt"}
FIX_ANSWER = {**GOOD_ANSWER, "new_tasks": [FIX], "batches": [["b", "c", "d"], ["fix-b"]]}


def check_tool_schema(tools: list[dict]) -> None:
    """The decision tool as it reached the wire: PilotDecision's schema, one the Messages API accepts,
    valid JSON Schema that takes the answers the tests script and refuses what `to_decision` refuses.

    Fails if the schema sent is replaced by a looser one (say `{"type": "object"}`).
    """
    [tool] = tools
    schema = tool["input_schema"]
    assert tool["name"] == "decide_next_batches" and schema == PilotDecision.model_json_schema()
    assert schema_problem(tools) is None  # an object schema, no top-level combinator
    Draft202012Validator.check_schema(schema)
    validator = Draft202012Validator(schema)
    validator.validate(GOOD_ANSWER)
    validator.validate(FIX_ANSWER)
    validator.validate({**FIX_ANSWER, "new_tasks": [{"key": "k", "prompt": "p"}]})  # the rest is optional
    for bad in (
        {**GOOD_ANSWER, "retry_strategies": {"b": {"action": "maybe", "reason": "r"}}},
        {**GOOD_ANSWER, "failure_analysis": {"b": {"category": "bad luck", "explanation": "e"}}},
        {**GOOD_ANSWER, "batches": "b,c,d"},
        {**GOOD_ANSWER, "comment": "an unknown field"},
        {**GOOD_ANSWER, "new_tasks": [{**FIX, "key": f"f{i}"} for i in range(4)]},  # at most 3
        {**GOOD_ANSWER, "new_tasks": [{**FIX, "key": "Fix B"}]},  # an unsafe key
        {**GOOD_ANSWER, "new_tasks": [{**FIX, "prompt": "x" * 8001}]},
        {**GOOD_ANSWER, "new_tasks": [{**FIX, "verify": "x" * 2001}]},
        {**GOOD_ANSWER, "new_tasks": [{"key": "k"}]},  # no prompt
        {**GOOD_ANSWER, "new_tasks": [{**FIX, "agent": {"command": "rm -rf /"}}]},  # the set's agent only
    ):
        assert not validator.is_valid(bad), bad


def mixed_set(repo: Path, logs: Path, **fields) -> dict:
    """a passes; b fails until guidance says USE-GOOD; c and d wait for a. Every prompt is logged."""
    log = f'cat "$OTTO_FARM_PROMPT_FILE" >> {logs}/$OTTO_FARM_TASK_KEY.log; '
    return {
        "repo": str(repo),
        "max_attempts": 1,
        "verify": "true",
        "sandbox": {"kind": "none"},  # the agent writes where the test reads: outside its worktree
        "agent": {"command": log + "echo $OTTO_FARM_TASK_KEY > $OTTO_FARM_TASK_KEY.txt"},
        "tasks": [
            {"key": "a", "prompt": "build a"},
            {
                "key": "b",
                "prompt": "build b",
                "verify": "grep -q good b.txt || (echo 'b.txt: expected good'; exit 1)",
                "agent": {
                    "command": log + "if grep -q USE-GOOD $OTTO_FARM_PROMPT_FILE; then echo good > b.txt; "
                    "else echo bad > b.txt; fi"
                },
            },
            {"key": "c", "prompt": "build c", "depends_on": ["a"]},
            {"key": "d", "prompt": "build d", "depends_on": ["a"]},
        ],
        **fields,
    }


def test_pilot_decision_reaches_the_right_prompts(
    make_repo, write_taskset, run_taskset, pilot_server, tmp_path, settings
):
    logs = tmp_path / "prompts"
    logs.mkdir()
    pilot_server.script(ScriptedReply(tool_input=GOOD_ANSWER, input_tokens=1000, output_tokens=200))
    record = run_taskset(write_taskset(mixed_set(make_repo(), logs)))
    assert record.status is RunStatus.passed
    assert len(pilot_server.requests) == 1  # one mixed batch; the clean second batch asks nothing
    request = pilot_server.requests[0].body
    assert request["tool_choice"] == {"type": "tool", "name": "decide_next_batches"}
    assert "b.txt: expected good" in request["messages"][0]["content"]  # its verify output reached the pilot
    check_tool_schema(request["tools"])
    entry = record.batches[0].pilot
    assert entry.outcome == "applied" and entry.usage.input_tokens == 1000 and entry.usage.cost_usd > 0
    assert record.usage.cost_usd == entry.usage.cost_usd
    assert [b.tasks for b in record.batches] == [["a", "b"], ["b", "c", "d"]]
    prompts = {k: (logs / f"{k}.log").read_text() for k in "abcd"}
    assert "ROUTED-FOR-C" in prompts["c"]
    assert all("ROUTED-FOR-C" not in prompts[k] for k in "abd")
    second_b = prompts["b"].split("build b")[-1]
    assert "## Retry guidance\nwrite USE-GOOD" in second_b
    assert "b.txt: expected good" in second_b  # beside the guidance, its own verify output
    assert "LEARNED-ONE" in prompts["c"] and "LEARNED-ONE" in prompts["d"]
    assert "LEARNED-ONE" not in prompts["a"]
    shown = subprocess.run(
        [sys.executable, "-m", "otto_farm", "status", record.run_id, "--pilot"],
        env={**os.environ, **settings.env()},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "after batch 1: applied" in shown.stdout and "context for c: ROUTED-FOR-C" in shown.stdout


def test_garbage_answer_falls_back_to_the_replan_and_the_run_finishes(
    make_repo, write_taskset, run_taskset, pilot_server, tmp_path
):
    pilot_server.script(ScriptedReply(text="I think you should retry b."))  # no tool call at all
    record = run_taskset(write_taskset(mixed_set(make_repo(), tmp_path, max_task_runs=1)))
    entry = record.batches[0].pilot
    assert entry.outcome == "fallback_replan" and "no decide_next_batches call" in entry.reason
    assert record.tasks["b"].status is TaskStatus.failed
    assert record.tasks["c"].status is TaskStatus.passed and record.status is RunStatus.failed


def test_overloaded_then_answer_is_waited_out(make_repo, write_taskset, run_taskset, pilot_server, tmp_path):
    (tmp_path / "logs").mkdir()
    pilot_server.script(ScriptedReply(status=529), ScriptedReply(tool_input=GOOD_ANSWER))
    record = run_taskset(write_taskset(mixed_set(make_repo(), tmp_path / "logs")))
    assert len(pilot_server.requests) == 2
    assert record.batches[0].pilot.outcome == "applied" and record.status is RunStatus.passed


def test_server_errors_and_timeouts_fall_back(make_repo, write_taskset, run_taskset, pilot_server, tmp_path):
    # A server error is tried twice more (meter.SERVER_RETRIES, docs/pilot.md), no fourth time.
    pilot_server.script(*[ScriptedReply(status=500)] * 4)
    record = run_taskset(write_taskset(mixed_set(make_repo(), tmp_path)))
    assert len(pilot_server.requests) == 3
    assert record.batches[0].pilot.outcome == "fallback_replan"
    assert "InternalServerError" in record.batches[0].pilot.reason
    assert record.status is RunStatus.failed  # b never saw USE-GOOD

    pilot_server.script(*[ScriptedReply(tool_input=GOOD_ANSWER, delay_s=3)] * 3)
    record = run_taskset(
        write_taskset(
            mixed_set(make_repo(name="repo2"), tmp_path, pilot={"timeout_s": 0.3}), name="slow.yaml"
        )
    )
    assert record.batches[0].pilot.outcome == "fallback_replan"
    assert "Timeout" in record.batches[0].pilot.reason


def test_no_pilot_call_without_failures_or_when_disabled(
    make_repo, write_taskset, run_taskset, pilot_server, tmp_path
):
    clean = mixed_set(make_repo(), tmp_path)
    clean["tasks"][1]["verify"] = "true"
    assert run_taskset(write_taskset(clean)).status is RunStatus.passed
    off = mixed_set(make_repo(name="repo2"), tmp_path, pilot={"enabled": False})
    record = run_taskset(write_taskset(off, name="off.yaml"))
    assert record.batches[0].pilot is None and record.batches[0].decision.source == "replan"
    assert pilot_server.requests == []


def test_redelivered_pilot_job_after_its_answer_does_not_call_again(
    make_repo, write_taskset, run_taskset, pilot_server, tmp_path
):
    (tmp_path / "logs").mkdir()
    pilot_server.script(ScriptedReply(tool_input=GOOD_ANSWER))
    record = run_taskset(write_taskset(mixed_set(make_repo(), tmp_path / "logs")))
    again = app.signature("otto_farm.pilot", args=(record.run_id, 0)).apply_async().get(timeout=30)
    assert again["error"] == "already decided"
    assert len(pilot_server.requests) == 1


def test_invalid_batches_keep_the_default_ones_and_the_rest_is_applied(
    make_repo, write_taskset, run_taskset, pilot_server, tmp_path
):
    (tmp_path / "logs").mkdir()
    pilot_server.script(ScriptedReply(tool_input={**GOOD_ANSWER, "batches": [["b"], ["b", "c"]]}))
    record = run_taskset(write_taskset(mixed_set(make_repo(), tmp_path / "logs")))
    entry = record.batches[0].pilot
    assert entry.outcome == "default_batches" and "more than once" in entry.reason
    assert record.status is RunStatus.passed  # the guidance was applied all the same
    assert record.tasks["c"].context == ["ROUTED-FOR-C"] and record.learnings == ["LEARNED-ONE"]
    assert [b.tasks for b in record.batches][1] == ["b", "c", "d"]


def test_submit_no_pilot_decides_by_replan_alone(
    make_repo, write_taskset, pilot_server, tmp_path, settings, store, worker
):
    (tmp_path / "logs").mkdir()
    pilot_server.script(ScriptedReply(tool_input=GOOD_ANSWER))
    path = write_taskset(mixed_set(make_repo(), tmp_path / "logs"))
    proc = subprocess.run(
        [sys.executable, "-m", "otto_farm", "submit", str(path), "--no-pilot"],
        env={**os.environ, **settings.env()},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr  # b never gets the pilot's guidance
    assert proc.stdout.count("pilot: off") == 1, proc.stdout  # said once, up front
    record = store.get(proc.stdout.split()[1].rstrip(":"))
    assert record.taskset.pilot.enabled is False
    assert all(b.pilot is None for b in record.batches)
    assert pilot_server.requests == []


def test_a_fix_task_added_by_the_pilot_runs_is_merged_and_shown(
    make_repo, write_taskset, run_taskset, pilot_server, tmp_path, settings
):
    logs = tmp_path / "prompts"
    logs.mkdir()
    pilot_server.script(ScriptedReply(tool_input=FIX_ANSWER))
    repo = make_repo()
    record = run_taskset(write_taskset(mixed_set(repo, logs)))
    assert record.status is RunStatus.passed and record.batches[0].pilot.outcome == "applied"
    check_tool_schema(pilot_server.requests[0].body["tools"])
    assert "new_tasks: at most 3 fix tasks" in pilot_server.requests[0].body["messages"][0]["content"]
    assert record.added_tasks == [TaskSpec(**FIX)]
    assert [b.tasks for b in record.batches] == [["a", "b"], ["b", "c", "d"], ["fix-b"]]
    fix = record.tasks["fix-b"]
    assert fix.status is TaskStatus.passed and fix.merged_sha == record.integration_sha
    assert "build fix-b on b" in (logs / "fix-b.log").read_text()  # the set's agent read its prompt
    assert "LEARNED-ONE" in (logs / "fix-b.log").read_text()
    assert "fix-b.txt" in branch_files(repo, record.integration_branch)
    env = {**os.environ, **settings.env(), "COLUMNS": "200"}
    status = [sys.executable, "-m", "otto_farm", "status", record.run_id]
    table = subprocess.run(status, env=env, capture_output=True, text=True, timeout=60).stdout
    assert "fix-b (pilot)" in table and "a (pilot)" not in table
    shown = subprocess.run([*status, "--pilot"], env=env, capture_output=True, text=True, timeout=60).stdout
    assert "new task fix-b (after b): build fix-b on b" in shown


def test_a_pilot_without_a_key_is_said_up_front_and_its_fallback_names_the_cause(make_repo, write_taskset):
    """On a farm of its own, submit's workers have its environment: without a key it says so once, and
    the pilot's fallback after the failed batch says why in words, not as the SDK's TypeError."""
    home = Path(tempfile.mkdtemp(prefix="of-"))  # short: unix socket paths are limited
    path = write_taskset(
        {
            "repo": str(make_repo()),
            "max_attempts": 1,
            "verify": "false",
            "agent": {"command": "touch x"},
            "tasks": [{"key": "a", "prompt": "p"}],
        }
    )
    try:
        proc = otto("submit", str(path), cwd=home, env={"OTTO_FARM_HOME": str(home), "ANTHROPIC_API_KEY": ""})
    finally:
        shutil.rmtree(home, ignore_errors=True)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    [note] = [i for i, line in enumerate(lines) if "no ANTHROPIC_API_KEY" in line]
    assert note < next(i for i, line in enumerate(lines) if line.startswith("batch 1")), proc.stdout
    assert "pilot: fell back to the replan: no API key" in proc.stdout, proc.stdout
    assert "TypeError" not in proc.stdout and "Could not resolve" not in proc.stdout


def test_a_pilot_job_of_a_cancelled_run_asks_nothing(pilot_server, store, worker):
    """A pilot job still queued when its run was cancelled would pay for an answer nobody applies."""
    record = make_record(
        [{"key": "a", "prompt": "p"}, {"key": "b", "prompt": "p", "depends_on": ["a"]}],
        {"a": TaskState(key="a", status=TaskStatus.failed, batch=0, runs=1)},
    )
    record.run_id, record.status = new_run_id(), RunStatus.cancelled
    record.batches = [BatchRecord(index=0, tasks=["a"], base_ref="main", base_sha="0" * 40)]
    record.batches[0].status = BatchStatus.deciding
    store.create(record)
    pilot_server.script(ScriptedReply(tool_input=GOOD_ANSWER))
    answer = app.signature("otto_farm.pilot", args=(record.run_id, 0)).apply_async().get(timeout=30)
    assert answer["error"] == "run cancelled" and not pilot_server.requests
