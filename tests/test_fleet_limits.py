"""The fleet's API limits (issue 18): real Celery workers on two processes share one limiter and one
budget in Redis, against the scripted Messages API answering 429s and 529s."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from otto_farm import coordinator, taskset
from otto_farm.agents.anthropic_agent import AnthropicAgent
from otto_farm.agents.command import CommandAgent
from otto_farm.cli.common import summary_line
from otto_farm.limiter import Limiter, key_id
from otto_farm.meter import FALLBACK_AFTER, Meter
from otto_farm.models import AgentConfig, Limits, RunStatus, TaskStatus
from otto_farm.scripted_server import ScriptedReply

from conftest import LLM_ENV, anthropic_request, start_worker, wait_for_run

DONE = ScriptedReply(text="Nothing to change.")
RETRY_AFTER_S = 2.0
IN_FLIGHT_S = 0.25  # a request already on its way when a 429 was answered may land just after it


def tasks(repo, n: int, **extra) -> dict:
    return {
        "repo": str(repo),
        "verify": "true",
        "max_task_runs": 1,
        "max_attempts": 1,
        "agent": {"provider": "anthropic", "model": "claude-sonnet-5-5", **extra.pop("agent", {})},
        "tasks": [{"key": f"t{i}", "prompt": "Look around."} for i in range(n)],
        **extra,
    }


@pytest.fixture
def api(pilot_server, monkeypatch):
    """This process's SDK pointed at the scripted server."""
    monkeypatch.setenv("ANTHROPIC_BASE_URL", pilot_server.url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "scripted-test-key")
    return pilot_server


@pytest.fixture
def two_workers(settings, llm):
    workers = [start_worker(settings, f"fleet{i}", concurrency=5) for i in range(2)]
    yield workers
    for w in workers:
        w.stop()


def test_429s_are_waited_out_by_the_whole_fleet_and_cost_no_task_run(
    two_workers, make_repo, write_taskset, pilot_server, store
):
    """Guards issue 18's check: 8 concurrent agents on two workers, every third request a 429 with
    retry-after 2 s: every task passes on its first run, and after each 429 no request comes sooner."""
    pilot_server.script(*[DONE, DONE, ScriptedReply(status=429, retry_after_s=RETRY_AFTER_S)] * 3, DONE, DONE)
    path = write_taskset(tasks(make_repo(), 8))
    record = wait_for_run(store, coordinator.start(store, taskset.load(path)).run_id)
    assert record.status is RunStatus.passed, record.error
    assert all(s.status is TaskStatus.passed and s.runs == 1 for s in record.tasks.values())
    requests = [r for r in pilot_server.requests if r.path.startswith("/v1/messages")]
    assert len(requests) == 11
    limited = [r.at for i, r in enumerate(requests) if i % 3 == 2]
    for at in limited:
        assert not [r for r in requests if at + IN_FLIGHT_S < r.at < at + RETRY_AFTER_S - 0.05], limited
    assert record.usage.rate_limited == 3 and record.usage.api_calls == 8
    assert record.usage.limit_wait_s >= RETRY_AFTER_S
    line = summary_line(store, record)
    assert "; API: 8 calls, " in line and "3×429" in line


def test_a_requests_per_minute_limit_holds_across_two_workers(
    settings, llm, make_repo, write_taskset, pilot_server, store
):
    """Guards the shared bucket: 8 tasks at 60 requests a minute on two worker processes; with the
    minute's burst spent first, the calls come about one a second, counted as waiting."""
    env = {"OTTO_FARM_LIMITS": '{"requests_per_minute": 60}'}
    workers = [start_worker(settings, f"rpm{i}", concurrency=4, env=env) for i in range(2)]
    try:
        key = key_id(LLM_ENV["ANTHROPIC_API_KEY"], LLM_ENV["ANTHROPIC_BASE_URL"])
        limiter = Limiter(store.redis, key, Limits(requests_per_minute=60))
        for _ in range(60):  # the minute's burst, spent: what follows comes at the refill rate
            limiter.take(0, 0)
        pilot_server.script(*[DONE] * 8)
        path = write_taskset(tasks(make_repo(), 8))
        record = wait_for_run(store, coordinator.start(store, taskset.load(path)).run_id)
    finally:
        for w in workers:
            w.stop()
    assert record.status is RunStatus.passed, record.error
    times = sorted(r.at for r in pilot_server.requests if r.path.startswith("/v1/messages"))
    assert len(times) == 8
    # At one a second, less the refill between the drain and the first call: unlimited, 8 slots send
    # all 8 within a second.
    assert times[-1] - times[0] >= 4.0
    assert record.usage.limit_wait_s > 0


def test_ten_jobs_stop_at_the_run_budget_plus_one_call_each(
    two_workers, make_repo, write_taskset, pilot_server, store
):
    """Guards issue 18's check: a $0.05 budget, ten concurrent jobs whose agents would go on calling:
    the run ends budget_exceeded having spent no more than the cap plus one call per running job."""
    call = ScriptedReply(tool_name="bash", tool_input={"command": "true"}, input_tokens=3000)
    pilot_server.script(*[call] * 400)
    path = write_taskset(tasks(make_repo(), 10, budget={"max_cost_usd": 0.05}, agent={"max_turns": 30}))
    record = wait_for_run(store, coordinator.start(store, taskset.load(path)).run_id)
    assert record.status is RunStatus.budget_exceeded, record.error
    per_call = max(
        r.usage.cost_usd / max(r.usage.api_calls, 1) for s in record.tasks.values() for r in s.results
    )
    assert 0.05 <= record.usage.cost_usd <= 0.05 + 10 * per_call
    assert record.usage.api_calls < 10 * 30  # without the fleet's budget each agent runs all its turns
    assert any(r.error_code == "budget_spent" for s in record.tasks.values() for r in s.results)


def test_overloads_are_waited_out_then_the_fallback_model_answers(api, make_repo):
    """Guards overload handling: 529s are not the agent's failure; after FALLBACK_AFTER in a row the
    fallback model is asked, and the outcome says which model did the work."""
    api.script(*[ScriptedReply(status=529)] * FALLBACK_AFTER, DONE)
    request = anthropic_request(make_repo(), "p", model="claude-sonnet-5-5", fallback_model="claude-haiku-5")
    outcome = AnthropicAgent().run(request)
    assert outcome.ok and outcome.model == "claude-haiku-5" and outcome.usage.overloaded == FALLBACK_AFTER
    models = [r.body["model"] for r in api.requests]
    assert models == ["claude-sonnet-5-5"] * FALLBACK_AFTER + ["claude-haiku-5"]


def test_a_turn_that_hangs_past_the_idle_timeout_is_stalled_not_timed_out(api, make_repo):
    api.script(ScriptedReply(text="late", delay_s=5))
    outcome = AnthropicAgent().run(anthropic_request(make_repo(), "p", idle_timeout_s=1))
    assert not outcome.ok and outcome.stop_reason == "stalled" and "no answer in 1 s" in outcome.error


def test_a_command_agent_that_prints_nothing_is_stalled_with_its_last_output_kept(make_repo):
    repo = make_repo()
    request = replace(
        anthropic_request(repo, "p"),
        config=AgentConfig(command="echo working; sleep 30", idle_timeout_s=1),
    )
    started = time.monotonic()
    outcome = CommandAgent().run(request)
    assert time.monotonic() - started < 10
    assert not outcome.ok and outcome.stop_reason == "stalled"
    assert "working" in outcome.output and "no output for 1 s" in outcome.error


def test_an_answer_that_says_a_limit_is_spent_pauses_the_fleet_until_its_reset(api, make_repo, store):
    """Guards learning the limits: `anthropic-ratelimit-requests-remaining: 0` with a reset 2 s away
    pauses the key's calls on every worker, so the next call waits for the reset instead of a 429."""
    reset = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
    spent = {"anthropic-ratelimit-requests-remaining": "0", "anthropic-ratelimit-requests-reset": reset}
    api.script(ScriptedReply(tool_name="bash", tool_input={"command": "true"}, headers=spent), DONE)
    meter = Meter.for_run(store.redis, "learned-limits", None, Limits())
    outcome = AnthropicAgent().run(replace(anthropic_request(make_repo(), "p"), meter=meter))
    assert outcome.ok and outcome.usage.api_calls == 2
    first, second = (r.at for r in api.requests)
    assert second - first >= 1.5 and outcome.usage.limit_wait_s >= 1.5


def test_waiting_for_the_limits_is_not_the_agents_working_time(api, make_repo, store):
    """A 429 whose retry-after outlasts what is left of the attempt's time: the wait is added to its
    deadline (up to WAIT_ALLOWANCE_S), so the attempt goes on after it instead of ending agent_timeout
    (issue 18: a rate limit costs the task nothing but time)."""
    api.script(ScriptedReply(status=429, retry_after_s=3.0), DONE)
    meter = Meter.for_run(store.redis, "waits-are-not-work", None, Limits())
    request = replace(anthropic_request(make_repo(), "p"), meter=meter, timeout_s=2)
    outcome = AnthropicAgent().run(request)
    assert outcome.ok, outcome.error
    assert outcome.usage.rate_limited == 1 and outcome.usage.limit_wait_s >= 2.5
    first, second = (r.at for r in api.requests)
    assert second - first >= 2.9
    assert meter.later(100.0) == pytest.approx(100.0 + meter.waited_s) and meter.waited_s >= 2.5


def test_a_job_whose_wait_for_the_limits_outlasts_its_timeout_passes_on_its_first_run(
    two_workers, make_repo, write_taskset, pilot_server, store
):
    """Guards a rate limit costing no task run, at the farm's level: the job's own time (`timeout_s`,
    and Celery's limits around it) leaves room for the waits."""
    pilot_server.script(ScriptedReply(status=429, retry_after_s=4.0), DONE)
    path = write_taskset(tasks(make_repo(), 1, timeout_s=3))
    record = wait_for_run(store, coordinator.start(store, taskset.load(path)).run_id)
    assert record.status is RunStatus.passed, record.tasks["t0"].reason
    assert record.tasks["t0"].runs == 1 and record.usage.limit_wait_s >= 3.5
