"""How long Snakemake takes to plan the paper's DAG (params.yaml), from a clean copy of the workflow.

Planning happens before every run and every `snakemake -n`, so it must stay short as phases add rules:
the target is at most 10 s. Each repeat is a fresh `snakemake -n --quiet` process in a copy of the
workflow with no outputs, so every job is planned. Writes benchmarks/results/dag.json.

    python benchmarks/bench_dag.py [--repeat 5] [--configfile params.yaml]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ("Snakefile", "params.yaml", "workflow", "config", "profiles")


def plan_seconds(workdir: Path, configfile: str) -> tuple[float, int]:
    """Wall seconds of one dry run, and the number of jobs it planned."""
    started = time.perf_counter()
    proc = subprocess.run(
        ["snakemake", "-n", "--quiet", "rules", "--configfile", configfile],
        cwd=workdir,
        capture_output=True,
        text=True,
        check=True,
    )
    seconds = time.perf_counter() - started
    total = re.search(r"^total\s+(\d+)$", proc.stdout + proc.stderr, re.M)
    return seconds, int(total[1]) if total else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--configfile", default="params.yaml")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for name in WORKFLOW:
            source = ROOT / name
            (shutil.copytree if source.is_dir() else shutil.copy)(source, workdir / name)
        (workdir / "jowa").symlink_to(ROOT / "jowa")
        runs = [plan_seconds(workdir, args.configfile) for _ in range(args.repeat)]
    seconds = [s for s, _ in runs]
    result = {
        "configfile": args.configfile,
        "jobs": runs[0][1],
        "seconds": seconds,
        "median_s": statistics.median(seconds),
        "target_s": 10.0,
        "ok": max(seconds) <= 10.0,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }
    out = ROOT / "benchmarks" / "results" / "dag.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
