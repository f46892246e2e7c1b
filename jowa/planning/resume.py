"""The saved state of an unfinished `jowa evaluate`, so that a killed or timed-out job resumes exactly.

The state lives in a hidden file beside the output JSON, `.{output name}.resume.pt`. It is not a
Snakemake output (only the JSON is), so Snakemake's cleanup of an interrupted job keeps it, and the same
command run again continues from it, as training runs continue from their `state.pt`. It is written
atomically every `checkpoint_every` agent steps and when SIGTERM arrives (`scancel`, a time limit), so a
SIGKILL loses at most `checkpoint_every` steps and a SIGTERM none. It records what identifies the job
(the model's and tokenizer's SHA-256, the game, the planner and every setting): a state another job left
is ignored with a message saying what differs, never resumed. Publishing the output deletes it.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from jowa.core.atomic import atomic_file
from jowa.weights.state_files import UNREADABLE, reason

#: Bumped when the saved layout changes, so that an old state is ignored rather than misread.
FORMAT = 1


def state_path(output: Path) -> Path:
    return output.with_name(f".{output.name}.resume.pt")


class ResumeFile:
    """The resumable state of the evaluation that writes `output`, tagged with the job's `fingerprint`."""

    def __init__(self, output: Path, fingerprint: Mapping[str, Any]) -> None:
        self.path = state_path(Path(output))
        self.fingerprint = {"format": FORMAT, **fingerprint}

    def say(self, message: str) -> None:
        """Resuming, or not, is said even under `jowa -q`: a log should show which run made a result."""
        tqdm.write(message, file=sys.stderr)

    def load(self) -> dict[str, Any] | None:
        """The saved state to continue from, or None: no state, or one this job must not resume."""
        if not self.path.exists():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=False)
            saved = state["fingerprint"]
        except (*UNREADABLE, KeyError, TypeError) as error:
            self.say(f"{self.path}: unreadable saved evaluation state ({reason(error)}); starting over")
            return None
        if saved != self.fingerprint:
            differ = sorted(k for k in {*saved, *self.fingerprint} if saved.get(k) != self.fingerprint.get(k))
            self.say(
                f"{self.path}: saved by another evaluation (differs in {', '.join(differ)}); "
                "ignored, starting over"
            )
            return None
        self.say(f"resuming the evaluation from agent step {state['step']} ({self.path})")
        return state

    def save(self, state: Mapping[str, Any]) -> None:
        """Write `state` atomically: a kill mid-write leaves the previous state intact."""
        with atomic_file(self.path) as tmp:
            torch.save({**state, "fingerprint": self.fingerprint}, tmp)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


class StopRequest:
    """Set when SIGTERM arrived inside `sigterm_deferred`; `resend` delivers it once the state is saved."""

    def __init__(self) -> None:
        self.requested = False
        self.previous: Any = None

    def resend(self) -> None:
        """Hand SIGTERM to the handler that was in place (`jowa`'s: exit 143 after its cleanup)."""
        signal.signal(signal.SIGTERM, signal.SIG_DFL if self.previous is None else self.previous)
        signal.raise_signal(signal.SIGTERM)


@contextmanager
def sigterm_deferred() -> Iterator[StopRequest]:
    """Inside the block SIGTERM only sets `requested`, so that the loop stops between two agent steps,
    where its state is whole, instead of wherever the signal lands (signals reach the main thread only)."""
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def request(signum: int, frame: object) -> None:
        stop.requested = True

    stop.previous = signal.signal(signal.SIGTERM, request)
    try:
        yield stop
    finally:
        if signal.getsignal(signal.SIGTERM) is request:
            signal.signal(signal.SIGTERM, stop.previous)
