"""The 60 DQN-Replay games: names, task ids, action sets, environment ids and score normalizers.

Everything is a literal table so that importing the package never needs ALE, the ROMs or the shared
reference files; tests/test_games.py checks the tables against ale-py, gymnasium and the reference JSON.
Every lookup by name goes through `check_game`, so a typo fails early with a suggestion instead of a
KeyError deep inside a stage.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

import numpy as np

from jowa.core.errors import JowaError

# Alphabetical, as in the DQN-Replay dataset; a game's task id is its index (the JOWA task embedding
# index), so this order must never change.
GAMES: tuple[str, ...] = (
    "AirRaid", "Alien", "Amidar", "Assault", "Asterix", "Asteroids", "Atlantis", "BankHeist",
    "BattleZone", "BeamRider", "Berzerk", "Bowling", "Boxing", "Breakout", "Carnival", "Centipede",
    "ChopperCommand", "CrazyClimber", "DemonAttack", "DoubleDunk", "ElevatorAction", "Enduro",
    "FishingDerby", "Freeway", "Frostbite", "Gopher", "Gravitar", "Hero", "IceHockey", "Jamesbond",
    "JourneyEscape", "Kangaroo", "Krull", "KungFuMaster", "MontezumaRevenge", "MsPacman", "NameThisGame",
    "Phoenix", "Pitfall", "Pong", "Pooyan", "PrivateEye", "Qbert", "Riverraid", "RoadRunner", "Robotank",
    "Seaquest", "Skiing", "Solaris", "SpaceInvaders", "StarGunner", "Tennis", "TimePilot", "Tutankham",
    "UpNDown", "Venture", "VideoPinball", "WizardOfWor", "YarsRevenge", "Zaxxon",
)  # fmt: skip

_TASK_IDS: dict[str, int] = {game: i for i, game in enumerate(GAMES)}
_BY_LOWER: dict[str, str] = {game.lower(): game for game in GAMES}

# The 15 games JOWA is pretrained on, in the paper's order, and the 5 held out for fine-tuning.
PRETRAIN_GAMES: tuple[str, ...] = (
    "Assault", "Atlantis", "BeamRider", "Berzerk", "Carnival", "Centipede", "ChopperCommand",
    "DemonAttack", "NameThisGame", "Phoenix", "Seaquest", "SpaceInvaders", "StarGunner", "TimePilot",
    "Zaxxon",
)  # fmt: skip
HELDOUT_GAMES: tuple[str, ...] = ("Pong", "MsPacman", "Gravitar", "YarsRevenge", "Robotank")

# ALE's full action set, in ALE's numbering (ale_py.Action values 0..17).
FULL_ACTIONS: tuple[str, ...] = (
    "NOOP", "FIRE", "UP", "RIGHT", "LEFT", "DOWN", "UPRIGHT", "UPLEFT", "DOWNRIGHT", "DOWNLEFT",
    "UPFIRE", "RIGHTFIRE", "LEFTFIRE", "DOWNFIRE", "UPRIGHTFIRE", "UPLEFTFIRE", "DOWNRIGHTFIRE",
    "DOWNLEFTFIRE",
)  # fmt: skip

_ALL = tuple(range(len(FULL_ACTIONS)))

# DQN-Replay stores actions as indices into each game's ALE minimal action set; JOWA acts in the full
# 18-action space. Entry i of a game's tuple is the full-set index of dataset action i. Values are
# ale-py 0.12's getMinimalActionSet(); the tests re-derive them from ale-py for all 60 games.
MINIMAL_ACTIONS: dict[str, tuple[int, ...]] = {
    "AirRaid": (0, 1, 3, 4, 11, 12),
    "Alien": _ALL,
    "Amidar": (0, 1, 2, 3, 4, 5, 10, 11, 12, 13),
    "Assault": (0, 1, 2, 3, 4, 11, 12),
    "Asterix": (0, 2, 3, 4, 5, 6, 7, 8, 9),
    "Asteroids": (0, 1, 2, 3, 4, 5, 6, 7, 10, 11, 12, 13, 14, 15),
    "Atlantis": (0, 1, 11, 12),
    "BankHeist": _ALL,
    "BattleZone": _ALL,
    "BeamRider": (0, 1, 2, 3, 4, 6, 7, 11, 12),
    "Berzerk": _ALL,
    "Bowling": (0, 1, 2, 5, 10, 13),
    "Boxing": _ALL,
    "Breakout": (0, 1, 3, 4),
    "Carnival": (0, 1, 3, 4, 11, 12),
    "Centipede": _ALL,
    "ChopperCommand": _ALL,
    "CrazyClimber": (0, 2, 3, 4, 5, 6, 7, 8, 9),
    "DemonAttack": (0, 1, 3, 4, 11, 12),
    "DoubleDunk": _ALL,
    "ElevatorAction": _ALL,
    "Enduro": (0, 1, 3, 4, 5, 8, 9, 11, 12),
    "FishingDerby": _ALL,
    "Freeway": (0, 2, 5),
    "Frostbite": _ALL,
    "Gopher": (0, 1, 2, 3, 4, 10, 11, 12),
    "Gravitar": _ALL,
    "Hero": _ALL,
    "IceHockey": _ALL,
    "Jamesbond": _ALL,
    "JourneyEscape": (0, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14, 15, 16, 17),
    "Kangaroo": _ALL,
    "Krull": _ALL,
    "KungFuMaster": (0, 2, 3, 4, 5, 8, 9, 11, 12, 13, 14, 15, 16, 17),
    "MontezumaRevenge": _ALL,
    "MsPacman": (0, 2, 3, 4, 5, 6, 7, 8, 9),
    "NameThisGame": (0, 1, 3, 4, 11, 12),
    "Phoenix": (0, 1, 3, 4, 5, 11, 12, 13),
    "Pitfall": _ALL,
    "Pong": (0, 1, 3, 4, 11, 12),
    "Pooyan": (0, 1, 2, 5, 10, 13),
    "PrivateEye": _ALL,
    "Qbert": (0, 1, 2, 3, 4, 5),
    "Riverraid": _ALL,
    "RoadRunner": _ALL,
    "Robotank": _ALL,
    "Seaquest": _ALL,
    "Skiing": (0, 3, 4),
    "Solaris": _ALL,
    "SpaceInvaders": (0, 1, 3, 4, 11, 12),
    "StarGunner": _ALL,
    "Tennis": _ALL,
    "TimePilot": (0, 1, 2, 3, 4, 5, 10, 11, 12, 13),
    "Tutankham": (0, 2, 3, 4, 5, 10, 11, 12),
    "UpNDown": (0, 1, 2, 5, 10, 13),
    "Venture": _ALL,
    "VideoPinball": (0, 1, 2, 3, 4, 5, 10, 11, 12),
    "WizardOfWor": (0, 1, 2, 3, 4, 5, 10, 11, 12, 13),
    "YarsRevenge": _ALL,
    "Zaxxon": _ALL,
}


class UnknownGameError(JowaError, ValueError):
    """A name that is not one of the 60 DQN-Replay games."""


@dataclass(frozen=True)
class Normalizers:
    """Reference scores that turn raw returns into human- and DQN-normalized scores."""

    random: float
    human: float
    dqn: float


# Copied from the shared reference_scores.json ("normalizers"; tests/reference holds a copy) so the
# package needs no data files; tests/test_games.py keeps the two in sync.
_NORMALIZERS: dict[str, Normalizers] = {
    "Assault": Normalizers(random=222.4, human=742.0, dqn=1525.2),
    "Atlantis": Normalizers(random=12850.0, human=29028.1, dqn=853640.0),
    "BeamRider": Normalizers(random=363.9, human=16926.5, dqn=5852.4),
    "Berzerk": Normalizers(random=123.7, human=2630.4, dqn=487.5),
    "Carnival": Normalizers(random=700.8, human=3800.0, dqn=4784.8),
    "Centipede": Normalizers(random=2090.9, human=12017.0, dqn=2583.0),
    "ChopperCommand": Normalizers(random=811.0, human=7387.8, dqn=2690.6),
    "DemonAttack": Normalizers(random=152.1, human=1971.0, dqn=6361.6),
    "NameThisGame": Normalizers(random=2292.3, human=8049.0, dqn=7278.6),
    "Phoenix": Normalizers(random=761.4, human=7242.6, dqn=4996.6),
    "Seaquest": Normalizers(random=68.4, human=42054.7, dqn=1600.7),
    "SpaceInvaders": Normalizers(random=148.0, human=1668.7, dqn=1794.2),
    "StarGunner": Normalizers(random=664.0, human=10250.0, dqn=42165.2),
    "TimePilot": Normalizers(random=3568.0, human=5229.2, dqn=3654.4),
    "Zaxxon": Normalizers(random=32.5, human=9173.3, dqn=4538.6),
    "Pong": Normalizers(random=-20.7, human=14.6, dqn=16.6),
    "MsPacman": Normalizers(random=307.3, human=6951.6, dqn=3402.4),
    "Gravitar": Normalizers(random=173.0, human=3351.4, dqn=330.1),
    "YarsRevenge": Normalizers(random=3092.9, human=54576.9, dqn=23909.4),
    "Robotank": Normalizers(random=2.2, human=11.9, dqn=59.8),
}


def check_game(game: str) -> str:
    """Return `game` if it is a DQN-Replay game, else raise UnknownGameError suggesting the nearest names."""
    if isinstance(game, str) and game in _TASK_IDS:
        return game
    suggestions: list[str] = []
    if isinstance(game, str):
        # Match case-insensitively so "pong" or "MSPACMAN" point at the one right name.
        lowered = game.lower()
        close = [lowered] if lowered in _BY_LOWER else difflib.get_close_matches(lowered, list(_BY_LOWER), 3)
        suggestions = [_BY_LOWER[name] for name in close]
    message = f"unknown game {game!r}"
    if suggestions:
        quoted = [repr(name) for name in suggestions]
        alternatives = quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]
        message += f"; did you mean {alternatives}?"
    else:
        message += f"; expected one of the {len(GAMES)} DQN-Replay games, e.g. {GAMES[0]!r} or 'MsPacman'"
    raise UnknownGameError(message)


def task_id(game: str) -> int:
    """The game's index in GAMES, which selects its task embedding."""
    return _TASK_IDS[check_game(game)]


def minimal_to_full(game: str) -> np.ndarray:
    """Index map from dataset (minimal-set) actions to full-set actions: `full = minimal_to_full(g)[a]`."""
    return np.array(MINIMAL_ACTIONS[check_game(game)], dtype=np.int64)


def action_mask(game: str) -> np.ndarray:
    """Boolean mask over the 18 full actions, True where the game's minimal set has the action."""
    return ACTION_MASKS[task_id(game)].copy()


def _mask_of(game: str) -> np.ndarray:
    mask = np.zeros(len(FULL_ACTIONS), dtype=bool)
    mask[list(MINIMAL_ACTIONS[game])] = True
    return mask


#: (60, 18) valid-action masks, row t for task id t; built once, read-only.
ACTION_MASKS: np.ndarray = np.stack([_mask_of(game) for game in GAMES])
ACTION_MASKS.flags.writeable = False


def ale_rom_id(game: str) -> str:
    """ale-py's ROM id (snake_case of the CamelCase name), as `ale_py.roms.get_rom_path` expects."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", check_game(game)).lower()


def gym_env_id(game: str) -> str:
    """The gymnasium id of the game's v5 ALE environment (needs `gymnasium.register_envs(ale_py)`)."""
    return f"ALE/{check_game(game)}-v5"


def normalizers(game: str) -> Normalizers:
    """Random, human and DQN reference scores; only the paper's 20 evaluated games have them."""
    game = check_game(game)
    try:
        return _NORMALIZERS[game]
    except KeyError:
        raise ValueError(
            f"no normalizers for {game!r}; only these {len(_NORMALIZERS)} games have them: "
            + ", ".join(_NORMALIZERS)
        ) from None
