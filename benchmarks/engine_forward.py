"""Forward time and peak memory of RIIR at 2-D 256², 3-D 64³ and 3-D 128³.

Each case runs in its own process so its peak memory (max RSS on the CPU, the CUDA allocator's
peak on a GPU) is its own. Prints a Markdown table. Compare rows of one run only: the machines
are shared and noisy.

    python benchmarks/engine_forward.py [--device cpu|cuda] [--repeats 3] [--backward]
                                        [--batch N]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

CASES = [
    # name, spatial shape, config overrides
    ("2-D 256²", (256, 256), {"spatial_dims": 2, "hidden_channels": (32, 16)}),
    ("3-D 64³ full-res cell", (64, 64, 64), {"spatial_dims": 3}),
    (
        "3-D 64³ full-res cell, 32 channels",
        (64, 64, 64),
        {"spatial_dims": 3, "hidden_channels": (32, 32)},
    ),
    ("3-D 64³ stride-2 cell", (64, 64, 64), {"spatial_dims": 3, "cell_stride": 2}),
    (
        "3-D 64³ stride-2, GRU 1x1",
        (64, 64, 64),
        {"spatial_dims": 3, "cell_stride": 2, "gru_kernel": 1},
    ),
    (
        "3-D 64³ stride-2, GRU 1x1, convex upsampling",
        (64, 64, 64),
        {"spatial_dims": 3, "cell_stride": 2, "gru_kernel": 1, "upsampling": "convex"},
    ),
    ("3-D 128³ stride-2 cell", (128, 128, 128), {"spatial_dims": 3, "cell_stride": 2}),
    (
        "3-D 128³ stride-2, GRU 1x1",
        (128, 128, 128),
        {"spatial_dims": 3, "cell_stride": 2, "gru_kernel": 1},
    ),
]


def run_case(
    shape: tuple[int, ...], overrides: dict, device: str, repeats: int, backward: bool, batch: int
) -> dict:
    import torch

    from model.networks.riir import RIIR, RIIRConfig

    torch.manual_seed(0)
    model = RIIR(RIIRConfig(steps=6, **overrides)).to(device)
    torch.nn.init.normal_(model.cell.conv_out.weight, std=0.01)
    moving = torch.rand(batch, 1, *shape, device=device)
    fixed = torch.rand(batch, 1, *shape, device=device)

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    def once() -> float:
        start = time.perf_counter()
        if backward:
            phis = model(moving, fixed)
            sum(p.pow(2).mean() for p in phis).backward()
        else:
            with torch.no_grad():
                model(moving, fixed, return_all=False)
        sync()
        return time.perf_counter() - start

    once()  # warm-up (allocator, kernels)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = [once() for _ in range(repeats)]
    if device == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "seconds": min(times),
        "peak_mb": peak_mb,
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--backward",
        action="store_true",
        help="time a training step (forward + backward through T steps)",
    )
    parser.add_argument("--batch", type=int, default=1, help="pairs per call (default 1)")
    parser.add_argument("--case", type=int, help=argparse.SUPPRESS)  # child process
    args = parser.parse_args()
    if args.case is not None:
        name, shape, overrides = CASES[args.case]
        print(
            json.dumps(
                run_case(shape, overrides, args.device, args.repeats, args.backward, args.batch)
            )
        )
        return

    import torch

    what = "forward + backward" if args.backward else "forward (no grad)"
    device_name = (
        torch.cuda.get_device_name()
        if args.device == "cuda"
        else (f"CPU, {torch.get_num_threads()} threads")
    )
    print(
        f"RIIR, T = 6, batch {args.batch}, {what}, {device_name}, torch {torch.__version__}, "
        f"best of {args.repeats}\n"
    )
    print("| case | parameters | seconds | peak memory (MB) |")
    print("|---|---:|---:|---:|")
    for i, (name, _, _) in enumerate(CASES):
        cmd = [
            sys.executable,
            __file__,
            "--case",
            str(i),
            "--device",
            args.device,
            "--repeats",
            str(args.repeats),
            "--batch",
            str(args.batch),
        ] + (["--backward"] if args.backward else [])
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            print(f"| {name} | | failed: {result.stderr.strip().splitlines()[-1]} | |")
            continue
        row = json.loads(result.stdout)
        print(
            f"| {name} | {row['parameters']:,} | {row['seconds']:.3f} | {row['peak_mb']:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
