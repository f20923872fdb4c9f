#!/usr/bin/env bash
# Installs what building and testing echonet-edge needs on a fresh Debian machine, and nothing
# when it is already there. Called by `make run` and `make test` (and so by .ci/run).
# With --cross, also the aarch64 cross toolchain and qemu (scripts/install-cross.sh): make test,
# make aarch64, make jetson.
set -euo pipefail
need=()
# bindgen (used by the v4l capture crate) needs libclang; cc for crates that build C.
dpkg -s libclang-dev >/dev/null 2>&1 || need+=(libclang-dev)
command -v cc >/dev/null 2>&1 || need+=(gcc)
# linux/videodev2.h: the emulated V4L2 device of the capture tests (tools/v4l2-emu) is C.
dpkg -s linux-libc-dev >/dev/null 2>&1 || need+=(linux-libc-dev)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
# python3 with venv/ensurepip: `make cuda` (part of `make test`) installs NVIDIA's CUDA wheels into
# a virtual environment (scripts/cuda-build.sh).
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
# Headless Chromium and chromedriver for the display page test (tests/display_browser.rs).
dpkg -s chromium >/dev/null 2>&1 || need+=(chromium)
dpkg -s chromium-driver >/dev/null 2>&1 || need+=(chromium-driver)
if [ ${#need[@]} -gt 0 ]; then
  echo "install-deps: installing ${need[*]}" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "install-deps: cargo not found; install the Rust toolchain (rustup) first" >&2
  exit 1
fi
# `make test` checks formatting and runs clippy with warnings as errors: a fresh machine needs both.
if ! cargo clippy --version >/dev/null 2>&1 || ! cargo fmt --version >/dev/null 2>&1; then
  if command -v rustup >/dev/null 2>&1; then
    echo "install-deps: adding the clippy and rustfmt components" >&2
    rustup component add clippy rustfmt
  else
    echo "install-deps: cargo clippy / cargo fmt missing and no rustup to add them" >&2
    exit 1
  fi
fi
if [ "${1:-}" = "--cross" ]; then
  bash "$(dirname "$0")/install-cross.sh"
fi
