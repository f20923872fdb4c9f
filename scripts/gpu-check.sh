#!/usr/bin/env bash
# One command for a GPU machine that has PyTorch and the prebuilt CUDA binary (no Rust toolchain,
# no network): checks and times the CUDA path and prints one table.
#
#   scripts/gpu-check.sh [--bin DIR] [--out DIR]
#
#   --bin DIR  holds `echonet` (the CUDA binary of `make cuda`) and `gpu-tests` (tests/gpu.rs,
#              built by scripts/gpu-prebuild.sh); `.xz` copies are unpacked first. Default:
#              target/cuda/release.
#   --out DIR  where every log, JSON result and the table (gpu-check.md) go. Default: $OUT when
#              set, else target/gpu-check.
#
# Steps, each with its own time limit so the whole run stays under 8 minutes on an H100/H200:
#   1. the card (nvidia-smi), `echonet doctor`, and the first CUDA start (PTX JIT for this GPU);
#   2. the GPU tests (tests/gpu.rs, --ignored): PyTorch goldens in f32/f16/bf16 with and without
#      the CUDA graph, graph replay and fallback, offline batch 20 vs single frames, a training
#      step against the CPU;
#   3. parity at full size: a width-1, 299x299 network with random weights built by PyTorch
#      (tools/gpu/torch_check.py), converted with `echonet convert`, run by `echonet infer
#      --features` in f32/f16/bf16 (graph and plain), relative L2 against PyTorch in float64;
#   4. `echonet bench` on that network: f16 and f32, batch 1 and 20, CUDA graph and plain;
#   5. the daemon (`echonet run`) on the phantom on CUDA for 30 s with that network: p50/p99
#      capture-to-publish latency from --summary;
#   6. 50 training steps at width 1, 299 px (`echonet train --device cuda`, phantom data);
#   7. PyTorch on the same network: eager f32/f16 and torch.compile (reduce-overhead) f16, batch
#      1 and 20 (torch.compile skipped when the run is short of time);
#   8. the table (tools/gpu/torch_check.py report), printed and written to gpu-check.md.
# A failed step is recorded in the table and the rest still run; the exit status is 1 when any
# check failed.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN="$ROOT/target/cuda/release"
RESULTS="${OUT:-$ROOT/target/gpu-check}"
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) BIN=$(cd "$2" && pwd); shift 2 ;;
    --out) RESULTS="$2"; shift 2 ;;
    *) echo "gpu-check: unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
mkdir -p "$RESULTS"
cd "$ROOT" || exit 2
RESULTS=$(cd "$RESULTS" && pwd)
WORK=$(mktemp -d /tmp/gpu-check.XXXXXX)
STEPS="$RESULTS/steps.tsv"
: >"$STEPS"
T0=$(date +%s)
export PYTHONUNBUFFERED=1 ECHONET_SOURCE_DIR="$ROOT"
# The driver's JIT cache: the PTX is compiled for this GPU once, then reused by every process.
export CUDA_CACHE_MAXSIZE=4294967296 CUDA_CACHE_PATH="${CUDA_CACHE_PATH:-$WORK/jit-cache}"
export RUST_LOG="${RUST_LOG:-warn}"

for exe in echonet gpu-tests; do
  if [ ! -x "$BIN/$exe" ] && [ -f "$BIN/$exe.xz" ]; then
    xz -dkc "$BIN/$exe.xz" >"$WORK/$exe" && chmod +x "$WORK/$exe"
  elif [ -x "$BIN/$exe" ]; then
    ln -sf "$BIN/$exe" "$WORK/$exe"
  fi
done
E="$WORK/echonet"
[ -x "$E" ] || { echo "gpu-check: no echonet binary in $BIN (build it with make cuda)" >&2; exit 2; }
# shellcheck source=scripts/cuda-env.sh
source "$ROOT/scripts/cuda-env.sh"
PY=${PYTHON:-python3}
TC="$ROOT/tools/gpu/torch_check.py"

# step NAME LIMIT_S COMMAND...: runs COMMAND under a time limit, its stdout to RESULTS/NAME.out
# and stderr to RESULTS/NAME.log; records name, exit status and seconds in steps.tsv.
step() {
  local name=$1 limit=$2
  shift 2
  local t
  t=$(date +%s%N)
  echo "== $name (limit ${limit}s, $(( $(date +%s) - T0 ))s in)" >&2
  timeout --kill-after=5 "$limit" "$@" >"$RESULTS/$name.out" 2>"$RESULTS/$name.log"
  local rc=$?
  local ms=$(( ($(date +%s%N) - t) / 1000000 ))
  printf '%s\t%s\t%d.%03d\n' "$name" "$rc" $((ms / 1000)) $((ms % 1000)) >>"$STEPS"
  if [ $rc -ne 0 ]; then
    echo "   $name: exit $rc; last lines:" >&2
    tail -4 "$RESULTS/$name.log" "$RESULTS/$name.out" >&2
  fi
  return $rc
}

# 1. The card, the installation, the first start.
step nvidia-smi 20 nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version,clocks.sm,clocks.max.sm,power.limit --format=csv
step doctor 60 "$E" doctor --json
step first-start 240 "$E" bench --device cuda --width 0.125 --input-size 96 --warmup 0 --iters 1 --json

# 2. The GPU tests.
if [ -x "$WORK/gpu-tests" ]; then
  step gpu-tests 240 "$WORK/gpu-tests" --ignored --test-threads 1
else
  printf 'gpu-tests\tmissing\t0\n' >>"$STEPS"
fi

# 3. Parity at full size against PyTorch in float64.
P="$WORK/parity"
if step torch-prepare 120 "$PY" "$TC" prepare "$P" &&
  step convert 120 "$E" convert "$P/irv1_w1.safetensors" "$P/irv1_w1.bundle.safetensors" \
    --config "$ROOT/tests/fixtures/parity/tasks.toml" --input-size 299; then
  cp "$P/torch_parity.json" "$RESULTS/" 2>/dev/null
  for v in f32:graph f32:plain f16:graph f16:plain bf16:graph; do
    dt=${v%%:*}
    flag=""
    [ "${v##*:}" = plain ] && flag="--no-cuda-graph"
    if step "infer-$dt-${v##*:}" 60 "$E" infer --model "$P/irv1_w1.bundle.safetensors" \
      --input "$P/input_299.npy" --features --device cuda --dtype "$dt" $flag; then
      "$PY" "$TC" compare "$P/expected_features.npy" "$RESULTS/infer-$dt-${v##*:}.out" \
        >"$RESULTS/parity-$dt-${v##*:}.json" 2>>"$RESULTS/parity-errors.log"
    fi
  done
  MODEL="$P/irv1_w1.bundle.safetensors"
else
  MODEL=""
fi

# 4. candle's speed on the same network (an untrained one of the same shape if conversion failed).
BENCH_MODEL=(--width 1 --input-size 299)
[ -n "$MODEL" ] && BENCH_MODEL=(--model "$MODEL")
for dt in f16 f32; do
  for b in 1 20; do
    iters=200
    [ "$b" = 20 ] && iters=40
    for g in graph plain; do
      flag=""
      [ "$g" = plain ] && flag="--no-cuda-graph"
      step "bench-$dt-b$b-$g" 90 "$E" bench "${BENCH_MODEL[@]}" --device cuda --dtype "$dt" \
        --batch "$b" --warmup 10 --iters "$iters" --json $flag
    done
  done
done

# 5. The daemon on the phantom, 30 s, on CUDA (default dtype: f16).
step daemon 75 "$E" run --source phantom --device cuda ${MODEL:+--model "$MODEL"} --duration 30 \
  --http off --jsonl "$WORK/daemon.jsonl" --summary "$RESULTS/daemon.json"

# 6. 50 training steps at width 1, 299 px.
step train 150 "$E" train --phantom-seed 1 --phantom-clips 12 --steps 50 --eval-every 50 \
  --width 1 --input-size 299 --device cuda --out "$WORK/train.safetensors" --work-dir "$WORK/train"

# 7. PyTorch on the same network; torch.compile only while the run has time left (8 min in all).
# The eager timings take about 30 s; torch.compile gets what is left of 450 s after them.
left=$(( 450 - ($(date +%s) - T0) ))
[ $left -lt 45 ] && left=45
step torch-bench $(( left + 15 )) "$PY" "$TC" bench "$RESULTS" --budget-s $(( left - 40 ))

# 8. The table.
"$PY" "$TC" report "$RESULTS" | tee "$RESULTS/gpu-check.md"
rm -rf "$WORK"
echo "gpu-check: $(( $(date +%s) - T0 )) s; results in $RESULTS" >&2
grep -q "FAIL" "$RESULTS/gpu-check.md" && exit 1
exit 0
