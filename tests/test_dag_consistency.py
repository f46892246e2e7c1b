"""dvc.yaml and the Snakemake DAG describe one pipeline, on the paper's params and the smoke params.

Read from a forced dry-run (every job, nothing executed) and from DVC's own view of dvc.yaml: each job
belongs to the stage that owns its outputs, and that stage's cmd makes it; each input a job reads from
another stage is a dep of its stage; a stage's code deps are exactly its jobs' code inputs; the raw
replay is never seen by DVC. Whether both tools see the same parameter edits needs executed outputs:
tests/test_pipeline.py.
"""

from __future__ import annotations

import re
import shutil
import textwrap
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from dvc.dependency.param import ParamsDependency
from dvc.repo import Repo
from test_workflow import RAW_RULES, snakemake, workdir

ROOT = Path(__file__).resolve().parents[1]
DVC_FILES = ("dvc.yaml", ".dvcignore", ".dvc/config")


@dataclass(frozen=True)
class Job:
    rule: str
    inputs: frozenset[str]
    outputs: frozenset[str]


@dataclass(frozen=True)
class Stage:
    name: str
    targets: tuple[str, ...]
    outs: frozenset[str]
    deps: tuple[str, ...]  # in dvc.yaml's order
    params: tuple[str, ...]


def ledger_workdir(tmp_path: Path) -> Path:
    """The workflow copy of test_workflow, code included (so code inputs are relative), and the DVC files."""
    cwd = workdir(tmp_path, copy_code=True)
    for name in DVC_FILES:
        (cwd / name).parent.mkdir(exist_ok=True)
        shutil.copy(ROOT / name, cwd / name)
    return cwd


def dvc_view(cwd: Path, paths: set[str]) -> tuple[dict[str, Stage], frozenset[str]]:
    """The stages as DVC reads them, and which of these paths DVC ignores (.dvcignore)."""
    stages = {}
    with Repo(str(cwd), config={"core": {"no_scm": True}}) as repo:
        for s in repo.index.stages:
            words = s.cmd.split()
            assert words[:3] == ["snakemake", "--cores", "all"], (
                f"{s.name}: cmd must run Snakemake on targets"
            )
            deps = [d for d in s.deps if not isinstance(d, ParamsDependency)]
            params = [p for d in s.deps if isinstance(d, ParamsDependency) for p in d.params]
            stages[s.name] = Stage(
                s.name,
                tuple(words[3:]),
                frozenset(str(o.def_path) for o in s.outs),
                tuple(str(d.def_path) for d in deps),
                tuple(params),
            )
        ignored = frozenset(p for p in paths if repo.dvcignore.is_ignored(repo.fs, str(cwd / p)))
    return stages, ignored


def dag_jobs(cwd: Path, params: str, *targets: str) -> list[Job]:
    """Every job of a forced dry-run of these targets (target rules included, with no outputs)."""
    output = snakemake(cwd, *targets, "-n", "--forceall", "--configfile", params)
    jobs = []
    for block in re.split(r"^(?:local)?rule ", output, flags=re.M)[1:]:
        files = {
            key: frozenset(re.search(rf"^\s+{key}: (.*)$", block, re.M)[1].split(", "))
            if re.search(rf"^\s+{key}: ", block, re.M)
            else frozenset()
            for key in ("input", "output")
        }
        jobs.append(Job(block.split(":", 1)[0], files["input"], files["output"]))
    return jobs


def covered(path: str, paths: Collection[str]) -> bool:
    return any(path == p or path.startswith(p.rstrip("/") + "/") for p in paths)


def made_by(jobs: list[Job], targets: tuple[str, ...]) -> set[Job]:
    """The jobs a `snakemake TARGETS` run consists of: the target rules' jobs and all they need."""
    producer = {out: job for job in jobs for out in job.outputs}
    todo = [job for job in jobs if job.rule in targets]
    assert len(todo) == len(targets), f"targets {targets} are not all rules of the DAG"
    found: set[Job] = set()
    while todo:
        job = todo.pop()
        if job not in found:
            found.add(job)
            todo.extend(producer[i] for i in job.inputs if i in producer)
    return found


def deps_entry(upstream: list[str], code: set[str]) -> str:
    """A stage's `deps:` as dvc.yaml writes it: upstream outputs on a line, then the code, sorted."""
    lines = [", ".join(upstream) + ","] if upstream else []
    lines += textwrap.wrap(", ".join(sorted(code)), 99, break_on_hyphens=False)
    return "    deps: [" + "\n           ".join(lines) + "]"


@dataclass
class Ledger:
    cwd: Path
    params: str
    stages: dict[str, Stage]
    jobs: list[Job]
    ignored: frozenset[str]
    owner: dict[Job, Stage]


@pytest.fixture(scope="module", params=["params.yaml", "config/smoke.yaml"])
def ledger(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Ledger:
    """The stages, every job of the full DAG and of the stages' targets, and the stage owning each job."""
    cwd = ledger_workdir(tmp_path_factory.mktemp("ledger"))
    stages, _ = dvc_view(cwd, set())
    jobs = dag_jobs(cwd, request.param, "all", *(t for s in stages.values() for t in s.targets))
    stages, ignored = dvc_view(cwd, {path for job in jobs for path in job.outputs | job.inputs})
    owner = {}
    for job in jobs:
        owners = {s.name for s in stages.values() for out in job.outputs - ignored if covered(out, s.outs)}
        assert len(owners) <= 1, f"{job.rule}: outputs {sorted(job.outputs)} owned by stages {sorted(owners)}"
        if owners:
            owner[job] = stages[owners.pop()]
    return Ledger(cwd, request.param, stages, jobs, ignored, owner)


def test_every_output_is_owned_by_one_stage_whose_cmd_makes_it(ledger: Ledger) -> None:
    made = {name: made_by(ledger.jobs, s.targets) for name, s in ledger.stages.items()}
    for job in ledger.jobs:
        if not job.outputs:
            assert job.rule == "all" or any(job.rule in s.targets for s in ledger.stages.values()), job.rule
            continue
        for out in job.outputs - ledger.ignored:
            owners = [s.name for s in ledger.stages.values() if covered(out, s.outs)]
            assert len(owners) == 1, f"{job.rule}: {out} is an output of stages {owners}"
        stage = ledger.owner[job]
        assert job in made[stage.name], f"{job.rule} makes {stage.name}'s outputs but its cmd does not run it"
    assert all(any(ledger.owner.get(j) == s for j in ledger.jobs) for s in ledger.stages.values())


def test_raw_replay_is_invisible_to_dvc_and_its_manifests_are_tracked(ledger: Ledger) -> None:
    raw = [job for job in ledger.jobs if job.rule in RAW_RULES]
    assert raw
    for job in raw:
        for out in job.outputs:
            manifest = "/manifests/" in out
            assert (out in ledger.ignored) != manifest, (
                f"{out}: DVC must track the manifests, never raw bytes"
            )
    others = {out for job in ledger.jobs if job.rule not in RAW_RULES for out in job.outputs}
    assert not others & ledger.ignored, sorted(others & ledger.ignored)


def test_every_input_from_another_stage_is_a_dep_and_code_deps_are_the_code_inputs(ledger: Ledger) -> None:
    producer = {out: job for job in ledger.jobs for out in job.outputs}
    code: dict[str, set[str]] = {name: set() for name in ledger.stages}
    for job, stage in ledger.owner.items():
        for path in job.inputs:
            made_here = path in producer and ledger.owner[producer[path]] == stage
            if not made_here:
                assert covered(path, stage.deps), (
                    f"stage {stage.name} lacks a dep on {path} (rule {job.rule})"
                )
            if path.endswith(".py"):
                code[stage.name].add(path)
    for name, stage in ledger.stages.items():
        declared = {d for d in stage.deps if d.endswith(".py")}
        upstream = [d for d in stage.deps if d not in declared]
        missing, extra = sorted(code[name] - declared), sorted(declared - code[name])
        assert declared == code[name], (
            f"stage {name}: code deps differ from the DAG's code inputs (missing {missing}, extra {extra}); "
            f"in dvc.yaml use\n{deps_entry(upstream, code[name])}"
        )
        for dep in upstream:  # every other dep is (part of) an upstream stage's output
            assert any(covered(dep, s.outs) for s in ledger.stages.values() if s != stage), (name, dep)


def test_stage_params_name_keys_of_the_params_file(ledger: Ledger) -> None:
    params = yaml.safe_load((ledger.cwd / ledger.params).read_text())
    for stage in ledger.stages.values():
        for key in stage.params:
            node = params
            for part in key.split("."):
                assert isinstance(node, dict) and part in node, f"stage {stage.name}: no key {key} in params"
                node = node[part]
