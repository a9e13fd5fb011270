"""Tests of rppg_models.ienet: IENet (RGB + NIR video Swin, MDEF fusion, FEE heart rate)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import torch_threads
from rppg_models import ienet

FULL_INPUT = (1, 3, 128, 64, 64)  # models.md 4.1: T = 128 frames of 64x64 (batch 1: CPU time)
SMALL = dict(embed_dim=12, depths=(2, 2, 2), num_heads=(1, 2, 4), drop_path_rate=0.0, rppg_len=32)  # same code path
SMALL_INPUT = (2, 3, 32, 32, 32)  # stage 1 maps 8x8 (> window 7: padded + shifted), stage 2-3 4x4 (shrunk)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def full_model() -> ienet.Ienet:
    torch.manual_seed(0)
    return ienet.Ienet().eval()


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def pulse(n: int, bpm: float, fs: float = 30.0, batch: int = 1) -> torch.Tensor:
    return torch.sin(2 * math.pi * bpm / 60 * torch.arange(n) / fs).repeat(batch, 1)


# ------------------------------------------------------------------------------ parameter count

def test_parameter_count_in_the_parts_the_reference_forward_uses(full_model):
    # models.md 4.2 per-branch breakdown [RUN on the reference]
    b = full_model.rgb_backbone
    parts = [b.patch_embed, b.stages[0].blocks, b.stages[0].merge, b.stages[1].blocks, b.stages[1].merge,
             b.stages[2], b.norm, b.upsample]
    assert [n_params(p) for p in parts] == [9_312, 226_722, 74_496, 895_812, 296_448, 7_122_192, 768, 443_520]
    assert n_params(b) == ienet.CET_BRANCH_PARAMS == 9_069_270
    assert n_params(full_model.head) == 385
    # two CET branches + shared rPPG head = 18,138,925 (models.md 4.4) -> "18.1 M"
    used = full_model.reference_used_parameters()
    assert used == 2 * 9_069_270 + 385 == ienet.REFERENCE_USED_PARAMS == 18_138_925
    assert round(used / 1e6, 1) == 18.1
    # FEE (train_hr.py's two Conv1d + BN1d) is the only other part: 48 + 32 + 48 + 2
    assert n_params(full_model.fee) == 130
    assert n_params(full_model) == 18_138_925 + 130


def test_parameter_count_variants():
    assert ienet.Ienet(use_nir=False).reference_used_parameters() == 9_069_270 + 385
    # the reference instantiates all three context-enhance sizes in each of 16 blocks: 18,611,712
    per_block_all_sizes = sum(n_params(ienet.ContextEnhance(c)) for c in (96, 192, 384))
    assert 16 * per_block_all_sizes == 18_611_712
    # context_enhance=True builds only the matching width: 2 x (2*96-size + 2*192-size + 4*384-size)
    ce = ienet.Ienet(context_enhance=True).reference_used_parameters() - 18_138_925
    assert ce == 2 * (2 * 55_584 + 2 * 221_760 + 4 * 885_888)


# ------------------------------------------------------------------------------ full-size forward

def test_full_forward_rgb_and_nir(full_model):
    torch.manual_seed(1)
    rgb, nir = torch.rand(FULL_INPUT), torch.rand(FULL_INPUT)
    feats = []
    hook = full_model.rgb_backbone.register_forward_hook(lambda m, i, o: feats.append(o.shape))
    try:
        with torch.no_grad():
            rgb_rppg, nir_rppg, fused = full_model(rgb, nir)
    finally:
        hook.remove()
    assert feats == [torch.Size([1, 384, 128, 4, 4])]  # models.md 4.2
    for out in (rgb_rppg, nir_rppg, fused):
        assert out.shape == (1, 128) and torch.isfinite(out).all()
    assert not torch.allclose(fused, rgb_rppg)


def test_full_forward_rgb_only(full_model):
    torch.manual_seed(2)
    with torch.no_grad():
        rgb_rppg, nir_rppg, fused = full_model(torch.rand(FULL_INPUT))
    assert rgb_rppg.shape == (1, 128) and nir_rppg is None and fused is rgb_rppg


# ------------------------------------------------------------------------------ reduced config

@pytest.mark.parametrize("use_nir", [True, False])
def test_one_adam_step_lowers_rppg_loss(use_nir):
    torch.manual_seed(0)
    model = ienet.Ienet(use_nir=use_nir, **SMALL).train()
    rgb, nir = torch.rand(SMALL_INPUT), torch.rand(SMALL_INPUT) if use_nir else None
    label = pulse(32, 90.0, batch=2) + 0.1 * torch.randn(2, 32)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=5e-5)  # reference optimiser
    before = ienet.rppg_loss(model(rgb, nir)[2], label)
    opt.zero_grad()
    before.backward()
    opt.step()
    with torch.no_grad():
        after = ienet.rppg_loss(model(rgb, nir)[2], label)
    assert torch.isfinite(before) and after < before


def test_small_forward_inputs():
    torch.manual_seed(0)
    model = ienet.Ienet(**SMALL).eval()
    rgb, nir = torch.rand(SMALL_INPUT), torch.rand(SMALL_INPUT)
    with torch.no_grad():
        out3 = model(rgb, nir)
        out1 = model(rgb, nir[:, :1])  # 1-channel NIR is replicated to 3
        ref1 = model(rgb, nir[:, :1].repeat(1, 3, 1, 1, 1))
    assert all(o.shape == (2, 32) for o in out3)
    assert torch.allclose(out1[2], ref1[2])
    with pytest.raises(ValueError):
        model(rgb, torch.rand(2, 3, 16, 32, 32))
    with pytest.raises(ValueError):
        model(rgb[0])
    with pytest.raises(ValueError):
        ienet.Ienet(use_nir=False, **SMALL)(rgb, nir)


def test_context_enhance_option_runs():
    torch.manual_seed(0)
    model = ienet.Ienet(context_enhance=True, **SMALL).eval()
    with torch.no_grad():
        outs = model(torch.rand(SMALL_INPUT), torch.rand(SMALL_INPUT))
    assert all(o.shape == (2, 32) and torch.isfinite(o).all() for o in outs)


def test_estimate_hr_stage_b():
    torch.manual_seed(0)
    model = ienet.Ienet(**SMALL).train()
    rgb, nir = torch.rand(SMALL_INPUT), torch.rand(SMALL_INPUT)
    refined, hr = model.estimate_hr(rgb, nir, backbone_grad=False)  # reference: first 40 epochs
    assert refined.shape == (2, 32) and hr.shape == (2,)
    assert ((hr >= 40) & (hr <= 179)).all()
    ienet.hr_loss(hr, torch.tensor([[70.0], [95.0]])).backward()
    assert all(p.grad is None for p in model.rgb_backbone.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.fee.parameters())


# ------------------------------------------------------------------------------ pieces

@pytest.mark.parametrize("bpm", [50.0, 72.0, 120.0, 150.0])
def test_fee_spectrum_reads_hr_of_a_pulse(bpm):
    psd = ienet.normalised_psd(pulse(128, bpm))
    assert psd.shape == (1, 140) and psd.max().item() == 1.0
    assert ienet.frequency_mask_hr(psd).item() == pytest.approx(bpm, abs=1.0)


def test_fee_tied_peak_bins_give_their_mean_rate():
    # Short signals interpolate many 1-bpm bins; two can tie at the peak. Summing them (the
    # reference) would read 96 + 97 = 193 bpm, outside the 40-179 band.
    psd = torch.zeros(2, 140)
    psd[0, 56] = psd[0, 57] = 1.0
    psd[1, 10] = 1.0
    psd[1, 11] = 0.999
    assert ienet.frequency_mask_hr(psd).tolist() == pytest.approx([96.5, 50.0])


def test_fee_gradient_detached_max_vs_reference():
    torch.manual_seed(0)
    r = torch.randn(4, 128)
    grads = {}
    for detach in (True, False):
        torch.manual_seed(0)
        fee = ienet.FrequencyEnhancedEstimator(detach_max=detach)
        _, hr = fee(r)
        ienet.hr_loss(hr, torch.full((4,), 80.0)).backward()
        grads[detach] = max(p.grad.abs().max().item() for p in fee.parameters())
    assert grads[True] > 1e-2  # fix: the kept bin carries the gradient
    assert grads[False] < 1e-4  # the reference's own-max normalisation: (numerically) zero gradient


def test_losses():
    x = pulse(128, 80.0, batch=2) + 0.05 * torch.randn(2, 128)
    assert ienet.neg_pearson(x, x).item() == pytest.approx(0.0, abs=1e-6)
    assert ienet.neg_pearson(-x, x).item() == pytest.approx(0.0, abs=1e-6)  # sign-agnostic 1 - |r|
    assert ienet.frequency_loss(x, x).item() == pytest.approx(0.0, abs=1e-5)
    far = ienet.frequency_loss(pulse(128, 150.0, batch=2), x)
    assert far > 0.5  # the fixed loss grows with spectral distance ...
    assert ienet.frequency_loss(pulse(128, 150.0, batch=2), x, reciprocal=True) < ienet.frequency_loss(
        x, x, reciprocal=True)  # ... the reference's 1/(d + 1e-8) rewards it
    assert ienet.rppg_loss(x, x).item() == pytest.approx(0.0, abs=1e-5)
    assert ienet.hr_loss(torch.tensor([70.0, 90.0]), torch.tensor([[80.0], [80.0]])).item() == pytest.approx(4.0)


def test_mdef_fusion():
    torch.manual_seed(0)
    f = torch.randn(2, 6, 4, 3, 3)
    # equal modalities: each weight ~1/2 in both branches -> F_sp + F_ch ~ 2F
    assert torch.allclose(ienet.mdef_fusion(f, f), 2 * f, atol=1e-4)
    # a stronger modality gets weight e^s / (e^s + 1) > 1/2 in both branches -> ratio in (1, 2)
    ratio = ienet.mdef_fusion(5 * f, torch.zeros_like(f)) / (5 * f)
    assert (ratio > 1).all() and (ratio < 2).all()


def test_relative_position_index_for_shrunk_window():
    full = ienet.relative_position_index((2, 7, 7), (2, 7, 7))
    assert full.shape == (98, 98) and full.min() == 0 and full.max() == 506
    small = ienet.relative_position_index((2, 4, 4), (2, 7, 7))
    assert small.shape == (32, 32) and (small.diagonal() == 253).all()  # zero offset = centre row
    assert not torch.equal(small, full[:32, :32])  # the reference's slice pairs wrong offsets
    # the token pair (d, h, w) = (0, 0, 0) -> (1, 3, 3) has the same offset in both windows
    assert small[0, 16 + 3 * 4 + 3] == full[0, 49 + 3 * 7 + 3]


def test_shifted_window_mask_separates_regions():
    mask = ienet.shifted_window_mask((4, 8, 8), (2, 4, 4), (1, 2, 2))
    assert mask.shape == (2 * 2 * 2, 32, 32)
    assert (mask[0] == 0).all()  # first window is one contiguous region
    assert (mask[-1] != 0).any() and torch.equal(mask, mask.transpose(1, 2))
    assert ienet.shifted_window_mask((4, 8, 8), (2, 4, 4), (0, 0, 0)).abs().sum() == 0
