"""The worked example of the manual's "Extending sharpcal" page: one plugin module, outside
sharpcal, that adds one part of six kinds. A space file names it (``plugins:
[./sharpcal_example.py]``); the driver imports it before it checks the space, and every Ray worker
imports it (the file travels with the job's runtime environment) before a trial reads its
settings.

- a dataset: images from a folder of ``.npy`` arrays (``example_npy``);
- a model: a plain ``nn.Module`` (``example_mlp``);
- a method: a SAM variant with its own step (``mixsam``: the descent gradient mixes the
  perturbed and the plain gradient) and its own setting ``mix``;
- a calibration metric usable as an objective (``rmsce``: root-mean-square calibration error);
- a post-hoc calibrator (``uniform_mix``: probabilities mixed with the uniform distribution);
- a report section (``rmsce_by_trial``: the metric of every finished trial).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from pydantic import BaseModel, Field  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from study.analysis.calibrators import (  # noqa: E402
    Calibrated,
    Calibrator,
    log_probs,
    register_calibrator,
)
from study.report.sections import Section, register_section  # noqa: E402
from study.report.view import StudyView  # noqa: E402
from trainables.data import Arrays, Dataset, DatasetInfo, register_dataset  # noqa: E402
from trainables.methods import Method, register_method  # noqa: E402
from trainables.methods.base import StepContext  # noqa: E402
from trainables.methods.optim import base_optimizer, factors_undecayed, sam_param_groups  # noqa: E402
from trainables.methods.sam import SAM  # noqa: E402
from trainables.metrics import Metric, register_metric  # noqa: E402
from trainables.models import register_model  # noqa: E402


# --- a dataset: a folder of .npy arrays ------------------------------------------------------
@register_dataset("example_npy")
class NpyFolder(Dataset):
    """8x8 grey images and their labels as four ``.npy`` files in ``data_root``."""

    title = "NumPy folder"
    description = "images (N, 1, 8, 8) uint8 and labels (N,) from train_x/y.npy and test_x/y.npy"
    info = DatasetInfo("example_npy", 10, 1, 8, (0.5,), (0.25,))
    files = ("train_x.npy", "train_y.npy", "test_x.npy", "test_y.npy")
    how_to_get = "pass data_root=DIR holding train_x.npy, train_y.npy, test_x.npy, test_y.npy"
    flip = False

    def read(self, root: str | None, seed: int, synthetic_size: int | None) -> Arrays:
        folder = self.locate(root)
        return Arrays(*(np.load(Path(folder) / name) for name in self.files))


# --- a model: any nn.Module -------------------------------------------------------------------
@register_model("example_mlp")
class TinyMlp(nn.Module):
    """Two fully connected layers; sharpcal passes the arguments its constructor names."""

    def __init__(self, num_classes: int, in_channels: int = 1, image_size: int = 8) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(in_channels * image_size**2, 64), nn.ReLU(),
            nn.Linear(64, num_classes),
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


# --- a method: a SAM variant with its own step --------------------------------------------------
class MixSamSettings(BaseModel):
    """``mix``: the weight of the plain gradient in the descent step (0: SAM)."""

    mix: float = Field(
        0.5, ge=0.0, le=1.0, description="MixSAM: the plain gradient's weight in the descent step"
    )


@register_method("mixsam")
class MixSam(Method):
    """SAM whose descent gradient is ``(1 - mix) g(w + e) + mix g(w)``."""

    title = "MixSAM"
    description = "SAM descending along a mix of the perturbed and the plain gradient"
    reference = "the manual's worked example"
    settings = MixSamSettings

    def build_optimizer(self, cfg, model: nn.Module, n_train: int) -> torch.optim.Optimizer:
        base_cls, kwargs = base_optimizer(cfg)
        groups = sam_param_groups(model, False, cfg.asam_scale)
        return SAM(factors_undecayed(groups, model), base_cls, rho=cfg.rho, eta=cfg.eta, **kwargs)

    def step(self, ctx: StepContext, x: Tensor, y: Tensor) -> Tensor:
        optimizer = ctx.optimizer
        mix = self.options(ctx.cfg).mix
        with ctx.ascent_sync():
            with ctx.autocast():
                loss = ctx.ascent_loss(ctx.forward(x), y)
            loss.backward()
        params = [p for group in optimizer.param_groups for p in group["params"]]
        plain = [None if p.grad is None else p.grad.detach().clone() for p in params]
        optimizer.first_step()
        ctx.perturbed_backward(x, y)
        with torch.no_grad():
            for p, g in zip(params, plain, strict=True):
                if g is not None and p.grad is not None:
                    p.grad.mul_(1.0 - mix).add_(g, alpha=mix)
        optimizer.second_step(zero_grad=True)
        return loss.detach()

    def label_keys(self) -> tuple[str, ...]:
        return ("rho", "mix")


# --- a calibration metric, usable as an objective ---------------------------------------------
@register_metric("rmsce")
class RmsCalibrationError(Metric):
    """Root-mean-square calibration error over 15 equal-width confidence bins."""

    title = "RMSCE"
    long_title = "root-mean-square calibration error"
    description = "sqrt of the bin-weighted mean squared gap between confidence and accuracy"
    reference = "Hendrycks et al. 2019 (RMS calibration error)"
    role = "calibration"
    diverged = 1.0

    def compute(self, probs: Tensor, labels: Tensor) -> Tensor:
        confidence, predicted = probs.double().max(dim=1)
        correct = (predicted == labels).double()
        bins = torch.clamp((confidence * 15).long(), max=14)
        total = torch.zeros((), dtype=torch.float64)
        for b in bins.unique():
            inside = bins == b
            gap = confidence[inside].mean() - correct[inside].mean()
            total = total + inside.double().mean() * gap**2
        return total.sqrt()


# --- a post-hoc calibrator ----------------------------------------------------------------------
@register_calibrator("uniform_mix")
class UniformMix(Calibrator):
    """``(1 - a) p + a / C``, ``a`` picked on a grid by the val NLL."""

    title = "mix with uniform"
    short = "UMix"
    description = "mixes the probabilities with the uniform distribution (one parameter)"

    def parameters(self, classes: int) -> int:
        return 1

    def fit(self, probs: np.ndarray, labels: np.ndarray) -> None:
        rows = np.arange(len(labels))
        grid = np.linspace(0.0, 0.9, 91)
        nll = [-log_probs(self._mix(probs, a))[rows, labels].mean() for a in grid]
        self.alpha = float(grid[int(np.argmin(nll))])

    def _mix(self, probs: np.ndarray, alpha: float) -> np.ndarray:
        return (1.0 - alpha) * probs + alpha / probs.shape[1]

    def transform(self, probs: np.ndarray) -> Calibrated:
        return Calibrated(self._mix(probs, self.alpha))


# --- a report section ---------------------------------------------------------------------------
@register_section("rmsce_by_trial")
def rmsce_by_trial(view: StudyView) -> Section:
    """Every finished trial's test RMSCE, as a table and a bar chart."""
    values = {t.number: t.user_attrs.get("test_rmsce") for t in view.completed}
    shown = {n: v for n, v in values.items() if v is not None}
    if not shown:
        return Section()
    rows = "\n".join(f"| {n} | {100 * v:.2f} |" for n, v in sorted(shown.items()))
    text = (
        f"## RMS calibration error\n\n| trial | test RMSCE (%) |\n|---|---|\n{rows}\n\n"
        "![test RMSCE of each trial](rmsce.png)\n"
    )
    fig, ax = plt.subplots(figsize=(4, 2.5))
    ax.bar([str(n) for n in shown], [100 * v for v in shown.values()])
    ax.set_xlabel("trial")
    ax.set_ylabel("test RMSCE (%)")
    return Section(text, {"rmsce.png": fig}, {"rmsce_by_trial": shown})
