"""``riir train``'s flags, generated from the settings' dataclasses.

Every field of ``TrainConfig`` and of the architectures' configs becomes a flag named after
it (``--hidden-channels``), typed by its annotation, with the help text and the extras that
``setting`` gave it (``choices``, ``metavar``, ``flags``: other names, or none). A new setting
is one line in its dataclass. Argument values land in ``args`` under ``train.NAME`` /
``model.NAME``, which ``settings`` turns back into a ``TrainConfig`` dict.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conventions.errors import InputError
from model.networks import architectures
from model.networks.configs import default_of
from model.training.config import ACDC_SLICES, TrainConfig

if TYPE_CHECKING:
    from model.training.datasets import PairSource, SubjectPair

TRAIN, MODEL = "train.", "model."
GROUPS = ("data", "data for training", "model", "outer loss", "optimisation", "result")


def _key_value(text: str) -> tuple[str, Any]:
    """``key=value`` with a JSON value when it parses as one (numbers, lists, true/false)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected key=value, not '{text}'")
    key, value = text.split("=", 1)
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


def _bit(text: str) -> bool:
    if text not in ("0", "1"):
        raise argparse.ArgumentTypeError(f"expected 0 or 1, not '{text}'")
    return text == "1"


def _kind(annotation: Any) -> tuple[Any, Any]:
    """(scalar type, nargs) of a field's annotation, ``Optional`` removed."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = args[0]
        args = list(typing.get_args(annotation))
    origin = typing.get_origin(annotation)
    if origin is tuple:
        fixed = Ellipsis not in args
        return args[0], len(args) if fixed else "+"
    if origin is list:
        return args[0], "+"
    if origin is dict:
        return dict, None
    return annotation, None


def _add(
    group: argparse._ArgumentGroup,
    f: dataclasses.Field[Any],
    annotation: Any,
    dest: str,
    default: Any,
    seen: set[str],
) -> None:
    meta = dict(f.metadata)
    names = [n for n in meta.pop("flags", ("--" + f.name.replace("_", "-"),)) if n not in seen]
    if not names:
        return
    seen.update(names)
    meta.pop("group", None)
    help_text = meta.pop("help")
    scalar, nargs = _kind(annotation)
    kwargs: dict[str, Any] = {
        "dest": dest,
        "default": None,
        "metavar": f.name.split("_")[-1].upper(),
        **meta,
    }
    if scalar is dict:
        kwargs.update(type=_key_value, action="append", metavar=meta.get("metavar", "KEY=VALUE"))
    elif meta.get("action") == "append":
        pass  # repeatable: one value per use
    elif scalar is bool and nargs is None:
        kwargs.update(action=argparse.BooleanOptionalAction)
    else:
        kwargs.update(type=_bit if scalar is bool else scalar)
        if nargs is not None:
            kwargs["nargs"] = nargs
    if kwargs.get("action") == argparse.BooleanOptionalAction or "choices" in meta:
        kwargs.pop("metavar", None)  # argparse shows the choices / --no- form itself
    shown = (
        default
        if not isinstance(default, tuple | list)
        else " ".join(str(int(v)) if isinstance(v, bool) else str(v) for v in default)
    )
    if default not in (None, "", (), [], False) and scalar is not dict:
        help_text += f" (default: {shown})"
    group.add_argument(*names, help=help_text.replace("%", "%%"), **kwargs)


def add_train_options(p: argparse.ArgumentParser) -> None:
    """Every training and architecture setting as a flag; defaults None so a config file or
    a resumed run's ``config.json`` can supply them."""
    p.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="JSON or YAML file of settings (the names of TrainConfig; the "
        "architecture's under 'model'); flags given here override it",
    )
    groups = {name: p.add_argument_group(name) for name in GROUPS}
    hints = typing.get_type_hints(TrainConfig)
    seen: set[str] = set()
    for f in dataclasses.fields(TrainConfig):
        group = f.metadata.get("group", "data for training")
        _add(groups[group], f, hints[f.name], TRAIN + f.name, default_of(f), seen)
    for arch in architectures.TRAINABLE:  # RIIR's first: a shared name takes its meaning
        config_cls = architectures.config_class(arch)
        hints = typing.get_type_hints(config_cls)
        for f in dataclasses.fields(config_cls):
            _add(groups["model"], f, hints[f.name], MODEL + f.name, default_of(f), seen)


def add_data_options(p: argparse.ArgumentParser) -> None:
    """The data flags alone (``riir evaluate``)."""
    group = p.add_argument_group("data")
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.metadata.get("group") == "data":
            _add(group, f, hints[f.name], TRAIN + f.name, default_of(f), set())


def add_pair_options(p: argparse.ArgumentParser, split: str = "test") -> None:
    """The flags that choose a dataset's pairs as ``riir evaluate`` draws them: the data
    flags, the split, how many, their seed and the ACDC direction. Benchmarks that score or
    inspect pairs take the same (``chosen_pairs``), so their pairs are evaluate's."""
    add_data_options(p)
    group = p.add_argument_group("pairs")
    group.add_argument(
        "--split",
        default=split,
        choices=("train", "val", "test"),
        help=f"which split's pairs (default {split})",
    )
    group.add_argument("--pairs", type=int, metavar="N", help="at most N pairs (seeded choice)")
    group.add_argument("--pair-seed", type=int, default=0, help="seed of the pair choice")
    group.add_argument(
        "--direction",
        default="ES->ED",
        choices=("ES->ED", "ED->ES"),
        help="ACDC: moving->fixed phase (default ES->ED)",
    )
    group.add_argument(
        "--slices",
        default=ACDC_SLICES[0],
        choices=ACDC_SLICES,
        help="ACDC: every slice labelled in both frames (labelled, the default), or only the "
        "mid-ventricular ones, where the RV, myocardium and LV all show in both (mid)",
    )


def chosen_pairs(args: argparse.Namespace) -> tuple[PairSource, list[SubjectPair]]:
    """The data source and the pairs that ``add_pair_options``' flags choose."""
    from model.training.datasets import open_source

    given = settings(args)
    if not given.get("data"):
        raise InputError("no data given (--data PATH)")
    source = open_source(
        given.get("data_kind", "folder"),
        given["data"],
        split_seed=given.get("split_seed", 0),
        **given.get("data_options", {}),
    )
    options = pair_options(args, source)
    return source, source.pairs(args.split, args.pairs, seed=args.pair_seed, **options)


def pair_options(args: argparse.Namespace, source: PairSource) -> dict[str, Any]:
    """What of ``add_pair_options``' flags the source's ``pairs`` takes beyond the split and
    count: the ACDC direction and slices, for ACDC only (what the evaluation also records)."""
    if source.description["kind"] != "acdc":
        return {}
    return {"direction": args.direction, "slices": args.slices}


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """The flags given, as TrainConfig values (``model`` holding the architecture's)."""
    values: dict[str, Any] = {}
    model: dict[str, Any] = {}
    for dest, value in vars(args).items():
        if value is None:
            continue
        if dest.startswith(TRAIN):
            name = dest.removeprefix(TRAIN)
            values[name] = dict(value) if name in ("model", "data_options") else value
        elif dest.startswith(MODEL):
            model[dest.removeprefix(MODEL)] = value
    model = {**values.pop("model", {}), **model}
    if model:
        values["model"] = model
    return values
