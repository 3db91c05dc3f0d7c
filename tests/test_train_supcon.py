"""SupCon loss against a direct, loop-by-loop computation of Khosla et al.'s L_out."""

import math

import pytest
import torch

from style_components.train.supcon import supcon_loss


def direct_supcon(features, labels, temperature):
    n, v, _ = features.shape
    z = [features[i, j] / features[i, j].norm() for i in range(n) for j in range(v)]
    y = [int(labels[i]) for i in range(n) for _ in range(v)]
    total, anchors = 0.0, 0
    for i in range(len(z)):
        positives = [p for p in range(len(z)) if p != i and y[p] == y[i]]
        if not positives:
            continue
        denom = sum(math.exp(float(z[i] @ z[a]) / temperature) for a in range(len(z)) if a != i)
        total += -sum(math.log(math.exp(float(z[i] @ z[p]) / temperature) / denom) for p in positives) / len(positives)
        anchors += 1
    return total / anchors


@pytest.mark.parametrize("n,v,d,classes,t", [(6, 2, 5, 3, 0.1), (5, 3, 4, 2, 0.5), (7, 2, 8, 7, 1.0)])
def test_matches_direct_computation(n, v, d, classes, t):
    g = torch.Generator().manual_seed(n * 100 + v)
    features = torch.randn(n, v, d, generator=g, dtype=torch.float64) * 3
    labels = torch.randint(0, classes, (n,), generator=g)
    got = supcon_loss(features, labels, t)
    assert float(got) == pytest.approx(direct_supcon(features, labels, t), rel=1e-5)


def test_single_view_anchors_without_positives_are_left_out():
    features = torch.randn(4, 1, 3, dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 2])  # only samples 0 and 1 have a positive
    assert float(supcon_loss(features, labels, 0.2)) == pytest.approx(direct_supcon(features, labels, 0.2), rel=1e-6)


def test_gradient_flows_and_loss_is_lower_for_clustered_features():
    labels = torch.tensor([0, 0, 1, 1])
    clustered = torch.tensor([[1.0, 0], [1, 0.01], [0, 1], [0.01, 1]]).unsqueeze(1).repeat(1, 2, 1)
    mixed = torch.tensor([[1.0, 0], [0, 1], [1, 0.01], [0.01, 1]]).unsqueeze(1).repeat(1, 2, 1)
    assert supcon_loss(clustered, labels) < supcon_loss(mixed, labels)
    x = torch.randn(4, 2, 3, requires_grad=True)
    supcon_loss(x, labels).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_rejects_wrong_shape():
    with pytest.raises(ValueError):
        supcon_loss(torch.randn(4, 3), torch.zeros(4))
