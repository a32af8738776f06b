"""The integration gate on real runs: a red base stops a run before any agent, a semantic conflict
between two tasks of a batch is caught after the merge, its culprit found and retried, and the
integration branch passes the suite at every batch head."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from otto_farm import coordinator, gate, taskset
from otto_farm.gitops import git
from otto_farm.models import ChainLink, GateCheck, RunStatus, TaskStatus

from conftest import wait_for_run

SUITE = "python -m unittest discover -s tests -t ."
REPO = {
    "greet.py": "def greet(name):\n    return f'hello {name}'\n",
    "tests/__init__.py": "",
    "tests/test_greet.py": (
        "import unittest\nfrom greet import greet\n\n\nclass T(unittest.TestCase):\n"
        "    def test_greet(self):\n        self.assertEqual(greet('x'), 'hello x')\n"
    ),
}
# `rename` renames greet to welcome; `shout` adds a caller of greet, or of welcome once the gate's
# guidance reaches it. Each passes its own verify alone.
RENAME = """
from pathlib import Path
for path in (Path("greet.py"), Path("tests/test_greet.py")):
    path.write_text(path.read_text().replace("greet(", "welcome(").replace("import greet", "import welcome"))
"""
SHOUT = """
import os
from pathlib import Path
told = "once merged" in Path(os.environ["OTTO_FARM_PROMPT_FILE"]).read_text()  # the gate's guidance
name = "welcome" if told else "greet"
Path("shout.py").write_text(f"from greet import {name}\\n\\ndef shout(n):\\n    return {name}(n).upper()\\n")
Path("tests/test_shout.py").write_text(
    "import unittest\\nfrom shout import shout\\n\\n\\nclass S(unittest.TestCase):\\n"
    "    def test_shout(self):\\n        self.assertEqual(shout('x'), 'HELLO X')\\n"
)
"""


def conflicting(repo: Path, tmp_path: Path, **fields: object) -> dict[str, object]:
    """Two tasks of one batch that pass alone and break each other once merged."""
    (tmp_path / "rename.py").write_text(RENAME)
    (tmp_path / "shout.py").write_text(SHOUT)
    return {
        "repo": str(repo),
        "max_attempts": 1,
        "verify": SUITE,
        "gate": {"verify": SUITE},
        "tasks": [
            {
                "key": "rename",
                "prompt": "Rename greet to welcome.",
                "agent": {"command": 'python "$OTTO_FARM_TASKSET_DIR/rename.py"'},
            },
            {
                "key": "shout",
                "prompt": "Add shout(), built on greet.",
                "verify": "python -m unittest tests.test_shout",
                "agent": {"command": 'python "$OTTO_FARM_TASKSET_DIR/shout.py"'},
            },
        ],
        **fields,
    }


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


def test_a_semantic_conflict_is_caught_its_culprit_retried_and_every_head_passes(
    make_repo, write_taskset, run_taskset, store, tmp_path
):
    repo = make_repo(REPO)
    record = run_taskset(write_taskset(conflicting(repo, tmp_path)))
    assert record.status is RunStatus.passed, record.error
    first = record.batches[0]
    assert first.gate is not None and list(first.gate.culprits) == ["shout"]
    assert "test_shout" in first.gate.culprits["shout"]  # the gate's own words
    assert [c.label for c in first.gate.checks] == ["full", "p1"]
    assert record.tasks["rename"].merged_sha == first.merged_sha
    shout = record.tasks["shout"]
    assert (
        shout.status is TaskStatus.passed and shout.runs == 2 and shout.merged_sha == record.integration_sha
    )
    heads = [b.merged_sha for b in record.batches]
    assert all(suite_passes(repo, sha, tmp_path) for sha in heads if sha)
    kinds = [e["kind"] for _, e in store.events(record.run_id)]
    assert kinds.count("culprit_found") == 1


def test_without_the_gate_the_same_run_says_passed_on_a_red_branch(
    make_repo, write_taskset, run_taskset, tmp_path
):
    repo = make_repo(REPO)
    record = run_taskset(write_taskset(conflicting(repo, tmp_path, gate={"enabled": False})))
    assert record.status is RunStatus.passed
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
    assert "gate_flaky" in [e["kind"] for _, e in store.events(record.run_id)]


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
