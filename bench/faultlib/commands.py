"""Faults a user makes with the CLI on the embedded default: two submits at once, Ctrl-C on a submit
(its own farm, and a farm `up` keeps), `resume` with no worker then after `up`, bad input."""

from __future__ import annotations

import os
import re
import signal
import time
from collections import Counter

import yaml
from harness import log

from faultlib.farm import Farm, Row, run_id_of, secs, wait_for, wait_run
from otto_farm.gitops import git


def two_submits(f: Farm, quick: bool) -> list[Row]:
    repo = f.repo()
    body = 'if [ "$OTTO_FARM_TASK_KEY" = b ]; then sleep 6; fi; touch $OTTO_FARM_TASK_KEY.txt'
    first = f.taskset(repo, body, [{"key": "a", "prompt": "p"}], name="one.yaml")
    second = f.taskset(repo, body, [{"key": "b", "prompt": "p"}], name="two.yaml")
    procs = [f.start("submit", str(first))]
    time.sleep(1.5)  # the second joins a farm the first is starting or has started
    procs.append(f.start("submit", str(second)))
    outs = [p.communicate(timeout=240) for p in procs]
    codes = [p.returncode for p in procs]
    ids = [run_id_of(out) for out, _ in outs if out.startswith("run ")]
    farm_left = f.socket.exists()
    with f.store() as store:
        records = [store.get(run_id) for run_id in ids]
    figs = [f.figures(record, repo) for record in records]
    errors = "; ".join(err.strip().splitlines()[-1] for _, err in outs if err.strip())
    return [
        Row(
            "Two `submit`s at once",
            "two `otto-farm submit` 1.5 s apart, no `up` (the embedded default)",
            f"exits {codes[0]}/{codes[1]}; runs " + "/".join(r.status.value for r in records),
            **{k: sum(fig[k] for fig in figs) for k in ("lost", "ran_twice", "merged_twice")},
            notes=f"farm {'still up' if farm_left else 'stopped'} after the last left"
            + (f"; {errors}" if errors else ""),
        )
    ]


def ctrl_c_own_farm(f: Farm, quick: bool) -> list[Row]:
    repo = f.repo()
    path = f.taskset(repo, "sleep 60", [{"key": "slow", "prompt": "p"}])
    proc = f.start("submit", str(path))
    assert proc.stdout is not None
    run_id = run_id_of(proc.stdout.readline())
    wait_for(f.agent_started, what="the agent")
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    took = time.monotonic() - t0
    farm_left = f.socket.exists()
    with f.store() as store:
        record = store.get(run_id)
    return [
        Row(
            "Ctrl-C on `submit` (its own farm)",
            "SIGINT to `otto-farm submit` while its one agent runs (`sleep 60`)",
            f"exit {proc.returncode}; run {record.status.value}",
            **f.figures(record, repo, cancelled=True),
            recovery=secs(took, "exit"),
            notes=f"said: {f.said(err)}; farm {'still up' if farm_left else 'stopped'}",
        )
    ]


def ctrl_c_on_up(f: Farm, quick: bool) -> list[Row]:
    repo = f.repo()
    path = f.taskset(repo, "sleep 5; touch a.txt", [{"key": "a", "prompt": "p"}])
    assert f.otto("up", "--workers", "1").returncode == 0
    proc = f.start("submit", str(path))
    assert proc.stdout is not None
    run_id = run_id_of(proc.stdout.readline())
    wait_for(f.agent_started, what="the agent")
    t0 = time.time()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    refused = f.otto("down")
    watched = f.otto("status", run_id, "--watch")
    with f.store() as store:
        record = wait_run(store, run_id, timeout_s=60)
        ended = float(next(e["ts"] for _, e in store.events(run_id) if e["kind"] == "run_finished"))
    return [
        Row(
            "Ctrl-C on `submit` (a farm `up` keeps)",
            "SIGINT to `otto-farm submit` while its agent runs; then `otto-farm down`, `status --watch`",
            f"exit {proc.returncode}; `down` exit {refused.returncode}; `status --watch` exit "
            f"{watched.returncode}; run {record.status.value}",
            **f.figures(record, repo),
            recovery=secs(ended - t0, "the run's end (it went on)"),
            notes=f"said: {f.said(err)}; `down` said: {f.said(refused.stderr)}",
        )
    ]


def resume_without_worker(f: Farm, quick: bool) -> list[Row]:
    repo = f.repo()
    path = f.taskset(
        repo, "sleep 4; touch $OTTO_FARM_TASK_KEY.txt", [{"key": k, "prompt": "p"} for k in "ab"]
    )
    assert f.otto("up", "--workers", "1").returncode == 0
    run_id = run_id_of(f.otto("submit", str(path), "--no-wait").stdout)
    wait_for(f.agent_started, what="an agent")
    busy = f.otto("resume", run_id)  # one job running, one queued: nothing to send
    os.killpg(int((f.home / "workers.pid").read_text()), signal.SIGKILL)  # the workers die; the run waits
    orphaned = f.otto("resume", run_id)
    t_up = time.time()
    assert f.otto("up", "--workers", "1").returncode == 0
    watched = f.otto("status", run_id, "--watch")
    with f.store() as store:
        record = wait_run(store, run_id, timeout_s=60)
        ended = float(next(e["ts"] for _, e in store.events(run_id) if e["kind"] == "run_finished"))
    received = Counter(re.findall(r"run_task\[(\S+)\] received", (f.home / "worker.log").read_text()))
    starts, ends = f.agent_runs()
    return [
        Row(
            "`resume` with no worker, then `up`",
            "`up -w 1`, 2 tasks; `resume` while one runs; SIGKILL the workers; `resume`; `up`; `status --watch`",
            f"resume exits {busy.returncode}, {orphaned.returncode}; `status --watch` exit {watched.returncode}; "
            f"run {record.status.value}",
            **f.figures(record, repo),
            recovery=secs(ended - t_up, "the run's end after `up`"),
            notes=f"said: {f.said(orphaned.stderr)}; deliveries per job {sorted(received.values())}; agent "
            f"starts {dict(starts)}, finishes {dict(ends)}",
        )
    ]


BAD_INPUT = {
    "`integration_branch: '-x'`": {"integration_branch": "-x"},
    "`integration_branch: 'bad..ref name'`": {"integration_branch": "bad..ref name"},
    "`verify: ''`": {"verify": ""},
}


def bad_input(f: Farm, quick: bool) -> list[Row]:
    repo = f.repo()
    refs = git(["for-each-ref"], cwd=repo)
    rows = []
    cases = [
        (
            what,
            yaml.safe_dump(
                {
                    "repo": str(repo),
                    "agent": {"command": f.agent("true")},
                    "tasks": [{"key": "a", "prompt": "p"}],
                    **extra,
                }
            ),
        )
        for what, extra in BAD_INPUT.items()
    ]
    cases.append(
        (
            "a duplicate YAML key (`repo`)",
            f"repo: {repo}\nagent: {{command: 'true'}}\ntasks: [{{key: a, prompt: p}}]\nrepo: .\n",
        )
    )
    for what, text in cases:
        path = f.dir / "bad.yaml"
        path.write_text(text)
        t0 = time.monotonic()
        res = f.otto("submit", str(path))
        took = time.monotonic() - t0
        written = [
            name
            for name, changed in (
                ("farm home", f.home.exists()),
                ("repo refs", git(["for-each-ref"], cwd=repo) != refs),
                ("agent ran", f.agent_started()),
            )
            if changed
        ]
        lines = res.stderr.strip().splitlines()
        log(f"bad input {what}: exit {res.returncode}: {res.stderr.strip()}")
        rows.append(
            Row(
                f"Bad input: {what}",
                "`otto-farm submit` of a task set with it",
                f"exit {res.returncode}; {len(lines)} line{'s' * (len(lines) != 1)} in {took:.1f} s",
                lost=0 if not f.agent_started() else "agent ran",
                notes=f"said: {f.said(lines[-1] if lines else '')}; written: {', '.join(written) or 'nothing'}",
            )
        )
    return rows
