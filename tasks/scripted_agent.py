"""A data-driven scripted stand-in for a coding agent: the quickstart's and every scenario's.

otto-farm runs it as a `command` agent in the task's worktree, with the prompt on stdin (and in
$OTTO_FARM_PROMPT_FILE). It reads `$OTTO_FARM_TASKSET_DIR/agent.json`, `{task_key: [rule, ...]}`, where a
rule is `{"when": [keyword, ...], "files": {path: content}}`. The first rule whose keywords all appear
(case-insensitively) in the prompt's guidance sections wins; a rule without "when" is the default and
comes last. The rule's files are written, and what the agent read and wrote is printed.

The guidance sections are "## Retry guidance", "## Learnings from earlier batches" and "## Context for
this task" only: never the task prompt, never "## Previous attempt failed". This models an agent that
follows explicit system-level guidance but misdiagnoses its own raw error output, so it repeats its
mistake on a plain retry. That is the gap the pilot fills: it reads the failure and turns it into
guidance, learnings and routed context.
"""

import json
import os
import sys
from pathlib import Path

GUIDANCE = ("Retry guidance", "Learnings from earlier batches", "Context for this task")


def guidance_sections(prompt):
    """The guidance sections of the prompt, by heading, in prompt order."""
    sections = {}
    current = None
    for line in prompt.splitlines():
        if line.startswith("## "):
            current = line[3:].strip()
            if current in GUIDANCE:
                sections[current] = ""
        elif current in GUIDANCE:
            sections[current] += line + "\n"
    return sections


def pick(rules, guidance):
    text = guidance.lower()
    for n, rule in enumerate(rules):
        if all(word.lower() in text for word in rule.get("when", [])):
            return n, rule
    raise SystemExit("agent.json: no rule matched and no default rule")


def main():
    key = os.environ["OTTO_FARM_TASK_KEY"]
    prompt = sys.stdin.read()
    rules = json.loads((Path(os.environ["OTTO_FARM_TASKSET_DIR"]) / "agent.json").read_text())[key]
    sections = guidance_sections(prompt)
    n, rule = pick(rules, "".join(sections.values()))
    print(f"guidance sections: {', '.join(sections) or '(none)'}")
    print(f"rule {n}: " + (f"when {rule['when']}" if "when" in rule else "default"))
    for name, text in rule["files"].items():
        path = Path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {name}")
    print(f"{key}: done")


if __name__ == "__main__":
    main()
