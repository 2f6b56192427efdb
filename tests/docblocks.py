"""The runnable examples of README.md and docs/*.md, as data (pure: text in, blocks out).

Conventions (docs/contributing.md says them to writers):
- ```console: `$ ` lines are commands (a trailing `\\` continues one), the lines after a
  command up to the next `$ ` are its expected output; a line `...` matches any number of
  lines, `...` inside a line matches any text.
- ```sh: one bash script run with `set -e`. ```python: one script run with python.
- Any other fence is not run (configs, formats, policies).
- A runnable block preceded by a paragraph starting `*Not run by the tests:` is not run;
  the paragraph says why.
"""
import re
from typing import NamedTuple

RUNNABLE = ("console", "sh", "python")
NOT_RUN = "*Not run by the tests:"
FENCE = re.compile(r"^(\s*)```(\S*)\s*$")


class Block(NamedTuple):
    kind: str           # console, sh, python
    line: int           # 1-based line of the opening fence
    text: str
    not_run: str        # the reason when the page says the block is not run, else ""


class Command(NamedTuple):
    line: int
    command: str
    expected: list      # expected output lines (console blocks)


def blocks(markdown):
    """Every console, sh and python block of a Markdown text, in order."""
    found, lines, i = [], markdown.split("\n"), 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, kind, start = match.group(1), match.group(2), i
        i += 1
        body = []
        while i < len(lines) and not re.match(r"^\s*```\s*$", lines[i]):
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i])
            i += 1
        i += 1
        if kind in RUNNABLE:
            found.append(Block(kind, start + 1, "\n".join(body) + "\n",
                               not_run_reason(lines, start)))
    return found


def not_run_reason(lines, fence_index):
    """The `*Not run by the tests: ...*` paragraph right before a fence, if there is one."""
    j = fence_index - 1
    while j >= 0 and not lines[j].strip():
        j -= 1
    paragraph = []
    while j >= 0 and lines[j].strip():
        paragraph.insert(0, lines[j].strip())
        j -= 1
    text = " ".join(paragraph)
    return text if text.startswith(NOT_RUN) else ""


def commands(block):
    """The commands of a console block with the output each one expects."""
    result, lines, i = [], block.text.rstrip("\n").split("\n"), 0
    while i < len(lines):
        if not lines[i].startswith("$ "):
            raise ValueError("line %d: console output before any `$ ` command"
                             % (block.line + 1 + i))
        start, command = i, lines[i][2:]
        while command.endswith("\\") and i + 1 < len(lines):
            i += 1
            command += "\n" + lines[i]        # the shell sees the `\` continuation
        i += 1
        expected = []
        while i < len(lines) and not lines[i].startswith("$ "):
            expected.append(lines[i])
            i += 1
        result.append(Command(block.line + 1 + start, command, expected))
    return result


def output_matches(expected, actual):
    """Does `actual` (a list of lines) match `expected` with its `...` wildcards?"""
    if not expected:
        return True     # a command shown without output: only its exit status counts
    pattern = "".join(
        r"(?:[^\n]*\n)*?" if line == "..." else
        ".*".join(re.escape(part) for part in line.split("...")) + r"\n"
        for line in expected)
    return re.fullmatch(pattern, "".join(line + "\n" for line in actual)) is not None
