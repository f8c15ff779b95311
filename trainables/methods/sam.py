"""Sharpness-aware minimization (SAM, Foret et al. 2021) and its adaptive form (ASAM, Kwon et al. 2021).

One SAM step for a batch loss L and radius rho:

1. ``first_step``: e = rho * g / ||g||  (ASAM: e = rho * T^2 g / ||T g||, T = |w| + eta), w <- w + e.
2. the caller computes the descent loss at the perturbed weights and calls ``backward``.
3. ``second_step``: w is restored to its saved value (only the parameters this step's ``first_step``
   perturbed), then the base optimizer steps with that gradient.

Design choices, each fixing a known fault of the popular single-file SAM:

- weights are restored with in-place ``copy_`` (never by rebinding ``p.data``), so fused/foreach base
  optimizers, ``torch.compile`` and anything holding a reference to the parameter keep working;
- the perturbation is built in place in the gradient buffers, which are then released (set to
  None: the second backward pass writes fresh gradients instead of adding into zeroed ones), so SAM
  needs exactly one extra copy of the parameters: the saved weights;
- norms are computed with ``torch._foreach_norm`` per device and only the per-device scalars meet on
  one device, and no step syncs with the host;
- AMP: use bf16 autocast (no gradient scaler needed). With fp16 and a ``GradScaler``, unscale before
  ``first_step``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn

ParamsT = Iterable[torch.Tensor] | Iterable[dict[str, Any]]


class SAM(torch.optim.Optimizer):
    """Wraps a base optimizer with a sharpness-aware ascent step.

    Args:
        params: parameters or parameter groups (ignored when ``base_optimizer`` is an instance, whose
            groups are used).
        base_optimizer: a ``torch.optim.Optimizer`` subclass (built here with ``**kwargs``) or an
            already-built instance.
        rho: perturbation radius, > 0. May be overridden per parameter group.
        adaptive: ASAM's scale-invariant perturbation.
        eta: ASAM's offset in T = |w| + eta, >= 0.
    """

    def __init__(
        self,
        params: ParamsT | None,
        base_optimizer: type[torch.optim.Optimizer] | torch.optim.Optimizer,
        rho: float = 0.05,
        adaptive: bool = False,
        eta: float = 0.01,
        **kwargs: Any,
    ) -> None:
        if not rho > 0:
            raise ValueError(f"SAM: rho must be > 0, got {rho}")
        if not eta >= 0:
            raise ValueError(f"SAM: eta must be >= 0, got {eta}")
        if isinstance(base_optimizer, torch.optim.Optimizer):
            if kwargs:
                raise ValueError("SAM: kwargs are only for a base optimizer class, not an instance")
            self.base_optimizer = base_optimizer
        elif isinstance(base_optimizer, type) and issubclass(base_optimizer, torch.optim.Optimizer):
            if params is None:
                raise ValueError("SAM: params are required when base_optimizer is a class")
            self.base_optimizer = base_optimizer(params, **kwargs)
        else:
            raise TypeError(
                f"SAM: base_optimizer must be an Optimizer class or instance, got {base_optimizer!r}"
            )
        defaults = dict(rho=rho, adaptive=adaptive, eta=eta)
        super().__init__(self.base_optimizer.param_groups, defaults)
        # What the last first_step moved, with the saved weights: what second_step restores.
        self._perturbed: list[tuple[list[torch.Tensor], list[torch.Tensor]]] = []
        # One list of groups shared with the base optimizer: LR schedulers acting on SAM act on both.
        self.param_groups = self.base_optimizer.param_groups
        for group in self.param_groups:
            for key, value in defaults.items():
                group.setdefault(key, value)
            if not group["rho"] > 0:
                raise ValueError(f"SAM: rho must be > 0, got {group['rho']}")

    def _params_with_grad(self, group: dict[str, Any]) -> list[torch.Tensor]:
        return [p for p in group["params"] if p.grad is not None]

    @torch.no_grad()
    def _grad_norm(self) -> torch.Tensor:
        """Global L2 norm of the (ASAM: T-scaled) gradient over every group, on the first device."""
        per_device: dict[torch.device, list[torch.Tensor]] = {}
        for group in self.param_groups:
            params = self._params_with_grad(group)
            if not params:
                continue
            grads = [p.grad for p in params]
            if group["adaptive"]:
                scale = torch._foreach_abs(params)
                torch._foreach_add_(scale, group["eta"])
                grads = torch._foreach_mul(scale, grads)
            for g in grads:
                per_device.setdefault(g.device, []).append(g)
        if not per_device:
            raise RuntimeError("SAM.first_step: no parameter has a gradient; call backward() first")
        devices = list(per_device)
        partial = [
            torch.linalg.vector_norm(
                torch.stack(torch._foreach_norm(tensors)).to(_norm_dtype(tensors[0].dtype))
            )
            for tensors in per_device.values()
        ]
        return torch.linalg.vector_norm(torch.stack([n.to(devices[0]) for n in partial]))

    @torch.no_grad()
    def first_step(self, zero_grad: bool = True) -> None:
        """Save the weights and move them to w + e, the ascent point.

        The perturbation is built inside the gradient buffers, so they are always released
        afterwards (``grad`` None, ready for the backward pass at w + e); ``zero_grad`` is accepted
        for compatibility with the usual SAM API and ``False`` changes nothing.
        """
        norm = self._grad_norm()
        self._perturbed = []
        for group in self.param_groups:
            params = self._params_with_grad(group)
            if not params:
                continue
            saved = [self.state[p].get("saved") for p in params]
            if any(s is None for s in saved):
                saved = [torch.empty_like(p) for p in params]
                for p, s in zip(params, saved):
                    self.state[p]["saved"] = s
            torch._foreach_copy_(saved, params)
            self._perturbed.append((params, saved))
            grads = [p.grad for p in params]
            if group["adaptive"]:
                scale = torch._foreach_abs(params)
                torch._foreach_add_(scale, group["eta"])
                torch._foreach_mul_(scale, scale)
                torch._foreach_mul_(grads, scale)
                del scale
            factor = group["rho"] / norm.clamp_min(1e-12)
            torch._foreach_mul_(grads, [factor.to(g.device) for g in grads])
            torch._foreach_add_(params, grads)
            for p in params:  # released, not zeroed: backward then writes instead of adding
                p.grad = None

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Restore the weights the last ``first_step`` perturbed (only those: a parameter it
        skipped, having no gradient then, keeps its value), then step the base optimizer with the
        ascent-point gradient."""
        for params, saved in self._perturbed:
            torch._foreach_copy_(params, saved)
        self._perturbed = []
        self.base_optimizer.step()
        # LR schedulers watch SAM.step to warn about a wrong call order; second_step is that step.
        self._opt_called = True
        if zero_grad:
            self.zero_grad(set_to_none=True)

    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor:  # type: ignore[override]
        """One full SAM step. ``closure`` must zero nothing, run forward + backward and return the
        loss; it is called once, at the perturbed weights (the first gradient must already exist)."""
        if closure is None:
            raise ValueError("SAM.step needs a closure that recomputes the loss and its gradient")
        self.first_step(zero_grad=True)
        with torch.enable_grad():
            loss = closure()
        self.second_step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base_optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state plus SAM's per-group settings (saved weights are transient)."""
        state = self.base_optimizer.state_dict()
        return {"base": state}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.base_optimizer.load_state_dict(state_dict["base"])
        self.param_groups = self.base_optimizer.param_groups
        for group in self.param_groups:
            for key, value in self.defaults.items():
                group.setdefault(key, value)


def _norm_dtype(dtype: torch.dtype) -> torch.dtype:
    """Norms are summed in at least float32 (bf16/fp16 gradients would lose the global norm)."""
    return torch.promote_types(dtype, torch.float32)


@contextlib.contextmanager
def frozen_batchnorm_stats(model: nn.Module) -> Iterator[None]:
    """Keep BatchNorm running statistics unchanged inside the block (the perturbed forward pass).

    Batch statistics are still used for normalisation in train mode; only the running buffers and
    ``num_batches_tracked`` are put back afterwards, also when the block raises. Put the backward
    pass inside the block too: autograd saved the buffers' versions and refuses an earlier restore.
    """
    saved: list[tuple[torch.Tensor, torch.Tensor]] = []
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._NormBase) and module.track_running_stats:
            for buf in (module.running_mean, module.running_var, module.num_batches_tracked):
                if buf is not None:
                    saved.append((buf, buf.detach().clone()))
    try:
        yield
    finally:
        with torch.no_grad():
            for buf, value in saved:
                buf.copy_(value)
