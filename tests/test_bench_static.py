"""`benchmarks/train_step.py` times static-shape graphs only (issue 19): after a batch change, Dynamo
compiles the new batch afresh instead of a graph with a symbolic batch dimension that `jowa pretrain`
never runs. Dynamo logs every symbol it creates; none may appear."""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from jowa.core.config import load_params
from jowa.train.runtime import Runtime

ROOT = Path(__file__).resolve().parent.parent


def load_benchmark():  # noqa: ANN201 - a module loaded from its path
    spec = importlib.util.spec_from_file_location("train_step_bench", ROOT / "benchmarks" / "train_step.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def symbols() -> Iterator[list[str]]:
    """The symbols Dynamo creates for dynamic shapes while the test runs."""
    torch._logging.set_logs(dynamic=logging.INFO)
    handler = Collect()
    logger = logging.getLogger("torch.fx.experimental.symbolic_shapes")
    logger.addHandler(handler)
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)
        torch._logging.set_logs()
        torch._dynamo.reset()


@pytest.mark.slow
def test_each_benchmark_point_compiles_a_static_graph(
    symbols: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Shapes are Dynamo's, decided before any backend runs: the eager backend keeps them and skips
    # Inductor's C++ build (most of a minute on a fresh machine's empty cache)
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: compile_(model, **kw, backend="eager"))
    bench = load_benchmark()
    params = load_params(ROOT / "config" / "smoke.yaml")
    rt = Runtime(torch.device("cpu"), 0, 1, "fp32", compile=True)
    args = argparse.Namespace(warmup=1, repeats=1, peak_tflops=989.0)
    records = [bench.bench_step(args, params, rt, "tiny-s", batch) for batch in (2, 4)]
    assert [r["batch"] for r in records] == [2, 4] and all(r["samples_per_s"] > 0 for r in records)
    created = [message for message in symbols if "create_symbol" in message]
    assert not created, created[:3]
