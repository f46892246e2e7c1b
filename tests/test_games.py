"""Check jowa.core.games' literal tables against their sources: ale-py, gymnasium and the reference JSON."""

from __future__ import annotations

import json
from pathlib import Path

import ale_py
import gymnasium
import numpy as np
import pytest

from jowa.core import games

REFERENCE_SCORES = Path(__file__).resolve().parent / "reference" / "reference_scores.json"

# Task ids the pretrained JOWA checkpoints depend on.
PINNED_TASK_IDS = {
    "Assault": 3,
    "Atlantis": 6,
    "BeamRider": 9,
    "Berzerk": 10,
    "Carnival": 14,
    "Centipede": 15,
    "ChopperCommand": 16,
    "DemonAttack": 18,
    "NameThisGame": 36,
    "Phoenix": 37,
    "Pong": 39,
    "Seaquest": 46,
    "SpaceInvaders": 49,
    "StarGunner": 50,
    "TimePilot": 52,
    "Zaxxon": 59,
}


def test_games_sorted_unique_and_pinned() -> None:
    assert len(games.GAMES) == 60
    assert list(games.GAMES) == sorted(games.GAMES)
    assert len(set(games.GAMES)) == 60
    for game, expected in PINNED_TASK_IDS.items():
        assert games.task_id(game) == expected, game
    assert [games.task_id(g) for g in games.GAMES] == list(range(60))


def test_pretrain_and_heldout_splits() -> None:
    assert len(games.PRETRAIN_GAMES) == 15
    assert games.PRETRAIN_GAMES[0] == "Assault" and games.PRETRAIN_GAMES[-1] == "Zaxxon"
    assert games.HELDOUT_GAMES == ("Pong", "MsPacman", "Gravitar", "YarsRevenge", "Robotank")
    assert not set(games.PRETRAIN_GAMES) & set(games.HELDOUT_GAMES)
    for game in games.PRETRAIN_GAMES + games.HELDOUT_GAMES:
        assert games.check_game(game) == game
        games.normalizers(game)  # every evaluated game can be normalized


def test_full_actions_match_ale() -> None:
    ale_names = tuple(action.name for action in sorted(ale_py.Action, key=lambda a: a.value))
    assert ale_names == games.FULL_ACTIONS
    assert [ale_py.Action[name].value for name in games.FULL_ACTIONS] == list(range(18))


@pytest.fixture(scope="module")
def ale_silent() -> None:
    ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)


@pytest.mark.parametrize("game", games.GAMES)
def test_minimal_actions_match_ale(game: str, ale_silent: None) -> None:
    ale = ale_py.ALEInterface()
    ale.loadROM(ale_py.roms.get_rom_path(games.ale_rom_id(game)))
    expected = tuple(action.value for action in ale.getMinimalActionSet())
    assert games.MINIMAL_ACTIONS[game] == expected


def test_minimal_actions_table_and_maps() -> None:
    assert set(games.MINIMAL_ACTIONS) == set(games.GAMES)
    assert games.MINIMAL_ACTIONS["Atlantis"] == (0, 1, 11, 12)
    assert games.MINIMAL_ACTIONS["MsPacman"] == (0, 2, 3, 4, 5, 6, 7, 8, 9)
    index_map = games.minimal_to_full("Pong")
    assert index_map.dtype == np.int64
    assert index_map.tolist() == [0, 1, 3, 4, 11, 12]
    index_map[0] = 99  # callers get a copy, never the table itself
    assert games.minimal_to_full("Pong")[0] == 0
    mask = games.action_mask("Pong")
    assert mask.dtype == np.bool_ and mask.shape == (18,)
    assert np.flatnonzero(mask).tolist() == [0, 1, 3, 4, 11, 12]
    assert games.action_mask("Seaquest").all()


def test_rom_ids() -> None:
    assert games.ale_rom_id("MsPacman") == "ms_pacman"
    assert games.ale_rom_id("UpNDown") == "up_n_down"
    assert games.ale_rom_id("Jamesbond") == "jamesbond"
    assert games.ale_rom_id("MontezumaRevenge") == "montezuma_revenge"
    known = set(ale_py.roms.get_all_rom_ids())
    assert {games.ale_rom_id(g) for g in games.GAMES} <= known


def test_gym_env_ids() -> None:
    gymnasium.register_envs(ale_py)
    assert games.gym_env_id("MsPacman") == "ALE/MsPacman-v5"
    for game in games.GAMES:  # registry lookups are cheap; creating all 60 envs is not
        assert games.gym_env_id(game) in gymnasium.registry, game
    for game in ("Pong", "MsPacman", "UpNDown", "Jamesbond", "MontezumaRevenge"):
        env = gymnasium.make(games.gym_env_id(game))
        try:
            assert env.action_space.n == len(games.MINIMAL_ACTIONS[game])
        finally:
            env.close()


def test_normalizers_match_reference_json() -> None:
    reference = json.loads(REFERENCE_SCORES.read_text())["normalizers"]
    table = {game: games.normalizers(game) for game in reference}
    assert set(reference) == set(games.PRETRAIN_GAMES + games.HELDOUT_GAMES)
    for game, scores in reference.items():
        assert table[game] == games.Normalizers(**{k: float(v) for k, v in scores.items()}), game


def test_normalizers_missing_game() -> None:
    with pytest.raises(ValueError, match=r"no normalizers for 'Alien'.*Assault.*Robotank"):
        games.normalizers("Alien")


def test_bad_names_give_helpful_errors() -> None:
    with pytest.raises(ValueError, match=r"^unknown game 'Pacman'; did you mean 'MsPacman'\?$"):
        games.check_game("Pacman")
    with pytest.raises(ValueError, match=r"^unknown game 'pong'; did you mean 'Pong'\?$"):
        games.task_id("pong")
    with pytest.raises(ValueError, match=r"unknown game 'xyzzy'; expected one of the 60"):
        games.gym_env_id("xyzzy")
    with pytest.raises(ValueError, match=r"unknown game None"):
        games.check_game(None)  # type: ignore[arg-type]
    for lookup in (games.minimal_to_full, games.action_mask, games.ale_rom_id, games.normalizers):
        with pytest.raises(ValueError, match="unknown game"):
            lookup("SpaceInvader")
