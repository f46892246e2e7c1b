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
