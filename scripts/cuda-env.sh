# Source this on a GPU machine before running the CUDA binary (target/cuda/release/echonet):
#   source scripts/cuda-env.sh
# It finds the NVIDIA driver library and the CUDA 13 runtime libraries the binary is linked
# against (cuBLAS, cuBLASLt, cuRAND, NVRTC, the CUDA runtime; cuDNN 9 for a `cudnn` build) and
# puts their folders on LD_LIBRARY_PATH. They may come from a CUDA toolkit, from PyTorch's
# nvidia-* wheels, or from JetPack on a Jetson. A library it cannot find is named on stderr.
_echonet_dirs=""
_echonet_libs="libcuda.so.1 libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libcudart.so.13 libnvrtc.so.13"
if [ "${ECHONET_CUDNN:-0}" = 1 ]; then _echonet_libs="$_echonet_libs libcudnn.so.9"; fi
for _echonet_l in $_echonet_libs; do
  _echonet_p=$( (ldconfig -p 2>/dev/null | awk -v l="$_echonet_l" '$1 == l {print $NF; exit}'); true)
  if [ -z "$_echonet_p" ]; then
    _echonet_p=$(find / -xdev \( -path /proc -o -path /sys \) -prune -o -name "$_echonet_l" -print 2>/dev/null \
      | grep -v -E '/stubs/|/compat/' | head -1)
  fi
  if [ -z "$_echonet_p" ]; then
    echo "cuda-env: $_echonet_l not found" >&2
  else
    _echonet_dirs="$_echonet_dirs:$(dirname "$_echonet_p")"
  fi
done
export LD_LIBRARY_PATH="${_echonet_dirs#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
unset _echonet_dirs _echonet_libs _echonet_l _echonet_p
