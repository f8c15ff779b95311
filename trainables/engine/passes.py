"""Stochastic evaluation that does not depend on the batch: MC dropout's masks, a rank-1 BNN's
factors and bSAM's posterior samples, each pass a fixed network drawn from (run seed, pass).

Pass ``k`` of an evaluation is one sample of the network, shared by every image: each dropout
layer one mask over its features, each rank-1 factor one draw per member, bSAM one sample of the
weights. Every draw comes from its own CPU generator, seeded from the run's seed, ``k`` and the
draw's site (the layer's place in the model), so an image gets the same probabilities whatever
batch it is in, on whichever device, and the registry (``FrozenPasses``) can freeze the very
draws the trial evaluated into the model it serves.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn

from trainables.methods.bsam import BSAM
from trainables.metrics import calibration
from trainables.models.rank1 import Rank1Factor

PASS_SEED = 7_919  # evaluation's draws: from the run's seed, apart from training's
DROPOUT, FACTOR, WEIGHTS = 0, 1, 2  # the kinds of site a draw is seeded by
NOISE_CACHE_BYTES = 1 << 30  # bSAM's noise of every pass kept for an evaluation up to this size

MaskFn = Callable[[int, nn.Dropout, torch.Size], torch.Tensor]
FactorFn = Callable[[int, Rank1Factor], torch.Tensor]


def pass_generator(seed: int, index: int, kind: int, site: int) -> torch.Generator:
    """A CPU generator for draw ``site`` of ``kind`` in pass ``index`` of a run seeded ``seed``
    (NumPy's ``SeedSequence`` mixes the four into 64 bits)."""
    words = np.random.SeedSequence([PASS_SEED, seed, index, kind, site]).generate_state(2)
    generator = torch.Generator()
    generator.manual_seed(int(words[0]) << 32 | int(words[1]))
    return generator


def dropout_mask(rate: float, shape: Sequence[int], generator: torch.Generator) -> torch.Tensor:
    """A dropout mask over one image's features: 0 with probability ``rate``, else
    ``1 / (1 - rate)`` (float32, on the CPU)."""
    keep = torch.rand(tuple(shape), generator=generator) >= rate
    return keep.float() / (1 - rate)


def dropouts(model: nn.Module) -> list[nn.Dropout]:
    """The model's dropout layers, in ``modules()`` order (their sites)."""
    return [m for m in model.modules() if isinstance(m, nn.Dropout)]


def factors(model: nn.Module) -> list[Rank1Factor]:
    """The model's rank-1 factors, in ``modules()`` order (their sites)."""
    return [m for m in model.modules() if isinstance(m, Rank1Factor)]


def _masked(
    mask: MaskFn, site: int, module: nn.Module, inputs: Any, output: torch.Tensor
) -> torch.Tensor:
    return output * mask(site, module, output.shape[1:])  # type: ignore[arg-type]


@contextmanager
def fixed_draws(
    model: nn.Module, mask: MaskFn | None = None, factor: FactorFn | None = None
) -> Iterator[None]:
    """Inside the block (the model in eval mode) each dropout layer multiplies its output by
    ``mask(site, layer, feature_shape)``, one mask for the whole batch (none without ``mask``),
    and each rank-1 factor uses ``factor(site, factor)`` as its members' draws."""
    handles = []
    if mask is not None:
        for site, layer in enumerate(dropouts(model)):
            handles.append(layer.register_forward_hook(partial(_masked, mask, site)))
    found = factors(model) if factor is not None else []
    for site, module in enumerate(found):
        module.fixed = factor(site, module)  # type: ignore[misc]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        for module in found:
            module.fixed = None


class SeededPasses:
    """``passes`` stochastic passes of ``model`` (in eval mode): its dropout layers masked when
    ``mc_dropout``, its rank-1 factors drawn, its weights a sample of ``bsam``'s posterior; each
    pass seeded from ``seed`` and its index. Masks are kept for the object's life, and bSAM's
    noise when every pass's fits ``NOISE_CACHE_BYTES``: make one per evaluation."""

    def __init__(
        self,
        model: nn.Module,
        seed: int,
        passes: int,
        mc_dropout: bool = False,
        bsam: BSAM | None = None,
    ) -> None:
        self.model = model
        self.seed = seed
        self.passes = passes
        self.mc_dropout = mc_dropout
        self.bsam = bsam
        self._masks: dict[tuple[int, int, tuple[int, ...]], torch.Tensor] = {}
        self._noise: dict[int, list[torch.Tensor]] = {}
        params = sum(p.numel() for p in model.parameters()) if bsam is not None else 0
        self._keep_noise = params * passes * 4 <= NOISE_CACHE_BYTES

    def mask(self, index: int, site: int, layer: nn.Dropout, shape: Sequence[int]) -> torch.Tensor:
        """Pass ``index``'s mask of dropout layer ``site`` over features of ``shape`` (CPU
        float32)."""
        key = (index, site, tuple(shape))
        if key not in self._masks:
            generator = pass_generator(self.seed, index, DROPOUT, site)
            self._masks[key] = dropout_mask(layer.p, shape, generator)
        return self._masks[key]

    def factor(self, index: int, site: int, factor: Rank1Factor) -> torch.Tensor:
        """Pass ``index``'s draws ``[M, D]`` of rank-1 factor ``site`` (on its device)."""
        return factor.draw(pass_generator(self.seed, index, FACTOR, site))

    def noise(self, index: int) -> list[torch.Tensor]:
        """Pass ``index``'s standard normal noise of bSAM's parameters (on their devices)."""
        if index in self._noise:
            return self._noise[index]
        assert self.bsam is not None
        generator = pass_generator(self.seed, index, WEIGHTS, 0)
        noise = [torch.randn(p.shape, generator=generator).to(p.device) for p in self.bsam.params()]
        if self._keep_noise:
            self._noise[index] = noise
        return noise

    @contextmanager
    def drawn(self, index: int) -> Iterator[None]:
        """Inside the block ``model`` is pass ``index``'s network."""
        with ExitStack() as stack:
            mask: MaskFn | None = None
            if self.mc_dropout:

                def mask(site: int, layer: nn.Dropout, shape: torch.Size) -> torch.Tensor:
                    found = self.mask(index, site, layer, shape)
                    return found.to(self.device)

            stack.enter_context(
                fixed_draws(self.model, mask, lambda site, f: self.factor(index, site, f))
            )
            if self.bsam is not None:
                stack.enter_context(self.bsam.sampled_weights(self.noise(index)))
            yield

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def pass_probs(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """Float32 probabilities of pass ``index``."""
        with self.drawn(index):
            return self.model(x).float().softmax(dim=1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The log of the mean softmax of every pass: logits whose softmax is the average."""
        return calibration.log_mean_probs([self.pass_probs(x, k) for k in range(self.passes)])


class FrozenPasses(nn.Module):
    """The draws of ``SeededPasses`` frozen into buffers, for a model that is exported: each
    dropout layer's masks ``[passes, *features]`` (its feature shape read from ``example``), each
    rank-1 factor's draws ``[passes, M, D]``, and bSAM's sampled weights of each pass.
    ``pass_probs(model, x, k)`` equals ``SeededPasses.pass_probs(x, k)``."""

    def __init__(self, seeded: SeededPasses, example: torch.Tensor) -> None:
        super().__init__()
        model = seeded.model
        self.passes = seeded.passes
        shapes: dict[int, torch.Size] = {}
        if seeded.mc_dropout:

            def record(site: int, layer: nn.Dropout, shape: torch.Size) -> torch.Tensor:
                shapes[site] = shape
                return torch.ones(())

            with torch.no_grad(), fixed_draws(model, record):
                model(example)
        self.masked = seeded.mc_dropout
        for site, layer in enumerate(dropouts(model) if seeded.mc_dropout else []):
            masks = [seeded.mask(k, site, layer, shapes[site]) for k in range(self.passes)]
            self.register_buffer(f"mask_{site}", torch.stack(masks))
        with torch.no_grad():
            for site, factor in enumerate(factors(model)):
                draws = [seeded.factor(k, site, factor) for k in range(self.passes)]
                self.register_buffer(f"factor_{site}", torch.stack(draws).detach().clone())
        bsam = seeded.bsam
        self.names = [name for name, _ in model.named_parameters()] if bsam is not None else []
        for k in range(self.passes if bsam is not None else 0):
            with torch.no_grad(), bsam.sampled_weights(seeded.noise(k)):  # type: ignore[union-attr]
                for i, (_, p) in enumerate(model.named_parameters()):
                    self.register_buffer(f"weights_{k}_{i}", p.detach().clone())

    def _mask(self, index: int, site: int, layer: nn.Dropout, shape: torch.Size) -> torch.Tensor:
        return getattr(self, f"mask_{site}")[index]

    def _factor(self, index: int, site: int, factor: Rank1Factor) -> torch.Tensor:
        return getattr(self, f"factor_{site}")[index]

    def pass_probs(self, model: nn.Module, x: torch.Tensor, index: int) -> torch.Tensor:
        """Float32 probabilities of ``model`` as pass ``index``'s network."""
        mask = partial(self._mask, index) if self.masked else None
        with fixed_draws(model, mask, partial(self._factor, index)):
            if not self.names:
                return model(x).float().softmax(dim=1)
            weights = {n: getattr(self, f"weights_{index}_{i}") for i, n in enumerate(self.names)}
            return torch.func.functional_call(model, weights, (x,)).float().softmax(dim=1)
