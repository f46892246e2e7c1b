"""The `jowa` command: bad input is reported in one line that names it; a bug keeps its traceback."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from jowa import cli
from jowa.core.errors import JowaError

ROOT = Path(__file__).resolve().parents[1]
SUBSAMPLE = '{"runs_per_game": 1, "seed": 0, "transitions_per_game": 10}'
GENERATE = {"capacity": 100, "max_episode_steps": 50, "seed": 0, "steps_per_run": 60, "sticky_actions": 0.25}


def jowa(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["jowa", *args], capture_output=True, text=True, timeout=120)


def generate(out: Path, *options: str, **changes: object) -> subprocess.CompletedProcess:
    params = json.dumps({**GENERATE, **changes})
    return jowa(
        "-q", "data", "generate", "--params", params, "--game", "Pong", "--run", "1",
        "--out", str(out / "replay_logs"), "--manifest", str(out / "1.tsv"), *options,
    )  # fmt: skip


def test_version_and_command_list() -> None:
    assert jowa("--version").stdout.startswith("jowa-repro ")
    listing = jowa("--help").stdout
    assert all(name in listing for name in cli.COMMANDS)
    wrong = jowa("data", "subsampel")
    assert wrong.returncode == 2 and "unknown command 'data subsampel'" in wrong.stderr


def test_unknown_game_is_named_with_a_suggestion(tmp_path: Path) -> None:
    proc = jowa(
        "data", "subsample", "--params", SUBSAMPLE, "--game", "Pacman", "--runs", "1",
        "--replay-dirs", str(tmp_path), "--manifests", str(tmp_path / "1.tsv"),
        "--out", str(tmp_path / "out"),
    )  # fmt: skip
    assert proc.returncode == 2  # a usage error, caught while parsing the command line
    assert "unknown game 'Pacman'; did you mean 'MsPacman'?" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_manifest_is_named(tmp_path: Path) -> None:
    proc = jowa(
        "data", "subsample", "--params", SUBSAMPLE, "--game", "Pong", "--runs", "3",
        "--replay-dirs", str(tmp_path), "--manifests", str(tmp_path / "3.tsv"),
        "--out", str(tmp_path / "out"),
    )  # fmt: skip
    assert proc.returncode == 1
    assert f"jowa data subsample: error: {tmp_path / '3.tsv'}: manifest missing" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_commands_validate_their_section_like_the_dag(tmp_path: Path) -> None:
    bad = generate(tmp_path, sticky_actions=1.5)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert "data.generate.sticky_actions: Input should be less than or equal to 1 (got 1.5)" in bad.stderr
    run0 = jowa("data", "generate", "--params", json.dumps(GENERATE), "--game", "Pong", "--run", "0",
                "--out", str(tmp_path / "o"), "--manifest", str(tmp_path / "m.tsv"))  # fmt: skip
    assert run0.returncode == 2 and "run '0': Input should be greater than or equal to 1" in run0.stderr
    assert not any(tmp_path.iterdir())


def test_generate_onto_an_existing_run_is_refused_in_one_line(tmp_path: Path) -> None:
    assert generate(tmp_path).returncode == 0
    again = generate(tmp_path)
    assert again.returncode == 1 and "Traceback" not in again.stderr
    assert f"{tmp_path / 'replay_logs'} already exists; delete it, or pass --overwrite" in again.stderr
    shutil.rmtree(tmp_path / "replay_logs")  # a manifest alone is an output in the way too
    alone = generate(tmp_path)
    assert alone.returncode == 1 and f"{tmp_path / '1.tsv'} already exists" in alone.stderr
    manifest = (tmp_path / "1.tsv").read_text()
    forced = generate(tmp_path, "--overwrite", seed=1)
    assert forced.returncode == 0, forced.stderr
    assert (tmp_path / "replay_logs").is_dir() and (tmp_path / "1.tsv").read_text() != manifest


def _default_sigint() -> None:
    """Ctrl-C as in a terminal: a parent may ignore SIGINT (pytest-xdist's workers, a `cmd &` of a
    script), and a Python started so never turns it into KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_long_generate(out: Path) -> tuple[subprocess.Popen, Path]:
    """`jowa data generate` of a run far too long to finish, once its temporary directory has a file."""
    params = json.dumps({**GENERATE, "steps_per_run": 10**7})
    proc = subprocess.Popen(
        ["jowa", "-q", "data", "generate", "--params", params, "--game", "Pong", "--run", "1",
         "--out", str(out / "replay_logs"), "--manifest", str(out / "1.tsv")],
        stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        staging = list(out.glob(".replay_logs.tmp-*"))
        if staging and any(staging[0].glob("*.gz")):
            return proc, staging[0]
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"generate never started writing: {proc.communicate()[1]}")


@pytest.mark.parametrize(
    ("sig", "status", "name"), [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "Ctrl-C")]
)
def test_a_stopped_job_removes_its_temporary_output(tmp_path: Path, sig: int, status: int, name: str) -> None:
    """scancel and timeouts send SIGTERM: the job cleans up as for an error, and says it was stopped."""
    out = tmp_path / "Pong" / "1"
    proc, _ = start_long_generate(out)
    proc.send_signal(sig)
    try:
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == status, stderr
    assert f"jowa data generate: stopped by {name}; unfinished outputs were discarded" in stderr
    assert "Traceback" not in stderr
    assert list(tmp_path.iterdir()) == []  # no staging, no output, no manifest, no parent it created


def test_a_killed_jobs_leftover_is_swept_by_the_next_run(tmp_path: Path) -> None:
    """SIGKILL leaves the temporary directory; the next run of the same job removes it."""
    proc, leftover = start_long_generate(tmp_path)
    proc.kill()
    proc.communicate(timeout=60)
    assert leftover.is_dir() and not (tmp_path / "replay_logs").exists()
    again = generate(tmp_path)
    assert again.returncode == 0, again.stderr
    assert f"removed {leftover}, left by an interrupted job" in again.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1.tsv", "replay_logs"]


def test_help_names_units_and_rounding() -> None:
    text = " ".join(jowa("data", "generate", "--help").stdout.split())
    assert "steps_per_run: agent steps to play per run; a minimum: the episode in progress is played" in text
    assert "run id, 1 to 5" in text


def test_a_bug_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    import jowa.core.config

    def broken(args: object) -> None:
        raise KeyError("a bug")

    monkeypatch.setattr(jowa.core.config, "main", broken)
    with pytest.raises(KeyError, match="a bug"):
        cli.main(["check-params"])

    def bad_input(args: object) -> None:
        raise JowaError("bad input")

    monkeypatch.setattr(jowa.core.config, "main", bad_input)
    assert cli.main(["check-params"]) == 1


def test_check_params_names_the_file_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "p.yaml"
    bad.write_text((ROOT / "config" / "smoke.yaml").read_text().replace("seed: 0", "seed: -1", 1))
    proc = jowa("check-params", str(bad))
    assert proc.returncode == 1
    assert f"{bad} is invalid" in proc.stderr
    assert "data.generate.seed: Input should be greater than or equal to 0 (got -1)" in proc.stderr
    assert jowa("check-params", str(ROOT / "params.yaml")).returncode == 0


FIXTURE = Path(__file__).resolve().parent / "reference" / "tiny_fixture"


def test_import_reference_world_and_tokenizer(tmp_path: Path) -> None:
    import json

    import numpy as np
    import torch

    from jowa.weights.checkpoints import load_model
    from jowa.weights.tokenizer_checkpoints import load_tokenizer

    spec = json.loads((FIXTURE / "tiny_fixture.json").read_text())
    arch = {"layers": 2, "heads": 2, "width": 64, "q_hidden": 32, "q_ensemble": 2}
    world = jowa(
        "checkpoint", "import-reference", "--kind", "world", "--input", str(FIXTURE / "tiny_jowa_state.npz"),
        "--arch", json.dumps(arch), "--out", str(tmp_path / "model.safetensors"),
    )  # fmt: skip
    assert world.returncode == 0, world.stderr
    tok = jowa(
        "checkpoint", "import-reference", "--kind", "tokenizer", "--input",
        str(FIXTURE / "tiny_tokenizer_state.npz"), "--tokenizer-config", json.dumps(spec["tokenizer"]),
        "--out", str(tmp_path / "tokenizer.safetensors"),
    )  # fmt: skip
    assert tok.returncode == 0, tok.stderr

    io = np.load(FIXTURE / "tiny_io.npz")
    model, meta = load_model(tmp_path / "model.safetensors")
    assert meta["arch"] == arch
    with torch.no_grad():
        out = model.eval()(torch.from_numpy(io["tokens"]), torch.from_numpy(io["tasks"]))
    torch.testing.assert_close(
        out.reward_logits, torch.from_numpy(io["logits_rewards"]), rtol=1e-4, atol=1e-5
    )
    tokenizer, _ = load_tokenizer(tmp_path / "tokenizer.safetensors")
    tokens = tokenizer.eval().encode(torch.from_numpy(io["frames"]))
    assert torch.equal(tokens, torch.from_numpy(io["frame_tokens"]))

    wrong = jowa(
        "checkpoint", "import-reference", "--kind", "world", "--input", str(FIXTURE / "tiny_jowa_state.npz"),
        "--arch", "40M", "--out", str(tmp_path / "wrong.safetensors"),
    )  # fmt: skip
    assert wrong.returncode == 1 and "wrong shape" in wrong.stderr and "transformer.blocks" in wrong.stderr
    assert not (tmp_path / "wrong.safetensors").exists()


def test_import_reference_reports_a_corrupt_file_or_a_bad_arch_in_one_line(tmp_path: Path) -> None:
    corrupt = tmp_path / "JOWA_150M.pt"
    corrupt.write_bytes(b"PK\x03\x04 not really a torch zip file")
    proc = jowa(
        "checkpoint",
        "import-reference",
        "--kind",
        "world",
        "--input",
        str(corrupt),
        "--out",
        str(tmp_path / "o"),
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"jowa checkpoint import-reference: error: {corrupt}" in proc.stderr
    bad_arch = jowa(
        "checkpoint", "import-reference", "--kind", "world", "--input", str(corrupt), "--arch", "{layers: 2}",
        "--out", str(tmp_path / "o"),
    )  # fmt: skip
    assert bad_arch.returncode == 2 and "--arch: not valid JSON" in bad_arch.stderr
    assert not (tmp_path / "o").exists()
