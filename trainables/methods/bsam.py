"""bSAM (Möllenhoff and Khan, "SAM as an Optimal Relaxation of Bayes", ICLR 2023): SAM as a
variational Gaussian posterior N(w, 1 / (N s)) learned by natural-gradient steps.

One step, per parameter tensor and elementwise, as the authors' reference code
(team-approx-bayes/bayesian-sam, ``optim.build_bsam_optimizer``) takes it with one sub-batch::

    e  ~ N(0, 1 / (N s))                    noise: a sample of the posterior around w
    g  = grad L(w + e)                      (``perturb()`` after the first backward pass)
    g_eps = grad L(w + rho * g / s)         (``step()`` after the second one)
    m  = beta1 * m + (1 - beta1) * (g_eps + delta * w)
    w  = w - lr * m / s                     (with the s from before this step)
    s  = beta2 * s + (1 - beta2) * (sqrt(s) * |g| + damping + delta)

``delta`` is the prior precision over N (the weight decay), N the training set size times a data
factor (the reference's ``dafactor``). The predictive distribution is the mean softmax over
weight samples from N(w, 1 / (N s)) (``sampled_weights()``), as the reference's test does.
The reference splits each batch into several sub-batches (m-sharpness); here one batch is one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch


class BSAM(torch.optim.Optimizer):
    """bSAM over ``params``; call ``add_noise()``, backward, ``perturb()``, backward, ``step()``.

    Args:
        lr: the learning rate ``alpha`` (a scheduler may change it).
        beta1, beta2: the averaging of the gradient and of the precision ``s``.
        rho: the perturbation's scale, > 0.
        prior_precision: ``delta * N``; the weight decay is ``prior_precision / n_data``.
        n_data: N, the (effective) number of training samples.
        damping: added to the precision's update, stabilising it.
        s_init: the initial precision.
    """

    def __init__(
        self,
        params: object,
        lr: float,
        *,
        beta1: float = 0.9,
        beta2: float = 0.999,
        rho: float = 0.01,
        prior_precision: float = 10.0,
        n_data: float = 1.0,
        damping: float = 0.1,
        s_init: float = 1.0,
    ) -> None:
        if not rho > 0 or not n_data > 0 or not s_init > 0:
            raise ValueError(
                f"bSAM: rho, n_data and s_init must be > 0 ({rho}, {n_data}, {s_init})"
            )
        defaults = dict(
            lr=lr,
            beta1=beta1,
            beta2=beta2,
            rho=rho,
            wdecay=prior_precision / n_data,
            n_data=n_data,
            damping=damping,
            s_init=s_init,
        )
        super().__init__(params, defaults)  # type: ignore[arg-type]

    def _params(self) -> Iterator[tuple[dict, torch.Tensor, dict]]:
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                if not state:
                    state["s"] = torch.full_like(p, group["s_init"])
                    state["m"] = torch.zeros_like(p)
                yield group, p, state

    def params(self) -> list[torch.Tensor]:
        """The parameters, in the order ``sampled_weights`` takes its noise."""
        return [p for group in self.param_groups for p in group["params"]]

    @torch.no_grad()
    def _sample(self, noise: Sequence[torch.Tensor] | None = None) -> None:
        """Keep each mean ``w`` and move the parameter to ``w + e``, e ~ N(0, 1 / (N s)): the
        standard normal draws ``noise`` (one per parameter, ``params()`` order) scaled, or fresh
        ones from the global RNG."""
        for i, (group, p, state) in enumerate(self._params()):
            state["w"] = p.detach().clone()
            eps = torch.randn_like(p) if noise is None else noise[i]
            p.add_(eps * (group["n_data"] * state["s"]).rsqrt())

    @torch.no_grad()
    def _restore(self) -> None:
        for _, p, state in self._params():
            p.copy_(state.pop("w"))

    def add_noise(self) -> None:
        """Move the parameters to a sample of the posterior (before the first backward pass)."""
        self._sample()

    @torch.no_grad()
    def perturb(self) -> None:
        """From the noisy gradient ``g`` (in ``.grad``): move to ``w + rho * g / s``."""
        for group, p, state in self._params():
            g = p.grad if p.grad is not None else torch.zeros_like(p)
            state["g"] = g.clone()
            p.copy_(state["w"] + group["rho"] * g / state["s"])
            p.grad = None

    @torch.no_grad()
    def step(self, closure: None = None) -> None:  # type: ignore[override]
        """From the perturbed gradient (in ``.grad``): the mean, momentum and precision steps
        (``step``, so that learning-rate schedulers see it)."""
        for group, p, state in self._params():
            w, g, s = state.pop("w"), state.pop("g"), state["s"]
            g_eps = p.grad if p.grad is not None else torch.zeros_like(p)
            m = (
                state["m"]
                .mul_(group["beta1"])
                .add_(g_eps + group["wdecay"] * w, alpha=1 - group["beta1"])
            )
            p.copy_(w - group["lr"] * m / s)
            new_s = (s * g.square()).sqrt() + group["damping"] + group["wdecay"]
            s.mul_(group["beta2"]).add_(new_s, alpha=1 - group["beta2"])
            p.grad = None

    @contextmanager
    def sampled_weights(self, noise: Sequence[torch.Tensor] | None = None) -> Iterator[None]:
        """Inside the block the parameters are a sample of the posterior N(w, 1 / (N s)): drawn
        from the global RNG, or ``w + noise / sqrt(N s)`` for given standard normal ``noise``
        (one tensor per parameter, in ``params()`` order)."""
        self._sample(noise)
        try:
            yield
        finally:
            self._restore()
