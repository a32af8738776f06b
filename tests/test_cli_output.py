"""What the commands print outside a terminal (plain, whole lines, whatever width COLUMNS says) and on
one (what fits its height)."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import threading
from pathlib import Path

from test_cli import cli_env, otto
from test_cli_faults import start

from otto_farm.cli.common import fitting, plain_table
from otto_farm.models import BatchRecord, RunStatus, TaskResult, TaskStatus
from otto_farm.store import new_run_id

from conftest import make_record, wait_for

NARROW = {"COLUMNS": "80"}


def test_runs_and_status_piped_print_whole_ids_names_and_branches(
    make_repo, write_taskset, run_taskset, settings, tmp_path
):
    name = "calc-backend-with-a-rather-long-name-for-its-column"
    path = write_taskset(
        {
            "name": name,
            "repo": str(make_repo()),
            "verify": "true",
            "agent": {"command": "touch x"},
            "tasks": [{"key": "add-the-multiplication-operator", "prompt": "p"}],
        }
    )
    record = run_taskset(path)
    env = {**settings.env(), **NARROW}
    runs = otto("runs", cwd=tmp_path, env=env).stdout
    [row] = [line for line in runs.splitlines() if record.run_id in line]
    assert name in row and record.created_at.strftime("%Y-%m-%d %H:%M:%S") in row, runs
    assert "…" not in runs
    status = otto("status", record.run_id, cwd=tmp_path, env=env).stdout
    branch = record.tasks["add-the-multiplication-operator"].last.branch  # type: ignore[union-attr]
    assert branch in status and "…" not in status, status


def test_status_watch_piped_prints_a_line_per_change(settings, held_run, tmp_path):
    run_id = held_run.start()
    lines: list[str] = []
    with start("status", run_id, "--watch", cwd=tmp_path, env={**settings.env(), **NARROW}) as watcher:
        assert watcher.stdout is not None and watcher.stderr is not None
        reader = threading.Thread(target=lambda: lines.extend(watcher.stdout))  # type: ignore[arg-type]
        reader.start()
        wait_for(
            lambda: any(line.endswith(" slow running (run 1, batch 1)\n") for line in lines), timeout_s=60
        )
        held_run.release()
        watcher.wait(60)
        reader.join(10)
        errors = watcher.stderr.read()
    out = "".join(lines)
    assert watcher.returncode == 0, out + errors
    assert sum(" slow running " in line for line in lines) == 1, out  # once per change, not per look
    assert re.search(r"^\d\d:\d\d:\d\d slow passed in \d+s$", out, re.M), out
    assert out.endswith("\n") and f"run {run_id} passed" in out


def test_a_terminal_shows_the_tasks_that_need_a_look_and_counts_the_rest():
    """Guards `status` at any size (issue 17): a terminal gets the rows that fit, running and failed
    first, in the run's order, and one line for the rest; a pipe gets every row."""
    rows = [(f"t{i}", "1", "passed", "1", "1", "-", "1.0s", "$0", "-") for i in range(50)]
    for i, status in ((7, "running"), (30, "failed"), (41, "pending"), (42, "running")):
        rows[i] = (f"t{i}", "1", status, *rows[i][3:])
    statuses = [r[2] for r in rows]
    shown, more = fitting(statuses, 5)
    assert [rows[i][0] for i in shown] == ["t0", "t7", "t30", "t41", "t42"]
    assert more is not None and more.startswith("... 45 more tasks (45 passed)")
    assert fitting(statuses, 50) == (list(range(50)), None)
    text = plain_table(("task", "status"), [(r[0], r[2]) for r in rows])
    assert len(text.splitlines()) == 51 and "\nt42   running\n" in text


def on_a_terminal(args: list[str], cwd: Path, env: dict[str, str], rows: int, cols: int = 160) -> str:
    """A command's output on a pseudo-terminal of `rows` × `cols`, its escape codes taken out."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    env = {k: v for k, v in cli_env(cwd, env).items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "otto_farm", *args],
        cwd=cwd,
        env={**env, "TERM": "xterm"},
        stdin=slave,
        stdout=slave,
        stderr=slave,
    )
    os.close(slave)
    out = bytearray()
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the command has closed its side
            break
        if not chunk:
            break
        out.extend(chunk)
    assert proc.wait(30) == 0, out.decode(errors="replace")
    os.close(master)
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.decode())


def test_status_on_a_terminal_reads_the_shown_tasks_and_still_warns_of_any_unsandboxed(
    store, settings, tmp_path
):
    """Guards `status` at any size (issue 17): a terminal's view, which reads the results of the rows it
    shows alone, takes the summary's sandbox kinds from the store's set: an unsandboxed task that is
    not shown is still said."""
    record = make_record([{"key": f"t{i:02}", "prompt": "p"} for i in range(60)], {})
    record.run_id, record.status = new_run_id(), RunStatus.failed
    record.batches = [BatchRecord(index=0, tasks=list(record.tasks), base_ref="main", base_sha="0" * 40)]
    for i, state in enumerate(record.tasks.values()):
        state.status, state.batch, state.runs = TaskStatus.failed if i == 40 else TaskStatus.passed, 0, 1
    store.create(record)
    for i, key in enumerate(record.tasks):
        status = TaskStatus.failed if i == 40 else TaskStatus.passed
        sandbox = "none" if i == 50 else "bwrap"
        store.add_result(
            TaskResult(run_id=record.run_id, task_key=key, run_no=1, batch=0, status=status, sandbox=sandbox)
        )
    out = on_a_terminal(["status", record.run_id], tmp_path, settings.env(), rows=24)
    shown = re.findall(r"^ *(t\d\d) +1 ", out, re.M)  # table rows: key, then batch 1
    assert "t40" in shown and "t50" not in shown and len(shown) == 14, out
    assert "46 more tasks (46 passed)" in out
    assert "UNSANDBOXED" in out and "sandbox bwrap, none" in out, out
