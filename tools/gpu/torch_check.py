#!/usr/bin/env python3
"""PyTorch side of scripts/gpu-check.sh (needs torch, numpy, safetensors and a CUDA GPU).

  torch_check.py prepare OUTDIR   width-1 InceptionResNet-v1 (facenet names) with randomised
                                   weights and BatchNorms (tools/parity/make_goldens.py's model
                                   and randomisation, seed 20261127), two task heads, saved as
                                   OUTDIR/irv1_w1.safetensors; a [4,3,299,299] standard-normal
                                   input OUTDIR/input_299.npy; the float64 reference features
                                   OUTDIR/expected_features.npy (computed on the GPU in float64);
                                   and PyTorch's own f32/f16/bf16 errors against that reference
                                   in OUTDIR/torch_parity.json.
  torch_check.py compare REF.npy INFER.json   relative L2 error of `echonet infer --features`
                                   output against REF (one JSON object on stdout).
  torch_check.py report RESULTS   the table of scripts/gpu-check.sh from the files in RESULTS
                                   (standard library only; markdown on stdout).
  torch_check.py bench OUTDIR [--budget-s S]   PyTorch timings of the same network: eager f32
                                   and f16, and torch.compile (mode reduce-overhead: Inductor
                                   kernels + CUDA graphs) f16, at batch 1 and 20, with CUDA events,
                                   median of many calls after warm-up; OUTDIR/torch_bench.json.
                                   torch.compile steps are skipped once S seconds have passed.

Timing method: each variant warms up (compilation, autotuning, graph capture), then each of
`reps` repetitions times `inner` back-to-back calls between two CUDA events; the figure is the
median over repetitions of (elapsed / inner), per call and per frame.
"""

import importlib.util
import json
import math
import os
import sys
import time

try:  # the report needs neither; the other commands need both
    import numpy as np
    import torch
except ImportError:  # pragma: no cover
    np = torch = None

_no_grad = torch.no_grad if torch is not None else (lambda: (lambda f: f))

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SEED = 20261127


def goldens_module():
    path = os.path.join(ROOT, "tools", "parity", "make_goldens.py")
    spec = importlib.util.spec_from_file_location("make_goldens", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def build(seed=SEED):
    g = goldens_module()
    torch.manual_seed(seed)
    model = g.randomise(g.WidthInceptionResnetV1(1.0, 512))
    heads = g.make_heads(512)
    return g, model, heads


def rel_l2(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@_no_grad()
def prepare(outdir):
    from safetensors.torch import save_file

    os.makedirs(outdir, exist_ok=True)
    g, model, heads = build()
    sd = g.full_state_dict(model, heads)
    save_file({k: v.contiguous() for k, v in sd.items()}, os.path.join(outdir, "irv1_w1.safetensors"))
    x = torch.randn(4, 3, 299, 299, generator=torch.Generator().manual_seed(SEED + 1))
    np.save(os.path.join(outdir, "input_299.npy"), x.numpy().astype(np.float32))
    dev = torch.device("cuda")
    m64 = model.to(dev).double().eval()
    ref = m64.features(x.to(dev).double()).cpu().numpy()
    g.check_sane(torch.from_numpy(ref), "reference features")
    np.save(os.path.join(outdir, "expected_features.npy"), ref)
    # PyTorch's own error against the same reference, for each run dtype (TF32 off for f32).
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    own = {}
    for name, dt in (("f32", torch.float32), ("f16", torch.float16), ("bf16", torch.bfloat16)):
        m = model.to(dtype=dt)
        f = m.features(x.to(dev, dtype=dt)).float().cpu().numpy()
        own[name] = rel_l2(f, ref)
    with open(os.path.join(outdir, "torch_parity.json"), "w") as fh:
        json.dump(own, fh)
    print(json.dumps({"prepared": outdir, "torch_rel_l2": own}))


def compare(ref_path, infer_json):
    ref = np.load(ref_path)
    with open(infer_json) as fh:
        frames = json.load(fh)["frames"]
    got = np.array([f["features"] for f in frames], dtype=np.float64)
    per = [rel_l2(got[i], ref[i]) for i in range(len(ref))]
    finite = bool(np.isfinite(got).all())
    print(json.dumps({"rel_l2": rel_l2(got, ref), "per_frame": per, "finite": finite}))


def time_call(fn, x, reps=30, inner=10):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        start.record()
        for _ in range(inner):
            fn(x)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / inner)
    times.sort()
    return times[len(times) // 2]


@_no_grad()
def bench(outdir, budget_s):
    t0 = time.time()
    _, model, _ = build()
    dev = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    results = []

    def record(variant, dtype, batch, ms, note=""):
        row = {"variant": variant, "dtype": dtype, "batch": batch,
               "ms_per_call": ms, "ms_per_frame": ms / batch, "note": note}
        results.append(row)
        print(json.dumps(row), flush=True)
        with open(os.path.join(outdir, "torch_bench.json"), "w") as fh:
            json.dump(results, fh, indent=1)

    for name, dt in (("f32", torch.float32), ("f16", torch.float16)):
        m = model.to(dev, dtype=dt).eval()
        for batch in (1, 20):
            x = torch.randn(batch, 3, 299, 299, device=dev, dtype=dt)
            for _ in range(5):
                m.features(x)
            torch.cuda.synchronize()
            record("pytorch eager", name, batch, time_call(m.features, x))
    m = model.to(dev, dtype=torch.float16).eval()
    for batch in (1, 20):
        # A compile takes 30-90 s: start one only with at least 45 s of the budget left.
        if time.time() - t0 > budget_s - 45:
            record("torch.compile", "f16", batch, float("nan"), f"skipped: over the {budget_s:.0f} s budget")
            continue
        try:
            c0 = time.time()
            fn = torch.compile(m.features, mode="reduce-overhead", dynamic=False)
            x = torch.randn(batch, 3, 299, 299, device=dev, dtype=torch.float16)
            for _ in range(5):
                fn(x)
            torch.cuda.synchronize()
            compile_s = time.time() - c0
            record("torch.compile reduce-overhead", "f16", batch, time_call(fn, x),
                   f"compile+warm-up {compile_s:.0f} s")
        except Exception as e:  # a compile failure is a finding, not a crash of the check
            record("torch.compile reduce-overhead", "f16", batch, float("nan"), f"failed: {e}"[:200])


# ---------------------------------------------------------------------------------------------
# The table (standard library only, so it also runs where torch is missing).

PARITY_LIMITS = {"f32": 1e-4, "f16": 1e-2, "bf16": 3e-2}


def _load_json(path):
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def _read(path):
    try:
        with open(path) as fh:
            return fh.read()
    except OSError:
        return ""


def _fmt_ms(v):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.3f}" if v < 10 else f"{v:.1f}"


def report(results):
    import re

    steps = {}
    for line in _read(os.path.join(results, "steps.tsv")).splitlines():
        parts = line.split("\t")
        if len(parts) == 3:
            steps[parts[0]] = (parts[1], float(parts[2]) if parts[2] else 0.0)
    failed = []
    out = []
    smi = _read(os.path.join(results, "nvidia-smi.out")).strip().splitlines()
    card = smi[1] if len(smi) > 1 else "unknown card (nvidia-smi failed)"
    doctor = _load_json(os.path.join(results, "doctor.out")) or {}
    built_for = "?"
    for c in doctor.get("checks", []):
        if c.get("check") == "cuda" and isinstance(c.get("detail"), dict):
            built_for = c["detail"].get("kernels_built_for") or "?"
    out.append(f"GPU check, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    out.append(f"card: {card} (nvidia-smi: name, compute cap, memory, driver, SM clock, max SM clock, power limit)")
    out.append(f"binary: kernels built for compute {built_for}; first CUDA start incl. PTX JIT "
               f"{steps.get('first-start', ('?', float('nan')))[1]:.1f} s")
    out.append("")
    out.append("| check | setting | result | limit / peer | verdict |")
    out.append("| --- | --- | --- | --- | --- |")

    def row(check, setting, result, peer, ok):
        verdict = "-" if ok is None else ("ok" if ok else "FAIL")
        if ok is False:
            failed.append(f"{check} {setting}")
        out.append(f"| {check} | {setting} | {result} | {peer} | {verdict} |")

    # GPU tests
    t = _read(os.path.join(results, "gpu-tests.out"))
    m = re.search(r"test result: (\w+)\. (\d+) passed; (\d+) failed", t)
    if m:
        row("GPU tests (tests/gpu.rs)", "--ignored", f"{m.group(2)} passed, {m.group(3)} failed",
            "all pass", m.group(1) == "ok")
    else:
        row("GPU tests (tests/gpu.rs)", "--ignored", f"did not finish (exit {steps.get('gpu-tests', ('?',))[0]})", "all pass", False)
    # Parity
    own = _load_json(os.path.join(results, "torch_parity.json")) or {}
    for v in ("f32-graph", "f32-plain", "f16-graph", "f16-plain", "bf16-graph"):
        dt = v.split("-")[0]
        p = _load_json(os.path.join(results, f"parity-{v}.json"))
        lim = PARITY_LIMITS[dt]
        peer = f"<= {lim:g}; PyTorch {dt} itself {own[dt]:.1e}" if dt in own else f"<= {lim:g}"
        if p is None:
            row("parity vs PyTorch f64, width 1, 299 px, 4 frames", f"candle {v.replace('-', ', ')}", "no result", peer, False)
        else:
            ok = p["finite"] and p["rel_l2"] <= lim
            row("parity vs PyTorch f64, width 1, 299 px, 4 frames", f"candle {v.replace('-', ', ')}",
                f"rel L2 {p['rel_l2']:.2e}", peer, ok)
    # Speed
    torch_rows = _load_json(os.path.join(results, "torch_bench.json")) or []

    def torch_ms(variant_prefix, dt, b):
        for r in torch_rows:
            if r["variant"].startswith(variant_prefix) and r["dtype"] == dt and r["batch"] == b:
                return r["ms_per_frame"], r.get("note", "")
        return None, ""

    for dt in ("f16", "f32"):
        for b in (1, 20):
            eager, _ = torch_ms("pytorch eager", dt, b)
            comp, note = torch_ms("torch.compile", dt, b) if dt == "f16" else (None, "")
            for g in ("graph", "plain"):
                r = _load_json(os.path.join(results, f"bench-{dt}-b{b}-{g}.out"))
                peers = [f"PyTorch eager {_fmt_ms(eager)}"]
                if dt == "f16":
                    peers.append(f"torch.compile {_fmt_ms(comp)}" + (f" ({note})" if note and "skip" in note else ""))
                if r is None:
                    row("speed, ms/frame (median)", f"candle {dt}, batch {b}, {g}", "no result", "; ".join(peers), False)
                    continue
                ms = r["median_ms_per_frame"]
                ratio = f"; candle/eager {ms / eager:.2f}x" if eager else ""
                if comp and not math.isnan(comp):
                    ratio += f", candle/compile {ms / comp:.2f}x"
                state = r.get("cuda_graph", "?")
                graph_ok = None
                if g == "graph":
                    graph_ok = state == "captured"
                row("speed, ms/frame (median)", f"candle {dt}, batch {b}, {g} ({state})",
                    f"{_fmt_ms(ms)} (p90 {_fmt_ms(r['p90_ms_per_frame'])})", "; ".join(peers) + ratio, graph_ok)
    # Daemon
    d = _load_json(os.path.join(results, "daemon.json"))
    if d:
        row("daemon, phantom, 30 s, CUDA f16", f"{d.get('frames_inferred')} frames inferred, {d.get('estimates_published')} estimates",
            f"capture-to-publish p50 {_fmt_ms(d.get('latency_p50_ms'))} ms, p99 {_fmt_ms(d.get('latency_p99_ms'))} ms",
            "p99 <= 10 ms", (d.get("latency_p99_ms") or 1e9) <= 10.0)
    else:
        row("daemon, phantom, 30 s, CUDA f16", "-", f"no summary (exit {steps.get('daemon', ('?',))[0]})", "p99 <= 10 ms", False)
    # Training
    t = _read(os.path.join(results, "train.out"))
    m = re.search(r"^\S+\s+\S+\s+([0-9.]+)\s+(\d+)\s+([0-9.]+)", t, re.M)
    if m and steps.get("train", ("1",))[0] == "0":
        row("training, 50 steps, width 1, 299 px, batch 24", "echonet train --device cuda",
            f"{float(m.group(3)):.3f} s/step; val loss {float(m.group(1)):.3f}; whole command {steps['train'][1]:.0f} s",
            "-", True)
    else:
        row("training, 50 steps, width 1, 299 px, batch 24", "echonet train --device cuda",
            f"failed (exit {steps.get('train', ('?',))[0]})", "-", False)
    out.append("")
    out.append("steps (exit status, seconds): " + ", ".join(f"{k} {v[0]} {v[1]:.0f}s" for k, v in steps.items()))
    out.append("")
    out.append("FAILED: " + "; ".join(failed) if failed else "all checks passed")
    print("\n".join(out))


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    cmd = sys.argv[1]
    if cmd == "prepare":
        prepare(sys.argv[2])
    elif cmd == "compare":
        compare(sys.argv[2], sys.argv[3])
    elif cmd == "report":
        report(sys.argv[2])
    elif cmd == "bench":
        budget = float(sys.argv[4]) if len(sys.argv) > 4 and sys.argv[3] == "--budget-s" else 150.0
        bench(sys.argv[2], budget)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
