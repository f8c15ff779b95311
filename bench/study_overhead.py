"""Per-trial overhead of the Ray Tune / Optuna layer over calling the training core directly.

The same configurations (digits, small CNN, a grid over the learning rate) are trained twice in one
process: directly with ``Trainer.fit`` and through ``study run``'s Tuner (one trial at a time, so
the two are comparable). Ray's start is timed apart. Target: under 1 s per trial after Ray has
started.

    python bench/study_overhead.py [--trials 6] [--epochs 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from search_spaces.schema import check_space
from study.runtime.tuner import build_tuner, init_ray
from study.storage.files import prepare_study
from trainables.engine.loop import Trainer
from trainables.layout import study_paths

FIXED = dict(
    dataset="digits", train_subset=None, model="cnn", batch_size=64, device="cpu", method="sam"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--json", default="bench/out/study_overhead.json")
    args = parser.parse_args()
    lrs = [round(0.02 + 0.02 * i, 4) for i in range(args.trials)]
    space = check_space(
        dict(
            name="overhead",
            fixed={**FIXED, "epochs": args.epochs},
            search={"lr": {"categorical": lrs}},
            sampler="grid",
            samples=args.trials,
            concurrency=1,
            resources={"cpu": 2},
        ),
        "bench/study_overhead.py",
    )

    start = time.perf_counter()
    for lr in lrs:
        Trainer(space.train_config({"lr": lr})).fit()
    direct = time.perf_counter() - start

    start = time.perf_counter()
    init_ray(None)
    ray_start = time.perf_counter() - start

    with tempfile.TemporaryDirectory() as storage:
        paths = study_paths("overhead", storage)
        prepare_study(space, "overhead", paths)
        start = time.perf_counter()
        results = build_tuner(space, "overhead", paths, callbacks=[]).fit()
        tuned = time.perf_counter() - start
    assert len(results) == args.trials and results.num_errors == 0

    per_trial = (tuned - direct) / args.trials
    print(f"{args.trials} trials of {args.epochs} epochs (digits, cnn, SAM), one at a time")
    print(f"  direct Trainer.fit : {direct:7.1f} s  ({direct / args.trials:.2f} s/trial)")
    print(f"  ray.init           : {ray_start:7.1f} s  (once per study)")
    print(f"  study Tuner.fit    : {tuned:7.1f} s  ({tuned / args.trials:.2f} s/trial)")
    print(
        f"  overhead per trial : {per_trial:7.2f} s  (target < 1 s); ratio tune/direct "
        f"{tuned / direct:.2f}"
    )
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            dict(
                trials=args.trials,
                epochs=args.epochs,
                direct_s=direct,
                ray_init_s=ray_start,
                tune_s=tuned,
                overhead_per_trial_s=per_trial,
            ),
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
