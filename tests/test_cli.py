"""The `jowa` command reports bad input in one line that names it, with no traceback."""

from __future__ import annotations

import subprocess
from pathlib import Path


def jowa(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["jowa", *args], capture_output=True, text=True, timeout=120)


def test_unknown_game_is_named_with_a_suggestion(tmp_path: Path) -> None:
    proc = jowa(
        "data", "subsample", "--game", "Pacman", "--runs", "1", "--replay-root", str(tmp_path),
        "--manifest-root", str(tmp_path), "--out", str(tmp_path / "out"), "--transitions", "10",
        "--seed", "0", "--segment-length", "8", "--segment-stride", "4",
    )  # fmt: skip
    assert proc.returncode == 1
    assert "unknown game 'Pacman'; did you mean 'MsPacman'?" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_manifest_is_named(tmp_path: Path) -> None:
    proc = jowa(
        "data", "subsample", "--game", "Pong", "--runs", "3", "--replay-root", str(tmp_path),
        "--manifest-root", str(tmp_path / "manifests"), "--out", str(tmp_path / "out"),
        "--transitions", "10", "--seed", "0", "--segment-length", "8", "--segment-stride", "4",
    )  # fmt: skip
    assert proc.returncode == 1
    assert f"{tmp_path / 'manifests' / 'Pong' / '3.tsv'}: manifest missing" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_check_params_names_the_file_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "p.yaml"
    root = Path(__file__).resolve().parents[1]
    bad.write_text((root / "config" / "smoke.yaml").read_text().replace("seed: 0", "seed: -1", 1))
    proc = jowa("check-params", str(bad))
    assert proc.returncode == 1
    assert (
        f"{bad} is invalid" in proc.stderr
        and "data.generate.seed: -1 is less than the minimum" in proc.stderr
    )
    assert jowa("check-params", str(root / "params.yaml")).returncode == 0


FIXTURE = Path(__file__).resolve().parent / "reference" / "tiny_fixture"


def test_import_reference_world_and_tokenizer(tmp_path: Path) -> None:
    import json

    import numpy as np
    import torch

    from jowa.checkpoints import load_model, load_tokenizer

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
