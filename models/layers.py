"""Layers shared by several model families."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["DropPath"]


class DropPath(nn.Module):
    """Stochastic depth: zero a whole sample's residual branch with probability ``p`` in training and
    scale the rest by 1/(1-p); identity in eval mode (Huang et al., "Deep networks with stochastic
    depth", ECCV 2016). STGNet and IENet's video Swin use it (timm is not a dependency).

    Parameters
    ----------
    p : float
        Drop probability in [0, 1).
    """

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = x.new_empty(shape).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"
