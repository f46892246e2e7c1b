"""The local smoke pipeline, end to end and once: `dvc repro` in a temporary git repository whose
params.yaml is the smoke configuration, then Snakemake and DVC on what it made.

The tests share the one pipeline and run in order, each starting and ending up to date: a first
`dvc repro` killed while a pretraining run holds a checkpoint, then one that completes the DAG and
resumes that run; the outputs of every phase, and the jobs a code or parameter edit would rerun (the
`make run` command line, `--configfile config/smoke.yaml`, sees the run as its own); a fine-tuning
parameter that reruns only the fine-tune, evaluate and report phases; direct `snakemake` runs that keep
dvc.lock current; and parameter edits that both tools see alike. One run serves them all, because the
smoke DAG is most of the test suite's time (issue 21).
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from functools import reduce
from pathlib import Path

import pytest
import yaml
from test_dag_consistency import ROOT, covered, dvc_view, ledger_workdir
from test_dvc import STAGES
from test_workflow import EVAL_JOBS, STORE_JOBS, TRAIN_JOBS, job_counts, snakemake

from jowa.weights.checkpoints import load_model

pytestmark = pytest.mark.slow


def outputs(cwd: Path, *args: str) -> tuple[str, str]:
    """stdout and stderr of a command in the pipeline repository, with its package first on the path and
    not under `dvc repro`; on a timeout its whole process group goes (Snakemake and its jobs too)."""
    env = {k: v for k, v in os.environ.items() if k != "DVC_STAGE"}
    env |= {"PYTHONWARNINGS": "ignore", "PYTHONPATH": str(cwd)}
    with subprocess.Popen(
        args,
        cwd=cwd,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    ) as proc:
        try:
            out, err = proc.communicate(timeout=1800)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed:\n{(out + err)[-6000:]}")
    return out, err


def run(cwd: Path, *args: str) -> str:
    return "".join(outputs(cwd, *args))


def dvc_stale(cwd: Path) -> set[str]:
    """The stages `dvc status` calls changed."""
    return set(json.loads(outputs(cwd, "dvc", "status", "--json")[0]))


def up_to_date(cwd: Path) -> bool:
    return dvc_stale(cwd) == set() and "Nothing to be done" in snakemake(cwd, "-n")


def ran(output: str) -> tuple[list[str], Counter[str]]:
    """The stages a `dvc repro` ran, and the Snakemake jobs they ran, by rule."""
    stages = re.findall(r"^Running stage '(\w+)'", output, re.M)
    jobs: Counter[str] = Counter()
    for table in output.split("Job stats:")[1:]:
        jobs.update(job_counts("Job stats:" + table.split("\n\n")[0]))
    return stages, jobs


def edit_params(cwd: Path, key: str, value: object) -> object:
    """Set a dotted key of params.yaml; returns the old value."""
    params = yaml.safe_load((cwd / "params.yaml").read_text())
    *path, last = key.split(".")
    node = params
    for part in path:
        node = node[part]
    old, node[last] = node[last], value
    (cwd / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return old


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git repository holding the workflow, the DVC files and the package, with the smoke params as
    params.yaml (DVC reads only params.yaml), committed; nothing run yet."""
    (cwd := tmp_path_factory.mktemp("dvc") / "repo").mkdir()  # the remote is beside it
    ledger_workdir(cwd)
    (cwd / "params.yaml").write_text((cwd / "config/smoke.yaml").read_text())
    run(cwd, "git", "init", "-q")
    run(cwd, "git", "add", "-A")
    run(cwd, "git", "-c", "user.name=test", "-c", "user.email=test@example.org", "commit", "-qm", "workflow")
    return cwd


def test_repro_runs_everything_and_a_killed_pretraining_resumes(pipeline: Path) -> None:
    cwd, env = pipeline, {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(pipeline)}
    env.pop("DVC_STAGE", None)
    with (cwd.parent / "killed.log").open("w") as log:
        proc = subprocess.Popen(
            ["dvc", "repro"], cwd=cwd, env=env, stdout=log, stderr=log, start_new_session=True
        )
        deadline = time.monotonic() + 1200
        while proc.poll() is None and time.monotonic() < deadline:
            states = list(cwd.glob("results/train/pretrain/*/run/state.pt"))
            if states:
                break
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)  # dvc, snakemake and the training job: a machine gone
        proc.wait()
    assert states, (
        "no pretraining checkpoint before dvc repro ended:\n"
        + (cwd.parent / "killed.log").read_text()[-3000:]
    )
    run_dir = states[0].parent
    size = run_dir.parent.name
    assert not (run_dir.parent / "model.safetensors").exists(), "finished before the kill: no test"

    snakemake(cwd, "--unlock")  # the killed Snakemake's lock (README: after an interruption)
    stages, jobs = ran(run(cwd, "dvc", "repro"))
    assert stages == ["pretrain", "finetune", "eval", "report"]  # data and tokenizer were recorded before
    assert jobs["pretrain"] >= 1 and jobs["finetune"] == 6 and jobs["report"] == 1
    smoke = yaml.safe_load((cwd / "params.yaml").read_text())
    log = (cwd / f"logs/train/pretrain/{size}.log").read_text()
    resumed = re.search(rf"resuming pretrain {size} from step (\d+)", log)
    assert resumed and int(resumed[1]) > 0 and int(resumed[1]) % smoke["pretrain"]["checkpoint_every"] == 0, (
        log
    )
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == smoke["pretrain"]["steps"]
    assert not (run_dir / "state.pt").exists() and (run_dir.parent / "model.safetensors").exists()
    assert json.loads((cwd / "results/metrics.json").read_text())
    assert up_to_date(cwd)


def test_every_phase_made_its_outputs(pipeline: Path) -> None:
    cwd = pipeline
    smoke = yaml.safe_load((cwd / "config" / "smoke.yaml").read_text())
    assert smoke == yaml.safe_load((cwd / "params.yaml").read_text())  # what `make run` reads, DVC's copy
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


@pytest.fixture
def restored(pipeline: Path) -> Iterator[Path]:
    """The pipeline's code and smoke params as they were, whatever the test edits."""
    files = [*sorted((pipeline / "jowa").rglob("*.py")), pipeline / "config" / "smoke.yaml"]
    originals = {path: path.read_bytes() for path in files}
    yield pipeline
    for path, content in originals.items():
        if path.read_bytes() != content:
            path.write_bytes(content)


def test_an_edit_reruns_exactly_the_jobs_it_changes(restored: Path) -> None:
    cwd = restored
    smoke_file = cwd / "config" / "smoke.yaml"
    smoke = yaml.safe_load(smoke_file.read_text())

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
        original = path.read_text()
        path.write_text(original + "\n# an edit\n")
        assert plan() == expected, module
        path.write_text(original)
    assert plan() == {}  # the same content again: Snakemake compares checksums, not only times

    # a parameter reruns exactly its section's jobs; another quality's window reruns only that quality
    smoke["subsample"]["seed"] = 1
    smoke["finetune_data"]["qualities"]["expert"] = [0.5, 1.0]
    smoke_file.write_text(yaml.safe_dump(smoke))
    assert plan() == {"subsample": 2, "finetune_set": 1, **TRAIN_JOBS, **EVAL_JOBS, "all": 1}
    smoke = yaml.safe_load(smoke_file.read_text())
    smoke["subsample"]["seed"], smoke["finetune_data"]["qualities"]["expert"] = 0, [0.6, 1.0]
    smoke["finetune"]["steps"] = 30
    smoke_file.write_text(yaml.safe_dump(smoke))
    assert plan() == {"finetune": 6, "evaluate_finetuned": 6, "report": 1, "all": 1}
    smoke["models"]["tiny-s"]["q_hidden"] = 48  # one size's architecture: its pretraining and fine-tuning
    smoke_file.write_text(yaml.safe_dump(smoke))
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
    smoke_file.write_text(yaml.safe_dump(smoke))
    assert plan() == {"evaluate_pretrained": 4, "report": 1, "all": 1}


def test_a_finetuning_parameter_reruns_only_finetune_evaluate_and_report(pipeline: Path) -> None:
    cwd = pipeline
    assert up_to_date(cwd)
    steps = edit_params(cwd, "finetune.steps", 10)  # fewer: a quicker rerun
    assert dvc_stale(cwd) == {"finetune"}  # the later stages' deps change when it has run
    assert job_counts(snakemake(cwd, "-n")) == {"finetune": 6, "evaluate_finetuned": 6, "report": 1, "all": 1}
    stages, jobs = ran(run(cwd, "dvc", "repro"))
    assert stages == ["finetune", "eval", "report"]
    assert jobs == {"finetune": 6, "finetune_all": 1, "evaluate_finetuned": 6, "eval_all": 1, "report": 1}
    metrics = cwd / "results/train/finetune/tiny-s/expert/Boxing/run/metrics.jsonl"
    assert json.loads(metrics.read_text().splitlines()[-1])["step"] == 10 != steps
    assert up_to_date(cwd)


def test_direct_snakemake_runs_keep_dvc_lock_current(pipeline: Path) -> None:
    cwd = pipeline
    assert up_to_date(cwd)
    (cwd / "mine.yaml").write_text((cwd / "params.yaml").read_text())
    output = snakemake(cwd, "--cores", "2", "--forcerun", "report", "--configfile", "mine.yaml")
    assert re.search(r"dvc.lock: not updated: this run read \S*mine.yaml, DVC reads params.yaml", output)
    output = snakemake(cwd, "report", "--cores", "2", "--forcerun", "report")
    assert "dvc.lock: committed report" in output and dvc_stale(cwd) == set()

    edit_params(cwd, "planning.default.beam_width", 3)
    assert dvc_stale(cwd) == {"eval"}
    output = snakemake(cwd, "--cores", "2")
    assert job_counts(output) == {"evaluate_pretrained": 4, "report": 1, "all": 1}
    assert f"dvc.lock: committed {' '.join(STAGES)}" in output
    lock = yaml.safe_load((cwd / "dvc.lock").read_text())
    assert lock["stages"]["eval"]["params"]["params.yaml"]["planning.default"]["beam_width"] == 3
    assert up_to_date(cwd)


def leaves(params: dict, prefix: str = "") -> list[str]:
    """Every boolean, and the first number of every section and subsection: one edit per params entry."""
    found, number = [], None
    for key, value in params.items():
        if isinstance(value, dict):
            found += leaves(value, f"{prefix}{key}.")
        elif isinstance(value, bool):
            found.append(f"{prefix}{key}")
        elif isinstance(value, int | float) and number is None:
            number = f"{prefix}{key}"
    return found + ([number] if number else [])


def edited(value: bool | float) -> bool | float:
    """Another valid value: flipped, halved, or one less (one more from 1)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, float):
        return value / 2
    return value - 1 if value > 1 else value + 1


def test_both_tools_see_the_same_parameter_edits(pipeline: Path) -> None:
    """A stage DVC calls changed is one holding a job Snakemake would rerun for a reason of its own (not
    only because an input is remade), and the other way round."""
    cwd = pipeline
    assert up_to_date(cwd)
    stages, _ = dvc_view(cwd, set())
    original = (cwd / "params.yaml").read_text()
    keys = leaves(yaml.safe_load(original))
    assert "finetune.tune_tokenizer" in keys and "planning.mcts.simulations" in keys
    try:
        for key in keys:
            (cwd / "params.yaml").write_text(original)
            edit_params(cwd, key, edited(reduce(dict.__getitem__, key.split("."), yaml.safe_load(original))))
            direct = set()
            for block in re.split(r"^(?:local)?rule ", snakemake(cwd, "-n"), flags=re.M)[1:]:
                outputs = re.search(r"^\s+output: (.*)$", block, re.M)
                reasons = re.search(r"^\s+reason: (.*)$", block, re.M)[1].split("; ")
                if outputs and not all(r.startswith("Input files updated by another job") for r in reasons):
                    direct |= {
                        s.name
                        for out in outputs[1].split(", ")
                        for s in stages.values()
                        if covered(out, s.outs)
                    }
            assert dvc_stale(cwd) == direct, key
    finally:
        (cwd / "params.yaml").write_text(original)
    assert up_to_date(cwd)
