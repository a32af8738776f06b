"""Attacks from inside a task, as a scripted Anthropic agent's bash calls, against each sandbox kind.

With `auto` (bwrap on a machine that has it) every probe must be contained. The same probes run with
`none` and are reported (the "sandbox probes" block at the end of the run), not failed: there the
commands run as the worker, and docs/security.md says what that means.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from otto_farm import shell, taskrun
from otto_farm.gitops import git
from otto_farm.models import RunStatus, TaskStatus
from otto_farm.sandbox import Command, Walls, bwrap
from otto_farm.sandbox.bwrap import Bwrap
from otto_farm.scripted_server import ScriptedReply

from conftest import NO_GATE, make_slot, report, run_by_hand, wait_for

pytestmark = pytest.mark.part("bwrap")

DETACHED = ("sleep 4242", "sleep 4243")


def bash(command: str) -> ScriptedReply:
    return ScriptedReply(tool_name="bash", tool_input={"command": command})


def probes(socket_path: Path) -> dict[str, str]:
    """Each attack the issue measured on the unsandboxed farm, as one bash command."""
    connect = (
        "import socket; s = socket.socket(socket.AF_UNIX); "
        f"s.connect({str(socket_path)!r}); s.sendall(b'PING\\r\\n'); print(s.recv(16))"
    )
    return {
        "reads the worker's environment in /proc": "cat /proc/$PPID/environ /proc/1/environ | tr '\\0' '\\n'",
        "plants a hook in the repository cache": (
            'd=$(git rev-parse --git-common-dir) && printf "#!/bin/sh\\ntouch /tmp/hooked\\n" '
            '> "$d/hooks/post-checkout" && chmod +x "$d/hooks/post-checkout" && echo planted'
        ),
        "force-pushes the base branch": "git commit -q --allow-empty -m evil && git push -f origin HEAD:main",
        "talks to the farm's Redis socket": f'python3 -c "{connect}"',
        "leaves processes behind": f"setsid -f {DETACHED[0]}; ({DETACHED[1]} &); echo detached",
    }


def alive(pattern: str) -> list[int]:
    """Host pids whose command line is exactly `pattern`."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "cmdline").read_bytes().replace(b"\0", b" ").strip() == (
                pattern.encode()
            ):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.mark.parametrize("kind", ["auto", "none"])
def test_attacks_from_a_task_are_contained(
    kind, make_repo, write_taskset, run_taskset, pilot_server, settings, tmp_path
):
    if kind == "auto" and (why := bwrap.unavailable()):
        pytest.skip(f"the auto sandbox is none here: {why}")
    remote = tmp_path / "remote.git"
    git(["clone", "-q", "--bare", str(make_repo()), str(remote)])
    main_before = git(["rev-parse", "main"], cwd=remote).strip()
    attacks = probes(settings.socket_path)
    pilot_server.script(*map(bash, attacks.values()), ScriptedReply(text="done"))
    try:
        record = run_taskset(
            write_taskset(
                {
                    "repo": str(remote),
                    "verify": "true",
                    "sandbox": {"kind": kind},
                    "agent": {"provider": "anthropic"},
                    "tasks": [{"key": "attacker", "prompt": "p"}],
                }
            )
        )
        outputs = [
            block["content"]
            for message in pilot_server.requests[-1].body["messages"]
            if message["role"] == "user" and isinstance(message["content"], list)
            for block in message["content"]
        ]
        detached = [pid for pattern in DETACHED for pid in alive(pattern)]
    finally:
        for pattern in DETACHED:
            for pid in alive(pattern):
                os.kill(pid, signal.SIGKILL)
    assert record.status is RunStatus.passed
    assert record.tasks["attacker"].last.sandbox == ("bwrap" if kind == "auto" else "none")
    cache_hooks = list(Path(settings.home).glob("work-*/repos/*/cache.git/hooks/post-checkout"))
    leaked = {
        # The name alone: the scrubbed environment never has it, and its value is redacted on the way.
        "reads the worker's environment in /proc": "ANTHROPIC_API_KEY=" in outputs[0],
        "plants a hook in the repository cache": bool(cache_hooks) or "planted" in outputs[1],
        "force-pushes the base branch": git(["rev-parse", "main"], cwd=remote).strip() != main_before,
        "talks to the farm's Redis socket": "PONG" in outputs[3],
        "leaves processes behind": bool(detached),
    }
    for attack, did in leaked.items():
        report("sandbox probes", f"{kind}: {attack}: {'NOT CONTAINED' if did else 'contained'}")
    for hook in cache_hooks:
        hook.unlink()
    if kind == "auto":
        assert not any(leaked.values()), json.dumps({"leaked": leaked, "outputs": outputs}, indent=1)


@pytest.fixture
def walls(make_repo, tmp_path: Path) -> Walls:
    """A worktree of a bare cache, as the farm makes them, and secrets outside /tmp (the sandbox's /tmp
    is its own anyway): a hidden home with a socket-like file and a hidden config file."""
    if why := bwrap.unavailable():
        pytest.skip(why)
    wt, cache = make_slot(make_repo, tmp_path)
    secrets = Path(tempfile.mkdtemp(prefix="otto-farm-test-", dir="/var/tmp"))
    (secrets / "home").mkdir()
    (secrets / "home" / "redis.sock").write_text("the farm's socket")
    (secrets / "otto-farm.toml").write_text('broker_url = "redis://:hunter22@host/0"')
    (secrets / "shown").mkdir()
    (secrets / "shown" / "agent.json").write_text("{}")
    yield Walls(wt, cache, [secrets / "home", secrets / "otto-farm.toml"], [secrets / "shown"])
    shutil.rmtree(secrets)


def sh(box: Bwrap, script: str) -> str:
    res = box.run(Command(script, timeout_s=30, env=shell.safe_env()))
    return f"{res.output}[{res.exit_code}]"


def test_bwrap_walls(walls: Walls) -> None:
    """What a command in the bwrap sandbox sees: each line is one wall of docs/security.md."""
    box = Bwrap(walls)
    home, config = walls.hidden
    assert sh(box, f"ls -A {home}") == "[0]"  # the farm's home: empty
    assert "hunter22" not in sh(box, f"cat {config}")  # its config file: not readable
    assert sh(box, f"cat {walls.readable[0]}/agent.json") == "{}[0]"  # the task set's dir: readable
    assert sh(box, "echo hi > new.txt && cat new.txt") == "hi\n[0]"  # the worktree: writable
    assert (walls.worktree / "new.txt").exists()
    assert sh(box, "git status --short") == "?? new.txt\n[0]"  # git reads the cache
    assert "Read-only" in sh(box, f"touch {walls.cache}/hooks/post-checkout")  # but cannot write it
    assert "Read-only" in sh(box, f"touch {walls.readable[0]}/x")
    assert "Read-only" in sh(box, "touch /var/tmp/otto-farm-escape")  # the rest: read-only
    assert sh(box, "touch /tmp/x ~/y && echo $HOME") == "/tmp/home\n[0]"  # a private /tmp and home
    assert int(sh(box, "ls /proc | grep -c '^[0-9]'").split()[0]) <= 5  # its own processes only
    assert sh(box, f"test -x {sys.executable} && echo python") == "python\n[0]"  # the interpreter


def test_bwrap_without_network_reaches_no_host_port(walls: Walls) -> None:
    """`network: false`: its own network namespace, so a port open on the host's loopback is not there."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        probe = f"python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", {port}), 2)' && echo in"
        assert sh(Bwrap(walls), probe).endswith("in\n[0]")
        assert "refused" in sh(Bwrap(walls, network=False), probe).lower()


@pytest.mark.parametrize("kind", ["auto", "none"])
def test_a_killed_jobs_commands_never_write_into_a_later_branch(
    kind, make_repo, write_taskset, store, tmp_path
):
    """A job's process is SIGKILLed mid-agent (a pool process dies); its agent keeps writing into
    the worktree slot. The next job on that work dir must not carry those files into its commit.

    On the farm before sandboxes, 3 of 3 tries merged the dead task's files with another task's.
    """
    if kind == "auto" and (why := bwrap.unavailable()):
        pytest.skip(f"the auto sandbox is none here: {why}")
    work_dir = tmp_path / "work"
    flood = "touch started; while true; do echo evil > evil-$RANDOM.txt; sleep 0.05; done"
    data = {
        "repo": str(make_repo()),
        **NO_GATE,
        "verify": "true",
        "sandbox": {"kind": kind},
        "tasks": [
            {"key": "dead", "prompt": "p", "agent": {"command": f"({flood}) & sleep 60"}},
            {"key": "next", "prompt": "p", "agent": {"command": "sleep 1; echo next > next.txt"}},
        ],
    }
    try:
        with run_by_hand(store, write_taskset(data)) as run_id:
            job = multiprocessing.get_context("fork").Process(
                target=taskrun.run, args=(store, work_dir, run_id, "dead", 1, 0)
            )
            job.start()
            wait_for(lambda: any(work_dir.glob("repos/*/slot-*/started")))
            os.kill(job.pid, signal.SIGKILL)  # the pool process dies; what it started may not
            job.join()
            result = taskrun.run(store, work_dir, run_id, "next", 1, 0)
            cache = next(work_dir.glob("repos/*/cache.git"))
            files = set(git(["ls-tree", "-r", "--name-only", result.commit_sha or "HEAD"], cwd=cache).split())
    finally:
        subprocess.run(["pkill", "-f", "evil-"], check=False)
    foreign = sorted(f for f in files if f.startswith("evil") or f == "started")
    verdict = "NOT CONTAINED" if foreign else "contained"
    report("sandbox probes", f"{kind}: a killed job's agent writes into a later branch: {verdict}")
    assert result.status is TaskStatus.passed and "next.txt" in files
    assert not foreign, foreign  # bwrap: they died with the job; none: they hold the slot's lock
