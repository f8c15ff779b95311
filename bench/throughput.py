"""Training throughput of sharpcal against a reference written the usual way, data loading included.

CIFAR ResNet-18 on CIFAR-shaped synthetic data (uint8 noise), same architecture, batch and device
on both paths, all in this one process:

- sharpcal: ``Trainer`` from a config, its ``train_batches`` (uint8 data resident on the device,
  batched crop/flip there) and ``train_step`` (bf16 autocast and channels_last on CUDA by default,
  foreach optimizer ops, ``torch.compile`` per the config's ``compile`` flag);
- reference: a torchvision-style ``Dataset`` over the same uint8 images (HWC numpy, per item PIL +
  RandomCrop(32, padding=4) + RandomHorizontalFlip + ToTensor + Normalize), a ``DataLoader`` with
  workers, the popular single-file SAM (per-parameter loops, ``p.data`` rebinding), fp32, SGD with
  momentum 0.9. CSAM uses sharpcal's per-sample CSAM loss at the perturbed weights on both paths.

Per method both paths are built, warmed up through their data paths, then timed in
``--repeats`` interleaved blocks of ``--steps`` steps (loading included; the order alternates
between rounds, so a slow spell of a shared machine hits both); images/s = steps * batch / seconds
of a block, median over blocks. Prints sharpcal/reference per method
(targets: >= 1.0 on CPU, >= 3 on an H100). On CUDA it also measures the bf16 matmul rate, counts
the FLOPs of one SAM step (3x forward per pass, two passes) and prints the compute floor in
images/s with sharpcal's SAM as a percentage of it (target >= 25%).

    python bench/throughput.py [--device cuda] [--batch 128] [--steps 50] [--repeats 3] [--warmup 10]
        [--methods sgd,sam,csam] [--workers 2] [--compile/--no-compile] [--json bench/out/x.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode
from torchvision import transforms

from trainables.config import TrainConfig, parse_config
from trainables.data.datasets import DatasetInfo, load_data
from trainables.engine.loop import Trainer
from trainables.losses.common import csam_loss
from trainables.models.zoo import build_model

METHODS = ("sgd", "sam", "csam")
MODEL = "resnet18"
NUM_CLASSES, CHANNELS, IMAGE_SIZE = 10, 3, 32
RHO = 0.05
GAMMA = 1.0
SEED = 0
MATMUL_N = 8192

Batch = tuple[Tensor, Tensor]
StepFn = Callable[[Tensor, Tensor], None]


@dataclass(frozen=True)
class Images:
    """The training images as the reference sees them: HWC uint8, labels, normalisation info."""

    data: np.ndarray
    targets: list[int]
    info: DatasetInfo


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------- sharpcal path


def sharpcal_config(method: str, args: argparse.Namespace, size: int) -> TrainConfig:
    """The run config of the sharpcal path; val_fraction=0 so every image is a training image."""
    return parse_config(
        dict(
            dataset="synthetic",
            synthetic_size=size,
            train_subset=None,
            val_fraction=0.0,
            model=MODEL,
            method=method,
            batch_size=args.batch,
            device=args.device,
            augment=True,
            rho=RHO,
            gamma=GAMMA,
            seed=SEED,
            compile=args.compile,
        )
    )


def sharpcal_batches(trainer: Trainer, batch: int) -> Iterator[Batch]:
    """Augmented training batches, epoch after epoch (each epoch with its own seed)."""
    for epoch in itertools.count():
        yield from trainer.data.train_batches(batch, epoch_seed=epoch, augment=True)


def sharpcal_path(method: str, args: argparse.Namespace, size: int) -> TimedPath:
    """sharpcal's data and training step for ``method``, ready to be timed."""
    trainer = Trainer(sharpcal_config(method, args, size))
    trainer.model.train()

    def step(x: Tensor, y: Tensor) -> None:
        trainer.train_step(x, y)

    return TimedPath(sharpcal_batches(trainer, args.batch), step)


# ----------------------------------------------------------------------------- reference path


class PopularSAM(torch.optim.Optimizer):
    """The popular single-file SAM (github.com/davda54/sam), reproduced as people copy it."""

    def __init__(
        self,
        params: Any,
        base_optimizer: type[torch.optim.Optimizer],
        rho: float = 0.05,
        adaptive: bool = False,
        **kwargs: Any,
    ) -> None:
        assert rho >= 0.0, f"Invalid rho, should be non-negative: {rho}"
        defaults = dict(rho=rho, adaptive=adaptive, **kwargs)
        super().__init__(params, defaults)
        self.base_optimizer = base_optimizer(self.param_groups, **kwargs)
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        grad_norm = self._grad_norm()
        for group in self.param_groups:
            scale = group["rho"] / (grad_norm + 1e-12)
            for p in group["params"]:
                if p.grad is None:
                    continue
                self.state[p]["old_p"] = p.data.clone()
                e_w = (torch.pow(p, 2) if group["adaptive"] else 1.0) * p.grad * scale.to(p)
                p.add_(e_w)  # climb to the local maximum "w + e(w)"
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                p.data = self.state[p]["old_p"]  # get back to "w" from "w + e(w)"
        self.base_optimizer.step()  # do the actual "sharpness-aware" update
        if zero_grad:
            self.zero_grad()

    def _grad_norm(self) -> Tensor:
        shared_device = self.param_groups[0]["params"][0].device
        return torch.norm(
            torch.stack(
                [
                    ((torch.abs(p) if group["adaptive"] else 1.0) * p.grad)
                    .norm(p=2)
                    .to(shared_device)
                    for group in self.param_groups
                    for p in group["params"]
                    if p.grad is not None
                ]
            ),
            p=2,
        )


def enable_running_stats(model: nn.Module) -> None:
    """The popular SAM example's BatchNorm bypass, undone: restore the saved momentum."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and hasattr(
            module, "backup_momentum"
        ):
            module.momentum = module.backup_momentum


def disable_running_stats(model: nn.Module) -> None:
    """The popular SAM example's BatchNorm bypass: momentum 0 for the second forward pass."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.backup_momentum = module.momentum
            module.momentum = 0


class CifarLikeDataset(Dataset):
    """Like ``torchvision.datasets.CIFAR10``: HWC uint8 ``data``, int ``targets``, PIL per item."""

    def __init__(self, data: np.ndarray, targets: list[int], transform: Callable[..., Tensor]):
        self.data = data
        self.targets = targets
        self.transform = transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        img = Image.fromarray(self.data[index])
        return self.transform(img), self.targets[index]


def reference_transform(info: DatasetInfo) -> Callable[..., Tensor]:
    """The usual CIFAR training transform."""
    return transforms.Compose(
        [
            transforms.RandomCrop(IMAGE_SIZE, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(info.mean, info.std),
        ]
    )


def reference_loader(images: Images, args: argparse.Namespace) -> DataLoader:
    """A shuffled ``DataLoader`` with workers (pinned memory on CUDA), full batches only."""
    transform = reference_transform(images.info)
    dataset = CifarLikeDataset(images.data, images.targets, transform)
    return DataLoader(
        dataset,
        batch_size=args.batch,
        shuffle=True,
        num_workers=args.workers,
        pin_memory=torch.device(args.device).type == "cuda",
        drop_last=True,
    )


def reference_batches(loader: DataLoader, device: torch.device) -> Iterator[Batch]:
    """The loader's batches moved to ``device``, epoch after epoch."""
    while True:
        for x, y in loader:
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def reference_step(method: str, model: nn.Module, cfg: TrainConfig) -> StepFn:
    """One training step the usual way: plain SGD, or popular SAM around SGD (CSAM's loss)."""
    sgd_kwargs = dict(lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if method == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), **sgd_kwargs)

        def sgd_step(x: Tensor, y: Tensor) -> None:
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()

        return sgd_step

    sam = PopularSAM(model.parameters(), torch.optim.SGD, rho=cfg.rho, **sgd_kwargs)
    descent = csam_loss(cfg.gamma) if method == "csam" else F.cross_entropy

    def sam_step(x: Tensor, y: Tensor) -> None:
        enable_running_stats(model)
        F.cross_entropy(model(x), y).backward()
        sam.first_step(zero_grad=True)
        disable_running_stats(model)
        descent(model(x), y).backward()
        sam.second_step(zero_grad=True)

    return sam_step


def reference_path(method: str, args: argparse.Namespace, size: int, images: Images) -> TimedPath:
    """The reference's loader and training step for ``method``, ready to be timed."""
    cfg = sharpcal_config(method, args, size)  # the same lr, momentum, weight decay, rho, gamma
    device = torch.device(args.device)
    torch.manual_seed(SEED)
    model = build_model(MODEL, NUM_CLASSES, CHANNELS, IMAGE_SIZE).to(device)
    model.train()
    loader = reference_loader(images, args)
    return TimedPath(reference_batches(loader, device), reference_step(method, model, cfg))


def training_images(size: int) -> Images:
    """sharpcal's synthetic training images as HWC uint8 numpy, with labels and dataset info.

    Read through the public eval path (normalised float) and mapped back to uint8: the inverse of
    the normalisation is exact after rounding.
    """
    data = load_data("synthetic", synthetic_size=size, val_fraction=0.0, seed=SEED, device="cpu")
    x, y = next(iter(data.eval_batches("train", size)))
    mean = torch.tensor(data.info.mean).view(1, -1, 1, 1)
    std = torch.tensor(data.info.std).view(1, -1, 1, 1)
    pixels = ((x * std + mean) * 255.0).round().clamp(0, 255).to(torch.uint8)
    return Images(pixels.permute(0, 2, 3, 1).contiguous().numpy(), y.tolist(), data.info)


# ----------------------------------------------------------------------------- timing and floor


@dataclass
class TimedPath:
    """A training path to time: its batch iterator (data loading included) and its step."""

    batches: Iterator[Batch]
    step: StepFn

    def run(self, steps: int) -> None:
        for _ in range(steps):
            self.step(*next(self.batches))

    def close(self) -> None:
        """Stop the iterator (a reference loader's workers shut down)."""
        close = getattr(self.batches, "close", None)
        if close is not None:
            close()


def time_interleaved(
    paths: dict[str, TimedPath], args: argparse.Namespace, device: torch.device
) -> dict[str, list[float]]:
    """Warm every path up, then ``args.repeats`` rounds of ``args.steps`` timed steps per path.

    The paths alternate within each round and the order turns from round to round, so a slow
    spell of the machine (other processes, clock changes) falls on both paths alike. Returns the
    seconds of each block, per path.
    """
    for path in paths.values():
        path.run(args.warmup)
    _sync(device)
    seconds: dict[str, list[float]] = {name: [] for name in paths}
    names = list(paths)
    for round_ in range(args.repeats):
        for name in names if round_ % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            paths[name].run(args.steps)
            _sync(device)
            seconds[name].append(time.perf_counter() - start)
    return seconds


def measure_method(
    method: str, args: argparse.Namespace, size: int, images: Images
) -> dict[str, Any]:
    """Reference and sharpcal interleaved for ``method``: median images/s of each and the ratio."""
    device = torch.device(args.device)
    paths = {
        "reference": reference_path(method, args, size, images),
        "sharpcal": sharpcal_path(method, args, size),
    }
    try:
        seconds = time_interleaved(paths, args, device)
    finally:
        for path in paths.values():
            path.close()
    rates = {name: [args.steps * args.batch / s for s in secs] for name, secs in seconds.items()}
    ref, ours = (statistics.median(rates[name]) for name in ("reference", "sharpcal"))
    per_round = [o / r for o, r in zip(rates["sharpcal"], rates["reference"])]
    return dict(
        reference_seconds=seconds["reference"],
        sharpcal_seconds=seconds["sharpcal"],
        reference_images_per_s=ref,
        sharpcal_images_per_s=ours,
        ratio=ours / ref,
        ratio_per_round=per_round,
        ratio_min=min(per_round),
        ratio_max=max(per_round),
    )


def matmul_tflops(device: torch.device, n: int = MATMUL_N, reps: int = 7) -> float:
    """Median bf16 ``n x n`` matmul rate on ``device`` in TFLOP/s."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    rates = []
    for _ in range(reps):
        _sync(device)
        start = time.perf_counter()
        for _ in range(5):
            a @ b
        _sync(device)
        rates.append(5 * 2 * n**3 / (time.perf_counter() - start) / 1e12)
    return statistics.median(rates)


def forward_flops(batch: int) -> int:
    """FLOPs of one forward pass of the model on ``batch`` images (counted on the meta device)."""
    model = build_model(MODEL, NUM_CLASSES, CHANNELS, IMAGE_SIZE).to("meta")
    x = torch.empty(batch, CHANNELS, IMAGE_SIZE, IMAGE_SIZE, device="meta")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return counter.get_total_flops()


def compute_floor(
    device: torch.device, batch: int, sam_images_per_s: float | None
) -> dict[str, float | None]:
    """Compute-bound images/s of SAM (bf16 matmul rate / FLOPs per image per SAM step)."""
    per_image = 2 * 3 * forward_flops(batch) / batch  # SAM: two passes of ~3x forward each
    floor: dict[str, float | None] = {
        "forward_flops_per_image": per_image / 6,
        "sam_step_flops_per_image": per_image,
        "matmul_tflops": None,
        "floor_images_per_s": None,
        "sharpcal_sam_percent_of_floor": None,
    }
    if device.type != "cuda":
        return floor
    rate = matmul_tflops(device)
    floor["matmul_tflops"] = rate
    floor["floor_images_per_s"] = rate * 1e12 / per_image
    if sam_images_per_s is not None:
        floor["sharpcal_sam_percent_of_floor"] = (
            100 * sam_images_per_s / floor["floor_images_per_s"]
        )
    return floor


# ----------------------------------------------------------------------------- report


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"


def print_report(
    results: dict[str, dict[str, Any]], floor: dict[str, float | None], args: argparse.Namespace
) -> None:
    device = torch.device(args.device)
    target = 3.0 if device.type == "cuda" else 1.0
    print(
        f"throughput: {MODEL}, batch {args.batch}, {args.repeats} interleaved blocks of "
        f"{args.steps} steps per path after {args.warmup} warm-up, {args.workers} loader "
        f"workers, compile={args.compile}, {device_name(device)}"
    )
    print(
        f"  {'method':>6}  {'reference img/s':>15}  {'sharpcal img/s':>14}  {'ratio':>6}"
        f"  {'per-block range':>15}"
    )
    for method, r in results.items():
        print(
            f"  {method:>6}  {r['reference_images_per_s']:15.1f}  "
            f"{r['sharpcal_images_per_s']:14.1f}  {r['ratio']:6.2f}"
            f"  {r['ratio_min']:7.2f}-{r['ratio_max']:.2f}"
        )
    print(f"  img/s: median over blocks; ratio = sharpcal / reference (target >= {target:g})")
    if floor["floor_images_per_s"] is None:
        print("  compute floor: n/a (CUDA only)")
        return
    percent = floor["sharpcal_sam_percent_of_floor"]
    shown = "n/a (sam not measured)" if percent is None else f"{percent:.1f}% (target >= 25%)"
    print(
        f"  compute floor: {floor['matmul_tflops']:.0f} TFLOP/s bf16 matmul / "
        f"{floor['sam_step_flops_per_image'] / 1e9:.2f} GFLOP per image per SAM step = "
        f"{floor['floor_images_per_s']:.0f} img/s; sharpcal SAM at {shown}"
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=None, help="128 on CUDA, 32 on CPU")
    parser.add_argument("--steps", type=int, default=None, help="per block; 50 on CUDA, 10 on CPU")
    parser.add_argument(
        "--repeats", type=int, default=None, help="interleaved blocks per path; 3 CUDA, 5 CPU"
    )
    parser.add_argument("--warmup", type=int, default=None, help="10 on CUDA, 3 on CPU")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset")
    parser.add_argument("--workers", type=int, default=2, help="reference DataLoader workers")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--json", default="bench/out/throughput.json")
    args = parser.parse_args()
    on_cuda = torch.device(args.device).type == "cuda"
    args.batch = args.batch or (128 if on_cuda else 32)
    args.steps = args.steps or (50 if on_cuda else 10)
    args.repeats = args.repeats or (3 if on_cuda else 5)
    args.warmup = args.warmup if args.warmup is not None else (10 if on_cuda else 3)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown or not args.methods:
        parser.error(f"--methods: choose from {', '.join(METHODS)} (got {args.methods})")
    return args


def write_json(
    path: Path,
    results: dict[str, dict[str, Any]],
    floor: dict[str, float | None] | None,
    args: argparse.Namespace,
    images: int,
) -> None:
    """The report so far (rewritten after each method, so a time limit keeps what finished)."""
    device = torch.device(args.device)
    settings = dict(
        model=MODEL,
        device=args.device,
        batch=args.batch,
        steps=args.steps,
        repeats=args.repeats,
        warmup=args.warmup,
        workers=args.workers,
        compile=args.compile,
        methods=args.methods,
        images=images,
        torch=torch.__version__,
        threads=torch.get_num_threads(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    report = dict(device=device_name(device), settings=settings, results=results, floor=floor)
    path.write_text(json.dumps(report, indent=2))


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    out = Path(args.json)
    # One epoch covers warm-up and timed steps: no epoch boundary (or partial batch) is timed.
    size = (args.warmup + args.repeats * args.steps + 1) * args.batch
    images = training_images(size)
    results: dict[str, dict[str, Any]] = {}
    for method in args.methods:
        results[method] = measure_method(method, args, size, images)
        r = results[method]
        print(f"  {method}: sharpcal/reference {r['ratio']:.2f}", flush=True)
        write_json(out, results, None, args, size)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    sam_rate = results["sam"]["sharpcal_images_per_s"] if "sam" in results else None
    floor = compute_floor(device, args.batch, sam_rate)
    print_report(results, floor, args)
    write_json(out, results, floor, args, size)


if __name__ == "__main__":
    main()
