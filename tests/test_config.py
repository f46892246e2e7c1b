"""params.yaml validation: every wrong key, name or value fails before any work, naming itself."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from jowa.config import ParamsError, check_params, load_params

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def paper() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_paper_and_smoke_params_are_valid() -> None:
    paper = load_params(ROOT / "params.yaml")
    assert len(paper.pretrain_games) == 15 and len(paper.finetune_games) == 5
    assert paper.data.runs == (1, 2, 3, 4, 5)
    assert (paper.subsample.runs_per_game, paper.subsample.transitions_per_game) == (2, 10_000_000)
    assert (paper.subsample.segment_length, paper.subsample.segment_stride) == (8, 4)
    assert paper.finetune_data.transitions == 5000
    assert set(paper.finetune_data.qualities) == {"expert", "suboptimal", "highly_suboptimal"}
    smoke = load_params(ROOT / "config" / "smoke.yaml")
    assert smoke.data.generated
    assert (len(smoke.pretrain_games), len(smoke.finetune_games)) == (2, 1)


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
        ("data.sourse", "generate", r"\(top level\)|data: Additional properties.*'sourse'"),
        ("subsample.transitions_per_game", -5, r"transitions_per_game: -5 is less than the minimum"),
        ("subsample.seed", "zero", r"subsample\.seed: 'zero' is not of type 'integer'"),
        ("data.runs", [1, 7], r"data\.runs\[1\]: 7 is greater than the maximum of 5"),
        ("data.generate", KeyError, r"data: 'generate' is a required property"),
        ("finetune_data.qualities", {"expert": [0.8, 0.2]}, r"finetune_data\.qualities\.expert: window"),
        ("subsample.runs_per_game", 5, r"runs_per_game: 5 runs asked for, but data\.runs lists only 2"),
    ],
)
def test_bad_values_are_named(paper: dict, path: str, value: object, message: str) -> None:
    params = edited(paper, path, value)
    if path == "subsample.runs_per_game":
        params["data"]["runs"] = [1, 2]
    with pytest.raises(ParamsError, match=message):
        check_params(params, origin="params.yaml")


def test_unknown_game_gets_a_suggestion(paper: dict) -> None:
    params = edited(paper, "games.finetune", ["Pong", "MsPacmann"])
    with pytest.raises(ParamsError, match=r"games\.finetune\[1\]: .*'MsPacmann'.*MsPacman"):
        check_params(params)


def test_missing_or_broken_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match=r"nope\.yaml: no such parameter file"):
        load_params(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("games: [unclosed\n")
    with pytest.raises(ParamsError, match=r"broken\.yaml: not valid YAML"):
        load_params(broken)
