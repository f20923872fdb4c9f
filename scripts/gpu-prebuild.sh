#!/usr/bin/env bash
# Builds, on a machine without a GPU, what scripts/gpu-check.sh runs on one, and packs it:
#   scripts/gpu-prebuild.sh OUTDIR
# OUTDIR gets echonet.xz (the CUDA binary of `make cuda`) and gpu-tests.xz (tests/gpu.rs built
# with --features cuda), both stripped and xz-compressed (the kernels' PTX compresses about
# tenfold), so that they travel in a small tree. Same environment as scripts/cuda-build.sh
# (CUDA_COMPUTE_CAP, default 87, whose PTX the driver JIT-compiles for newer GPUs).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:?usage: scripts/gpu-prebuild.sh OUTDIR}
mkdir -p "$OUT"
TARGET=${CARGO_TARGET_DIR:-$ROOT/target/cuda}
# The binary and the test binary in one cargo run (cuda-build.sh passes extra args on): a test
# target brings the dev-dependencies' features in, and building both at once compiles the
# dependencies once, with one feature set.
tests_json=$(CARGO_TARGET_DIR="$TARGET" bash "$ROOT/scripts/cuda-build.sh" --bin echonet --test gpu --message-format=json)
test_exe=$(printf '%s\n' "$tests_json" | python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "gpu" and m.get("executable"):
        print(m["executable"])
')
[ -n "$test_exe" ] || { echo "gpu-prebuild: the gpu test binary was not found in cargo's output" >&2; exit 1; }
for pair in "$TARGET/release/echonet:echonet" "$test_exe:gpu-tests"; do
  src=${pair%%:*}; name=${pair##*:}
  strip -o "$OUT/$name" "$src"
  xz -T0 -6 -f "$OUT/$name"
  echo "gpu-prebuild: $OUT/$name.xz ($(du -h "$OUT/$name.xz" | cut -f1), from $(du -h "$src" | cut -f1))"
done
