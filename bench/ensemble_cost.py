"""Cost of MIMO and Rank-1 BNN against SGD per epoch, on sharpcal's own training and evaluation.

``cnn_fc`` on Fashion-MNIST (5 000 training images, the 5 000-image test split), in this one
process: the reference (the plain model) and each ensemble train ``--epochs`` epochs (the first a
warm-up, the median of the rest timed) and evaluate the test split (warm-up, then the median of
``--repeats``). Prints seconds and the ratio to the reference (expected: about b x for MIMO's
training with b batch repetitions and about 1 x for its evaluation; about M x for Rank-1's
training and M x its samples for its evaluation).

    python -m bench.ensemble_cost [--device cpu] [--mimo 3 --mimo-repetitions 4] [--rank1 4]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from bench.mc_dropout import eval_seconds
from trainables.config import parse_config
from trainables.engine.loop import Trainer


def epoch_seconds(trainer: Trainer, epochs: int) -> float:
    """Median wall time of a training epoch, the first (warm-up) left out."""
    times = [trainer.train_epoch().seconds for _ in range(epochs)]
    return statistics.median(times[1:] if len(times) > 1 else times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--method", default="sgd", help="sgd, sam or csam for every row")
    parser.add_argument("--mimo", type=int, default=3)
    parser.add_argument("--mimo-repetitions", type=int, default=4)
    parser.add_argument("--rank1", type=int, default=4)
    parser.add_argument("--rank1-samples", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    base = dict(model="cnn_fc", device=args.device, method=args.method, test_subset=5000)
    rows_settings: list[tuple[str, dict[str, Any]]] = [
        (args.method, {}),
        (f"mimo {args.mimo}, b {args.mimo_repetitions}", {
            "mimo": args.mimo, "mimo_batch_repetitions": args.mimo_repetitions,
        }),
        (f"rank1 {args.rank1}, {args.rank1_samples} sample(s)", {
            "rank1": args.rank1, "rank1_eval_samples": args.rank1_samples,
        }),
    ]  # fmt: skip
    rows = []
    for name, settings in rows_settings:
        trainer = Trainer(parse_config({**base, **settings}))
        train_s = epoch_seconds(trainer, args.epochs)
        rows.append(
            {"row": name, "train_s": train_s, "eval_s": eval_seconds(trainer, args.repeats)}
        )
    ref = rows[0]
    for row in rows:
        row["train_ratio"] = row["train_s"] / ref["train_s"]
        row["eval_ratio"] = row["eval_s"] / ref["eval_s"]
    print(f"cnn_fc, Fashion-MNIST 4 500 train / 5 000 test images, {args.method}, {args.device}:")
    for row in rows:
        print(
            f"  {row['row']:<24} epoch {row['train_s']:7.2f} s  x{row['train_ratio']:.2f}   "
            f"test {row['eval_s']:6.2f} s  x{row['eval_ratio']:.2f}"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"device": args.device, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
