"""The failure-focused excerpt of a verify command's output that goes back to the agent."""

from __future__ import annotations

import re

from otto_farm import shell

ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
FAILURE = re.compile(
    r"(FAILED|FAIL:|ERROR|Error\b|Exception|Traceback|AssertionError|assert |panic|✗|×|"
    r"not ok|expected|\bE\s{2,})"
)
SUMMARY = re.compile(
    r"(^=+ .*(passed|failed|error).* =+$|^Ran \d+ tests?|^(OK|FAILED)\b|\d+ (passed|failed)|Tests?:)"
)
BEFORE, AFTER = 4, 25
MAX_CHARS, MAX_LINES = 10_000, 180


def excerpt(output: str, max_chars: int = MAX_CHARS, max_lines: int = MAX_LINES) -> str:
    """The failures with their surrounding lines and the summary lines; passing noise collapsed.

    Output without a recognisable failure keeps its end, where errors are.
    """
    lines = ANSI.sub("", output).replace("\r", "").splitlines()
    keep: set[int] = set()
    anchored = False
    for i, line in enumerate(lines):
        if FAILURE.search(line):
            anchored = True
            keep.update(range(max(0, i - BEFORE), min(len(lines), i + AFTER + 1)))
        elif SUMMARY.search(line.strip()):
            keep.add(i)
    if not anchored:  # an error we do not recognise: it is most likely at the end
        keep.update(range(max(0, len(lines) - max_lines), len(lines)))
    out: list[str] = []
    skipped = 0
    for i, line in enumerate(lines):
        if i in keep:
            if skipped:
                out.append(f"[... {skipped} lines omitted ...]")
                skipped = 0
            out.append(line)
        else:
            skipped += 1
    if skipped:
        out.append(f"[... {skipped} lines omitted ...]")
    if len(out) > max_lines:
        out = [f"[... {len(out) - max_lines} excerpt lines cut ...]"] + out[-max_lines:]
    return shell.tail("\n".join(out), max_chars)
