#!/usr/bin/env bash
# Soak: the daemon on the phantom, time-compressed (replayed as fast as the machine allows), with
# the display on, one SSE client reading the stream, a results journal, and JSON Lines to a file.
# The run sizes itself: it lasts SOAK_WALL_MINUTES of wall clock (default 20, so that it outlasts
# the display history's 10-minute window whatever the machine's speed) and must have replayed at
# least SOAK_MINUTES of media time (default 30 min = 54 000 frames at 30 fps; a quiet 2-core
# machine replays about 15 media minutes per wall minute, a loaded one fewer). Every
# SOAK_INTERVAL seconds (default 5) it samples the daemon's RSS, open fds and threads from /proc.
# At the end it reports whether they are flat (the last third of the run against the first
# third after warm-up, and the last third's slope), and whether any frame was lost beyond the
# configured policy (from the run's --summary): every captured frame accounted for, drops only
# by the drop-oldest queues, no stage failure, no write failure, no stale notice.
#
#   scripts/soak.sh                                   20 min of wall clock, >= 30 min of frames
#   SOAK_WALL_MINUTES=60 SOAK_MINUTES=120 scripts/soak.sh
#   SOAK_OUT=soak-out scripts/soak.sh                 keep samples.csv, summary.json, report.txt
#   SOAK_JUDGE_ONLY=soak-out scripts/soak.sh          judge a finished run's samples again
#
# Exit status 0 when flat and nothing lost, 1 otherwise. Not part of CI (it runs for many
# minutes); the numbers of a run are in the README (Reliability).
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES="${SOAK_MINUTES:-30}"
WALL_MINUTES="${SOAK_WALL_MINUTES:-20}"
INTERVAL="${SOAK_INTERVAL:-5}"
FPS=30
BIN="${ECHONET_BIN:-target/release/echonet}"
OUT="${SOAK_OUT:-$(mktemp -d /tmp/echonet-soak.XXXXXX)}"
# RSS may rise at most this much (KiB) from the first third to the last, and its slope over
# everything after the settling time may be at most this many KiB/s, for "flat". (The slope of
# the last third alone is printed but not judged: over a few minutes the allocator's +-300 KiB
# swings make it +-1 KiB/s on a flat run.)
MAX_RISE_KB="${SOAK_MAX_RISE_KB:-4096}"
MAX_SLOPE_KBS="${SOAK_MAX_SLOPE_KBS:-0.5}"
# Seconds (wall clock) before flatness is judged: the trend history's 10-minute window filling,
# plus a minute.
SETTLE_S="${SOAK_SETTLE_S:-660}"
# The least number of frames the run must have replayed to count as a soak.
FRAMES=$((MINUTES * 60 * FPS))
WALL_S=$((WALL_MINUTES * 60))
if [ -n "${SOAK_JUDGE_ONLY:-}" ]; then
  OUT="$SOAK_JUDGE_ONLY"
  status=$(cat "$OUT/exit_status")
else
  mkdir -p "$OUT"
  [ -x "$BIN" ] || cargo build --release --all-targets
  PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  echo "soak: ${WALL_MINUTES} min of wall clock, phantom frames at ${FPS} fps as fast as possible (at least ${MINUTES} min of them, ${FRAMES} frames, to pass), display 127.0.0.1:${PORT}, samples every ${INTERVAL} s -> ${OUT}" >&2

  rm -f "$OUT/journal.sqlite" "$OUT/out.jsonl"
  ECHONET_LOG=warn "$BIN" run --source phantom --duration "$WALL_S" \
    --set source.pacing=as_fast_as_possible --set "source.phantom.fps=${FPS}" \
    --http "127.0.0.1:${PORT}" --jsonl "$OUT/out.jsonl" --journal "$OUT/journal.sqlite" \
    --summary "$OUT/summary.json" 2>"$OUT/daemon.log" &
  PID=$!
  stream_pid=""
  cleanup() {
    [ -n "$stream_pid" ] && kill "$stream_pid" 2>/dev/null || true
    kill "$PID" 2>/dev/null || true
  }
  trap cleanup EXIT

  echo "t_s,rss_kb,fds,threads,frames_captured" >"$OUT/samples.csv"
  start=$(date +%s.%N)
  while kill -0 "$PID" 2>/dev/null; do
    # One SSE client for the whole run (reconnected if it drops), as a bedside page would be.
    if [ -z "$stream_pid" ] || ! kill -0 "$stream_pid" 2>/dev/null; then
      curl -sN --max-time 100000 "http://127.0.0.1:${PORT}/api/stream" >/dev/null 2>&1 &
      stream_pid=$!
    fi
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$PID/status" 2>/dev/null || true)
    threads=$(awk '/^Threads:/ {print $2}' "/proc/$PID/status" 2>/dev/null || true)
    fds=$(ls "/proc/$PID/fd" 2>/dev/null | wc -l || true)
    captured=$(curl -s --max-time 2 "http://127.0.0.1:${PORT}/metrics" 2>/dev/null \
      | awk '/^echonet_frames_captured_total/ {print $2}' || true)
    now=$(date +%s.%N)
    if [ -n "$rss" ]; then
      echo "$(python3 -c "print(round($now-$start,1))"),${rss},${fds},${threads},${captured:-}" >>"$OUT/samples.csv"
    fi
    sleep "$INTERVAL"
  done
  set +e
  wait "$PID"
  status=$?
  set -e
  trap - EXIT
  cleanup
  echo "$status" >"$OUT/exit_status"
fi

python3 - "$OUT" "$FRAMES" "$status" "$MAX_RISE_KB" "$MAX_SLOPE_KBS" "$SETTLE_S" "$FPS" <<'EOF' | tee "$OUT/report.txt"
import csv, json, sys
out, frames, status, max_rise, max_slope = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
rows = [r for r in csv.DictReader(open(f"{out}/samples.csv")) if r["rss_kb"]]
t = [float(r["t_s"]) for r in rows]
rss = [float(r["rss_kb"]) for r in rows]
fds = [int(r["fds"]) for r in rows]
threads = [int(r["threads"]) for r in rows]
ok = True
def slope(xs, ys):
    n = len(xs)
    if n < 2: return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else 0.0
print(f"samples: {len(rows)} over {t[-1] if t else 0:.0f} s (exit status {status})")
if len(rows) < 9:
    print("too few samples to judge"); sys.exit(1)
# Memory that fills by design first: the display's trend history (10 minutes of wall clock, at
# most 20 000 points, about 2 MB) and SQLite's page cache (2 MB). Flatness is judged on what
# follows SETTLE_S (thirds of it); the RSS of every tenth of the run is printed as well.
settle = float(sys.argv[6])
tenth = max(1, len(rows) // 10)
print("RSS KiB by tenth of the run: " + ", ".join(
    f"{t[i]:.0f}s {rss[i]:.0f}" for i in range(0, len(rows), tenth)))
body = [i for i in range(len(rows)) if t[i] >= settle]
if len(body) < 9:
    print(f"too short to judge: {len(body)} samples after the {settle:.0f} s settling time "
          "(SOAK_MINUTES higher, or SOAK_SETTLE_S lower)")
    sys.exit(1)
print(f"judged on {len(body)} samples after {settle:.0f} s")
third = len(body) // 3
first, last = body[:third], body[-third:]
mean = lambda idx, v: sum(v[i] for i in idx) / len(idx)
rise = mean(last, rss) - mean(first, rss)
sl = slope([t[i] for i in last], [rss[i] for i in last])
sl_all = slope([t[i] for i in body], [rss[i] for i in body])
print(f"RSS KiB: first third mean {mean(first, rss):.0f}, last third mean {mean(last, rss):.0f} "
      f"(rise {rise:+.0f}), max {max(rss):.0f}; slope over the run {sl_all:+.3f} KiB/s, "
      f"over the last third {sl:+.3f} KiB/s")
flat_rss = rise <= max_rise and sl_all <= max_slope
print(f"  RSS flat: {'yes' if flat_rss else 'NO'} (limits: rise <= {max_rise:.0f} KiB, slope after settling <= {max_slope} KiB/s)")
fd_body = [fds[i] for i in body]
th_body = [threads[i] for i in body]
print(f"fds: min {min(fd_body)} max {max(fd_body)} (first third {mean(first, fds):.1f}, last third {mean(last, fds):.1f})")
print(f"threads: min {min(th_body)} max {max(th_body)}")
flat_fds = max(fds[i] for i in last) <= max(fds[i] for i in first)
flat_threads = max(threads[i] for i in last) <= max(threads[i] for i in first)
print(f"  fds flat: {'yes' if flat_fds else 'NO'}; threads flat: {'yes' if flat_threads else 'NO'}")
ok = ok and flat_rss and flat_fds and flat_threads
s = json.load(open(f"{out}/summary.json"))
captured, sampled = s["frames_captured"], s["frames_sampled"]
inferred, drops = s["frames_inferred"], s["drops"]
invalid = s.get("invalid_frames", {})
print(f"frames: captured {captured} ({captured / float(sys.argv[7]) / 60:.0f} min of media time; at least {frames} needed), sampled {sampled}, inferred {inferred}; "
      f"drops {drops or 'none'}; invalid {invalid or 'none'}")
print(f"records: {s['estimates_published']} estimates, {s['estimates_withheld']} withheld, "
      f"{s['stale_published']} stale; written {s['records_written']} (failures "
      f"{s['record_write_failures']}), journaled {s['records_journaled']} (failures "
      f"{s['journal_write_failures']}); latency p50 {s['latency_p50_ms']} ms, p99 {s['latency_p99_ms']} ms; "
      f"wall {s['wall_s']:.0f} s; stage failures {s['stage_failures'] or 'none'}")
# The configured policy: drop-oldest queues between stages (reasons queue_full_*). Every
# sampled frame is inferred or dropped by a queue; nothing else may be lost.
policy = all(k.startswith("queue_full_") for k in drops)
queue_drops = sum(v for k, v in drops.items() if k.startswith("queue_full_"))
too_few = captured < frames
if too_few:
    print(f"  too few frames for a soak: {captured} < {frames} (SOAK_WALL_MINUTES higher)")
ok = ok and not too_few
lost = (not policy or s["stage_failures"] or s["record_write_failures"]
        or s["journal_write_failures"] or s["stale_published"] or status != 0)
print(f"  nothing lost beyond the drop-oldest policy: {'NO' if lost else 'yes'}")
ok = ok and not lost
print("SOAK PASSED" if ok else "SOAK FAILED")
sys.exit(0 if ok else 1)
EOF
