#!/usr/bin/env bash
# Release tarballs, one per target: dist/echonet-edge-<version>-<target>.tar.gz holding the binary,
# models/, firmware-config/ (with its systemd/ and udev/ files when present), a README for the
# target and BUILD-INFO (commit, toolchain, SHA-256 of the binary).
#
#   scripts/package.sh [--no-build] [--check] [TARGET...]      make package [PACKAGE_TARGETS="..."]
#
# TARGET: x86_64-cpu    the default build (target/release)
#         x86_64-cuda   scripts/cuda-build.sh, CUDA 13 for x86_64 GPUs (target/cuda)
#         aarch64-cpu   scripts/aarch64.sh build, any 64-bit ARM cart (target/aarch64)
#         jetson-cuda   scripts/jetson-build.sh, Jetson Orin (target/jetson)
# Default: all four. Each is built first (cargo does nothing when it is up to date); a target whose
# build script is not in this checkout is skipped, saying so. --no-build packages only binaries
# already built and skips the rest, saying so. A requested build that fails stops the packaging.
# --check unpacks each CPU tarball and runs its `bin/echonet doctor` on the packed models/ and
# firmware-config/default.toml (aarch64 under qemu); CUDA binaries need a GPU driver to start.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
BUILD=1
CHECK=0
targets=()
for arg in "$@"; do
  case "$arg" in
    --no-build) BUILD=0 ;;
    --check) CHECK=1 ;;
    x86_64-cpu | x86_64-cuda | aarch64-cpu | jetson-cuda) targets+=("$arg") ;;
    *)
      echo "package: unknown target '$arg' (expected x86_64-cpu, x86_64-cuda, aarch64-cpu, jetson-cuda or --no-build)" >&2
      exit 2
      ;;
  esac
done
[ ${#targets[@]} -gt 0 ] || targets=(x86_64-cpu x86_64-cuda aarch64-cpu jetson-cuda)
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
COMMIT=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
DIRTY=$(git status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo " (with uncommitted changes)" || true)
# Every file in a tarball gets the commit's time, owner root: the same commit packs the same way.
MTIME=$(git log -1 --format=%cI 2>/dev/null || date -u +%FT%TZ)
DIST=${DIST_DIR:-$ROOT/dist}
mkdir -p "$DIST"

binary_of() {
  case "$1" in
    x86_64-cpu) echo "${CARGO_TARGET_DIR:-$ROOT/target}/release/echonet" ;;
    x86_64-cuda) echo "$ROOT/target/cuda/release/echonet" ;;
    aarch64-cpu) echo "$ROOT/target/aarch64/aarch64-unknown-linux-gnu/release/echonet" ;;
    jetson-cuda) echo "$ROOT/target/jetson/aarch64-unknown-linux-gnu/release/echonet" ;;
  esac
}
# The ELF machine the binary must be (e_machine, bytes 18-19, little-endian: 0x3e x86-64,
# 0xb7 aarch64), so a package never carries the wrong architecture.
machine_of() {
  case "$1" in
    x86_64-*) echo "3e00" ;;
    *) echo "b700" ;;
  esac
}
elf_machine() { od -An -tx1 -j18 -N2 "$1" | tr -d ' \n'; }

# Builds the target; returns 3 (skip) when this checkout has no build script for it.
build() {
  case "$1" in
    x86_64-cpu) "${CARGO:-cargo}" build --release --locked --bin echonet ;;
    x86_64-cuda)
      [ -x scripts/cuda-build.sh ] || return 3
      CARGO_TARGET_DIR="$ROOT/target/cuda" scripts/cuda-build.sh --locked --bin echonet
      ;;
    aarch64-cpu) bash scripts/install-cross.sh && bash scripts/aarch64.sh build ;;
    jetson-cuda) bash scripts/install-cross.sh && bash scripts/jetson-build.sh ;;
  esac
}

readme() {
  local target=$1
  cat <<EOF
echonet-edge $VERSION, $target (commit $COMMIT)

Bedside EchoNet runtime: reads echo frames (V4L2 capture card, DICOM, images or a built-in
phantom), estimates ejection fraction and LV volumes, publishes JSON Lines and a bedside display.
The bundled model is a demonstration model trained on synthetic phantoms: not for clinical use.

Contents
  bin/echonet         the program (echonet --help; echonet doctor checks this installation)
  models/             the shipped model bundles and MANIFEST.toml (hashes checked at start-up)
  firmware-config/    deployment profiles (default, clinic-cpu, jetson-orin, demo) and, when
                      present, the systemd unit and udev rules
  BUILD-INFO          commit, toolchain and SHA-256 of bin/echonet

Run from this folder (models/ is found in the working directory, or set ECHONET_MODELS_DIR):
  bin/echonet doctor
  bin/echonet run --config firmware-config/<profile>.toml
EOF
  case "$target" in
    x86_64-cpu) echo "Needs: x86_64 Linux, glibc 2.34 or newer (Debian 12, Ubuntu 22.04 and later). No GPU." ;;
    aarch64-cpu)
      echo "Needs: 64-bit ARM Linux (aarch64, Armv8-A or newer), glibc 2.34 or newer (Debian 12, Ubuntu 22.04 and later). No GPU."
      ;;
    x86_64-cuda | jetson-cuda)
      cat <<EOF
Needs: the NVIDIA driver library libcuda.so.1 with CUDA 13.0 support (driver 580 or newer), and
the CUDA 13 libraries libcudart.so.13, libcublas.so.13, libcublasLt.so.13, libnvrtc.so.13 and
libcurand.so.10 on the library path (e.g. LD_LIBRARY_PATH=/usr/local/cuda-13.0/lib64). Kernels are
compiled for compute capability ${CUDA_COMPUTE_CAP:-87} (PTX, JIT-compiled forward to newer GPUs).
Without a usable GPU, run with --device cpu.
EOF
      ;;
  esac
  if [ "$target" = jetson-cuda ]; then
    cat <<EOF
Jetson Orin: a JetPack / L4T release whose CUDA is 13.x (JetPack 6.x ships CUDA 12.6 and its
driver cannot load this binary's CUDA 13 kernels). Profile: firmware-config/jetson-orin.toml.
EOF
  fi
}

pack() {
  local target=$1 bin=$2 name stage archive
  name="echonet-edge-$VERSION-$target"
  stage=$(mktemp -d)
  mkdir -p "$stage/$name/bin"
  cp "$bin" "$stage/$name/bin/echonet"
  cp -r models firmware-config "$stage/$name/"
  readme "$target" >"$stage/$name/README"
  {
    echo "package: $name"
    echo "commit: $COMMIT$DIRTY"
    echo "built: $(date -u -r "$bin" +%FT%TZ)"
    echo "rustc: $(rustc -V 2>/dev/null || echo unknown)"
    echo "target: $target (ELF machine 0x$(elf_machine "$bin" | cut -c1-2))"
    echo "sha256: $(sha256sum "$bin" | cut -d' ' -f1)  bin/echonet"
  } >"$stage/$name/BUILD-INFO"
  archive="$DIST/$name.tar.gz"
  tar -C "$stage" --sort=name --owner=0 --group=0 --numeric-owner --mtime="$MTIME" \
    -czf "$archive" "$name"
  rm -rf "$stage"
  echo "package: $archive ($(du -h "$archive" | cut -f1))" >&2
}

# The unpacked tarball passes its own doctor: the binary starts on its architecture and the packed
# catalog's bundles match their hashes (ECHONET_MODELS_DIR keeps it from finding the source tree's).
check() {
  local target=$1 archive=$2 dir name runner=""
  case "$target" in *-cuda)
    echo "package: --check skips $target: its binary needs the NVIDIA driver to start" >&2
    return 0
    ;;
  esac
  if [ "$target" = aarch64-cpu ] && [ "$(uname -m)" != aarch64 ]; then
    runner="qemu-aarch64 -L /usr/aarch64-linux-gnu"
  fi
  dir=$(mktemp -d)
  name=$(basename "$archive" .tar.gz)
  tar -C "$dir" -xzf "$archive"
  # shellcheck disable=SC2086  # runner is a command and its arguments
  if ! (cd "$dir/$name" && ECHONET_MODELS_DIR="$dir/$name/models" $runner bin/echonet doctor \
    --config firmware-config/default.toml >"$dir/doctor.txt" 2>&1); then
    echo "package: the unpacked $name fails its doctor:" >&2
    cat "$dir/doctor.txt" >&2
    rm -rf "$dir"
    return 1
  fi
  rm -rf "$dir"
  echo "package: unpacked $name passes echonet doctor" >&2
}

made=() skipped=()
for target in "${targets[@]}"; do
  bin=$(binary_of "$target")
  if [ "$BUILD" = 1 ]; then
    status=0
    build "$target" || status=$?
    if [ "$status" = 3 ]; then
      skipped+=("$target (no build script for it in this checkout)")
      echo "package: skipping $target: its build script is not in this checkout" >&2
      continue
    elif [ "$status" != 0 ]; then
      echo "package: building $target failed (exit $status); nothing packaged for it" >&2
      exit 1
    fi
  fi
  if [ ! -x "$bin" ]; then
    skipped+=("$target (not built: $bin)")
    echo "package: skipping $target: $bin is not built (run without --no-build to build it)" >&2
    continue
  fi
  if [ "$(elf_machine "$bin")" != "$(machine_of "$target")" ]; then
    echo "package: $bin is not a $target executable (ELF machine bytes $(elf_machine "$bin"), expected $(machine_of "$target"))" >&2
    exit 1
  fi
  pack "$target" "$bin"
  [ "$CHECK" = 0 ] || check "$target" "$DIST/echonet-edge-$VERSION-$target.tar.gz"
  made+=("$target")
done
echo "package: made ${made[*]:-nothing} in $DIST" >&2
[ ${#skipped[@]} -eq 0 ] || printf 'package: skipped %s\n' "${skipped[@]}" >&2
