#!/usr/bin/env bash
# Builds .gpu_pack/ on THIS machine, for `bench/gpu_bench.py` on a bare GPU machine (no registry
# there): the pure-python wheels it lacks, a few fallbacks, TAEF2's weights and CHAOST2 as one
# lossless compressed npz (bench/gpu_data.py). The folder is git-ignored and travels with the
# working tree (the device tool's `carry: [".gpu_pack"]`); everything sent is limited to 64 MiB.
#
#   bash bench/gpu_pack.sh [PACK_DIR]        (FORCE=1 rebuilds what is already there)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PACK="${1:-$REPO/.gpu_pack}"
SHARED="${SDFSMIS_SHARED:-$REPO/../shared}"
PY="${PYTHON:-$REPO/.venv/bin/python}"
[ -x "$PY" ] || PY=python3
LIMIT_MIB=64
mkdir -p "$PACK/wheels" "$PACK/data" "$PACK/weights"

pin() {  # the version this repository is tested with (requirements/lock.txt), else unpinned
  local v
  v="$(grep -i -E "^$1==" "$REPO/requirements/lock.txt" | head -1 | cut -d= -f3 || true)"
  if [ -n "$v" ]; then echo "$1==$v"; else echo "$1"; fi
}

# 1. wheels for CPython 3.12 on x86_64 Linux, without dependencies: the GPU image has torch 2.11,
#    numpy, pillow, huggingface-hub, safetensors, regex, pyyaml, tensorboard... (device KINDS.md);
#    our CPU pins (torch 2.14.1, numpy<2) must not follow. The fallbacks are installed there only
#    when their module is missing.
if [ "${FORCE:-0}" = 1 ] || ! ls "$PACK"/wheels/diffusers-*.whl >/dev/null 2>&1; then
  rm -f "$PACK"/wheels/*.whl
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --abi cp312 --abi abi3 --abi none \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d "$PACK/wheels" \
    "$(pin diffusers)" "$(pin monai)" "$(pin nibabel)" "$(pin pytorch-ignite)" \
    "huggingface-hub>=1.32,<2" "$(pin safetensors)" regex
fi

# 2. TAEF2 (the accuracy tables' autoencoder; MIT, with its licence)
if [ -d "$SHARED/weights/taef2" ]; then
  mkdir -p "$PACK/weights/taef2"
  cp -u "$SHARED"/weights/taef2/* "$PACK/weights/taef2/"
else
  echo "no $SHARED/weights/taef2: the pack has no TAEF2 (accuracy jobs with TAEF2 will not run)" >&2
fi

# 3. CHAOST2: images delta-coded int16, labels and supervoxels int16, one npz, verified on the way
if [ "${FORCE:-0}" = 1 ] || [ ! -f "$PACK/data/chaost2.npz" ]; then
  if [ -d "$SHARED/data/CHAOST2" ]; then
    "$PY" "$REPO/bench/gpu_data.py" pack "$SHARED/data/CHAOST2" "$PACK/data/chaost2.npz" \
      --images 'chaos_MR_T2_normalized/image_*.nii.gz' \
      --others 'chaos_MR_T2_normalized/label_*.nii.gz' 'supervoxels_5000/superpix-MIDDLE_*.nii.gz' \
      --texts 'classmap_*.json' --verify
  else
    echo "no $SHARED/data/CHAOST2: the pack has no data (accuracy jobs will be skipped)" >&2
  fi
fi

# 4. what travels: the pack plus the working tree (tracked and untracked-but-not-ignored files)
pack_bytes=$(du -sb "$PACK" | cut -f1)
tree_bytes=$(cd "$REPO" && git ls-files -z --cached --others --exclude-standard | xargs -0 -r stat -c %s 2>/dev/null \
  | awk '{s += $1} END {print s + 0}')
total=$((pack_bytes + tree_bytes))
echo "gpu pack: $(du -sh "$PACK"/wheels | cut -f1) wheels, $(du -sh "$PACK"/data | cut -f1) data," \
  "$(du -sh "$PACK"/weights | cut -f1) weights; pack $(awk "BEGIN {printf \"%.1f\", $pack_bytes / 1048576}") MiB" \
  "+ working tree $(awk "BEGIN {printf \"%.1f\", $tree_bytes / 1048576}") MiB" \
  "= $(awk "BEGIN {printf \"%.1f\", $total / 1048576}") MiB of $LIMIT_MIB MiB"
ls -l "$PACK"/wheels
if [ "$total" -gt $((LIMIT_MIB * 1048576)) ]; then
  echo "too big for the device tool's $LIMIT_MIB MiB" >&2
  exit 1
fi
