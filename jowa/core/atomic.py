"""All-or-nothing outputs: a stage's file or directory appears under its final name only when complete.

Every stage writes into a hidden temporary sibling and renames it into place at the end, so a killed or
failed job never leaves something that looks finished (Snakemake and DVC would take it as done). An
exception, Ctrl-C or SIGTERM (`jowa` turns it into an exception, see `jowa.cli`) removes the sibling;
SIGKILL or a lost node cannot, so the next job writing the same output sweeps such leftovers first.
Siblings are named `.{name}.tmp-{host}-{pid}`: one whose process is gone (or that another host left:
one job owns an output, and a rerun on a cluster lands elsewhere) is stale.

One policy for an existing output, shared by every command that writes a whole output: Snakemake
deletes a job's outputs before running it, so an output present at the start was made by hand or by an
earlier run; it is refused (`OutputExistsError`) unless the caller asked to overwrite it.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from jowa.core.errors import OutputExistsError

__all__ = ["add_overwrite_argument", "atomic_dir", "atomic_file", "refuse_existing", "sweep_stale_siblings"]

_TMP_MARK = ".tmp-"
_HOST = socket.gethostname()

log = logging.getLogger(__name__)


def _sibling(final: Path) -> Path:
    return final.with_name(f".{final.name}{_TMP_MARK}{_HOST}-{os.getpid()}")


def _owner_alive(host: str, pid: int) -> bool:
    """Whether the process that made a sibling may still be writing it (only knowable on this host)."""
    if host != _HOST:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def sweep_stale_siblings(final: Path | str) -> list[Path]:
    """Delete the temporary siblings of `final` that interrupted jobs left; returns what was removed."""
    final = Path(final)
    prefix = f".{final.name}{_TMP_MARK}"
    try:
        entries = [e for e in os.scandir(final.parent) if e.name.startswith(prefix)]
    except FileNotFoundError:
        return []
    removed = []
    for entry in entries:
        host, _, pid = entry.name[len(prefix) :].rpartition("-")
        if not pid.isdigit() or _TMP_MARK in host or _owner_alive(host or _HOST, int(pid)):
            continue  # not one of ours, or its owner still runs
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        log.warning("removed %s, left by an interrupted job", path)
        removed.append(path)
    return removed


def refuse_existing(*outputs: Path | str, overwrite: bool) -> None:
    """Raise `OutputExistsError` for the first output that exists, unless `overwrite`.

    With `overwrite`, an existing directory must be removable now: finding out after hours of work
    that Snakemake write-protected it (`protected()`) would waste them.
    """
    for output in map(Path, outputs):
        if not output.exists():
            continue
        if not overwrite:
            raise OutputExistsError(f"{output} already exists; delete it, or pass --overwrite to replace it")
        locked = [d for d in _tree_dirs(output) if not os.access(d, os.W_OK)]
        if locked:
            raise OutputExistsError(
                f"{output} cannot be replaced: {locked[0]} is write-protected (Snakemake's protected()?); "
                f"`chmod -R u+w {output}` first"
            )


def _tree_dirs(path: Path) -> list[Path]:
    if not path.is_dir() or path.is_symlink():
        return []
    return [Path(root) for root, _, _ in os.walk(path)]


def add_overwrite_argument(parser: argparse.ArgumentParser) -> None:
    """The one `--overwrite` flag of the commands that follow this policy."""
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace outputs that already exist (without it, an existing output is refused)",
    )


@contextmanager
def atomic_file(final: Path | str) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it to `final` if the block succeeds, delete it otherwise.

    An existing `final` is replaced: files are what a stage rewrites as it goes (checkpoints, manifests).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_siblings(final)
    tmp = _sibling(final)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_dir(final: Path | str, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary sibling directory, renamed to `final` if the block succeeds.

    An existing `final` is refused unless `overwrite` (see `refuse_existing`); it is replaced only once
    the new one is complete. On failure the temporary directory and any parent directories this call
    created are removed.
    """
    final = Path(final)
    refuse_existing(final, overwrite=overwrite)
    created = [p for p in (final.parent, *final.parent.parents) if not p.exists()]
    final.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_siblings(final)
    tmp = _sibling(final)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if final.is_dir() and not final.is_symlink():
            shutil.rmtree(final)
        elif final.exists() or final.is_symlink():
            final.unlink()
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for parent in created:  # deepest first
            with suppress(OSError):
                parent.rmdir()
        raise
