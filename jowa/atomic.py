"""All-or-nothing outputs: a stage's file or directory appears under its final name only when complete.

Every stage writes into a hidden temporary sibling and renames it into place at the end, so a killed or
failed job never leaves something that looks finished (Snakemake and DVC would take it as done).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from jowa.errors import OutputExistsError


def _sibling(final: Path) -> Path:
    return final.with_name(f".{final.name}.tmp-{os.getpid()}")


@contextmanager
def atomic_file(final: Path | str) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it to `final` if the block succeeds, delete it otherwise."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(final)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_dir(final: Path | str, *, replace: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary sibling directory, renamed to `final` if the block succeeds.

    An existing `final` is replaced when `replace`, else refused. On failure the temporary directory and
    any parent directories this call created are removed.
    """
    final = Path(final)
    if final.exists() and not replace:
        raise OutputExistsError(f"{final} already exists; remove it to make it again")
    created = [p for p in (final.parent, *final.parent.parents) if not p.exists()]
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(final)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for parent in created:  # deepest first
            with suppress(OSError):
                parent.rmdir()
        raise
