"""Meta-rPPG: per-frame convolutional encoder, BiLSTM ordinal rPPG estimator, synthetic gradients.

Implemented from the written specification (``design/models.md`` §2) of Lee, Chen and Lee,
"Meta-rPPG: Remote Heart Rate Estimation Using a Transductive Meta-Learner", ECCV 2020
(arXiv:2007.06786). A window of T = 60 face crops [B, 60, 3, 64, 64] is encoded frame by frame
(:class:`Encoder`, theta) into z [B, 60, 120]; a 2-layer bidirectional LSTM + Linear 120->80 +
parameter-free ordinal head (:class:`Estimator`, phi) turns z into 40 threshold probabilities per
frame (prob [B, 60, 40]) whose count above 0.5 is the predicted waveform (decision [B, 60]).
A synthetic-gradient generator (:class:`SyntheticGradientGenerator`, psi) predicts dL/dz from z
alone, so the encoder can be adapted on unlabelled test windows (:func:`adapt`), together with
a prototype loss pulling z towards the running mean feature (:meth:`MetaRppg.update_prototype`).

Parameter counts (equal to the reference): encoder 175,848; estimator 184,400 (LSTM 174,720 +
FC 9,680); generator 19,560; total 379,808.

Reference bugs and what this module does about them:

* **Detrending discarded** (``baseline_procress`` computes a masked, band-passed, high-pass
  corrected copy of the window and throws it away; only the in-place masked channel-mean
  subtraction reaches the network) -> :func:`window_preprocess` implements exactly what reaches
  the network, the masked channel-mean subtraction; the unused detrend is not implemented.
* **Ordinal logits clamped to [1e-8, 1e8]** before the pairwise softmax (clips every negative
  logit, so a pair of negative logits always gives p = 0.5) -> no clamp on logits; the pair is
  soft-maxed as is (:func:`ordinal_head`), and the 1e-8 clamp is applied to the probabilities
  inside :func:`ordinal_loss`, where it belongs (log of 0).
* **Flat PPG window** (max == min makes the reference's quantisation divide by zero -> NaN
  levels) -> :func:`ordinal_targets` returns level 0 for every frame of such a window.

Deviations from the reference code (not bugs):

* :func:`window_preprocess` returns a new tensor instead of modifying its input in place, and
  binarises the mask (``mask > 0``, so 0/1 and 0/255 masks are equivalent).
* The carried LSTM initial state (h, c) is stored batch-independent ([4, 60], the batch mean of
  the final state) and broadcast to the batch at each call; the reference keeps [4, B, 60] with
  its fixed batch size. Both the prototype and the state start at zero / "unset" and follow the
  0.8 / 0.2 running average (first update copies).
* :func:`ordinal_loss` keeps the reference convention (target of threshold k is 1 for k <= t),
  so a perfectly trained model decodes to ``decision = level + 1`` (1..40) — a constant offset
  that does not matter for HR; it is documented, not changed.
* Initialisation: Conv/ConvTranspose/Linear weights N(0, 0.02) as in the reference; biases,
  BatchNorm1d/3d and the LSTM keep PyTorch defaults (the reference's BN init targets
  BatchNorm2d, which the model does not contain, so it has no effect there either).
* ``MetaRppg(size=32)`` takes smaller crops than the reference's 64 px (a CPU-recipe option): the
  encoder ends in adaptive average pooling, so every parameter and count stays the same; the
  default is the reference's 64.
* Only the model, the losses, the prototype update and test-time adaptation are implemented; the
  meta-training outer loop (inner/outer steps over tasks, §2.5) is left to the training layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rppg_models.families import Family

__all__ = ["MetaRppg", "adapt", "window_preprocess", "ordinal_targets", "ordinal_loss", "proto_loss",
           "synthetic_gradient_loss", "WIN_SIZE", "INPUT_SIZE"]

WIN_SIZE = 60  #: frames per window (T)
INPUT_SIZE = 64  #: side of the square face crop, px
N_LEVELS = 40  #: ordinal levels / thresholds per frame
FEAT_DIM = 120  #: per-frame feature size of the encoder (z)
LSTM_HIDDEN = 60  #: hidden units per direction
LSTM_LAYERS = 2
PROTO_GAMMA = 0.8  #: running-average weight of the old prototype / LSTM state
PROB_EPS = 1e-8  #: clamp of probabilities inside log()

_ENCODER_CHANNELS = (3, 32, 48, 64, 80, FEAT_DIM)


def _init_normal(module: nn.Module) -> None:
    """Reference init: weights of Conv*/ConvTranspose*/Linear ~ N(0, 0.02); the rest default."""
    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv3d, nn.ConvTranspose1d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)


class Encoder(nn.Module):
    """theta: 5 x (Conv3d (1,3,3) -> BN3d -> AvgPool (1,2,2) -> ReLU), 3->32->48->64->80->120.

    Per-frame (the temporal kernel size is 1): [B, T, 3, H, W] -> z [B, T, 120]. 175,848 params.
    """

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = []
        for c_in, c_out in zip(_ENCODER_CHANNELS[:-1], _ENCODER_CHANNELS[1:]):
            layers += [nn.Conv3d(c_in, c_out, (1, 3, 3), stride=1, padding=(0, 1, 1)),
                       nn.BatchNorm3d(c_out), nn.AvgPool3d((1, 2, 2)), nn.ReLU()]
        self.blocks = nn.Sequential(*layers)
        _init_normal(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, 3, H, W] -> [B, T, 120] (H, W >= 32)."""
        b, t = x.shape[:2]
        y = self.blocks(x.permute(0, 2, 1, 3, 4))  # [B, 120, T, H/32, W/32]
        y = F.adaptive_avg_pool3d(y, (t, 1, 1)).reshape(b, FEAT_DIM, t)
        return y.transpose(1, 2)  # per-frame features: [B, T, 120]


def ordinal_head(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Parameter-free ordinal layer: [..., 80] logits -> (prob [..., 40], decision [...] int64).

    The 80 logits form 40 (even, odd) pairs; each pair is soft-maxed and p_k = P(odd) =
    P(level > k). ``decision = #{k : p_k > 0.5}`` in 0..40. Logits are not clamped (reference
    bug: its [1e-8, 1e8] clamp clipped all negative logits).
    """
    pairs = logits.reshape(*logits.shape[:-1], N_LEVELS, 2)
    prob = torch.softmax(pairs, dim=-1)[..., 1]
    decision = (prob > 0.5).sum(dim=-1)
    return prob, decision


class Estimator(nn.Module):
    """phi: 2-layer BiLSTM (120 -> 2x60) -> Linear 120->80 -> ordinal head. 184,400 params.

    The LSTM starts from the carried state in the buffers ``h0``/``c0`` ([4, 60], broadcast to
    the batch); :meth:`MetaRppg.update_prototype` maintains them. The final state of the last
    call is kept (detached) in ``last_state`` for that update.
    """

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(FEAT_DIM, LSTM_HIDDEN, num_layers=LSTM_LAYERS, batch_first=True,
                            bidirectional=True)
        self.fc = nn.Linear(2 * LSTM_HIDDEN, 2 * N_LEVELS)
        n_state = 2 * LSTM_LAYERS
        self.register_buffer("h0", torch.zeros(n_state, LSTM_HIDDEN))
        self.register_buffer("c0", torch.zeros(n_state, LSTM_HIDDEN))
        self.last_state: tuple[torch.Tensor, torch.Tensor] | None = None
        _init_normal(self)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z [B, T, 120] -> (prob [B, T, 40] in [0, 1], decision [B, T] int64 in 0..40)."""
        b = z.shape[0]
        h0 = self.h0.unsqueeze(1).expand(-1, b, -1).contiguous()
        c0 = self.c0.unsqueeze(1).expand(-1, b, -1).contiguous()
        out, (h_n, c_n) = self.lstm(z, (h0, c0))
        self.last_state = (h_n.detach(), c_n.detach())
        return ordinal_head(self.fc(out))


class SyntheticGradientGenerator(nn.Module):
    """psi: predicts dL/dz [B, 60, 120] from z; the 60 frames are Conv1d channels. 19,560 params.

    Conv1d 60->40 + BN + ReLU (= r1) -> Conv1d 40->20 + BN + ReLU -> ConvT1d 20->40 + BN + ReLU
    (+ r1) -> ConvT1d 40->60; all kernels 3, padding 1.
    """

    def __init__(self, win_size: int = WIN_SIZE):
        super().__init__()
        self.down1 = nn.Sequential(nn.Conv1d(win_size, 40, 3, padding=1), nn.BatchNorm1d(40),
                                   nn.ReLU())
        self.down2 = nn.Sequential(nn.Conv1d(40, 20, 3, padding=1), nn.BatchNorm1d(20), nn.ReLU())
        self.up1 = nn.Sequential(nn.ConvTranspose1d(20, 40, 3, padding=1), nn.BatchNorm1d(40),
                                 nn.ReLU())
        self.up2 = nn.ConvTranspose1d(40, win_size, 3, padding=1)
        _init_normal(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, 60, 120] -> predicted gradient [B, 60, 120]."""
        r1 = self.down1(z)
        return self.up2(self.up1(self.down2(r1)) + r1)


class MetaRppg(nn.Module):
    """encoder (theta) + estimator (phi) + synthetic-gradient generator (psi) + prototype.

    ``forward(x [B, 60, 3, 64, 64]) -> (prob [B, 60, 40], decision [B, 60], z [B, 60, 120])``;
    ``x`` is a window already passed through :func:`window_preprocess`. The prototype (buffer
    ``prototype`` [120], valid once ``prototype_set`` is true) is not a parameter.

    Parameters
    ----------
    size : int
        Input crop side, px (64 in the paper; >= 32 keeps every parameter).
    """

    def __init__(self, size: int = INPUT_SIZE):
        super().__init__()
        if size < 32:
            raise ValueError(f"the encoder halves the crop 5 times: size must be >= 32 px, got {size}")
        self.size = int(size)  # a reduced crop (e.g. 32 px on the CPU) keeps every parameter: the encoder pools
        self.encoder = Encoder()
        self.estimator = Estimator()
        self.generator = SyntheticGradientGenerator()
        self.register_buffer("prototype", torch.zeros(FEAT_DIM))
        self.register_buffer("prototype_set", torch.tensor(False))

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ValueError unless ``x`` is [B, 60, 3, size, size] (size 64 by default)."""
        if x.ndim != 5 or tuple(x.shape[1:]) != (WIN_SIZE, 3, self.size, self.size):
            raise ValueError(f"expected (B, {WIN_SIZE}, 3, {self.size}, {self.size}), "
                             f"got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        self.check_input(x)
        z = self.encoder(x)
        prob, decision = self.estimator(z)
        return prob, decision, z

    @torch.no_grad()
    def update_prototype(self, x: torch.Tensor, gamma: float = PROTO_GAMMA) -> None:
        """Running update of the prototype and the carried LSTM state from window(s) ``x``.

        proto <- gamma * proto + (1 - gamma) * mean_{B,T}(z); h0/c0 likewise with the batch mean
        of the LSTM's final state. The first call copies instead of averaging.
        """
        _, _, z = self(x)
        h_n, c_n = self.estimator.last_state
        new = (z.mean(dim=(0, 1)), h_n.mean(dim=1), c_n.mean(dim=1))
        old = (self.prototype, self.estimator.h0, self.estimator.c0)
        first = not bool(self.prototype_set)
        for buf, val in zip(old, new):
            buf.copy_(val if first else gamma * buf + (1.0 - gamma) * val)
        self.prototype_set.fill_(True)


# ------------------------------------------------------------------------------ preprocessing

def window_preprocess(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-window, per-channel masked mean subtraction: what reaches the reference network.

    ``x`` is one window [T, 3, H, W] or a batch [B, T, 3, H, W] (any numeric dtype; returned as
    float32 unless already floating). ``mask`` (same shape or broadcastable; 0/1 or 0/255;
    None = whole frame) selects the skin pixels; for each window and colour channel the mean of
    the selected pixels over (T, H, W) is subtracted from *every* pixel (the image is not
    multiplied by the mask). Returns a new tensor; the input is left untouched.

    Parameters
    ----------
    x : torch.Tensor, shape (T, 3, H, W) or (B, T, 3, H, W)
        Frames of one window or a batch of windows.
    mask : torch.Tensor, optional
        Skin mask, broadcastable to ``x``.

    Returns
    -------
    torch.Tensor
        Same shape, float32 (or the input's floating dtype).

    Raises
    ------
    ValueError
        If ``x`` is not 4-D/5-D with 3 channels, or a window's mask selects no pixel.
    """
    if x.ndim not in (4, 5) or x.shape[-3] != 3:
        raise ValueError(f"expected (T, 3, H, W) or (B, T, 3, H, W), got {tuple(x.shape)}")
    xf = x if x.is_floating_point() else x.to(torch.float32)
    dims = (-4, -2, -1)  # T, H, W
    if mask is None:
        mean = xf.mean(dim=dims, keepdim=True)
    else:
        m = torch.broadcast_to(mask > 0, xf.shape).to(xf.dtype)
        count = m.sum(dim=dims, keepdim=True)
        if bool((count == 0).any()):
            raise ValueError("mask selects no pixel in at least one window/channel")
        mean = (xf * m).sum(dim=dims, keepdim=True) / count
    return xf - mean


def ordinal_targets(ppg: torch.Tensor) -> torch.Tensor:
    """PPG windows [..., T] -> ordinal levels [..., T] int64 in 0..39.

    Per window: level = round((ppg - min) / ((max - min) / 39)), so the minimum maps to 0 and
    the maximum to 39. A flat window (max == min) gives all zeros (reference: NaN).

    Parameters
    ----------
    ppg : torch.Tensor, shape (..., T)
        PPG windows.

    Returns
    -------
    torch.Tensor of int64, shape (..., T)
        Levels in 0..39.
    """
    ppg = torch.as_tensor(ppg, dtype=torch.float64)
    lo = ppg.amin(dim=-1, keepdim=True)
    span = ppg.amax(dim=-1, keepdim=True) - lo
    step = torch.where(span > 0, span / (N_LEVELS - 1), torch.ones_like(span))
    levels = torch.round((ppg - lo) / step)
    return levels.clamp_(0, N_LEVELS - 1).to(torch.int64)


# ------------------------------------------------------------------------------ losses

def ordinal_loss(prob: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """L_ord: prob [B, T, 40], levels [B, T] -> scalar.

    For target t and threshold k: -log p_k if k <= t, else -log(1 - p_k) (both clamped at
    1e-8); summed over k and frames, divided by B * T. (Reference convention; a perfect model
    decodes to level + 1.)

    Parameters
    ----------
    prob : torch.Tensor, shape (B, T, 40)
        P(level > k) per frame and threshold.
    levels : torch.Tensor of int64, shape (B, T)
        Target levels (:func:`ordinal_targets`).

    Returns
    -------
    torch.Tensor
        Scalar.
    """
    k = torch.arange(prob.shape[-1], device=prob.device)
    above = k <= levels.unsqueeze(-1)  # [B, T, 40]
    nll = torch.where(above, -torch.log(prob.clamp(min=PROB_EPS)),
                      -torch.log((1.0 - prob).clamp(min=PROB_EPS)))
    return nll.sum() / (levels.shape[0] * levels.shape[1])


def proto_loss(z: torch.Tensor, prototype: torch.Tensor) -> torch.Tensor:
    """L_proto: MSE between z [B, T, 120] and the prototype [120] broadcast to z's shape.

    Parameters
    ----------
    z : torch.Tensor, shape (B, T, 120)
        Encoder features.
    prototype : torch.Tensor, shape (120,)

    Returns
    -------
    torch.Tensor
        Scalar.
    """
    return F.mse_loss(z, prototype.expand_as(z))


def synthetic_gradient_loss(generator: nn.Module, z: torch.Tensor,
                            loss: torch.Tensor) -> torch.Tensor:
    """L_syn: MSE between psi(z.detach()) and the true dloss/dz (a constant target).

    ``z`` must be part of ``loss``'s graph; the graph is retained so ``loss.backward()`` can
    still be called afterwards. Only psi receives gradients from the returned loss.

    Parameters
    ----------
    generator : nn.Module
        The synthetic-gradient generator psi.
    z : torch.Tensor, shape (B, T, 120)
        Encoder features in ``loss``'s graph.
    loss : torch.Tensor
        Scalar task loss.

    Returns
    -------
    torch.Tensor
        Scalar; only psi receives its gradients.
    """
    (grad,) = torch.autograd.grad(loss, z, retain_graph=True)
    return F.mse_loss(generator(z.detach()), grad.detach())


# ------------------------------------------------------------------------------ adaptation

def adapt(model: MetaRppg, x_unlabelled: torch.Tensor, steps: int = 1, lr: float = 1e-5, *,
          momentum: float = 0.9, weight_decay: float = 5e-4) -> MetaRppg:
    """Transductive test-time adaptation of ``model.encoder`` on unlabelled window(s), in place.

    Each step (spec §2.5, ``fewshot_test``): (i) synthetic-gradient step — z = theta(x),
    g = psi(z), g back-propagated as the upstream gradient of z into theta; (ii) prototype step —
    minimise L_proto(z, prototype) on the same window(s). One SGD optimiser (lr, momentum 0.9,
    weight decay 5e-4; the reference uses lr = 1e-5) over the encoder only; estimator, generator
    and prototype are not changed. The reference copies theta first and adapts the copy: pass
    ``copy.deepcopy(model)`` to keep the original.

    Stated by the spec: the two sub-steps, their order, the optimiser and its settings, that only
    theta changes, 1 step in the repo (the paper's pseudo-code reportedly uses 10). Inferred:
    repeating the (i)+(ii) pair ``steps`` times with one shared optimiser (momentum carried),
    that the prototype step uses the same optimiser, that psi runs in eval mode (its BatchNorm
    statistics are not updated from test windows) and that theta keeps the caller's train/eval
    mode.

    Parameters
    ----------
    model : MetaRppg
        Trained, with its prototype set.
    x_unlabelled : torch.Tensor, shape (B, 60, 3, S, S)
        Preprocessed windows (:func:`window_preprocess`) of the test subject.
    steps : int
        Adaptation steps.
    lr : float
        SGD learning rate.
    momentum : float
    weight_decay : float

    Returns
    -------
    MetaRppg
        ``model``, adapted in place.

    Raises
    ------
    RuntimeError
        If the prototype has never been set (:meth:`MetaRppg.update_prototype`).
    """
    model.check_input(x_unlabelled)
    if not bool(model.prototype_set):
        raise RuntimeError("prototype not set: call model.update_prototype(x) first")
    generator_was_training = model.generator.training
    model.generator.eval()
    opt = torch.optim.SGD(model.encoder.parameters(), lr=lr, momentum=momentum,
                          weight_decay=weight_decay)
    try:
        for _ in range(steps):
            # (i) synthetic-gradient step: psi's output is the upstream gradient of z
            opt.zero_grad()
            z = model.encoder(x_unlabelled)
            with torch.no_grad():
                g = model.generator(z.detach())
            z.backward(g)
            opt.step()
            # (ii) prototype step
            opt.zero_grad()
            z = model.encoder(x_unlabelled)
            proto_loss(z, model.prototype).backward()
            opt.step()
    finally:
        opt.zero_grad(set_to_none=True)
        model.generator.train(generator_was_training)
    return model


def _build(frames=None, size_px=None):
    if frames not in (None, WIN_SIZE):
        raise ValueError(f"meta-rppg takes {WIN_SIZE}-frame windows only (got frames={frames})")
    return MetaRppg(size=size_px or INPUT_SIZE)


def _forward(model: MetaRppg, x: torch.Tensor) -> torch.Tensor:
    prob, _, _ = model(window_preprocess(x))
    return prob


def _after_step(model: MetaRppg, x: torch.Tensor) -> None:
    # the prototype and carried LSTM state that test-time adaptation pulls towards (spec §2.4)
    model.update_prototype(window_preprocess(x))


def _adapt(model: MetaRppg, x: torch.Tensor, steps: int) -> None:
    adapt(model, window_preprocess(x), steps=steps)


#: the registry record (:mod:`rppg_models.families`). The prediction is the expected ordinal level
#: ``sum_k P(level > k)`` per frame (the ordinal head's mean), a PPG shape up to scale
FAMILY = Family(build=_build, forward=_forward, criterion=lambda prob, bvp: ordinal_loss(prob, ordinal_targets(bvp)),
                to_bvp=lambda prob: prob.sum(dim=-1), after_step=_after_step, adapt=_adapt,
                norm="raw", layout="NDCHW", frames=WIN_SIZE, size_px=INPUT_SIZE)
