#!/usr/bin/env python3
"""Generate the PyTorch parity goldens for echonet-edge's InceptionResNet-v1 port.

This script is THE source of every file in ``tests/fixtures/parity/``.  It is run
by hand (never in CI) from a Python environment that has torch, facenet-pytorch,
numpy and safetensors installed, e.g.::

    python3 -m venv /work/pyenv-parity
    /work/pyenv-parity/bin/pip install torch numpy safetensors requests tqdm
    /work/pyenv-parity/bin/pip install --no-deps facenet-pytorch
    /work/pyenv-parity/bin/python tools/parity/make_goldens.py            # small committed case
    /work/pyenv-parity/bin/python tools/parity/make_goldens.py --full /work/parity-full

What it does
------------
1. Defines ``WidthInceptionResnetV1(width, embedding)``: facenet-pytorch's
   ``InceptionResnetV1`` with every base channel count ``c`` replaced by
   ``ch(c) = max(1, int(c * width + 0.5))`` and exactly the same module /
   state-dict names.  A self-check asserts that at width 1 / embedding 512 its
   state dict has the same keys (in the same order) and shapes as facenet's class,
   and that after a strict ``load_state_dict`` both give the same pooled features.
2. Randomises the model for parity testing (seed ``--seed``, default 20261127):
   ``torch.manual_seed(seed)`` then construction (PyTorch default init), then
   every conv weight (nn.Conv2d, incl. the residual 1x1 convs; not their biases) is
   multiplied by ``CONV_WEIGHT_GAIN`` = sqrt(3), which turns PyTorch's default
   kaiming_uniform(a=sqrt(5)) init (variance 1/(3*fan_in)) into variance 1/fan_in.
   Why: with the default init each conv shrinks the signal ~2.4x, so the pooled
   features end up dominated by the BN biases and almost input-independent
   (||f0-f1||/||f0|| ~ 0.003 at width 1); with sqrt(3) the activation RMS stays
   ~0.8-1.0 through all stages (max |a| < 6) and features of two random inputs
   differ by ~15-20%.  (sqrt(6), He init, also works but the RMS grows to ~20.)
   Then every BatchNorm (2d and the final 1d) gets
   weight ~ U(0.5, 1.5), bias ~ 0.1*N(0,1), running_mean ~ 0.1*N(0,1),
   running_var ~ U(0.5, 1.5) and num_batches_tracked = 1000, all drawn from the
   global torch RNG in ``named_modules()`` order.  The residual-conv biases and
   ``last_linear`` keep PyTorch's default init.  Two task heads are then drawn
   (weights and biases 0.1*N(0,1)): ``heads.ef.{weight,bias}`` and
   ``heads.pacemaker.{weight,bias}``.  Model in eval() mode.
3. Definitions used for the goldens:
     features   = avgpool_1a output, flattened to [N, c7] (before dropout)
     bottleneck = last_bn(last_linear(features))   (no L2 normalisation)
     ef         = (bottleneck @ heads.ef.weight.T + heads.ef.bias) * 10 + 55
     pacemaker  = sigmoid(bottleneck @ heads.pacemaker.weight.T + heads.pacemaker.bias)
   The gray input's golden is the model applied to ``x.repeat(1, 3, 1, 1)``.
   Inputs are standard normal from ``torch.Generator().manual_seed(seed + 1)``
   (rgb) and ``seed + 2`` (gray).  Everything is computed in float32 on CPU.
4. Default mode writes the committed small case (width 0.125, embedding 64,
   75x75 inputs) to ``tests/fixtures/parity/`` (see the README.md there).
5. ``--full OUTDIR`` writes a width-1 case for manual checks (not committed):
   ``facenet_full.pth`` (the state dict of a real facenet ``InceptionResnetV1``
   randomised as above, plus the two heads at embedding 512),
   ``input_299.npy`` [2,3,299,299], ``expected_features.npy`` [2,1792] computed by
   the facenet class itself (forward hook on ``avgpool_1a``), plus
   ``expected_bottleneck.npy`` [2,512] (hook on ``last_bn``) and
   ``expected_outputs.json`` (head outputs).  Check a Rust run with
   ``tools/parity/compare.py``.
"""

import argparse
import collections
import importlib
import json
import math
import os
import platform
import sys
import types

import numpy as np
import torch
from torch import nn

DEFAULT_SEED = 20261127
CONV_WEIGHT_GAIN = math.sqrt(3.0)
BN_NUM_BATCHES_TRACKED = 1000
HEAD_STD = 0.1
EF_SCALE, EF_OFFSET = 10.0, 55.0

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FIXTURE_DIR = os.path.join(REPO_ROOT, "tests", "fixtures", "parity")


# ----------------------------------------------------------------------------
# facenet-pytorch import without the package root (which pulls in MTCNN,
# torchvision and PIL): register stub packages and import only the model file.
# ----------------------------------------------------------------------------
def import_facenet():
    import importlib.util

    spec = importlib.util.find_spec("facenet_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("facenet-pytorch is not installed (pip install --no-deps facenet-pytorch)")
    pkg_dir = list(spec.submodule_search_locations)[0]
    if "facenet_pytorch" not in sys.modules:
        pkg = types.ModuleType("facenet_pytorch")
        pkg.__path__ = [pkg_dir]
        sys.modules["facenet_pytorch"] = pkg
        sub = types.ModuleType("facenet_pytorch.models")
        sub.__path__ = [os.path.join(pkg_dir, "models")]
        sys.modules["facenet_pytorch.models"] = sub
    mod = importlib.import_module("facenet_pytorch.models.inception_resnet_v1")
    return mod.InceptionResnetV1


def facenet_version():
    try:
        from importlib.metadata import version

        return version("facenet-pytorch")
    except Exception:  # pragma: no cover
        return "unknown"


# ----------------------------------------------------------------------------
# Width-scaled copy of facenet-pytorch's InceptionResnetV1 (same names).
# ----------------------------------------------------------------------------
def ch(c, width):
    return max(1, int(c * width + 0.5))


class BasicConv2d(nn.Module):
    def __init__(self, in_planes, out_planes, kernel_size, stride, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(in_planes, out_planes, kernel_size=kernel_size,
                              stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_planes, eps=0.001, momentum=0.1, affine=True)
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x):
        return self.relu(self.bn(self.conv(x)))


class Block35(nn.Module):
    def __init__(self, c_in, b, scale=1.0):
        super().__init__()
        self.scale = scale
        self.branch0 = BasicConv2d(c_in, b, kernel_size=1, stride=1)
        self.branch1 = nn.Sequential(
            BasicConv2d(c_in, b, kernel_size=1, stride=1),
            BasicConv2d(b, b, kernel_size=3, stride=1, padding=1),
        )
        self.branch2 = nn.Sequential(
            BasicConv2d(c_in, b, kernel_size=1, stride=1),
            BasicConv2d(b, b, kernel_size=3, stride=1, padding=1),
            BasicConv2d(b, b, kernel_size=3, stride=1, padding=1),
        )
        self.conv2d = nn.Conv2d(3 * b, c_in, kernel_size=1, stride=1)
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x):
        out = torch.cat((self.branch0(x), self.branch1(x), self.branch2(x)), 1)
        out = self.conv2d(out)
        return self.relu(out * self.scale + x)


class Block17(nn.Module):
    def __init__(self, c_in, b, scale=1.0):
        super().__init__()
        self.scale = scale
        self.branch0 = BasicConv2d(c_in, b, kernel_size=1, stride=1)
        self.branch1 = nn.Sequential(
            BasicConv2d(c_in, b, kernel_size=1, stride=1),
            BasicConv2d(b, b, kernel_size=(1, 7), stride=1, padding=(0, 3)),
            BasicConv2d(b, b, kernel_size=(7, 1), stride=1, padding=(3, 0)),
        )
        self.conv2d = nn.Conv2d(2 * b, c_in, kernel_size=1, stride=1)
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x):
        out = torch.cat((self.branch0(x), self.branch1(x)), 1)
        out = self.conv2d(out)
        return self.relu(out * self.scale + x)


class Block8(nn.Module):
    def __init__(self, c_in, b, scale=1.0, noReLU=False):
        super().__init__()
        self.scale = scale
        self.noReLU = noReLU
        self.branch0 = BasicConv2d(c_in, b, kernel_size=1, stride=1)
        self.branch1 = nn.Sequential(
            BasicConv2d(c_in, b, kernel_size=1, stride=1),
            BasicConv2d(b, b, kernel_size=(1, 3), stride=1, padding=(0, 1)),
            BasicConv2d(b, b, kernel_size=(3, 1), stride=1, padding=(1, 0)),
        )
        self.conv2d = nn.Conv2d(2 * b, c_in, kernel_size=1, stride=1)
        if not self.noReLU:
            self.relu = nn.ReLU(inplace=False)

    def forward(self, x):
        out = torch.cat((self.branch0(x), self.branch1(x)), 1)
        out = self.conv2d(out)
        out = out * self.scale + x
        if not self.noReLU:
            out = self.relu(out)
        return out


class Mixed_6a(nn.Module):
    def __init__(self, w):
        super().__init__()
        c = lambda n: ch(n, w)  # noqa: E731
        self.branch0 = BasicConv2d(c(256), c(384), kernel_size=3, stride=2)
        self.branch1 = nn.Sequential(
            BasicConv2d(c(256), c(192), kernel_size=1, stride=1),
            BasicConv2d(c(192), c(192), kernel_size=3, stride=1, padding=1),
            BasicConv2d(c(192), c(256), kernel_size=3, stride=2),
        )
        self.branch2 = nn.MaxPool2d(3, stride=2)

    def forward(self, x):
        return torch.cat((self.branch0(x), self.branch1(x), self.branch2(x)), 1)


class Mixed_7a(nn.Module):
    def __init__(self, w, c6):
        super().__init__()
        c = lambda n: ch(n, w)  # noqa: E731
        self.branch0 = nn.Sequential(
            BasicConv2d(c6, c(256), kernel_size=1, stride=1),
            BasicConv2d(c(256), c(384), kernel_size=3, stride=2),
        )
        self.branch1 = nn.Sequential(
            BasicConv2d(c6, c(256), kernel_size=1, stride=1),
            BasicConv2d(c(256), c(256), kernel_size=3, stride=2),
        )
        self.branch2 = nn.Sequential(
            BasicConv2d(c6, c(256), kernel_size=1, stride=1),
            BasicConv2d(c(256), c(256), kernel_size=3, stride=1, padding=1),
            BasicConv2d(c(256), c(256), kernel_size=3, stride=2),
        )
        self.branch3 = nn.MaxPool2d(3, stride=2)

    def forward(self, x):
        return torch.cat((self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)), 1)


class WidthInceptionResnetV1(nn.Module):
    """facenet-pytorch InceptionResnetV1 (classify=False) with scaled channel counts."""

    def __init__(self, width: float, embedding: int, dropout_prob: float = 0.6):
        super().__init__()
        w = width
        c = lambda n: ch(n, w)  # noqa: E731
        self.width = width
        self.c6 = c(384) + c(256) + c(256)
        self.c7 = c(384) + c(256) + c(256) + self.c6
        self.conv2d_1a = BasicConv2d(3, c(32), kernel_size=3, stride=2)
        self.conv2d_2a = BasicConv2d(c(32), c(32), kernel_size=3, stride=1)
        self.conv2d_2b = BasicConv2d(c(32), c(64), kernel_size=3, stride=1, padding=1)
        self.maxpool_3a = nn.MaxPool2d(3, stride=2)
        self.conv2d_3b = BasicConv2d(c(64), c(80), kernel_size=1, stride=1)
        self.conv2d_4a = BasicConv2d(c(80), c(192), kernel_size=3, stride=1)
        self.conv2d_4b = BasicConv2d(c(192), c(256), kernel_size=3, stride=2)
        self.repeat_1 = nn.Sequential(*[Block35(c(256), c(32), scale=0.17) for _ in range(5)])
        self.mixed_6a = Mixed_6a(w)
        self.repeat_2 = nn.Sequential(*[Block17(self.c6, c(128), scale=0.10) for _ in range(10)])
        self.mixed_7a = Mixed_7a(w, self.c6)
        self.repeat_3 = nn.Sequential(*[Block8(self.c7, c(192), scale=0.20) for _ in range(5)])
        self.block8 = Block8(self.c7, c(192), noReLU=True)
        self.avgpool_1a = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout_prob)
        self.last_linear = nn.Linear(self.c7, embedding, bias=False)
        self.last_bn = nn.BatchNorm1d(embedding, eps=0.001, momentum=0.1, affine=True)

    def features(self, x):
        x = self.conv2d_1a(x)
        x = self.conv2d_2a(x)
        x = self.conv2d_2b(x)
        x = self.maxpool_3a(x)
        x = self.conv2d_3b(x)
        x = self.conv2d_4a(x)
        x = self.conv2d_4b(x)
        x = self.repeat_1(x)
        x = self.mixed_6a(x)
        x = self.repeat_2(x)
        x = self.mixed_7a(x)
        x = self.repeat_3(x)
        x = self.block8(x)
        x = self.avgpool_1a(x)
        return x.view(x.shape[0], -1)

    def bottleneck(self, feats):
        return self.last_bn(self.last_linear(self.dropout(feats)))

    def forward(self, x):
        return self.bottleneck(self.features(x))


def make_heads(embedding):
    heads = nn.ModuleDict({"ef": nn.Linear(embedding, 1), "pacemaker": nn.Linear(embedding, 1)})
    with torch.no_grad():
        for name in ("ef", "pacemaker"):
            heads[name].weight.copy_(torch.randn(1, embedding) * HEAD_STD)
            heads[name].bias.copy_(torch.randn(1) * HEAD_STD)
    return heads.eval()


def apply_heads(heads, bottleneck):
    ef_raw = heads["ef"](bottleneck)[:, 0]
    pm_raw = heads["pacemaker"](bottleneck)[:, 0]
    return ef_raw * EF_SCALE + EF_OFFSET, torch.sigmoid(pm_raw)


# ----------------------------------------------------------------------------
# Randomisation
# ----------------------------------------------------------------------------
@torch.no_grad()
def randomise(model):
    """Scale conv weights to He variance and randomise every BatchNorm (global RNG)."""
    for _, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            m.weight.mul_(CONV_WEIGHT_GAIN)
    for _, m in model.named_modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            n = m.num_features
            m.weight.copy_(torch.rand(n) + 0.5)
            m.bias.copy_(torch.randn(n) * 0.1)
            m.running_mean.copy_(torch.randn(n) * 0.1)
            m.running_var.copy_(torch.rand(n) + 0.5)
            m.num_batches_tracked.fill_(BN_NUM_BATCHES_TRACKED)
    return model.eval()


def check_sane(feats, label):
    f = feats.detach()
    assert torch.isfinite(f).all(), f"{label}: non-finite features"
    mx = f.abs().max().item()
    assert mx > 1e-3, f"{label}: features ~ zero (max |f| = {mx})"
    assert mx < 1e3, f"{label}: features exploding (max |f| = {mx})"
    nz = (f != 0).float().mean().item()
    print(f"  {label}: shape={tuple(f.shape)} mean={f.mean().item():.4f} std={f.std().item():.4f} "
          f"max|f|={mx:.4f} nonzero={nz:.3f} rms/frame={[round(v, 4) for v in f.pow(2).mean(1).sqrt().tolist()]}")
    if f.shape[0] >= 2:
        d = ((f[0] - f[1]).norm() / f[0].norm()).item()
        print(f"  {label}: ||f0-f1||/||f0|| = {d:.4f} (input dependence)")


# ----------------------------------------------------------------------------
# Self-check at width 1 against facenet's own class
# ----------------------------------------------------------------------------
@torch.no_grad()
def self_check(FacenetIRV1, seed):
    print("self-check: WidthInceptionResnetV1(1.0, 512) vs facenet InceptionResnetV1 ...")
    torch.manual_seed(seed)
    ref = randomise(FacenetIRV1(pretrained=None, classify=False))
    mine = WidthInceptionResnetV1(1.0, 512).eval()
    sd_ref, sd_mine = ref.state_dict(), mine.state_dict()
    assert list(sd_ref.keys()) == list(sd_mine.keys()), "state-dict key lists differ"
    for k in sd_ref:
        assert sd_ref[k].shape == sd_mine[k].shape, f"shape differs for {k}"
        assert sd_ref[k].dtype == sd_mine[k].dtype, f"dtype differs for {k}"
    mine.load_state_dict(sd_ref, strict=True)
    x = torch.randn(1, 3, 160, 160, generator=torch.Generator().manual_seed(seed + 3))
    pooled = {}
    h = ref.avgpool_1a.register_forward_hook(lambda m, i, o: pooled.__setitem__("f", o.flatten(1)))
    emb_ref = ref(x)
    h.remove()
    f_ref = pooled["f"]
    f_mine = mine.features(x)
    assert torch.equal(f_ref, f_mine), f"pooled features differ: {(f_ref - f_mine).abs().max()}"
    emb_mine = torch.nn.functional.normalize(mine.bottleneck(f_mine), p=2, dim=1)
    assert torch.equal(emb_ref, emb_mine), "embeddings differ"
    print(f"  OK: {len(sd_ref)} state-dict entries identical in name/shape/dtype; "
          f"pooled features identical (max|f|={f_ref.abs().max().item():.4f})")
    return sd_ref


def write_key_list(sd, path):
    with open(path, "w") as fh:
        for k, v in sd.items():
            fh.write(f"{k} {list(v.shape)} {str(v.dtype).replace('torch.', '')}\n")


# ----------------------------------------------------------------------------
# Output helpers
# ----------------------------------------------------------------------------
def full_state_dict(model, heads):
    sd = collections.OrderedDict()
    for k, v in model.state_dict().items():
        sd[k] = v.detach().clone().contiguous()
    for k, v in heads.state_dict().items():
        sd["heads." + k] = v.detach().clone().contiguous()
    for k, v in sd.items():
        assert v.dtype in (torch.float32, torch.int64), (k, v.dtype)
    return sd


def versions(seed):
    return {
        "source": "tools/parity/make_goldens.py",
        "seed": seed,
        "torch": torch.__version__,
        "facenet_pytorch": facenet_version(),
        "python": platform.python_version(),
    }


@torch.no_grad()
def run_case(model, heads, x):
    feats = model.features(x)
    bott = model.bottleneck(feats)
    ef, pm = apply_heads(heads, bott)
    return feats, bott, ef, pm


@torch.no_grad()
def make_small(seed, width=0.125, embedding=64, size=75, outdir=FIXTURE_DIR):
    from safetensors.torch import save_file

    os.makedirs(outdir, exist_ok=True)
    torch.manual_seed(seed)
    model = randomise(WidthInceptionResnetV1(width, embedding))
    heads = make_heads(embedding)
    sd = full_state_dict(model, heads)
    tag = "w" + f"{width:.4f}".replace(".", "").rstrip("0")
    save_file(dict(sd), os.path.join(outdir, f"irv1_{tag}.safetensors"))
    torch.save(sd, os.path.join(outdir, f"irv1_{tag}.pth"))

    x_rgb = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed + 1))
    x_gray = torch.randn(2, 1, size, size, generator=torch.Generator().manual_seed(seed + 2))
    np.save(os.path.join(outdir, f"input_rgb_{size}.npy"), x_rgb.numpy().astype(np.float32))
    np.save(os.path.join(outdir, f"input_gray_{size}.npy"), x_gray.numpy().astype(np.float32))

    doc = versions(seed)
    doc.update({"width": width, "embedding": embedding, "input_size": size,
                "channels": {"c6": model.c6, "c7": model.c7}, "cases": {}})
    # float64 reference, to show the f32 goldens' own error is far below the tolerance
    m64 = WidthInceptionResnetV1(width, embedding).double().eval()
    m64.load_state_dict(model.state_dict(), strict=True)
    for name, x, xin in (("rgb", x_rgb, x_rgb), ("gray", x_gray, x_gray.repeat(1, 3, 1, 1))):
        feats, bott, ef, pm = run_case(model, heads, xin)
        check_sane(feats, f"{name} features")
        f64 = m64.features(xin.double())
        rel = ((feats.double() - f64).norm() / f64.norm()).item()
        print(f"  {name}: rel L2 error of f32 features vs f64 = {rel:.3e}")
        doc["cases"][name] = {
            "input": f"input_{name}_{size}.npy",
            "input_shape": list(x.shape),
            "features": feats.tolist(),
            "bottleneck": bott.tolist(),
            "outputs": [{"ef": e, "pacemaker": p} for e, p in zip(ef.tolist(), pm.tolist())],
        }
        print(f"  {name}: bottleneck rms={bott.pow(2).mean().sqrt().item():.4f} "
              f"ef={ef.tolist()} pacemaker={pm.tolist()}")
    with open(os.path.join(outdir, f"golden_{tag}.json"), "w") as fh:
        json.dump(doc, fh, indent=1)
        fh.write("\n")
    total = 0
    for fn in sorted(os.listdir(outdir)):
        sz = os.path.getsize(os.path.join(outdir, fn))
        total += sz
        print(f"  wrote {fn}: {sz} bytes")
    print(f"  total {total} bytes")


@torch.no_grad()
def make_full(FacenetIRV1, seed, outdir, size=299):
    os.makedirs(outdir, exist_ok=True)
    torch.manual_seed(seed)
    model = randomise(FacenetIRV1(pretrained=None, classify=False))
    heads = make_heads(512)
    sd = full_state_dict(model, heads)
    torch.save(sd, os.path.join(outdir, "facenet_full.pth"))
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed + 1))
    np.save(os.path.join(outdir, f"input_{size}.npy"), x.numpy().astype(np.float32))
    got = {}
    h1 = model.avgpool_1a.register_forward_hook(lambda m, i, o: got.__setitem__("f", o.flatten(1)))
    h2 = model.last_bn.register_forward_hook(lambda m, i, o: got.__setitem__("b", o))
    model(x)  # facenet's own forward (returns the L2-normalised embedding)
    h1.remove()
    h2.remove()
    feats, bott = got["f"], got["b"]
    check_sane(feats, "full features")
    ef, pm = apply_heads(heads, bott)
    np.save(os.path.join(outdir, "expected_features.npy"), feats.numpy().astype(np.float32))
    np.save(os.path.join(outdir, "expected_bottleneck.npy"), bott.numpy().astype(np.float32))
    doc = versions(seed)
    doc.update({"width": 1.0, "embedding": 512, "input_size": size, "input": f"input_{size}.npy",
                "outputs": [{"ef": e, "pacemaker": p} for e, p in zip(ef.tolist(), pm.tolist())]})
    with open(os.path.join(outdir, "expected_outputs.json"), "w") as fh:
        json.dump(doc, fh, indent=1)
        fh.write("\n")
    for fn in sorted(os.listdir(outdir)):
        print(f"  wrote {os.path.join(outdir, fn)}: {os.path.getsize(os.path.join(outdir, fn))} bytes")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    ap.add_argument("--full", metavar="OUTDIR", help="write the width-1 299x299 manual-check case to OUTDIR")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--skip-self-check", action="store_true")
    ap.add_argument("--keys-out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                       "facenet_state_dict_keys.txt"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    FacenetIRV1 = import_facenet()
    if not args.skip_self_check:
        sd = self_check(FacenetIRV1, args.seed)
        write_key_list(sd, args.keys_out)
    if args.full:
        make_full(FacenetIRV1, args.seed, args.full)
    else:
        make_small(args.seed)


if __name__ == "__main__":
    main()
