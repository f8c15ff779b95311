"""Per-step cost of SAM and CSAM over the base optimizer, on sharpcal's own training path.

CIFAR ResNet-18 on CIFAR-shaped synthetic data; batch 128 on CUDA (32 on CPU by default). All
methods run in this one process on the same batch, with warm-up, and the median step time is
compared. Prints SAM/base and CSAM/SAM (targets: <= 2.05 and <= 1.02) and the memory SAM adds over
the base optimizer, in copies of the parameters (target: <= 1).

    python bench/step_cost.py [--device cuda] [--batch 128] [--steps 30] [--json bench/out/x.json]
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

METHODS = ("sgd", "sam", "csam")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of tensors an optimizer keeps (SAM's own state plus its base optimizer's)."""
    states = [optimizer.state]
    base = getattr(optimizer, "base_optimizer", None)
    if base is not None:
        states.append(base.state)
    return sum(
        t.numel() * t.element_size()
        for state in states
        for per_param in state.values()
        for t in per_param.values()
        if torch.is_tensor(t)
    )


def build(method: str, args: argparse.Namespace) -> tuple[Trainer, torch.Tensor, torch.Tensor]:
    """A trainer of ``method`` and one fixed batch."""
    cfg = parse_config(
        dict(
            dataset="synthetic",
            synthetic_size=args.batch * 2,
            model=args.model,
            method=method,
            batch_size=args.batch,
            device=args.device,
            rho=0.05,
            gamma=1.0,
            compile=args.compile,
            train_subset=None,
        )
    )
    trainer = Trainer(cfg)
    trainer.model.train()
    x, y = next(iter(trainer.data.train_batches(args.batch, epoch_seed=0, augment=False)))
    return trainer, x, y


def timed_step(trainer: Trainer, x: torch.Tensor, y: torch.Tensor) -> float:
    """Seconds of one training step, device work included."""
    _sync(trainer.device)
    start = time.perf_counter()
    trainer.train_step(x, y)
    _sync(trainer.device)
    return time.perf_counter() - start


def measure_all(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Median step time of each method, the methods interleaved step by step so that drift in
    the machine's speed hits them alike; then peak memory of each, measured alone."""
    runs = {m: build(m, args) for m in METHODS}
    for trainer, x, y in runs.values():
        for _ in range(args.warmup):
            trainer.train_step(x, y)
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    for _ in range(args.steps):
        for m, (trainer, x, y) in runs.items():
            times[m].append(timed_step(trainer, x, y))
    results = {}
    for m, (trainer, x, y) in runs.items():
        peak = float("nan")
        if trainer.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(trainer.device)
            base = torch.cuda.memory_allocated(trainer.device)
            timed_step(trainer, x, y)
            peak = torch.cuda.max_memory_allocated(trainer.device) - base
        results[m] = dict(
            step_s=statistics.median(times[m]),
            param_bytes=sum(p.numel() * p.element_size() for p in trainer.model.parameters()),
            optimizer_state_bytes=optimizer_state_bytes(trainer.optimizer),
            peak_bytes=peak,
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--json", default="bench/out/step_cost.json")
    args = parser.parse_args()
    on_cuda = args.device.startswith("cuda")
    args.batch = args.batch or (128 if on_cuda else 32)
    args.steps = args.steps or (30 if on_cuda else 12)

    results = measure_all(args)
    base, sam, csam = (results[m] for m in METHODS)
    ratios = {
        "sam_over_base": sam["step_s"] / base["step_s"],
        "csam_over_sam": csam["step_s"] / sam["step_s"],
        # SAM keeps the saved weights; SGD's momentum buffer is in both, so the difference counts.
        "sam_extra_state_in_param_copies": (
            sam["optimizer_state_bytes"] - base["optimizer_state_bytes"]
        )
        / sam["param_bytes"],
    }
    if on_cuda:  # the state difference plus the difference of the in-step peaks
        in_step = sam["peak_bytes"] - base["peak_bytes"]
        ratios["sam_extra_memory_in_param_copies"] = (
            ratios["sam_extra_state_in_param_copies"] + in_step / sam["param_bytes"]
        )
    name = torch.cuda.get_device_name() if on_cuda else f"CPU ({torch.get_num_threads()} threads)"
    print(f"step cost: {args.model}, batch {args.batch}, {args.steps} steps, {name}")
    for m in METHODS:
        print(f"  {m:>5}: {results[m]['step_s'] * 1000:8.1f} ms/step")
    print(f"  SAM/base  = {ratios['sam_over_base']:.3f}  (target <= 2.05)")
    print(f"  CSAM/SAM  = {ratios['csam_over_sam']:.3f}  (target <= 1.02)")
    print(
        f"  SAM extra optimizer state = {ratios['sam_extra_state_in_param_copies']:.2f} "
        "parameter copies (target <= 1)"
    )
    if on_cuda:
        print(
            f"  SAM extra peak memory = {ratios['sam_extra_memory_in_param_copies']:.2f} "
            "parameter copies (state + in-step peak, over the base optimizer; target <= 1)"
        )
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            dict(device=name, batch=args.batch, model=args.model, results=results, ratios=ratios),
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
