#!/usr/bin/env python3
"""PyTorch f32 pooled features of a facenet-pytorch state dict on a normalised .npy batch.

The reference side of the int8 accuracy check: ``echonet quantize --dump-held-out frames.npy``
writes the held-out calibration frames (after the runtime's preprocessing), this script runs
facenet-pytorch's ``InceptionResnetV1`` (f32, CPU) on them, and ``compare.py`` compares
``echonet infer --features --input frames.npy`` with the result::

    /work/pyenv-perf/bin/python tools/parity/torch_features.py \\
        --state-dict /work/parity-full/facenet_full.pth --input frames.npy --out expected.npy

Features are the avgpool_1a output flattened to [N, 1792] (what ``echonet infer --features``
prints). A grey [N, 1, H, W] batch is repeated to RGB, as the runtime's grey stem is exact for.
"""

import argparse
import importlib.util
import os


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--state-dict", required=True, help="facenet_full.pth (heads.* keys ignored)")
    ap.add_argument("--input", required=True, help="float32 .npy [N, C, H, W], normalised")
    ap.add_argument("--out", required=True, help=".npy to write, [N, 1792]")
    args = ap.parse_args()

    import numpy as np
    import torch

    here = os.path.dirname(os.path.abspath(__file__))
    spec = importlib.util.spec_from_file_location("make_goldens", os.path.join(here, "make_goldens.py"))
    goldens = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(goldens)
    model = goldens.import_facenet()(pretrained=None, classify=False).eval()
    sd = torch.load(args.state_dict, map_location="cpu")
    model.load_state_dict({k: v for k, v in sd.items() if not k.startswith("heads.")})
    x = torch.from_numpy(np.load(args.input).astype(np.float32))
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    got = {}
    hook = model.avgpool_1a.register_forward_hook(lambda m, i, o: got.__setitem__("f", o.flatten(1)))
    with torch.no_grad():
        model(x)
    hook.remove()
    np.save(args.out, got["f"].numpy().astype(np.float32))
    print(f"wrote {args.out}: {tuple(got['f'].shape)}")


if __name__ == "__main__":
    main()
