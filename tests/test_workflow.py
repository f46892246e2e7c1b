"""The Snakemake DAG as planned: the paper plan, one params file, code inputs, lint; the local pipeline
runs for real in tests/test_pipeline.py."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from jowa.cli import COMMANDS
from jowa.jobs.code_inputs import code_inputs

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW_FILES = ("Snakefile", "params.yaml", "workflow", "config", "profiles")
RAW_RULES = {"generate", "download"}  # raw data: never rerun for code, so no code inputs
TRAIN_JOBS = {"train_tokenizer": 1, "tokenize": 2, "pretrain": 2, "finetune": 6}  # smoke: 2 sizes, 3 sets
EVAL_JOBS = {
    "evaluate_pretrained": 2 * 2 * 2,
    "evaluate_finetuned": 6,
    "report": 1,
}  # sizes x planners x games
STORE_JOBS = {"subsample": 2, "finetune_set": 3, **TRAIN_JOBS, **EVAL_JOBS, "all": 1}  # a store and after


def workdir(tmp_path: Path, copy_code: bool = False) -> Path:
    """A copy of the workflow so runs never touch the checkout; the package linked, or copied to edit it."""
    for name in WORKFLOW_FILES:
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    if copy_code:
        shutil.copytree(ROOT / "jowa", tmp_path / "jowa", ignore=shutil.ignore_patterns("__pycache__"))
    else:
        (tmp_path / "jowa").symlink_to(ROOT / "jowa")
    return tmp_path


def snakemake(cwd: Path, *args: str, check: bool = True) -> str:
    """Run snakemake with the workdir's package first on the path (Snakemake and its jobs import it)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(cwd)}
    proc = subprocess.run(["snakemake", *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=600)
    output = proc.stdout + proc.stderr
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{output[-6000:]}")
    return output


def job_counts(output: str) -> dict[str, int]:
    if "Nothing to be done" in output:
        return {}
    table = output.split("Job stats:")[1]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M) if m[1] != "total"}


def planned_jobs(output: str) -> list[tuple[str, list[str], str]]:
    """(rule, inputs, shell command) of every job in a `--dry-run --printshellcmds` plan."""
    jobs = []
    for block in re.split(r"^(?:local)?rule ", output, flags=re.M)[1:]:
        rule = block.split(":", 1)[0]
        inputs = re.search(r"^\s+input: (.*)$", block, re.M)
        shell = re.search(r"^Shell command: (.*)$", block, re.M)
        jobs.append((rule, inputs[1].split(", ") if inputs else [], shell[1] if shell else ""))
    return jobs


def test_dry_run_plans_the_paper_data_training_and_evaluation_phases(tmp_path: Path) -> None:
    output = snakemake(workdir(tmp_path), "-n", "--forceall", "--quiet", "rules")
    assert job_counts(output) == {
        "download": 15 * 2 + 5 * 1,  # only the picked runs: 2 per pretraining game, 1 per held-out game
        "subsample": 15, "finetune_set": 5 * 3,
        "train_tokenizer": 1, "tokenize": 15, "pretrain": 3,
        "finetune": 3 * 5 * 3,  # sizes x held-out games x qualities
        "evaluate_pretrained": 3 * 2 * 15,  # sizes x planners x games
        "evaluate_finetuned": 3 * 5 * 3,
        "report": 1,
        "all": 1,
    }  # fmt: skip


def test_the_standard_protocol_robustness_check_adds_only_its_evaluations(tmp_path: Path) -> None:
    cwd = workdir(tmp_path)
    params = yaml.safe_load((cwd / "params.yaml").read_text())
    params["robustness"] = {"protocol": "standard", "planners": ["beam"]}
    (cwd / "robust.yaml").write_text(yaml.safe_dump(params))
    plan = planned_jobs(snakemake(cwd, "-n", "--forceall", "-p", "--configfile", "robust.yaml"))
    robust = [shell for rule, _, shell in plan if rule == "evaluate_robustness"]
    assert len(robust) == 3 * 15 and all("--planner beam" in shell for shell in robust)  # sizes x games
    assert all(
        '"protocol":"standard"' in shell and "results/eval/robustness/standard/" in shell for shell in robust
    )
    paper = [shell for rule, _, shell in plan if rule == "evaluate_pretrained"]
    assert len(paper) == 3 * 2 * 15 and all('"protocol":"jowa"' in shell for shell in paper)


def test_rl_unplugged_source_plans_its_layout_and_refuses_unpublished_games(tmp_path: Path) -> None:
    cwd = workdir(tmp_path)
    params = yaml.safe_load((cwd / "params.yaml").read_text())
    params["data"]["source"] = "gs://rl_unplugged/atari_episodes_ordered"
    (cwd / "rlu.yaml").write_text(yaml.safe_dump(params))
    refused = snakemake(cwd, "-n", "--configfile", "rlu.yaml", check=False)
    assert "data.source: gs://rl_unplugged/atari_episodes_ordered does not publish Berzerk" in refused
    assert "drop it from games.pretrain" in refused and "Job stats" not in refused

    params["data"]["game_sources"] = {"Berzerk": "generate"}  # the other way forward the error offers
    (cwd / "rlu.yaml").write_text(yaml.safe_dump(params))
    plan = planned_jobs(
        snakemake(cwd, "data_all", "-n", "--forceall", "--printshellcmds", "--configfile", "rlu.yaml")
    )
    downloads = [shell for rule, _, shell in plan if rule == "download"]
    assert len(downloads) == 14 * 2 + 5
    assert all("--source gs://rl_unplugged/atari_episodes_ordered" in shell for shell in downloads)
    assert any("--out resources/rl-unplugged/Pong/" in shell for shell in downloads)
    generated = [shell for rule, _, shell in plan if rule == "generate"]
    assert len(generated) == 2 and all("--game Berzerk" in shell for shell in generated)
    berzerk = next(inputs for rule, inputs, _ in plan if rule == "subsample" and "Berzerk" in str(inputs))
    assert "resources/generated/dqn-replay/Berzerk/" in " ".join(berzerk)

    params["data"]["game_sources"] = {"Breakout": "generate"}
    (cwd / "rlu.yaml").write_text(yaml.safe_dump(params))
    stray = snakemake(cwd, "-n", "--configfile", "rlu.yaml", check=False)
    assert "data.game_sources.Breakout: not in games.pretrain or games.finetune" in stray


def test_a_configfile_replaces_params_yaml_whole(tmp_path: Path) -> None:
    cwd = workdir(tmp_path)
    params = yaml.safe_load((cwd / "params.yaml").read_text())
    params["finetune_data"]["qualities"] = {"expert": [0.8, 1.0]}
    (cwd / "one.yaml").write_text(yaml.safe_dump(params))
    output = snakemake(cwd, "-n", "--forceall", "--quiet", "rules", "--configfile", "one.yaml")
    assert job_counts(output)["finetune_set"] == 5  # one per held-out game: no quality leaks from params.yaml

    two = snakemake(cwd, "-n", "--configfile", "one.yaml", "config/smoke.yaml", check=False)
    assert "give one complete params file, not 2" in two
    incomplete = snakemake(
        cwd, "-n", "--config", "subsample={seed: 5}", "--configfile", "config/smoke.yaml", check=False
    )
    assert "--config overrides bypass params.yaml" in incomplete


def test_bad_params_fail_before_any_job(tmp_path: Path) -> None:
    cwd = workdir(tmp_path)
    params = yaml.safe_load((cwd / "config" / "smoke.yaml").read_text())
    params["games"]["pretrain"][1] = "SpaceInvader"
    del params["subsample"]["seed"]
    (cwd / "bad.yaml").write_text(yaml.safe_dump(params))
    output = snakemake(cwd, "-n", "--configfile", "bad.yaml", check=False)
    assert "bad.yaml is invalid" in output
    assert re.search(
        r"games\.pretrain\[1\]: unknown game 'SpaceInvader'; did you mean 'SpaceInvaders'\?", output
    )
    assert "subsample.seed: missing (required)" in output
    assert not (cwd / "resources").exists() and not (cwd / "results").exists()


@pytest.mark.parametrize("params", ["params.yaml", "config/smoke.yaml"])
def test_code_inputs_are_the_modules_each_command_imports(tmp_path: Path, params: str) -> None:
    output = snakemake(workdir(tmp_path), "-n", "--forceall", "-p", "--configfile", params)
    jobs = [job for job in planned_jobs(output) if job[0] != "all"]
    assert {rule for rule, _, _ in jobs} >= {"subsample", "finetune_set"}
    for rule, inputs, shell in jobs:
        command = re.match(r"(?:jowa gpu-run .*? -- )?jowa (\S+(?: [a-z-]+)?)", shell)  # past the launcher
        name = command[1] if command[1] in COMMANDS else command[1].split()[0]
        declared = sorted(path for path in inputs if path.endswith(".py"))
        if rule in RAW_RULES:
            assert declared == [], f"{rule} would re-fetch raw data after a code change"
        else:
            assert declared == code_inputs(COMMANDS[name][0], tmp_path), rule
            assert "jowa/cli.py" not in declared


def test_lint_finds_nothing_but_the_accepted_conda_note(tmp_path: Path) -> None:
    """Rules run in the activated environment, not per-rule conda envs; every other lint must be fixed."""
    output = snakemake(workdir(tmp_path), "--lint", "--configfile", "config/smoke.yaml", check=False)
    lints = set(re.findall(r"^\s+\* (.+?):$", output, re.M))
    assert lints == {"Specify a conda environment or container for each rule."}, output
