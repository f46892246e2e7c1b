"""`jowa tokenize` over several chunks: the read-ahead pipeline writes every chunk's tokens to its rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from jowa.cli import main as jowa_main
from jowa.core.config import load_params
from jowa.data.store import TrainingStore
from jowa.data.token_stores import write_token_store
from jowa.models.tokenizer import Tokenizer
from jowa.train.train_tokenizer import tokenizer_config
from jowa.weights.tokenizer_checkpoints import save_tokenizer

ROOT = Path(__file__).resolve().parent.parent


def test_tokens_of_every_chunk_land_on_their_rows(tmp_path: Path) -> None:
    store_dir, _ = write_token_store(tmp_path / "store", 300, 0)
    frames = np.load(store_dir / "frames.npy", mmap_mode="r+")
    frames[:] = np.random.default_rng(0).integers(0, 256, frames.shape, dtype=np.uint8)
    frames.flush()
    torch.manual_seed(0)
    tokenizer = Tokenizer(tokenizer_config(load_params(ROOT / "config" / "smoke.yaml").tokenizer)).eval()
    save_tokenizer(tmp_path / "tokenizer.safetensors", tokenizer)
    out = tmp_path / "tokens.npy"
    args = ["tokenize", "--tokenizer", tmp_path / "tokenizer.safetensors", "--store", store_dir, "--out", out]
    assert jowa_main(["-q", *map(str, args), "--batch", "8", "--device", "cpu"]) == 0  # 3 chunks of 128
    tokens = np.load(out)
    store = TrainingStore.open(store_dir)
    with torch.no_grad():
        expected = tokenizer.encode(torch.from_numpy(np.array(store.frames)).unsqueeze(1).float() / 255)
    np.testing.assert_array_equal(tokens, expected.numpy())
    assert len(np.unique(tokens, axis=0)) > 1  # rows differ: a misplaced chunk would show
