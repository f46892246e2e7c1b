"""`jowa gpu-run`: run a command on N GPUs of this machine that no other job holds, or on the CPU.

Snakemake's `resources: gpu=N` only counts GPUs: on one machine it never says which ones a job gets, so
two concurrent jobs would share GPU 0. This launcher takes N devices from the machine's pool, each
guarded by an exclusive `flock` on a file of the lock directory, sets CUDA_VISIBLE_DEVICES to them and
replaces itself with the command: one process that sees all N, or with `--torchrun` (a command that
trains with DDP) one process per GPU under `torchrun --standalone` when N > 1. The locks are file
descriptors the command inherits, so they are held exactly as long as it runs and the kernel releases
them when it ends, however it ends (SIGKILL too). It takes all of its devices at once or none, and
waits while they are busy (no hold-and-wait).

Sharing (`--share S`, evaluation jobs): up to S such jobs may hold one device together, since one
planner leaves most of a large GPU idle. A shared job holds the device's file with a shared flock and
one of its S share files (`DEVICE.share{k}.lock`) exclusively; a whole-device job's exclusive flock
on the device's file therefore waits for every sharer to end, and sharers wait for it. A shared job
goes to the device with the most free shares (ties in pool order), so evaluations spread over idle
GPUs before they pile up on one.

The pool: JOWA_GPU_POOL (comma-separated device ids, e.g. to leave some GPUs to others), else
CUDA_VISIBLE_DEVICES as given (a SLURM allocation, or the user's), else every GPU torch sees. Under
SLURM the lock namespace is the job's own (SLURM_JOB_ID), since SLURM gives each job disjoint GPUs;
several jobs of one allocation still share its GPUs correctly. N = 0 (`--resources gpu=0` scales every
job's `gpu` down to 0) runs on the CPU with no GPU visible; so does a machine with no GPU at all, but
not a SLURM job, which fails rather than train on the CPU for days.
"""

from __future__ import annotations

import argparse
import fcntl
import logging
import os
import shutil
import sys
import tempfile
import time
from contextlib import suppress
from pathlib import Path

from jowa.core.errors import JowaError

log = logging.getLogger(__name__)

POOL_ENV = "JOWA_GPU_POOL"
LOCK_DIR_ENV = "JOWA_GPU_LOCK_DIR"


class GpuSlotError(JowaError, RuntimeError):
    """More GPUs asked for than the machine or the allocation has, or a bad pool setting."""


def _ids(text: str, where: str) -> list[str]:
    ids = [part.strip() for part in text.split(",") if part.strip()]
    if len(set(ids)) != len(ids):
        raise GpuSlotError(f"{where}={text!r}: a device is listed more than once")
    return ids


def device_pool(environ: dict[str, str]) -> tuple[list[str], str]:
    """(device ids this machine or allocation offers, where they come from)."""
    for name in (POOL_ENV, "CUDA_VISIBLE_DEVICES"):
        if name in environ:
            return _ids(environ[name], name), name
    if not Path("/proc/driver/nvidia/gpus").is_dir() and shutil.which("nvidia-smi") is None:
        return [], "no NVIDIA driver"  # without importing torch, which takes a second per job
    import torch

    return [str(i) for i in range(torch.cuda.device_count())], "torch.cuda.device_count()"


def lock_dir(environ: dict[str, str]) -> Path:
    """Node-local and per user (XDG_RUNTIME_DIR or the temp dir), per SLURM job inside one."""
    default = Path(environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()) / f"jowa-gpu-slots-{os.getuid()}"
    root = Path(environ.get(LOCK_DIR_ENV) or default)
    job = environ.get("SLURM_JOB_ID")
    return root / (f"slurm-{job}" if job else "local")


Locks = dict[str, list[int]]  # device -> the locked file descriptors that hold it


def _lock(path: Path, mode: int) -> int | None:
    """A descriptor of `path` flocked in `mode` without waiting, or None if another holder excludes it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _device_file(directory: Path, device: str, suffix: str = "") -> Path:
    return directory / f"{device.replace('/', '_')}{suffix}.lock"


def _take_share(directory: Path, device: str, share: int) -> tuple[list[int], int] | None:
    """(locks of one share of `device`, how many of its shares are still free), or None if none is."""
    held = _lock(_device_file(directory, device), fcntl.LOCK_SH)
    if held is None:
        return None  # a whole-device job holds it
    mine, free = None, 0
    for k in range(share):
        fd = _lock(_device_file(directory, device, f".share{k}"), fcntl.LOCK_EX)
        if fd is not None and mine is None:
            mine = fd
        elif fd is not None:
            free += 1
            os.close(fd)  # only counted
    if mine is None:
        os.close(held)
        return None
    return [held, mine], free


def try_acquire(pool: list[str], count: int, directory: Path, share: int = 1) -> Locks | None:
    """{device: locked fds} for `count` devices of `pool`, or None (nothing kept).

    share == 1: free devices in pool order, each held alone; share > 1: one of `share` shares of each,
    preferring devices with more free shares.
    """
    directory.mkdir(parents=True, exist_ok=True)
    held: Locks = {}
    if share == 1:
        for device in pool:
            if len(held) == count:
                break
            fd = _lock(_device_file(directory, device), fcntl.LOCK_EX)
            if fd is not None:
                held[device] = [fd]
    else:
        offers = {device: offer for device in pool if (offer := _take_share(directory, device, share))}
        best = sorted(offers, key=lambda device: -offers[device][1])[:count]
        held = {device: offers[device][0] for device in pool if device in best}
        release({device: fds for device, (fds, _) in offers.items() if device not in best})
    if len(held) == count:
        return held
    release(held)
    return None


def release(held: Locks) -> None:
    for fds in held.values():
        for fd in fds:
            with suppress(OSError):
                os.close(fd)  # closing the last descriptor drops the flock


def acquire(pool: list[str], count: int, directory: Path, share: int = 1, poll_s: float = 1.0) -> Locks:
    """`count` devices (or shares of them) of `pool`, waiting while fewer are free."""
    waited = False
    while (held := try_acquire(pool, count, directory, share)) is None:
        if not waited:
            what = f"{count} free GPU(s)" if share == 1 else f"a free share (of {share}) of {count} GPU(s)"
            log.info("waiting for %s of %s (locks in %s)", what, ",".join(pool), directory)
            waited = True
        time.sleep(poll_s)
    return held


def launch(command: list[str], processes: int) -> list[str]:
    """The command as run: under this interpreter's torchrun with `processes` ranks when more than one."""
    if processes <= 1:
        return command
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={processes}", "--no-python", *command]  # fmt: skip


def grant(gpus: int, environ: dict[str, str], share: int = 1) -> tuple[list[str], Locks]:
    """(devices, their locks) for a job asking for `gpus` (shared by up to `share` jobs); none: the CPU."""
    if gpus == 0:
        return [], {}
    pool, where = device_pool(environ)
    in_slurm = "SLURM_JOB_ID" in environ
    if not pool and not in_slurm:
        log.warning("asked for %d GPU(s), but this machine has none (%s): running on the CPU", gpus, where)
        return [], {}
    if len(pool) < gpus:
        allocation = f"SLURM job {environ['SLURM_JOB_ID']}" if in_slurm else "this machine"
        raise GpuSlotError(
            f"asked for {gpus} GPU(s), but {allocation} offers {len(pool)} ({where}={','.join(pool)!r}); "
            "ask for fewer (--resources gpu=N caps every job) or fix the allocation (`snakemake gpu_check`)"
        )
    held = acquire(pool, gpus, lock_dir(environ), share)
    return list(held), held


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--gpus", type=int, required=True, help="GPUs to take (a rule passes {resources.gpu}); 0: the CPU"
    )
    parser.add_argument(
        "--torchrun", action="store_true",
        help="the command trains with DDP: one process per GPU under torchrun --standalone when it gets "
        "more than one (without it, one process sees them all)",
    )  # fmt: skip
    parser.add_argument(
        "--share", type=int, default=1, metavar="S",
        help="let up to S jobs run with --share S on each device at once (evaluation; a rule passes "
        "{resources.gpu_shares}); 1, the default: the job holds its devices alone",
    )  # fmt: skip
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to run")


def main(args: argparse.Namespace) -> None:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise GpuSlotError("no command given: jowa gpu-run --gpus N -- COMMAND ...")
    if args.gpus < 0:
        raise GpuSlotError(f"--gpus {args.gpus}: expected 0 or more")
    if args.share < 1:
        raise GpuSlotError(f"--share {args.share}: expected 1 or more jobs per device")
    environ = dict(os.environ)
    devices, held = grant(args.gpus, environ, args.share)
    environ["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
    where = f"GPU(s) {','.join(devices)}" if devices else "the CPU"
    if devices and args.share > 1:
        where += f" (shared by up to {args.share} jobs)"
    log.info("running on %s: %s", where, " ".join(command))
    for fds in held.values():
        for fd in fds:
            os.set_inheritable(fd, True)  # the command holds the slots until it exits
    sys.stderr.flush()
    run = launch(command, len(devices) if args.torchrun else 1)
    try:
        os.execvpe(run[0], run, environ)
    except OSError as error:
        raise GpuSlotError(f"cannot run {run[0]!r}: {error}") from None
