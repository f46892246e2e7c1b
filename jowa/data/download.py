"""Fetch one DQN-Replay run with gsutil, resumably, and publish it only once it is proven complete.

The run is copied into a hidden staging directory next to `dest` (`.{dest.name}.partial`) with
`gsutil -m cp -n`, so an interrupted copy resumes where it stopped: files already staged are skipped.
Only when gsutil finished, every file has the source's size and `check_run_complete` passed is the
staging directory renamed to `dest` and the manifest written. A failure therefore never leaves a `dest`
or a manifest behind (downstream rules would take them for a finished download); the staging directory
may stay, on purpose, so the next attempt resumes.

gsutil is used for local mirrors too (it copies local paths), so both sources take the same code path.
`gs://atari-replay-datasets` answers 403 to everyone since 2025 (docs/dqn-replay-format.md §0): that case,
and a machine that cannot reach Google at all, end in a `DownloadError` that says what to do instead.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from jowa.atomic import atomic_file
from jowa.data.dopamine_format import (
    ALL_KINDS,
    FILES_PER_SUFFIX,
    STORE_KINDS,
    STORE_SPECS,
    NpyGzReader,
    ReplayFormatError,
    checkpoint_filename,
    list_suffixes,
    parse_checkpoint_filename,
)

try:  # ISA-L inflates the small arrays several times faster than zlib; same format.
    from isal import igzip as _gzip_impl
    from isal.isal_zlib import error as _inflate_error
except ImportError:  # pragma: no cover - isal is a hard dependency
    _gzip_impl = gzip
    _inflate_error = zlib.error

__all__ = [
    "DownloadError",
    "check_run_complete",
    "download_run",
    "find_gsutil",
    "read_manifest",
    "staging_dir",
    "write_manifest",
]

#: Top-level gsutil options. Without them gsutil retries an unreachable service for many minutes.
GSUTIL_OPTIONS = ("-o", "Boto:num_retries=2", "-o", "Boto:max_retry_delay=2")
#: Seconds the listing of a gs:// run may take before the service counts as unreachable.
LIST_TIMEOUT_S = 120.0
#: Seconds the copy may go without a staged byte more before it counts as stalled and is killed.
STALL_TIMEOUT_S = 900.0
#: Seconds between two looks at the staging directory while gsutil copies (progress bar, stall check).
POLL_S = 0.25
#: Seconds gsutil's process group gets to exit after SIGTERM before SIGKILL.
KILL_GRACE_S = 3.0

MANIFEST_COLUMNS = ("name", "size", "md5")
GSUTIL_TEMP_SUFFIX = "_.gstmp"  # gsutil's partial download of a gs:// object; it resumes from it.

#: dtype and shape of the two metadata arrays (Dopamine's `add_count` and `invalid_range` attributes).
META_SPECS = {"add_count": ("int64", ()), "invalid_range": ("int64", (5,))}

DQN_REPLAY_BUCKET = "gs://atari-replay-datasets"
WAYS_FORWARD = (
    "Ways forward: (1) set `data.source` in params.yaml to a local mirror directory that has "
    "{Game}/{run}/replay_logs/ (for example a copy downloaded before 2025); or (2) set "
    "`data.source: generate` to play the games with ale-py and write data in the same layout."
)

_DENIED_RE = re.compile(r"AccessDenied|access ?denied|Forbidden|Unauthorized", re.IGNORECASE)
_STATUS_RE = re.compile(r"\b(401|403)\b")
_NOT_FOUND_RE = re.compile(r"matched no objects|No URLs matched|NotFoundException|\b404\b")
_LS_LINE_RE = re.compile(r"^\s*(\d+)\s+\S+\s+(gs://\S.*?)\s*$")
_WILDCARD_RE = re.compile(r"[*?\[\]]")
_NOISE_PREFIXES = ("Copying ", "Skipping existing", "Operation completed", "/ [", "- [", "\\ [", "| [")


class DownloadError(RuntimeError):
    """A run could not be fetched; the message says why and what to do about it."""


@dataclass(frozen=True)
class _Source:
    """Where one run's `replay_logs/` lives: a gs:// URL or a local directory."""

    location: str  # gs:// URL or absolute local path of the run's replay_logs directory (no trailing /)
    root: str  # what the user gave as `source`, for messages
    remote: bool

    @property
    def bucket(self) -> str:
        return "gs://" + self.location[len("gs://") :].split("/", 1)[0]

    def item(self, name: str) -> str:
        """The argument gsutil gets for file `name` of the run."""
        return f"{self.location}/{name}"


# ---------------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------------


def download_run(
    source: str, game: str, run: int, dest: Path, manifest: Path, *, progress: bool = True
) -> Path:
    """Copy `{source}/{game}/{run}/replay_logs/` to `dest`, verified, and write its manifest.

    `source` is a gs:// URL prefix or a local mirror (path or file:// URL). Re-running after a failure
    resumes from the staging directory; re-running after success does nothing (the manifest matches).
    """
    dest, manifest = Path(dest), Path(manifest)
    if _is_up_to_date(dest, manifest):
        return dest
    src = _resolve_source(source, game, run)
    staging = staging_dir(dest)
    if not src.remote and Path(src.location).resolve() in {dest.resolve(), staging.resolve()}:
        raise DownloadError(f"source {src.location} is the download destination itself; point it elsewhere")
    _discard_stale_outputs(dest, manifest, staging)
    if not src.remote:
        _require_local_run(src)
    gsutil = find_gsutil()
    expected = _list_remote(gsutil, src) if src.remote else _list_local(src)
    staging.mkdir(parents=True, exist_ok=True)
    _prune_staging(staging, expected)
    _copy(gsutil, src, expected, staging, desc=f"{game}/{run}", progress=progress)
    _verify_staging(staging, expected, src)
    _publish(staging, dest, manifest)
    return dest


def staging_dir(dest: Path) -> Path:
    """The hidden sibling that collects a run until it is complete (kept across attempts to resume)."""
    return dest.parent / f".{dest.name}.partial"


def find_gsutil() -> str:
    """gsutil's path, looked up on PATH at call time (so tests and users can put another one first)."""
    found = shutil.which("gsutil")
    if found is None:
        raise DownloadError(
            "gsutil is not installed (not found on PATH); install it with `pip install gsutil` "
            "or `pip install 'jowa-repro[workflow]'`"
        )
    return found


def check_run_complete(replay_dir: Path) -> list[int]:
    """Check that `replay_dir` holds a whole, readable DQN-Replay run and return its suffixes.

    Cheap enough to run on every download: observation files (7 GB inflated each) are only opened
    for their `.npy` header; the small arrays are inflated to the end so a truncated gzip is caught.
    """
    replay_dir = Path(replay_dir)
    suffixes = _check_file_set(replay_dir)
    problems = _file_problems(replay_dir, suffixes)
    if problems:
        raise ReplayFormatError(_join_problems(problems))
    return suffixes


def read_manifest(path: Path) -> list[dict]:
    """Rows of a manifest TSV as dicts with `name` (str), `size` (int) and `md5` (hex str)."""
    path = Path(path)
    lines = path.read_text().splitlines()
    if not lines or tuple(lines[0].split("\t")) != MANIFEST_COLUMNS:
        raise ValueError(f"{path}: not a manifest (expected the header line 'name<TAB>size<TAB>md5')")
    rows = []
    for lineno, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != 3 or not fields[1].isdigit() or not re.fullmatch(r"[0-9a-f]{32}", fields[2]):
            raise ValueError(f"{path}: line {lineno} is not `name<TAB>size<TAB>md5`: {line!r}")
        rows.append({"name": fields[0], "size": int(fields[1]), "md5": fields[2]})
    return rows


def write_manifest(replay_dir: Path, path: Path) -> list[dict]:
    """Hash every file of `replay_dir` and write the manifest TSV atomically; returns its rows."""
    rows = _manifest_rows(Path(replay_dir))
    _write_manifest_rows(rows, Path(path))
    return rows


# ---------------------------------------------------------------------------------------------------
# Source resolution and listing
# ---------------------------------------------------------------------------------------------------


def _resolve_source(source: str, game: str, run: int) -> _Source:
    """Turn the configured source into the run's location; local paths become absolute for gsutil."""
    source = str(source)
    tail = f"{game}/{run}/replay_logs"
    if source.startswith("gs://"):
        return _Source(f"{source.rstrip('/')}/{tail}", source, remote=True)
    if source.startswith("file://"):
        source = source[len("file://") :]
    elif "://" in source:
        raise DownloadError(f"unsupported data source {source!r}: expected a gs:// URL or a local directory")
    root = Path(source).expanduser().absolute()
    location = str(root / game / str(run) / "replay_logs")
    if _WILDCARD_RE.search(location):  # gsutil would expand these as wildcards in local paths too
        raise DownloadError(f"local mirror path {location} contains one of * ? [ ], which gsutil cannot copy")
    return _Source(location, str(root), remote=False)


def _require_local_run(src: _Source) -> None:
    """Fail early, naming the first missing path component, for a mirror that lacks the run."""
    location, root = Path(src.location), Path(src.root)
    parts = location.relative_to(root).parts
    candidates = [root, *(root.joinpath(*parts[: i + 1]) for i in range(len(parts)))]
    missing = next((path for path in candidates if not path.is_dir()), None)
    if missing is None:
        return
    raise DownloadError(
        f"local mirror has no run at {location}: {missing} does not exist (or is not a directory). "
        f"A mirror must have {{Game}}/{{run}}/replay_logs/ under {root}."
    )


def _list_local(src: _Source) -> dict[str, int]:
    """Names and sizes of the run's replay files in a local mirror."""
    expected = {
        entry.name: entry.stat().st_size
        for entry in os.scandir(src.location)
        if entry.is_file() and parse_checkpoint_filename(entry.name) is not None
    }
    if not expected:
        raise DownloadError(f"{src.location} holds no DQN-Replay files (named like add_count_ckpt.0.gz)")
    return expected


def _list_remote(gsutil: str, src: _Source) -> dict[str, int]:
    """Names and sizes of the run's objects, from `gsutil ls -l`, with a bounded wait."""
    argv = [gsutil, *GSUTIL_OPTIONS, "ls", "-l", f"{src.location}/"]
    try:
        rc, out, err = _run_captured(argv, timeout=LIST_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise _unreachable(src, f"listing {src.location}/ took longer than {LIST_TIMEOUT_S:.0f} s") from None
    if rc != 0:
        raise _classify_failure(src, err, what=f"listing {src.location}/")
    expected = _parse_ls_long(out)
    if not expected:
        raise DownloadError(
            f"{src.location}/ exists but holds no DQN-Replay files (named like add_count_ckpt.0.gz)"
        )
    return expected


def _parse_ls_long(text: str) -> dict[str, int]:
    """{name: size} of the replay objects in `gsutil ls -l` output (sub-directories and TOTAL skipped)."""
    expected = {}
    for line in text.splitlines():
        m = _LS_LINE_RE.match(line)
        if m is None:
            continue
        name = m.group(2).rsplit("/", 1)[-1]
        if parse_checkpoint_filename(name) is not None:
            expected[name] = int(m.group(1))
    return expected


# ---------------------------------------------------------------------------------------------------
# Staging and copying
# ---------------------------------------------------------------------------------------------------


def _is_up_to_date(dest: Path, manifest: Path) -> bool:
    """True when `dest` holds exactly the files (names and sizes) its manifest lists."""
    if not (dest.is_dir() and manifest.is_file()):
        return False
    try:
        listed = {row["name"]: row["size"] for row in read_manifest(manifest)}
    except (OSError, ValueError):
        return False
    return listed == _file_sizes(dest)


def _discard_stale_outputs(dest: Path, manifest: Path, staging: Path) -> None:
    """Remove outputs a failed or foreign run left, keeping any data in staging for the resume."""
    manifest.unlink(missing_ok=True)
    if not dest.exists():
        return
    if not staging.exists():
        os.replace(dest, staging)
        return
    for entry in os.scandir(dest):
        target = staging / entry.name
        if entry.is_file() and not target.exists():
            os.replace(entry.path, target)
    shutil.rmtree(dest)


def _prune_staging(staging: Path, expected: dict[str, int]) -> None:
    """Delete staged files that `cp -n` must not skip: partial copies and files not in the source."""
    for entry in os.scandir(staging):
        if entry.name.endswith(GSUTIL_TEMP_SUFFIX):
            continue  # gsutil resumes a gs:// object from its temp file
        size = entry.stat().st_size if entry.is_file(follow_symlinks=False) else None
        if size is None or expected.get(entry.name) != size:
            _remove(Path(entry.path))


def _copy(
    gsutil: str, src: _Source, expected: dict[str, int], staging: Path, desc: str, progress: bool
) -> None:
    """Run `gsutil -m cp -n` into staging with a byte progress bar; map failures to DownloadError."""
    items = [src.item(name) for name in sorted(expected)]
    argv = [gsutil, "-m", *GSUTIL_OPTIONS, "-q", "cp", "-n", *items, f"{staging}{os.sep}"]
    total = sum(expected.values())
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
            rc = _wait_with_progress(proc, staging, bar)
        except _Stalled as exc:
            _kill_group(proc)
            if src.remote:
                raise _unreachable(src, str(exc)) from None
            raise DownloadError(f"copying {src.location}: {exc}") from None
        except BaseException:
            _kill_group(proc)
            raise
        errfile.seek(0)
        err = errfile.read().decode(errors="replace")
        if rc != 0:
            raise _classify_failure(src, err, what=f"copying {src.location}/ to {staging}")
        bar.update(total - bar.n)


class _Stalled(Exception):
    """gsutil stopped adding bytes to the staging directory for STALL_TIMEOUT_S."""


def _wait_with_progress(proc: subprocess.Popen, staging: Path, bar: tqdm) -> int:
    """Wait for gsutil, polling the staging size for the bar and for a stall."""
    last_size, last_change = -1, time.monotonic()
    while True:
        try:
            return proc.wait(timeout=POLL_S)
        except subprocess.TimeoutExpired:
            pass
        size = _staged_bytes(staging)
        bar.update(min(size, bar.total) - bar.n)
        now = time.monotonic()
        if size != last_size:
            last_size, last_change = size, now
        elif now - last_change > STALL_TIMEOUT_S:
            raise _Stalled(f"gsutil copied nothing for {STALL_TIMEOUT_S:.0f} s and was stopped")


def _staged_bytes(staging: Path) -> int:
    """Bytes actually written to staging; allocated blocks, so preallocated sliced downloads don't jump."""
    total = 0
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(staging):
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


# ---------------------------------------------------------------------------------------------------
# Failure messages
# ---------------------------------------------------------------------------------------------------


def _classify_failure(src: _Source, stderr: str, what: str) -> DownloadError:
    """Turn gsutil's stderr into the error that tells the user what to do."""
    lines = _error_lines(stderr)
    last = lines[-1] if lines else "(gsutil printed nothing)"
    denied = [ln for ln in lines if _DENIED_RE.search(ln) or ("xception" in ln and _STATUS_RE.search(ln))]
    if src.remote and denied:
        return _access_denied(src, denied[-1])
    if not src.remote:
        return DownloadError(f"gsutil failed {what}: {last}")
    if any(_NOT_FOUND_RE.search(ln) for ln in lines):
        return DownloadError(f"{src.location}/ does not exist in {src.bucket} (gsutil: {last})")
    return _unreachable(src, last)


def _error_lines(stderr: str) -> list[str]:
    """gsutil's stderr lines minus progress chatter (which can contain numbers like 403)."""
    lines = (ln.strip() for ln in re.split(r"[\r\n]+", stderr))
    return [ln for ln in lines if ln and not ln.startswith(_NOISE_PREFIXES)]


def _access_denied(src: _Source, line: str) -> DownloadError:
    since = ""
    if src.bucket == DQN_REPLAY_BUCKET:
        since = " to everyone since 2025 (anonymous and signed-in callers alike)"
    return DownloadError(
        f"the bucket {src.bucket} answers 403 (access denied){since}, so {src.location}/ cannot be "
        f"downloaded. gsutil said: {line}\n{WAYS_FORWARD}"
    )


def _unreachable(src: _Source, detail: str) -> DownloadError:
    note = ""
    if src.bucket == DQN_REPLAY_BUCKET:
        note = f"Even if reachable, {DQN_REPLAY_BUCKET} answers 403 (access denied) to everyone since 2025. "
    return DownloadError(
        f"the bucket {src.bucket} could not be reached (no network, or Google Cloud Storage is blocked) "
        f"while fetching {src.location}/. Last gsutil error: {detail}\n{note}{WAYS_FORWARD}"
    )


# ---------------------------------------------------------------------------------------------------
# Verification and publishing
# ---------------------------------------------------------------------------------------------------


def _verify_staging(staging: Path, expected: dict[str, int], src: _Source) -> None:
    """Sizes against the source, then the format check; bad staged files are dropped so a retry refetches."""
    actual = _file_sizes(staging, skip_suffix=GSUTIL_TEMP_SUFFIX)
    missing = sorted(set(expected) - set(actual))
    wrong = sorted(n for n in expected if n in actual and actual[n] != expected[n])
    for name in wrong:
        _remove(staging / name)
    if missing or wrong:
        raise DownloadError(
            f"gsutil reported success but the staged copy of {src.location} differs from the source: "
            f"missing {missing or 'none'}, wrong size {wrong or 'none'}; run again to resume"
        )
    try:
        suffixes = _check_file_set(staging)
        problems = _file_problems(staging, suffixes)
    except ReplayFormatError as exc:
        raise DownloadError(f"{src.location} is not a complete DQN-Replay run: {exc}") from exc
    if problems:
        for path in problems:
            _remove(path)
        raise DownloadError(f"{src.location} is not a complete DQN-Replay run: {_join_problems(problems)}")


def _publish(staging: Path, dest: Path, manifest: Path) -> None:
    """Hash, rename staging to dest, then write the manifest; undo the rename if that write fails."""
    for entry in os.scandir(staging):
        if entry.name.endswith(GSUTIL_TEMP_SUFFIX):
            _remove(Path(entry.path))  # stale temp of an object that is now fully staged
    rows = _manifest_rows(staging)
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging, dest)
    try:
        _write_manifest_rows(rows, manifest)
    except BaseException:
        os.replace(dest, staging)
        raise


def _check_file_set(replay_dir: Path) -> list[int]:
    """Suffixes 0..max, each with all FILES_PER_SUFFIX files; the error names what is missing."""
    found = list_suffixes(replay_dir)
    if not found:
        raise ReplayFormatError(f"{replay_dir}: no DQN-Replay files (named like add_count_ckpt.0.gz)")
    gaps = []
    for suffix in range(max(found) + 1):
        kinds = found.get(suffix, set())
        if len(kinds) == FILES_PER_SUFFIX:
            continue
        names = [checkpoint_filename(kind, suffix) for kind in ALL_KINDS if kind not in kinds]
        what = "all its files are missing" if not kinds else "missing " + ", ".join(names)
        gaps.append(f"suffix {suffix}: {what}")
    if gaps:
        raise ReplayFormatError(f"{replay_dir}: incomplete run (suffixes 0..{max(found)}): {'; '.join(gaps)}")
    return sorted(found)


def _file_problems(replay_dir: Path, suffixes: Iterable[int]) -> dict[Path, str]:
    """{file: what is wrong with it} over every file of every suffix."""
    problems: dict[Path, str] = {}
    for suffix in suffixes:
        rows: dict[Path, int] = {}
        for kind in ALL_KINDS:
            path = replay_dir / checkpoint_filename(kind, suffix)
            try:
                n = _check_file(path, kind)
            except ReplayFormatError as exc:
                problems[path] = str(exc)
                continue
            if kind in STORE_KINDS:
                rows[path] = n
        if len(set(rows.values())) > 1:
            detail = ", ".join(f"{p.name}: {n}" for p, n in rows.items())
            for path in rows:
                problems[path] = f"{path}: suffix {suffix} arrays disagree on the row count ({detail})"
    return problems


def _check_file(path: Path, kind: str) -> int:
    """Header dtype/shape of one file (and, for the small arrays, the whole gzip stream); returns rows."""
    with NpyGzReader(path) as reader:
        if kind in STORE_KINDS:
            dtype, row_shape = STORE_SPECS[kind]
            ok = (
                reader.dtype == dtype
                and len(reader.shape) == 1 + len(row_shape)
                and reader.row_shape == row_shape
            )
            want = f"{dtype} rows of shape {row_shape}"
        else:
            dtype, shape = META_SPECS[kind]
            ok = reader.dtype == dtype and reader.shape == shape
            want = f"{dtype} of shape {shape}"
        if not ok:
            raise ReplayFormatError(f"{path}: {reader.dtype} array of shape {reader.shape}, expected {want}")
        rows = reader.rows
    if kind != "observation":
        _inflate_to_end(path)
    return rows


def _inflate_to_end(path: Path) -> None:
    """Inflate a small file to its end, discarding the output: catches truncation and CRC damage."""
    try:
        with _gzip_impl.open(path, "rb") as fh:
            while fh.read(1 << 20):
                pass
    except (EOFError, OSError, zlib.error, _inflate_error) as exc:
        raise ReplayFormatError(f"{path}: truncated or corrupt gzip stream ({exc})") from exc


def _join_problems(problems: dict[Path, str]) -> str:
    return f"{len(problems)} bad file(s): " + "; ".join(problems[p] for p in sorted(problems))


def _manifest_rows(replay_dir: Path) -> list[dict]:
    return [
        {"name": name, "size": size, "md5": _md5(replay_dir / name)}
        for name, size in sorted(_file_sizes(replay_dir).items())
    ]


def _write_manifest_rows(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["\t".join(MANIFEST_COLUMNS)] + [f"{r['name']}\t{r['size']}\t{r['md5']}" for r in rows]
    with atomic_file(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while chunk := fh.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _file_sizes(directory: Path, skip_suffix: str | None = None) -> dict[str, int]:
    return {
        entry.name: entry.stat().st_size
        for entry in os.scandir(directory)
        if entry.is_file() and not (skip_suffix and entry.name.endswith(skip_suffix))
    }


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
