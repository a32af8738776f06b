"""What the commands print outside a terminal: plain, whole lines, whatever width COLUMNS says."""

from __future__ import annotations

import re
import threading

from test_cli import otto
from test_cli_faults import start

from otto_farm.cli.common import fitting, plain_table

from conftest import wait_for

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
    shown, more = fitting(rows, 5)
    assert [r[0] for r in shown] == ["t0", "t7", "t30", "t41", "t42"]
    assert more is not None and more.startswith("... 45 more tasks (45 passed)")
    assert fitting(rows, 50) == (rows, None)
    text = plain_table(("task", "status"), [(r[0], r[2]) for r in rows])
    assert len(text.splitlines()) == 51 and "\nt42   running\n" in text
