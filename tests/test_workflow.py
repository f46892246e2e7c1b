"""The Snakemake DAG: the paper plan, one params file, code inputs, and a real run of the local pipeline."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from jowa.cli import COMMANDS
from jowa.jobs.code_inputs import code_inputs
from jowa.weights.checkpoints import load_model

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


def edited(path: Path) -> str:
    """Change a module's content (a comment); returns the original to restore."""
    original = path.read_text()
    path.write_text(original + "\n# an edit\n")
    return original


@pytest.mark.slow
def test_local_pipeline_runs_end_to_end_and_reruns_only_what_changed(tmp_path: Path) -> None:
    cwd = workdir(tmp_path, copy_code=True)
    snakemake(cwd, "--cores", "2", "--configfile", "config/smoke.yaml")
    smoke = yaml.safe_load((cwd / "config" / "smoke.yaml").read_text())
    for game in smoke["games"]["pretrain"]:
        meta = json.loads((cwd / "results/data/pretrain" / game / "meta.json").read_text())
        assert meta["transitions"] >= smoke["subsample"]["transitions_per_game"]
        assert meta["runs"] == [1, 2] and meta["format_version"] == 2
    for quality in smoke["finetune_data"]["qualities"]:
        meta = json.loads((cwd / "results/data/finetune" / quality / "Boxing" / "meta.json").read_text())
        assert (
            meta["quality"] == quality
            and meta["checkpoint_window"] == smoke["finetune_data"]["qualities"][quality]
        )
    for size in smoke["models"]:
        for quality in smoke["finetune_data"]["qualities"]:
            run = cwd / "results/train/finetune" / size / quality / "Boxing"
            model, meta = load_model(run / "model.safetensors")
            assert (
                meta["game"] == "Boxing" and meta["quality"] == quality and meta["pretrained"]["size"] == size
            )
            assert model.config.layers == smoke["models"][size]["layers"]
            lines = (run / "run" / "metrics.jsonl").read_text().splitlines()
            assert json.loads(lines[-1])["step"] == smoke["finetune"]["steps"]
            assert not (run / "run" / "state.pt").exists()  # a finished run keeps no resume state
            result = json.loads((cwd / "results/eval/finetune" / size / quality / "Boxing.json").read_text())
            assert result["planner"] == "greedy" and result["lengths"] == [smoke["eval"]["max_steps"]] * 2
        for planner in ("greedy", "beam"):
            for game in smoke["games"]["pretrain"]:
                result = json.loads(
                    (cwd / "results/eval/pretrain" / size / planner / f"{game}.json").read_text()
                )
                assert len(result["returns"]) == smoke["eval"]["episodes"] and result["size"] == size
    metrics = json.loads((cwd / "results/metrics.json").read_text())
    assert set(metrics["pretrain_iqm_hns"]) == {
        f"{s}/{p}" for s in smoke["models"] for p in ("greedy", "beam")
    }
    table = (cwd / "results/report/pretrain_scores.md").read_text().splitlines()
    pong = next(line for line in table if line.startswith("| Pong ")).strip("|").split("|")
    pong = [cell.strip() for cell in pong]
    assert "not run" not in pong[1:5] and "not run" in pong[5:]  # ours; the paper never pretrained on Pong
    assert (cwd / "results/report/scaling.png").stat().st_size > 0
    snakemake(cwd, "--configfile", "config/smoke.yaml", "--report", "report.html")  # figures with captions
    html = (cwd / "report.html").read_text(errors="replace")
    assert all(name in html for name in ("scaling.png", "pretrain_scores.md", "training_curves.pdf"))
    for caption in (ROOT / "workflow" / "report").glob("*.rst"):
        assert " ".join(caption.read_text().split()[:4]) in html, caption.name  # each caption, rendered
    assert not list((cwd / "results").rglob(".*tmp*"))  # no staging left behind
    raw = cwd / "resources/generated"
    for path in [raw / "manifests/Pong/1.tsv", raw / "dqn-replay/Pong/1/replay_logs"]:
        assert not path.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH), (
            f"{path} is not protected"
        )

    def plan() -> dict[str, int]:
        return job_counts(snakemake(cwd, "-n", "--configfile", "config/smoke.yaml"))

    assert plan() == {}
    # code: a module reruns exactly the jobs whose command imports it, and raw data never reruns
    for module, expected in [
        ("cli.py", {}),
        ("data/generate.py", {}),
        (
            "models/world_action.py",
            {"pretrain": 2, "finetune": 6, **EVAL_JOBS, "all": 1},
        ),  # not the tokenizer's
        ("train/finetune.py", {"finetune": 6, "evaluate_finetuned": 6, "report": 1, "all": 1}),
        (
            "data/finetune_set.py",
            {"finetune_set": 3, "finetune": 6, "evaluate_finetuned": 6, "report": 1, "all": 1},
        ),
        ("planning/search.py", {"finetune": 6, **EVAL_JOBS, "all": 1}),  # fine-tuning imagines with it
        ("planning/mcts.py", {"finetune": 6, **EVAL_JOBS, "all": 1}),  # via the selection option
        ("report/figures.py", {"report": 1, "all": 1}),
        ("data/subsample.py", STORE_JOBS),
        ("core/atomic.py", STORE_JOBS),
    ]:
        path = cwd / "jowa" / module
        original = edited(path)
        assert plan() == expected, module
        path.write_text(original)
    assert plan() == {}  # the same content again: Snakemake compares checksums, not only times

    # a parameter reruns exactly its section's jobs; another quality's window reruns only that quality
    smoke["subsample"]["seed"] = 1
    smoke["finetune_data"]["qualities"]["expert"] = [0.5, 1.0]
    (cwd / "config" / "smoke.yaml").write_text(yaml.safe_dump(smoke))
    assert plan() == {"subsample": 2, "finetune_set": 1, **TRAIN_JOBS, **EVAL_JOBS, "all": 1}
    smoke = yaml.safe_load((cwd / "config" / "smoke.yaml").read_text())
    smoke["subsample"]["seed"], smoke["finetune_data"]["qualities"]["expert"] = 0, [0.6, 1.0]
    smoke["finetune"]["steps"] = 30
    (cwd / "config" / "smoke.yaml").write_text(yaml.safe_dump(smoke))
    assert plan() == {"finetune": 6, "evaluate_finetuned": 6, "report": 1, "all": 1}
    smoke["models"]["tiny-s"]["q_hidden"] = 48  # one size's architecture: its pretraining and fine-tuning
    (cwd / "config" / "smoke.yaml").write_text(yaml.safe_dump(smoke))
    assert plan() == {
        "pretrain": 1,
        "finetune": 6,
        "evaluate_pretrained": 4,
        "evaluate_finetuned": 6,
        "report": 1,
        "all": 1,
    }
    smoke["finetune"]["steps"], smoke["models"]["tiny-s"]["q_hidden"] = 20, 32
    smoke["planning"]["default"]["beam_width"] = 3  # beam search settings: the beam jobs only
    (cwd / "config" / "smoke.yaml").write_text(yaml.safe_dump(smoke))
    assert plan() == {"evaluate_pretrained": 4, "report": 1, "all": 1}


def test_lint_finds_nothing_but_the_accepted_conda_note(tmp_path: Path) -> None:
    """Rules run in the activated environment, not per-rule conda envs; every other lint must be fixed."""
    output = snakemake(workdir(tmp_path), "--lint", "--configfile", "config/smoke.yaml", check=False)
    lints = set(re.findall(r"^\s+\* (.+?):$", output, re.M))
    assert lints == {"Specify a conda environment or container for each rule."}, output
