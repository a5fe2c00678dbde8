"""The RIIR paper's experiments, one command each: train every variant, evaluate, tabulate.

- ``data-fraction``: RIIR, VoxelMorph and GraDIRN trained on 5, 10, 25, 50 and 100 % of the
  training subjects (the test split fixed);
- ``hidden-states``: RIIR with hidden states [0,0], [0,1], [1,0], [1,1];
- ``inner-loss``: the similarity whose gradient drives the cell, MSE, NCC or NMI (the outer
  loss stays the base setting's, so only the cell's input changes);
- ``inputs``: the cell's input, gradient [phi, ∇L], explicit [phi, I_mov∘phi, I_fix] or
  implicit [phi, I_mov, I_fix];
- ``steps``: T = 2 … 10 with exponential and uniform step weights.

Every variant is a ``riir train`` run in ``OUT/VARIANT`` from the same base settings plus its
own, evaluated on the test split by the inference engine (``evaluate.py``) into
``OUT/VARIANT/eval``. A finished variant is not redone and an interrupted one resumes, so the
command can be repeated until it completes. The summary is ``OUT/results.csv``,
``OUT/results.md`` and ``OUT/results.png``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

from conventions.errors import InputError
from conventions.options import SIMILARITIES
from model.networks import architectures
from model.training.config import TrainConfig, model_config, normalized
from model.training.datasets import SubjectPair
from model.training.train import load_source, train

FRACTIONS = (0.05, 0.1, 0.25, 0.5, 1.0)
DEFAULT_VALUES = {
    "hidden-states": ("00", "01", "10", "11"),
    "inner-loss": SIMILARITIES,
    "inputs": ("gradient", "explicit", "implicit"),
    "steps": ("2", "4", "6", "8", "10"),
}
# The row every other variant is compared with, pair by pair: the paper's claim (data
# efficiency against VoxelMorph on all the data) or the paper's default setting.
REFERENCES = {
    "data-fraction": "voxelmorph-100pct",
    "hidden-states": "h11",
    "inner-loss": "inner-mse",
    "inputs": "inputs-gradient",
    "steps": "T6-exp",
}


def variants(
    experiment: str,
    base: dict[str, Any],
    values: list[str] | None = None,
    archs: list[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Variant name -> the settings it adds to (or removes from) ``base``."""
    if experiment == "data-fraction":
        fractions = [float(v) for v in values] if values else list(FRACTIONS)
        out = {}
        for arch in archs or architectures.TRAINABLE:
            for f in fractions:
                out[f"{arch}-{_percent(f)}"] = {"arch": arch, "fraction": f}
        return out
    if experiment not in DEFAULT_VALUES:
        raise InputError(f"unknown experiment '{experiment}'")
    chosen = [str(v) for v in values] if values else list(DEFAULT_VALUES[experiment])
    if experiment == "hidden-states":
        for v in chosen:
            if len(v) != 2 or set(v) - {"0", "1"}:
                raise InputError(f"hidden states are given as 00, 01, 10 or 11; got '{v}'")
        return {f"h{v}": {"hidden_states": [c == "1" for c in v]} for v in chosen}
    if experiment == "inner-loss":
        return {f"inner-{v}": {"inner_loss": v} for v in chosen}
    if experiment == "inputs":
        return {f"inputs-{v}": {"inputs": v} for v in chosen}
    schemes = [base["weights"]] if base.get("weights") else ["exponential", "uniform"]
    return {f"T{int(v)}-{w[:3]}": {"steps": int(v), "weights": w} for w in schemes for v in chosen}


def _variant_settings(base: dict[str, Any], settings: dict[str, Any], name: str) -> dict[str, Any]:
    """The base settings with the variant's; a variant's architecture keeps only the base's
    model settings that it has (a baseline drops RIIR's own)."""
    values = normalized({**base, **settings, "name": f"{base['name']}-{name}"})
    arch = values.get("arch", "riir")
    own = {f.name for f in dataclasses.fields(architectures.config_class(arch))}
    model = {k: v for k, v in values.pop("model", {}).items() if k in own}
    values = {k: v for k, v in values.items() if v is not None}
    return {**values, "model": model} if model else values


def _percent(fraction: float) -> str:
    return f"{fraction * 100:g}pct"


def _trained_iterations(run: Path) -> int:
    state = run / "optimizer.pt"
    if not state.is_file():
        return 0
    import torch

    return int(torch.load(state, map_location="cpu", weights_only=True)["iteration"])


def run(
    experiment: str,
    base: dict[str, Any],
    out: str | os.PathLike,
    *,
    values: list[str] | None = None,
    archs: list[str] | None = None,
    pairs: int | None = None,
    progress: bool = True,
    command: str = "",
) -> list[dict[str, Any]]:
    from model.training import evaluate as ev

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base = dict(base)
    base.setdefault("name", experiment)
    plan = variants(experiment, base, values, archs)
    (out / "experiment.json").write_text(
        json.dumps(
            {"experiment": experiment, "base": base, "variants": plan, "command": command}, indent=2
        )
        + "\n"
    )
    rows = []
    test_pairs: list[SubjectPair] | None = None
    for name, settings in plan.items():
        cfg = TrainConfig.from_dict(_variant_settings(base, settings, name))
        run_dir = out / name
        source = load_source(cfg)
        _reuse_identical(cfg, run_dir, out.parent)
        done = _trained_iterations(run_dir)
        if done < cfg.iterations:
            train(cfg, run_dir, resume=done > 0, command=command, progress=progress, source=source)
        eval_dir = run_dir / "eval"
        if not (eval_dir / "evaluation.json").is_file() or _stale(eval_dir, run_dir):
            if test_pairs is None:  # the test split does not depend on the variant
                test_pairs = _test_pairs(source, pairs)
            ev.evaluate(
                [ev.model_method(str(run_dir / "checkpoint.pt"), name, cfg.device)],
                test_pairs,
                source.label_values,
                eval_dir,
                title=name,
                progress=progress,
                info={"split": "test", "command": command},
            )
        summary = json.loads((eval_dir / "evaluation.json").read_text())["summary"][0]
        training = json.loads((run_dir / "config.json").read_text())
        rows.append(
            {
                "variant": name,
                **{k: _plain(v) for k, v in settings.items() if v is not None},
                **{k: summary[k] for k in ev.VARIANT_COLUMNS},
                "iterations": training["iterations"],
                "train_seconds": _train_seconds(run_dir),
            }
        )
    _compare(rows, out, REFERENCES.get(experiment))
    _write_results(experiment, rows, out)
    return rows


def _resolved(values: dict[str, Any]) -> dict[str, Any]:
    """A run's settings with the architecture's defaults filled in, so that RIIR's default
    variant reads the same whether or not a setting was spelled out; identity fields dropped."""
    cfg = TrainConfig.from_dict(values)
    config_cls = architectures.config_class(cfg.arch)
    model = dataclasses.asdict(
        config_cls(
            **{k: tuple(v) if isinstance(v, list) else v for k, v in model_config(cfg, 2).items()}
        )
    )
    ignore = {"name", "description", "threads", "device", "version", "model"}
    return {**{k: v for k, v in dataclasses.asdict(cfg).items() if k not in ignore}, "model": model}


def _reuse_identical(cfg: TrainConfig, run_dir: Path, root: Path) -> None:
    """Variants shared between experiments (RIIR's defaults appear in every ablation) are
    trained once: a finished run with the same settings under ``root`` is copied."""
    import shutil

    if (run_dir / "checkpoint.pt").is_file():
        return
    wanted = _resolved(dataclasses.asdict(cfg))
    for config in sorted(root.glob("*/*/config.json")):
        other = config.parent
        if other == run_dir or _trained_iterations(other) < cfg.iterations:
            continue
        if _resolved(json.loads(config.read_text())) == wanted:
            shutil.copytree(
                other, run_dir, ignore=shutil.ignore_patterns("eval"), dirs_exist_ok=True
            )
            (run_dir / "REUSED_FROM").write_text(f"{other}\n")
            return


def _test_pairs(source: Any, count: int | None) -> list[SubjectPair]:
    return source.pairs("test", count, seed=0)


def _stale(eval_dir: Path, run_dir: Path) -> bool:
    """The evaluation predates the checkpoint (the run was trained further)."""
    return (run_dir / "checkpoint.pt").stat().st_mtime > (
        eval_dir / "evaluation.json"
    ).stat().st_mtime


def _train_seconds(run_dir: Path) -> float:
    from model.networks.checkpoint import read_checkpoint

    meta = read_checkpoint(run_dir / "checkpoint.pt")["meta"]
    return float(meta.get("training", {}).get("seconds", math.nan))


def _plain(value: Any) -> Any:
    return "".join("1" if v else "0" for v in value) if isinstance(value, list) else value


def _pair_dice(out: Path, variant: str) -> dict[str, float]:
    import csv

    with (out / variant / "eval" / "pairs.csv").open(newline="") as f:
        return {p["pair"]: float(p["dice_mean"]) for p in csv.DictReader(f)}


def _compare(rows: list[dict[str, Any]], out: Path, reference: str | None) -> None:
    """Adds to each row its Dice minus the reference's on the same test pairs: the mean
    difference, its 95 % interval (t) and the Wilcoxon signed-rank p-value. All variants see
    the same pairs, so the paired difference is far less noisy than the two means' spread."""
    from model.training.comparison import paired_difference

    names = [r["variant"] for r in rows]
    reference = reference if reference in names else names[0]
    ref = _pair_dice(out, reference)
    for r in rows:
        d = paired_difference(_pair_dice(out, r["variant"]), ref)
        r.update(
            reference=reference,
            delta_dice=d.mean,
            delta_dice_ci95=0.0 if r["variant"] == reference else d.ci95,
            wilcoxon_p=d.wilcoxon_p,
        )


def _write_results(experiment: str, rows: list[dict[str, Any]], out: Path) -> None:
    from model.training.evaluate import write_csv

    write_csv(rows, out / "results.csv")
    lines = [
        f"# Experiment: {experiment}",
        "",
        "| variant | pairs | Dice | HD95 (mm) | std log\\|J\\| | folding % | s / pair | "
        f"ΔDice vs {rows[0]['reference']} (95 % CI) | Wilcoxon p | iterations | "
        "training (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        delta = (
            "reference"
            if r["variant"] == r["reference"]
            else f"{r['delta_dice']:+.3f} ± {r['delta_dice_ci95']:.3f}"
        )
        p = "" if math.isnan(r["wilcoxon_p"]) else f"{r['wilcoxon_p']:.2g}"
        lines.append(
            f"| {r['variant']} | {r['pairs']} | {r['dice_mean']:.3f} ± "
            f"{r['dice_mean_std']:.3f} | {r['hd95_mean']:.2f} | "
            f"{r['std_log_jacobian']:.3f} | {r['folding_percent']:.3f} | "
            f"{r['seconds']:.2f} | {delta} | {p} | {r['iterations']} | "
            f"{r['train_seconds']:.0f} |"
        )
    (out / "results.md").write_text("\n".join(lines) + "\n")
    _plot(experiment, rows, out)


def _plot(experiment: str, rows: list[dict[str, Any]], out: Path) -> None:
    """Left: Dice over the test pairs per variant (curves for data-fraction and steps, box
    plots otherwise). Right: each variant's paired Dice difference to the reference, 95 % CI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, dx) = plt.subplots(1, 2, figsize=(11, 3.9), gridspec_kw={"width_ratios": [1.25, 1]})
    if experiment in ("data-fraction", "steps"):
        key, group = ("fraction", "arch") if experiment == "data-fraction" else ("steps", "weights")
        groups = list(dict.fromkeys(r[group] for r in rows))
        for k, name in enumerate(groups):
            mine = sorted((r for r in rows if r[group] == name), key=lambda r: r[key])
            # Groups side by side (a small shift) so that their bars do not hide each other.
            shift = (k - (len(groups) - 1) / 2) * 0.04
            xs = [
                r[key] * 100 * 10**shift if key == "fraction" else r[key] + 3 * shift for r in mine
            ]
            ax.errorbar(
                xs,
                [r["dice_mean"] for r in mine],
                yerr=[r["dice_mean_std"] for r in mine],
                marker="o",
                capsize=3,
                label=name,
            )
        ax.set_xlabel("training data (%)" if key == "fraction" else "T (recurrent steps)")
        if key == "fraction":
            ax.set_xscale("log")
            ax.set_xticks([5, 10, 25, 50, 100], ["5", "10", "25", "50", "100"])
        ax.legend()
        ax.set_ylabel("Dice, mean ± sd over test pairs")
    else:
        data = [
            [v for v in _pair_dice(out, r["variant"]).values() if not math.isnan(v)] for r in rows
        ]
        ax.boxplot(data, showmeans=True)
        ax.set_xticks(range(1, len(rows) + 1), [r["variant"] for r in rows])
        ax.set_ylabel("Dice (test pairs)")
    ax.set_title(experiment)
    ax.grid(alpha=0.3)
    ys = range(len(rows))[::-1]
    dx.errorbar(
        [r["delta_dice"] for r in rows],
        ys,
        xerr=[r["delta_dice_ci95"] for r in rows],
        fmt="o",
        capsize=3,
    )
    dx.axvline(0, color="grey", lw=1)
    dx.set_yticks(ys, [r["variant"] for r in rows])
    dx.set_xlabel(f"Dice − Dice of {rows[0]['reference']} (same pairs), 95 % CI")
    dx.set_title("paired difference")
    dx.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "results.png", dpi=120)
    plt.close(fig)
