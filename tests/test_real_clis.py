"""The real agent CLIs (Claude Code, Codex, aider) run farm tasks through their presets against the
scripted server: the file is edited, verify passes, and the tokens and cost are the CLI's own.

The CLIs, at the versions README names as proven, are installed once into a cache
(OTTO_FARM_TEST_CLI_CACHE, default ~/.cache/otto-farm-test-clis): Claude Code and Codex with npm, aider
with pip in a venv of its own (minutes the first time; `python tests/test_real_clis.py` installs them
and prints the parts it has, as .ci/run does before the tests). Each CLI is an optional part
(claude-code, codex, aider): where it cannot be had its tests skip and say why.

No CLI reaches a real LLM: the worker that runs them has the scripted server as every API's base URL, a
dummy key and no secret of this environment, its own empty HOME (no stored login), and a proxy that
refuses whatever is not on loopback.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from otto_farm import celery_app, coordinator, gitops, taskset
from otto_farm.agents import presets
from otto_farm.embedded import Embedded
from otto_farm.models import RunRecord, TaskResult, TaskStatus
from otto_farm.scripted_server import ScriptedReply, ScriptedServer
from otto_farm.settings import Settings
from otto_farm.shell import is_secret_name
from otto_farm.store import Store

from conftest import start_worker, wait_for_run

# Not under /tmp: the bwrap sandbox puts a tmpfs there, and the CLIs run from here.
CACHE = Path(os.environ.get("OTTO_FARM_TEST_CLI_CACHE") or Path.home() / ".cache" / "otto-farm-test-clis")
# part: (npm package, version, binary); the versions README's agent-CLI section names as proven.
NPM = {
    "claude-code": ("@anthropic-ai/claude-code", "2.1.197", "claude"),
    "codex": ("@openai/codex", "0.171.0", "codex"),
}
AIDER = ("aider-chat", "0.86.2")
INSTALL_TIMEOUT_S = 900
KEY = "scripted-test-key"
DEAD_PROXY = "http://127.0.0.1:9"  # nothing listens there: a call to anywhere but loopback fails at once
RUN_TIMEOUT_S = 180
# A farm of its own and the CLIs' start-ups (aider's alone takes seconds): only with --slow-parts, as .ci/run.
pytestmark = pytest.mark.slow_part("the real agent CLIs, about a minute")


def install(cache: Path = CACHE) -> dict[str, Path | str]:
    """Each part's binary, installed into `cache` where it is not yet, or why it cannot be had.

    A lock file keeps two sessions from installing at once; the second finds the first's install.
    """
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / "install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = {**_npm(cache), "aider": _aider(cache)}
        # The binaries alone, for PATH (not the rest of aider's venv); in the cache, not under /tmp, where
        # the sandbox has a tmpfs.
        shutil.rmtree(cache / "bin", ignore_errors=True)
        (cache / "bin").mkdir()
        for binary in found.values():
            if isinstance(binary, Path):
                (cache / "bin" / binary.name).symlink_to(binary)
        return found


def _npm(cache: Path) -> dict[str, Path | str]:
    prefix = cache / "npm"
    bins = {part: prefix / "node_modules" / ".bin" / binary for part, (_, _, binary) in NPM.items()}
    if all(_reports(bins[part], version) for part, (_, version, _) in NPM.items()):
        return dict(bins)
    npm = shutil.which("npm")
    if npm is None:
        return dict.fromkeys(NPM, "npm not found on PATH: Claude Code and Codex are installed with npm")
    specs = [f"{package}@{version}" for package, version, _ in NPM.values()]
    # --prefix: a directory of the cache's own, not the global one. The install scripts npm skips
    # (Claude Code's postinstall) are not needed: `claude` runs without.
    argv = [npm, "install", "--prefix", str(prefix), "--save-exact", "--no-audit", "--no-fund", *specs]
    why = _run(argv, cache / "npm-install.log")
    found: dict[str, Path | str] = {}
    for part, (package, version, _) in NPM.items():
        ok = why is None and _reports(bins[part], version)
        found[part] = (
            bins[part] if ok else why or f"{bins[part]} --version does not say {version} ({package})"
        )
    return found


def _aider(cache: Path) -> Path | str:
    venv = cache / "aider"
    binary = venv / "bin" / "aider"
    package, version = AIDER
    if _reports(binary, version):
        return binary
    shutil.rmtree(venv, ignore_errors=True)  # a half-made venv (an install cut off) starts over
    log = cache / "aider-install.log"
    why = _run([sys.executable, "-m", "venv", str(venv)], log) or _run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", f"{package}=={version}"], log
    )
    if why is None and not _reports(binary, version):
        why = f"{binary} --version does not say {version}"
    return why or binary


def _run(argv: list[str], log: Path) -> str | None:
    """Run an install step, its output appended to `log`; None when it succeeded, else why not."""
    with open(log, "a") as out:
        try:
            proc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, timeout=INSTALL_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return f"{' '.join(argv[:3])} … timed out after {INSTALL_TIMEOUT_S} s (log: {log})"
    if proc.returncode == 0:
        return None
    last = next((line for line in reversed(log.read_text().splitlines()) if line.strip()), "")
    return f"{' '.join(argv)} failed (exit {proc.returncode}): {last[:300]} (log: {log})"


def _reports(binary: Path, version: str) -> bool:
    """Whether `binary` runs and says it is `version`."""
    if not binary.exists():
        return False
    with tempfile.TemporaryDirectory() as home:  # what a CLI writes at start goes there
        env = {"PATH": os.environ.get("PATH", ""), "HOME": home}
        try:
            proc = subprocess.run(
                [str(binary), "--version"], capture_output=True, text=True, env=env, timeout=60
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
    return proc.returncode == 0 and version in proc.stdout


@pytest.fixture(scope="module")
def clis() -> dict[str, Path | str]:
    return install()


def need(clis: dict[str, Path | str], part: str) -> None:
    if isinstance(why := clis[part], str):
        pytest.skip(f"{part} not installed: {why}")


@dataclass
class Farm:
    """This module's own farm: its Redis, one worker with the CLIs on PATH, the scripted server."""

    settings: Settings
    store: Store
    server: ScriptedServer
    work_dir: Path


@pytest.fixture(scope="module")
def farm(settings: Settings, clis: dict[str, Path | str]) -> Iterator[Farm]:
    """A farm of its own, so that only its worker (not the session's, which has no CLIs) takes the jobs."""
    if not any(isinstance(found, Path) for found in clis.values()):
        pytest.skip("; ".join(f"{part} not installed: {why}" for part, why in clis.items()))
    home = Path(tempfile.mkdtemp(prefix="ottofarm-cli-"))  # short: unix socket paths are limited
    embedded = Embedded(Settings(home=home))
    embedded.start_redis()
    own = embedded.settings
    user = home / "user"
    user.mkdir()
    server = ScriptedServer()
    server.start()
    env = {
        "PATH": f"{CACHE / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(user),
        "ANTHROPIC_BASE_URL": server.url,
        "OPENAI_BASE_URL": f"{server.url}/v1",  # the codex preset hands it over with -c
        "ANTHROPIC_API_KEY": KEY,
        "CODEX_API_KEY": KEY,
        "OPENAI_API_KEY": KEY,
        **{name: DEAD_PROXY for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")},
        **{name.lower(): DEAD_PROXY for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")},
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }
    celery_app.configure(own)
    try:
        # No secret of this environment (a real key, a login token) reaches the worker.
        with pytest.MonkeyPatch.context() as scrub:
            for name in list(os.environ):
                if is_secret_name(name):
                    scrub.delenv(name)
            worker = start_worker(own, "clis", concurrency=1, env=env)
        try:
            yield Farm(own, Store.from_url(own.resolved_store_url), server, own.home / "work-clis")
        finally:
            worker.stop()
    finally:
        server.stop()
        celery_app.configure(settings)
        embedded.stop()
        if not os.environ.get("OTTO_FARM_TEST_KEEP"):
            shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def run_cli_task(
    farm: Farm, make_repo: Callable[..., Path], write_taskset: Callable[..., Path]
) -> Callable[..., tuple[RunRecord, TaskResult]]:
    """Run one task, `greet`, through an agent preset on the farm: its record and the task's result.

    `replies` gets the path the slot's greeting.txt will have (a CLI's Write takes an absolute one).
    """

    def run(
        agent: dict[str, Any],
        replies: Callable[[Path], list[ScriptedReply]],
        verify: str = "grep -qx hello greeting.txt",
        sandbox: str = "auto",
    ) -> tuple[RunRecord, TaskResult]:
        repo = make_repo({"README.md": "demo\n", ".gitignore": ".aider*\n"})
        path = write_taskset(
            {
                "repo": str(repo),
                "gate": {"enabled": False},
                "verify": verify,
                "sandbox": {"kind": sandbox},
                "max_task_runs": 1,
                "max_attempts": 1,
                "agent": {"provider": "command", **agent},
                "tasks": [{"key": "greet", "prompt": "Create greeting.txt saying hello."}],
            }
        )
        loaded = taskset.load(path)
        # One job at a time on the worker, so the task's slot is the first.
        slot = gitops.RepoCache(farm.work_dir, loaded.repo).root / "slot-0"
        farm.server.script(*replies(slot / "greeting.txt"))
        farm.server.clear()
        record = wait_for_run(farm.store, coordinator.start(farm.store, loaded).run_id, RUN_TIMEOUT_S)
        result = record.tasks["greet"].last
        assert result is not None, record.model_dump_json(indent=1)[-3000:]
        return record, result

    return run


def cli_report(output: str) -> dict[str, Any]:
    """Claude Code's result object, from the attempt's stored stdout."""
    return json.loads(next(line for line in output.splitlines() if line.startswith('{"type":"result"')))


@pytest.mark.part("claude-code")
def test_claude_code_writes_the_file_and_its_model_usage_is_the_runs(clis, farm, run_cli_task, tmp_path):
    need(clis, "claude-code")

    def replies(target: Path) -> list[ScriptedReply]:
        write = {"file_path": str(target), "content": "hello\n"}
        return [
            ScriptedReply(tool_name="Write", tool_input=write, input_tokens=900, output_tokens=40),
            ScriptedReply(text="Wrote greeting.txt", input_tokens=1000, output_tokens=10),
        ]

    record, result = run_cli_task({"preset": "claude-code"}, replies)
    attempt = result.attempts[-1]
    assert result.status is TaskStatus.passed, (result.error, attempt.agent_output[-6000:])
    assert attempt.final_message == "Wrote greeting.txt"
    # Claude Code streams (stream: true), answered as the API's event stream: no fallback, no lost call.
    calls = [r for r in farm.server.requests if r.path.partition("?")[0] == "/v1/messages"]
    assert [isinstance(r.body, dict) and r.body.get("stream") for r in calls] == [True, True]
    report = cli_report(attempt.agent_output)
    models = report["modelUsage"].values()
    tokens = (sum(m["inputTokens"] for m in models), sum(m["outputTokens"] for m in models))
    assert tokens == (1900, 50)
    status = subprocess.run(
        [sys.executable, "-m", "otto_farm", "status", record.run_id, "--json"],
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("OTTO_FARM_")},
            **farm.settings.env(),
        },
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 0, status.stderr
    usage = json.loads(status.stdout)["usage"]
    assert (usage["input_tokens"], usage["output_tokens"]) == tokens
    assert usage["cost_usd"] == pytest.approx(report["total_cost_usd"])


# In bwrap, as tasks run by default: the preset runs aider without git, whose files the sandbox keeps
# read-only (with git, aider 0.86.2 wrote a user.name into the repository's config, then the index).
AIDER_AGENT = {"preset": "aider", "model": "anthropic/claude-sonnet-4-5"}


@pytest.mark.part("aider")
def test_aider_edit_records_its_printed_cost(clis, farm, run_cli_task):
    need(clis, "aider")
    # A whole-file SEARCH/REPLACE with an empty SEARCH: aider creates greeting.txt.
    edit = "greeting.txt\n```\n<<<<<<< SEARCH\n=======\nhello\n>>>>>>> REPLACE\n```\n"
    record, result = run_cli_task(
        AIDER_AGENT,
        lambda _: [ScriptedReply(text=edit, input_tokens=900, output_tokens=40)],
    )
    attempt = result.attempts[-1]
    assert result.status is TaskStatus.passed, (result.error, attempt.agent_output[-6000:])
    assert "Cost: $0.0033 message" in attempt.agent_output  # what aider printed, at its own prices
    usage = attempt.usage
    assert (usage.input_tokens, usage.output_tokens, usage.cost_usd) == (900, 40, 0.0033)
    assert record.usage.cost_usd == pytest.approx(0.0033)


@pytest.mark.part("aider")
def test_aider_api_error_ends_the_attempt_as_an_api_error(clis, farm, run_cli_task):
    need(clis, "aider")
    record, result = run_cli_task(
        AIDER_AGENT,
        lambda _: [ScriptedReply(status=400, text="messages.0.content: field required")],
    )
    attempt = result.attempts[-1]
    assert attempt.agent_exit_code == 0  # aider exits 0 all the same
    assert (attempt.stop_reason, result.error_code) == ("api_error", "agent_api_error"), attempt.agent_output
    assert result.error is not None and "api_error 400" in result.error
    assert [r.path for r in farm.server.requests if r.method == "POST"] == ["/v1/messages"]
    assert result.status is not TaskStatus.passed


@pytest.mark.part("codex")
def test_codex_answers_from_the_responses_stream(clis, farm, run_cli_task):
    need(clis, "codex")
    # A text reply only: Codex 0.171.0 edits files through a JavaScript `exec` tool of its own, which a
    # scripted reply cannot drive, so nothing is edited and verify only checks the worktree is there.
    reply = ScriptedReply(
        text="All done.", input_tokens=900, output_tokens=40, cache_read_tokens=5000, cache_write_tokens=800
    )
    record, result = run_cli_task({"preset": "codex"}, lambda _: [reply], verify="test -f README.md")
    attempt = result.attempts[-1]
    assert attempt.final_message == "All done.", attempt.agent_output[-3000:]
    usage = attempt.usage
    assert (usage.input_tokens, usage.output_tokens) == (900, 40)
    assert (usage.cache_read_tokens, usage.cache_write_tokens) == (5000, 800)
    assert any(r.path == "/v1/responses" and r.method == "POST" for r in farm.server.requests)


@pytest.mark.part("codex")
def test_codex_that_cannot_reach_its_api_ends_as_an_api_error(clis, farm, run_cli_task):
    """Codex waits for an unreachable API without end; the preset's `unreachable` line ends the attempt."""
    need(clis, "codex")
    closed = f"export OPENAI_BASE_URL={DEAD_PROXY}/v1; {presets.get_preset('codex').command}"
    started = time.monotonic()
    record, result = run_cli_task({"preset": "codex", "command": closed}, lambda _: [], verify="true")
    assert result.error_code == "agent_api_error", result.attempts[-1].agent_output[-3000:]
    assert result.error is not None and "cannot reach its API" in result.error
    assert time.monotonic() - started < 90  # the job's limit is 30 minutes


if __name__ == "__main__":
    # Install what can be had; print the parts installed (for OTTO_FARM_TEST_REQUIRE), why not on stderr.
    for part, found in install().items():
        if isinstance(found, Path):
            print(part)
        else:
            print(f"{part} not installed: {found}", file=sys.stderr)
