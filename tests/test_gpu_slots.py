"""`jowa gpu-run` and `jowa gpu-check`: real processes, real flock, real torchrun (gloo), fake device pools.

A pool is declared with JOWA_GPU_POOL (this machine has no GPU), so CUDA_VISIBLE_DEVICES carries ids
that torch here ignores; what is checked is which ids each job gets, when, and how it is launched.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

# Writes the devices it got, then waits to be killed (or to time out).
HOLD = 'printf "%s" "$CUDA_VISIBLE_DEVICES" > "$0"; sleep 60'


def env(tmp_path: Path, **extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID")}
    return {**base, "JOWA_GPU_LOCK_DIR": str(tmp_path / "locks"), "PYTHONWARNINGS": "ignore", **extra}


def start(environ: dict[str, str], gpus: int, out: Path, *options: str) -> subprocess.Popen:
    """A launcher holding its devices in `sh` until killed (its own process group, as Snakemake's jobs)."""
    command = ["jowa", "gpu-run", "--gpus", str(gpus), *options, "--", "sh", "-c", HOLD, str(out)]
    return subprocess.Popen(command, env=environ, start_new_session=True, stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never written"
        time.sleep(0.05)
    time.sleep(0.05)  # printf's write has landed once the file exists; let it finish
    return path.read_text()


def kill(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def run(environ: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["jowa", *args], env=environ, capture_output=True, text=True, timeout=300)


def test_concurrent_jobs_get_disjoint_devices_and_a_killed_job_frees_its_own(tmp_path: Path) -> None:
    environ = env(tmp_path, JOWA_GPU_POOL="0,1,2,3")
    first, second = start(environ, 2, tmp_path / "a"), start(environ, 2, tmp_path / "b")
    try:
        got = [set(wait_for(tmp_path / name).split(",")) for name in ("a", "b")]
        assert got[0] | got[1] == {"0", "1", "2", "3"} and not got[0] & got[1]
        waiting = start(environ, 1, tmp_path / "c")
        time.sleep(2.0)
        assert not (tmp_path / "c").exists() and waiting.poll() is None  # every slot is taken: it waits
        kill(first)  # SIGKILL: no cleanup runs, the kernel drops the locks
        assert wait_for(tmp_path / "c") in got[0]
        kill(waiting)
    finally:
        for proc in (first, second):
            if proc.poll() is None:
                kill(proc)


def test_shared_jobs_spread_then_share_each_device_and_exclude_whole_device_jobs(tmp_path: Path) -> None:
    environ = env(tmp_path, JOWA_GPU_POOL="0,1")
    procs: dict[str, subprocess.Popen] = {}
    try:
        for name in "abcd":  # one at a time, so that each sees the previous ones' shares
            procs[name] = start(environ, 1, tmp_path / name, "--share", "2")
            wait_for(tmp_path / name)
        got = {name: (tmp_path / name).read_text() for name in "abcd"}
        assert got == {"a": "0", "b": "1", "c": "0", "d": "1"}  # the emptier device first, then 2 each
        procs["e"] = start(environ, 1, tmp_path / "e", "--share", "2")
        procs["whole"] = start(environ, 1, tmp_path / "whole")
        time.sleep(2.0)
        assert not (tmp_path / "e").exists() and not (tmp_path / "whole").exists()  # every share taken
        kill(procs["a"])
        assert wait_for(tmp_path / "e") == "0"  # a free share; the whole-device job still waits
        assert not (tmp_path / "whole").exists()
        kill(procs["c"]), kill(procs["e"])
        assert wait_for(tmp_path / "whole") == "0"  # no sharer left on device 0
        kill(procs["d"])
        procs["f"] = start(environ, 1, tmp_path / "f", "--share", "2")
        assert wait_for(tmp_path / "f") == "1"  # device 0 is held whole: shares only on device 1...
        procs["g"] = start(environ, 1, tmp_path / "g", "--share", "2")
        time.sleep(2.0)
        assert not (tmp_path / "g").exists()  # ...whose two shares are taken
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                kill(proc)


def test_a_share_count_below_one_is_an_error(tmp_path: Path) -> None:
    proc = run(env(tmp_path, JOWA_GPU_POOL="0"), "gpu-run", "--gpus", "1", "--share", "0", "--", "true")
    assert proc.returncode == 1 and "--share 0: expected 1 or more jobs per device" in proc.stderr


def test_no_gpu_asked_or_none_on_the_machine_runs_on_the_cpu(tmp_path: Path) -> None:
    show = ["--", sys.executable, "-c", "import os; print(repr(os.environ['CUDA_VISIBLE_DEVICES']))"]
    cpu = run(env(tmp_path, JOWA_GPU_POOL="0,1"), "gpu-run", "--gpus", "0", *show)
    assert cpu.returncode == 0 and cpu.stdout.strip() == "''", cpu.stderr
    none = run(env(tmp_path, JOWA_GPU_POOL=""), "gpu-run", "--gpus", "2", "--torchrun", *show)
    assert none.returncode == 0 and none.stdout.strip() == "''", none.stderr  # one process: no torchrun
    assert "asked for 2 GPU(s), but this machine has none" in none.stderr


def test_more_gpus_than_the_pool_holds_is_an_error_naming_both(tmp_path: Path) -> None:
    proc = run(env(tmp_path, JOWA_GPU_POOL="0,1"), "gpu-run", "--gpus", "3", "--", "true")
    assert proc.returncode == 1
    assert "asked for 3 GPU(s), but this machine offers 2 (JOWA_GPU_POOL='0,1')" in proc.stderr


def test_under_slurm_the_allocation_is_used_as_given_and_apart_from_local_locks(tmp_path: Path) -> None:
    local = start(env(tmp_path, JOWA_GPU_POOL="5,7"), 2, tmp_path / "local")
    try:
        assert wait_for(tmp_path / "local") == "5,7"
        slurm = env(tmp_path, SLURM_JOB_ID="4242", CUDA_VISIBLE_DEVICES="5,7")
        job = start(slurm, 2, tmp_path / "job")  # SLURM gave this job 5 and 7: local holders do not count
        assert wait_for(tmp_path / "job") == "5,7"
        kill(job)
        short = run(slurm, "gpu-run", "--gpus", "3", "--", "true")
        assert (
            short.returncode == 1 and "SLURM job 4242 offers 2 (CUDA_VISIBLE_DEVICES='5,7')" in short.stderr
        )
        empty = run(env(tmp_path, SLURM_JOB_ID="4242"), "gpu-run", "--gpus", "1", "--", "true")
        assert empty.returncode == 1 and "SLURM job 4242 offers 0" in empty.stderr  # never a silent CPU run
    finally:
        kill(local)


RANKS = """
import json, os, sys
import torch, torch.distributed as dist
dist.init_process_group("gloo")
total = torch.tensor([dist.get_rank() + 1])
dist.all_reduce(total)
record = {k: os.environ[k] for k in ("RANK", "WORLD_SIZE", "CUDA_VISIBLE_DEVICES")}
with open(os.path.join(sys.argv[1], f"rank{dist.get_rank()}.json"), "w") as f:
    json.dump({**record, "sum": int(total)}, f)
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_two_gpus_for_a_ddp_command_start_two_torchrun_ranks(tmp_path: Path) -> None:
    script = tmp_path / "ranks.py"
    script.write_text(RANKS)
    environ = env(tmp_path, JOWA_GPU_POOL="0,1", OMP_NUM_THREADS="1")
    proc = run(
        environ, "gpu-run", "--gpus", "2", "--torchrun", "--", sys.executable, str(script), str(tmp_path)
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["RANK"] for r in ranks] == ["0", "1"] and {r["WORLD_SIZE"] for r in ranks} == {"2"}
    assert {r["CUDA_VISIBLE_DEVICES"] for r in ranks} == {"0,1"} and {r["sum"] for r in ranks} == {3}
    without = run(environ, "gpu-run", "--gpus", "2", "--", sys.executable, str(script), str(tmp_path))
    assert without.returncode != 0 and "RANK" in without.stderr  # one plain process: no torchrun env


def test_gpu_check_records_a_cpu_run_and_fails_on_a_wrong_count(tmp_path: Path) -> None:
    out = tmp_path / "check.json"
    ok = run(env(tmp_path, JOWA_GPU_POOL="0"), "gpu-run", "--gpus", "0", "--", "jowa", "gpu-check",
             "--expect", "0", "--out", str(out))  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    record = json.loads(out.read_text())
    assert (
        record["asked"] == 0
        and record["result"].startswith("CPU run")
        and record["cuda_visible_devices"] == ""
    )
    # a fake GPU: the job is given device 0, but torch sees no CUDA device here, as a broken allocation
    bad = run(env(tmp_path, JOWA_GPU_POOL="0"), "gpu-run", "--gpus", "1", "--", "jowa", "gpu-check",
              "--expect", "1", "--out", str(tmp_path / "bad.json"))  # fmt: skip
    assert (
        bad.returncode == 1 and "asked for 1 GPU(s) but torch sees 0 (CUDA_VISIBLE_DEVICES='0'" in bad.stderr
    )
    assert not (tmp_path / "bad.json").exists()
