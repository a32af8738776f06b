"""The verify excerpt: failures with context and summaries kept, passing noise collapsed, size bounded."""

from __future__ import annotations

import re

from otto_farm.verify import excerpt

MARKER = re.compile(r"^\[\.\.\. \d+ (lines omitted|excerpt lines cut|chars cut) \.\.\.\]$")


def pytest_output(n: int = 300, failing: int = 150) -> str:
    """`pytest -v` output: n tests, one failing in the middle, then the failure report and summary."""
    lines = ["=" * 29 + " test session starts " + "=" * 30, "collected 300 items", ""]
    for i in range(n):
        status = "\x1b[31mFAILED\x1b[0m" if i == failing else "\x1b[32mPASSED\x1b[0m"
        lines.append(f"test_mod.py::test_{i} {status}")
    lines += [
        "",
        "=" * 35 + " FAILURES " + "=" * 35,
        "_" * 35 + f" test_{failing} " + "_" * 35,
        "",
        f"    def test_{failing}():",
        ">       assert add(2, 2) == 5",
        "E       assert 4 == 5",
        "",
        "test_mod.py:453: AssertionError",
        "=" * 28 + " short test summary info " + "=" * 27,
        f"FAILED test_mod.py::test_{failing} - assert 4 == 5",
        "\x1b[31m" + "=" * 24 + f" 1 failed, {n - 1} passed in 0.52s " + "=" * 24 + "\x1b[0m",
    ]
    return "\n".join(lines) + "\n"


def test_ansi_is_stripped():
    out = excerpt("\x1b[1m\x1b[31mFAILED\x1b[0m test_a.py::test_x\r\n\x1b[?25lok\x1b[2K\n")
    assert "\x1b" not in out
    assert "\r" not in out
    assert out.splitlines() == ["FAILED test_a.py::test_x", "ok"]


def test_failure_is_kept_with_context_and_summary_and_the_rest_collapsed():
    lines = excerpt(pytest_output()).splitlines()
    assert "test_mod.py::test_150 FAILED" in lines
    assert "test_mod.py::test_146 PASSED" in lines  # context before
    assert "test_mod.py::test_160 PASSED" in lines  # context after
    assert "test_mod.py::test_10 PASSED" not in lines
    assert "test_mod.py::test_250 PASSED" not in lines
    assert "E       assert 4 == 5" in lines
    assert "FAILED test_mod.py::test_150 - assert 4 == 5" in lines
    assert any("1 failed, 299 passed in 0.52s" in line for line in lines)
    omitted = [line for line in lines if "lines omitted" in line]
    assert omitted and all(MARKER.match(line) for line in omitted)
    assert len(lines) < 100


def test_omitted_counts_add_up():
    text = pytest_output()
    lines = excerpt(text).splitlines()
    omitted = sum(int(line.split()[1]) for line in lines if line.endswith("lines omitted ...]"))
    assert omitted + len(lines) - len([x for x in lines if MARKER.match(x)]) == len(text.splitlines())


def test_output_without_a_failure_keeps_its_tail():
    text = "\n".join(f"building step {i}" for i in range(1000))
    lines = excerpt(text, max_lines=50).splitlines()
    assert lines[-1] == "building step 999"
    assert "building step 960" in lines
    assert "building step 0" not in lines
    assert "building step 900" not in lines


def test_output_with_only_a_passing_summary_keeps_its_tail():
    # `pytest -q && ruff check .`: the tests passed, the linter failed.
    text = (
        "." * 5 + " " * 68 + "[100%]\n"
        "5 passed in 0.10s\n"
        "a.py:1:8: F401 [*] `os` imported but unused\n"
        "Found 1 error.\n"
    )
    lines = excerpt(text).splitlines()
    assert "a.py:1:8: F401 [*] `os` imported but unused" in lines
    assert "Found 1 error." in lines


def test_short_output_is_kept_whole():
    text = "compiling\nlinking\ndone"
    assert excerpt(text) == text


def test_result_is_bounded_by_max_lines():
    text = "\n".join(f"FAILED test_{i} - AssertionError" for i in range(2000))
    lines = excerpt(text, max_lines=40).splitlines()
    assert len(lines) <= 40 + 1  # one marker line may say what was cut
    assert MARKER.match(lines[0])
    assert lines[-1] == "FAILED test_1999 - AssertionError"


def test_result_is_bounded_by_max_chars():
    text = "\n".join(f"E   assert {i} == {'x' * 200}" for i in range(500))
    out = excerpt(text, max_chars=2000)
    assert len(out) <= 2000 + len("[... 1000000 chars cut ...]\n")
    assert out.endswith(f"E   assert 499 == {'x' * 200}")
    assert MARKER.match(out.splitlines()[0])
