"""Does the paper's effect show on the default? SGD vs SAM vs CSAM on Fashion-MNIST, several seeds.

Runs the `study train` default (Fashion-MNIST 5k subset, small CNN, CPU) for each method and seed
and prints a markdown table of test accuracy, ECE and ECE after temperature scaling (mean ± std),
ready for BENCHMARKS.md.

    python bench/calibration_evidence.py [--seeds 3] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from study.cli.settings import parse_sets
from trainables.config import parse_config
from trainables.engine.loop import Trainer

METHODS = ("sgd", "sam", "csam")
COLUMNS = (
    ("test_accuracy", "accuracy %"),
    ("test_ece", "ECE %"),
    ("test_ece_ts", "ECE after TS %"),
    ("temperature", "fitted T x100 (< 100: underconfident)"),
)


def mean_std(values: list[float]) -> str:
    """``mean ± std`` in percent."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.2f} ± {100 * std:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset")
    parser.add_argument("--set", dest="sets", action="append", metavar="KEY=VALUE")
    parser.add_argument("--json", default="bench/out/calibration_evidence.json")
    args = parser.parse_args()
    overrides = parse_sets(args.sets)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    runs: dict[str, list[dict[str, float]]] = {m: [] for m in methods}
    start = time.perf_counter()
    for seed in range(args.seeds):
        for method in methods:
            cfg = parse_config({"method": method, "seed": seed, **overrides})
            result = Trainer(cfg).fit()
            runs[method].append(
                {
                    **result.final,
                    "seconds": result.seconds,
                    "train_loss": result.history[-1]["train_loss"],
                }
            )
            print(
                f"seed {seed} {method:>4}: "
                + "  ".join(f"{key} {result.final[key]:.4f}" for key, _ in COLUMNS)
                + f"  train_loss {result.history[-1]['train_loss']:.4f}  {result.seconds:.1f}s",
                flush=True,
            )
    cfg = parse_config({"method": "sam", **overrides})
    print(
        f"\n{cfg.dataset}, {cfg.train_subset} train images, model {cfg.model}, {cfg.epochs} "
        f"epochs, rho {cfg.rho}, CSAM gamma {cfg.gamma}, {args.seeds} seeds "
        f"({time.perf_counter() - start:.0f}s)\n"
    )
    print("| method | " + " | ".join(title for _, title in COLUMNS) + " |")
    print("|---|" + "---|" * len(COLUMNS))
    for method in methods:
        cells = [mean_std([r[key] for r in runs[method]]) for key, _ in COLUMNS]
        print(f"| {method} | " + " | ".join(cells) + " |")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"overrides": overrides, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
