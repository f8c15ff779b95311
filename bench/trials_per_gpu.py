"""Trials per GPU without Ray: 1, 2 and 4 training processes at once on one device.

What fractional GPUs (``resources: {gpu: 1/k}``) buy, measured on the core each Ray trial runs:
at level k, k processes start together, each training one short trial of the bundled
``cifar10-resnet18`` space (CIFAR-shaped synthetic data, ``--images`` images of which 10% are
held out, ``--epochs`` epochs, method SAM) with ``Trainer.fit`` — the same code a trial runs,
without Ray, Optuna or MLflow (the Tune layer's own cost per trial is ``bench/study_overhead.py``).

Per level it reports:

- trials/hour: k / wall seconds of the level (process start, imports, data, compile, epochs,
  evaluation: everything a trial pays), and its ratio to one trial per device;
- steady images/s: training images per second summed over the k processes, each measured over its
  epochs after the first (which pays for compilation), and its ratio to one trial per device.

Levels run in order and the JSON is rewritten after each, so a time limit keeps what finished;
``--budget-s`` skips a level that would not fit (estimated from the previous level's wall time).

    python bench/trials_per_gpu.py [--levels 1,2,4] [--epochs 3] [--images 16384]
        [--budget-s 110] [--smoke] [--json bench/out/trials_per_gpu.json]

``--smoke`` (any machine): digits, small CNN, 2 epochs, for checking the script in seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

SPACE = "cifar10-resnet18"
ROOT = Path(__file__).resolve().parent.parent


def trial_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The bundled CIFAR space's fixed settings, made short (or tiny with ``--smoke``)."""
    from search_spaces import read_space_yaml, resolve_space

    fixed = dict(read_space_yaml(resolve_space(SPACE))["fixed"])
    fixed.update(method="sam", rho=0.05, lr=0.05, epochs=args.epochs, train_subset=None, seed=0)
    if args.smoke:
        fixed.update(dataset="digits", model="cnn", batch_size=64, augment=False)
    else:
        fixed.update(dataset="synthetic", synthetic_size=args.images)
    return fixed


def run_one_trial(settings: dict[str, Any], threads: int) -> dict[str, Any]:
    """Train one trial in this process; its timings (what a worker prints as one JSON line)."""
    start = time.perf_counter()
    torch.set_num_threads(threads)
    from trainables.config import parse_config
    from trainables.engine.loop import Trainer

    trainer = Trainer(parse_config(settings, where="trials_per_gpu"))
    epochs: list[float] = []
    result = trainer.fit(on_epoch=lambda _, record: epochs.append(record.seconds))
    images = trainer.data.split_size("train")
    steady = epochs[1:] or epochs
    return dict(
        status=result.status,
        seconds=time.perf_counter() - start,
        epoch_seconds=epochs,
        train_images=images,
        steady_images_per_s=images * len(steady) / sum(steady),
        device=str(trainer.device),
    )


def run_level(level: int, settings: dict[str, Any], threads: int) -> dict[str, Any]:
    """Start ``level`` worker processes at once; wait for all; their results and the wall time."""
    command = [
        sys.executable,
        __file__,
        "--worker",
        json.dumps(settings),
        "--threads",
        str(threads),
    ]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    start = time.perf_counter()
    workers = [
        subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env) for _ in range(level)
    ]
    outputs = [w.communicate()[0] for w in workers]
    wall = time.perf_counter() - start
    failed = [i for i, w in enumerate(workers) if w.returncode != 0]
    if failed:
        raise SystemExit(
            f"trials_per_gpu: {len(failed)} of {level} workers failed at level {level}"
        )
    trials = [json.loads(out.strip().splitlines()[-1]) for out in outputs]
    return dict(
        wall_seconds=wall,
        trials=trials,
        trials_per_hour=level / wall * 3600,
        steady_images_per_s=sum(t["steady_images_per_s"] for t in trials),
    )


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU ({os.cpu_count()} cores)"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="1,2,4", help="processes per device, comma-separated")
    parser.add_argument("--epochs", type=int, default=None, help="per trial; 3 (smoke: 2)")
    parser.add_argument("--images", type=int, default=16384, help="synthetic training images")
    parser.add_argument("--budget-s", type=float, default=None, help="skip levels that won't fit")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (digits, cnn)")
    parser.add_argument("--json", default="bench/out/trials_per_gpu.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # settings JSON: run one trial
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.levels = [int(k) for k in args.levels.split(",") if k.strip()]
    if not args.levels or min(args.levels) < 1 or args.levels[0] != 1:
        parser.error(f"--levels: positive integers starting with 1 (got {args.levels})")
    args.epochs = args.epochs or (2 if args.smoke else 3)
    return args


def write_report(
    path: Path, settings: dict[str, Any], results: dict[str, Any], skipped: list[int]
) -> None:
    base = results["1"]
    for r in results.values():
        r["trials_per_hour_ratio_vs_1"] = r["trials_per_hour"] / base["trials_per_hour"]
        r["images_per_s_ratio_vs_1"] = r["steady_images_per_s"] / base["steady_images_per_s"]
    report = dict(
        device=device_name(),
        torch=torch.__version__,
        settings=settings,
        results=results,
        skipped_levels=skipped,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))


def main() -> None:
    args = parse_args()
    if args.worker:
        print(json.dumps(run_one_trial(json.loads(args.worker), args.threads)), flush=True)
        return
    settings = trial_settings(args)
    cpus = os.cpu_count() or 1
    start = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    skipped: list[int] = []
    previous = 0.0
    for level in args.levels:
        left = None if args.budget_s is None else args.budget_s - (time.perf_counter() - start)
        if results and left is not None and left < previous * 1.5:
            skipped.append(level)
            print(f"  {level} per device: skipped, {left:.0f} s left of --budget-s", flush=True)
            continue
        r = run_level(level, settings, max(1, cpus // max(args.levels)))
        results[str(level)] = r
        previous = r["wall_seconds"]
        print(
            f"  {level} per device: {level} trials in {r['wall_seconds']:.1f} s, "
            f"{r['steady_images_per_s']:.0f} img/s steady",
            flush=True,
        )
        write_report(Path(args.json), settings, results, skipped)
    print(
        f"trials per device without Ray: {SPACE} "
        f"({'smoke: digits, cnn' if args.smoke else f'synthetic CIFAR, {args.images} images'}), "
        f"SAM, {args.epochs} epochs, one trial per process, {device_name()}"
    )
    print(
        f"  {'per device':>10}  {'wall s':>7}  {'trials/h':>9}  {'ratio':>5}  {'img/s':>8}  {'ratio':>5}"
    )
    for level, r in results.items():
        print(
            f"  {level:>10}  {r['wall_seconds']:7.1f}  {r['trials_per_hour']:9.1f}  "
            f"{r['trials_per_hour_ratio_vs_1']:5.2f}  {r['steady_images_per_s']:8.0f}  "
            f"{r['images_per_s_ratio_vs_1']:5.2f}"
        )


if __name__ == "__main__":
    main()
