"""MIMO (issue 26, item 1): shapes, the heads' averaged softmax at evaluation, the authors' batch
construction, one training step against a hand computation, and resume."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from trainables.losses.common import cross_entropy
from trainables.models.mimo import Mimo, mimo_batch, mimo_indices, mimo_loss
from trainables.models.zoo import build_model


def _linear_mimo(weight: torch.Tensor) -> Mimo:
    """Two members, two classes, one 1x1 gray pixel: a bias-free linear backbone."""
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(2, 4, bias=False))
    with torch.no_grad():
        backbone[1].weight.copy_(weight)
    return Mimo(backbone, 2)


@pytest.mark.parametrize("name", ["cnn", "timm:resnet18"])
def test_a_mimo_model_has_m_input_stacks_and_m_heads(name):
    model = build_model(name, 10, 1, 28, mimo=2)
    train = model(torch.randn(3, 2, 1, 28, 28))
    assert train.shape == (3, 2, 10)
    model.eval()
    out = model(torch.randn(4, 1, 28, 28))
    assert out.shape == (4, 10)
    assert torch.allclose(out.logsumexp(dim=1), torch.zeros(4), atol=1e-5)  # log-probabilities
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert convs[0].in_channels == 2 and linears[-1].out_features == 20


def test_evaluation_averages_the_heads_softmax_of_one_repeated_image():
    x = torch.full((1, 1, 1, 1), math.log(3.0))
    # head 0 = [x, 0] (channel 0 into class 0), head 1 = [0, x] (channel 1 into class 1)
    weight = torch.tensor([[1.0, 0], [0, 0], [0, 0], [0, 1]])
    model = _linear_mimo(weight).eval()
    assert model(x).exp()[0].tolist() == pytest.approx([0.5, 0.5])  # [3/4,1/4], [1/4,3/4]
    weight[3] = 0  # head 1 = [1/2, 1/2]
    model = _linear_mimo(weight).eval()
    assert model(x).exp()[0].tolist() == pytest.approx([5 / 8, 3 / 8])


def test_batches_repeat_each_image_and_share_the_last_rows_across_members():
    g = torch.Generator().manual_seed(0)
    idx = mimo_indices(4, 3, 2, 0.0, g)
    assert idx.shape == (3, 8)
    for row in idx:
        assert sorted(row.tolist()) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert not (idx[0] == idx[1]).all() or not (idx[1] == idx[2]).all()
    half = mimo_indices(4, 3, 2, 0.5, torch.Generator().manual_seed(1))
    assert (half[:, 4:] == half[0, 4:]).all()  # S = 8 * 0.5 = 4 shuffled rows, 4 shared
    shared = mimo_indices(4, 3, 2, 0.6, torch.Generator().manual_seed(1))
    assert (shared[:, 3:] == shared[0, 3:]).all()  # S = int(8 * 0.4) = 3
    same = mimo_indices(4, 3, 2, 1.0, torch.Generator().manual_seed(2))
    assert (same == same[0]).all()
    again = mimo_indices(4, 3, 2, 0.0, torch.Generator().manual_seed(0))
    assert torch.equal(idx, again)
    x, y = torch.arange(4.0).view(4, 1, 1, 1), torch.tensor([7, 8, 9, 10])
    xs, ys = mimo_batch(x, y, idx)
    assert xs.shape == (8, 3, 1, 1, 1) and ys.shape == (8, 3)
    assert torch.equal(ys[:, 1], y[idx[1]]) and torch.equal(xs[:, 2, 0, 0, 0], x[idx[2], 0, 0, 0])


def test_the_loss_is_the_sum_over_heads_of_each_heads_mean():
    logits, labels = torch.randn(6, 3, 5), torch.randint(0, 5, (6, 3))
    expected = sum(cross_entropy(logits[:, m], labels[:, m]) for m in range(3))
    assert mimo_loss(cross_entropy)(logits, labels).item() == pytest.approx(expected.item())


def test_one_sgd_step_equals_the_hand_computation():
    model = _linear_mimo(torch.zeros(4, 2))
    x, y = torch.tensor([1.0, 2.0]).view(2, 1, 1, 1), torch.tensor([0, 1])
    xs, ys = mimo_batch(x, y, torch.tensor([[0, 1], [1, 0]]))  # rows [1, 2] (0, 1), [2, 1] (1, 0)
    loss = mimo_loss(cross_entropy)(model(xs), ys)
    assert loss.item() == pytest.approx(2 * math.log(2))
    loss.backward()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    optimizer.step()
    expected = torch.tensor([[-0.025, 0.025], [0.025, -0.025], [0.025, -0.025], [-0.025, 0.025]])
    assert torch.allclose(model.backbone[1].weight, expected)
