"""A command's output is read as it comes and bounded: head and tail kept, the middle counted, and a
command that writes past the hard cap killed. Real processes throughout."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from otto_farm.shell import OUTPUT_CAP_BYTES, run

from conftest import gone_soon

CUT = re.compile(r"\n\[\.\.\. (\d+) bytes cut \.\.\.\]\n")

# Runs shell.run in a fresh interpreter, so its peak RSS is that of one run and not of this test session.
# The peak is VmHWM, its own memory's: getrusage's ru_maxrss survives exec, so it would report the pytest
# process that started it.
FLOOD = """
import json, re, sys
from pathlib import Path
from otto_farm.shell import run
def peak_kib():
    return int(re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1))
before = peak_kib()
res = run("yes | head -c 1G", cwd=Path(sys.argv[1]), timeout_s=60)
after = peak_kib()
print(json.dumps({"before_kib": before, "after_kib": after, "res": res.__dict__}))
"""


def seq_bytes(n: int) -> int:
    return sum(len(str(i)) + 1 for i in range(1, n + 1))


def kept_and_cut(text: str) -> tuple[str, str, int]:
    head, cut, tail = CUT.split(text)
    return head, tail, int(cut)


def test_a_flood_is_killed_at_the_default_cap_in_little_memory(tmp_path):
    """Guards the worker machine: 1 GiB of output is not held in memory (nor on disk); the command is
    killed once past OUTPUT_CAP_BYTES, and the run's peak RSS grows by far less than the output."""
    started = time.monotonic()
    child = subprocess.run(
        [sys.executable, "-c", FLOOD, str(tmp_path)],
        cwd=Path(__file__).parents[1],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    report = json.loads(child.stdout)
    res = report["res"]
    assert time.monotonic() - started < 30
    assert res["overflowed"] and not res["timed_out"] and not res["stopped"]
    assert res["exit_code"] == -signal.SIGKILL
    assert res["output"].endswith("\n[killed: output passed 64 MiB]\n")
    head, tail, cut = kept_and_cut(res["output"].removesuffix("[killed: output passed 64 MiB]\n"))
    assert head.startswith("y\ny\n") and tail.endswith("y\n")
    assert OUTPUT_CAP_BYTES - 200_000 < cut < OUTPUT_CAP_BYTES + (1 << 20)  # killed soon after the cap
    assert len(res["output"]) < 200_100
    assert report["after_kib"] < 150 * 1024
    assert report["after_kib"] - report["before_kib"] < 32 * 1024


def test_a_smaller_cap_kills_a_flood_on_stderr_too(tmp_path):
    """Guards the cap on a separate stderr: it counts towards the cap and is bounded the same way."""
    res = run(
        "echo starting; yes >&2", cwd=tmp_path, timeout_s=30, split_stderr=True, max_output_bytes=1 << 20
    )
    assert res.overflowed and res.exit_code == -signal.SIGKILL
    assert res.output == "starting\n[killed: output passed 1 MiB]\n"
    head, tail, cut = kept_and_cut(res.stderr)
    assert head.startswith("y\n") and tail.endswith("y\n") and cut > 0
    assert len(res.stderr) < 200_100


def test_an_odd_cap_is_reported_in_bytes(tmp_path):
    """Guards the kill line: a cap that is not whole MiB is still stated exactly."""
    res = run("yes", cwd=tmp_path, timeout_s=30, max_output_bytes=100_000, max_output_chars=100)
    assert res.overflowed
    assert res.output.endswith("y\n[killed: output passed 100000 bytes]\n")


def test_head_and_tail_are_kept_and_the_middle_counted(tmp_path):
    """Guards the bounded buffer: a quarter of max_output_chars from the start, the rest from the end,
    and the cut count makes up the difference exactly."""
    res = run("seq 1 200000", cwd=tmp_path, timeout_s=10, max_output_chars=1000)
    assert res.exit_code == 0 and not res.overflowed
    head, tail, cut = kept_and_cut(res.output)
    assert len(head) == 250 and head.startswith("1\n2\n3\n")
    assert len(tail) == 750 and tail.endswith("199999\n200000\n")
    assert len(head) + cut + len(tail) == seq_bytes(200000)


def test_several_mib_under_the_cap_are_not_killed(tmp_path):
    """Guards against killing honest commands: ~5 MiB of output runs to its end, bounded, exit code kept."""
    n = 750_000
    assert 4 << 20 < seq_bytes(n) < OUTPUT_CAP_BYTES
    res = run(f"seq 1 {n}; exit 3", cwd=tmp_path, timeout_s=30)
    assert res.exit_code == 3 and not res.overflowed and not res.timed_out
    head, tail, cut = kept_and_cut(res.output)
    assert head.startswith("1\n2\n3\n") and tail.endswith(f"{n - 1}\n{n}\n")
    assert len(head) + cut + len(tail) == seq_bytes(n)
    assert "killed" not in res.output


def test_a_cut_inside_a_character_does_not_garble_it(tmp_path):
    """Guards decoding: both cuts fall inside a two-byte character; its pieces are dropped and counted,
    not shown as replacement characters."""
    res = run("yes é | head -n 100000", cwd=tmp_path, timeout_s=10, max_output_chars=102)
    head, tail, cut = kept_and_cut(res.output)
    assert "\ufffd" not in res.output
    assert set(head + tail) == {"é", "\n"}
    assert len((head + tail).encode()) + cut == 300_000


def test_a_background_child_holding_stdout_does_not_hold_us(tmp_path):
    """Guards the wait: once the command exits, a child still holding the pipe is killed with its group
    and the run returns at once, with what was written."""
    pidfile = tmp_path / "bg.pid"
    started = time.monotonic()
    res = run(f"sleep 30 & echo $! > {pidfile}; echo done", cwd=tmp_path, timeout_s=60)
    assert time.monotonic() - started < 2
    assert res.exit_code == 0 and res.output == "done\n"
    assert gone_soon(int(pidfile.read_text()))


def test_a_process_that_left_the_group_holding_stdout_does_not_hold_us(tmp_path):
    """Guards the bounded drain: a process out of reach of the group kill keeps the pipe open, and the
    run still returns shortly after the command exits."""
    pidfile = tmp_path / "escaped.pid"
    # The command waits until its child has left the group, or the group kill could beat it to it.
    escape = (
        f"setsid bash -c 'echo $$ > {pidfile}; exec sleep 30' & until [ -s {pidfile} ]; do sleep 0.01; done"
    )
    started = time.monotonic()
    res = run(f"{escape}; echo done", cwd=tmp_path, timeout_s=60)
    pid = int(pidfile.read_text())
    try:
        assert time.monotonic() - started < 2
        assert res.exit_code == 0 and res.output == "done\n"
        assert Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"  # still holds it
    finally:
        os.kill(pid, signal.SIGKILL)


def test_timeout_still_kills_a_command_that_keeps_talking(tmp_path):
    """Guards the deadline while output flows: steady output wakes the loop often, the timeout still
    fires, and the output so far is kept."""
    started = time.monotonic()
    res = run("while :; do echo tick; sleep 0.01; done", cwd=tmp_path, timeout_s=1)
    assert 1 <= time.monotonic() - started < 3
    assert res.timed_out and not res.overflowed and res.exit_code == -signal.SIGKILL
    assert res.output.startswith("tick\n") and res.output.endswith("tick\n")


def test_stop_is_asked_on_schedule_while_output_flows(tmp_path):
    """Guards `stop`: asked every STOP_POLL_S, not on every read, and it still kills the command."""
    asked: list[float] = []

    def stop() -> bool:
        asked.append(time.monotonic())
        return len(asked) == 3

    res = run("while :; do echo tick; sleep 0.001; done", cwd=tmp_path, timeout_s=30, stop=stop)
    assert res.stopped and not res.timed_out and res.exit_code == -signal.SIGKILL
    assert len(asked) == 3 and all(b - a >= 0.45 for a, b in zip(asked, asked[1:], strict=False))


def test_prefix_wraps_the_command_and_pass_fds_reach_it(tmp_path):
    """Guards the hooks a sandbox and a lock use: argv is [*prefix, bash, -c, command], and a passed fd is
    open in the command."""
    read_end, write_end = os.pipe()
    try:
        res = run(
            f'echo "$WRAPPED"; echo via-fd >&{write_end}',
            cwd=tmp_path,
            timeout_s=10,
            prefix=["env", "WRAPPED=yes"],
            pass_fds=[write_end],
        )
        os.close(write_end)
        assert res.exit_code == 0 and res.output == "yes\n"
        assert os.read(read_end, 100) == b"via-fd\n"
    finally:
        os.close(read_end)


def worker_peak_rss_mib(pid: int) -> float:
    """The highest peak RSS (VmHWM) of a worker process and its pool processes, in MiB."""
    pids = [pid, *(int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split())]
    peaks = []
    for p in pids:
        status = Path(f"/proc/{p}/status").read_text()
        peaks.append(int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024)  # type: ignore[union-attr]
    return max(peaks)


def test_a_task_printing_a_gibibyte_leaves_the_worker_flat(make_repo, write_taskset, run_taskset, worker):
    """Agent and verify each print 1 GiB in a real task on the session's worker: both are killed at the
    cap and reported so, and no worker process's peak RSS reaches 300 MiB (it was 5.4 GiB)."""
    flood = "yes | head -c 1G"
    record = run_taskset(
        write_taskset(
            {
                "repo": str(make_repo()),
                "max_task_runs": 1,
                "verify": flood,
                "agent": {"command": "touch x"},
                "tasks": [
                    {"key": "chatty-agent", "prompt": "p", "agent": {"command": flood}},
                    {"key": "chatty-verify", "prompt": "p"},
                ],
            }
        )
    )
    agent, verify = record.tasks["chatty-agent"].last, record.tasks["chatty-verify"].last
    assert agent.error_code == "agent_error" and "output passed the cap" in (agent.error or "")
    assert verify.error_code == "verify_output_cap"
    assert len(verify.attempts[-1].verify_output) < 10_000
    assert worker_peak_rss_mib(worker.proc.pid) < 300
