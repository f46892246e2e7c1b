"""The cluster path for real: DAG jobs as sbatch jobs of a one-node Slurm cluster (tests/slurm/start.sh)
through profiles/slurm; a pretraining job cancelled by `scancel`, then stopped by Slurm at its time limit,
resumes each time Snakemake retries it and ends with the weights, stores and tokens of an uninterrupted
local run."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from test_workflow import ROOT, workdir

SLURM = ROOT / "tests/slurm"
PARAMS = "lean.yaml"
TARGET = "pretrain_all"
# Slurm checks time limits every 30 s, so a 1-minute limit stops a job 60 to 90 s in: tiny-s at batch 16
# ran 4.4 to 8.4 steps/s on one core of a busy 2-core machine and did 800 steps within the limit on a
# quieter one, so 2000 steps (the retry gets 20 minutes for the rest, even at the slowest rate)
PRETRAIN_STEPS = 2000
MODEL = "results/train/pretrain/tiny-s/model.safetensors"
TOKENIZER = "results/train/tokenizer/tokenizer.safetensors"


def why_no_slurm() -> str | None:
    """Why Slurm cannot run here, or None: start.sh installs it with apt as root."""
    if shutil.which("slurmctld") and shutil.which("slurmd") and shutil.which("slurmdbd"):
        return None if os.geteuid() == 0 else "Slurm's daemons here need root"
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "Slurm is not installed and cannot be (needs root and apt-get)"
    return None


pytestmark = [pytest.mark.slow, pytest.mark.skipif(why_no_slurm() is not None, reason=str(why_no_slurm()))]


@pytest.fixture
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A running cluster of its own state directory, stopped again however the test ends."""
    state = tmp_path_factory.mktemp("slurm")
    try:
        subprocess.run([SLURM / "start.sh", state], check=True, timeout=600)
        yield {**os.environ, "SLURM_CONF": str(state / "slurm.conf")}
    finally:
        subprocess.run([SLURM / "stop.sh", state], check=False, timeout=120)


def lean_params(path: Path, pretrain_steps: int) -> None:
    """The smoke params cut to one game's store, the tokenizer, its tokens and one size's pretraining,
    each as short as it can be but pretraining."""
    params = yaml.safe_load((ROOT / "config/smoke.yaml").read_text())
    params["games"]["pretrain"] = ["Pong"]
    params["data"]["runs"] = [1]
    params["data"]["generate"]["steps_per_run"] = 2000
    params["subsample"] |= {"runs_per_game": 1, "transitions_per_game": 1000}
    params["tokenizer"] |= {"steps": 10, "checkpoint_every": 10, "log_every": 10}
    params["finetune_data"]["runs_per_game"] = 1
    params["models"] = {"tiny-s": params["models"]["tiny-s"]}
    params["pretrain"] |= {"steps": pretrain_steps, "checkpoint_every": 10, "log_every": 10}
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def slurm_profile(cwd: Path) -> Path:
    """tests/slurm/smoke-profile with pretraining given 1 minute, shorter than it needs, and two retries,
    the last with 20 minutes (a time limit's usual remedy; each retry resumes from the last checkpoint):
    the first attempt is cancelled, the second times out, the third finishes."""
    profile = yaml.safe_load((SLURM / "smoke-profile/config.yaml").read_text())
    profile["set-resources"]["pretrain"]["runtime"] = "20 if attempt == 3 else 1"
    profile["retries"] = 2
    (cwd / "slurm-profile").mkdir()
    (cwd / "slurm-profile/config.yaml").write_text(yaml.safe_dump(profile))
    return cwd / "slurm-profile"


def run(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    env = {**env, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(cwd)}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def sacct(env: dict[str, str]) -> list[tuple[str, str]]:
    """(rule, state) of every job the cluster ran, oldest first (the plugin's comment names the rule)."""
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "Comment,State"], env=env,
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    return [(re.sub(r"^rule_|_wildcards_.*$", "", comment), state.split()[0]) for comment, state in
            (line.split("|") for line in out.splitlines())]  # fmt: skip  # "CANCELLED by 0": the state


def same_tree(a: Path, b: Path) -> None:
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for name in files:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def same_tensors(a: Path, b: Path) -> None:
    left, right = load_file(a), load_file(b)
    assert left.keys() == right.keys()
    assert all(torch.equal(left[k], right[k]) for k in left), a


def test_the_dag_runs_as_slurm_jobs_and_a_timed_out_pretraining_resumes_to_the_same_weights(
    slurm_cluster: dict[str, str], tmp_path: Path
) -> None:
    local, cluster = tmp_path / "local", tmp_path / "cluster"
    for cwd in (local, cluster):
        cwd.mkdir()
        workdir(cwd)
        lean_params(cwd / PARAMS, PRETRAIN_STEPS)
    # the uninterrupted reference runs beside the cluster's jobs, one core each
    with (tmp_path / "local.out").open("w") as reference_out:
        reference = subprocess.Popen(
            ["snakemake", TARGET, "--cores", "1", "--configfile", PARAMS, "--resources", "gpu=0"],
            cwd=local, env={**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(local)},
            stdout=reference_out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        run_on_the_cluster(cluster, slurm_cluster)
        assert reference.wait(timeout=900) == 0, (tmp_path / "local.out").read_text()[-3000:]
    finally:
        reference.kill()
    same_tree(local / "results/data/pretrain/Pong", cluster / "results/data/pretrain/Pong")
    tokens = "results/train/tokens/pretrain/Pong.npy"
    assert np.array_equal(np.load(local / tokens), np.load(cluster / tokens))
    same_tensors(local / TOKENIZER, cluster / TOKENIZER)
    same_tensors(local / MODEL, cluster / MODEL)


def run_on_the_cluster(cluster: Path, env: dict[str, str]) -> None:
    """A GPU request, then the lean DAG through Slurm: pretraining cancelled, retried, stopped at its time
    limit, retried again."""
    command = ("snakemake", TARGET, "--profile", "profiles/slurm", "--workflow-profile",
               str(slurm_profile(cluster)), "--configfile", PARAMS)  # fmt: skip
    # the gres path: a job asking for a GPU is sent with --gpus, which this GPU-less cluster refuses
    asks = run(cluster, env, "snakemake", "gpu_check", *command[2:], "--set-resources", "gpu_check:gpu=1")
    output = asks.stdout + asks.stderr
    assert asks.returncode != 0 and "--gpus=1" in output, output[-3000:]
    assert "Invalid generic resource (gres) specification" in output, output[-3000:]

    env_run = {**env, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(cluster)}
    with (cluster / "snakemake.out").open("w") as out:
        proc = subprocess.Popen(command, cwd=cluster, env=env_run, stdout=out, stderr=subprocess.STDOUT)
        try:
            cancelled = cancel_pretraining_after_its_first_checkpoint(cluster, env, proc)
            assert proc.wait(timeout=900) == 0, (cluster / "snakemake.out").read_text()[-3000:]
        finally:
            proc.kill()
    output = (cluster / "snakemake.out").read_text()
    assert f"SLURM-job '{cancelled}' failed, SLURM status is: 'FAILED'" in output, output[-3000:]
    # the stopped attempt's failure says what Slurm did and where its Slurm log is
    stopped = re.search(r"SLURM-job '(\d+)' failed, SLURM status is: 'TIMEOUT'", output)
    assert stopped, f"pretraining ended within its 1-minute limit: raise PRETRAIN_STEPS\n{output[-3000:]}"
    log = re.search(rf"(\S*\.snakemake/slurm_logs/rule_pretrain/\S*/{stopped[1]}\.log)", output)
    assert log and "DUE TO TIME LIMIT" in Path(log[1]).read_text(), output[-3000:]
    data_jobs = [(rule, "COMPLETED") for rule in ("generate", "subsample", "train_tokenizer", "tokenize")]
    jobs = sacct(env)
    assert jobs == [*data_jobs, *[("pretrain", s) for s in ("FAILED", "TIMEOUT", "COMPLETED")]], jobs
    train_log = (cluster / "logs/train/pretrain/tiny-s.log").read_text()
    assert re.search(r"resuming .* from step [1-9]\d*", train_log), train_log[-2000:]  # the last attempt's


def cancel_pretraining_after_its_first_checkpoint(
    cluster: Path, env: dict[str, str], proc: subprocess.Popen
) -> str:
    """`scancel --signal=TERM --full` the pretraining job once it has saved a state; returns its Slurm job
    ID. A plain `scancel` ends the job too, but sacct then reports "CANCELLED by <uid>", which the Slurm
    plugin (2.x) does not match as a failure: Snakemake would wait for the job forever (tried)."""
    state = cluster / "results/train/pretrain/tiny-s/run/state.pt"
    deadline = time.monotonic() + 600
    while not state.exists():
        assert proc.poll() is None and time.monotonic() < deadline, (
            "no pretraining checkpoint to cancel after"
        )
        time.sleep(0.5)
    queue = subprocess.run(["squeue", "-h", "-o", "%i|%k"], env=env, capture_output=True, text=True,
                           check=True).stdout  # fmt: skip
    ids = [
        job for job, comment in (line.split("|") for line in queue.splitlines()) if "rule_pretrain" in comment
    ]
    assert len(ids) == 1, queue
    subprocess.run(["scancel", "--signal=TERM", "--full", ids[0]], env=env, check=True)
    return ids[0]
