"""``riir train``, ``riir evaluate`` and ``riir experiment``: the training module's commands.

Only argparse here; torch and the training code are imported when a command runs, so
``riir --help`` stays instant.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from pathlib import Path
from typing import Any

EXPERIMENT_NAMES = ("data-fraction", "hidden-states", "inner-loss", "inputs", "steps")
# The data sources of model/training/datasets.py (not imported: it pulls in SimpleITK).
DATA_KINDS = ("folder", "acdc", "series", "brain", "qmri")


def _key_value(text: str) -> tuple[str, Any]:
    """``key=value`` with a JSON value when it parses as one (numbers, lists, true/false)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected key=value, not '{text}'")
    key, value = text.split("=", 1)
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


def _minutes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of minutes, not '{text}'")
    return value


def _bit(text: str) -> bool:
    if text not in ("0", "1"):
        raise argparse.ArgumentTypeError(f"expected 0 or 1, not '{text}'")
    return text == "1"


def _data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", metavar="PATH",
                   help="the data: a folder with img/ (+ label/) NIfTI images (folder), the "
                        "ACDC .h5 folder (acdc), a 4-D NIfTI series or a folder of them "
                        "(series), the SynthSeg label-map folder (brain), or molli / msasha "
                        "for simulated series with known motion (qmri)")
    p.add_argument("--data-kind", choices=DATA_KINDS,
                   help="how to read --data (default: folder)")
    p.add_argument("--split-seed", type=int, help="seed of the subject split (default 0)")
    p.add_argument("--data-option", type=_key_value, action="append", metavar="KEY=VALUE",
                   help="a keyword argument of the data source, e.g. cache_dir=runs/cache "
                        "or contrast=t1 (brain), test_fraction=0.25, series=8 or "
                        "motion_mm=12 (qmri)")


def add_train_options(p: argparse.ArgumentParser) -> None:
    """Every paper setting as a flag; defaults None so a config file can supply them."""
    p.add_argument("--config", type=Path, metavar="FILE",
                   help="JSON or YAML file of settings (the names of TrainConfig); flags given "
                        "on the command line override it")
    _data_options(p)
    g = p.add_argument_group("data for training")
    g.add_argument("--fraction", type=float,
                   help="share of the training subjects used, e.g. 0.05 (the held-out test "
                        "split does not change) (default 1)")
    g.add_argument("--unlabelled", action="append", metavar="DIR",
                   help="folder of extra unlabelled images for unsupervised training (folder "
                        "data; repeatable)")
    g.add_argument("--crop", type=int, nargs="+", metavar="N",
                   help="train on random windows of this size (voxels of the working grid)")
    g.add_argument("--spacing-mm", type=float,
                   help="working-grid spacing in mm, stored for inference (default: the fixed "
                        "image's own)")
    g.add_argument("--max-voxels", type=int, help="voxel budget of the working grid")
    g = p.add_argument_group("model")
    g.add_argument("--arch", choices=("riir", "voxelmorph", "gradirn"),
                   help="architecture (default riir)")
    g.add_argument("-T", "--recurrent-steps", dest="steps", type=int, metavar="T",
                   help="RIIR's recurrent steps T (default 6)")
    g.add_argument("--hidden-channels", type=int, nargs=2, metavar=("C1", "C2"),
                   help="RIIR's hidden channels (default 16 16)")
    g.add_argument("--hidden-states", type=_bit, nargs=2, metavar=("H1", "H2"),
                   help="RIIR's hidden states on (1) or off (0), e.g. 1 0 (default 1 1)")
    g.add_argument("--inputs",
                   choices=("gradient", "explicit", "implicit", "gradient+explicit"),
                   help="RIIR's input composition: gradient [phi, ∇L] (default), explicit "
                        "[phi, I_mov∘phi, I_fix], implicit [phi, I_mov, I_fix], or "
                        "gradient+explicit, both (a gradient model grows into it with --init)")
    g.add_argument("--inner-loss", choices=("mse", "ncc", "nmi"),
                   help="similarity whose gradient drives RIIR / GraDIRN (default mse)")
    g.add_argument("--cell-stride", type=int, help="RIIR cell grid stride (default 1)")
    g.add_argument("--gru-kernel", type=int, help="RIIR ConvGRU kernel size (default 3)")
    g.add_argument("--upsampling", choices=("linear", "convex"),
                   help="how a coarse cell's field returns to the image grid: linear "
                        "interpolation (default) or a learned convex combination (RAFT's), "
                        "which starts as linear, so a linear model grows into it with --init")
    g.add_argument("--second-order", action=argparse.BooleanOptionalAction, default=None,
                   help="meta-gradient through ∇L_inner (default: first order)")
    g.add_argument("--init", metavar="NAME|PATH",
                   help="start from a shipped model or a checkpoint instead of random weights: "
                        "its architecture, with the model flags given here overriding it; a "
                        "larger --gru-kernel, more --hidden-channels or --upsampling convex "
                        "grows from its trained weights, starting from the same function "
                        "(fine-tuning)")
    g.add_argument("--model-option", type=_key_value, action="append", metavar="KEY=VALUE",
                   help="any other field of the architecture's config, e.g. encoder=[16,32]")
    g = p.add_argument_group("outer loss")
    g.add_argument("--similarity", choices=("mse", "ncc", "nmi"),
                   help="outer-loss similarity (default mse)")
    g.add_argument("--weights", choices=("uniform", "exponential"),
                   help="step weights w_t (default exponential)")
    g.add_argument("--lam", type=float, help="λ of the diffusion regulariser (default 0.05)")
    g.add_argument("--dice-weight", type=float,
                   help="weight of a soft-Dice label term (default 0: unsupervised)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--lr", type=float, help="Adam learning rate (default 8e-4)")
    g.add_argument("--batch-size", type=int, help="pairs per iteration (default 1)")
    g.add_argument("--iterations", "--steps", dest="iterations", type=int, metavar="N",
                   help="training iterations (default 1000)")
    g.add_argument("--seed", type=int, help="seed of initialisation and pair draws (default 0)")
    g.add_argument("--checkpoint-every", type=int, metavar="N", help="default 100")
    g.add_argument("--validate-every", type=int, metavar="N", help="default 100")
    g.add_argument("--val-pairs", type=int, metavar="N", help="validation pairs (default 8)")
    g.add_argument("--device", help="auto | cpu | cuda (default auto: CUDA when present)")
    g.add_argument("--threads", type=int, help="CPU threads for torch")
    g = p.add_argument_group("result")
    g.add_argument("--name", help="model name stored in the checkpoint")
    g.add_argument("--version", dest="model_version", help="model version (default 0.1.0)")
    g.add_argument("--description", help="one line for the model card")
    g.add_argument("--tensorboard", action="store_true", default=None,
                   help="also log to OUT/tensorboard (needs tensorboard)")
    g.add_argument("--best-max-std-log-jacobian", type=float, metavar="S",
                   help="best.pt only from validations with std log|J| <= S (default: any); "
                        "label supervision can buy Dice with a rough field")
    g.add_argument("--best-by", choices=("dice", "epe"),
                   help="what makes best.pt best: the highest validation Dice (default) or, "
                        "on simulated series (--data-kind qmri), the lowest end-point error")
    g.add_argument("--best-max-folding", type=float, metavar="PERCENT",
                   help="best.pt only from validations with at most PERCENT %% folding "
                        "voxels (default: any)")


TRAIN_FLAGS = {  # argparse dest -> TrainConfig field
    "data": "data", "data_kind": "data_kind", "split_seed": "split_seed",
    "fraction": "fraction", "unlabelled": "unlabelled", "crop": "crop",
    "spacing_mm": "spacing_mm", "max_voxels": "max_voxels", "arch": "arch", "steps": "steps",
    "hidden_channels": "hidden_channels", "hidden_states": "hidden_states", "inputs": "inputs",
    "inner_loss": "inner_loss", "cell_stride": "cell_stride", "gru_kernel": "gru_kernel",
    "upsampling": "upsampling",
    "second_order": "second_order", "similarity": "similarity", "weights": "weights",
    "lam": "lam", "dice_weight": "dice_weight", "lr": "lr", "batch_size": "batch_size",
    "iterations": "iterations", "seed": "seed", "checkpoint_every": "checkpoint_every",
    "validate_every": "validate_every", "val_pairs": "val_pairs", "device": "device",
    "threads": "threads", "name": "name", "model_version": "version",
    "description": "description", "tensorboard": "tensorboard",
    "best_max_std_log_jacobian": "best_max_std_log_jacobian",
    "best_max_folding": "best_max_folding_percent", "init": "init",
    "best_by": "best_by",
}


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train", help="train a registration model (RIIR or a baseline)",
        description="Train RIIR, VoxelMorph or GraDIRN on a dataset and write OUT/checkpoint.pt "
                    "(usable with 'riir register --model'), OUT/best.pt, OUT/log.csv and "
                    "OUT/config.json. Every paper setting is a flag or a config-file entry.")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="run folder")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in OUT from its last checkpoint (its config.json; "
                        "flags given here override it, e.g. --iterations to train longer)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--time-limit", type=_minutes, metavar="MINUTES",
                   help="stop after this many minutes of training (this call's, not the "
                        "run's), with a validation and a checkpoint at the last iteration; "
                        "--resume continues it")
    add_train_options(p)
    p.set_defaults(run=run_train)

    p = subparsers.add_parser(
        "evaluate", help="score models, ANTs SyN or no registration on a dataset split",
        description="Register the fixed pairs of a split with each method and write "
                    "OUT/pairs.csv, OUT/summary.csv, OUT/summary.md (Dice, HD95, std log|J|, "
                    "% folding, seconds per pair) and OUT/dice.png.")
    p.add_argument("--out", type=Path, required=True, metavar="DIR")
    _data_options(p)
    p.add_argument("--split", default="test", choices=("train", "val", "test"),
                   help="which split's pairs (default test)")
    p.add_argument("--pairs", type=int, metavar="N", help="at most N pairs (seeded choice)")
    p.add_argument("--pair-seed", type=int, default=0, help="seed of the pair choice")
    p.add_argument("--direction", default="ES->ED", choices=("ES->ED", "ED->ES"),
                   help="ACDC: moving->fixed phase (default ES->ED)")
    p.add_argument("--model", action="append", default=[], metavar="[LABEL=]NAME|PATH",
                   help="a shipped model or a checkpoint (repeatable)")
    p.add_argument("--identity", action="store_true", help="add the no-registration row")
    p.add_argument("--ants", action="store_true", help="add ANTs SyN (needs antspyx)")
    p.add_argument("--steps", type=int, metavar="T", help="override the models' T")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    p.add_argument("--title", default="", help="title of the table and plot")
    p.add_argument("--ship", type=Path, metavar="WEIGHTS_DIR",
                   help="copy the first --model into WEIGHTS_DIR as NAME.pt with its model "
                        "card (NAME.json, NAME.md) holding these results")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(run=run_evaluate)

    p = subparsers.add_parser(
        "experiment", help="run one of the paper's experiments (train + evaluate variants)",
        description="Train every variant of an experiment of the RIIR paper with the same base "
                    "settings, evaluate each on the test split, and write OUT/results.csv, "
                    "OUT/results.md and OUT/results.png. Interrupted runs resume; finished "
                    "variants are not redone.")
    p.add_argument("experiment", choices=EXPERIMENT_NAMES)
    p.add_argument("--out", type=Path, required=True, metavar="DIR")
    p.add_argument("--values", nargs="+", metavar="V",
                   help="the variants to run (default: all of the experiment's), e.g. "
                        "fractions 0.05 1, T values 2 6 10, losses mse nmi")
    p.add_argument("--archs", nargs="+", choices=("riir", "voxelmorph", "gradirn"),
                   help="data-fraction: the architectures (default all three)")
    p.add_argument("--pairs", type=int, metavar="N", help="test pairs per variant")
    p.add_argument("--quiet", action="store_true")
    add_train_options(p)
    p.set_defaults(run=run_experiment)


def train_settings(args: argparse.Namespace, base: dict[str, Any] | None = None
                   ) -> dict[str, Any]:
    """TrainConfig values: ``base`` < config file < explicit flags."""
    from model.training.train import load_config

    values = dict(base or {})
    if getattr(args, "config", None) is not None:
        values.update(load_config(args.config))
    for dest, name in TRAIN_FLAGS.items():
        value = getattr(args, dest, None)
        if value is not None:
            values[name] = value
    if getattr(args, "model_option", None):
        values["model"] = {**values.get("model", {}), **dict(args.model_option)}
    if getattr(args, "data_option", None):
        values["data_options"] = {**values.get("data_options", {}), **dict(args.data_option)}
    return values


def _command_line(args: argparse.Namespace) -> str:
    """The command as typed; ``riir COMMAND (in-process)`` when called from Python."""
    if sys.argv and Path(sys.argv[0]).name == "riir":
        return shlex.join(["riir", *sys.argv[1:]])
    return f"riir {args.command} (in-process)"


def run_train(args: argparse.Namespace) -> int:
    from model.training.train import TrainConfig, train
    from riir.errors import InputError

    base = None
    if args.resume:
        if args.init:
            raise InputError("--init starts a new run from a model's weights; --resume "
                             "continues the run in --out from its checkpoint: give one")
        saved = args.out / "config.json"
        if not saved.is_file():
            raise InputError(f"nothing to resume in '{args.out}' (no config.json)")
        base = json.loads(saved.read_text())
    cfg = TrainConfig.from_dict(train_settings(args, base))
    limit = None if args.time_limit is None else 60.0 * args.time_limit
    final = train(cfg, args.out, resume=args.resume, command=_command_line(args),
                  progress=not args.quiet, time_limit_s=limit)
    print(f"trained {cfg.name} ({cfg.arch}) for {final['iterations']} iterations in "
          f"{final['seconds']:.0f} s; " + ", ".join(
              f"{k} {v:.4f}" for k, v in final.items() if k.startswith("val_")))
    print(f"checkpoint: {args.out / 'checkpoint.pt'}")
    if final["time_limited"]:
        print(f"stopped by --time-limit before iteration {cfg.iterations}; continue with: "
              f"riir train --out {shlex.quote(str(args.out))} --resume")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from model.training import evaluate as ev
    from model.training.datasets import open_source

    if not args.data:
        from riir.errors import InputError

        raise InputError("no evaluation data given (--data PATH)")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    options = dict(args.data_option or [])
    source = open_source(args.data_kind or "folder", args.data, split_seed=args.split_seed,
                         **options)
    pair_options = {"direction": args.direction} if source.description["kind"] == "acdc" else {}
    pairs = source.pairs(args.split, args.pairs, seed=args.pair_seed, **pair_options)
    methods = []
    for spec in args.model:
        label, _, path = spec.rpartition("=") if "=" in spec else (None, "", spec)
        methods.append(ev.model_method(path, label or None, args.device, args.steps))
    if args.identity:
        methods.append(ev.identity_method())
    if args.ants:
        methods.append(ev.ants_method())
    if not methods:
        from riir.errors import InputError

        raise InputError("nothing to evaluate: give --model, --identity or --ants")
    names = getattr(source, "LABELS", None)
    summary = ev.evaluate(methods, pairs, source.label_values, args.out, title=args.title,
                          label_names=names, progress=not args.quiet,
                          info={"split": args.split, "command": _command_line(args),
                                "data": source.description,
                                **({"direction": args.direction} if pair_options else {})})
    print((args.out / "summary.md").read_text())
    if args.ship is not None:
        if not args.model:
            from riir.errors import InputError

            raise InputError("--ship needs a --model to ship")
        shipped = ev.ship(methods[0].info["checkpoint"], args.out, args.ship, methods[0].name)
        print(f"shipped {shipped} with its model card")
    del summary
    return 0


def run_experiment(args: argparse.Namespace) -> int:
    from model.training.experiments import run

    results = run(args.experiment, train_settings(args), args.out, values=args.values,
                  archs=args.archs, pairs=args.pairs, progress=not args.quiet,
                  command=_command_line(args))
    print((args.out / "results.md").read_text())
    del results
    return 0
