#!/usr/bin/env bash
# Builds the CUDA binary of echonet-edge (`--features cuda`) on a machine that has neither a GPU nor
# a CUDA toolkit: NVIDIA's CUDA 13.0 wheels from PyPI supply nvcc, the headers and the link-time
# libraries, and a stub libcuda.so.1 stands in for the driver library at link time only (the real
# one is found on the GPU machine at run time). `make cuda` calls this; CI calls it through `make test`.
#
#   scripts/cuda-build.sh [extra cargo args...]        # from anywhere; builds in the project root
#
# Environment:
#   CUDA_COMPUTE_CAP   the GPU the kernels are compiled for (default 87 = Jetson Orin). candle embeds
#                      PTX, which the driver JIT-compiles forward at start-up for any newer GPU
#                      (87 runs on 89 and 90 = H100/H200 too); a lower number widens the set of GPUs
#                      the binary starts on, a matching one gives the driver nothing to compile.
#   CUDA_FEATURES      cargo features (default "cuda")
#   CUDA_KIT_DIR       where the toolkit wheels are installed (default ~/.cache/cuda-kit-13.0)
#   CARGO_TARGET_DIR   default target/cuda, so the CPU build in target/release is never overwritten.
# The first run downloads about 1 GB of wheels and compiles candle's CUDA kernels (about 16 min on
# 2 cores); later runs reuse both. Output: $CARGO_TARGET_DIR/release/echonet (dynamically linked to
# libcuda.so.1, libcublas, libcublasLt, libcurand, libnvrtc and libcudart of CUDA 13). On the GPU
# machine, `source scripts/cuda-env.sh` finds those libraries and sets LD_LIBRARY_PATH.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
KIT=${CUDA_KIT_DIR:-$HOME/.cache/cuda-kit-13.0}
command -v python3 >/dev/null || { echo "cuda-build: python3 is needed to install the CUDA wheels" >&2; exit 1; }
command -v cc >/dev/null || { echo "cuda-build: a C compiler (cc) is needed for the libcuda link stub" >&2; exit 1; }
if [ ! -x "$KIT/venv/bin/python" ]; then
  python3 -m venv "$KIT/venv" || {
    echo "cuda-build: python3 -m venv failed (Debian: apt-get install python3-venv)" >&2
    exit 1
  }
fi
CU=$("$KIT/venv/bin/python" -c 'import sys,os;print(os.path.join(sys.prefix,"lib","python%d.%d"%sys.version_info[:2],"site-packages","nvidia","cu13"))')
if [ ! -x "$CU/bin/nvcc" ] || [ ! -e "$CU/lib/libcurand.so.10" ]; then
  echo "cuda-build: installing the CUDA 13.0 toolkit wheels into $KIT (about 1 GB, once)" >&2
  "$KIT/venv/bin/pip" install -q --disable-pip-version-check \
    nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-cuda-cccl==13.0.85 \
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-nvrtc==13.0.88 "nvidia-cublas==13.0.*" "nvidia-curand==10.4.0.*"
fi
# Link-time stand-ins, in $CUDA_HOME/lib/stubs where cudarc's build script looks (so no RUSTFLAGS
# are needed, and the dependencies the CPU build compiled are reused): unversioned names for the
# toolkit libraries, and a stub libcuda.so.1 exporting every driver-API symbol that cuda.h
# declares (each returns 999, "unknown error"). The stub is never loaded at run time: the binary
# asks for libcuda.so.1, which on a GPU machine is the driver's own.
LINK="$CU/lib/stubs"
mkdir -p "$LINK"
for n in nvrtc cublas cublasLt cudart; do ln -sf "$CU/lib/lib$n.so.13" "$LINK/lib$n.so"; done
ln -sf "$CU/lib/libcurand.so.10" "$LINK/libcurand.so"
if [ ! -e "$LINK/libcuda.so" ]; then
  grep -oE '\bcu[A-Z][A-Za-z0-9_]*' "$CU/include/cuda.h" | sort -u | sed 's/.*/int &(void){return 999;}/' >"$LINK/cuda_stub.c"
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$LINK/libcuda.so" "$LINK/cuda_stub.c"
fi
export CUDA_HOME="$CU" NVCC="$CU/bin/nvcc" PATH="$CU/bin:$PATH"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-87}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target/cuda}"
echo "cuda-build: CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP features=${CUDA_FEATURES:-cuda} target=$CARGO_TARGET_DIR" >&2
exec "${CARGO:-cargo}" build --release --features "${CUDA_FEATURES:-cuda}" "$@"
