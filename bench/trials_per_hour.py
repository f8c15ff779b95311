"""Trials per hour on one device at 1, 2 and 4 concurrent trials (fractional Ray resources).

Runs ``study run`` itself (in this process, on one shared local Ray) on the bundled CIFAR-10
ResNet-18 space, written to a temporary space file with:

- short trials: CIFAR-shaped synthetic data (``--images``, 10% held out as val), ``--epochs``;
- ``sampler: random`` with a fixed seed, so every level trains the same sequence of trials;
- ``resources``: on CUDA ``gpu: 1/k`` (one GPU shared by k trials; each trial gets the same
  ``cpu``), on a CPU-only machine ``cpu: C/k`` of the machine's C cores;
- ``--trials`` trials at ``concurrency: k`` for k in ``--levels`` (default 1, 2, 4).

Each level's wall time covers all that ``study run`` does (trial workers started, compile, data,
epochs, per-epoch checkpoints and evidence, MLflow tracking in a temporary SQLite store, the
report); ``ray.init`` is paid once and timed apart. Prints trials/hour per level and its ratio to
one trial per device, and writes JSON.

    python bench/trials_per_hour.py [--trials 8] [--levels 1,2,4] [--epochs 2] [--images 4096]
        [--smoke] [--json bench/out/trials_per_hour.json]

``--smoke`` (any machine): 640 digits, small CNN, one epoch, for checking the script quickly.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from search_spaces import read_space_yaml, resolve_space

SPACE = "cifar10-resnet18"


def space_file(directory: Path, level: int, args: argparse.Namespace, on_cuda: bool) -> Path:
    """The bundled CIFAR space made short, with ``level`` trials sharing one device."""
    data = read_space_yaml(resolve_space(SPACE))
    fixed = dict(data["fixed"])
    fixed.update(epochs=args.epochs, train_subset=None)
    if args.smoke:
        fixed.update(dataset="digits", model="cnn", batch_size=64, augment=False)
        fixed.update(train_subset=640, test_subset=320)
    else:
        fixed.update(dataset="synthetic", synthetic_size=args.images)
    data.update(
        fixed=fixed,
        sampler="random",
        seed=0,
        samples=args.trials,
        concurrency=level,
        max_failures=0,
        description=f"{SPACE}, short trials, {level} per device",
    )
    cpus = os.cpu_count() or 1
    if on_cuda:
        data["resources"] = {"cpu": max(1, cpus // max(args.levels)), "gpu": 1.0 / level}
    else:
        data["resources"] = {"cpu": cpus / level, "gpu": 0}
    path = directory / f"tph-{level}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run_level(directory: Path, level: int, args: argparse.Namespace, on_cuda: bool) -> float:
    """Seconds of one ``study run`` of ``args.trials`` trials, ``level`` at a time."""
    from study.cli import main as study_main

    argv = [
        "run",
        str(space_file(directory, level, args, on_cuda)),
        "--name",
        f"tph-{level}",
        "--storage",
        str(directory / "studies"),
        "--tracking-uri",
        f"sqlite:///{directory / 'mlflow.db'}",
    ]
    log = directory / f"tph-{level}.log"
    start = time.perf_counter()
    with log.open("w") as out, contextlib.redirect_stdout(out):
        rc = study_main(argv)
    seconds = time.perf_counter() - start
    if rc != 0:
        raise SystemExit(f"trials_per_hour: study run at {level} per device failed; see {log}")
    return seconds


def completed_trials(directory: Path, level: int) -> int:
    """Trials of the level's Optuna study that completed."""
    import optuna

    storage = f"sqlite:///{directory / 'studies' / f'tph-{level}' / 'optuna.db'}"
    summaries = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summaries[0].study_name, storage=storage)
    return sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)


def device_name(on_cuda: bool) -> str:
    if on_cuda:
        return torch.cuda.get_device_name()
    return f"CPU ({os.cpu_count()} cores)"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=None, help="per level; 8 (smoke: 4)")
    parser.add_argument("--levels", default="1,2,4", help="trials per device, comma-separated")
    parser.add_argument("--epochs", type=int, default=None, help="per trial; 2 (smoke: 1)")
    parser.add_argument("--images", type=int, default=4096, help="synthetic training images")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (digits, cnn)")
    parser.add_argument("--keep", help="keep the studies in this directory (default: temporary)")
    parser.add_argument("--json", default="bench/out/trials_per_hour.json")
    args = parser.parse_args()
    args.levels = [int(k) for k in args.levels.split(",") if k.strip()]
    if not args.levels or min(args.levels) < 1 or 1 not in args.levels:
        parser.error(f"--levels: positive integers including 1 (got {args.levels})")
    args.trials = args.trials or (4 if args.smoke else 8)
    args.epochs = args.epochs or (1 if args.smoke else 2)
    return args


def main() -> None:
    args = parse_args()
    from study.runner import init_ray

    on_cuda = torch.cuda.is_available()
    import ray

    start = time.perf_counter()
    ray.init(
        address="local",
        num_cpus=os.cpu_count(),
        num_gpus=1 if on_cuda else 0,
        include_dashboard=False,
        configure_logging=False,
    )
    init_ray(None)  # already initialised: study run reuses this Ray
    ray_init_s = time.perf_counter() - start
    results: dict[str, dict[str, Any]] = {}
    with contextlib.ExitStack() as stack:
        if args.keep:
            directory = Path(args.keep).resolve()
            directory.mkdir(parents=True, exist_ok=True)
        else:
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tph-")))
        for level in args.levels:
            seconds = run_level(directory, level, args, on_cuda)
            done = completed_trials(directory, level)
            results[str(level)] = dict(
                seconds=seconds, completed=done, trials_per_hour=done / seconds * 3600
            )
            print(f"  {level} per device: {done} trials in {seconds:.1f} s", flush=True)
    ray.shutdown()
    base = results["1"]["trials_per_hour"]
    for r in results.values():
        r["ratio_vs_1"] = r["trials_per_hour"] / base
    resource = "gpu" if on_cuda else "cpu"
    print(
        f"trials per hour: {SPACE} ({'smoke: digits, cnn' if args.smoke else 'synthetic CIFAR'}), "
        f"{args.trials} trials of {args.epochs} epoch(s) per level, {device_name(on_cuda)}; "
        f"ray.init {ray_init_s:.1f} s apart"
    )
    print(f"  {'per device':>10}  {resource + ' share':>9}  {'seconds':>8}  {'trials/h':>9}  ratio")
    for level, r in results.items():
        share = 1.0 / int(level) if on_cuda else (os.cpu_count() or 1) / int(level)
        print(
            f"  {level:>10}  {share:9.2f}  {r['seconds']:8.1f}  {r['trials_per_hour']:9.1f}"
            f"  {r['ratio_vs_1']:.2f}"
        )
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = dict(
        space=SPACE,
        smoke=args.smoke,
        trials=args.trials,
        epochs=args.epochs,
        images=None if args.smoke else args.images,
        levels=args.levels,
        resource=resource,
        torch=torch.__version__,
    )
    report = dict(
        device=device_name(on_cuda), settings=settings, ray_init_seconds=ray_init_s, results=results
    )
    out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
