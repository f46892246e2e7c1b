"""benchmarks/paper_cost.py: the plan's jobs per phase, costed with measured rates before estimates."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from jowa.core.config import load_params

ROOT = Path(__file__).resolve().parents[1]
SPEC = importlib.util.spec_from_file_location("paper_cost", ROOT / "benchmarks" / "paper_cost.py")
paper_cost = importlib.util.module_from_spec(SPEC)
sys.modules["paper_cost"] = paper_cost
SPEC.loader.exec_module(paper_cost)


def test_smoke_plan_costed_per_phase_with_measured_rates_preferred(tmp_path: Path) -> None:
    smoke = ROOT / "config" / "smoke.yaml"
    params = yaml.safe_load(smoke.read_text())
    rates = yaml.safe_load((ROOT / "benchmarks" / "paper_rates.yaml").read_text())
    rates["train_samples_per_s"] |= {size: {"value": 100.0, "source": "test"} for size in params["models"]}
    (tmp_path / "rates.yaml").write_text(yaml.safe_dump(rates))
    measured = tmp_path / "measured"
    measured.mkdir()
    rate = {"value": 400.0, "source": "a test-made GPU run"}
    (measured / "train.json").write_text(json.dumps({"rates": {"train_samples_per_s": {"tiny-s": rate}}}))
    result = paper_cost.paper_cost(smoke, tmp_path / "rates.yaml", measured)

    workdir = tmp_path / "workflow"
    workdir.mkdir()
    for name in paper_cost.WORKFLOW:
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy)(ROOT / name, workdir / name)
    (workdir / "jowa").symlink_to(ROOT / "jowa")
    stats = subprocess.run(
        ["snakemake", "-n", "--forceall", "--quiet", "rules", "--configfile", str(smoke)],
        cwd=workdir, capture_output=True, text=True, check=True,
    ).stdout.split("Job stats:")[1]  # fmt: skip
    planned = {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", stats, re.M) if m[1] != "total"}
    for phase, rules in paper_cost.PHASES.items():
        assert result["phases"][phase]["jobs"] == sum(planned.get(rule, 0) for rule in rules), phase
    assert result["total"]["jobs"] == sum(planned.values()) - planned["all"]

    assert result["rates"]["train_samples_per_s.tiny-s"]["kind"] == "measured"
    assert result["rates"]["train_samples_per_s.tiny-m"]["kind"] == "estimate"
    pretrain = params["pretrain"]["steps"] * params["pretrain"]["batch"]
    assert result["phases"]["pretrain"]["gpu_hours"] == pytest.approx(
        (pretrain / 400 + pretrain / 100 + 0) / 3600
    )  # tiny-s at the measured rate, tiny-m at the estimate; the gpu check costs seconds
    evaluation = result["phases"]["evaluation"]
    assert (
        evaluation["wall_hours_8_gpus"]
        <= evaluation["wall_hours_1_gpu"]
        == pytest.approx(evaluation["gpu_hours"])
    )
    assert "| pretrain |" in paper_cost.markdown(result)


def test_wall_clock_schedules_the_longest_jobs_first_and_a_missing_rate_is_named() -> None:
    assert paper_cost.wall_hours([3600.0] * 8, 8) == pytest.approx(1.0)
    assert paper_cost.wall_hours([3 * 3600.0, 3600.0, 3600.0, 3600.0], 2) == pytest.approx(3.0)
    costs = paper_cost.Costs(load_params(ROOT / "params.yaml"), {"train_samples_per_s": {}})
    job = {"rule": "pretrain", "wildcards": {"size": "150M"}, "gpus": 1}
    with pytest.raises(SystemExit, match=r"no rate train_samples_per_s\.150M"):
        costs.seconds(job)
