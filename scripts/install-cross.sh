#!/usr/bin/env bash
# Installs the aarch64 cross toolchain (gcc, the arm64 C library and kernel headers, qemu user-mode
# emulation) and rustup's aarch64-unknown-linux-gnu standard library, and nothing when they are
# already there. Called by scripts/install-deps.sh --cross (make test, make aarch64, make jetson).
# On an aarch64 host nothing is needed: the native toolchain builds and runs aarch64 code.
set -euo pipefail
if [ "$(uname -m)" = aarch64 ]; then
  exit 0
fi
need=()
command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || need+=(gcc-aarch64-linux-gnu)
command -v aarch64-linux-gnu-g++ >/dev/null 2>&1 || need+=(g++-aarch64-linux-gnu)
dpkg -s libc6-dev-arm64-cross >/dev/null 2>&1 || need+=(libc6-dev-arm64-cross)
dpkg -s linux-libc-dev-arm64-cross >/dev/null 2>&1 || need+=(linux-libc-dev-arm64-cross)
command -v qemu-aarch64 >/dev/null 2>&1 || need+=(qemu-user)
if [ ${#need[@]} -gt 0 ]; then
  echo "install-cross: installing ${need[*]}" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
if ! command -v rustup >/dev/null 2>&1; then
  echo "install-cross: rustup not found; the aarch64 standard library is installed with rustup" >&2
  exit 1
fi
if ! rustup target list --installed | grep -qx aarch64-unknown-linux-gnu; then
  echo "install-cross: rustup target add aarch64-unknown-linux-gnu" >&2
  rustup target add aarch64-unknown-linux-gnu
fi
