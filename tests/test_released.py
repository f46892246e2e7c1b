"""Released checkpoints through the DAG: params `released` adds import and evaluation jobs, and the report
shows them beside ours; unset, the plan is unchanged (tests/test_workflow.py pins it)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from test_workflow import ROOT, job_counts, snakemake, workdir

from jowa import cli
from jowa.core.config import check_params

FIXTURE = ROOT / "tests" / "reference" / "tiny_fixture"


def with_released(cwd: Path, base: str, directory: str, **eval_settings: int) -> str:
    """A complete params file from `base` with released.dir set; returns its name."""
    params = yaml.safe_load((cwd / base).read_text())
    params["released"]["dir"] = directory
    params["eval"].update(eval_settings)
    (cwd / "released.yaml").write_text(yaml.safe_dump(params))
    return "released.yaml"


def test_the_paper_plan_imports_and_evaluates_each_released_size(tmp_path: Path) -> None:
    cwd = workdir(tmp_path)
    (cwd / "checkpoints").mkdir()
    for name in ("JOWA_40M.pt", "JOWA_70M.pt", "JOWA_150M.pt", "tokenizer.pt"):  # the reference's names
        (cwd / "checkpoints" / name).touch()
    params = with_released(cwd, "params.yaml", "checkpoints")
    output = snakemake(cwd, "-n", "--forceall", "--quiet", "rules", "--configfile", params)
    counts = job_counts(output)
    assert counts["import_released_tokenizer"] == 1 and counts["import_released_model"] == 3
    assert counts["evaluate_pretrained"] == (3 + 3) * 2 * 15  # our sizes and the released ones
    assert counts["pretrain"] == 3 and counts["finetune"] == 45  # released models are not trained

    plan = snakemake(cwd, "-n", "-p", "--forceall", "results/eval/pretrain/released-150M/beam/Seaquest.json",
                     "--configfile", params)  # fmt: skip
    evaluate = next(line for line in plan.splitlines() if "jowa evaluate" in line)
    released = "results/released"
    assert (
        f"--model {released}/150M/model.safetensors --tokenizer {released}/tokenizer.safetensors" in evaluate
    )
    assert '--beam \'{"beam_width":4,"context":6,"horizon":2}\'' in evaluate  # planning.sizes.150M.Seaquest
    assert "--arch" in plan and '"q_ensemble":3' in plan and "checkpoints/JOWA_150M.pt" in plan

    (cwd / "checkpoints" / "JOWA_70M.pt").unlink()
    missing = snakemake(cwd, "-n", "--configfile", params, check=False)
    assert "Missing input files" in missing and "checkpoints/JOWA_70M.pt" in missing


def test_a_model_name_kept_for_released_models_is_refused() -> None:
    params = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    params["models"]["released-x"] = params["models"]["tiny-s"]
    with pytest.raises(ValueError, match=r"models: \['released-x'\]: names starting with 'released-' are"):
        check_params(params, "smoke.yaml")


@pytest.mark.slow
def test_a_released_format_model_is_imported_evaluated_and_reported(tmp_path: Path) -> None:
    (tmp_path / "wf").mkdir()
    cwd = workdir(tmp_path / "wf")
    shutil.copytree(FIXTURE, cwd / "released")
    params = with_released(cwd, "config/smoke.yaml", "released", episodes=2, max_steps=20)
    settings = yaml.safe_load((cwd / params).read_text())
    settings["robustness"] = {"protocol": "standard", "planners": ["greedy"]}  # the robustness column too
    (cwd / params).write_text(yaml.safe_dump(settings))
    targets = [f"results/eval/pretrain/released-tiny-ref/{p}/Pong.json" for p in ("greedy", "beam")]
    targets.append("results/eval/robustness/standard/released-tiny-ref/greedy/Pong.json")
    output = snakemake(cwd, *targets, "--cores", "2", "--configfile", params)
    assert job_counts(output) == {
        "import_released_tokenizer": 1, "import_released_model": 1, "evaluate_pretrained": 2,
        "evaluate_robustness": 1,
    }  # fmt: skip
    for target in targets:
        result = json.loads((cwd / target).read_text())
        assert result["size"] == "released-tiny-ref" and result["lengths"] == [20, 20]
        assert result["model"]["meta"]["imported_from"] == "released/tiny_jowa_state.npz"
        sticky = result["settings"]["protocol"]["sticky_actions"]
        assert sticky == (0.25 if "/robustness/" in target else 0.0)
    assert job_counts(snakemake(cwd, *targets, "-n", "--configfile", params)) == {}

    report = tmp_path / "report"
    argv = ["-q", "report", "--evaluations", *(str(cwd / t) for t in targets), "--models",
            "--released-models", str(cwd / "results/released/tiny-ref/model.safetensors"),
            "--out", str(report), "--metrics", str(tmp_path / "metrics.json"), "--reps", "50"]  # fmt: skip
    assert cli.main(argv) == 0
    table = (report / "pretrain_scores.md").read_text()
    header, pong = (
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in table.splitlines()
        if line.startswith(("| Game ", "| Pong "))
    )
    assert header[1:4] == [
        "released tiny-ref without planning",
        "released tiny-ref without planning, standard protocol",
        "released tiny-ref with planning",
    ]
    assert "ours" not in " ".join(header)
    assert "not run" not in pong[1:4]
    assert "released tiny-ref" in (report / "planning_ablation.md").read_text()
    assert "released" not in (report / "finetune_scores.md").read_text()
