#!/usr/bin/env bash
# Runs any command with an emulated V4L2 capture device at /dev/video-emu (or V4L2_EMU_DEVICE):
#   scripts/v4l2-emulated.sh ./target/release/echonet run --source v4l2 --input /dev/video-emu --duration 10
#   V4L2_EMU_FORMAT=NV12 scripts/v4l2-emulated.sh ./target/release/echonet probe-capture /dev/video-emu
# The device is tools/v4l2-emu/ (v4l2_emu.c + v4l2_emu_frames.c), preloaded (LD_PRELOAD); it is built here with cc into
# target/v4l2-emu/ when missing or older than its source. It serves phantom echo frames: unless
# V4L2_EMU_FRAMES names a frame file, one is written with `echonet phantom --emu-frames` (the
# release binary, built if missing) and reused.
#
# Settings (environment; the full list with their defaults is in the header of v4l2_emu.c and in
# README.md, "Testing live capture without a device"):
#   V4L2_EMU_FORMAT   formats offered, e.g. NV12 or "YUYV,MJPG" or "YUYV@640x480/1280x720"
#                     (default YUYV); FOURCCs YUYV UYVY NV12 YU12 GREY RGB3 BGR3 MJPG
#   V4L2_EMU_FPS      frame rate (default 30)
#   V4L2_EMU_WIDTH, V4L2_EMU_HEIGHT  size of the phantom frames this script writes (default
#                     640x480); V4L2_EMU_SEED their phantom patient's seed (default 7),
#                     V4L2_EMU_FRAME_COUNT how many (default 90, looped)
#   V4L2_EMU_FRAMES   use this frame file instead
#   V4L2_EMU_STALL_MS, V4L2_EMU_STALL_AFTER_MS, V4L2_EMU_UNPLUG_AFTER_MS,
#   V4L2_EMU_REPLUG_AFTER_MS, V4L2_EMU_GARBAGE_EVERY, V4L2_EMU_SHORT_EVERY,
#   V4L2_EMU_STRIDE_PAD, V4L2_EMU_NO_MONOTONIC, V4L2_EMU_LOG, V4L2_EMU_DEVICE: see v4l2_emu.c
#   ECHONET           the echonet binary used to write frames (default target/release/echonet)
set -euo pipefail
if [ $# -eq 0 ]; then
  echo "usage: $0 COMMAND [ARGS...]  (runs COMMAND with the emulated device at /dev/video-emu)" >&2
  exit 2
fi
root=$(cd "$(dirname "$0")/.." && pwd)
build_dir="$root/target/v4l2-emu"
emu="$root/tools/v4l2-emu"
so="$build_dir/libv4l2emu.so"
mkdir -p "$build_dir"
if [ ! -f "$so" ] || [ "$emu/v4l2_emu.c" -nt "$so" ] || [ "$emu/v4l2_emu_frames.c" -nt "$so" ] \
  || [ "$emu/v4l2_emu.h" -nt "$so" ]; then
  cc -shared -fPIC -O2 -Wall -o "$so.tmp" "$emu/v4l2_emu.c" "$emu/v4l2_emu_frames.c" -ldl -lpthread
  mv "$so.tmp" "$so"
fi
if [ -z "${V4L2_EMU_FRAMES:-}" ]; then
  width=${V4L2_EMU_WIDTH:-640}
  height=${V4L2_EMU_HEIGHT:-480}
  fps=${V4L2_EMU_FPS:-30}
  seed=${V4L2_EMU_SEED:-7}
  count=${V4L2_EMU_FRAME_COUNT:-90}
  frames="$build_dir/phantom-s${seed}-${width}x${height}-${fps}fps-${count}.frames"
  if [ ! -f "$frames" ]; then
    echonet=${ECHONET:-$root/target/release/echonet}
    if [ ! -x "$echonet" ]; then
      (cd "$root" && cargo build --release)
    fi
    "$echonet" phantom --emu-frames "$frames.tmp" --clips 1 --seed "$seed" \
      --frames "$count" --fps "$fps" --width "$width" --height "$height"
    mv "$frames.tmp" "$frames"
  fi
  export V4L2_EMU_FRAMES="$frames"
fi
export LD_PRELOAD="$so${LD_PRELOAD:+:$LD_PRELOAD}"
exec "$@"
