"""How noisy is each calibration objective? One fixed configuration of the default space, trained
with several seeds; the spread of each val metric after the last epoch.

The configuration is the default space's ``fixed`` settings plus one point (SAM, lr 0.08, rho
0.1); ``data_seed`` 0 keeps the val split the same for every seed, so the spread is the training's
own (initialisation, batch order): the noise a search sees when it compares two configurations on
one val split. For each objective metric it prints the mean, the standard deviation over seeds and
their ratio (the coefficient of variation, comparable across metrics of different scales), beside
the val accuracy's.

    python bench/objective_noise.py [--seeds 5] [--json bench/out/objective_noise.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from search_spaces import read_space_yaml, resolve_space
from trainables.config import parse_config
from trainables.engine.loop import Trainer
from trainables.metrics.objectives import ACCURACY_METRICS, CALIBRATION_METRICS

POINT = {"method": "sam", "lr": 0.08, "rho": 0.1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(2)
    fixed = read_space_yaml(resolve_space("default"))["fixed"]
    rows: dict[str, list[float]] = {}
    start = time.perf_counter()
    for seed in range(args.seeds):
        cfg = parse_config({**fixed, **POINT, "seed": seed, "data_seed": 0})
        last = Trainer(cfg).fit().history[-1]
        for name in (*ACCURACY_METRICS, *CALIBRATION_METRICS):
            rows.setdefault(name, []).append(float(last[name]))
        print(f"seed {seed}: " + "  ".join(f"{k} {v[-1]:.4f}" for k, v in rows.items()))
    print(f"\n{args.seeds} seeds of {POINT} over the default space's fixed settings, "
          f"{time.perf_counter() - start:.0f} s, CPU ({torch.get_num_threads()} threads)")  # fmt: skip
    print(f"{'metric':<18} {'mean':>8} {'std':>8} {'std/mean':>9}")
    summary = {}
    for name, values in rows.items():
        mean, std = statistics.fmean(values), statistics.stdev(values)
        summary[name] = {"values": values, "mean": mean, "std": std, "cv": std / abs(mean)}
        print(f"{name:<18} {mean:8.4f} {std:8.4f} {std / abs(mean):9.3f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"point": POINT, "metrics": summary}, indent=1))


if __name__ == "__main__":
    main()
