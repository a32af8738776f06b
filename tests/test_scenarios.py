"""The scenario task sets of tasks/scenarios/, end to end with scripted agents and a scripted pilot.

Each scenario runs twice on a fresh copy of its repo: with the pilot (answering from its pilot.json) and
with `pilot.enabled: false`. The pilot's run must end with more tasks passed, through the guidance,
learnings and routed context it gave.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from otto_farm import coordinator, taskset
from otto_farm.gitops import git
from otto_farm.models import RunRecord, RunStatus, TaskStatus
from otto_farm.scripted_server import ScriptedServer, load_replies
from otto_farm.store import Store

from conftest import SCENARIOS, Worker, fresh_repo, wait_for_run

P, F, S = TaskStatus.passed, TaskStatus.failed, TaskStatus.skipped


@dataclass(frozen=True)
class Scenario:
    name: str
    pilot_batch: int  #: the one batch that ends mixed and calls the pilot
    pilot_saw: str  #: a line of the failing verify output, which the pilot reads first-hand
    with_pilot: dict[str, TaskStatus]
    without_pilot: dict[str, TaskStatus]
    #: task → the agent's report on its last run with the pilot: which guidance it read, which rule fired
    agent_said: dict[str, list[str]]
    #: path → text it must hold on the integration branch of the pilot's run
    files: dict[str, str] = field(default_factory=dict)


LEARNED = "guidance sections: Learnings from earlier batches"
GUIDED = "guidance sections: Learnings from earlier batches, Retry guidance"
CASES = [
    Scenario(
        "env-mismatch",
        pilot_batch=0,
        pilot_saw="FAIL test_median.py: no check_* functions (found: test_median_even, test_median_odd)",
        with_pilot={"mean": P, "median": P, "spread": P},
        without_pilot={"mean": P, "median": F, "spread": F},
        agent_said={
            "median": [GUIDED, "rule 0: when ['check_*']"],
            "spread": [LEARNED, "rule 0: when ['check_*']"],
        },
        files={"tests/test_median.py": "def check_median_odd", "tests/test_spread.py": "def check_stdev"},
    ),
    Scenario(
        "hidden-convention",
        pilot_batch=0,
        pilot_saw="shapes.rect.rect_perimeter is public but not registered",
        with_pilot={"circle": P, "rect": P, "sector": P},
        without_pilot={"circle": P, "rect": F, "sector": F},
        agent_said={
            "rect": [GUIDED, "rule 0: when ['@register']"],
            "sector": [LEARNED, "rule 0: when ['@register']"],
        },
        files={
            "shapes/rect.py": "@register\ndef rect_perimeter",
            "shapes/sector.py": "@register\ndef sector",
        },
    ),
    Scenario(
        "api-contract",
        pilot_batch=1,
        pilot_saw="['key=value (expires expires_at)', 'key=value (expires expires_at)']",
        with_pilot={"store": P, "report": P, "expiry": P, "dashboard": P},
        without_pilot={"store": P, "report": F, "expiry": P, "dashboard": S},
        agent_said={
            "report": ["guidance sections: Retry guidance", "rule 0: when ['returns dicts']"],
            "dashboard": ["guidance sections: Context for this task", "rule 0: when ['returns dicts']"],
        },
        files={"kv/report.py": "e['key']", "kv/dashboard.py": 'e["expires_at"]'},
    ),
]


def run(store: Store, scenario: str, repo: Path, pilot: bool) -> RunRecord:
    loaded = taskset.load(SCENARIOS / scenario / "tasks.yaml", repo=str(repo))
    if not pilot:
        ts = loaded.taskset
        off = ts.model_copy(update={"pilot": ts.pilot.model_copy(update={"enabled": False})})
        loaded = dataclasses.replace(loaded, taskset=off)
    return wait_for_run(store, coordinator.start(store, loaded).run_id)


def passed(record: RunRecord) -> int:
    return sum(s.status is TaskStatus.passed for s in record.tasks.values())


def outputs(record: RunRecord, key: str) -> str:
    """Everything the agent printed for this task, over all its runs."""
    return "\n".join(a.agent_output for r in record.tasks[key].results for a in r.attempts)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_scenario_passes_more_with_the_pilot(
    case: Scenario, store: Store, worker: Worker, pilot_server: ScriptedServer, tmp_path: Path
) -> None:
    replies = load_replies(SCENARIOS / case.name / "pilot.json")
    answer = replies[0].tool_input
    assert answer is not None
    pilot_server.script(*replies)

    on = run(store, case.name, fresh_repo(case.name, tmp_path / "on"), pilot=True)
    assert len(pilot_server.requests) == 1
    assert case.pilot_saw in pilot_server.requests[0].body["messages"][0]["content"]
    assert [i for i, b in enumerate(on.batches) if b.pilot] == [case.pilot_batch]
    entry = on.batches[case.pilot_batch].pilot
    assert entry is not None and entry.outcome == "applied", entry and entry.reason
    assert [b.tasks for b in on.batches[case.pilot_batch + 1 :]] == answer["batches"]
    assert {k: s.status for k, s in on.tasks.items()} == case.with_pilot
    assert on.status is RunStatus.passed

    # What the pilot said reached the tasks it was meant for, and only those.
    assert on.learnings == answer["new_learnings"]
    for key, strategy in answer["retry_strategies"].items():
        assert on.tasks[key].guidance == strategy["guidance"]
    routed = {r["target_task"]: [r["context"]] for r in answer["routed_context"]}
    assert {k: s.context for k, s in on.tasks.items() if s.context} == routed
    for key in on.tasks:
        assert ("Context for this task" in outputs(on, key)) == (key in routed), key
    for key, lines in case.agent_said.items():
        said = on.tasks[key].results[-1].attempts[-1].agent_output
        assert all(line in said.splitlines() for line in lines), said
    for path, text in case.files.items():
        assert text in git(["show", f"{on.integration_branch}:{path}"], cwd=Path(on.repo))

    off = run(store, case.name, fresh_repo(case.name, tmp_path / "off"), pilot=False)
    assert len(pilot_server.requests) == 1  # the disabled run asked nothing
    assert all(b.pilot is None and (b.decision is None or b.decision.source == "replan") for b in off.batches)
    assert {k: s.status for k, s in off.tasks.items()} == case.without_pilot
    assert passed(on) > passed(off)
    # The replan's retry reached the agent too; its guidance named nothing the agent could act on.
    for key in answer["retry_strategies"]:
        assert "rule 1: default" in off.tasks[key].results[-1].attempts[-1].agent_output
