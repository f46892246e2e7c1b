"""The saved state of an evaluation: written beside the output, resumed only by the job that wrote it.

The end-to-end resumes (SIGKILL, SIGTERM, a real `jowa evaluate` process) are in test_evaluate.py."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from jowa.planning.resume import ResumeFile, sigterm_deferred, state_path

JOB = {"sha256": {"model": "a" * 64, "tokenizer": "b" * 64}, "game": "Pong", "eval": {"seed": 0}}


def test_the_state_is_a_hidden_file_beside_the_output_and_comes_back_to_the_same_job(tmp_path: Path) -> None:
    out = tmp_path / "eval" / "Pong.json"
    resume = ResumeFile(out, JOB)
    assert resume.path == state_path(out) == tmp_path / "eval" / ".Pong.json.resume.pt"
    assert resume.load() is None
    resume.save({"step": 7, "payload": [1, 2]})
    assert sorted(p.name for p in resume.path.parent.iterdir()) == [".Pong.json.resume.pt"]  # no temp left
    assert ResumeFile(out, JOB).load()["payload"] == [1, 2]
    resume.remove()
    assert not resume.path.exists()


@pytest.mark.parametrize(
    ("other", "differs"),
    [({**JOB, "sha256": {**JOB["sha256"], "model": "c" * 64}}, "sha256"),
     ({**JOB, "game": "Breakout", "eval": {"seed": 1}}, "eval, game")],
)  # fmt: skip
def test_a_state_another_job_saved_is_ignored_naming_what_differs(
    tmp_path: Path, capsys: pytest.CaptureFixture, other: dict, differs: str
) -> None:
    out = tmp_path / "Pong.json"
    ResumeFile(out, JOB).save({"step": 7})
    assert ResumeFile(out, other).load() is None
    assert (
        f"saved by another evaluation (differs in {differs}); ignored, starting over"
        in capsys.readouterr().err
    )


def test_an_unreadable_state_is_ignored_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "Pong.json"
    state_path(out).write_bytes(b"not a torch file")
    assert ResumeFile(out, JOB).load() is None
    assert "unreadable saved evaluation state" in capsys.readouterr().err


def test_sigterm_inside_the_block_is_held_until_resent() -> None:
    """The evaluation loop's guard: SIGTERM only sets a flag; `resend` hands it to the previous handler."""
    received = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    try:
        with sigterm_deferred() as stop:
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop.requested and received == []
            stop.resend()
            assert received == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)
