"""`jowa evaluate` end to end in real ALE games: the released-format fixture imported and played, greedy
and with beam search, every episode at once; the JSON's returns, caps and settings; a killed or
SIGTERM'd evaluation resumed to the same result."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from jowa import cli
from jowa.core import games
from jowa.core.env import make_env
from jowa.planning.params import EvalParams
from jowa.planning.play import Episodes
from jowa.planning.resume import state_path

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "reference" / "tiny_fixture"
ARCH = {"layers": 2, "heads": 2, "width": 64, "q_hidden": 32, "q_ensemble": 2}
EVAL = {
    "protocol": "jowa", "episodes": 3, "max_steps": 40, "seed": 0, "epsilon": 0.001, "gamma": 0.99,
    "greedy_context": 4, "precision": "bf16", "checkpoint_every": 10,
}  # fmt: skip


def jowa(*args: str | Path) -> None:
    assert cli.main(["-q", *map(str, args)]) == 0


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny released-format fixture, imported with `jowa checkpoint import-reference`."""
    root = tmp_path_factory.mktemp("reference")
    spec = json.loads((FIXTURE / "tiny_fixture.json").read_text())
    jowa("checkpoint", "import-reference", "--kind", "world", "--input", FIXTURE / "tiny_jowa_state.npz",
         "--arch", json.dumps(ARCH), "--out", root / "model.safetensors")  # fmt: skip
    jowa("checkpoint", "import-reference", "--kind", "tokenizer", "--input",
         FIXTURE / "tiny_tokenizer_state.npz", "--tokenizer-config", json.dumps(spec["tokenizer"]),
         "--out", root / "tokenizer.safetensors")  # fmt: skip
    return {"model": root / "model.safetensors", "tokenizer": root / "tokenizer.safetensors"}


def evaluate(
    reference: dict, out: Path, game: str, planner: str, *extra: str | Path, **params: object
) -> dict:
    jowa("evaluate", "--params", json.dumps({**EVAL, **params}), "--model", reference["model"],
         "--tokenizer", reference["tokenizer"], "--game", game, "--planner", planner, "--out", out,
         *extra)  # fmt: skip
    return json.loads(out.read_text())


SETTINGS = {
    "greedy": {},
    "beam": {"beam_width": 3, "horizon": 2, "context": 8},
    "mcts": {"simulations": 3, "horizon": 2, "temperature": 0.9, "context": 5},
}


@pytest.mark.parametrize("planner", ["greedy", "beam", "mcts"])
def test_an_imported_reference_checkpoint_plays_every_episode_to_its_cap(
    reference: dict, tmp_path: Path, planner: str
) -> None:
    extra = (f"--{planner}", json.dumps(SETTINGS[planner])) if SETTINGS[planner] else ()
    result = evaluate(reference, tmp_path / "Pong.json", "Pong", planner, *extra)
    assert result["lengths"] == [40, 40, 40] and result["truncated"] == [True, True, True]
    assert len(result["returns"]) == 3 and result["mean_return"] == pytest.approx(np.mean(result["returns"]))
    assert result["env_steps"] == 120 and result["env_steps_per_s"] > 0
    assert result["settings"]["planner"] == (SETTINGS[planner] or {"context": 4})
    assert result["settings"]["protocol"] == {"name": "jowa", "sticky_actions": 0.0, "max_steps": 108_000}
    assert result["settings"]["eval"]["max_steps"] == 40
    assert len(result["model"]["sha256"]) == 64


def test_beam_settings_come_from_a_params_file_by_size_and_game(reference: dict, tmp_path: Path) -> None:
    result = evaluate(reference, tmp_path / "SI.json", "SpaceInvaders", "beam", "--beam",
                      ROOT / "params.yaml", "--size", "150M", episodes=1, max_steps=5)  # fmt: skip
    assert result["settings"]["planner"] == {"beam_width": 2, "horizon": 2, "context": 2}  # the paper's
    assert cli.main(["-q", "evaluate", "--params", json.dumps(EVAL), "--model", str(reference["model"]),
                     "--tokenizer", str(reference["tokenizer"]), "--game", "Pong", "--planner", "beam",
                     "--out", str(tmp_path / "x.json")]) == 1  # fmt: skip
    assert not (tmp_path / "x.json").exists()


def test_returns_sum_every_raw_reward_including_the_last_step() -> None:
    """A Pong game ends on a point (reward +-1 on the final step); the reference would drop it."""
    params = EvalParams.model_validate({**EVAL, "episodes": 1, "max_steps": 5000})
    episodes = Episodes("Pong", params, context=4)
    plain = make_env("Pong", "jowa", seed=0)
    plain.reset(seed=0)
    rng = np.random.default_rng(0)
    rewards = []
    while episodes.active:
        action = int(rng.choice([0, 1, 3, 4, 11, 12]))
        episodes.step(0, action)
        rewards.append(plain.step(action)[1])
    assert rewards[-1] in (-1.0, 1.0) and not episodes.truncated[0]
    assert episodes.returns[0] == sum(rewards) and episodes.lengths[0] == len(rewards)


def test_a_plain_env_has_the_full_action_set_the_planner_indexes() -> None:
    env = make_env("Pong", "jowa", seed=0, max_steps=5)
    assert env.action_space.n == 18 and sum(games.ACTION_MASKS[games.task_id("Pong")]) == 6


def test_video_of_the_first_episode(reference: dict, tmp_path: Path) -> None:
    import cv2

    evaluate(reference, tmp_path / "Pong.json", "Pong", "greedy", "--video", tmp_path / "Pong.mp4",
             episodes=2, max_steps=12)  # fmt: skip
    video = cv2.VideoCapture(str(tmp_path / "Pong.mp4"))
    frames = int(video.get(cv2.CAP_PROP_FRAME_COUNT))
    ok, frame = video.read()
    assert ok and frame.shape == (336, 336, 3) and frames == 12


# -- interrupted evaluations

BEAM = ("--planner", "beam", "--beam", json.dumps({"beam_width": 2, "horizon": 1, "context": 4}))
SAME = ("returns", "lengths", "truncated", "actions_sha256")


def interrupted(
    reference: dict, out: Path, planner: tuple[str, ...], params: dict, signum: int,
    ready: Callable[[Path], bool],
) -> int:  # fmt: skip
    """Run `jowa evaluate` as its own process, send it `signum` once `ready(stderr file)`; its exit code."""
    log = out.with_suffix(".log")
    command = [sys.executable, "-m", "jowa.cli", "evaluate", "--params", json.dumps({**EVAL, **params}),
               "--model", str(reference["model"]), "--tokenizer", str(reference["tokenizer"]), "--game",
               "Pong", *planner, "--out", str(out)]  # fmt: skip
    with open(log, "w") as stderr:
        process = subprocess.Popen(command, stderr=stderr, env={**os.environ, "OMP_NUM_THREADS": "1"})
        deadline = time.monotonic() + 300
        while not ready(log) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert process.poll() is None, f"the run ended before it could be interrupted: {log.read_text()}"
        process.send_signal(signum)
        return process.wait(timeout=120)


def saved_step(out: Path) -> int:
    return torch.load(state_path(out), weights_only=False)["step"]


def test_a_killed_evaluation_resumes_to_the_uninterrupted_result(
    reference: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """SIGKILL after a periodic save; the same command resumes from it and ends where an uninterrupted
    run ends (returns, lengths and every action), and publishing the result deletes the state. A state
    left by an evaluation with other settings is ignored, with a message."""
    params = {"max_steps": 60, "epsilon": 0.2}
    planner = BEAM[1:]
    whole = evaluate(reference, tmp_path / "whole.json", "Pong", planner[0], *planner[1:], **params)
    out = tmp_path / "Pong.json"
    code = interrupted(reference, out, BEAM, params, signal.SIGKILL, lambda _: state_path(out).exists())
    assert code == -signal.SIGKILL and not out.exists()
    step = saved_step(out)
    assert step > 0 and step % EVAL["checkpoint_every"] == 0
    left = tmp_path / "left.pt"
    shutil.copy(state_path(out), left)
    resumed = evaluate(reference, out, "Pong", planner[0], *planner[1:], **params)
    assert {key: resumed[key] for key in SAME} == {key: whole[key] for key in SAME}
    assert resumed["resumed_at_steps"] == [step] and whole["resumed_at_steps"] == []
    assert not state_path(out).exists()

    shutil.copy(left, state_path(out))
    capsys.readouterr()
    other = evaluate(reference, out, "Pong", planner[0], *planner[1:], **{**params, "max_steps": 20})
    assert "saved by another evaluation (differs in eval); ignored" in capsys.readouterr().err
    assert other["resumed_at_steps"] == [] and other["lengths"] == [20, 20, 20]
    assert not state_path(out).exists()


def test_sigterm_saves_the_state_and_exits_143_and_the_rerun_resumes(reference: dict, tmp_path: Path) -> None:
    """SIGTERM mid-run (`scancel`, a time limit) with no periodic save due: the state is saved after the
    current step, the job exits 143, and the rerun, under sticky actions, ends as an uninterrupted run."""
    params = {"protocol": "standard", "max_steps": 120, "epsilon": 0.2, "checkpoint_every": 1_000_000}
    whole = evaluate(reference, tmp_path / "whole.json", "Pong", "greedy", **params)
    out = tmp_path / "Pong.json"
    playing = lambda log: "Pong greedy" in log.read_text()  # noqa: E731  (the progress bar has started)
    code = interrupted(reference, out, ("--planner", "greedy"), params, signal.SIGTERM, playing)
    log = out.with_suffix(".log").read_text()
    assert code == 143 and "stopped by SIGTERM" in log and not out.exists()
    step = saved_step(out)
    assert 0 < step < 120 and f"saved the evaluation state at agent step {step}" in log
    resumed = evaluate(reference, out, "Pong", "greedy", **params)
    assert {key: resumed[key] for key in SAME} == {key: whole[key] for key in SAME}
    assert resumed["resumed_at_steps"] == [step] and not state_path(out).exists()


def test_progress_in_a_log_file_is_a_line_every_few_seconds_not_every_step(
    reference: dict, tmp_path: Path
) -> None:
    """A job's log (stderr to a file, as under Snakemake) holds the bar's refreshes: at most one per
    `mininterval` (2 s) besides the first and the last, however fast the steps go."""
    out = tmp_path / "Pong.json"
    params = json.dumps({**EVAL, "max_steps": 120})
    command = [sys.executable, "-m", "jowa.cli", "evaluate", "--params", params, "--model",
               str(reference["model"]), "--tokenizer", str(reference["tokenizer"]), "--game", "Pong",
               "--planner", "greedy", "--out", str(out)]  # fmt: skip
    log = tmp_path / "evaluate.log"
    start = time.monotonic()
    with log.open("w") as stderr:
        subprocess.run(command, stderr=stderr, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    seconds = time.monotonic() - start
    refreshes = log.read_text().count("Pong greedy:")
    assert 2 <= refreshes <= seconds / 2 + 3, (refreshes, seconds)
