"""`jowa checkpoint import-reference`: a reference-layout JOWA or tokenizer state dict -> our safetensors.

Released JOWA checkpoints are pickled `.pt` state dicts of the reference code; they are read once here
(`torch.load(weights_only=True)`, never a full unpickle), checked against the architecture named on the
command line, and written in our format, which the workflow alone reads.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from jowa.models.tokenizer_config import TokenizerConfig
from jowa.models.world_action import SIZES, JOWAConfig, count_parameters
from jowa.weights import checkpoints, tokenizer_checkpoints
from jowa.weights.state_files import CheckpointError, load_state_file

log = logging.getLogger(__name__)


def _arch(text: str) -> str | dict[str, Any]:
    """A size name or a JSON architecture mapping, checked by building its config."""
    arch = _json(text, "--arch") if text.lstrip().startswith("{") else text
    try:
        JOWAConfig.from_arch(arch)
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"--arch {text}: {exc}") from None
    return arch


def _tokenizer_config(text: str) -> TokenizerConfig:
    try:
        return TokenizerConfig.from_dict(_json(text, "--tokenizer-config"))
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"--tokenizer-config: {exc}") from None


def _json(text: str, option: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"{option}: not valid JSON ({exc})") from None


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kind", choices=("world", "tokenizer"), required=True, help="what the file holds")
    parser.add_argument(
        "--input", type=Path, required=True, help="a state dict: .pt (torch.save), .safetensors or .npz"
    )
    parser.add_argument("--out", type=Path, required=True, help="our .safetensors checkpoint to write")
    parser.add_argument(
        "--arch",
        type=_arch,
        default="150M",
        help=f"--kind world: a size name ({', '.join(SIZES)}) or a JSON mapping with layers, heads, width, "
        "q_hidden, q_ensemble (default: 150M)",
    )
    parser.add_argument(
        "--tokenizer-config",
        type=_tokenizer_config,
        default=TokenizerConfig(),
        help="--kind tokenizer: its JSON config, flat or the reference's {encoder_decoder: ...} layout "
        "(default: the paper's)",
    )


def main(args: argparse.Namespace) -> None:
    state = load_state_file(args.input)
    meta = {"imported_from": str(args.input)}
    try:
        if args.kind == "tokenizer":
            tokenizer_checkpoints.save_tokenizer(
                args.out, tokenizer_checkpoints.tokenizer_from_reference(state, args.tokenizer_config), meta
            )
        else:
            model = checkpoints.from_reference(state, args.arch)
            checkpoints.save_model(args.out, model, model.config, {**meta, "arch": args.arch})
            counts = count_parameters(model)
            log.info(
                "JOWA %s: %d parameters (%d trainable)",
                args.arch,
                counts["jowa_module"],
                counts["jowa_trainable"],
            )
    except CheckpointError as exc:
        raise CheckpointError(f"{args.input}: {exc}") from None
    log.info("wrote %s", args.out)
