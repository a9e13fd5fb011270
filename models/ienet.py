"""IENet: RGB + NIR video -> rPPG (video Swin per modality, MDEF fusion) and FEE heart rate.

Implemented from the written specification (``shared/design/models.md`` section 4) of Liu, Xia,
Zhang, Peng, Feng, Zhao, "Information-enhanced Network for Noncontact Heart Rate Estimation from
Facial Videos", IEEE TCSVT 2023; reference repository ``xiazhaoqiang/IENet-HeartRateEst``
(commit c9c32bc). Plain torch, no timm / einops / mmcv.

Pipeline: each modality ``(B, 3, T=128, 64, 64)`` goes through its own CET backbone
(:class:`CetBackbone`: 3-D patch embedding (2, 4, 4) -> 96 ch, three video-Swin stages, depths
2/2/4, heads 3/6/12, window (2, 7, 7) with shifted windows and relative position bias, 2x2
spatial patch merging after stages 1 and 2, LayerNorm, temporal x2 up-sampling) to features
``(B, 384, 128, 4, 4)``; :func:`mdef_fusion` fuses the two feature maps (no parameters); one
shared :class:`RppgHead` turns RGB, NIR and fused features into ``(B, 128)`` rPPG signals.
:class:`FrequencyEnhancedEstimator` (FEE) refines the fused rPPG with two Conv1d + BN layers
and reads HR (bpm) off a 40-179 bpm DFT power spectrum through a frequency-mask activation.

RGB-only mode: datasets without NIR call ``Ienet(...)(rgb)`` (``nir=None``); only the RGB branch
runs and the "fused" output is the RGB rPPG. ``Ienet(use_nir=False)`` does not build the NIR
branch at all (9,069,655 parameters instead of 18,138,925).

Parameter count: the parts the reference's forward pass uses (two CET branches + rPPG head) hold
**18,138,925** parameters (= 2 x 9,069,270 + 385), as models.md states; FEE adds 130
(:data:`REFERENCE_USED_PARAMS`, :meth:`Ienet.reference_used_parameters`).

Bugs of the released code and how they are handled here:

* **Context enhancement built but never called** (three dilated-conv modules instantiated in
  every block, the call commented out): not built by default, so the model has the 18.1 M
  parameters the reference's forward uses rather than the 36.8 M it instantiates.
  ``context_enhance=True`` builds one module of the matching width per block and applies it
  where the commented-out call sits (it replaces the attention branch's input before norm1; the
  residual shortcut keeps the un-enhanced input) [INFERRED placement; never run upstream].
* **Relative position bias of shrunken windows**: when a feature map is smaller than the window
  (4x4 maps at stage 3 -> 4x4 windows) the reference slices the first N x N entries of the full
  (2, 7, 7) index, pairing tokens with the wrong offsets. Here the index is rebuilt for the
  effective window and mapped into the same (2*2-1)(2*7-1)(2*7-1) = 507-row table.
* **Frequency loss rewards spectral distance** (``1 / (distance + 1e-8)``):
  :func:`frequency_loss` returns the distance itself (``reciprocal=True`` reproduces the bug).
* **Frequency loss over the flattened batch** (the PSD helper reshapes the whole batch into one
  signal of length B*128): spectra are computed per sample and the distance averaged over the
  batch, as models.md describes.
* **HR gradient vanishes**: the spectrum divided by its own (differentiable) maximum is exactly 1
  at the peak with zero derivative there, so the L1 HR loss cannot train anything through the
  frequency mask. :func:`normalised_psd` divides by a *detached* maximum by default (same values;
  the gradient then flows through the kept bin as the spec intends); ``detach_max=False`` gives
  the reference's behaviour.
* **Tied peaks add up**: the frequency mask keeps every bin at the maximum and sums their rates,
  so two bins tied at 1.0 (common on short signals, whose 1-bpm bins are finely interpolated)
  give their sum, e.g. 96 + 97 = 193 bpm. :func:`frequency_mask_hr` divides by the number of kept
  bins (detached), i.e. the mean of the tied rates; with one peak it is the reference's value.

Other deviations: NIR given with one channel is replicated to three (the reference stores NIR as
3 replicated channels); the up-sampling factor and widths follow the constructor arguments
(the reference hard-codes x2 and 384, equal to the defaults); Linear/Conv weights use PyTorch's
default initialisation and the bias tables trunc-normal(0.02), as in the reference (its
``init_weights`` is never called).
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from rppg_models.families import Family, fixed_input
from rppg_models.layers import DropPath

FS = 30.0  #: frame rate the reference trains at, Hz
RPPG_LEN = 128  #: samples of each rPPG output (= T)
BPM_RANGE = (40, 180)  #: candidate HR grid of FEE / the frequency loss, bpm, 1-bpm step, end excluded
REFERENCE_USED_PARAMS = 18_138_925  #: two CET branches + rPPG head (models.md section 4.4)
CET_BRANCH_PARAMS = 9_069_270  #: one CET branch as used (models.md section 4.2)

Size3 = tuple[int, int, int]


# ----------------------------------------------------------------------------- helpers

def effective_window(size: Size3, window: Size3, shift: Size3) -> tuple[Size3, Size3]:
    """Window / shift actually used on a (D, H, W) map: dims no larger than the window use the
    whole dim as window and no shift."""
    w = tuple(s if s <= wi else wi for s, wi in zip(size, window))
    sh = tuple(0 if s <= wi else si for s, wi, si in zip(size, window, shift))
    return w, sh  # type: ignore[return-value]


@lru_cache(maxsize=None)
def relative_position_index(window: Size3, table_window: Size3) -> torch.Tensor:
    """(N, N) rows of the bias table (built for ``table_window``) for token pairs of ``window``.

    N = prod(window). Offsets (dd, dh, dw) in [-(w-1), w-1] map to row
    ((dd + Wd-1)(2Wh-1) + dh + Wh-1)(2Ww-1) + dw + Ww-1 with (Wd, Wh, Ww) = ``table_window``.
    """
    grids = torch.meshgrid(*(torch.arange(w) for w in window), indexing="ij")
    coords = torch.stack(grids).flatten(1)  # 3, N
    rel = coords[:, :, None] - coords[:, None, :]  # 3, N, N
    wd, wh, ww = table_window
    return ((rel[0] + wd - 1) * (2 * wh - 1) + rel[1] + wh - 1) * (2 * ww - 1) + rel[2] + ww - 1


def window_partition(x: torch.Tensor, w: Size3) -> torch.Tensor:
    """(B, D, H, W, C) with D, H, W multiples of ``w`` -> (B * nW, prod(w), C)."""
    b, d, h, wd, c = x.shape
    x = x.view(b, d // w[0], w[0], h // w[1], w[1], wd // w[2], w[2], c)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, w[0] * w[1] * w[2], c)


def window_reverse(windows: torch.Tensor, w: Size3, b: int, d: int, h: int, wd: int) -> torch.Tensor:
    """Inverse of :func:`window_partition` -> (B, D, H, W, C)."""
    x = windows.view(b, d // w[0], h // w[1], wd // w[2], w[0], w[1], w[2], -1)
    return x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, d, h, wd, -1)


def shifted_window_mask(padded: Size3, w: Size3, shift: Size3, device=None) -> torch.Tensor:
    """(nW, N, N) additive mask (0 / -100) keeping a shifted window's attention inside the
    regions that were contiguous before the cyclic shift."""
    labels = []
    for n, wi, si in zip(padded, w, shift):
        lab = torch.zeros(n, dtype=torch.long)
        if si > 0:
            lab[n - wi:n - si] = 1
            lab[n - si:] = 2
        labels.append(lab)
    region = (labels[0][:, None, None] * 9 + labels[1][None, :, None] * 3 + labels[2][None, None, :])
    win = window_partition(region[None, ..., None].float(), w).squeeze(-1)  # nW, N
    mask = win[:, None, :] - win[:, :, None]
    return torch.where(mask != 0, -100.0, 0.0).to(device)


# ----------------------------------------------------------------------------- video Swin

class PatchEmbed3d(nn.Module):
    """Conv3d with kernel = stride = ``patch``; input zero-padded to a multiple of ``patch``."""

    def __init__(self, patch: Size3 = (2, 4, 4), in_channels: int = 3, dim: int = 96):
        super().__init__()
        self.patch = tuple(patch)
        self.proj = nn.Conv3d(in_channels, dim, kernel_size=self.patch, stride=self.patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d, h, w = x.shape[-3:]
        pd, ph, pw = ((-s) % p for s, p in zip((d, h, w), self.patch))
        if pd or ph or pw:
            x = F.pad(x, (0, pw, 0, ph, 0, pd))
        return self.proj(x)


class WindowAttention3d(nn.Module):
    """Multi-head self-attention inside 3-D windows with a learned relative position bias."""

    def __init__(self, dim: int, heads: int, window: Size3):
        super().__init__()
        self.heads = heads
        self.window = tuple(window)
        self.scale = (dim // heads) ** -0.5
        rows = (2 * window[0] - 1) * (2 * window[1] - 1) * (2 * window[2] - 1)
        self.bias_table = nn.Parameter(torch.zeros(rows, heads))
        nn.init.trunc_normal_(self.bias_table, std=0.02)
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, window: Size3, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B * nW, N, C), ``window`` the effective window (N = its volume), mask (nW, N, N)."""
        bw, n, c = x.shape
        q, k, v = self.qkv(x).view(bw, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        idx = relative_position_index(tuple(window), self.window).to(x.device)
        bias = self.bias_table[idx.reshape(-1)].view(n, n, -1).permute(2, 0, 1)  # heads, N, N
        if mask is not None:  # softmax(q k^T * scale + bias + mask) v, windows grouped per sample
            nw = mask.shape[0]
            q, k, v = (t.reshape(bw // nw, nw, self.heads, n, -1) for t in (q, k, v))
            bias = bias[None] + mask[:, None]  # nW, heads, N, N
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), scale=self.scale)
        return self.proj(out.reshape(bw, self.heads, n, -1).transpose(1, 2).reshape(bw, n, c))


class ContextEnhance(nn.Module):
    """Optional context enhancement (unused by the released code): channels split into thirds,
    Conv3d k=(2, 3, 3) with dilation 1 / 3 / 5 + BN3d each, last time step dropped, concatenated.

    Works on (B, C, D, H, W); C must be divisible by 3.
    """

    def __init__(self, dim: int):
        super().__init__()
        if dim % 3:
            raise ValueError(f"context enhancement needs channels divisible by 3, got {dim}")
        c = dim // 3
        self.branches = nn.ModuleList(
            nn.Sequential(nn.Conv3d(c, c, (2, 3, 3), dilation=dil, padding=(pad_t, dil, dil)), nn.BatchNorm3d(c))
            for dil, pad_t in ((1, 1), (3, 2), (5, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = x.chunk(3, dim=1)
        return torch.cat([branch(p)[:, :, :-1] for branch, p in zip(self.branches, parts)], dim=1)


class SwinBlock3d(nn.Module):
    """Pre-norm block: x + DropPath((S)W-MSA(LN(x))), then x + DropPath(MLP(LN(x))), MLP ratio 4, GELU."""

    def __init__(self, dim: int, heads: int, window: Size3, shift: Size3, mlp_ratio: float = 4.0,
                 drop_path: float = 0.0, context_enhance: bool = False):
        super().__init__()
        self.window, self.shift = tuple(window), tuple(shift)
        self.context = ContextEnhance(dim) if context_enhance else None
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention3d(dim, heads, window)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def _attention(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if self.context is not None:
            x = self.context(x.permute(0, 4, 1, 2, 3)).permute(0, 2, 3, 4, 1)
        b, d, h, w, _ = x.shape
        window, shift = effective_window((d, h, w), self.window, self.shift)
        x = self.norm1(x)
        pd, ph, pw = ((-s) % wi for s, wi in zip((d, h, w), window))
        x = F.pad(x, (0, 0, 0, pw, 0, ph, 0, pd))
        dp, hp, wp = x.shape[1:4]
        shifted = any(shift)
        if shifted:
            x = torch.roll(x, shifts=tuple(-s for s in shift), dims=(1, 2, 3))
        out = self.attn(window_partition(x, window), window, mask if shifted else None)
        x = window_reverse(out, window, b, dp, hp, wp)
        if shifted:
            x = torch.roll(x, shifts=shift, dims=(1, 2, 3))
        return x[:, :d, :h, :w]

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """x (B, D, H, W, C) channels-last; ``mask`` of the stage's shifted windows."""
        x = x + self.drop_path(self._attention(x, mask))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """2x2 spatial merge: concat the four neighbours (4C) -> LayerNorm -> Linear 4C -> 2C, no bias."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2:4]
        if h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat([x[:, :, 0::2, 0::2], x[:, :, 1::2, 0::2], x[:, :, 0::2, 1::2], x[:, :, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x))


class SwinStage3d(nn.Module):
    """``depth`` blocks alternating W-MSA / SW-MSA (shift = window // 2), optional patch merging."""

    def __init__(self, dim: int, depth: int, heads: int, window: Size3, drop_paths: list[float],
                 mlp_ratio: float = 4.0, merge: bool = True, context_enhance: bool = False):
        super().__init__()
        self.window = tuple(window)
        self.shift = tuple(w // 2 for w in window)
        self.blocks = nn.ModuleList(
            SwinBlock3d(dim, heads, window, (0, 0, 0) if i % 2 == 0 else self.shift, mlp_ratio,
                        drop_paths[i], context_enhance) for i in range(depth))
        self.merge = PatchMerging(dim) if merge else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d, h, w = x.shape[1:4]
        window, shift = effective_window((d, h, w), self.window, self.shift)
        padded = tuple(-(-s // wi) * wi for s, wi in zip((d, h, w), window))
        mask = shifted_window_mask(padded, window, shift, x.device) if any(shift) else None
        for block in self.blocks:
            x = block(x, mask)
        return self.merge(x) if self.merge is not None else x


class CetBackbone(nn.Module):
    """CET: video Swin backbone of one modality, (B, 3, T, H, W) -> (B, C_last, T, H/16, W/16).

    Defaults = the configuration the reference builds: patch (2, 4, 4) -> 96 ch (no patch norm),
    stages of depth 2/2/4 with 3/6/12 heads at 96/192/384 ch, window (2, 7, 7), merging after
    stages 1 and 2, stochastic depth 0 -> 0.2, final LayerNorm, then nearest up-sampling x
    patch[0] in time -> Conv3d k(3, 1, 1) -> BN3d -> ELU. 9,069,270 parameters.
    """

    def __init__(self, in_channels: int = 3, embed_dim: int = 96, depths=(2, 2, 4), num_heads=(3, 6, 12),
                 window_size: Size3 = (2, 7, 7), patch_size: Size3 = (2, 4, 4), mlp_ratio: float = 4.0,
                 drop_path_rate: float = 0.2, context_enhance: bool = False):
        super().__init__()
        if len(depths) != len(num_heads):
            raise ValueError("depths and num_heads must have the same length")
        self.patch_embed = PatchEmbed3d(tuple(patch_size), in_channels, embed_dim)
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.stages = nn.ModuleList()
        for i, (depth, heads) in enumerate(zip(depths, num_heads)):
            start = sum(depths[:i])
            self.stages.append(SwinStage3d(embed_dim * 2 ** i, depth, heads, tuple(window_size),
                                           rates[start:start + depth], mlp_ratio,
                                           merge=i < len(depths) - 1, context_enhance=context_enhance))
        self.out_channels = embed_dim * 2 ** (len(depths) - 1)
        self.norm = nn.LayerNorm(self.out_channels)
        c = self.out_channels
        self.upsample = nn.Sequential(
            nn.Upsample(scale_factor=(patch_size[0], 1, 1), mode="nearest"),
            nn.Conv3d(c, c, (3, 1, 1), padding=(1, 0, 0)), nn.BatchNorm3d(c), nn.ELU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).permute(0, 2, 3, 4, 1)  # B, D, H, W, C
        for stage in self.stages:
            x = stage(x)
        x = self.norm(x).permute(0, 4, 1, 2, 3)
        return self.upsample(x)


# ----------------------------------------------------------------------------- fusion and heads

def mdef_fusion(f1: torch.Tensor, f2: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """MDEF fusion as released (``l1_mean`` attention weights), features (B, C, T, H, W).

    Spatial branch: s_m = mean_{h,w} |F_m| per (b, c, t), w_m = e^{s_m} / (e^{s_1} + e^{s_2} + eps).
    Channel branch: c_m = mean_c |F_m| per (b, t, h, w), same weighting. Returns the sum of both
    weighted combinations. No parameters.
    """
    if f1.shape != f2.shape:
        raise ValueError(f"feature shapes differ: {tuple(f1.shape)} vs {tuple(f2.shape)}")

    def combine(dims) -> torch.Tensor:
        e1 = f1.abs().mean(dim=dims, keepdim=True).exp()
        e2 = f2.abs().mean(dim=dims, keepdim=True).exp()
        den = e1 + e2 + eps
        return e1 / den * f1 + e2 / den * f2

    return combine((3, 4)) + combine((1,))


class RppgHead(nn.Module):
    """AdaptiveAvgPool3d -> (length, 1, 1), Conv3d C -> 1 k1: (B, C, T, H, W) -> (B, length)."""

    def __init__(self, channels: int = 384, length: int = RPPG_LEN):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool3d((length, 1, 1))
        self.conv = nn.Conv3d(channels, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pool(x)).flatten(1)


def bpm_grid(bpm_range: tuple[int, int] = BPM_RANGE, device=None) -> torch.Tensor:
    """Candidate rates ``arange(lo, hi)`` bpm (default 40..179, 140 bins) as float32."""
    return torch.arange(*bpm_range, dtype=torch.float32, device=device)


def normalised_psd(x: torch.Tensor, fs: float = FS, bpm: torch.Tensor | None = None,
                   detach_max: bool = True) -> torch.Tensor:
    """(B, N) signals -> (B, K) Hann-windowed DFT power at ``bpm`` (default 40..179), per sample
    divided by its sum, then by its maximum (peak = 1).

    The DFT is evaluated at bin k = (bpm / 60) / (fs / N). ``detach_max`` (default) divides by a
    detached maximum: same values, but the peak keeps a gradient (the reference's differentiable
    maximum makes it exactly zero).

    Parameters
    ----------
    x : torch.Tensor, shape (B, N)
    fs : float
        Frame rate, Hz.
    bpm : torch.Tensor, optional
        Rates to evaluate, bpm (default 40..179).
    detach_max : bool

    Returns
    -------
    torch.Tensor, shape (B, K)
    """
    if x.ndim == 1:
        x = x[None]
    n = x.shape[-1]
    if bpm is None:
        bpm = bpm_grid(device=x.device)
    k = (bpm.to(x.device, torch.float32) / 60.0) / (fs / n)
    phase = 2 * torch.pi * k[:, None] * torch.arange(n, device=x.device, dtype=torch.float32)[None] / n
    xw = x.float() * torch.hann_window(n, periodic=False, device=x.device, dtype=torch.float32)
    power = (xw @ phase.sin().T) ** 2 + (xw @ phase.cos().T) ** 2  # B, K
    power = power / power.sum(dim=-1, keepdim=True)
    peak = power.amax(dim=-1, keepdim=True)
    return power / (peak.detach() if detach_max else peak)


def frequency_mask_hr(psd: torch.Tensor, bpm: torch.Tensor | None = None) -> torch.Tensor:
    """Frequency-mask activation + read-out: bins < 1 set to 0 (identity gradient where kept),
    HR = sum_k mask_k * bpm_k / (number of kept bins). With a max-normalised spectrum (B, K) this
    is the peak rate, bpm, (B,); bins tied at the peak give their mean rate (the reference sums
    them: see the module docstring).

    Parameters
    ----------
    psd : torch.Tensor, shape (B, K)
        Max-normalised spectrum (:func:`normalised_psd`).
    bpm : torch.Tensor, optional
        Rates of the bins, bpm.

    Returns
    -------
    torch.Tensor, shape (B,)
        HR, bpm.
    """
    if bpm is None:
        bpm = bpm_grid(device=psd.device)
    mask = (psd >= 1.0).to(psd.dtype)
    n_kept = mask.sum(dim=-1).clamp(min=1.0)
    return (psd * mask) @ bpm.to(psd.device, psd.dtype) / n_kept


class FrequencyEnhancedEstimator(nn.Module):
    """FEE: rPPG (B, N) -> Conv1d 1->16 k3 + BN -> Conv1d 16->1 k3 + BN (no bias, no activation)
    -> refined rPPG (B, N) and HR (B,) bpm from its 40-179 bpm spectrum. 130 parameters."""

    def __init__(self, fs: float = FS, bpm_range: tuple[int, int] = BPM_RANGE, detach_max: bool = True):
        super().__init__()
        self.fs, self.detach_max = float(fs), detach_max
        self.register_buffer("bpm", bpm_grid(bpm_range), persistent=False)
        self.refine = nn.Sequential(nn.Conv1d(1, 16, 3, padding=1, bias=False), nn.BatchNorm1d(16),
                                    nn.Conv1d(16, 1, 3, padding=1, bias=False), nn.BatchNorm1d(1))

    def forward(self, rppg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        refined = self.refine(rppg[:, None]).squeeze(1)
        psd = normalised_psd(refined, self.fs, self.bpm, self.detach_max)
        return refined, frequency_mask_hr(psd, self.bpm)


# ----------------------------------------------------------------------------- model

class Ienet(nn.Module):
    """IENet: RGB (+ NIR) clips -> (RGB rPPG, NIR rPPG, fused rPPG); FEE -> HR.

    Inputs ``(B, 3, T, H, W)`` float (reference: T = 128 at 30 fps, 64x64 face crops; NIR may be
    given with 1 channel, it is replicated to 3). Outputs ``(B, rppg_len)``.

    RGB-only mode for datasets without NIR: ``forward(rgb)`` (``nir=None``) runs only the RGB
    branch and returns ``(rgb_rppg, None, rgb_rppg)`` (the "fused" output is the RGB one, so the
    same loss code applies); ``use_nir=False`` does not build the NIR branch at all.

    Constructor arguments configure the CET backbone (defaults = the reference configuration,
    18,138,925 parameters in the parts its forward uses + 130 of FEE). ``context_enhance`` turns on
    the context-enhancement modules the released code builds but never calls.

    Parameters
    ----------
    in_channels : int
        Channels of each input (3).
    embed_dim : int
        Patch-embedding width of the CET backbone.
    depths : tuple of int
        Swin blocks per backbone stage.
    num_heads : tuple of int
        Attention heads per stage.
    window_size : tuple of int
        (D, H, W) attention window.
    patch_size : tuple of int
        (D, H, W) patch of the embedding.
    mlp_ratio : float
        MLP width / embedding width.
    drop_path_rate : float
        Largest stochastic-depth probability (linear over the blocks).
    rppg_len : int
        Length of the rPPG outputs, frames.
    use_nir : bool
        Build the NIR branch.
    context_enhance : bool
        Use the context-enhancement modules.
    fs : float
        Frame rate, Hz (for the FEE's spectrum).
    bpm_range : tuple of int
        HR search range of the FEE, bpm.
    detach_max : bool
        As :func:`normalised_psd`.
    """

    def __init__(self, in_channels: int = 3, embed_dim: int = 96, depths=(2, 2, 4), num_heads=(3, 6, 12),
                 window_size: Size3 = (2, 7, 7), patch_size: Size3 = (2, 4, 4), mlp_ratio: float = 4.0,
                 drop_path_rate: float = 0.2, rppg_len: int = RPPG_LEN, use_nir: bool = True,
                 context_enhance: bool = False, fs: float = FS, bpm_range: tuple[int, int] = BPM_RANGE,
                 detach_max: bool = True):
        super().__init__()
        self.in_channels = in_channels
        cfg = dict(in_channels=in_channels, embed_dim=embed_dim, depths=tuple(depths), num_heads=tuple(num_heads),
                   window_size=tuple(window_size), patch_size=tuple(patch_size), mlp_ratio=mlp_ratio,
                   drop_path_rate=drop_path_rate, context_enhance=context_enhance)
        self.rgb_backbone = CetBackbone(**cfg)
        self.nir_backbone = CetBackbone(**cfg) if use_nir else None
        self.head = RppgHead(self.rgb_backbone.out_channels, rppg_len)
        self.fee = FrequencyEnhancedEstimator(fs, bpm_range, detach_max)

    @property
    def use_nir(self) -> bool:
        return self.nir_backbone is not None

    def _check(self, x: torch.Tensor, name: str) -> torch.Tensor:
        if x.ndim != 5:
            raise ValueError(f"{name}: expected (B, C, T, H, W), got {tuple(x.shape)}")
        if x.shape[1] == 1 and self.in_channels != 1:
            x = x.expand(-1, self.in_channels, -1, -1, -1)
        if x.shape[1] != self.in_channels:
            raise ValueError(f"{name}: expected {self.in_channels} channels, got {x.shape[1]}")
        return x

    def forward(self, rgb: torch.Tensor, nir: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(B, 3, T, H, W) RGB [+ NIR of the same shape] -> (rgb_rppg, nir_rppg, fused_rppg), each
        (B, rppg_len); without NIR -> (rgb_rppg, None, rgb_rppg).

        Raises
        ------
        ValueError
            On malformed inputs, shape mismatch, or NIR given to a model built with use_nir=False.
        """
        rgb = self._check(rgb, "rgb")
        if nir is not None:
            if self.nir_backbone is None:
                raise ValueError("NIR given but the model was built with use_nir=False")
            nir = self._check(nir, "nir")
            if nir.shape != rgb.shape:
                raise ValueError(f"rgb {tuple(rgb.shape)} and nir {tuple(nir.shape)} differ")
        f_rgb = self.rgb_backbone(rgb)
        rgb_rppg = self.head(f_rgb)
        if nir is None:
            return rgb_rppg, None, rgb_rppg
        f_nir = self.nir_backbone(nir)
        return rgb_rppg, self.head(f_nir), self.head(mdef_fusion(f_rgb, f_nir))

    def estimate_hr(self, rgb: torch.Tensor, nir: torch.Tensor | None = None, backbone_grad: bool = True
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage-B path: fused rPPG -> FEE -> (refined rPPG (B, rppg_len), HR (B,) bpm).

        ``backbone_grad=False`` runs CET/MDEF without gradients (the reference does so for its
        first 40 FEE epochs).
        """
        with torch.set_grad_enabled(backbone_grad and torch.is_grad_enabled()):
            fused = self(rgb, nir)[2]
        return self.fee(fused)

    def reference_used_parameters(self) -> int:
        """Parameters of the parts the reference's rPPG forward pass uses (CET branches + head)."""
        mods = [self.rgb_backbone, self.head] + ([self.nir_backbone] if self.nir_backbone is not None else [])
        return sum(p.numel() for m in mods for p in m.parameters())


# ----------------------------------------------------------------------------- losses

def neg_pearson(pred: torch.Tensor, label: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Sign-agnostic negative Pearson: mean over the batch of 1 - |r| ((B, N) inputs).

    Parameters
    ----------
    pred, label : torch.Tensor, shape (B, N)
    eps : float
        Added to the denominator.

    Returns
    -------
    torch.Tensor
        Scalar in [0, 1].
    """
    p = pred - pred.mean(dim=-1, keepdim=True)
    t = label - label.mean(dim=-1, keepdim=True)
    r = (p * t).sum(-1) / ((p.pow(2).sum(-1) * t.pow(2).sum(-1)).sqrt() + eps)
    return (1 - r.abs()).mean()


def frequency_loss(pred: torch.Tensor, label: torch.Tensor, fs: float = FS, bpm: torch.Tensor | None = None,
                   reciprocal: bool = False) -> torch.Tensor:
    """Mean over the batch of the L2 distance between per-sample normalised 40-179 bpm spectra.

    ``reciprocal=True`` reproduces the released code's 1 / (distance + 1e-8) [BUG].

    Parameters
    ----------
    pred, label : torch.Tensor, shape (B, N)
    fs : float
        Frame rate, Hz.
    bpm : torch.Tensor, optional
        Rates of the spectrum bins, bpm (default 40..179).
    reciprocal : bool

    Returns
    -------
    torch.Tensor
        Scalar.
    """
    dist = (normalised_psd(pred, fs, bpm) - normalised_psd(label, fs, bpm)).norm(dim=-1).mean()
    return 1.0 / (dist + 1e-8) if reciprocal else dist


def rppg_loss(fused: torch.Tensor, label: torch.Tensor, fs: float = FS, alpha: float = 0.3,
              beta: float = 0.3, reciprocal: bool = False) -> torch.Tensor:
    """Stage A (CET + MDEF): alpha * NegPearson(fused, label) + beta * frequency loss.

    Only the fused output is supervised (in RGB-only mode that is the RGB rPPG).

    Parameters
    ----------
    fused : torch.Tensor, shape (B, N)
        The fused rPPG.
    label : torch.Tensor, shape (B, N)
        The label BVP.
    fs : float
        Frame rate, Hz.
    alpha, beta : float
        Weights of the Pearson and frequency terms.
    reciprocal : bool
        As :func:`frequency_loss`.

    Returns
    -------
    torch.Tensor
        Scalar.
    """
    label = label.to(fused.dtype)
    return alpha * neg_pearson(fused, label) + beta * frequency_loss(fused, label, fs, reciprocal=reciprocal)


def hr_loss(hr_pred: torch.Tensor, hr_gt: torch.Tensor, weight: float = 0.4) -> torch.Tensor:
    """Stage B (FEE): weight * L1(HR_pred, HR_gt), bpm.

    Parameters
    ----------
    hr_pred, hr_gt : torch.Tensor, shape (B,)
        Predicted and label HR, bpm.
    weight : float

    Returns
    -------
    torch.Tensor
        Scalar, bpm.
    """
    return weight * F.l1_loss(hr_pred, hr_gt.reshape(hr_pred.shape).to(hr_pred.dtype))


__all__ = ["Ienet", "rppg_loss", "hr_loss", "frequency_loss", "neg_pearson", "normalised_psd", "frequency_mask_hr",
           "REFERENCE_USED_PARAMS", "CET_BRANCH_PARAMS"]

#: the registry record (:mod:`rppg_models.families`): RGB only (the UBFC builds have no NIR video); the
#: prediction and the loss's input are the fused rPPG
FAMILY = Family(build=fixed_input("ienet", RPPG_LEN, 64, lambda: Ienet(use_nir=False)),
                forward=lambda model, x: model(x)[2], criterion=rppg_loss, to_bvp=lambda fused: fused,
                norm="raw", layout="NCDHW", frames=RPPG_LEN, size_px=64)
