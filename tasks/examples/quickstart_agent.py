"""A scripted stand-in for a coding agent, used by the quickstart so the demo needs no API key.

otto-farm runs it like any `command` agent: in the task's worktree, with the prompt on stdin and in
$OTTO_FARM_PROMPT_FILE. It writes canned files for $OTTO_FARM_TASK_KEY. For `title` it first writes the
naive version (every word capitalised) and writes the right one only once its prompt carries retry
guidance that quotes the failing test, the way a real agent fixes what the verify output shows it.
"""

import os
import sys
from pathlib import Path

FILES = {
    "slug": {
        "textkit/slug.py": '''"""URL slugs."""

import re


def slugify(text):
    words = re.findall(r"[a-z0-9]+", text.lower())
    return "-".join(words)
''',
        "tests/test_slug.py": '''import unittest

from textkit.slug import slugify


class SlugTest(unittest.TestCase):
    def test_slugify(self):
        self.assertEqual(slugify("Hello, World!"), "hello-world")
        self.assertEqual(slugify("  many   spaces "), "many-spaces")
''',
    },
    "words": {
        "textkit/words.py": '''"""Word counts."""

from collections import Counter


def word_count(text):
    return len(text.split())


def top_words(text, n):
    return [w for w, _ in Counter(text.lower().split()).most_common(n)]
''',
        "tests/test_words.py": '''import unittest

from textkit.words import top_words, word_count


class WordsTest(unittest.TestCase):
    def test_count(self):
        self.assertEqual(word_count("one two  three"), 3)

    def test_top(self):
        self.assertEqual(top_words("b a b c b a", 2), ["b", "a"])
''',
    },
    "title": {
        "tests/test_title.py": '''import unittest

from textkit.title import title_case


class TitleTest(unittest.TestCase):
    def test_small_words_stay_lowercase(self):
        self.assertEqual(title_case("the lord of the rings"), "The Lord of the Rings")
''',
    },
    "cli": {
        "textkit/cli.py": '''"""Command line: `slug TEXT`, `count TEXT`."""

import sys

from textkit.slug import slugify
from textkit.words import word_count

COMMANDS = {"slug": slugify, "count": word_count}


def main(argv=None):
    command, text = (argv if argv is not None else sys.argv[1:])[:2]
    print(COMMANDS[command](text))
''',
        "tests/test_cli.py": '''import contextlib
import io
import unittest

from textkit.cli import main


class CliTest(unittest.TestCase):
    def run_cli(self, *argv):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            main(list(argv))
        return out.getvalue().strip()

    def test_commands(self):
        self.assertEqual(self.run_cli("slug", "Hi There"), "hi-there")
        self.assertEqual(self.run_cli("count", "a b c"), "3")
''',
    },
    "headline": {
        "textkit/headline.py": '''"""A headline and its slug."""

from textkit.slug import slugify
from textkit.title import title_case


def headline(text):
    return title_case(text), slugify(text)
''',
        "tests/test_headline.py": '''import unittest

from textkit.headline import headline


class HeadlineTest(unittest.TestCase):
    def test_headline(self):
        self.assertEqual(headline("war and peace"), ("War and Peace", "war-and-peace"))
''',
    },
    "docs": {
        "docs/usage.md": '''# Using textkit

- `python -m textkit.cli slug TEXT` prints the slug of TEXT.
- `python -m textkit.cli count TEXT` prints how many words TEXT has.
''',
        "tests/test_docs.py": '''import pathlib
import unittest

from textkit.cli import COMMANDS


class DocsTest(unittest.TestCase):
    def test_every_command_documented(self):
        usage = pathlib.Path("docs/usage.md").read_text()
        for name in COMMANDS:
            self.assertIn(f"textkit.cli {name} ", usage)
''',
    },
}

NAIVE_TITLE = '''"""Title case."""


def title_case(text):
    return " ".join(word.capitalize() for word in text.split())
'''

FIXED_TITLE = '''"""Title case: small words stay lowercase unless they come first."""

SMALL = {"a", "an", "and", "of", "the", "to", "in"}


def title_case(text):
    words = text.lower().split()
    return " ".join(w if i and w in SMALL else w.capitalize() for i, w in enumerate(words))
'''


def main():
    key = os.environ["OTTO_FARM_TASK_KEY"]
    prompt = sys.stdin.read()
    files = dict(FILES[key])
    if key == "title":
        guided = "## Retry guidance" in prompt and "The Lord of the Rings" in prompt
        files["textkit/title.py"] = FIXED_TITLE if guided else NAIVE_TITLE
    for name, text in files.items():
        path = Path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {name}")
    print(f"{key}: done")


if __name__ == "__main__":
    main()
