"""A running task's output, live: from the command's pipes through Redis to `otto-farm logs -f`."""

from __future__ import annotations

import re
import threading
import time

from test_cli import otto
from test_cli_faults import start

from otto_farm import livelog
from otto_farm.cli import submit
from otto_farm.models import TaskStatus
from otto_farm.shell import LIVE_EVERY_S, run

from conftest import wait_for


def test_a_commands_output_reaches_its_tee_while_it_runs(tmp_path):
    seen: list[str] = []
    ended = threading.Event()
    results = []

    def command() -> None:
        results.append(
            run("echo one; while [ ! -e go ]; do sleep 0.05; done; echo two", tmp_path, 30, tee=seen.append)
        )
        ended.set()

    threading.Thread(target=command).start()
    wait_for(lambda: "one\n" in "".join(seen), timeout_s=10)
    assert not ended.is_set()
    (tmp_path / "go").touch()
    assert ended.wait(10)
    assert "".join(seen) == results[0].output == "one\ntwo\n"


def test_a_chatty_command_reaches_its_tee_whole_in_a_few_calls(tmp_path):
    seen: list[str] = []
    started = time.monotonic()
    res = run("seq 1 200000", tmp_path, 30, tee=seen.append, max_output_chars=1000)
    took = time.monotonic() - started
    assert "".join(seen) == "".join(f"{i}\n" for i in range(1, 200001))  # what the capture cut, too
    assert "bytes cut" in res.output
    assert len(seen) <= 2 + took / LIVE_EVERY_S


def test_a_secret_split_across_two_chunks_is_redacted(store, monkeypatch):
    monkeypatch.setenv("OTTO_FARM_TEST_TOKEN", "s3cr3t-value-123456")
    live = livelog.LiveLog(store, "live-r1", "a", run_no=1)
    tee = live.tee("agent", attempt=1)
    tee("before s3cr3t-val")
    assert [e.text for e in livelog.read(store, "live-r1", "a")[1]] == ["before "]  # the rest may be a secret
    tee("ue-123456 after\n")
    tee("x" * 100_000)
    live.close()
    entries = livelog.read(store, "live-r1", "a")[1]
    text = "".join(e.text for e in entries)
    assert text.startswith("before [redacted] after\n") and "s3cr3t" not in text
    assert all(len(e.text) <= livelog.CHUNK_CHARS + 100 for e in entries)  # a chunk is bounded
    assert {(e.run, e.source, e.attempt) for e in entries} == {(1, "agent", 1)}


def test_logs_follow_shows_a_running_agents_output_before_its_job_ends(settings, store, held_run, tmp_path):
    run_id = held_run.start("echo AGENT-SAYS-HI; ", "echo AGENT-DONE", verify="echo VERIFY-SAYS-HI")
    env = settings.env()
    lines: list[str] = []
    with start("logs", run_id, "slow", "-f", cwd=tmp_path, env=env) as follower:
        assert follower.stdout is not None and follower.stderr is not None
        reader = threading.Thread(target=lambda: lines.extend(follower.stdout))  # type: ignore[arg-type]
        reader.start()
        wait_for(lambda: "AGENT-SAYS-HI\n" in lines, timeout_s=60)
        assert store.get(run_id).tasks["slow"].status is TaskStatus.running  # the job has not ended
        assert "so far" in otto("status", run_id, cwd=tmp_path, env=env).stdout  # its elapsed time
        held_run.release()
        follower.wait(60)
        reader.join(10)
        errors = follower.stderr.read()
    out = "".join(lines)
    assert follower.returncode == 0, out + errors
    assert out.index("AGENT-SAYS-HI") < out.index("AGENT-DONE") < out.index("VERIFY-SAYS-HI")
    assert "slow run 1 (batch 1): passed" in out  # the stored summary, once the job ended


def test_submit_says_how_long_each_running_task_has_run(store, held_run, monkeypatch, capsys):
    monkeypatch.setattr(submit, "PROGRESS_EVERY_S", 1.0)
    run_id = held_run.start()
    follower = threading.Thread(target=submit.follow, args=(store, run_id))
    follower.start()
    wait_for(lambda: "  .. running: slow " in capsys.readouterr().out, timeout_s=60)
    held_run.release()
    follower.join(60)
    assert re.search(r"ok slow passed after 1 attempt\(s\) in \d+s", capsys.readouterr().out)
