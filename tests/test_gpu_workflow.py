"""GPU jobs in the DAG: every one runs under `jowa gpu-run` with its `gpu` resource, `--resources gpu=0`
puts them on the CPU, the SLURM profile plans with its per-rule resources, and `gpu_check` checks."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from test_workflow import ROOT, job_counts, planned_jobs, snakemake, workdir

DDP_RULES = {"train_tokenizer", "pretrain", "finetune"}  # commands that train under torchrun


def gpu_jobs(output: str) -> dict[str, tuple[int, str]]:
    """rule -> (its `gpu` resource, its shell command) of the GPU jobs of a `-n -p` plan, one per rule."""
    jobs = {}
    for block in re.split(r"^(?:local)?rule ", output, flags=re.M)[1:]:
        gpu = re.search(r"^\s+resources: .*\bgpu=(\d+)", block, re.M)
        if gpu:
            jobs[block.split(":", 1)[0]] = (int(gpu[1]), re.search(r"^Shell command: (.*)$", block, re.M)[1])
    return jobs


def test_gpu_jobs_take_their_devices_from_the_launcher_and_gpu_0_means_the_cpu(tmp_path: Path) -> None:
    cwd = workdir(tmp_path)
    plan = snakemake(cwd, "-n", "-p", "--forceall", "--configfile", "config/smoke.yaml")
    jobs = gpu_jobs(plan)
    assert set(jobs) == DDP_RULES | {"tokenize", "evaluate_pretrained", "evaluate_finetuned"}
    for rule, (gpus, shell) in jobs.items():
        option = " --torchrun" if rule in DDP_RULES else " --share 1" if rule.startswith("evaluate") else ""
        assert gpus == 1 and shell.startswith(f"jowa gpu-run --gpus 1{option} -- jowa "), rule
    assert all(shell.startswith("jowa data") for rule, _, shell in planned_jobs(plan) if rule == "generate")

    on_cpu = gpu_jobs(snakemake(cwd, "-n", "-p", "--forceall", "--configfile", "config/smoke.yaml",
                                "--resources", "gpu=0"))  # fmt: skip
    assert set(on_cpu) == set(jobs)  # all still planned: Snakemake scales each job's gpu down to the cap
    assert all(gpus == 0 and "jowa gpu-run --gpus 0 " in shell for gpus, shell in on_cpu.values())
    shared = gpu_jobs(snakemake(cwd, "-n", "-p", "--forceall", "--configfile", "config/smoke.yaml",
                                "--set-resources", "evaluate_pretrained:gpu_shares=4"))  # fmt: skip
    assert all(
        ("--share 4 " in shell) == (rule == "evaluate_pretrained") for rule, (_, shell) in shared.items()
    )


def test_gpu_check_checks_the_count_and_is_a_noted_no_op_on_the_cpu(tmp_path: Path) -> None:
    cwd = workdir(tmp_path)
    assert "gpu_check" not in job_counts(
        snakemake(cwd, "-n", "--forceall", "--configfile", "config/smoke.yaml")
    )
    cpu = snakemake(
        cwd, "gpu_check", "--cores", "1", "--configfile", "config/smoke.yaml", "--resources", "gpu=0"
    )
    assert "1 of 1 steps (100%) done" in cpu
    record = json.loads((cwd / "results/gpu_check.json").read_text())
    assert record["asked"] == 0 and record["result"].startswith("CPU run")
    # asking for one GPU on this machine, which has none: the check fails and says what it saw
    failed = snakemake(cwd, "gpu_check", "--forcerun", "gpu_check", "--cores", "1", "--configfile",
                       "config/smoke.yaml", check=False)  # fmt: skip
    assert "asked for 1 GPU(s) but torch sees 0" in failed
    assert not (cwd / "results/gpu_check.json").exists()  # Snakemake removed the stale record of a failed job


def test_the_slurm_profile_plans_the_paper_dag_with_its_per_rule_resources(tmp_path: Path) -> None:
    cwd = workdir(tmp_path)
    profile = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())
    assert profile["executor"] == "slurm"
    plan = snakemake(cwd, "gpu_check", "all", "-n", "--profile", "profiles/slurm")
    for rule, wanted in profile["set-resources"].items():
        blocks = [b for b in re.split(r"^(?:local)?rule ", plan, flags=re.M)[1:] if b.startswith(f"{rule}:")]
        if rule in ("generate", "import_released_tokenizer", "import_released_model"):
            assert not blocks, rule  # not in this plan: data.source is a download, no released checkpoints
            continue
        assert blocks, rule
        resources = re.search(r"^\s+resources: (.*)$", blocks[0], re.M)[1]
        for key, value in wanted.items():
            assert f"{key}={value}" in resources.split(", "), (rule, key, resources)
    assert profile["set-resources"]["gpu_check"]["gpu"] == profile["set-resources"]["pretrain"]["gpu"]
