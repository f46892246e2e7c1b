"""Which raw layout a `data.source` gives, and which games it publishes; cheap, for planning time.

Three sources give the same agents' data: Dopamine's DQN-Replay bucket (or a mirror of it), RL
Unplugged's episode-ordered copy (or a mirror of it), and `generate` (played with ale-py, written in the
DQN-Replay layout). The layout decides where runs live locally and how they are fetched and read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from jowa.core.params_base import GENERATE

__all__ = ["RLU_GAMES", "RLU_PREFIX", "Layout", "missing_games", "source_layout"]

Layout = Literal["dqn-replay", "rl-unplugged"]

#: RL Unplugged's episode-ordered Atari data (TFDS `rlu_atari_checkpoints_ordered`).
RLU_PREFIX = "gs://rl_unplugged/atari_episodes_ordered"
_RLU_DIRNAME = RLU_PREFIX.rsplit("/", 1)[1]

#: The 46 games RL Unplugged publishes (TFDS `atari_utils`). Of the paper's 20, Berzerk is missing.
RLU_GAMES: frozenset[str] = frozenset(
    (
        "Alien", "Amidar", "Assault", "Asterix", "Atlantis", "BankHeist", "BattleZone", "BeamRider",
        "Boxing", "Breakout", "Carnival", "Centipede", "ChopperCommand", "CrazyClimber", "DemonAttack",
        "DoubleDunk", "Enduro", "FishingDerby", "Freeway", "Frostbite", "Gopher", "Gravitar", "Hero",
        "IceHockey", "Jamesbond", "Kangaroo", "Krull", "KungFuMaster", "MsPacman", "NameThisGame",
        "Phoenix", "Pong", "Pooyan", "Qbert", "Riverraid", "RoadRunner", "Robotank", "Seaquest",
        "SpaceInvaders", "StarGunner", "TimePilot", "UpNDown", "VideoPinball", "WizardOfWor",
        "YarsRevenge", "Zaxxon",
    )
)  # fmt: skip


def source_layout(source: str) -> Layout:
    """The layout of the runs `source` holds (generated runs use the DQN-Replay layout).

    RL Unplugged's: its bucket prefix, a local directory named like it, or a mirror that already holds
    its shards (`{Game}/run_R-NNNNN-of-MMMMM`). Anything else is read as a DQN-Replay source.
    """
    if source == GENERATE:
        return "dqn-replay"
    location = source.removeprefix("file://").rstrip("/")
    if location.rsplit("/", 1)[-1] == _RLU_DIRNAME:
        return "rl-unplugged"
    if not source.startswith("gs://"):
        root = Path(location).expanduser()
        if root.is_dir() and next(root.glob("*/run_*-*-of-*"), None) is not None:
            return "rl-unplugged"
    return "dqn-replay"


def missing_games(source: str, games: list[str]) -> list[str]:
    """The games in `games` that `source` does not publish."""
    if source_layout(source) == "rl-unplugged":
        return [game for game in games if game not in RLU_GAMES]
    return []
