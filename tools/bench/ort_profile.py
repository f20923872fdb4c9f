#!/usr/bin/env python3
"""Per-node time of ONNX Runtime's static int8 (or f32) facenet trunk, grouped the way
`echonet bench --profile` groups its steps, to see per operator where one runtime loses to the
other (not guessed from totals). Uses the model `ort_peer.py` caches (run it once with --int8 to
make it), ONNX Runtime's own profiler (`SessionOptions.enable_profiling`), and prints per group:
nodes per frame, least and median microseconds per frame over the profiled runs, and the op types.

    /work/pyenv-perf/bin/python tools/bench/ort_profile.py --threads 1 --iters 10

Groups: a node's name with the block index taken out (`/net/repeat_2/repeat_2.3/branch1/...`
becomes `repeat_2 branch1/...`), so the ten Block17s add up into one row like the echonet profile's
labels. Quantize/dequantize nodes left standing between fused ops show up as their own rows.
"""
import argparse
import collections
import json
import os
import re
import statistics


def group_of(name):
    # e.g. "/net/repeat_2/repeat_2.3/branch1/branch1.0/conv/Conv_quant" -> "repeat_2 branch1/branch1.0/conv"
    n = name.replace("_kernel_time", "")
    n = re.sub(r"^/net/", "", n)
    n = re.sub(r"(repeat_\d)/repeat_\d\.\d+/", r"\1 ", n)
    n = re.sub(r"/(Conv|Relu|Add|Mul|Concat|MaxPool)[^/]*$", r" \1", n)
    return n


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=299)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--f32", action="store_true", help="profile the f32 model instead")
    ap.add_argument("--onnx", default="/tmp/echonet_ort_peer_{size}.onnx")
    ap.add_argument("--calib-frames", type=int, default=16)
    ap.add_argument("--top", type=int, default=60)
    args = ap.parse_args()

    import numpy as np
    import onnxruntime as ort

    path = args.onnx.format(size=args.size)
    if not args.f32:
        path = path.replace(".onnx", f"_int8_qdq_c{args.calib_frames}.onnx")
    if not os.path.exists(path):
        raise SystemExit(f"{path} missing: run tools/bench/ort_peer.py{'' if args.f32 else ' --int8'} first")
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.enable_profiling = True
    so.profile_file_prefix = "/tmp/ort_profile"
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, 3, args.size, args.size), dtype=np.float32)
    for _ in range(2):
        sess.run(None, {"x": x})
    for _ in range(args.iters):
        sess.run(None, {"x": x})
    trace = sess.end_profiling()
    with open(trace) as f:
        events = json.load(f)
    os.remove(trace)
    # Node events in order; each run's nodes are one "model_run" apart.
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    runs.sort(key=lambda e: e["ts"])
    runs = runs[-args.iters:]
    per_run = [collections.defaultdict(float) for _ in runs]
    count = collections.Counter()
    ops = collections.defaultdict(set)
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        for i, r in enumerate(runs):
            if r["ts"] <= e["ts"] <= r["ts"] + r["dur"]:
                g = group_of(e["name"])
                per_run[i][g] += e["dur"]
                if i == 0:
                    count[g] += 1
                ops[g].add(e.get("args", {}).get("op_name", "?"))
                break
    groups = set().union(*per_run)
    rows = []
    for g in groups:
        v = [r.get(g, 0.0) for r in per_run]
        rows.append((g, count[g], min(v), statistics.median(v), ",".join(sorted(ops[g]))))
    rows.sort(key=lambda r: -r[3])
    total_min = sum(r[2] for r in rows)
    total_med = statistics.median([sum(r.values()) for r in per_run])
    run_med = statistics.median([r["dur"] for r in runs])
    print(f"onnxruntime {ort.__version__} {'f32' if args.f32 else 'static int8'}, {args.threads} threads, "
          f"{args.iters} profiled runs: model_run median {run_med / 1000:.2f} ms, nodes {total_med / 1000:.2f} ms")
    print(f"{'group':60} {'nodes':>5} {'min ms':>8} {'med ms':>8}  ops")
    for g, c, lo, med, o in rows[:args.top]:
        print(f"{g:60} {c:5d} {lo / 1000:8.3f} {med / 1000:8.3f}  {o}")
    print(f"{'sum':60} {'':5} {total_min / 1000:8.3f} {total_med / 1000:8.3f}")


if __name__ == "__main__":
    main()
