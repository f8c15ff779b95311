"""Evaluation cost of MC dropout against one deterministic pass, on sharpcal's own evaluation path.

``cnn_fc`` with dropout 0.2 on the Fashion-MNIST test split (5 000 images by default), in this
one process: ``Trainer.predict("test")`` with ``mc_samples`` 1 (the reference) and each level
given, warm-up first, the median of ``--repeats`` timed evaluations. Prints seconds and the ratio
to the reference (expected: about ``mc_samples``, the passes being the whole cost).

    python bench/mc_dropout.py [--device cpu] [--samples 1 2 5 10 20] [--json bench/out/mc.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from trainables.config import parse_config
from trainables.engine.loop import Trainer


def eval_seconds(trainer: Trainer, repeats: int) -> float:
    """Median wall time of ``predict("test")`` (after one warm-up evaluation)."""
    trainer.predict("test")
    times = []
    for _ in range(repeats):
        if trainer.device.type == "cuda":
            torch.cuda.synchronize(trainer.device)
        start = time.perf_counter()
        logits, _ = trainer.predict("test")
        logits.sum().item()  # waits for the device
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--samples", type=int, nargs="+", default=[2, 5, 10, 20])
    parser.add_argument("--test-subset", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    base = dict(model="cnn_fc", dropout=0.2, device=args.device, test_subset=args.test_subset)
    reference = Trainer(parse_config({**base, "mc_samples": 1}))
    state = reference.model.state_dict()
    ref_s = eval_seconds(reference, args.repeats)
    rows = [{"mc_samples": 1, "seconds": ref_s, "ratio": 1.0}]
    for k in args.samples:
        trainer = Trainer(parse_config({**base, "mc_samples": k}))
        trainer.model.load_state_dict(state)
        seconds = eval_seconds(trainer, args.repeats)
        rows.append({"mc_samples": k, "seconds": seconds, "ratio": seconds / ref_s})
    n = reference.data.split_size("test")
    print(f"evaluation of {n} test images, cnn_fc, dropout 0.2, {reference.device}:")
    for row in rows:
        print(f"  mc_samples {row['mc_samples']:>3}: {row['seconds']:.3f} s  x{row['ratio']:.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"device": str(reference.device), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
