#!/usr/bin/env bash
# The aarch64 (64-bit ARM) CPU build, and its tests under qemu user-mode emulation.
#
#   scripts/aarch64.sh build   release binary: target/aarch64/aarch64-unknown-linux-gnu/release/echonet
#   scripts/aarch64.sh test    build, then on aarch64 (emulated on x86): the conv kernel property
#                              tests, the src/model unit tests, `echonet doctor`, and a phantom run
#                              that must publish estimates, and the aarch64-cpu tarball
#                              (scripts/package.sh), unpacked, passes its doctor
#
# Env: AARCH64_TESTS    cargo test selections, `;`-separated (default below)
#      SMOKE_FRAMES     length of the emulated phantom run in frames (default 150 = 5 s at 30 fps)
#      AARCH64_TARGET_CPU  e.g. cortex-a78ae (default: the Armv8-A baseline)
# The toolchain comes from scripts/install-cross.sh; cargo's settings from scripts/cross-env.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=cross-env.sh
. scripts/cross-env.sh
CARGO=${CARGO:-cargo}
export CARGO_TARGET_DIR=${AARCH64_TARGET_DIR:-$PWD/target/aarch64}
RUSTFLAGS="$(aarch64_rustflags)"
export RUSTFLAGS
BIN="$CARGO_TARGET_DIR/$AARCH64_TRIPLE/release/echonet"
# Which tests run on aarch64: every unit test under src/model (the kernels and their SIMD paths
# live there) and every integration test that uses the CPU kernels directly, i.e. imports
# `echonet_edge::model::cpu_*` or the `model::conv` seam (tests/conv_kernels.rs and the kernel
# property tests that come after it). The rest of the suite exercises no architecture-specific
# code and runs on the host only.
kernel_tests() {
  local selection="--lib model::" file
  for file in tests/*.rs; do
    if grep -qE 'echonet_edge::model::(cpu_[a-z_]+|conv)\b' "$file"; then
      selection="$selection;--test $(basename "$file" .rs)"
    fi
  done
  echo "$selection"
}
AARCH64_TESTS=${AARCH64_TESTS:-$(kernel_tests)}

build() {
  local t0=$SECONDS
  "$CARGO" build --release --locked --target "$AARCH64_TRIPLE" --bin echonet
  echo "aarch64: built $BIN in $((SECONDS - t0)) s" >&2
}

unit_tests() {
  local t0=$SECONDS selection targets
  IFS=';' read -ra selections <<<"$AARCH64_TESTS"
  # Compile every selected test binary in one cargo call (in parallel), then run them one by one.
  targets=$(echo "$AARCH64_TESTS" | tr ';' '\n' | grep -oE -- '--lib|--test [A-Za-z0-9_-]+' | tr '\n' ' ')
  # shellcheck disable=SC2086  # several cargo arguments
  "$CARGO" test --release --locked --target "$AARCH64_TRIPLE" --no-run $targets
  echo "aarch64: test binaries built in $((SECONDS - t0)) s" >&2
  for selection in "${selections[@]}"; do
    # shellcheck disable=SC2086  # a selection is several cargo arguments
    "$CARGO" test --release --locked --target "$AARCH64_TRIPLE" $selection
  done
  echo "aarch64: tests ($AARCH64_TESTS) built and passed in $((SECONDS - t0)) s" >&2
}

# The run's summary counts published estimates, and at least one `ok` estimate line carries an EF
# value within 0-100 %. (The writer puts one compact object per line: `"ef":{...,"value":64.2}`.)
check_published() {
  local summary=$1 jsonl=$2 published ef
  published=$(grep -oE '"estimates_published": *[0-9]+' "$summary" | grep -oE '[0-9]+$' || true)
  if [ -z "$published" ] || [ "$published" -eq 0 ]; then
    echo "aarch64: the phantom run published no estimates ($summary: estimates_published=${published:-missing})" >&2
    cat "$summary" >&2
    return 1
  fi
  ef=$(grep '"status":"ok"' "$jsonl" | grep -oE '"ef":\{[^}]*\}' | tail -1 | grep -oE '"value":-?[0-9.eE+-]+' | sed 's/.*://' || true)
  if [ -z "$ef" ] || ! awk -v v="$ef" 'BEGIN { exit !(v >= 0 && v <= 100) }'; then
    echo "aarch64: no ok estimate in $jsonl with an EF value in 0-100 % (last: '${ef:-none}')" >&2
    tail -3 "$jsonl" >&2
    return 1
  fi
  echo "aarch64: phantom run published $published estimates, last EF $ef %" >&2
}

# The binary itself on aarch64, in two parts:
# 1. Numbers: `echonet phantom` writes one clip, `echonet predict` runs its 20 frames at 10 fps
#    offline (no real-time pacing, so emulation speed cannot matter) and must give an `ok` result
#    whose EF is a finite percentage.
# 2. The daemon: a 150-frame phantom run must run every stage (frames inferred, no stage failure)
#    and either publish estimates or, when emulation is slower than the 10 fps budget (qemu runs
#    the plan's portable kernel at ~400 ms a frame on a quiet 2-core host), say so in its withheld
#    records ("inference too slow"), as the daemon must on slow hardware.
smoke() {
  local t0=$SECONDS dir published inferred ef
  dir=$(mktemp -d)
  trap 'rm -rf "$dir"' RETURN
  # shellcheck disable=SC2086  # AARCH64_RUN is a command and its arguments
  $AARCH64_RUN "$BIN" doctor
  # shellcheck disable=SC2086
  $AARCH64_RUN "$BIN" phantom --out "$dir/clips" --clips 1 --seed 1
  # shellcheck disable=SC2086
  $AARCH64_RUN "$BIN" predict "$dir/clips" >"$dir/predict.jsonl"
  ef=$(grep '"status":"ok"' "$dir/predict.jsonl" | grep -oE '"ef":\{[^}]*\}' | head -1 | grep -oE '"value":-?[0-9.eE+-]+' | sed 's/.*://' || true)
  if [ -z "$ef" ] || ! awk -v v="$ef" 'BEGIN { exit !(v >= 0 && v <= 100) }'; then
    echo "aarch64: predict on a phantom clip gave no ok EF in 0-100 % (got '${ef:-none}')" >&2
    cat "$dir/predict.jsonl" >&2
    return 1
  fi
  echo "aarch64: predict on phantom clip seed 1: EF $ef %" >&2
  # shellcheck disable=SC2086
  $AARCH64_RUN "$BIN" run --source phantom --frames "${SMOKE_FRAMES:-150}" --http off \
    --jsonl "$dir/estimates.jsonl" --summary "$dir/summary.json"
  published=$(grep -oE '"estimates_published": *[0-9]+' "$dir/summary.json" | grep -oE '[0-9]+$' || true)
  inferred=$(grep -oE '"frames_inferred": *[0-9]+' "$dir/summary.json" | grep -oE '[0-9]+$' || true)
  if [ -z "$inferred" ] || [ "$inferred" -eq 0 ] || ! grep -qE '"stage_failures": *\[\]' "$dir/summary.json"; then
    echo "aarch64: the phantom run inferred no frame or lost a stage" >&2
    cat "$dir/summary.json" >&2
    return 1
  fi
  if [ "${published:-0}" -gt 0 ]; then
    check_published "$dir/summary.json" "$dir/estimates.jsonl"
  elif grep -q 'inference too slow' "$dir/estimates.jsonl"; then
    echo "aarch64: phantom run inferred $inferred frames; emulation is below 10 fps and the withheld records say so" >&2
  else
    echo "aarch64: the phantom run published nothing and did not say that inference is too slow" >&2
    cat "$dir/summary.json" >&2
    tail -3 "$dir/estimates.jsonl" >&2
    return 1
  fi
  echo "aarch64: doctor, predict and phantom run passed in $((SECONDS - t0)) s" >&2
}

case "${1:-}" in
  build) build ;;
  test)
    # No separate `build` first: the test build unifies the dev-dependencies' features into the
    # shared crates (candle-core among them), so it recompiles them anyway, and it builds the
    # binary too (integration tests need it); the smoke run uses that binary.
    unit_tests
    [ -x "$BIN" ] || build
    smoke
    dist=$(mktemp -d)
    DIST_DIR=$dist bash scripts/package.sh --no-build --check aarch64-cpu
    rm -rf "$dist"
    ;;
  smoke) smoke ;;
  *) echo "usage: scripts/aarch64.sh build|test|smoke" >&2; exit 2 ;;
esac
