"""What the paper's DAG costs: GPU-hours per phase and the wall-clock on 1 and 8 GPUs.

The job list is Snakemake's own plan (`snakemake -n --forceall` on a params file, in a fresh copy of the
workflow); each GPU job's hours come from per-job rates: committed GPU measurements under
`benchmarks/measured/` where present, else the documented estimates of `benchmarks/paper_rates.yaml`,
every rate marked `measured` or `estimate`. An evaluation job plays all its episodes at once, so it lasts
its longest episode: the published length where known, else the protocol's cap. Wall-clock on N GPUs
schedules each phase's jobs longest first onto N GPUs (one GPU each, as the rules ask), phases one after
another, so it is an upper bound on a scheduler that overlaps phases. Writes JSON and a Markdown table.

    python benchmarks/paper_cost.py [--configfile params.yaml] [--markdown docs/paper-cost.md]
"""

from __future__ import annotations

import argparse
import heapq
import json
import re
import shutil
import subprocess
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from jowa.core.atomic import atomic_file
from jowa.core.config import Params, load_params
from jowa.core.env import JOWA_MAX_STEPS, STANDARD_MAX_STEPS

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ("Snakefile", "params.yaml", "workflow", "config", "profiles")
PHASES = {
    "data": ("download", "generate", "subsample", "finetune_set"),
    "tokenizer": ("train_tokenizer", "tokenize", "import_released_tokenizer"),
    "pretrain": ("pretrain", "import_released_model", "gpu_check"),
    "finetune": ("finetune",),
    "evaluation": ("evaluate_pretrained", "evaluate_finetuned", "evaluate_robustness"),
    "report": ("report",),
}
NEGLIGIBLE = {"import_released_tokenizer", "import_released_model", "gpu_check"}  # seconds, not hours
CAPS = {"jowa": JOWA_MAX_STEPS, "standard": STANDARD_MAX_STEPS}


def planned_jobs(configfile: Path) -> list[dict[str, Any]]:
    """Every job of the plan: its rule, wildcards and GPUs, from a dry run in a copy of the workflow."""
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for name in WORKFLOW:
            source = ROOT / name
            (shutil.copytree if source.is_dir() else shutil.copy)(source, workdir / name)
        (workdir / "jowa").symlink_to(ROOT / "jowa")
        shutil.copy(configfile, workdir / "cost-params.yaml")
        proc = subprocess.run(
            ["snakemake", "-n", "--forceall", "--configfile", "cost-params.yaml"],
            cwd=workdir, capture_output=True, text=True, check=False,
        )  # fmt: skip
    if proc.returncode:
        raise SystemExit(f"snakemake -n on {configfile} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    jobs = []
    for block in re.split(r"^(?:local)?rule ", proc.stdout, flags=re.M)[1:]:
        wildcards = re.search(r"^\s+wildcards: (.*)$", block, re.M)
        gpus = re.search(r"\bgpu=(\d+)", block)
        jobs.append({
            "rule": block.split(":", 1)[0],
            "wildcards": dict(pair.split("=", 1) for pair in wildcards[1].split(", ")) if wildcards else {},
            "gpus": int(gpus[1]) if gpus else 0,
        })  # fmt: skip
    return jobs


def load_rates(rates_file: Path, measured_dir: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """key -> name -> {value, source, kind}: the estimates, each replaced by a measurement if one exists."""
    estimates = yaml.safe_load(rates_file.read_text())
    rates = {
        key: {name: {**rate, "kind": "estimate"} for name, rate in (named or {}).items()}
        for key, named in estimates.items()
    }
    for path in sorted(measured_dir.glob("*.json")) if measured_dir.is_dir() else []:
        for key, named in json.loads(path.read_text()).get("rates", {}).items():
            for name, rate in named.items():
                rates.setdefault(key, {})[name] = {**rate, "kind": "measured", "file": str(path)}
    return rates


class Costs:
    """GPU-seconds of one job from the params and the rates, noting which rates it used."""

    def __init__(self, params: Params, rates: dict[str, dict[str, dict[str, Any]]]) -> None:
        self.params, self.rates = params, rates
        self.used: set[tuple[str, str]] = set()

    def rate(self, key: str, name: str) -> float:
        """A rate by key and name (a size, a planner), or the key's `all` entry."""
        found = self.rates.get(key, {})
        chosen = name if name in found else "all"
        if chosen not in found:
            raise SystemExit(f"no rate {key}.{name} in the rates file or benchmarks/measured/; add one")
        self.used.add((key, chosen))
        return float(found[chosen]["value"])

    def episode_steps(self, game: str, protocol: str) -> int:
        if self.params.eval.max_steps is not None:
            return self.params.eval.max_steps
        known = self.rates.get("episode_steps", {}).get(game)
        if known is not None:
            self.used.add(("episode_steps", game))
            return min(int(known["value"]), CAPS[protocol])
        return CAPS[protocol]

    def seconds(self, job: dict[str, Any]) -> float:
        rule, w, p = job["rule"], job["wildcards"], self.params
        if not job["gpus"] or rule in NEGLIGIBLE:
            return 0.0
        if rule == "train_tokenizer":
            return p.tokenizer.steps * p.tokenizer.batch / self.rate("tokenizer_frames_per_s", "all")
        if rule == "tokenize":
            pretraining = w["data_set"].startswith("pretrain/")
            frames = (p.subsample if pretraining else p.finetune_data).transitions_per_game
            return frames / self.rate("tokenize_frames_per_s", "all")
        if rule == "pretrain":
            return p.pretrain.steps * p.pretrain.batch / self.rate("train_samples_per_s", w["size"])
        if rule == "finetune":
            step = p.finetune.batch / self.rate("train_samples_per_s", w["size"])
            if p.finetune.tune_tokenizer:
                step += p.finetune.tokenizer_batch / self.rate("tokenizer_frames_per_s", "all")
            return p.finetune.steps * step
        if rule.startswith("evaluate_"):
            planner = w.get("planner", "greedy")
            protocol = w.get("protocol", p.eval.protocol)
            return self.episode_steps(w["game"], protocol) * self.rate("eval_step_s", planner)
        raise SystemExit(f"rule {rule!r} uses a GPU but paper_cost.py has no cost for it; add one")


def wall_hours(seconds: list[float], gpus: int) -> float:
    """Longest-first list scheduling of one-GPU jobs onto `gpus` GPUs: the makespan in hours."""
    loads = [0.0] * gpus
    for job in sorted(seconds, reverse=True):
        heapq.heapreplace(loads, loads[0] + job)
    return max(loads) / 3600


def paper_cost(configfile: Path, rates_file: Path, measured_dir: Path) -> dict[str, Any]:
    params = load_params(configfile)
    jobs = planned_jobs(configfile)
    phase_of = {rule: phase for phase, rules in PHASES.items() for rule in rules}
    targets = {job["rule"] for job in jobs if job["rule"] == "all" or job["rule"].endswith("_all")}
    unknown = sorted({job["rule"] for job in jobs} - set(phase_of) - targets)
    if unknown:
        raise SystemExit(f"rules {unknown} have no phase in paper_cost.py PHASES; add them")
    costs = Costs(params, load_rates(rates_file, measured_dir))
    phases = {}
    for phase in PHASES:
        mine = [job for job in jobs if phase_of.get(job["rule"]) == phase]
        seconds = [costs.seconds(job) for job in mine]
        phases[phase] = {
            "jobs": len(mine), "gpu_jobs": sum(1 for job in mine if job["gpus"]),
            "rules": dict(sorted(Counter(job["rule"] for job in mine).items())),
            "gpu_hours": sum(seconds) / 3600, "wall_hours_1_gpu": wall_hours(seconds, 1),
            "wall_hours_8_gpus": wall_hours(seconds, 8),
        }  # fmt: skip
    used = {f"{key}.{name}": costs.rates[key][name] for key, name in sorted(costs.used)}
    fields = ("jobs", "gpu_jobs", "gpu_hours", "wall_hours_1_gpu", "wall_hours_8_gpus")
    total = {field: sum(phase[field] for phase in phases.values()) for field in fields}
    shown = configfile.resolve()
    shown = shown.relative_to(ROOT) if shown.is_relative_to(ROOT) else shown
    return {"configfile": str(shown), "phases": phases, "total": total, "rates": used}


def markdown(result: dict[str, Any]) -> str:
    def hours(value: float) -> str:
        return f"{value:,.1f} h ({value / 24:,.1f} d)" if value >= 48 else f"{value:,.1f} h"

    lines = [
        "# The paper's cost",
        "",
        f"GPU cost of the DAG of `{result['configfile']}`, written by `python benchmarks/paper_cost.py",
        "--markdown docs/paper-cost.md` from Snakemake's plan and the rates below. The data and report",
        "phases run on CPUs (no GPU-hours). Wall-clock: each phase's jobs longest first on 1 or 8 GPUs, one",
        "GPU per job, phases one after another. An evaluation job lasts its longest episode: the paper",
        "publishes no episode lengths, so each takes the protocol's cap (or `eval.max_steps`), an upper",
        "bound. Every rate says whether it was measured (`benchmarks/measured/`) or is an estimate",
        "(`benchmarks/paper_rates.yaml`).",
        "",
        "| phase | jobs (GPU) | GPU-hours | wall, 1 GPU | wall, 8 GPUs |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, phase in [*result["phases"].items(), ("total", result["total"])]:
        lines.append(
            f"| {name} | {phase['jobs']} ({phase['gpu_jobs']}) | {phase['gpu_hours']:,.1f} | "
            f"{hours(phase['wall_hours_1_gpu'])} | {hours(phase['wall_hours_8_gpus'])} |"
        )
    lines += ["", "| rate | value | kind | source |", "|---|---:|---|---|"]
    for name, rate in result["rates"].items():
        lines.append(f"| `{name}` | {rate['value']:g} | {rate['kind']} | {rate.get('source', '')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configfile", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--rates", type=Path, default=ROOT / "benchmarks" / "paper_rates.yaml")
    parser.add_argument("--measured", type=Path, default=ROOT / "benchmarks" / "measured")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "paper_cost.json")
    parser.add_argument("--markdown", type=Path, help="also write the table here (e.g. docs/paper-cost.md)")
    args = parser.parse_args()
    result = paper_cost(args.configfile, args.rates, args.measured)
    table = markdown(result)
    for path, text in ((args.out, json.dumps(result, indent=1) + "\n"), (args.markdown, table)):
        if path is not None:
            with atomic_file(path) as tmp:
                tmp.write_text(text)
    print(table)


if __name__ == "__main__":
    main()
