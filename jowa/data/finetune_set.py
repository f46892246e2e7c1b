"""`jowa data finetune-set`: a held-out game's training store of one data quality.

A quality is a window over a run's checkpoint files (expert = the last 20% of them): whole episodes
whose first step lies in the window are drawn as `jowa data subsample` draws them.
"""

from __future__ import annotations

import argparse

from jowa.core.config import (
    FinetuneDataParams,
    ParamsError,
    QualityName,
    argument_type,
    params_help,
    parse_section,
)
from jowa.data.subsample import add_store_arguments, build_store_from_args


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", required=True, help=params_help(FinetuneDataParams, "finetune_data"))
    parser.add_argument(
        "--quality",
        type=argument_type(QualityName, "quality"),
        required=True,
        help="a key of the section's qualities (expert, suboptimal, ...)",
    )
    add_store_arguments(parser)


def main(args: argparse.Namespace) -> None:
    params = parse_section(args.params, FinetuneDataParams, "finetune_data")
    if args.quality not in params.qualities:
        raise ParamsError(
            f"--quality {args.quality!r}: finetune_data.qualities has only {', '.join(params.qualities)}"
        )
    build_store_from_args(
        args,
        transitions_per_game=params.transitions_per_game,
        seed=params.seed,
        window=params.qualities[args.quality],
        window_name=f"the window finetune_data.qualities.{args.quality}",
        extra_meta={"split": "finetune", "quality": args.quality},
    )
