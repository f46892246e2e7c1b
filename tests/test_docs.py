"""Every `jowa ...` command line the README and docs/ show parses with the CLI's own parser.

A renamed option or command then fails here instead of in a reader's shell. Lines come from fenced code
blocks (backslash continuations joined, comments dropped) and from inline code spans; a span or line that
stands for a family of commands (`jowa COMMAND --help`, `jowa pretrain ...`) is not a command line and is
skipped, and so is the bare name of a command in prose; the listing test below keeps this honest by
requiring that most lines are checked and that every command is shown with real arguments.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from pathlib import Path

import pytest

from jowa.cli import COMMANDS, command_parser, parse_command_line

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "README.md"]
FENCE = re.compile(r"^```.*?$(.*?)^```", re.S | re.M)
INLINE = re.compile(r"`(jowa [^`]+)`")
PLACEHOLDER = re.compile(r"\.\.\.|…|\b[A-Z]{4,}\b(?![=/.])")


def _block_lines(text: str) -> list[tuple[int, str]]:
    """(line number, command) of each `jowa` command in the page's fenced blocks."""
    found = []
    for block in FENCE.finditer(text):
        first = text.count("\n", 0, block.start(1)) + 1
        joined, start = "", 0
        for offset, raw in enumerate(block.group(1).splitlines()):
            line = raw.split(" #", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
            if not joined:
                start = first + offset
            joined += line.rstrip("\\") + " "
            if line.endswith("\\"):
                continue
            command = joined.strip()
            joined = ""
            if command.startswith("jowa "):
                found.append((start, command))
    return found


def _inline_spans(text: str) -> list[tuple[int, str]]:
    """Inline `jowa ...` spans that are command lines, not the bare name of a command in prose."""
    spans = [(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in INLINE.finditer(text)]
    return [(number, span) for number, span in spans if span.split(" ", 1)[1] not in COMMANDS]


def _command_lines(find: Callable[[str], list[tuple[int, str]]]) -> list[tuple[str, str]]:
    lines = []
    for page in PAGES:
        for number, command in find(page.read_text()):
            lines.append((f"{page.relative_to(ROOT)}:{number}", command))
    return lines


BLOCKS, SPANS = _command_lines(_block_lines), _command_lines(_inline_spans)
LINES = BLOCKS + SPANS
CHECKED = [(where, command) for where, command in LINES if not PLACEHOLDER.search(command)]


def _argvs(command: str) -> list[list[str]]:
    """The command's arguments, and those of a `jowa` command it runs after `--` (`jowa gpu-run`)."""
    argv = shlex.split(command)[1:]
    if "--" in argv and argv[argv.index("--") + 1 : argv.index("--") + 2] == ["jowa"]:
        return [argv, argv[argv.index("--") + 2 :]]
    return [argv]


def _assert_exact_options(where: str, name: str, words: list[str]) -> None:
    """Every option is spelled out as the parser defines it (argparse would accept a prefix)."""
    _, parser = command_parser(name)
    before_separator = words[: words.index("--")] if "--" in words else words
    options = [w.split("=")[0] for w in before_separator if w.startswith("-")]
    unknown = [w for w in options if w not in parser._option_string_actions]
    assert not unknown, f"{where}: `jowa {name}` has no options {unknown}"


def _checked(lines: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [line for line in lines if line in CHECKED]


@pytest.mark.parametrize(("where", "command"), _checked(BLOCKS), ids=[where for where, _ in _checked(BLOCKS)])
def test_documented_command_parses(where: str, command: str) -> None:
    for argv in _argvs(command):
        if argv in (["--version"], ["--help"]) or argv[-1:] == ["--help"]:
            continue  # argparse prints and exits 0 for these: nothing to parse further
        try:
            name, _, _ = parse_command_line(argv)
        except SystemExit as exc:
            pytest.fail(f"{where}: `{argv}` of `{command}` does not parse (argparse exit {exc.code})")
        _assert_exact_options(where, name, argv[len(name.split()) :])


@pytest.mark.parametrize(("where", "command"), _checked(SPANS), ids=[where for where, _ in _checked(SPANS)])
def test_documented_fragment_uses_real_options(where: str, command: str) -> None:
    """An inline span in prose may leave out required arguments, but every option it names must exist."""
    words = shlex.split(command)[1:]
    if words in (["--version"], ["--help"]):
        return
    name = next((" ".join(words[:n]) for n in (2, 1) if " ".join(words[:n]) in COMMANDS), None)
    assert name is not None, f"{where}: `{command}` names no jowa command"
    _, parser = command_parser(name)
    before_separator = words[: words.index("--")] if "--" in words else words
    unknown = [
        w
        for w in before_separator
        if w.startswith("-") and w.split("=")[0] not in parser._option_string_actions
    ]
    assert not unknown, f"{where}: `{command}` uses options `jowa {name}` does not have: {unknown}"


def test_docs_show_commands_and_most_are_checked() -> None:
    """The pages do show commands, and placeholders do not hide most of them."""
    assert len(LINES) >= 20, LINES
    assert len(CHECKED) >= 0.6 * len(LINES), [c for _, c in LINES if PLACEHOLDER.search(c)]


def test_every_command_is_documented() -> None:
    """Each `jowa` command appears in at least one checked line of the docs."""
    shown = [argv for _, command in CHECKED for argv in _argvs(command)]
    missing = [
        name for name in COMMANDS if not any(argv[: len(name.split())] == name.split() for argv in shown)
    ]
    assert not missing, f"commands no page shows with real arguments: {missing}"
