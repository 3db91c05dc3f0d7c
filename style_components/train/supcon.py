"""Supervised contrastive loss (Khosla et al. 2020, "L_out": the mean over positives outside the log)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def supcon_loss(features: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """features [N, V, D] (V views of N samples, any scale: they are L2-normalised here), labels [N].

    Every one of the N*V views is an anchor; its positives are all other views with the same
    label (its own other views included), its contrast set every other view:

        L = mean over anchors i with positives of  -1/|P(i)| * sum_{p in P(i)} log softmax_{a != i}(z_i.z_a / T)[p]

    Anchors without any positive are left out of the mean.
    """
    if features.ndim != 3:
        raise ValueError(f"features must be [N, views, D], got {list(features.shape)}")
    n, v, _ = features.shape
    z = F.normalize(features.float(), dim=-1).reshape(n * v, -1)        # view-major within sample
    y = labels.to(features.device).repeat_interleave(v)
    logits = z @ z.T / temperature
    self_mask = torch.eye(n * v, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positives = (y[:, None] == y[None, :]) & ~self_mask
    count = positives.sum(1)
    has = count > 0
    if not bool(has.any()):
        return features.sum() * 0.0
    per_anchor = -(log_prob.masked_fill(~positives, 0.0).sum(1)[has]) / count[has]
    return per_anchor.mean()
