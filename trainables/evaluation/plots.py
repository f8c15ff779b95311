"""Figures a trial draws: the reliability diagram, before and after temperature scaling."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from trainables.metrics import calibration  # noqa: E402


def reliability_axes(ax: plt.Axes, probs: torch.Tensor, labels: torch.Tensor, title: str) -> None:
    """Per-bin accuracy against confidence (bars, 15 equal-width bins) with the smooth
    reliability curve of Błasiok & Nakkiran over them, the diagonal, and ECE and smooth ECE in
    the title."""
    bins = calibration.reliability_bins(probs, labels)
    edges = bins.edges.cpu().numpy()
    width = edges[1:] - edges[:-1]
    acc = bins.accuracy.cpu().numpy()
    conf = bins.confidence.cpu().numpy()
    filled = bins.count.cpu().numpy() > 0
    ax.bar(
        edges[:-1][filled],
        acc[filled],
        width=width[filled],
        align="edge",
        alpha=0.7,
        edgecolor="black",
        label="accuracy",
    )
    ax.bar(
        edges[:-1][filled],
        (conf - acc)[filled],
        bottom=acc[filled],
        width=width[filled],
        align="edge",
        alpha=0.3,
        color="red",
        label="gap",
    )
    mesh, curve = calibration.smooth_reliability(probs, labels)
    ax.plot(mesh, curve, color="tab:orange", linewidth=2, label="smooth")
    ax.plot([0, 1], [0, 1], "k--", linewidth=1)
    ece = calibration.ece(probs, labels).item()
    smece = calibration.smooth_ece(probs, labels)
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1),
        xlabel="confidence",
        ylabel="accuracy",
        title=f"{title}\nECE {100 * ece:.2f}%, smECE {100 * smece:.2f}%",
    )
    ax.legend(loc="upper left")


def reliability_png(
    logits: torch.Tensor, labels: torch.Tensor, temperature: float, title: str = "test"
) -> bytes:
    """PNG bytes of two reliability diagrams: raw and after temperature scaling."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2))
    logits = logits.float()
    reliability_axes(axes[0], logits.softmax(1), labels, title)
    reliability_axes(
        axes[1], (logits / temperature).softmax(1), labels, f"{title}, T={temperature:.2f}"
    )
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()
