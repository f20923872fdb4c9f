# Sourced (not run) by the aarch64 scripts: how cargo builds and runs aarch64-unknown-linux-gnu code
# on an x86_64 machine. Everything here is keyed to the aarch64 target or to its own target
# directory, so the host build (target/release) and its cache are untouched.
#   linker / CC      the Debian cross gcc (gcc-aarch64-linux-gnu)
#   bindgen          the v4l crate's bindings must be generated from the ARM headers, not the host's
#   runner           qemu user-mode emulation, so `cargo test --target ...` runs the aarch64 tests here
#   CARGO_TARGET_DIR target/aarch64: the cross build's own dependencies, beside the host's
export AARCH64_TRIPLE=aarch64-unknown-linux-gnu
export AARCH64_SYSROOT=/usr/aarch64-linux-gnu
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export CXX_aarch64_unknown_linux_gnu=aarch64-linux-gnu-g++
export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
export BINDGEN_EXTRA_CLANG_ARGS_aarch64_unknown_linux_gnu="--sysroot=$AARCH64_SYSROOT -I$AARCH64_SYSROOT/include"
if [ "$(uname -m)" != aarch64 ]; then
  export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L $AARCH64_SYSROOT"
  export AARCH64_RUN="qemu-aarch64 -L $AARCH64_SYSROOT"
else
  export AARCH64_RUN=""
fi
# The aarch64 CPU binary assumes only the Armv8-A baseline (NEON included), so it runs on any
# 64-bit ARM cart; AARCH64_TARGET_CPU=cortex-a78ae (what scripts/jetson-build.sh uses) lets the
# compiler assume a newer core. qemu-aarch64's default CPU ("max") implements every extension.
aarch64_rustflags() {
  local flags="${RUSTFLAGS:-}"
  if [ -n "${AARCH64_TARGET_CPU:-}" ]; then flags="$flags -C target-cpu=$AARCH64_TARGET_CPU"; fi
  echo "$flags"
}
