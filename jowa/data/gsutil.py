"""Run gsutil as a child process that can always be stopped, and read what its stderr says went wrong.

gsutil retries an unreachable service for many minutes and `-m` spawns worker processes that outlive a
killed parent, so every command here runs in its own process group with a bounded wait, and the whole
group is killed on timeout, on a stall or on Ctrl-C. Nothing here knows what is being copied: callers
turn a `GsutilError` or a `Failure` into a message about their own data.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from jowa.core.errors import JowaError

__all__ = [
    "GSUTIL_OPTIONS",
    "KILL_GRACE_S",
    "LIST_TIMEOUT_S",
    "POLL_S",
    "STALL_TIMEOUT_S",
    "TEMP_SUFFIX",
    "Failure",
    "GsutilError",
    "copy_into",
    "find_gsutil",
    "list_objects",
    "parse_ls_long",
    "read_failure",
]

#: Top-level gsutil options. Without them gsutil retries an unreachable service for many minutes.
GSUTIL_OPTIONS = ("-o", "Boto:num_retries=2", "-o", "Boto:max_retry_delay=2")
#: Seconds a listing may take before the service counts as unreachable.
LIST_TIMEOUT_S = 120.0
#: Seconds a copy may go without a staged byte more before it counts as stalled and is killed.
STALL_TIMEOUT_S = 900.0
#: Seconds between two looks at the target directory while gsutil copies (progress bar, stall check).
POLL_S = 0.25
#: Seconds gsutil's process group gets to exit after SIGTERM before SIGKILL.
KILL_GRACE_S = 3.0
#: Name ending of gsutil's partial download of a gs:// object; `cp` resumes from it.
TEMP_SUFFIX = "_.gstmp"

_DENIED_RE = re.compile(r"AccessDenied|access ?denied|Forbidden|Unauthorized", re.IGNORECASE)
_STATUS_RE = re.compile(r"\b(401|403)\b")
_NOT_FOUND_RE = re.compile(r"matched no objects|No URLs matched|NotFoundException|\b404\b")
_LS_LINE_RE = re.compile(r"^\s*(\d+)\s+\S+\s+(gs://\S.*?)\s*$")
_NOISE_PREFIXES = ("Copying ", "Skipping existing", "Operation completed", "/ [", "- [", "\\ [", "| [")


class GsutilError(JowaError, RuntimeError):
    """gsutil is missing, or it was stopped because it made no progress in time."""


@dataclass(frozen=True)
class Failure:
    """What gsutil's stderr says about a failed command."""

    last: str  # the last meaningful line, to quote in a message
    denied: str | None  # the last line reporting a 401/403 access denial, if any
    not_found: bool  # some line says the URL matched no objects


def find_gsutil() -> str:
    """gsutil's path, looked up on PATH at call time (so tests and users can put another one first)."""
    found = shutil.which("gsutil")
    if found is None:
        raise GsutilError(
            "gsutil is not installed (not found on PATH); install it with `pip install gsutil` "
            "or `pip install 'jowa-repro[workflow]'`"
        )
    return found


def list_objects(gsutil: str, url: str) -> tuple[int, dict[str, int], str]:
    """`gsutil ls -l url` as (exit status, {object name: size}, stderr), waiting at most LIST_TIMEOUT_S."""
    argv = [gsutil, *GSUTIL_OPTIONS, "ls", "-l", url]
    try:
        rc, out, err = _run_captured(argv, timeout=LIST_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise GsutilError(f"listing {url} took longer than {LIST_TIMEOUT_S:.0f} s") from None
    return rc, parse_ls_long(out), err


def parse_ls_long(text: str) -> dict[str, int]:
    """{name: size} of the objects in `gsutil ls -l` output; sub-directories and the TOTAL line skipped."""
    objects = {}
    for line in text.splitlines():
        m = _LS_LINE_RE.match(line)
        if m is not None:
            objects[m.group(2).rsplit("/", 1)[-1]] = int(m.group(1))
    return objects


def copy_into(
    gsutil: str, items: Sequence[str], target: Path, total: int, desc: str, progress: bool
) -> tuple[int, str]:
    """`gsutil -m cp -n items target/` with a byte progress bar; returns (exit status, stderr).

    `-n` skips files already in `target`, which makes an interrupted copy resumable. `total` is the
    number of bytes expected, for the bar. Raises GsutilError when no byte arrives for STALL_TIMEOUT_S.
    """
    argv = [gsutil, "-m", *GSUTIL_OPTIONS, "-q", "cp", "-n", *items, f"{target}{os.sep}"]
    with (
        tempfile.TemporaryFile() as errfile,
        tqdm(
            total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, disable=not progress
        ) as bar,
    ):
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errfile, start_new_session=True
        )
        try:
            rc = _wait_with_progress(proc, target, bar)
        except BaseException:
            _kill_group(proc)
            raise
        errfile.seek(0)
        err = errfile.read().decode(errors="replace")
        if rc == 0:
            bar.update(total - bar.n)
    return rc, err


def read_failure(stderr: str) -> Failure:
    """Pick the lines of gsutil's stderr that explain a failure."""
    # Progress chatter is dropped: it can hold numbers like 403.
    lines = [
        ln for ln in map(str.strip, re.split(r"[\r\n]+", stderr)) if ln and not ln.startswith(_NOISE_PREFIXES)
    ]
    denied = [ln for ln in lines if _DENIED_RE.search(ln) or ("xception" in ln and _STATUS_RE.search(ln))]
    return Failure(
        last=lines[-1] if lines else "(gsutil printed nothing)",
        denied=denied[-1] if denied else None,
        not_found=any(_NOT_FOUND_RE.search(ln) for ln in lines),
    )


def _wait_with_progress(proc: subprocess.Popen, target: Path, bar: tqdm) -> int:
    """Wait for gsutil, polling the target's size for the bar and for a stall."""
    last_size, last_change = -1, time.monotonic()
    while True:
        try:
            return proc.wait(timeout=POLL_S)
        except subprocess.TimeoutExpired:
            pass
        size = _staged_bytes(target)
        bar.update(min(size, bar.total) - bar.n)
        now = time.monotonic()
        if size != last_size:
            last_size, last_change = size, now
        elif now - last_change > STALL_TIMEOUT_S:
            raise GsutilError(f"gsutil copied nothing for {STALL_TIMEOUT_S:.0f} s and was stopped")


def _staged_bytes(target: Path) -> int:
    """Bytes actually written; allocated blocks, so preallocated sliced downloads don't make the bar jump."""
    total = 0
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(target):
            with contextlib.suppress(FileNotFoundError):
                st = entry.stat()
                total += min(st.st_size, st.st_blocks * 512)
    return total


def _run_captured(argv: list[str], timeout: float) -> tuple[int, str, str]:
    """Run a short gsutil command in its own process group; the whole group dies on timeout."""
    pipe = subprocess.PIPE
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=pipe,
        stderr=pipe,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:
        _kill_group(proc)
        raise
    return proc.returncode, out, err


def _kill_group(proc: subprocess.Popen) -> None:
    """Stop gsutil and every child it spawned (`-m` workers outlive a killed parent otherwise)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        if sig == signal.SIGTERM:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=KILL_GRACE_S)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.communicate(timeout=KILL_GRACE_S)  # reap; closes our ends of its pipes
