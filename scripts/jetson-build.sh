#!/usr/bin/env bash
# The Jetson Orin CUDA binary (aarch64 host code, CUDA kernels for compute capability 8.7), built
# on an x86_64 machine with no GPU and no CUDA installation. It cannot run here; see the README's
# "Deployment" section for what the Jetson needs.
#
#   scripts/jetson-build.sh [extra cargo args...]        (make jetson)
#
# How, the same idea as scripts/cuda-build.sh (the x86_64 CUDA build) for another host:
#   - nvcc, its headers and compiler back end: NVIDIA's CUDA 13.0 x86_64 wheels from PyPI, shared
#     with scripts/cuda-build.sh ($CUDA_KIT_DIR). nvcc emits the PTX that candle embeds, and compiles
#     candle-kernels' static library (device code for sm_87, host code by aarch64-linux-gnu-g++).
#   - the libraries the binary links against: the aarch64 (sbsa) builds of cudart, cublas, cublasLt,
#     curand and nvrtc from the same CUDA 13.0 release, as PyPI manylinux aarch64 wheels unpacked
#     into $JETSON_KIT_DIR (pip --platform: nothing of them runs here).
#   - libcuda.so.1 (the driver, present only on the device): a link-time stub built with the
#     aarch64 cross gcc, exporting every driver-API symbol that cuda.h declares; never shipped.
#   - rustc: aarch64-unknown-linux-gnu, -C target-cpu=cortex-a78ae (the Orin's cores), its own
#     target directory target/jetson.
# Env: CUDA_COMPUTE_CAP (default 87), CUDA_KIT_DIR (default ~/.cache/cuda-kit-13.0),
#      JETSON_KIT_DIR (default ~/.cache/cuda-kit-13.0-sbsa), AARCH64_TARGET_CPU (default cortex-a78ae).
# First run: about 1 GB of x86 wheels (when scripts/cuda-build.sh has not fetched them) and 0.9 GB
# of aarch64 wheels, then candle's CUDA kernels; later runs reuse all of it.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
bash scripts/install-cross.sh
export AARCH64_TARGET_CPU=${AARCH64_TARGET_CPU:-cortex-a78ae}
# shellcheck source=cross-env.sh
. scripts/cross-env.sh
command -v python3 >/dev/null || { echo "jetson-build: python3 is needed to fetch the CUDA wheels" >&2; exit 1; }

# The same CUDA 13.0 release on both sides: nvcc's headers must match the libraries linked.
NVCC_WHEELS=(nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-cuda-cccl==13.0.85
  nvidia-cuda-runtime==13.0.96)
SBSA_WHEELS=(nvidia-cuda-runtime==13.0.96 nvidia-cuda-nvrtc==13.0.88 "nvidia-cublas==13.0.*" "nvidia-curand==10.4.0.*")

KIT=${CUDA_KIT_DIR:-$HOME/.cache/cuda-kit-13.0}
if [ ! -x "$KIT/venv/bin/python" ]; then
  python3 -m venv "$KIT/venv" || {
    echo "jetson-build: python3 -m venv failed (Debian: apt-get install python3-venv)" >&2
    exit 1
  }
fi
CU=$("$KIT/venv/bin/python" -c 'import sys,os;print(os.path.join(sys.prefix,"lib","python%d.%d"%sys.version_info[:2],"site-packages","nvidia","cu13"))')
if [ ! -x "$CU/bin/nvcc" ] || [ ! -e "$CU/include/cuda_runtime.h" ]; then
  echo "jetson-build: installing nvcc (CUDA 13.0 x86_64 wheels) into $KIT, once" >&2
  "$KIT/venv/bin/pip" install -q --disable-pip-version-check "${NVCC_WHEELS[@]}"
fi

SBSA_KIT=${JETSON_KIT_DIR:-$HOME/.cache/cuda-kit-13.0-sbsa}
SBSA="$SBSA_KIT/site/nvidia/cu13/lib"
if [ ! -e "$SBSA/libcublasLt.so.13" ] || [ ! -e "$SBSA/libcurand.so.10" ] || [ ! -e "$SBSA/libnvrtc.so.13" ]; then
  echo "jetson-build: fetching the aarch64 CUDA 13.0 libraries (PyPI manylinux aarch64 wheels, about 0.9 GB) into $SBSA_KIT, once" >&2
  "$KIT/venv/bin/pip" install -q --disable-pip-version-check --upgrade --target "$SBSA_KIT/site" --no-deps \
    --only-binary=:all: --python-version 3.11 --platform manylinux2014_aarch64 \
    --platform manylinux_2_27_aarch64 --platform manylinux_2_28_aarch64 "${SBSA_WHEELS[@]}"
fi
for lib in libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libnvrtc.so.13; do
  if [ "$(od -An -tx1 -j18 -N2 "$SBSA/$lib" | tr -d ' \n')" != b700 ]; then
    echo "jetson-build: $SBSA/$lib is not an aarch64 library; remove $SBSA_KIT and run again" >&2
    exit 1
  fi
done

# The link directory: unversioned names for the aarch64 libraries, and the libcuda.so.1 stub
# (each function returns 999, "unknown error"; the device's own libcuda.so.1 has the same soname
# and is what the binary loads there).
LINK="$SBSA_KIT/link"
mkdir -p "$LINK"
for n in nvrtc cublas cublasLt cudart; do ln -sf "$SBSA/lib$n.so.13" "$LINK/lib$n.so"; done
ln -sf "$SBSA/libcurand.so.10" "$LINK/libcurand.so"
if [ ! -e "$LINK/libcuda.so" ] || [ "$(od -An -tx1 -j18 -N2 "$LINK/libcuda.so" | tr -d ' \n')" != b700 ]; then
  grep -oE '\bcu[A-Z][A-Za-z0-9_]*' "$CU/include/cuda.h" | sort -u | sed 's/.*/int &(void){return 999;}/' >"$LINK/cuda_stub.c"
  aarch64-linux-gnu-gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$LINK/libcuda.so" "$LINK/cuda_stub.c"
fi

export CUDA_HOME="$CU" NVCC="$CU/bin/nvcc" PATH="$CU/bin:$PATH"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-87}"
# candle-kernels' static library has host code: nvcc hands it to the aarch64 compiler.
export NVCC_CCBIN=aarch64-linux-gnu-g++
export CARGO_TARGET_DIR="${JETSON_TARGET_DIR:-$ROOT/target/jetson}"
# -L applies to the aarch64 artefacts only (build scripts get no RUSTFLAGS when --target is given),
# and comes before the x86 kit's lib/ that cudarc's build script adds.
RUSTFLAGS="$(aarch64_rustflags) -L native=$LINK"
export RUSTFLAGS
BIN="$CARGO_TARGET_DIR/$AARCH64_TRIPLE/release/echonet"
echo "jetson-build: CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP target-cpu=$AARCH64_TARGET_CPU target=$CARGO_TARGET_DIR" >&2
t0=$SECONDS
"${CARGO:-cargo}" build --release --locked --target "$AARCH64_TRIPLE" --features "${CUDA_FEATURES:-cuda}" --bin echonet "$@"

# What was made: an aarch64 executable that needs the driver and the CUDA 13 libraries.
if [ "$(od -An -tx1 -j18 -N2 "$BIN" | tr -d ' \n')" != b700 ]; then
  echo "jetson-build: $BIN is not an aarch64 executable" >&2
  exit 1
fi
needed=$(aarch64-linux-gnu-readelf -d "$BIN" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | tr '\n' ' ')
for lib in libcuda.so.1 libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libnvrtc.so.13 libcudart.so.13; do
  case " $needed" in
    *" $lib "*) ;;
    *)
      echo "jetson-build: $BIN does not link $lib (NEEDED: $needed)" >&2
      exit 1
      ;;
  esac
done
echo "jetson-build: $BIN built in $((SECONDS - t0)) s; NEEDED: $needed" >&2

# Every library and symbol it needs resolves: under qemu, with the aarch64 CUDA libraries and the
# driver stub on the loader's path, the binary starts and `doctor` runs to its CUDA check (which
# reports no device: the stub's cuInit fails). A missing or mismatched library fails here, not on
# the Jetson.
if command -v qemu-aarch64 >/dev/null; then
  STUB_DIR="$SBSA_KIT/loader"
  mkdir -p "$STUB_DIR"
  ln -sf "$LINK/libcuda.so" "$STUB_DIR/libcuda.so.1"
  if ! out=$(LD_LIBRARY_PATH="$STUB_DIR:$SBSA" timeout 300 qemu-aarch64 -L /usr/aarch64-linux-gnu "$BIN" doctor --json 2>&1); then
    case "$out" in
      *"error while loading shared libraries"* | *"symbol lookup error"* | *"version \`"*)
        echo "jetson-build: $BIN does not load under qemu:" >&2
        echo "$out" >&2
        exit 1
        ;;
    esac
  fi
  if echo "$out" | grep -qE '"cuda_feature": ?true'; then
    echo "jetson-build: loads under qemu with the driver stub; doctor: $(echo "$out" | grep -oE '"reason": ?"[^"]*"' | head -1)" >&2
  else
    echo "jetson-build: $BIN ran under qemu but doctor did not report a CUDA build:" >&2
    echo "$out" >&2
    exit 1
  fi
else
  echo "jetson-build: qemu-aarch64 not found; the load check under emulation was skipped" >&2
fi
