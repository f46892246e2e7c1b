"""The package works from a wheel, outside the checkout: the schema ships as package data."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_wheel_validates_params_and_prints_its_schema(tmp_path: Path) -> None:
    source, dist = tmp_path / "source", tmp_path / "dist"  # built from a copy: no build/ in the checkout
    shutil.copytree(ROOT / "jowa", source / "jowa", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(dist), str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    site = tmp_path / "site"
    with zipfile.ZipFile(next(dist.glob("jowa_repro-*.whl"))) as wheel:
        wheel.extractall(site)
    assert (site / "jowa" / "params.schema.json").is_file()
    assert (
        len(list((site / "jowa" / "report" / "published_returns").glob("JOWA_*.json"))) == 3
    )  # `jowa report`
    work = tmp_path / "work"  # no checkout here: nothing can be read from the source tree
    work.mkdir()
    shutil.copy(ROOT / "params.yaml", work / "params.yaml")
    env = {**os.environ, "PYTHONPATH": str(site)}

    def jowa(*args: str) -> str:
        code = (
            "import sys, jowa.cli; assert jowa.__file__.startswith(sys.argv[1]); "
            "sys.exit(jowa.cli.main(sys.argv[2:]))"
        )
        proc = subprocess.run(
            [sys.executable, "-c", code, str(site), *args], cwd=work, env=env, capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    assert "params.yaml: valid (15 pretraining games" in jowa("check-params")
    assert json.loads(jowa("check-params", "--schema")) == json.loads(
        (site / "jowa" / "params.schema.json").read_text()
    )
