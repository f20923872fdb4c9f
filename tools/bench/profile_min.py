#!/usr/bin/env python3
"""Per-step thread CPU time of several echonet builds on a loaded machine: runs
`echonet bench --profile` of each build alternately, keeps each step's least thread CPU time
over the rounds (another process can only add to it), and prints the steps side by side with
their sums. Less sensitive to load than wall or process CPU time, but it is not a frame time:
the sum leaves out what runs outside the timed steps.

    python3 tools/bench/profile_min.py --model full.safetensors --rounds 5 OLD NEW
"""
import argparse
import re
import subprocess


def profile(binary, model, threads, iters):
    # The profile table goes to stderr.
    out = subprocess.run(
        [binary, "bench", "--model", model, "--threads", str(threads), "--iters", str(iters),
         "--warmup", "1", "--profile"],
        capture_output=True, text=True, check=True).stderr
    steps = {}
    for line in out.splitlines():
        # label, calls, ms/iter, share, GFLOP/s, thread cpu, GFLOP/cpu-s
        m = re.match(r"^(.+?)\s+(\d+)\s+([\d.]+)\s+([\d.]+)%\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$", line)
        if m:
            steps[m.group(1).strip()] = float(m.group(6))
    return steps


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("binaries", nargs="+")
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--top", type=int, default=40)
    a = ap.parse_args()
    best = [dict() for _ in a.binaries]
    for _ in range(a.rounds):
        for i, b in enumerate(a.binaries):
            for k, v in profile(b, a.model, a.threads, a.iters).items():
                best[i][k] = min(v, best[i].get(k, v))
    labels = sorted(set().union(*best), key=lambda k: -max(b.get(k, 0) for b in best))
    print(f"{'step (least thread cpu ms per frame over ' + str(a.rounds) + ' rounds)':55}" + "".join(f"{'build ' + str(i + 1):>10}" for i in range(len(best))))
    for k in labels[:a.top]:
        print(f"{k:55}" + "".join(f"{b.get(k, float('nan')):10.2f}" for b in best))
    print(f"{'sum of steps':55}" + "".join(f"{sum(b.values()):10.2f}" for b in best))


if __name__ == "__main__":
    main()
