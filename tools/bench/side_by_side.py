#!/usr/bin/env python3
"""`echonet bench` against the ONNX Runtime peer, alternately, in one run.

Each round runs every system once (A B C A B C ...), each printing its own in-process median
ms/frame; the ratio to ONNX Runtime is taken within each round, so a machine whose speed drifts
(shared, noisy) affects both sides of a ratio alike. Prints one row per round and the median of
each column. Standard library only; the ORT side needs the environment of ort_peer.py.

    python3 tools/bench/side_by_side.py --python /work/pyenv-perf/bin/python \
        --echonet target/release/echonet --conv auto --conv cpu-gemm --rounds 5
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def run_json(cmd):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    line = [l for l in out.splitlines() if l.startswith("{")][-1]
    return json.loads(line)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--python", default=sys.executable, help="Python with torch and onnxruntime")
    ap.add_argument("--echonet", action="append",
                    help="echonet binary (repeatable: builds before and after a change, timed "
                         "alternately in the same rounds); default target/release/echonet")
    ap.add_argument("--conv", action="append", help="echonet --conv values to time (repeatable)")
    ap.add_argument("--model", action="append",
                    help="bundle for echonet bench --model (repeatable: e.g. an f32 bundle and its "
                         "`echonet quantize` int8 form); default: the untrained network")
    ap.add_argument("--extra", default="", help="extra echonet bench arguments, one string")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--size", type=int, default=299)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--ort-int8", action="store_true",
                    help="also time ONNX Runtime's static int8 (QDQ, per-channel weights, 16 "
                         "calibration frames); ratios are then against it")
    args = ap.parse_args()
    convs = args.conv or ["auto"]
    binaries = args.echonet or ["target/release/echonet"]
    common = ["--threads", str(args.threads), "--batch", str(args.batch), "--iters", str(args.iters)]
    def label(binary, conv):
        name = f"echonet --conv {conv}"
        return name if len(binaries) == 1 else f"{os.path.basename(binary)} {conv}"

    models = args.model or [None]
    systems = [(label(b, c) + (f" {os.path.basename(m)}" if m else ""),
                [b, "bench", "--device", "cpu", "--json", "--input-size", str(args.size),
                 "--conv", c, *common, *(["--model", m] if m else []), *args.extra.split()])
               for b in binaries for c in convs for m in models]
    ort = [args.python, os.path.join(HERE, "ort_peer.py"), "--json", "--size", str(args.size),
           *common]
    if args.ort_int8:
        # ONNX Runtime f32 for reference, then its int8 last: the column the ratios divide by.
        systems.append(("onnxruntime f32", ort))
        systems.append(("onnxruntime int8", ort + ["--int8"]))
    else:
        systems.append(("onnxruntime", ort))
    names = [n for n, _ in systems]
    rows = []
    print("round  " + "  ".join(f"{n[-22:]:>22}" for n in names) + "  " +
          "  ".join(f"{'ratio ' + str(i + 1):>16}" for i in range(len(names) - 1)))
    cpu_rows = []
    for r in range(args.rounds):
        reports = [run_json(cmd) for _, cmd in systems]
        ms = [rep["median_ms_per_frame"] for rep in reports]
        cpu = [rep.get("cpu_ms_per_frame") or float("nan") for rep in reports]
        cpu_rows.append(cpu + [c / cpu[-1] for c in cpu[:-1]])
        ratios = [m / ms[-1] for m in ms[:-1]]
        rows.append(ms + ratios)
        print(f"{r + 1:>5}  " + "  ".join(f"{m:>22.2f}" for m in ms) + "  " +
              "  ".join(f"{x:>16.3f}" for x in ratios), flush=True)
    med = [statistics.median(c) for c in zip(*rows)]
    print("median " + "  ".join(f"{m:>22.2f}" for m in med[:len(names)]) + "  " +
          "  ".join(f"{x:>16.3f}" for x in med[len(names):]))
    cmed = [statistics.median(c) for c in zip(*cpu_rows)]
    print("cpu ms/frame (process CPU time, all threads; median of rounds):")
    print("cpu    " + "  ".join(f"{m:>22.2f}" for m in cmed[:len(names)]) + "  " +
          "  ".join(f"{x:>16.3f}" for x in cmed[len(names):]))
    print("load average at the end:", " ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
