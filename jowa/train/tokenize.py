"""`jowa tokenize`: every frame of a store encoded into a token array beside it (uint16, N x 36).

World-model training then reads tokens only (36 x 2 bytes per step instead of 7056). Frames are read
in chunks from the memory-mapped store and encoded in batches, on the GPU when there is one (bf16
autocast there, as the reference's token cache; float32 on a CPU). On a GPU the next chunk is read
while the current one is encoded, and a chunk's tokens come back through pinned memory with one wait
per chunk, not one per batch. The array is filled in a `.partial`
file beside the output with a small progress record, so a killed job continues where it stopped; the
finished array is renamed into place.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from jowa.core.errors import MissingInputError
from jowa.data.loader import to_device
from jowa.data.store import TrainingStore
from jowa.models.tokenizer import Tokenizer
from jowa.train.run import sha256_file
from jowa.train.runtime import Runtime, runtime
from jowa.weights.tokenizer_checkpoints import load_tokenizer

TOKEN_DTYPE = np.uint16


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tokenizer", type=Path, required=True, help="a tokenizer .safetensors")
    parser.add_argument("--store", type=Path, required=True, help="the training store to encode")
    parser.add_argument("--out", type=Path, required=True, help="the .npy token array to write")
    parser.add_argument("--batch", type=int, default=1024, help="frames per encoder call (default 1024)")
    parser.add_argument("--device", help="torch device (default: the GPU if any, else the CPU)")


def load_tokens(path: Path | str, store: TrainingStore) -> np.ndarray:
    """A store's token array, memory-mapped, checked against the store."""
    path = Path(path)
    if not path.exists():
        raise MissingInputError(f"{path}: no token array; run `jowa tokenize` on {store.path}")
    tokens = np.load(path, mmap_mode="r")
    if tokens.dtype != TOKEN_DTYPE or tokens.ndim != 2 or len(tokens) != len(store):
        raise MissingInputError(
            f"{path}: tokens {tokens.dtype} {tokens.shape} do not fit {store.path} ({len(store)} steps); "
            "run `jowa tokenize` again"
        )
    return tokens


@dataclass
class Encoded:
    """A chunk's tokens on their way to the host: copied without blocking into pinned memory on a GPU;
    `wait` returns them once the copy is done (the only wait per chunk)."""

    start: int
    tokens: torch.Tensor
    ready: torch.cuda.Event | None

    def wait(self) -> np.ndarray:
        if self.ready is not None:
            self.ready.synchronize()
        return self.tokens.numpy().astype(TOKEN_DTYPE)


def encode_chunk(tokenizer: Tokenizer, frames: torch.Tensor, start: int, batch: int, rt: Runtime) -> Encoded:
    """Queue the encoding of `frames` (N, 84, 84) uint8 in batches; nothing waits for the GPU here."""
    parts = []
    for first in range(0, len(frames), batch):
        on_device = to_device(frames[first : first + batch], rt.device)
        with torch.no_grad(), rt.autocast():
            parts.append(tokenizer.encode(on_device.unsqueeze(1).float().div_(255)))
    encoded = torch.cat(parts)
    if not rt.on_gpu:
        return Encoded(start, encoded, None)
    host = torch.empty(encoded.shape, dtype=encoded.dtype, pin_memory=True)
    host.copy_(encoded, non_blocking=True)
    ready = torch.cuda.Event()
    ready.record()
    return Encoded(start, host, ready)


def main(args: argparse.Namespace) -> None:
    store = TrainingStore.open(args.store)
    partial = args.out.with_name(args.out.name + ".partial")
    progress = args.out.with_name(args.out.name + ".progress.json")
    with runtime(precision="bf16", compile=False, device=args.device) as rt:
        tokenizer, _ = load_tokenizer(args.tokenizer, rt.device)
        tokenizer.eval()
        identity = {"tokenizer": sha256_file(args.tokenizer), "store": store.meta, "steps": len(store)}
        done = 0
        if (
            partial.exists()
            and progress.exists()
            and json.loads(progress.read_text())["identity"] == identity
        ):
            done = json.loads(progress.read_text())["rows"]
            tokens = np.lib.format.open_memmap(partial, mode="r+")
        else:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            shape = (len(store), tokenizer.config.tokens_per_frame)
            tokens = np.lib.format.open_memmap(partial, mode="w+", dtype=TOKEN_DTYPE, shape=shape)
        bar = tqdm(total=len(store), initial=done, unit="frame", desc=f"tokenize {store.path.name}",
                   disable=args.quiet, mininterval=2.0)  # fmt: skip
        chunk = args.batch * 16  # rows committed at once: progress is recorded per chunk
        pending: Encoded | None = None
        while done < len(store) or pending is not None:
            launched = None
            if done < len(store):  # read the next chunk while the GPU encodes the pending one
                end = min(done + chunk, len(store))
                frames = torch.from_numpy(np.array(store.frames[done:end]))
                launched = encode_chunk(tokenizer, frames, done, args.batch, rt)
                done = end
            if pending is not None:
                tokens[pending.start : pending.start + len(pending.tokens)] = pending.wait()
                tokens.flush()
                progress.write_text(
                    json.dumps({"identity": identity, "rows": pending.start + len(pending.tokens)})
                )
                bar.update(len(pending.tokens))
            pending = launched
        bar.close()
        del tokens
        os.replace(partial, args.out)
        progress.unlink()
