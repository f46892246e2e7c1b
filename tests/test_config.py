"""Parameters: every wrong key, name or value fails before any work, naming itself; one definition."""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import pytest
import yaml

from jowa.core.config import (
    FinetuneDataParams,
    Game,
    ParamsError,
    RunId,
    SubsampleParams,
    argument_type,
    check_params,
    json_schema,
    load_params,
    parse_section,
    section_json,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def paper() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_paper_and_smoke_params_are_valid() -> None:
    paper = load_params(ROOT / "params.yaml")
    assert len(paper.games.pretrain) == 15 and len(paper.games.finetune) == 5
    assert paper.data.runs == (1, 2, 3, 4, 5) and paper.data.source_of("Pong") != "generate"
    assert (paper.subsample.runs_per_game, paper.subsample.transitions_per_game) == (2, 10_000_000)
    assert paper.finetune_data.transitions_per_game == 5000
    assert paper.finetune_data.qualities["expert"] == (0.8, 1.0)
    assert set(paper.finetune_data.qualities) == {"expert", "suboptimal", "highly_suboptimal"}
    smoke = load_params(ROOT / "config" / "smoke.yaml")
    assert smoke.data.source_of("Pong") == "generate"
    assert (len(smoke.games.pretrain), len(smoke.games.finetune)) == (2, 1)


def edited(params: dict, path: str, value: object) -> dict:
    out = copy.deepcopy(params)
    *parents, last = path.split(".")
    node = out
    for key in parents:
        node = node[key]
    if value is KeyError:
        del node[last]
    else:
        node[last] = value
    return out


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("data.sourse", "generate", r"data\.sourse: unknown key; did you mean 'source'\?"),
        (
            "subsample.transitions_per_game",
            -5,
            r"transitions_per_game: .*greater than or equal to 1 \(got -5\)",
        ),
        ("subsample.seed", "0", r"subsample\.seed: Input should be a valid integer \(got '0'\)"),  # strict
        ("subsample.seed", 1.0, r"subsample\.seed: Input should be a valid integer \(got 1\.0\)"),
        ("data.runs", [1, 7], r"data\.runs\[1\]: Input should be less than or equal to 5 \(got 7\)"),
        ("data.runs", [1, 1], r"data\.runs: listed more than once: 1"),
        ("data.generate", KeyError, r"data\.generate: missing \(required\)"),
        ("data.generate.sticky_actions", 1.5, r"sticky_actions: Input should be less than or equal to 1"),
        ("data.source", "http://x", r"data\.source: 'http://x': expected a gs:// URL, a local directory"),
        ("finetune_data.qualities", {"expert": [0.8, 0.2]}, r"finetune_data\.qualities\.expert: window"),
        (
            "finetune_data.qualities",
            {"Expert": [0.8, 1.0]},
            r"qualities\.Expert: key name: String should match pattern",
        ),
        ("games.finetune", ["Pong", "Assault"], r"games: \['Assault'\] are both pretraining and held-out"),
    ],
)
def test_bad_values_are_named(paper: dict, path: str, value: object, message: str) -> None:
    with pytest.raises(ParamsError, match=message):
        check_params(edited(paper, path, value), origin="params.yaml")


def test_runs_per_game_cannot_exceed_the_runs_listed(paper: dict) -> None:
    params = edited(paper, "data.runs", [1, 2])
    with pytest.raises(
        ParamsError, match=r"subsample\.runs_per_game: 3 runs asked for, but data\.runs lists only 2"
    ):
        check_params(edited(params, "subsample.runs_per_game", 3))


def test_every_problem_is_listed_at_once(paper: dict) -> None:
    params = edited(edited(paper, "games.finetune", ["Pong", "MsPacmann"]), "subsample.seed", -1)
    with pytest.raises(ParamsError) as info:
        check_params(params, origin="mine.yaml")
    text = str(info.value)
    assert text.startswith("mine.yaml is invalid:")
    assert "games.finetune[1]: unknown game 'MsPacmann'; did you mean 'MsPacman'?" in text
    assert "subsample.seed: Input should be greater than or equal to 0 (got -1)" in text


def test_missing_or_broken_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match=r"nope\.yaml: no such parameter file"):
        load_params(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("games: [unclosed\n")
    with pytest.raises(ParamsError, match=r"broken\.yaml: not valid YAML"):
        load_params(broken)


def test_a_section_travels_as_one_argument_with_the_same_keys() -> None:
    paper = load_params(ROOT / "params.yaml")
    argument = section_json(paper.finetune_data)
    assert list(json.loads(argument)) == sorted(json.loads(argument))  # key order never reruns a job
    assert parse_section(argument, FinetuneDataParams, "finetune_data") == paper.finetune_data
    assert parse_section(str(ROOT / "params.yaml"), SubsampleParams, "subsample") == paper.subsample
    with pytest.raises(
        ParamsError, match=r"--params \(subsample section\) is invalid:\n  subsample\.seedd: unknown"
    ):
        parse_section(
            '{"runs_per_game": 2, "transitions_per_game": 5, "seed": 0, "seedd": 1}',
            SubsampleParams,
            "subsample",
        )
    with pytest.raises(ParamsError, match="--params: not valid JSON"):
        parse_section("{seed: 0}", SubsampleParams, "subsample")


def test_command_line_values_use_the_params_types() -> None:
    assert argument_type(RunId, "run")("3") == 3
    with pytest.raises(
        argparse.ArgumentTypeError, match=r"run '0': Input should be greater than or equal to 1"
    ):
        argument_type(RunId, "run")("0")
    with pytest.raises(argparse.ArgumentTypeError, match=r"unknown game 'Pacman'; did you mean 'MsPacman'\?"):
        argument_type(Game, "game")("Pacman")


def test_the_shipped_schema_is_generated_from_the_models() -> None:
    """jowa/params.schema.json (package data, for editors) is what `jowa check-params --schema` prints."""
    shipped = json.loads((ROOT / "jowa" / "params.schema.json").read_text())
    assert shipped == json_schema(), "regenerate it: jowa check-params --schema > jowa/params.schema.json"
    assert shipped["additionalProperties"] is False and set(shipped["required"]) == {
        "games", "data", "subsample", "finetune_data", "tokenizer", "models", "pretrain", "finetune", "eval",
        "planning", "released", "robustness",
    }  # fmt: skip
    assert (
        "a minimum"
        in shipped["$defs"]["SubsampleParams"]["properties"]["transitions_per_game"]["description"]
    )
