"""The on-disk format of a DQN-Replay run: file names, dtypes, and streaming `.npy.gz` I/O.

Every file is one gzip member wrapping a plain `.npy` stream (Dopamine's `np.save` into `GzipFile`).
A real observation file inflates to 7 GB, so arrays are read in row chunks after parsing the `.npy`
header; nothing here ever holds a whole observation array. ISA-L's inflate is used when installed
(several times faster than zlib); errors always name the file.
"""

from __future__ import annotations

import gzip
import os
import re
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from jowa.core.atomic import atomic_file
from jowa.data.episodes import ReplayFormatError

try:  # ISA-L: same gzip format, much faster inflate.
    from isal import igzip as _fast_gzip
    from isal.isal_zlib import error as _isal_error
except ImportError:  # pragma: no cover - isal is a hard dependency, kept optional for odd platforms
    _fast_gzip = None
    _isal_error = zlib.error

STORE_PREFIX = "$store$_"
STORE_KINDS = ("observation", "action", "reward", "terminal")
META_KINDS = ("add_count", "invalid_range")
ALL_KINDS = STORE_KINDS + META_KINDS
FILES_PER_SUFFIX = len(ALL_KINDS)

#: dtype and per-row shape of each stored array (Dopamine's `get_storage_signature`).
STORE_SPECS: dict[str, tuple[np.dtype, tuple[int, ...]]] = {
    "observation": (np.dtype(np.uint8), (84, 84)),
    "action": (np.dtype(np.int32), ()),
    "reward": (np.dtype(np.float32), ()),
    "terminal": (np.dtype(np.uint8), ()),
}
STACK_SIZE = 4
UPDATE_HORIZON = 1

_NAME_RE = re.compile(
    r"^(?:\$store\$_)?(observation|action|reward|terminal|add_count|invalid_range)_ckpt\.(\d+)\.gz$"
)


def run_path(game: str, run: int | str) -> str:
    """Where a run's checkpoint files sit below a root: `{Game}/{run}/replay_logs`.

    This is the bucket's layout (`gs://atari-replay-datasets/dqn/Pong/1/replay_logs/`); local mirrors and
    the workflow's `resources/` use it too, so it is written here once.
    """
    return f"{game}/{run}/replay_logs"


def checkpoint_filename(kind: str, suffix: int) -> str:
    """Dopamine's name for array `kind` of checkpoint `suffix` (`$store$_` only on stored arrays)."""
    if kind not in ALL_KINDS:
        raise ValueError(f"unknown replay array {kind!r}; expected one of {ALL_KINDS}")
    prefix = STORE_PREFIX if kind in STORE_KINDS else ""
    return f"{prefix}{kind}_ckpt.{suffix}.gz"


def parse_checkpoint_filename(name: str) -> tuple[str, int] | None:
    """(kind, suffix) of a replay file name, or None for a file that is not part of a run."""
    m = _NAME_RE.match(name)
    if m is None or (m.group(1) in STORE_KINDS) != name.startswith(STORE_PREFIX):
        return None
    return m.group(1), int(m.group(2))


def list_suffixes(replay_dir: Path) -> dict[int, set[str]]:
    """Map each checkpoint suffix found in `replay_dir` to the kinds present for it."""
    found: dict[int, set[str]] = {}
    for entry in os.scandir(replay_dir):
        parsed = parse_checkpoint_filename(entry.name)
        if parsed is not None:
            found.setdefault(parsed[1], set()).add(parsed[0])
    return found


def _open_gzip(path: Path) -> BinaryIO:
    if _fast_gzip is not None:
        return _fast_gzip.open(path, "rb")
    return gzip.open(path, "rb")


_READ_ERRORS = (EOFError, OSError, zlib.error, _isal_error, gzip.BadGzipFile)


class NpyGzReader:
    """Streams the rows of one `.npy.gz` file without inflating it whole."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        try:
            self._fh = _open_gzip(self.path)
        except FileNotFoundError:
            raise ReplayFormatError(f"{self.path}: file not found") from None
        try:
            version = np.lib.format.read_magic(self._fh)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read_header(self._fh)
        except (*_READ_ERRORS, ValueError) as exc:
            self._fh.close()
            raise ReplayFormatError(f"{self.path}: unreadable .npy.gz header ({exc})") from exc
        if fortran and len(shape) > 1:
            self._fh.close()
            raise ReplayFormatError(f"{self.path}: Fortran-ordered arrays are not DQN-Replay files")
        if dtype.hasobject:
            self._fh.close()
            raise ReplayFormatError(f"{self.path}: holds pickled objects, expected a numeric array")
        # GzipFile inherits a readinto that reads into a new bytes object and copies it; its inner buffered
        # reader fills the caller's buffer directly (~15% faster). Fall back if that private part changes.
        self._readinto = getattr(self._fh, "_buffer", self._fh).readinto
        self.shape: tuple[int, ...] = tuple(shape)
        self.dtype: np.dtype = dtype
        self.rows_read = 0

    @property
    def rows(self) -> int:
        return self.shape[0] if self.shape else 1

    @property
    def row_shape(self) -> tuple[int, ...]:
        return self.shape[1:]

    def read_into(self, out: np.ndarray) -> None:
        """Fill `out` (rows × row_shape, this file's dtype) with the next rows of the file."""
        view = memoryview(out.reshape(-1).view(np.uint8))
        want = view.nbytes
        got = 0
        try:
            while got < want:
                n = self._readinto(view[got:])
                if not n:
                    break
                got += n
        except _READ_ERRORS as exc:
            raise ReplayFormatError(
                f"{self.path}: corrupt gzip stream after {self.rows_read} rows ({exc})"
            ) from exc
        if got != want:
            raise ReplayFormatError(
                f"{self.path}: truncated: expected {self.rows} rows of {self.row_shape} {self.dtype}, "
                f"the stream ended inside row {self.rows_read + got // max(1, self._row_bytes())}"
            )
        self.rows_read += out.shape[0] if out.ndim else 1

    def _row_bytes(self) -> int:
        return int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize

    def iter_chunks(self, rows_per_chunk: int) -> Iterator[np.ndarray]:
        """Yield consecutive row blocks; the yielded buffer is reused, so copy what you keep."""
        buf = np.empty((min(rows_per_chunk, max(self.rows, 1)), *self.row_shape), self.dtype)
        while self.rows_read < self.rows:
            n = min(rows_per_chunk, self.rows - self.rows_read)
            block = buf[:n]
            self.read_into(block)
            yield block

    def read_all(self) -> np.ndarray:
        """The whole array; only for the small per-row and metadata arrays."""
        out = np.empty(self.shape, self.dtype)
        self.read_into(out)
        return out

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> NpyGzReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_array(
    path: Path | str, dtype: np.dtype | None = None, shape: tuple[int, ...] | None = None
) -> np.ndarray:
    """Read a small array whole, checking its dtype and shape when given."""
    with NpyGzReader(path) as reader:
        if dtype is not None and reader.dtype != np.dtype(dtype):
            raise ReplayFormatError(f"{path}: dtype {reader.dtype}, expected {np.dtype(dtype)}")
        if shape is not None and reader.shape != tuple(shape):
            raise ReplayFormatError(f"{path}: shape {reader.shape}, expected {tuple(shape)}")
        return reader.read_all()


def write_array(path: Path | str, array: np.ndarray, compresslevel: int = 6) -> None:
    """Write `array` the way Dopamine does (`np.save` into one gzip member), atomically.

    The gzip header holds no file name and no time (Dopamine's hold both), so the same array gives
    the same bytes and md5 whenever and wherever it is written; given a file object, `GzipFile` would
    otherwise store the temporary file's name.
    """
    with (
        atomic_file(path) as tmp,
        open(tmp, "wb") as raw,
        gzip.GzipFile(filename="", fileobj=raw, mode="wb", compresslevel=compresslevel, mtime=0) as out,
    ):
        np.save(out, array, allow_pickle=False)
