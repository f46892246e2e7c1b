"""The workflow's console (plugins/snakemake-logger-plugin-jowa) on a small real Snakemake workflow.

Snakemake runs in a subprocess with its output captured, so not on a terminal, as in CI, a log file or
under `dvc repro`; it finds the checkout's plugin first on the path and takes the project's own profile.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "plugins" / "snakemake-logger-plugin-jowa"
sys.path.insert(0, str(PLUGIN))

from snakemake_logger_plugin_jowa.clock import JobClock, duration  # noqa: E402

PARAMS = '{"transitions_per_game": 2000, "seed": 0}'  # stands for a stage's long --params JSON
SNAKEFILE = f"""
rule all:
    input: expand("out/{{game}}.txt", game=["Pong", "Seaquest", "Zaxxon"])

rule stage:
    input: "in.txt"
    output: protected("out/{{game}}.txt")
    log: "logs/{{game}}.log"
    params: section={PARAMS!r}
    shell: "(sleep 0.3; echo {{params.section:q}} > {{output}}; [ ! -e fail-{{wildcards.game}} ] || "
           "{{{{ echo broken run >&2; exit 3; }}}}) 2> {{log}}"
"""
JOB_LINE = re.compile(r"^\d\d:\d\d:\d\d  (start|done|FAILED) +(\w+)(?: game=(\w+))?  ?(.*)$")


@pytest.fixture
def workflow(tmp_path: Path) -> Path:
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    (tmp_path / "in.txt").write_text("x\n")
    shutil.copytree(ROOT / "profiles", tmp_path / "profiles")  # profiles/default: the console
    return tmp_path


def snakemake(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(PLUGIN), "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        ["snakemake", "--cores", "2", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def job_lines(output: str) -> list[tuple[str, str, str | None, str]]:
    return [m.groups() for line in output.splitlines() if (m := JOB_LINE.match(line))]


@pytest.mark.slow
def test_one_line_per_job_start_and_end_with_progress_and_eta(workflow: Path) -> None:
    proc = snakemake(workflow)
    assert proc.returncode == 0, proc.stderr
    lines = job_lines(proc.stderr)
    games = ["Pong", "Seaquest", "Zaxxon"]
    for what in ("start", "done"):
        assert sorted(g for w, rule, g, _ in lines if w == what and rule == "stage") == games
        assert [rule for w, rule, _, _ in lines if w == what].count("all") == 1
    starts = {g: rest for w, rule, g, rest in lines if w == "start" and rule == "stage"}
    assert all(re.fullmatch(rf"\(job \d+, log logs/{g}\.log\)", starts[g]) for g in games)
    done = [rest for w, _, _, rest in lines if w == "done"]
    assert re.fullmatch(r"in \d+s  ·  1 of 4 steps \(25%\) done, [01] running, ETA \d+s", done[0])
    assert done[-1].endswith("4 of 4 steps (100%) done, 0 running")  # no ETA once all is done
    # no job's inputs, command or parameters, no banner, no scheduler chatter
    chatter = ("Select jobs to execute", "Execute 2 jobs", "Write-protecting")
    for noise in ("input:", "Shell command", PARAMS, "SNAKEMAKE", *chatter):
        assert noise not in proc.stderr + proc.stdout, noise
    assert "Job stats:" in proc.stderr  # the plan's size, once, as Snakemake prints it


@pytest.mark.slow
def test_commands_on_demand_and_a_failed_job_prints_its_log(workflow: Path) -> None:
    (workflow / "fail-Seaquest").touch()
    proc = snakemake(workflow, "-p")
    assert proc.returncode != 0
    assert proc.stderr.count(PARAMS) >= 3  # -p: every job's command
    failed = [rest for w, rule, g, rest in job_lines(proc.stderr) if w == "FAILED"]
    assert len(failed) == 1 and re.fullmatch(r"after \d+s  \(job \d+; log logs/Seaquest\.log\)", failed[0])
    after = proc.stderr.split("FAILED stage game=Seaquest", 1)[1]
    assert "Logfile logs/Seaquest.log:" in after and "broken run" in after  # the log, whole


@pytest.mark.slow
def test_a_dry_run_lists_the_plan_in_full(workflow: Path) -> None:
    proc = snakemake(workflow, "-n")
    assert proc.returncode == 0, proc.stderr
    blocks = re.split(r"^rule ", proc.stdout + proc.stderr, flags=re.M)[1:]
    assert sorted(b.split(":", 1)[0] for b in blocks) == ["all", "stage", "stage", "stage"]
    assert all("    input: in.txt" in b and "    log: logs/" in b for b in blocks if b.startswith("stage"))
    assert not job_lines(proc.stderr)


def test_eta_weighs_each_rules_mean_time_by_the_parallelism_reached() -> None:
    clock = JobClock()
    clock.plan({"evaluate": 4, "report": 1, "total": 5})
    assert clock.eta(0.0) is None  # nothing finished: no estimate
    for job in (1, 2):
        clock.start(job, "evaluate", 0.0)
    assert clock.finish(1, 10.0) == ("evaluate", 10.0) and clock.finish(2, 10.0) == ("evaluate", 10.0)
    clock.start(3, "evaluate", 10.0)
    clock.start(4, "evaluate", 10.0)
    # left: 2 evaluations (10 s each, 4 s done each) and a report (unseen: the overall mean, 10 s);
    # 2 jobs ran at a time: (2 * 6 + 10) / 2
    assert clock.eta(14.0) == pytest.approx(11.0)
    clock.start(9, "checkpoint_job", 14.0)  # a job no plan counted adds to what is left
    assert clock.left["checkpoint_job"] == 1
    assert clock.finish(42, 15.0) is None  # never seen starting


def test_durations_read_at_a_glance() -> None:
    assert [duration(s) for s in (0.4, 42, 185, 3720)] == ["0s", "42s", "3m05s", "1h02m"]


def test_a_jowa_jobs_log_starts_with_its_command(tmp_path: Path) -> None:
    """What the console leaves out: a rule's `2> {log}` gets the command first, quoted to run again."""
    args = ["-q", "data", "subsample", "--params", PARAMS.replace("}", ', "runs_per_game": 1}'),
            "--game", "Pong", "--runs", "1", "--replay-dirs", str(tmp_path / "run 1"),
            "--manifests", str(tmp_path / "1.tsv"), "--out", str(tmp_path / "store")]  # fmt: skip
    proc = subprocess.run(["jowa", *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1  # the manifest is missing; the command was logged before that
    first = proc.stderr.splitlines()[0]
    assert first.startswith("INFO jowa.cli: command: ")
    assert shlex.split(first.removeprefix("INFO jowa.cli: command: ")) == ["jowa", *args]
