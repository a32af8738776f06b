"""What the commands print outside a terminal (plain, whole lines, whatever width COLUMNS says) and on
one (what fits its height)."""

from __future__ import annotations

import fcntl
import json
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
from test_store import result, stored_record

from otto_farm import keys, runparts
from otto_farm.cli.common import fitting, plain_table
from otto_farm.cli.status import look, write_run_json
from otto_farm.models import BatchRecord, RunRecord, RunStatus, TaskResult, TaskState, TaskStatus
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


def test_status_json_is_the_run_record_with_its_tasks_written_a_page_at_a_time(store, capsys):
    """Guards `status --json` at any size (issue 17): the document is the record's, every result in,
    but the results are read a page of tasks at a time and let go once written."""
    record = stored_record(store, n=5)
    for key in ("t0", "t3", "t4"):
        store.add_result(result(record, key))
    whole = store.get(record.run_id)
    lean = store.get(record.run_id, tasks=())
    write_run_json(store, lean, page=2)
    assert json.loads(capsys.readouterr().out) == json.loads(whole.model_dump_json())
    assert not any(state.results for state in lean.tasks.values())


def test_a_piped_watch_reads_the_results_of_what_changed_and_of_the_running_tasks(store):
    """Guards `status --watch` at any size (issue 17): a look reads the results of the tasks whose state
    changed since the last look and of those still running (their job may have ended), no others."""
    record = stored_record(store, n=6)  # every task running its first run
    store.add_result(result(record, "t0"))
    states, looked = runparts.Seen(), dict[str, TaskState]()
    first = look(store, record.run_id, states, looked)
    assert first.tasks["t0"].status is TaskStatus.passed and len(first.tasks["t0"].results) == 1

    def change(r: RunRecord) -> None:
        for key in ("t1", "t2", "t3", "t4"):
            r.tasks[key].status = TaskStatus.passed
        r.tasks["t1"].status = TaskStatus.running

    store.update(record.run_id, change)
    with store.redis.monitor() as monitor:
        second = look(store, record.run_id, states, looked)
        store.redis.echo("looked")
        sent: list[str] = []
        while not sent or not sent[-1].startswith("ECHO"):
            sent.append(monitor.next_command()["command"])
    [read] = [c for c in sent if c.startswith(f"HMGET {keys.results_key(record.run_id)}")]
    assert sorted(read.split()[2:]) == ["t1#1", "t2#1", "t3#1", "t4#1", "t5#1"]  # not t0: it ended
    assert len(second.tasks["t0"].results) == 1 and second.tasks["t0"] is first.tasks["t0"]
