"""STGNet: spatio-temporal graph network for camera-based rPPG (BVP regression from face clips).

Implemented from the written specification of Xiong, Ou, Yao, Liu, Gao, Liu, Gou, "STGNet:
Spatio-temporal graph neural networks considering inherent properties of physiological signals
for camera-based remote photoplethysmography", Biomedical Signal Processing and Control 2024,
106690, doi:10.1016/j.bspc.2024.106690 (spec: ``design/models.md`` section 5; no code copied).

Pipeline: a clip ``[B, 3, 160, 64, 64]`` (RGB in [0, 1]) goes through

* the **stem** (diff block -> 6 channels, Conv3d stem blocks and two self-attention blocks)
  -> ``[B, 64, 40, 8, 8]``;
* the **spatio-temporal graph module**: 3 stages of ST-Graph-Denoise blocks (learnable
  positional embedding, dynamic KNN graph over *all* T*H*W nodes, average-relative graph conv,
  fc_1 / fc_2 with DropPath 0.25) each followed by an ROI-selection block -> ``[B, 64, 20, 4, 4]``;
* the **BVP head** (3 x ConvTranspose3d doubling T, pool, 1x1x1 conv) -> ``[B, 160]``.

Default configuration: 2,285,927 parameters = stem 284,198 + graph 1,951,936 + head 49,793
(860,160 of them learnable positional embeddings). Loss: :func:`neg_pearson_loss`.

Deviations / inferences (the release has model code only):

* **No training script** in the release: optimiser, learning rate, batch size, epochs and the
  HR post-processing are unknown; nothing here trains the model beyond what callers do.
* The config lists 4 graph stages but the reference builder loops over ``len - 1``, so **3
  stages** are built (``gnn_num`` 2/3/2, ``k`` 64/32/16); the 4th entries are unused and are
  kept in the defaults only to document that.
* The **attention-mask normalisation** sums over dims 2, 3 of the 5-D tensor, i.e. over **T and
  H** (a port of the 2-D DeepPhys mask, where dims 2, 3 are H, W). Kept as the reference does it.
* Diff block: the order of the concatenation (difference first, raw frames second) is
  **inferred**; the BatchNorm2d(3) is applied frame-wise to the difference only.
* The KNN graph uses the L2-normalised features for the distances, the un-normalised
  (positional-embedded) features for the aggregation (ViG convention; **inferred**). Ties in the
  distance (e.g. identical nodes) are broken by ``torch.topk``; "self included" holds whenever
  a node's own distance (0) is not tied.
* Neighbour mean implemented as a dense row-normalised adjacency matmul (same result as a gather).
* Only the ARConv 1x1 conv gets Kaiming-normal weights (bias zero, **inferred**); all other
  layers keep PyTorch's default initialisation (the reference's Linear init has no targets).
* ``frames`` / ``size`` constructor arguments scale the graph geometry (T/4, T/8 and S/8, S/16)
  so reduced configurations run the same code path; only the default gives the paper's counts.
* DropPath is :class:`rppg_models.layers.DropPath` (timm is not a dependency).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rppg_models.families import Family
from rppg_models.layers import DropPath

__all__ = ["Stgnet", "neg_pearson_loss", "FRAMES", "SIZE", "POS_EMBED"]

FRAMES = 160  #: clip length (frames) of the reference
SIZE = 64  #: face crop side, px
CHANNELS = 64  #: feature channels of the graph module
#: positional-embedding modes of :class:`Stgnet`. ``learned`` is the paper's. ``off`` keeps them at
#: zero: they are added to every node whatever the input, so a trained embedding is a path from
#: no input to the output. On the 16-px CPU recipe that path is what stalled training (benchmarks/README.md,
#: "Why STGNet stalled"): the predictions of different clips converged to one waveform (their
#: mean pairwise r rose to 0.5-0.98) and the training loss sat near 1.0
POS_EMBED = ("learned", "off")


def normalise_mask(mask: torch.Tensor) -> torch.Tensor:
    """Attention-mask normalisation of the reference: ``mask / sum_{2,3}(mask) * n2 * n3 * 0.5``.

    For 5-D ``[B, C, T, H, W]`` tensors dims 2, 3 are T and H (kept as the reference does it).
    """
    n2, n3 = mask.shape[2], mask.shape[3]
    return mask / mask.sum(dim=(2, 3), keepdim=True) * (n2 * n3 * 0.5)


class DiffBlock(nn.Module):
    """Temporal first difference (last diff 0), BN2d(3) frame-wise, concat with raw -> 6 channels."""

    def __init__(self, channels: int = 3):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        padded = torch.cat([x, x[:, :, -1:]], dim=2)  # duplicate the last frame
        diff = padded[:, :, 1:] - padded[:, :, :-1]
        diff = diff.transpose(1, 2).reshape(b * t, c, h, w)
        diff = self.bn(diff).reshape(b, t, c, h, w).transpose(1, 2)
        return torch.cat([diff, x], dim=1)


class StemBlock(nn.Sequential):
    """Conv3d k3 p1 (stride s) + BN3d + GELU."""

    def __init__(self, c_in: int, c_out: int, stride=1):
        super().__init__(nn.Conv3d(c_in, c_out, 3, stride=stride, padding=1),
                         nn.BatchNorm3d(c_out), nn.GELU())


class SelfAttentionBlock(nn.Module):
    """x * norm(sigmoid(Conv3d k(1,5,5)(x))) -> dropout 0 -> Conv3d k3 p1 (stride s) -> tanh."""

    def __init__(self, c_in: int, c_out: int, stride=1, dropout: float = 0.0):
        super().__init__()
        self.attention = nn.Conv3d(c_in, c_in, (1, 5, 5), padding=(0, 2, 2))
        self.dropout = nn.Dropout(dropout)
        self.conv = nn.Conv3d(c_in, c_out, 3, stride=stride, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = normalise_mask(torch.sigmoid(self.attention(x)))
        return torch.tanh(self.conv(self.dropout(x * mask)))


class RoiSelectionBlock(nn.Module):
    """Conv3d+BN+GELU -> attention mask (as the self-attention block) -> Conv3d stride s + tanh."""

    def __init__(self, channels: int, stride=1):
        super().__init__()
        self.pre = StemBlock(channels, channels)
        self.select = SelfAttentionBlock(channels, channels, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.select(self.pre(x))


def knn_adjacency(x: torch.Tensor, k: int) -> torch.Tensor:
    """Row-normalised KNN adjacency ``[B, N, N]`` (1/k on each of the k nearest nodes, self incl.).

    ``x`` is ``[B, N, C]``; distances are squared Euclidean between L2-normalised features.
    Computed without gradient (the neighbour choice is not differentiable).
    """
    with torch.no_grad():
        xn = F.normalize(x, dim=-1)
        sq = (xn * xn).sum(-1)
        dist = sq.unsqueeze(2) - 2.0 * xn @ xn.transpose(1, 2) + sq.unsqueeze(1)
        idx = torch.topk(-dist, k, dim=-1).indices  # [B, N, k]
        adj = torch.zeros_like(dist).scatter_(2, idx, 1.0 / k)
    return adj


class ARConv(nn.Module):
    """Average-relative graph conv: [x_i, mean_j(x_j - x_i)] interleaved -> 1x1 conv (groups 4)."""

    def __init__(self, channels: int, groups: int = 4):
        super().__init__()
        self.conv = nn.Conv2d(2 * channels, 2 * channels, 1, groups=groups, bias=True)
        self.bn = nn.BatchNorm2d(2 * channels)
        self.act = nn.GELU()
        nn.init.kaiming_normal_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        """``x`` [B, N, C], ``adj`` [B, N, N] -> [B, 2C, N, 1]."""
        b, n, c = x.shape
        rel = adj @ x - x  # mean over neighbours of (x_j - x_i)
        inter = torch.stack([x, rel], dim=-1).reshape(b, n, 2 * c)  # x_1, m_1, x_2, m_2, ...
        inter = inter.transpose(1, 2).unsqueeze(-1)
        return self.act(self.bn(self.conv(inter)))


def conv_bn_gelu(c_in: int, c_out: int) -> nn.Sequential:
    """1x1 Conv2d + BN2d + GELU on ``[B, C, N, 1]`` node tensors."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1), nn.BatchNorm2d(c_out), nn.GELU())


class StGraphDenoiseBlock(nn.Module):
    """Pos-embed -> dynamic KNN over all T*H*W nodes -> ARConv -> fc_1 (shortcut) -> fc_2 + DropPath."""

    def __init__(self, channels: int, n_nodes: int, k: int, drop_path: float = 0.25):
        super().__init__()
        if k > n_nodes:
            raise ValueError(f"k={k} exceeds the {n_nodes} graph nodes")
        self.k = k
        self.pos_embed = nn.Parameter(torch.zeros(1, n_nodes, channels))
        self.graph_conv = ARConv(channels)
        self.fc_1 = conv_bn_gelu(2 * channels, channels)
        self.fc_2 = conv_bn_gelu(channels, channels)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        nodes = x.flatten(2).transpose(1, 2) + self.pos_embed  # [B, N, C]
        y = self.graph_conv(nodes, knn_adjacency(nodes, self.k))
        shortcut = self.fc_1(y)
        y = self.drop_path(self.fc_2(shortcut)) + shortcut  # [B, C, N, 1]
        return y.reshape(b, c, t, h, w)


class Stgnet(nn.Module):
    """STGNet: ``[B, 3, frames, size, size]`` RGB clip in [0, 1] -> ``[B, frames]`` BVP.

    Defaults reproduce the reference (160 frames, 64 px, 2,285,927 parameters). ``frames`` must
    be divisible by 8 and ``size`` by 16; smaller values give a reduced model on the same code
    path (positional embeddings shrink with the node count).

    Parameters
    ----------
    frames : int
        Clip length T, frames (divisible by 8).
    size : int
        Crop side, px (divisible by 16).
    gnn_num : tuple of int
        Graph-denoise blocks per stage.
    k : tuple of int
        Neighbours of the dynamic KNN graph per stage.
    drop_path : tuple of float
        Stochastic-depth probability per graph stage.
    pos_embed : {"learned", "off"}
        ``learned`` (the paper): the graph blocks' positional embeddings are trained. ``off``: they
        stay at their zero initialisation (the parameters exist, so checkpoints keep one layout,
        but they get no gradient). See :data:`POS_EMBED` for why a CPU recipe turns them off.

    Raises
    ------
    ValueError
        ``frames`` / ``size`` not divisible, or an unknown ``pos_embed``.
    """

    def __init__(self, frames: int = FRAMES, size: int = SIZE,
                 gnn_num: tuple[int, ...] = (2, 3, 2, 1), k: tuple[int, ...] = (64, 32, 16, 16),
                 drop_path: tuple[float, ...] = (0.25, 0.25, 0.25), pos_embed: str = "learned"):
        super().__init__()
        if frames % 8 or size % 16:
            raise ValueError(f"frames ({frames}) must divide by 8 and size ({size}) by 16")
        if pos_embed not in POS_EMBED:
            raise ValueError(f"pos_embed must be one of {POS_EMBED}, got {pos_embed!r}")
        self.frames, self.size = frames, size
        c = CHANNELS
        self.stem = nn.Sequential(
            DiffBlock(3),
            StemBlock(6, 16, stride=2),
            SelfAttentionBlock(16, 16),
            StemBlock(16, 16),
            StemBlock(16, 32, stride=(1, 2, 2)),
            SelfAttentionBlock(32, 32),
            StemBlock(32, 32),
            StemBlock(32, c, stride=2),
            StemBlock(c, c),
        )
        # reference config: time=[40,40,20,20], pos=[8,8,4,4]; 4 entries, len-1 = 3 stages built
        time = [frames // 4, frames // 4, frames // 8, frames // 8]
        pos = [size // 8, size // 8, size // 16, size // 16]
        stages: list[nn.Module] = []
        for i in range(len(time) - 1):
            n_nodes = time[i] * pos[i] * pos[i]
            for _ in range(gnn_num[i]):
                stages.append(StGraphDenoiseBlock(c, n_nodes, k[i], drop_path[i]))
            stride = (time[i] // time[i + 1], pos[i] // pos[i + 1], pos[i] // pos[i + 1])
            stages.append(RoiSelectionBlock(c, stride=stride))
        self.graph = nn.Sequential(*stages)
        up: list[nn.Module] = []
        for _ in range(3):
            up += [nn.ConvTranspose3d(c, c, (4, 1, 1), stride=(2, 1, 1), padding=(1, 0, 0)),
                   nn.BatchNorm3d(c), nn.ELU()]
        self.head = nn.Sequential(*up, nn.AdaptiveAvgPool3d((frames, 1, 1)), nn.Conv3d(c, 1, 1))
        for name, p in self.named_parameters():
            if name.endswith("pos_embed"):
                p.requires_grad_(pos_embed == "learned")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, frames, size, size]`` -> ``[B, frames]``.

        Raises
        ------
        ValueError
            If ``x`` does not have that shape.
        """
        expected = (3, self.frames, self.size, self.size)
        if x.ndim != 5 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"expected [B, {', '.join(map(str, expected))}], got {list(x.shape)}")
        y = self.head(self.graph(self.stem(x)))
        return y.reshape(x.shape[0], self.frames)


def neg_pearson_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """NegPearson: mean over the batch of ``1 - r`` (Pearson r along the last axis).

    ``pred`` and ``target`` are ``[B, T]`` (a 1-D pair is treated as a batch of one). Returns a
    scalar in [0, 2]: 0 for perfectly correlated, 2 for anti-correlated, ~1 for unrelated.

    Parameters
    ----------
    pred, target : torch.Tensor, shape (B, T)
        Predicted and label BVP.
    eps : float
        Added to the denominator.

    Returns
    -------
    torch.Tensor
        Scalar in [0, 2].
    """
    if pred.shape != target.shape:
        raise ValueError(f"shape mismatch: {list(pred.shape)} vs {list(target.shape)}")
    if pred.ndim == 1:
        pred, target = pred.unsqueeze(0), target.unsqueeze(0)
    p = pred - pred.mean(dim=-1, keepdim=True)
    t = target - target.mean(dim=-1, keepdim=True)
    r = (p * t).sum(-1) / torch.sqrt((p * p).sum(-1) * (t * t).sum(-1) + eps)
    return (1.0 - r).mean()


def _build(frames=None, size_px=None, pos_embed="learned"):
    return Stgnet(frames=frames or FRAMES, size=size_px or SIZE, pos_embed=pos_embed)


#: the registry record (:mod:`rppg_models.families`): its BVP head is the prediction, NegPearson the loss
FAMILY = Family(build=_build, forward=lambda model, x: model(x), criterion=neg_pearson_loss, to_bvp=lambda y: y,
                norm="raw", layout="NCDHW", frames=FRAMES, size_px=SIZE)
