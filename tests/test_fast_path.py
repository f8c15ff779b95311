"""The fast path (``torch.compile`` + channels_last, and bf16 on CUDA) trains like the plain path.

Loss curves are compared step by step on the same batches from the same seed. Two data choices
matter for an exact comparison, and both are made here on purpose:

- Max-pool ties. On sklearn's digits, background (0) and saturated (255) pixels give identical
  3x3 patches, so max-pool windows hold exact ties; contiguous and channels_last kernels route the
  gradient to different members of a tie. Both are valid subgradients, but the curves part by
  about 1e-2 within 30 SAM steps. The CPU tests therefore train on *dithered* digits: pixels
  scaled to 0..223 plus seeded uniform noise 0..31 (no clipping, no exact ties).
- A learnable task, so that CSAM's descent loss leaves its ``p <= 1/2`` branch (on random labels
  it stays there and CSAM equals SAM, which would test nothing).
"""

from __future__ import annotations

import copy
import importlib.util
import itertools
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch

from trainables.config import TrainConfig, parse_config
from trainables.data.datasets import Data, DatasetInfo, InMemoryData
from trainables.engine.loop import Trainer

CPU_STEPS = 40
CPU_BATCH = 32
# fp32: compile fuses and reorders reductions (BatchNorm sums, convolution accumulation), and
# channels_last changes the kernels' summation order. Each step then differs by a few ulps
# (~1e-7 relative); over 40 steps on this task the curves stay within 1e-6 (measured: at most
# 8e-7). 1e-5 leaves a 10x margin, and is 100x below what a real fault moves (SAM's ascent
# alone changes the second loss by 1e-3 relative: asserted below).
CPU_RTOL = 1e-5
DIGITS_INFO = DatasetInfo("digits", 10, 1, 8, (0.3053,), (0.3759,))

GPU_STEPS = 50
GPU_BATCH = 128
# bf16 keeps 8 significant bits (relative rounding 2**-9 ~ 0.2%) and autocast rounds every
# convolution's inputs and outputs; the loss itself is taken from float32 log-softmax. Measured
# with bf16 autocast + channels_last on the CPU on this very task (cnn, 50 steps, batch 128), the
# curves stayed within 0.22% (sgd), 0.14% (sam) and 0.11% (csam) of fp32. cuDNN's bf16 kernels
# and inductor's fusions sum in other orders, so 3% relative (+0.01 absolute) leaves a 10x
# margin while still telling the methods apart (SGD's and SAM's fp32 curves end 9% apart).
GPU_RTOL, GPU_ATOL = 0.03, 0.01


def _has_cpp_compiler() -> bool:
    return shutil.which("g++") is not None or shutil.which("c++") is not None


needs_compiler = pytest.mark.skipif(
    not _has_cpp_compiler(), reason="torch.compile (inductor) on CPU needs a C++ compiler"
)


def dithered_digits(n: int = 512, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` digits as uint8 [n, 1, 8, 8] with seeded noise that breaks pixel ties."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    x = np.round(digits.images[:n] * (223.0 / 16.0)).astype(np.int64)[:, None]
    x = (x + rng.integers(0, 32, x.shape)).astype(np.uint8)  # at most 223 + 31 = 254
    return torch.from_numpy(x), torch.from_numpy(digits.target[:n].astype(np.int64))


def cifar_like(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-shaped uint8 [n, 3, 32, 32] images that can be learnt: a fixed random pattern per
    class (10 classes) plus as much uniform noise."""
    g = torch.Generator().manual_seed(seed)
    prototypes = torch.randint(0, 128, (10, 3, 32, 32), generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    x = prototypes[y] + torch.randint(0, 128, (n, 3, 32, 32), generator=g)
    return x.to(torch.uint8), y


def in_memory(
    info: DatasetInfo, x: torch.Tensor, y: torch.Tensor, device: torch.device, channels_last: bool
) -> Data:
    """All of ``x, y`` as the training split (val empty, a small test split)."""
    splits = {"train": (x, y), "val": (x[:0], y[:0]), "test": (x[:64], y[:64])}
    return InMemoryData(info, splits, flip=False, device=device, channels_last=channels_last)


def loss_curve(cfg: TrainConfig, data: Data, steps: int) -> tuple[torch.Tensor, Trainer]:
    """The clean-weights training loss of ``steps`` steps (float64 on the CPU), and the trainer."""
    trainer = Trainer(cfg, data=data)
    trainer.model.train()
    epochs = (
        trainer.data.train_batches(cfg.batch_size, epoch_seed=e, augment=False)
        for e in itertools.count()
    )
    batches = itertools.chain.from_iterable(epochs)
    losses = [trainer.train_step(*next(batches)) for _ in range(steps)]
    return torch.stack(losses).double().cpu(), trainer


def run_settings(method: str, **settings: Any) -> dict[str, Any]:
    """The settings every curve here shares, for ``method``, plus ``settings``."""
    common = dict(model="cnn", rho=0.05, gamma=1.0, lr=0.05, train_subset=None, seed=0)
    return {**common, "method": method, **settings}


def cpu_config(method: str, fast: bool) -> TrainConfig:
    """A digits run on the CPU: the fast path (compile + channels_last) or the plain one."""
    return parse_config(
        run_settings(
            method,
            dataset="digits",
            batch_size=CPU_BATCH,
            device="cpu",
            bf16=False,
            compile=fast,
            channels_last=fast,
        )
    )


def cpu_curve(method: str, fast: bool) -> tuple[torch.Tensor, Trainer]:
    """The loss curve of ``cpu_config(method, fast)`` on dithered digits."""
    x, y = dithered_digits()
    data = in_memory(DIGITS_INFO, x, y, torch.device("cpu"), channels_last=fast)
    return loss_curve(cpu_config(method, fast), data, CPU_STEPS)


@pytest.fixture(scope="module")
def plain_curves() -> dict[str, torch.Tensor]:
    """Plain-path loss curves of the three methods (computed once for the module)."""
    return {m: cpu_curve(m, fast=False)[0] for m in ("sgd", "sam", "csam")}


def test_plain_curves_tell_the_methods_apart(plain_curves):
    """The tolerance below is meaningful: each method's curve leaves the others' by far more."""
    sgd, sam, csam = plain_curves["sgd"], plain_curves["sam"], plain_curves["csam"]
    assert sgd[0] == sam[0] == csam[0]  # same seed, same first batch, same weights
    assert (sgd - sam).abs().max() / sam.abs().max() > 100 * CPU_RTOL
    assert (csam - sam).abs().max() / sam.abs().max() > 100 * CPU_RTOL
    assert sam[-1] < 0.25 * sam[0]  # the task is learnt: CSAM's p > 1/2 branch is exercised


@pytest.mark.slow  # torch.compile
@needs_compiler
@pytest.mark.parametrize("method", ["sgd", "sam", "csam"])
def test_compiled_channels_last_path_matches_plain_path(method, plain_curves):
    from torch._dynamo.eval_frame import OptimizedModule
    from torch._dynamo.utils import counters

    torch._dynamo.reset()  # compile afresh (the on-disk caches keep it quick), count its graphs
    counters.clear()
    fast, trainer = cpu_curve(method, fast=True)
    assert isinstance(trainer.forward, OptimizedModule)
    assert counters["stats"]["unique_graphs"] >= 1, "nothing was compiled"
    assert not counters["graph_break"], f"graph breaks: {dict(counters['graph_break'])}"
    conv = [m for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not conv.weight.is_contiguous()

    plain = plain_curves[method]
    assert torch.isfinite(fast).all()
    torch.testing.assert_close(fast, plain, rtol=CPU_RTOL, atol=0.0)


def test_channels_last_is_the_default_on_the_cpu_too():
    """Issue 22 item 11: NHWC convolutions are the CPU's fast path (BENCHMARKS.md, throughput);
    a run that names no ``channels_last`` gets them, ``channels_last=False`` still turns them off."""
    default = Trainer(parse_config(run_settings("sgd", dataset="digits", device="cpu")))
    plain = Trainer(
        parse_config(run_settings("sgd", dataset="digits", device="cpu", channels_last=False))
    )
    for trainer, expected in ((default, True), (plain, False)):
        conv = [m for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d)][-1]
        assert trainer.channels_last is expected
        # digits have one channel, where both layouts of a batch are the same memory: the
        # last convolution's weight (many channels) tells them apart
        assert conv.weight.is_contiguous(memory_format=torch.channels_last) is expected
        assert conv.weight.is_contiguous() is not expected


# ----------------------------------------------------------------------------- reference SAM


def _throughput_bench() -> ModuleType:
    """bench/throughput.py, imported from its file (bench/ is not a package)."""
    path = Path(__file__).resolve().parents[1] / "bench" / "throughput.py"
    spec = importlib.util.spec_from_file_location("sharpcal_bench_throughput", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("method", ["sam", "csam"])
def test_sam_step_equals_the_benchmarks_reference_sam(method):
    """Three steps of sharpcal's SAM/CSAM equal the benchmark's per-parameter SAM in fp32.

    Same weights, batches and hyperparameters; the reference restores weights by rebinding
    ``p.data`` and zeroes BatchNorm momentum on the perturbed pass, sharpcal copies in place and
    restores the running statistics. Weights and running statistics must agree to fp32 rounding
    (the two compute the gradient norm in different orders); ``num_batches_tracked`` differs by
    design (the reference counts the perturbed pass too).
    """
    bench = _throughput_bench()
    x, y = dithered_digits()
    cfg = cpu_config(method, fast=False)
    trainer = Trainer(cfg, data=in_memory(DIGITS_INFO, x, y, torch.device("cpu"), False))
    initial = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    reference = copy.deepcopy(trainer.model)
    trainer.model.train()
    reference.train()
    reference_step = bench.reference_step(method, reference, cfg)
    batches = trainer.data.train_batches(CPU_BATCH, epoch_seed=0, augment=False)
    for xb, yb in itertools.islice(batches, 3):
        trainer.train_step(xb, yb)
        reference_step(xb, yb)
    ours, theirs = trainer.model.state_dict(), reference.state_dict()
    moved = 0
    for name, value in ours.items():
        if name.endswith("num_batches_tracked"):
            assert theirs[name] == 2 * value  # the reference's BatchNorm counts both passes
            continue
        torch.testing.assert_close(value, theirs[name], rtol=1e-5, atol=1e-6, msg=name)
        moved += int(not torch.equal(value, initial[name]))
    assert moved > 0


# ----------------------------------------------------------------------------- CUDA, bf16


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("method", ["sgd", "sam", "csam"])
def test_cuda_bf16_fast_path_stays_within_bf16_tolerance_of_fp32(method):
    """On CUDA the default path (bf16 autocast, channels_last, torch.compile) follows the fp32
    path (no autocast, contiguous, eager; TF32 as the process has it) over the first 50 steps
    of a CIFAR-shaped task, cnn model, same seed and batches."""
    device = torch.device("cuda")
    x, y = cifar_like(GPU_STEPS * GPU_BATCH // 2)  # two epochs
    info = DatasetInfo("synthetic", 10, 3, 32, (0.5,) * 3, (0.2898,) * 3)
    curves = {}
    for fast in (True, False):
        settings = run_settings(method, dataset="synthetic", batch_size=GPU_BATCH, device="cuda")
        if not fast:
            settings.update(bf16=False, channels_last=False, compile=False)
        cfg = parse_config(settings)
        data = in_memory(info, x, y, device, channels_last=fast)
        curve, trainer = loss_curve(cfg, data, GPU_STEPS)
        assert trainer.bf16 is fast and trainer.channels_last is fast
        curves[fast] = curve
    fp32, bf16 = curves[False], curves[True]
    assert torch.isfinite(bf16).all()
    assert fp32[-1] < 0.5 * fp32[0], "the task was not learnt: the comparison would be empty"
    torch.testing.assert_close(bf16, fp32, rtol=GPU_RTOL, atol=GPU_ATOL)
