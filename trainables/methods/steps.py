"""Ready-made training steps for a method's ``step``: plain gradient descent, SAM's two passes
and bSAM's noisy two passes. Each returns the loss at the weights it started from, detached."""

from __future__ import annotations

from torch import Tensor

from trainables.methods.base import StepContext
from trainables.methods.bsam import BSAM
from trainables.methods.sam import SAM


def sgd_step(ctx: StepContext, x: Tensor, y: Tensor) -> Tensor:
    """One pass: the descent loss's gradient, one optimizer step."""
    with ctx.autocast():
        loss = ctx.descent_loss(ctx.forward(x), y)
    loss.backward()
    ctx.optimizer.step()
    ctx.optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def sam_step(ctx: StepContext, x: Tensor, y: Tensor) -> Tensor:
    """SAM's step with a ``SAM`` optimizer: the ascent loss's gradient (inside
    ``ascent_sync``), ``first_step`` to the perturbed weights, the descent pass there,
    ``second_step`` back and down."""
    optimizer = ctx.optimizer
    if not isinstance(optimizer, SAM):
        raise TypeError(f"sam_step needs a SAM optimizer, got {type(optimizer).__name__}")
    with ctx.ascent_sync():
        with ctx.autocast():
            loss = ctx.ascent_loss(ctx.forward(x), y)
        loss.backward()
    optimizer.first_step()
    ctx.perturbed_backward(x, y)
    optimizer.second_step(zero_grad=True)
    return loss.detach()


def bsam_step(ctx: StepContext, x: Tensor, y: Tensor) -> Tensor:
    """bSAM's step with a ``BSAM`` optimizer: noise, the ascent pass at the noisy weights,
    the perturbation, the descent pass, the posterior's update."""
    optimizer = ctx.optimizer
    if not isinstance(optimizer, BSAM):
        raise TypeError(f"bsam_step needs a BSAM optimizer, got {type(optimizer).__name__}")
    optimizer.add_noise()
    with ctx.autocast():
        loss = ctx.ascent_loss(ctx.forward(x), y)
    loss.backward()
    optimizer.perturb()
    ctx.perturbed_backward(x, y)
    optimizer.step()
    return loss.detach()
