#!/usr/bin/env python3
"""Where the 2-thread split of the f32 (or int8) plan loses time, per step: runs `echonet bench
--profile` at 1 and at 2 threads alternately and keeps, per step and per column, the least value
over the rounds (another process can only add to them). Columns, ms per frame:

  wall1    the step's wall time at 1 thread (its whole work)
  wall2    its wall time at 2 threads
  lost     wall2 - wall1 / 2: what the split costs against a perfect one
  busy2    time inside the step's work items at 2 threads, both threads together
  infl     busy2 - wall1: how much slower the same work runs beside a second thread
  busiest  the busier thread's time inside items
  handov   wall2 - busiest: handing the items to the pool and waiting for the last one
  imbal    busiest - busy2 / 2: the imbalance between the two threads

The sums of least values are not a frame time; use them to rank steps, and side_by_side.py for
frame times.

    python3 tools/bench/split_min.py --model full.safetensors --rounds 5 target/release/echonet
"""
import argparse
import os
import re
import subprocess


def bench(binary, model, threads, iters):
    return subprocess.run(
        [binary, "bench", "--model", model, "--threads", str(threads), "--iters", str(iters),
         "--warmup", "1", "--profile"], capture_output=True, text=True, check=True).stderr


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("binary")
    ap.add_argument("--model", required=True)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    wall1, split = {}, {}
    loads = []
    for _ in range(a.rounds):
        loads.append(os.getloadavg()[0])
        for line in bench(a.binary, a.model, 1, a.iters).splitlines():
            # label, calls, ms/iter, share, GFLOP/s, thread cpu, GFLOP/cpu-s
            m = re.match(r"^(.+?)\s+(\d+)\s+([\d.]+)\s+([\d.]+)%\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$", line)
            if m:
                k = m.group(1).strip()
                wall1[k] = min(float(m.group(3)), wall1.get(k, float("inf")))
        loads.append(os.getloadavg()[0])
        table = False
        for line in bench(a.binary, a.model, 2, a.iters).splitlines():
            if line.startswith("split (ms/iter)"):
                table = True
                continue
            if table:
                # label, wall, busy sum, busiest, hand-over, imbalance
                parts = line.rsplit(None, 5)
                k, v = parts[0].strip(), [float(x) for x in parts[1:]]
                split[k] = [min(x, y) for x, y in zip(split.get(k, [float("inf")] * 5), v)]
    print(f"load average {min(loads):.2f}-{max(loads):.2f}, {a.rounds} rounds, least per column")
    print(f"{'step':44}{'wall1':>8}{'wall2':>8}{'lost':>7}{'busy2':>8}{'infl':>7}{'busiest':>8}{'handov':>7}{'imbal':>7}")
    rows = []
    for k, w1 in wall1.items():
        if k in split:
            wall, busy, busiest, hand, imb = split[k]
            rows.append((wall - w1 / 2, k, [w1, wall, wall - w1 / 2, busy, busy - w1, busiest, hand, imb]))
    rows.sort(reverse=True)
    total = [0.0] * 8
    for _, k, v in rows:
        print(f"{k:44}" + "".join(f"{x:8.2f}" if i in (0, 1, 3, 5) else f"{x:7.2f}" for i, x in enumerate(v)))
        total = [t + x for t, x in zip(total, v)]
    print(f"{'sum':44}" + "".join(f"{x:8.2f}" if i in (0, 1, 3, 5) else f"{x:7.2f}" for i, x in enumerate(total)))


if __name__ == "__main__":
    main()
