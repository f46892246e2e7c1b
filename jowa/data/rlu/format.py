"""RL Unplugged's episode-ordered Atari files (`rlu_atari_checkpoints_ordered`): names, games, episodes.

The same agents' data as DQN-Replay, published as `gs://rl_unplugged/atari_episodes_ordered/{Game}/
run_{run}-{shard:05d}-of-{num_shards:05d}`: one GZIP-compressed TFRecord shard per 1M-step checkpoint of
the run, in time order (50 shards; 49 for Carnival, Gravitar and StarGunner), each record a
`tf.train.Example` holding one whole episode. Per step: `observations` (PNG, 84x84x1), `actions` (index
into the game's minimal action set, as in DQN-Replay), `clipped_rewards`, `unclipped_rewards` and
`discounts`. Both reward fields hold the rewards the agent learned from, clipped to [-1, 1] as in
DQN-Replay: TFDS's `rlu_atari` says each step's reward is clipped, and in its test shard
`unclipped_rewards` equals `clipped_rewards`, despite the name. True game scores are in neither layout.
A last discount of 0 marks a terminal episode, whose last step carries only the terminal
observation: its action and reward are not a transition (Dopamine never stores that observation). An
episode without it was cut (by the step cap or the run's end) and is not known to be whole.

The `tf.train.Example` message types are built here from their (public, stable) field numbers, so
protobuf's C parser reads them without TensorFlow.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from jowa.data.episodes import ReplayFormatError

__all__ = [
    "RluEpisode",
    "decode_episode",
    "decode_frames",
    "encode_episode",
    "num_shards",
    "parse_shard_filename",
    "shard_filename",
]

_SHORT_RUNS = frozenset({"Carnival", "Gravitar", "StarGunner"})  # one checkpoint fewer
_SHARD_RE = re.compile(r"run_(\d+)-(\d{5})-of-(\d{5})")


def num_shards(game: str) -> int:
    """Shards (= 1M-step checkpoints) of each run of `game`."""
    return 49 if game in _SHORT_RUNS else 50


def shard_filename(run: int, shard: int, shards: int) -> str:
    return f"run_{run}-{shard:05d}-of-{shards:05d}"


def parse_shard_filename(name: str) -> tuple[int, int, int] | None:
    """(run, shard, shards) of a shard's file name, or None for any other name."""
    m = _SHARD_RE.fullmatch(name)
    return None if m is None else (int(m.group(1)), int(m.group(2)), int(m.group(3)))


def _example_class() -> type:
    """tf.train.Example, built from its field numbers (tensorflow/core/example/{example,feature}.proto)."""
    proto = descriptor_pb2.FileDescriptorProto(name="jowa_tf_example.proto", package="jowa.tf")
    fd = descriptor_pb2.FieldDescriptorProto
    repeated, optional = fd.LABEL_REPEATED, fd.LABEL_OPTIONAL

    def fields(msg: descriptor_pb2.DescriptorProto, *specs: tuple[str, int, int, int, str | None]) -> None:
        for name, number, type_, label, type_name in specs:
            msg.field.add(name=name, number=number, type=type_, label=label, type_name=type_name)

    for name, type_ in (
        ("BytesList", fd.TYPE_BYTES),
        ("FloatList", fd.TYPE_FLOAT),
        ("Int64List", fd.TYPE_INT64),
    ):
        msg = proto.message_type.add(name=name)
        fields(msg, ("value", 1, type_, repeated, None))
        if type_ != fd.TYPE_BYTES:
            msg.field[0].options.packed = True
    feature = proto.message_type.add(name="Feature")
    feature.oneof_decl.add(name="kind")
    fields(
        feature,
        ("bytes_list", 1, fd.TYPE_MESSAGE, optional, ".jowa.tf.BytesList"),
        ("float_list", 2, fd.TYPE_MESSAGE, optional, ".jowa.tf.FloatList"),
        ("int64_list", 3, fd.TYPE_MESSAGE, optional, ".jowa.tf.Int64List"),
    )
    for field in feature.field:
        field.oneof_index = 0
    features = proto.message_type.add(name="Features")
    entry = features.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    fields(
        entry,
        ("key", 1, fd.TYPE_STRING, optional, None),
        ("value", 2, fd.TYPE_MESSAGE, optional, ".jowa.tf.Feature"),
    )
    fields(features, ("feature", 1, fd.TYPE_MESSAGE, repeated, ".jowa.tf.Features.FeatureEntry"))
    example = proto.message_type.add(name="Example")
    fields(example, ("features", 1, fd.TYPE_MESSAGE, optional, ".jowa.tf.Features"))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("jowa.tf.Example"))


Example = _example_class()


@dataclass(frozen=True)
class RluEpisode:
    """One record: an episode's transitions in Dopamine's alignment (the terminal observation dropped)."""

    checkpoint: int
    episode: int
    terminal: bool  # ends in a terminal state: a whole episode
    actions: np.ndarray  # int64, minimal action set index, one per transition
    rewards: np.ndarray  # float32, `clipped_rewards`: in [-1, 1] in the published data
    observations: Sequence[bytes]  # PNG per transition

    def __len__(self) -> int:
        return len(self.actions)


def decode_episode(record: bytes, where: str) -> RluEpisode:
    """Parse one record; `where` (file and record number) goes into every error."""
    try:
        features = Example.FromString(record).features.feature
    except Exception as exc:  # protobuf's DecodeError, whatever the backend
        raise ReplayFormatError(f"{where}: not a tf.train.Example ({exc})") from exc

    def values(key: str, kind: str) -> Sequence:
        if key not in features:
            raise ReplayFormatError(f"{where}: the Example has no {key!r} feature")
        return getattr(features[key], kind).value

    observations = values("observations", "bytes_list")
    actions = np.asarray(values("actions", "int64_list"), dtype=np.int64)
    rewards = np.asarray(values("clipped_rewards", "float_list"), dtype=np.float32)
    discounts = values("discounts", "float_list")
    lengths = {len(observations), len(actions), len(rewards), len(discounts)}
    if len(lengths) != 1 or not observations:
        raise ReplayFormatError(
            f"{where}: observations, actions, clipped_rewards and discounts have lengths "
            f"{len(observations)}, {len(actions)}, {len(rewards)}, {len(discounts)}; expected one length > 0"
        )
    terminal = discounts[-1] == 0.0
    n = len(actions) - terminal
    return RluEpisode(
        checkpoint=int(values("checkpoint_idx", "int64_list")[0]),
        episode=int(values("episode_idx", "int64_list")[0]),
        terminal=bool(terminal),
        actions=actions[:n],
        rewards=rewards[:n],
        observations=observations[:n],
    )


def decode_frames(pngs: Sequence[bytes], out: np.ndarray, where: str) -> None:
    """Decode 84x84 grayscale PNGs into `out` (uint8 [len(pngs), 84, 84])."""
    for i, png in enumerate(pngs):
        frame = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
        if frame is None or frame.shape[:2] != (84, 84) or frame.dtype != np.uint8 or frame.size != 84 * 84:
            got = "undecodable bytes" if frame is None else f"{frame.dtype} {frame.shape}"
            raise ReplayFormatError(f"{where}: observation {i} is not an 84x84 grayscale PNG ({got})")
        out[i] = frame.reshape(84, 84)


def encode_episode(
    *,
    checkpoint: int,
    episode: int,
    frames: np.ndarray,
    actions: np.ndarray,
    rewards: np.ndarray,
    terminal: bool,
    terminal_frame: np.ndarray | None = None,
) -> bytes:
    """A record as RL Unplugged writes it, from transitions in Dopamine's alignment.

    `rewards` go to `unclipped_rewards` as given and clipped to [-1, 1] to `clipped_rewards`; for
    Dopamine's rewards, clipped already, the two are equal, as in the published data. A terminal episode
    gets one more step: the terminal observation (zeros unless given), with action 0, reward 0 and
    discount 0.
    """
    frames, actions, rewards = list(frames), list(map(int, actions)), list(map(float, rewards))
    discounts = [1.0] * len(actions)
    if terminal:
        frames.append(np.zeros((84, 84), np.uint8) if terminal_frame is None else terminal_frame)
        actions.append(0)
        rewards.append(0.0)
        discounts.append(0.0)
    example = Example()
    feature = example.features.feature
    feature["checkpoint_idx"].int64_list.value.append(checkpoint)
    feature["episode_idx"].int64_list.value.append(episode)
    feature["episode_return"].float_list.value.append(sum(rewards))
    feature["clipped_episode_return"].float_list.value.append(float(np.clip(rewards, -1, 1).sum()))
    feature["observations"].bytes_list.value.extend(
        cv2.imencode(".png", f[..., None])[1].tobytes() for f in frames
    )
    feature["actions"].int64_list.value.extend(actions)
    feature["unclipped_rewards"].float_list.value.extend(rewards)
    feature["clipped_rewards"].float_list.value.extend(np.clip(rewards, -1, 1).tolist())
    feature["discounts"].float_list.value.extend(discounts)
    return example.SerializeToString(deterministic=True)
