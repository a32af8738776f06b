"""The pilot's answer as a fault: 3 MB of strings, a tool call to another tool with negative usage,
negative output tokens. The scripted Messages-API server gives each answer to a real pilot job."""

from __future__ import annotations

from typing import Any

from scale import run_bytes

from faultlib.farm import Farm, Row, run_id_of, wait_run
from otto_farm.scripted_server import ScriptedReply, ScriptedServer

DECISION = {  # a valid answer after batch 1 of the set below: `a` failed, `b` passed, `c` waits on `a`
    "failure_analysis": {"a": {"category": "code_bug", "explanation": "a.txt missing"}},
    "retry_strategies": {"a": {"action": "retry_different", "guidance": "write a.txt", "reason": "bug"}},
    "new_learnings": ["tasks write KEY.txt"],
    "batches": [["a"], ["c"]],
}

ANSWERS = {
    "oversized": (
        "3 MB of learnings (3,000 × 1,000 characters)",
        ScriptedReply(tool_input={**DECISION, "new_learnings": ["x" * 1000] * 3000}),
    ),
    "wrong tool, negative usage": (
        "a valid decision as a `bash` tool call, input tokens −10⁹",
        ScriptedReply(tool_input=DECISION, tool_name="bash", input_tokens=-(10**9)),
    ),
    "negative output tokens": (
        "a valid decision, output tokens −5",
        ScriptedReply(tool_input=DECISION, output_tokens=-5, input_tokens=100),
    ),
}


def pilot_answer(f: Farm, llm: ScriptedServer, case: str) -> list[Row]:
    done, reply = ANSWERS[case]
    repo = f.repo()
    # `a` fails its first run (no a.txt), so batch 1 ends with a failure and work left: the pilot decides.
    body = (
        f'if [ "$OTTO_FARM_TASK_KEY" != a ] || grep -qx "end a" {f.agent_log}; '
        "then touch $OTTO_FARM_TASK_KEY.txt; fi"
    )
    tasks: list[dict[str, Any]] = [
        {"key": "a", "prompt": "p", "verify": "test -f a.txt"},
        {"key": "b", "prompt": "p"},
        {"key": "c", "prompt": "p", "depends_on": ["a"]},
    ]
    path = f.taskset(repo, body, tasks, max_task_runs=2)
    llm.script(reply)
    llm.clear()
    assert f.otto("up", "--workers", "2").returncode == 0
    run_id = run_id_of(f.otto("submit", str(path), "--no-wait").stdout)
    with f.store() as store:
        record = wait_run(store, run_id)
        size = sum(run_bytes(store, run_id).values())
    pilots = [b.pilot for b in record.batches if b.pilot is not None]
    said = (
        "; ".join(f"{p.outcome}: {p.error or p.reason or ''}"[:160].removesuffix(": ") for p in pilots)
        or "no pilot call"
    )
    return [
        Row(
            f"Pilot answer: {case}",
            f"the scripted server answers the pilot with {done}",
            f"run {record.status.value}",
            **f.figures(record, repo),
            notes=f"{len(llm.requests)} pilot call(s); {f.said(said)}; the run's keys in Redis {size / 1024:.1f} KiB; "
            f"run cost ${record.usage.cost_usd:.4f}",
        )
    ]
