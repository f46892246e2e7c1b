"""The `jowa` command: one subcommand per workflow stage. Thin: parse, call the library, report.

Snakemake rules call these with every setting spelled out on the command line (filled in from
params.yaml through the rule's `params:`), so the rule's params trigger sees every value that matters.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

from jowa import games
from jowa.config import ParamsError, load_params
from jowa.data.dopamine_format import ReplayFormatError


def replay_dir(root: Path, game: str, run: int) -> Path:
    """Where a run's checkpoint files live: `{root}/{Game}/{run}/replay_logs` (the bucket's layout)."""
    return root / game / str(run) / "replay_logs"


def manifest_path(root: Path, game: str, run: int) -> Path:
    return root / game / f"{run}.tsv"


def run_seed(seed: int, game: str, run: int) -> int:
    """A distinct, reproducible seed for each generated (game, run)."""
    return int(np.random.SeedSequence([seed, games.task_id(game), run]).generate_state(1)[0])


def cmd_download(args: argparse.Namespace) -> None:
    from jowa.data.download import download_run

    download_run(args.source, args.game, args.run, args.out, args.manifest, progress=not args.quiet)


def cmd_generate(args: argparse.Namespace) -> None:
    from jowa.data.download import write_manifest
    from jowa.data.generate import generate_run

    summary = generate_run(
        args.game,
        args.out,
        steps=args.steps,
        capacity=args.capacity,
        seed=run_seed(args.seed, args.game, args.run),
        sticky_actions=args.sticky_actions,
        max_episode_steps=args.max_episode_steps,
        progress=not args.quiet,
    )
    args.manifest.parent.mkdir(parents=True, exist_ok=True)
    write_manifest(args.out, args.manifest)
    logging.info("generated %s", summary)


def _store_inputs(args: argparse.Namespace) -> tuple[dict[int, Path], dict[int, Path]]:
    dirs = {run: replay_dir(args.replay_root, args.game, run) for run in args.runs}
    manifests = {run: manifest_path(args.manifest_root, args.game, run) for run in args.runs}
    for path in manifests.values():
        if not path.is_file():
            raise FileNotFoundError(f"{path}: manifest missing; download or generate the run first")
    return dirs, manifests


def _build_store(args: argparse.Namespace, window: tuple[float, float], extra_meta: dict) -> None:
    from jowa.data.subsample import build_store

    dirs, manifests = _store_inputs(args)
    meta = build_store(
        game=args.game,
        replay_dirs=dirs,
        manifests=manifests,
        out=args.out,
        transitions=args.transitions,
        seed=args.seed,
        segment_length=args.segment_length,
        segment_stride=args.segment_stride,
        window=window,
        extra_meta=extra_meta,
        progress=not args.quiet,
    )
    logging.info(
        "%s: %d transitions, %d episodes, %d segments",
        args.out,
        *(meta[k] for k in ("transitions", "episodes", "segments")),
    )


def cmd_subsample(args: argparse.Namespace) -> None:
    _build_store(args, (0.0, 1.0), {"split": "pretrain"})


def cmd_finetune_set(args: argparse.Namespace) -> None:
    _build_store(args, tuple(args.window), {"split": "finetune", "quality": args.quality})


def cmd_import_reference(args: argparse.Namespace) -> None:
    from jowa import checkpoints
    from jowa.models.tokenizer import load_state_file

    state = load_state_file(args.input)
    meta = {"imported_from": str(args.input)}
    if args.kind == "tokenizer":
        config = json.loads(args.tokenizer_config) if args.tokenizer_config else {}
        tokenizer = checkpoints.tokenizer_from_reference(state, config)
        checkpoints.save_tokenizer(args.out, tokenizer, meta)
    else:
        arch = json.loads(args.arch) if args.arch.lstrip().startswith("{") else args.arch
        model = checkpoints.from_reference(state, arch)
        checkpoints.save_model(args.out, model, model.config, {**meta, "arch": arch})
        counts = checkpoints.count_parameters(model)
        logging.info(
            "JOWA %s: %d parameters (%d trainable)", arch, counts["jowa_module"], counts["jowa_trainable"]
        )
    logging.info("wrote %s", args.out)


def cmd_check_params(args: argparse.Namespace) -> None:
    params = load_params(args.path)
    print(
        f"{args.path}: valid ({len(params.pretrain_games)} pretraining games, "
        f"{len(params.finetune_games)} held-out, source {params.data.source})"
    )


def _add_store_args(p: argparse.ArgumentParser, segment_stride_help: str) -> None:
    p.add_argument("--game", required=True)
    p.add_argument("--runs", type=int, nargs="+", required=True, help="runs to sample from")
    p.add_argument("--replay-root", type=Path, required=True, help="holds {Game}/{run}/replay_logs")
    p.add_argument("--manifest-root", type=Path, required=True, help="holds {Game}/{run}.tsv")
    p.add_argument("--out", type=Path, required=True, help="store directory to create")
    p.add_argument("--transitions", type=int, required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--segment-length", type=int, required=True)
    p.add_argument("--segment-stride", type=int, required=True, help=segment_stride_help)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jowa", description=__doc__.splitlines()[0])
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    top = parser.add_subparsers(dest="command", required=True)

    check = top.add_parser("check-params", help="validate a params file")
    check.add_argument("path", type=Path, nargs="?", default=Path("params.yaml"))
    check.set_defaults(func=cmd_check_params)

    ckpt = top.add_parser("checkpoint", help="checkpoint tools").add_subparsers(dest="stage", required=True)
    p = ckpt.add_parser(
        "import-reference", help="convert a reference-layout JOWA or tokenizer state dict to our format"
    )
    p.add_argument("--kind", choices=("world", "tokenizer"), required=True)
    p.add_argument(
        "--input", type=Path, required=True, help=".pt (torch.save state dict), .safetensors or .npz"
    )
    p.add_argument("--out", type=Path, required=True, help="our .safetensors checkpoint to write")
    p.add_argument(
        "--arch", default="150M", help='size name (40M, 70M, 150M) or a JSON mapping {"layers", ...}'
    )
    p.add_argument("--tokenizer-config", help="JSON tokenizer config (default: the paper's)")
    p.set_defaults(func=cmd_import_reference)

    data = top.add_parser("data", help="the data phase").add_subparsers(dest="stage", required=True)

    p = data.add_parser("download", help="copy one run from a gsutil URL or a local mirror, with a manifest")
    p.add_argument("--source", required=True, help="gs://... prefix or local mirror directory")
    p.add_argument("--game", required=True)
    p.add_argument("--run", type=int, required=True)
    p.add_argument("--out", type=Path, required=True, help="the run's replay_logs directory to create")
    p.add_argument("--manifest", type=Path, required=True)
    p.set_defaults(func=cmd_download)

    p = data.add_parser("generate", help="play a game with ale-py and write a run in the DQN-Replay layout")
    p.add_argument("--game", required=True)
    p.add_argument("--run", type=int, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--capacity", type=int, required=True)
    p.add_argument("--sticky-actions", type=float, required=True)
    p.add_argument("--max-episode-steps", type=int, required=True)
    p.add_argument("--seed", type=int, required=True, help="base seed; each (game, run) derives its own")
    p.set_defaults(func=cmd_generate)

    p = data.add_parser("subsample", help="whole episodes of a pretraining game into a training store")
    _add_store_args(p, "a segment starts every this many steps (paper: 4)")
    p.set_defaults(func=cmd_subsample)

    p = data.add_parser("finetune-set", help="a held-out game's fine-tuning store of one data quality")
    _add_store_args(p, "a segment starts every this many steps (paper: 1)")
    p.add_argument("--quality", required=True)
    p.add_argument("--window", type=float, nargs=2, required=True, metavar=("START", "END"))
    p.set_defaults(func=cmd_finetune_set)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        if hasattr(args, "game"):
            games.check_game(args.game)
        args.func(args)
    except (ParamsError, ReplayFormatError, FileNotFoundError, ValueError, RuntimeError) as exc:
        print(
            f"jowa {args.command} {getattr(args, 'stage', '')}: error: {exc}".replace("  ", " "),
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
