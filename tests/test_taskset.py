"""Task set files: every bad input is one InputError line naming the file and the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from otto_farm.errors import InputError
from otto_farm.gitops import git
from otto_farm.taskset import load


def one_line_error(path: Path, repo: str | None = None) -> str:
    """Load `path`, expecting an InputError; return its message, checked to be one line naming the file."""
    with pytest.raises(InputError) as info:
        load(path, repo)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    return message


def with_repo(repo: Path, tasks: list[dict[str, Any]] | None = None, **fields: Any) -> dict[str, Any]:
    """A task set on `repo` with a working command agent, plus `fields`."""
    data: dict[str, Any] = {"repo": str(repo), "agent": {"command": "true"}}
    data.update(fields)
    data["tasks"] = tasks if tasks is not None else [{"key": "a", "prompt": "do a"}]
    return data


def test_yaml_syntax_error(write_taskset):
    path = write_taskset("tasks:\n  - key: a\n    prompt: [unclosed\n")
    message = one_line_error(path)
    assert "YAML error at line" in message


def test_yaml_that_is_not_a_mapping(write_taskset):
    path = write_taskset("- just\n- a list\n")
    assert "expected a mapping" in one_line_error(path)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    assert one_line_error(path) == f"{path}: no such file"


def test_file_that_is_not_text(tmp_path):
    path = tmp_path / "tasks.yaml"
    path.write_bytes(b"tasks:\n  - key: a\n    prompt: \xff\xfe\n")
    one_line_error(path)


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"colour": "red"}, "colour"),
        ({"tasks": [{"key": "a", "prompt": "do a", "colour": "red"}]}, "tasks[0].colour"),
        ({"agent": {"command": "true", "colour": "red"}}, "agent.colour"),
        ({"tasks": [{"key": "a", "prompt": "p", "agent": {"colour": "red"}}]}, "tasks[0].agent.colour"),
    ],
    ids=["top-level", "task", "agent", "task-agent"],
)
def test_unknown_field(make_repo, write_taskset, extra, field):
    path = write_taskset({**with_repo(make_repo()), **extra})
    assert one_line_error(path) == f"{path}: {field}: unknown field"


def test_wrong_type(make_repo, write_taskset):
    path = write_taskset(with_repo(make_repo(), max_attempts="two"))
    message = one_line_error(path)
    assert message.startswith(f"{path}: max_attempts: ")
    assert "integer" in message


def test_value_out_of_range(make_repo, write_taskset):
    path = write_taskset(with_repo(make_repo(), timeout_s=7 * 3600))
    assert one_line_error(path).startswith(f"{path}: timeout_s: ")


def test_missing_tasks(make_repo, write_taskset):
    path = write_taskset({"repo": str(make_repo())})
    assert one_line_error(path) == f"{path}: tasks: required field missing"


def test_duplicate_task_key(make_repo, write_taskset):
    tasks = [{"key": "a", "prompt": "one"}, {"key": "b", "prompt": "two"}, {"key": "a", "prompt": "three"}]
    path = write_taskset(with_repo(make_repo(), tasks))
    assert one_line_error(path) == f"{path}: tasks[2].key: duplicate key 'a'"


@pytest.mark.parametrize("key", ["Bad Key", "../x", "-a", ""])
def test_unsafe_key(make_repo, write_taskset, key):
    path = write_taskset(with_repo(make_repo(), [{"key": "ok", "prompt": "p"}, {"key": key, "prompt": "p"}]))
    message = one_line_error(path)
    assert message.startswith(f"{path}: tasks[1].key: unsafe key")
    assert repr(key) in message


def test_unknown_dependency(make_repo, write_taskset):
    tasks = [{"key": "a", "prompt": "p"}, {"key": "b", "prompt": "p", "depends_on": ["a", "zz"]}]
    path = write_taskset(with_repo(make_repo(), tasks))
    assert one_line_error(path) == f"{path}: tasks[1].depends_on: unknown task 'zz'"


def test_dependency_cycle(make_repo, write_taskset):
    tasks = [
        {"key": "x", "prompt": "p"},
        {"key": "a", "prompt": "p", "depends_on": ["x", "b"]},
        {"key": "b", "prompt": "p", "depends_on": ["a"]},
    ]
    path = write_taskset(with_repo(make_repo(), tasks))
    assert one_line_error(path) == f"{path}: tasks.depends_on: dependency cycle: a -> b -> a"


def test_self_dependency_is_a_cycle(make_repo, write_taskset):
    path = write_taskset(with_repo(make_repo(), [{"key": "a", "prompt": "p", "depends_on": ["a"]}]))
    assert one_line_error(path).endswith("dependency cycle: a -> a")


@pytest.mark.parametrize("prompt", ["", "   \n  "])
def test_empty_prompt(make_repo, write_taskset, prompt):
    path = write_taskset(with_repo(make_repo(), [{"key": "a", "prompt": prompt}]))
    assert one_line_error(path) == f"{path}: tasks[0].prompt: must not be empty"


def test_repo_that_is_not_a_git_repository(tmp_path, write_taskset):
    plain = tmp_path / "plain"
    plain.mkdir()
    path = write_taskset(with_repo(plain))
    assert one_line_error(path) == f"{path}: repo: {str(plain)!r} is not a git repository"


def test_a_missing_repo_path_is_not_called_a_repository_it_is_not(tmp_path, write_taskset):
    path = write_taskset(with_repo(tmp_path / "nowhere"))
    assert one_line_error(path) == f"{path}: repo: {str(tmp_path / 'nowhere')!r}: no such directory"


def test_missing_base_branch(make_repo, write_taskset):
    repo = make_repo()
    path = write_taskset(with_repo(repo, base="nope"))
    assert one_line_error(path) == f"{path}: base: branch 'nope' not found in {str(repo)!r}"


def test_detached_repo_without_base(make_repo, write_taskset):
    repo = make_repo()
    git(["checkout", "-q", "--detach"], cwd=repo)
    path = write_taskset(with_repo(repo))
    message = one_line_error(path)
    assert message.startswith(f"{path}: base: ")
    assert "set base" in message


def test_unknown_agent_provider(make_repo, write_taskset):
    path = write_taskset(with_repo(make_repo(), agent={"provider": "gpt-9"}))
    message = one_line_error(path)
    assert message.startswith(f"{path}: agent.provider: unknown provider 'gpt-9'")
    assert "command" in message  # names the known ones


def test_unknown_agent_provider_in_task(make_repo, write_taskset):
    tasks = [{"key": "a", "prompt": "p"}, {"key": "b", "prompt": "p", "agent": {"provider": "gpt-9"}}]
    path = write_taskset(with_repo(make_repo(), tasks))
    assert one_line_error(path).startswith(f"{path}: tasks[1].agent.provider: unknown provider 'gpt-9'")


def test_command_agent_without_command(make_repo, write_taskset):
    path = write_taskset(with_repo(make_repo(), agent={"provider": "command"}))
    assert (
        one_line_error(path)
        == f"{path}: agent.command: required for provider 'command' (or set OTTO_FARM_AGENT_COMMAND)"
    )


def test_tasks_may_each_bring_the_command(make_repo, write_taskset):
    tasks = [{"key": "a", "prompt": "p", "agent": {"command": "echo a"}}, {"key": "b", "prompt": "p"}]
    path = write_taskset(with_repo(make_repo(), tasks, agent={"provider": "command"}))
    # b has no command of its own and the set has none: the set's agent is the field to fix.
    assert (
        one_line_error(path)
        == f"{path}: agent.command: required for provider 'command' (or set OTTO_FARM_AGENT_COMMAND)"
    )
    tasks[1]["agent"] = {"command": "echo b"}
    path = write_taskset(with_repo(make_repo(name="repo2"), tasks, agent={"provider": "command"}))
    assert load(path).taskset.agent_for("b").command == "echo b"


def test_relative_repo_is_relative_to_the_file(make_repo, tmp_path, monkeypatch, write_taskset):
    repo = make_repo()
    (tmp_path / "sets").mkdir()
    path = write_taskset(with_repo(repo) | {"repo": "../repo"}, name="sets/tasks.yaml")
    monkeypatch.chdir(repo.parent.parent)  # cwd elsewhere: ../repo from here is not the repo
    loaded = load(path)
    assert loaded.repo == str(repo.resolve())
    assert loaded.taskset.repo == loaded.repo
    assert loaded.source == path.resolve()
    assert loaded.base == "main"
    assert loaded.base_sha == git(["rev-parse", "main"], cwd=repo).strip()


def test_repo_argument_is_relative_to_cwd(make_repo, tmp_path, monkeypatch, write_taskset):
    repo = make_repo()
    (tmp_path / "sets").mkdir()
    path = write_taskset(with_repo(Path("elsewhere")), name="sets/tasks.yaml")
    monkeypatch.chdir(tmp_path)
    loaded = load(path, repo="repo")  # tmp_path/repo; relative to the file it would be sets/repo
    assert Path(loaded.repo).is_absolute()
    assert loaded.repo == str(repo.resolve())


def test_base_defaults_to_the_current_branch(make_repo, write_taskset):
    repo = make_repo()
    git(["checkout", "-q", "-b", "feature"], cwd=repo)
    (repo / "f.txt").write_text("f\n")
    git(["add", "f.txt"], cwd=repo)
    git(["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "f"], cwd=repo)
    loaded = load(write_taskset(with_repo(repo)))
    assert loaded.base == loaded.taskset.base == "feature"
    assert loaded.base_sha == git(["rev-parse", "feature"], cwd=repo).strip()
    assert loaded.base_sha != git(["rev-parse", "main"], cwd=repo).strip()


def test_explicit_base(make_repo, write_taskset):
    repo = make_repo()
    git(["branch", "release"], cwd=repo)
    git(["checkout", "-q", "--detach"], cwd=repo)
    loaded = load(write_taskset(with_repo(repo, base="release")))
    assert loaded.base == "release"
    assert loaded.base_sha == git(["rev-parse", "release"], cwd=repo).strip()


def test_url_repo_is_kept_as_given(make_repo, write_taskset):
    repo = make_repo()
    url = f"file://{repo}"
    loaded = load(write_taskset(with_repo(repo) | {"repo": url}))
    assert loaded.repo == url
    assert loaded.base == "main"


def test_plain_text_task_list(make_repo, tmp_path):
    repo = make_repo()
    path = tmp_path / "tasks.txt"
    path.write_text("add a readme section\n\n   \n  fix the flaky test  \nbump the version\n")
    # A .txt set names no agent: without a default command that is one clear line.
    with pytest.raises(InputError, match="OTTO_FARM_AGENT_COMMAND"):
        load(path, repo=str(repo))
    ts = load(path, repo=str(repo), agent_command="my-agent").taskset
    assert ts.agent.command == "my-agent"
    assert [t.key for t in ts.tasks] == ["t1", "t2", "t3"]
    assert [t.prompt for t in ts.tasks] == ["add a readme section", "fix the flaky test", "bump the version"]
    assert all(t.depends_on == [] for t in ts.tasks)


def test_task_agent_overrides_merge_over_the_sets(make_repo, write_taskset):
    tasks = [
        {"key": "a", "prompt": "p", "agent": {"model": "m2", "max_turns": 5}},
        {"key": "b", "prompt": "p"},
    ]
    agent = {"provider": "command", "command": "run-it", "model": "m1", "max_turns": 10}
    ts = load(write_taskset(with_repo(make_repo(), tasks, agent=agent))).taskset
    a = ts.agent_for("a")
    # Fields the task left out come from the set, not from AgentConfig's defaults.
    assert (a.provider, a.command, a.model, a.max_turns) == ("command", "run-it", "m2", 5)
    assert ts.agent_for("b") == ts.agent
    assert ts.agent.model == "m1"


def test_existing_integration_branch_is_refused(make_repo, write_taskset):
    repo = make_repo()
    git(["branch", "release"], cwd=repo)
    path = write_taskset(with_repo(repo) | {"integration_branch": "release"})
    assert one_line_error(path) == f"{path}: integration_branch: branch 'release' exists already"


@pytest.mark.parametrize("branch", ["-x", "bad..ref name", "HEAD", "@{-1}", ""])
def test_bad_integration_branch(make_repo, write_taskset, branch):
    # Refused before any agent runs: `-x` would reach `git checkout -B` as an option, after the jobs.
    path = write_taskset(with_repo(make_repo()) | {"integration_branch": branch})
    assert one_line_error(path) == f"{path}: integration_branch: not a valid git branch name: {branch!r}"


def test_integration_branch_with_slashes_is_fine(make_repo, write_taskset):
    path = write_taskset(with_repo(make_repo()) | {"integration_branch": "farm/run-1"})
    assert load(path).taskset.integration_branch == "farm/run-1"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"verify": ""}, "verify"),
        ({"verify": "  "}, "verify"),
        ({"tasks": [{"key": "a", "prompt": "p", "verify": ""}]}, "tasks[0].verify"),
        ({"gate": {"verify": " "}}, "gate.verify"),
    ],
    ids=["set", "set-blank", "task", "gate"],
)
def test_empty_verify(make_repo, write_taskset, fields, field):
    # An empty command exits 0: every task would pass unchecked.
    path = write_taskset({**with_repo(make_repo()), **fields})
    assert one_line_error(path).startswith(f"{path}: {field}: must not be empty")


def test_null_verify_means_the_sets(make_repo, write_taskset):
    tasks = [{"key": "a", "prompt": "p", "verify": None}]
    ts = load(
        write_taskset(with_repo(make_repo(), tasks, verify="make check", gate={"verify": None}))
    ).taskset
    assert ts.verify_for("a") == ts.gate_command == "make check"


@pytest.mark.parametrize(
    ("text", "line", "key"),
    [
        ("verify: 'true'\nagent: {command: 'true'}\nverify: ''\ntasks: [{key: a, prompt: p}]\n", 3, "verify"),
        ("tasks:\n  - key: a\n    prompt: one\n    prompt: two\n", 4, "prompt"),
        ("gate: {verify: 'true', verify: 'false'}\ntasks: [{key: a, prompt: p}]\n", 1, "verify"),
    ],
    ids=["top-level", "task", "flow-mapping"],
)
def test_duplicate_yaml_key(write_taskset, text, line, key):
    # YAML keeps the last of two; a typo or a paste must fail loudly instead.
    path = write_taskset(text)
    assert one_line_error(path) == f"{path}: YAML error at line {line}: duplicate key {key!r}"


def test_yaml_merge_key_may_be_given_again(make_repo, write_taskset):
    # `<<: *anchor` then a key of the anchor's own: an override, not a duplicate.
    text = f"repo: {make_repo()}\nagent: {{command: 'true'}}\ntasks:\n  - &t {{key: a, prompt: p}}\n"
    ts = load(write_taskset(text + "  - <<: *t\n    key: b\n")).taskset
    assert [(t.key, t.prompt) for t in ts.tasks] == [("a", "p"), ("b", "p")]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://user:s3cret@127.0.0.1:{port}/x.git", "http://user:***@127.0.0.1:{port}/x.git"),
        ("https://ghp_t0ken@127.0.0.1:{port}/x.git", "https://***@127.0.0.1:{port}/x.git"),
    ],
    ids=["password", "token"],
)
def test_repo_credentials_are_masked_in_errors(make_repo, write_taskset, url, shown):
    from conftest import free_port

    port = free_port()  # nobody listens: the repository is unreachable
    url, shown = url.format(port=port), shown.format(port=port)
    path = write_taskset(with_repo(make_repo()) | {"repo": url})
    for message in (one_line_error(path), one_line_error(path, repo=url)):
        assert message.startswith(f"{path}: repo: {shown!r} could not be read: unable to access"), message
        assert "s3cret" not in message and "t0ken" not in message  # git's own line names the URL too
