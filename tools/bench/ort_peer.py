#!/usr/bin/env python3
"""ONNX Runtime peer for `echonet bench`: the same network, timed the same way.

Builds facenet-pytorch's ``InceptionResnetV1`` (untrained: speed does not depend on the weights),
keeps the trunk up to the pooled features (what ``echonet bench`` times on an untrained network
without heads), exports it to ONNX once (cached next to --onnx), and times ONNX Runtime on the CPU
at batch N with a fixed number of intra-op threads. Prints one line, or one JSON object with
``median_ms_per_frame`` like ``echonet bench --json``.

``--int8`` times ONNX Runtime's static int8 of the same network instead: QDQ format, int8
weights per output channel (symmetric), uint8 activations per tensor (MinMax calibration on
``--calib-frames`` standard-normal frames, seed 1), made once by
``onnxruntime.quantization.quantize_static`` and cached next to the f32 model.

Environment (run by hand, never in CI)::

    python3 -m venv /work/pyenv-perf
    /work/pyenv-perf/bin/pip install torch onnx onnxruntime numpy requests tqdm
    /work/pyenv-perf/bin/pip install --no-deps facenet-pytorch
    /work/pyenv-perf/bin/python tools/bench/ort_peer.py --threads 2 --batch 1 --json
"""

import argparse
import json
import os
import statistics
import time


def import_facenet():
    """facenet-pytorch's model class, imported the way the parity tool does (the model file
    alone: the package root pulls in MTCNN and torchvision)."""
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    path = os.path.join(here, os.pardir, "parity", "make_goldens.py")
    spec = importlib.util.spec_from_file_location("make_goldens", path)
    goldens = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(goldens)
    return goldens.import_facenet()


def export(path, size, batch):
    import torch

    InceptionResnetV1 = import_facenet()

    class Trunk(torch.nn.Module):
        """InceptionResnetV1 up to avgpool_1a, flattened: [N, 1792]."""

        def __init__(self):
            super().__init__()
            self.net = InceptionResnetV1(pretrained=None, classify=False).eval()

        def forward(self, x):
            n = self.net
            for name in ["conv2d_1a", "conv2d_2a", "conv2d_2b", "maxpool_3a", "conv2d_3b",
                         "conv2d_4a", "conv2d_4b", "repeat_1", "mixed_6a", "repeat_2",
                         "mixed_7a", "repeat_3", "block8", "avgpool_1a"]:
                x = getattr(n, name)(x)
            return x.flatten(1)

    torch.manual_seed(0)
    model = Trunk().eval()
    x = torch.randn(batch, 3, size, size)
    with torch.no_grad():
        torch.onnx.export(model, x, path, input_names=["x"], output_names=["features"],
                          dynamic_axes={"x": {0: "n"}, "features": {0: "n"}}, opset_version=17,
                          dynamo=False)


def quantize_int8(src, dst, size, frames):
    """ONNX Runtime's static int8 of `src`: QDQ, per-channel int8 weights, uint8 activations."""
    import numpy as np
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                          QuantType, quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Frames(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(1)
            self.items = iter([{"x": rng.standard_normal((1, 3, size, size), dtype=np.float32)}
                               for _ in range(frames)])

        def get_next(self):
            return next(self.items, None)

    pre = dst + ".pre.onnx"
    quant_pre_process(src, pre)
    quantize_static(pre, dst, Frames(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)
    os.remove(pre)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=299)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--onnx", default="/tmp/echonet_ort_peer_{size}.onnx")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--int8", action="store_true",
                    help="time ONNX Runtime's static int8 (QDQ, per-channel weights) instead")
    ap.add_argument("--calib-frames", type=int, default=16)
    args = ap.parse_args()

    path = args.onnx.format(size=args.size)
    if not os.path.exists(path):
        export(path, args.size, 1)
    if args.int8:
        qpath = path.replace(".onnx", f"_int8_qdq_c{args.calib_frames}.onnx")
        if not os.path.exists(qpath):
            quantize_int8(path, qpath, args.size, args.calib_frames)
        path = qpath

    import numpy as np
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((args.batch, 3, args.size, args.size),
                                                 dtype=np.float32)
    for _ in range(args.warmup):
        sess.run(None, {"x": x})
    import resource

    def cpu_seconds():
        u = resource.getrusage(resource.RUSAGE_SELF)
        return u.ru_utime + u.ru_stime

    per_frame = []
    cpu0 = cpu_seconds()
    for _ in range(args.iters):
        t = time.perf_counter()
        sess.run(None, {"x": x})
        per_frame.append((time.perf_counter() - t) * 1000.0 / args.batch)
    cpu_ms = (cpu_seconds() - cpu0) * 1000.0 / (args.iters * args.batch)
    median = statistics.median(per_frame)
    report = {
        "system": f"onnxruntime {ort.__version__}" + (" static int8" if args.int8 else ""),
        "precision": "int8" if args.int8 else "f32",
        "threads": args.threads,
        "batch": args.batch,
        "input": [3, args.size, args.size],
        "iters": args.iters,
        "median_ms_per_frame": median,
        "frames_per_s": 1000.0 / median,
        "cpu_ms_per_frame": cpu_ms,
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(f"onnxruntime {ort.__version__} {'int8' if args.int8 else 'f32'}, {args.threads} threads, batch {args.batch}, "
              f"3x{args.size}x{args.size}: median {median:.2f} ms/frame")


if __name__ == "__main__":
    main()
