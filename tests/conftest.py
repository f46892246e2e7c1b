"""Shared test settings."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

# Minutes each where the rest take seconds: collected first, so that parallel workers (`make test`,
# `--dist loadfile --no-loadscope-reorder`) start them at once and run the other files beside them
LONG_FILES = ("test_pipeline.py", "test_slurm.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The long files first; tests marked `gpu` skip where CUDA is absent (CI, this machine), and
    `pytest -m gpu` selects them."""
    items.sort(key=lambda item: item.path.name not in LONG_FILES)  # stable: each file keeps its order
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread() -> Iterator[None]:
    """Test models are tiny and gain nothing from intra-op threads; on a busy 2-core machine OpenMP's
    spinning makes each small op many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
