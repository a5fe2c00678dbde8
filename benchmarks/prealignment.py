"""Initial alignment on real brains: ``--init physical`` vs ``center`` vs ``affine``.

Registers real brain pairs with a shipped model through the Python API (``riir.register``,
the code path of ``riir register``) once per initial alignment and prints a table: mean Dice
over the labels both maps hold, std log|J|, % folding, and seconds per pair (the affine
registration included). Pairs: the two OASIS brains in both directions, and consecutive IXI
scans (their labels share one numbering, so no mapping is needed).

    python benchmarks/prealignment.py --data ../shared/data/brain_real --out runs/prealign
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import riir

INITS = ("physical", "center", "affine")


def pairs(data: Path, ixi_pairs: int) -> list[tuple[str, Path, Path, Path, Path]]:
    """(name, fixed, moving, fixed labels, moving labels)."""
    out = []
    oasis = sorted((data / "oasis" / "img").glob("*.nii.gz"))
    for a, b in ((0, 1), (1, 0)):
        if len(oasis) > max(a, b):
            out.append(
                (
                    f"oasis {a}<-{b}",
                    oasis[a],
                    oasis[b],
                    data / "oasis" / "label" / oasis[a].name,
                    data / "oasis" / "label" / oasis[b].name,
                )
            )
    ixi = sorted(
        p
        for p in (data / "ixi" / "img").glob("*.nii.gz")
        if (data / "ixi" / "label" / p.name).is_file()
    )
    for k in range(min(ixi_pairs, len(ixi) - 1)):
        out.append(
            (
                f"ixi {k}<-{k + 1}",
                ixi[k],
                ixi[k + 1],
                data / "ixi" / "label" / ixi[k].name,
                data / "ixi" / "label" / ixi[k + 1].name,
            )
        )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="the brain_real folder")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", default="brain-3d")
    parser.add_argument("--ixi-pairs", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if not (args.data / "oasis").is_dir():
        parser.error(f"no oasis/ in {args.data}: give the folder of the real brains")
    rows = []
    for name, fixed, moving, fixed_labels, moving_labels in pairs(args.data, args.ixi_pairs):
        for init in INITS:
            start = time.perf_counter()
            result = riir.register(
                fixed,
                moving,
                fixed_labels=fixed_labels,
                moving_labels=moving_labels,
                model=args.model,
                init=init,
                device=args.device,
                out=args.out / name.replace(" ", "_").replace("<-", "_from_") / init,
            )
            seconds = time.perf_counter() - start
            m = result.metrics
            rows.append(
                {
                    "pair": name,
                    "init": init,
                    "dice_before": m["labels"]["before"]["dice_mean"],
                    "dice": m["labels"]["after"]["dice_mean"],
                    "std_log_jacobian": m["jacobian"]["std_log_jacobian"],
                    "folding_percent": m["jacobian"]["folding_percent"],
                    "seconds": seconds,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    (args.out / "rows.json").write_text(json.dumps(rows, indent=2))
    print(
        "\n| init | pairs | Dice, initial alignment alone | Dice | std log\\|J\\| | folding % "
        "| s / pair |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for init in INITS:
        mine = [r for r in rows if r["init"] == init]
        mean = {
            k: float(np.mean([r[k] for r in mine])) for k in mine[0] if k not in ("pair", "init")
        }
        print(
            f"| {init} | {len(mine)} | {mean['dice_before']:.3f} | {mean['dice']:.3f} | "
            f"{mean['std_log_jacobian']:.3f} | {mean['folding_percent']:.4f} | "
            f"{mean['seconds']:.1f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
