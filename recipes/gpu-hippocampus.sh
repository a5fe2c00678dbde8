#!/usr/bin/env bash
# Train hippocampus-3d candidates on a lent GPU in one short, prepared call.
#
# The CPU here cannot train the 3-D cell at full resolution (20–23 s per step at 64³), and a
# session that is lent a GPU gets about 15 minutes of it, once: start-up, transfer and the
# command all count. This script makes that one call count. It runs in two places:
#
#   recipes/gpu-hippocampus.sh prepare [DATA]   here, with the internet's package registries:
#       stages the labelled hippocampus folder (DATA, default ../shared/data/hippocampus/train;
#       the same subjects, so the same split) and the Python packages the GPU machine lacks
#       (SimpleITK, nibabel, isal: their CPython 3.12 x86-64 wheels, unpacked and xz-packed to
#       fit the 64 MiB a call may carry) in .gpu-stage/, which git ignores.
#
#   recipes/gpu-hippocampus.sh run [MINUTES]    there, through the device tool:
#       run(command="recipes/gpu-hippocampus.sh run 5", carry=[".gpu-stage"], timeout_s=570)
#       trains every arm of ARMS below side by side on the one GPU for MINUTES (default 5),
#       scores each arm's best.pt and last checkpoint on 20 validation pairs, and writes to
#       $OUT: benchmark.md (engine_forward's step times on that GPU), summary.md (every arm's
#       validation table) and runs.tar.gz (checkpoints, logs, evaluations). The test split
#       stays untouched: score the chosen checkpoint here with `riir evaluate`, then ship it.
#
# The command takes about MINUTES + 3 minutes (unpacking, a 1-minute benchmark, the arms'
# last validations and evaluations); the machine's start and the transfer come on top.
# ONLY="name ..." runs some arms. `DEVICE=cpu OUT=/tmp/o PAIRS=2 BENCHMARK_S=1 ONLY=grown-0.7.0`
# runs it here, with the installed packages (a smoke test; nothing is unpacked then; four
# full-resolution arms at once need ~50 GB, more than this machine's memory).
set -euo pipefail
cd "$(dirname "$0")/.."
STAGE=${STAGE:-.gpu-stage}  # and RUNS, where run trains: settable for the tests

# One line per arm: a name, then `riir train` flags. All train the shipped design (0.7.0:
# the coarse-to-fine RIIR on a segmenting U-Net encoder, `--arch c2f`, the gradient clipped,
# no flips but rotations, scaling and gamma, which keep the anatomy's orientation) or grow
# it: the same recipe at batch 4; with a full-resolution last level and a 3×3×3 GRU;
# with a wider encoder (its head's Dice bounds what the features tell the cell); and the
# shipped weights trained further. All use the label term, and the target's smoothness limit
# (std log|J| ≤ 0.10) decides which validation becomes best.pt.
COMMON="--batch-size 4 --validate-every 100 --val-pairs 6 --checkpoint-every 200
        --iterations 100000 --best-max-std-log-jacobian 0.10 --seed 0"
C2F="--arch c2f --encoder-depth 3 --segmentation-classes 3 --segmentation-weight 1
     --masked-similarity --no-flip --affine-rotate 15 --affine-scale 0.15 --intensity-gamma 0.3
     --lam 32 --dice-weight 4 --hidden-channels 16 16 --grad-clip 1"
ARMS=(
  "c2f            $C2F --gru-kernel 1 --encoder-channels 16 --segmentation-pretraining 2500
                  --model-option levels=[4,2] --model-option level_steps=[3,3] --lr 5e-4"
  "c2f-full       $C2F --gru-kernel 3 --encoder-channels 16 --segmentation-pretraining 2500
                  --model-option levels=[4,2,1] --model-option level_steps=[2,2,2] --lr 5e-4"
  "c2f-e32        $C2F --gru-kernel 1 --encoder-channels 32 --segmentation-pretraining 2500
                  --model-option levels=[4,2] --model-option level_steps=[3,3] --lr 5e-4"
  "grown-0.7.0    $C2F --init hippocampus-3d --lam 100 --lr 2e-4"
)

prepare() {
  local data=${1:-../shared/data/hippocampus/train}
  [[ -d $data/img && -d $data/label ]] || { echo "no img/ and label/ under $data" >&2; exit 2; }
  rm -rf "$STAGE" && mkdir -p "$STAGE/wheels"
  cp -r "$data" "$STAGE/hippocampus"
  # The versions installed here, so both machines read images alike.
  local pins
  pins=$(python -c 'from importlib.metadata import version as v
print(" ".join(f"{p}=={v(p)}" for p in ("SimpleITK", "nibabel", "isal")))')
  python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$STAGE/wheels" $pins
  mkdir "$STAGE/site"
  for wheel in "$STAGE"/wheels/*.whl; do python -m zipfile -e "$wheel" "$STAGE/site"; done
  # A wheel is a zip; SimpleITK's library packs to half of that with xz.
  tar -cf - -C "$STAGE" site | xz -9 -T0 > "$STAGE/site.tar.xz"
  rm -rf "$STAGE/wheels" "$STAGE/site"
  du -sh "$STAGE" "$STAGE"/*
  echo "staged; carry it: run(command=\"recipes/gpu-hippocampus.sh run 5\"," \
       "carry=[\"$STAGE\"], timeout_s=570)"
}

run() {
  local minutes=${1:-5} device=${DEVICE:-cuda} out=${OUT:?set OUT to the folder for results}
  local pairs=${PAIRS:-20} benchmark_s=${BENCHMARK_S:-60}
  local runs=${RUNS:-/tmp/gpu-hippocampus}
  [[ -d $STAGE/hippocampus ]] || { echo "nothing staged: run 'prepare' first" >&2; exit 2; }
  # The arms to run (ONLY, else all), their names and flags split once.
  local arm name rest names=() flags=()
  for arm in "${ARMS[@]}"; do
    read -r name rest <<< "$(echo $arm)"  # echo joins an arm's lines
    [[ -z ${ONLY:-} || " $ONLY " == *" $name "* ]] || continue
    names+=("$name"); flags+=("$rest")
  done
  (( ${#names[@]} )) || { echo "no arm named in ONLY='$ONLY'" >&2; exit 2; }
  local threads=$(( $(nproc) / ${#names[@]} )) py=${PYTHON:-python3} i
  (( threads > 0 )) || threads=1
  if [[ $device == cuda ]]; then
    # Python's tarfile, not tar -J: the machine's image may lack xz.
    "$py" -c 'import sys, tarfile
tarfile.open(sys.argv[1]).extractall("/tmp", filter="data")' "$STAGE/site.tar.xz"
    export PYTHONPATH=/tmp/site:$PWD
    nvidia-smi -L
  fi
  export PYTHONPATH=${PYTHONPATH:-$PWD} PYTHONUNBUFFERED=1
  rm -rf "$runs" && mkdir -p "$runs" "$out"

  timeout "$benchmark_s" "$py" benchmarks/engine_forward.py --device "$device" --backward \
    --batch 4 > "$out/benchmark.md" 2>&1 || echo "(benchmark stopped)" >> "$out/benchmark.md"
  cat "$out/benchmark.md"

  for i in "${!names[@]}"; do
    # shellcheck disable=SC2086  # the flags are words
    "$py" -m riir.cli train --data "$STAGE/hippocampus" --out "$runs/${names[i]}" --quiet \
      --device "$device" --threads "$threads" --time-limit "$minutes" \
      --name "hippocampus-3d-${names[i]}" $COMMON ${flags[i]} > "$runs/${names[i]}.log" 2>&1 &
  done
  wait || true

  for name in "${names[@]}"; do  # the arms' evaluations side by side too
    [[ -f $runs/$name/checkpoint.pt ]] || continue
    local models=(--model "last=$runs/$name/checkpoint.pt")
    [[ -f $runs/$name/best.pt ]] && models+=(--model "best=$runs/$name/best.pt")
    "$py" -m riir.cli evaluate --data "$STAGE/hippocampus" --split val --pairs "$pairs" \
      "${models[@]}" --device "$device" --threads "$threads" --title "$name" \
      --out "$runs/$name/eval-val" --quiet > "$runs/$name-eval.log" 2>&1 &
  done
  wait || true

  : > "$out/summary.md"
  for name in "${names[@]}"; do
    tail -n 4 "$runs/$name.log" >> "$out/summary.md"
    cat "$runs/$name/eval-val/summary.md" >> "$out/summary.md" 2>/dev/null \
      || tail -n 4 "$runs/$name-eval.log" >> "$out/summary.md" 2>/dev/null || true
  done
  cat "$out/summary.md"
  tar -czf "$out/runs.tar.gz" -C "$runs" .
}

case ${1:-} in
  prepare) shift; prepare "$@" ;;
  run) shift; run "$@" ;;
  *) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 2 ;;
esac
