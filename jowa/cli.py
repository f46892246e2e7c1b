"""The `jowa` command: a table of subcommands, each living in the module that does its stage.

This module only dispatches. It imports nothing but the chosen command's module, so `jowa --help` is
instant and a stage's behaviour never depends on this file: a Snakemake rule's code inputs are the
modules its command imports (`jowa.jobs.code_inputs`), and editing this table reruns no job. Each command
module provides `configure_parser(parser)` and `main(args)`. Errors the user can act on
(`jowa.core.errors.JowaError`) are printed in one line; any other exception is a bug and keeps its traceback.

SIGTERM (what `scancel`, Snakemake and timeouts send) is turned into an exception, like Ctrl-C, so every
`jowa.core.atomic` context manager removes its temporary output on the way out; the command then exits with
143 (128 + 15; 130 for Ctrl-C) after one line saying so.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import shlex
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version
from types import ModuleType

from jowa.core.errors import JowaError

#: command -> (module implementing it, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "check-params": ("jowa.core.config", "validate a params file (or print its JSON schema)"),
    "data download": ("jowa.data.download", "copy one run from a gs:// URL or a local mirror, with manifest"),
    "data generate": ("jowa.data.generate", "play a game with ale-py and write a run in DQN-Replay's layout"),
    "data verify": ("jowa.data.verify", "check runs against their manifests (sizes, md5s) and their format"),
    "data subsample": ("jowa.data.subsample", "whole episodes of a pretraining game into a training store"),
    "data finetune-set": ("jowa.data.finetune_set", "a held-out game's training store of one data quality"),
    "train-tokenizer": (
        "jowa.train.train_tokenizer",
        "train the VQ tokenizer on frames of every pretraining store",
    ),
    "tokenize": ("jowa.train.tokenize", "encode every frame of a store into a token array beside it"),
    "pretrain": ("jowa.train.pretrain", "two-stage pretraining of one JOWA size on the token stores"),
    "finetune": ("jowa.train.finetune", "fine-tune a pretrained JOWA on one held-out game's set"),
    "evaluate": ("jowa.eval.evaluate", "play a JOWA on one game (greedy, beam or MCTS); returns as JSON"),
    "report": ("jowa.report.report", "the paper's tables and figures from the evaluation results"),
    "checkpoint import-reference": (
        "jowa.weights.import_reference",
        "convert a reference-layout JOWA or tokenizer state dict to our safetensors format",
    ),
    "gpu-run": ("jowa.jobs.gpu_slots", "run a command on N free GPUs (torchrun for N > 1) or the CPU"),
    "gpu-check": (
        "jowa.jobs.gpu_check",
        "check that this job sees exactly the GPUs it asked for; JSON record",
    ),
}


def _top_parser() -> argparse.ArgumentParser:
    listing = "\n".join(f"  {name:<29} {text}" for name, (_, text) in COMMANDS.items())
    parser = argparse.ArgumentParser(
        prog="jowa",
        usage="jowa [-h] [--version] [-q] COMMAND ...",
        description="The JOWA reproduction workflow's stages, one command each.",
        epilog=f"commands:\n{listing}\n\n`jowa COMMAND --help` explains a command's arguments.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"jowa-repro {version('jowa-repro')}")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return parser


class Terminated(SystemExit):
    """SIGTERM, raised where the main thread is, so cleanup code runs as for any other exception."""


def _raise_terminated(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the cleanup short
    raise Terminated(128 + signum)


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    """SIGTERM raises `Terminated` inside the block (signal handlers exist only in the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _split(argv: list[str]) -> tuple[list[str], str | None, list[str]]:
    """(global options, command, the command's arguments)."""
    start = next((i for i, word in enumerate(argv) if not word.startswith("-")), len(argv))
    for words in (2, 1):
        name = " ".join(argv[start : start + words])
        if len(argv) >= start + words and name in COMMANDS:
            return argv[:start], name, argv[start + words :]
    return argv[:start], None, argv[start:]


def command_parser(name: str) -> tuple[ModuleType, argparse.ArgumentParser]:
    """The module implementing command `name` and its argument parser."""
    module_name, text = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"jowa {name}", description=text)
    module.configure_parser(parser)
    return module, parser


def parse_command_line(argv: list[str]) -> tuple[str, ModuleType, argparse.Namespace]:
    """(command name, its module, its parsed arguments), or argparse's exit with status 2 and a usage
    line; running nothing, so the documentation's command lines can be checked against the code."""
    top = _top_parser()
    global_args, name, rest = _split(argv)
    options = top.parse_args(global_args)
    if name is None:
        top.error(
            f"unknown command {' '.join(rest[:2])!r}; `jowa --help` lists them"
            if rest
            else "no command given"
        )
    module, parser = command_parser(name)
    args = parser.parse_args(rest)
    args.quiet = options.quiet
    return name, module, args


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    name, module, args = parse_command_line(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    # a workflow job's log (its stderr) then starts with the job's command, which the console leaves out
    logging.getLogger(__name__).info("command: %s", shlex.join(["jowa", *argv]))
    try:
        with _sigterm_raises():
            module.main(args)
    except JowaError as exc:
        print(f"jowa {name}: error: {exc}", file=sys.stderr)
        return 1
    except (Terminated, KeyboardInterrupt) as exc:
        what, status = ("SIGTERM", exc.code) if isinstance(exc, Terminated) else ("Ctrl-C", 130)
        print(f"jowa {name}: stopped by {what}; unfinished outputs were discarded", file=sys.stderr)
        return status
    return 0


if __name__ == "__main__":
    sys.exit(main())
