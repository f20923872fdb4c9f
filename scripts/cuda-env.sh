# Source this on a GPU machine before running the CUDA binary (target/cuda/release/echonet):
#   source scripts/cuda-env.sh
# It finds the NVIDIA driver library and the CUDA 13 runtime libraries the binary is linked
# against (cuBLAS, cuBLASLt, cuRAND, NVRTC, the CUDA runtime)
# and puts their folders on LD_LIBRARY_PATH. They may come from a CUDA toolkit, from PyTorch's
# nvidia-* wheels, or from JetPack on a Jetson. A library it cannot find is named on stderr.
_echonet_libs="libcuda.so.1 libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libcudart.so.13 libnvrtc.so.13"
# Where to look, most likely first: the loader's cache, then one pass over the usual roots
# (driver mounts, toolkits, Python's site-packages for the nvidia-* wheels).
_echonet_roots=""
for _echonet_r in /usr/local/nvidia /usr/local/cuda /usr/local/cuda-13 /usr/lib/x86_64-linux-gnu /usr/lib/aarch64-linux-gnu /usr/lib64 /usr/lib /opt; do
  [ -d "$_echonet_r" ] && _echonet_roots="$_echonet_roots $_echonet_r"
done
_echonet_site=$(python3 -c 'import site, sys; print(" ".join(site.getsitepackages() + [site.getusersitepackages()]))' 2>/dev/null)
for _echonet_r in $_echonet_site; do [ -d "$_echonet_r/nvidia" ] && _echonet_roots="$_echonet_roots $_echonet_r/nvidia"; done
_echonet_names=""
for _echonet_l in $_echonet_libs; do _echonet_names="$_echonet_names -o -name $_echonet_l"; done
# shellcheck disable=SC2086
_echonet_found=$(find -L $_echonet_roots \( ${_echonet_names# -o } \) 2>/dev/null | grep -v -E '/stubs/|/compat/')
_echonet_dirs=""
for _echonet_l in $_echonet_libs; do
  _echonet_p=$( (ldconfig -p 2>/dev/null | awk -v l="$_echonet_l" '$1 == l {print $NF; exit}'); true)
  [ -n "$_echonet_p" ] || _echonet_p=$(printf '%s\n' "$_echonet_found" | grep "/$_echonet_l\$" | head -1)
  if [ -z "$_echonet_p" ]; then
    echo "cuda-env: $_echonet_l not found" >&2
  else
    case ":$_echonet_dirs:" in *":$(dirname "$_echonet_p"):"*) ;; *) _echonet_dirs="$_echonet_dirs:$(dirname "$_echonet_p")" ;; esac
  fi
done
export LD_LIBRARY_PATH="${_echonet_dirs#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
unset _echonet_dirs _echonet_libs _echonet_l _echonet_p _echonet_r _echonet_roots _echonet_site _echonet_names _echonet_found
