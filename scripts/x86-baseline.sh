#!/usr/bin/env bash
# The x86 kernels a CPU without AVX-512 runs (the AVX2 + FMA micro-kernels and their detection),
# checked on any x86 machine: the CPU-plan and int8 kernel tests run under qemu-x86_64 emulating
# a Haswell (AVX2, FMA, no AVX-512), where `MicroKernel::detect` must choose AVX2
# (ECHONET_EXPECT_INT8_KERNEL). On an AVX-512 machine the native test run covers the AVX-512
# kernels and compares the AVX2 ones with them bit for bit; this covers the detection and the
# AVX2-only path the way a Zen 2/3 or older Intel cart runs it. qemu-user comes with `make
# deps-cross`.
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO=${CARGO:-cargo}
if [ "$(uname -m)" != x86_64 ]; then
  echo "x86-baseline: not an x86_64 machine, nothing to emulate" >&2
  exit 0
fi
t0=$SECONDS
# The test binaries `cargo test --release` built (built here too when missing).
mapfile -t bins < <("$CARGO" test --release --locked --no-run --test cpu_plan --test int8_kernels \
  --message-format=json 2>/dev/null | grep -o '"executable":"[^"]*"' | cut -d'"' -f4 |
  grep -E '/deps/(cpu_plan|int8_kernels)-')
if [ "${#bins[@]}" -ne 2 ]; then
  echo "x86-baseline: expected 2 test binaries, found ${#bins[@]}" >&2
  exit 1
fi
for bin in "${bins[@]}"; do
  ECHONET_EXPECT_INT8_KERNEL=avx2 qemu-x86_64 -cpu Haswell "$bin" 2> >(grep -v "TCG doesn't support" >&2)
done
echo "x86-baseline: cpu_plan and int8_kernels passed as a Haswell (AVX2, no AVX-512) in $((SECONDS - t0)) s" >&2
