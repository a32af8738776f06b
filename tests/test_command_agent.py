"""The command agent's prompt files die with their job, even when its process is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from conftest import wait_for

# One job of the command agent in a process of its own, as in a pool process: argv is the worktree
# and the agent's command.
JOB = """
import sys
from pathlib import Path
from otto_farm import shell
from otto_farm.agents import AgentRequest
from otto_farm.agents.command import CommandAgent
from otto_farm.models import AgentConfig
from otto_farm.sandbox import Walls
from otto_farm.sandbox.none import NoSandbox

wt = Path(sys.argv[1])
request = AgentRequest(
    worktree=wt, prompt="the secret plan", config=AgentConfig(command=sys.argv[2]), env=shell.safe_env(),
    sandbox=NoSandbox(Walls(wt, wt)), timeout_s=60, run_id="r1", task_key="a", attempt=1,
)
assert CommandAgent().run(request).ok
"""
HOLD = 'echo $$ > pid; echo "$OTTO_FARM_PROMPT_FILE" > prompt-path; exec sleep 60'


def test_a_killed_jobs_prompt_is_removed_by_the_next_process(tmp_path):
    tmp, wt = tmp_path / "tmp", tmp_path / "wt"
    tmp.mkdir()
    wt.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp)}  # this test's own /tmp

    def job(command: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-c", JOB, str(wt), command], env=env)

    held = job(HOLD)
    try:
        wait_for(lambda: (wt / "prompt-path").is_file() and (wt / "prompt-path").read_text().strip())
        prompt = Path((wt / "prompt-path").read_text().strip())
        assert prompt.read_text() == "the secret plan"
        assert prompt.is_relative_to(tmp)
        # Another process's job leaves a live process's prompt alone, and removes its own at its end.
        assert job('cat "$OTTO_FARM_PROMPT_FILE" > seen').wait(60) == 0
        assert (wt / "seen").read_text() == "the secret plan"
        assert prompt.read_text() == "the secret plan"
        held.kill()  # as Celery kills a pool process at the hard time limit: no cleanup runs
        held.wait(10)
    finally:
        held.kill()
        held.wait(10)
        if (wt / "pid").is_file():
            os.killpg(int((wt / "pid").read_text()), signal.SIGKILL)  # the agent command it left running
    assert prompt.read_text() == "the secret plan"  # left behind, as before
    # The next process's first job sweeps what the dead ones left: the killed job's prompt, the finished
    # process's empty directory; its own job's prompt goes at its end.
    last = job("true")
    assert last.wait(60) == 0
    assert not prompt.exists()
    left = list(tmp.iterdir())
    assert [p.name.startswith(f"otto-farm-prompts-{last.pid}-") for p in left] == [True]
    assert list(left[0].iterdir()) == []
