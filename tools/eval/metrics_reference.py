#!/usr/bin/env python3
"""Independent reference values for `echonet_edge::eval::metrics` (tests/eval_metrics.rs).

Seeded random predictions and truths, and R2, MAE, mean-prediction MAE and AUC computed here with
numpy alone. AUC is brute force over every (positive, negative) pair, ties counting one half: a
different algorithm from the Rust one (average ranks). Binary scores are rounded to one decimal
so that many positive-negative pairs tie.

    /work/pyenv-parity/bin/python tools/eval/metrics_reference.py  # writes the fixture

Seed: 20260301 (numpy.random.default_rng).
"""

import json
import pathlib
import sys

import numpy as np

SEED = 20260301
OUT = pathlib.Path(__file__).resolve().parents[2] / "tests/fixtures/eval/metrics_reference.json"


def regression(pred, truth):
    pred = np.asarray(pred, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    ss_res = np.sum((truth - pred) ** 2)
    ss_tot = np.sum((truth - truth.mean()) ** 2)
    return {
        "r2": float(1.0 - ss_res / ss_tot),
        "mae": float(np.mean(np.abs(pred - truth))),
        "mean_prediction_mae": float(np.mean(np.abs(truth - truth.mean()))),
    }


def auc_pairwise(scores, truth):
    scores = np.asarray(scores, dtype=np.float64)
    truth = np.asarray(truth)
    pos = scores[truth == 1]
    neg = scores[truth == 0]
    wins = 0.0
    for p in pos:
        for n in neg:
            if p > n:
                wins += 1.0
            elif p == n:
                wins += 0.5
    return wins / (len(pos) * len(neg))


def main():
    rng = np.random.default_rng(SEED)
    # Regression: EF-like truths and noisy, biased predictions.
    n_reg = 200
    ef_truth = rng.uniform(15.0, 80.0, n_reg)
    ef_pred = 0.8 * ef_truth + 12.0 + rng.normal(0.0, 6.0, n_reg)
    # Binary: scores that carry some signal, rounded to 0.1 so that ties abound.
    n_bin = 150
    labels = (rng.uniform(size=n_bin) < 0.35).astype(np.int64)
    raw = rng.normal(0.0, 1.0, n_bin) + 1.2 * labels
    scores = np.round(1.0 / (1.0 + np.exp(-raw)), 1)
    pos = scores[labels == 1]
    neg = scores[labels == 0]
    ties = int(sum(int(np.sum(neg == p)) for p in pos))
    doc = {
        "made_by": "tools/eval/metrics_reference.py",
        "seed": SEED,
        "numpy": np.__version__,
        "python": sys.version.split()[0],
        "regression": {
            "predictions": [float(v) for v in ef_pred],
            "truths": [float(v) for v in ef_truth],
            "expected": regression(ef_pred, ef_truth),
        },
        "binary": {
            "scores": [float(v) for v in scores],
            "truths": [int(v) for v in labels],
            "tied_pairs": ties,
            "expected": {"auc": auc_pairwise(scores, labels), "positives": int(labels.sum())},
        },
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {OUT}: R2 {doc['regression']['expected']['r2']:.4f}, "
          f"AUC {doc['binary']['expected']['auc']:.4f}, {ties} tied pairs")


if __name__ == "__main__":
    main()
