#!/usr/bin/env python3
"""Compare Rust `echonet infer --features` output against expected PyTorch features.

Usage:
    python3 tools/parity/compare.py --expected /work/parity-full/expected_features.npy \
        --infer-json out.json [--tol 1e-4]

--expected  .npy float32/float64 array [N, D] (e.g. written by make_goldens.py --full)
--infer-json JSON {"frames": [{"outputs": {...}, "features": [...]}, ...]}

Prints the relative L2 error ||a - b|| / ||b|| (a = Rust, b = expected) per frame and
over all frames, and exits 1 if any of them is above --tol (default 1e-4, the f32
tolerance; use 1e-2 for f16).  Needs only the Python standard library (numpy is not
required: the .npy reader below handles little/big-endian f4/f8, C order).
"""

import argparse
import ast
import json
import math
import struct
import sys


def read_npy(path):
    with open(path, "rb") as fh:
        if fh.read(6) != b"\x93NUMPY":
            raise ValueError(f"{path}: not an .npy file")
        major, _minor = fh.read(2)
        hlen = struct.unpack("<H" if major == 1 else "<I", fh.read(2 if major == 1 else 4))[0]
        header = ast.literal_eval(fh.read(hlen).decode("latin1"))
        descr, shape = header["descr"], tuple(header["shape"])
        if header.get("fortran_order"):
            raise ValueError(f"{path}: fortran_order arrays are not supported")
        fmts = {"<f4": "<f", "<f8": "<d", ">f4": ">f", ">f8": ">d", "=f4": "=f", "=f8": "=d"}
        if descr not in fmts:
            raise ValueError(f"{path}: unsupported dtype {descr}")
        count = 1
        for s in shape:
            count *= s
        size = struct.calcsize(fmts[descr][1])
        data = fh.read(count * size)
        flat = list(struct.unpack(fmts[descr][0] + fmts[descr][1] * count, data))
    if len(shape) == 1:
        return [flat]
    if len(shape) != 2:
        # [N, D, 1, 1] etc.: flatten trailing dims per frame
        d = count // shape[0]
        return [flat[i * d:(i + 1) * d] for i in range(shape[0])]
    n, d = shape
    return [flat[i * d:(i + 1) * d] for i in range(n)]


def rel_l2(a, b):
    num = math.fsum((x - y) ** 2 for x, y in zip(a, b))
    den = math.fsum(y * y for y in b)
    return math.sqrt(num) / math.sqrt(den) if den > 0 else (0.0 if num == 0 else math.inf)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--expected", required=True, help="expected features .npy [N, D]")
    ap.add_argument("--infer-json", required=True, help="echonet infer --features JSON output")
    ap.add_argument("--tol", type=float, default=1e-4)
    args = ap.parse_args()

    expected = read_npy(args.expected)
    with open(args.infer_json) as fh:
        doc = json.load(fh)
    frames = doc["frames"] if isinstance(doc, dict) else doc
    got = [f["features"] for f in frames]

    ok = True
    if len(got) != len(expected):
        print(f"frame count mismatch: infer has {len(got)}, expected {len(expected)}")
        sys.exit(1)
    all_a, all_b = [], []
    for i, (a, b) in enumerate(zip(got, expected)):
        if len(a) != len(b):
            print(f"frame {i}: feature length mismatch: infer {len(a)}, expected {len(b)}")
            ok = False
            continue
        err = rel_l2(a, b)
        maxabs = max(abs(x - y) for x, y in zip(a, b))
        flag = "OK" if err <= args.tol else "FAIL"
        ok &= err <= args.tol
        print(f"frame {i}: rel_l2={err:.3e} max_abs_diff={maxabs:.3e} [{flag}]")
        all_a.extend(a)
        all_b.extend(b)
    if all_b:
        err = rel_l2(all_a, all_b)
        ok &= err <= args.tol
        print(f"overall: rel_l2={err:.3e} tol={args.tol:g} [{'OK' if err <= args.tol else 'FAIL'}]")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
