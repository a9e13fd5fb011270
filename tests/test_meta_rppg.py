"""Tests of rppg_models.meta_rppg: encoder, BiLSTM ordinal estimator, synthetic gradients, adaptation."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import torch_threads
from rppg_models import meta_rppg as mr


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    with torch_threads(1):
        yield


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def window_batch(b: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 60, 3, 64, 64, generator=g) - 0.5


def sine_ppg(b: int = 2) -> torch.Tensor:
    t = torch.arange(60, dtype=torch.float64) / 30.0
    return torch.stack([torch.sin(2 * math.pi * (1.0 + 0.3 * i) * t + i) for i in range(b)])


# ------------------------------------------------------------------------------ architecture

def test_parameter_counts_match_spec():
    torch.manual_seed(0)
    model = mr.MetaRppg()
    assert n_params(model.encoder) == 175_848
    assert n_params(model.estimator) == 184_400
    assert n_params(model.estimator.lstm) == 174_720
    assert n_params(model.estimator.fc) == 9_680
    assert n_params(model.generator) == 19_560
    assert n_params(model) == 379_808
    # prototype and carried LSTM state are buffers, not parameters
    assert model.prototype.shape == (120,) and model.estimator.h0.shape == (4, 60)


def test_forward_shapes_and_ranges():
    torch.manual_seed(0)
    model = mr.MetaRppg()
    with torch.no_grad():
        prob, decision, z = model(window_batch())
    assert prob.shape == (2, 60, 40) and decision.shape == (2, 60) and z.shape == (2, 60, 120)
    assert 0.0 <= float(prob.min()) and float(prob.max()) <= 1.0
    assert decision.dtype == torch.int64
    assert 0 <= int(decision.min()) and int(decision.max()) <= 40
    assert torch.equal(decision, (prob > 0.5).sum(-1))
    assert model.generator(z).shape == (2, 60, 120)


def test_forward_rejects_wrong_shape():
    with pytest.raises(ValueError, match="60, 3, 64, 64"):
        mr.MetaRppg()(torch.rand(1, 3, 60, 64, 64))


def test_encoder_is_per_frame():
    torch.manual_seed(0)
    enc = mr.Encoder().eval()
    x = window_batch(1)
    x2 = x.clone()
    x2[:, 7] += 1.0
    with torch.no_grad():
        diff = (enc(x2) - enc(x)).abs().amax(dim=(0, 2))
    assert float(diff[7]) > 0 and float(diff[torch.arange(60) != 7].max()) == 0.0


def test_ordinal_head_does_not_clip_negative_logits():
    # reference bug: clamping logits to [1e-8, 1e8] made any pair of negative logits p = 0.5
    logits = torch.tensor([-3.0, -1.0] * 40).reshape(1, 1, 80)
    prob, decision = mr.ordinal_head(logits)
    assert torch.allclose(prob, torch.sigmoid(torch.tensor(2.0)).expand(1, 1, 40))
    assert int(decision) == 40
    prob, decision = mr.ordinal_head(-logits)
    assert float(prob.max()) < 0.5 and int(decision) == 0


# ------------------------------------------------------------------------------ targets / losses

def test_ordinal_targets_on_sine():
    ppg = sine_ppg()
    levels = mr.ordinal_targets(ppg)
    assert levels.shape == (2, 60) and levels.dtype == torch.int64
    for p, lv in zip(ppg, levels):
        assert int(lv.min()) == 0 and int(lv.max()) == 39
        assert int(lv[p.argmin()]) == 0 and int(lv[p.argmax()]) == 39
        # monotone in the signal
        order = p.argsort()
        assert bool((lv[order].diff() >= 0).all())
    # a 40-step ramp hits every level exactly; scale and offset do not matter
    ramp = 5.0 + 3.0 * torch.arange(40.0)
    assert torch.equal(mr.ordinal_targets(ramp), torch.arange(40))
    # flat window: zeros, not NaN
    assert torch.equal(mr.ordinal_targets(torch.ones(1, 60)), torch.zeros(1, 60, dtype=torch.int64))


def test_ordinal_loss_minimum_and_offset():
    levels = mr.ordinal_targets(sine_ppg())
    k = torch.arange(40)
    perfect = (k <= levels.unsqueeze(-1)).double()
    assert float(mr.ordinal_loss(perfect, levels)) < 1e-6
    # reference convention: a perfect model decodes to level + 1
    assert torch.equal((perfect > 0.5).sum(-1), levels + 1)
    # uniform 0.5 -> 40 * log 2 per frame
    half = torch.full((2, 60, 40), 0.5)
    assert math.isclose(float(mr.ordinal_loss(half, levels)), 40 * math.log(2), rel_tol=1e-6)


def test_one_adam_step_lowers_ordinal_loss():
    torch.manual_seed(0)
    model = mr.MetaRppg()
    x, levels = window_batch(1), mr.ordinal_targets(sine_ppg(1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    prob, _, _ = model(x)
    before = mr.ordinal_loss(prob, levels)
    opt.zero_grad()
    before.backward()
    opt.step()
    with torch.no_grad():
        after = mr.ordinal_loss(model(x)[0], levels)
    assert float(after) < float(before.detach())


def test_synthetic_gradient_loss_trains_generator_only():
    torch.manual_seed(0)
    model = mr.MetaRppg()
    model.update_prototype(window_batch(1, seed=1))
    prob, _, z = model(window_batch(1))
    loss = mr.ordinal_loss(prob, mr.ordinal_targets(sine_ppg(1))) + mr.proto_loss(z, model.prototype)
    l_syn = mr.synthetic_gradient_loss(model.generator, z, loss)
    l_syn.backward()
    assert all(p.grad is not None for p in model.generator.parameters())
    assert all(p.grad is None for p in model.encoder.parameters())
    loss.backward()  # graph retained
    assert all(p.grad is not None for p in model.encoder.parameters())


# ------------------------------------------------------------------------------ prototype / adapt

def test_update_prototype_running_average():
    torch.manual_seed(0)
    model = mr.MetaRppg().eval()
    x1, x2 = window_batch(1, seed=1), window_batch(1, seed=2)
    model.update_prototype(x1)
    z1 = model.encoder(x1).mean(dim=(0, 1))
    assert torch.allclose(model.prototype, z1, atol=1e-6) and bool(model.prototype_set)
    h1 = model.estimator.h0.clone()
    assert float(h1.abs().max()) > 0
    model.update_prototype(x2)
    z2 = model.encoder(x2).mean(dim=(0, 1))
    assert torch.allclose(model.prototype, 0.8 * z1 + 0.2 * z2, atol=1e-6)
    assert not torch.equal(model.estimator.h0, h1)


def test_adapt_changes_only_encoder():
    torch.manual_seed(0)
    model = mr.MetaRppg()
    x = window_batch(1)
    model.update_prototype(window_batch(1, seed=1))
    before = copy.deepcopy(model.state_dict())
    out = mr.adapt(model, x, steps=2, lr=1e-3)
    assert out is model
    after = model.state_dict()
    enc_changed = [n for n in before if n.startswith("encoder.") and "weight" in n
                   and not torch.equal(before[n], after[n])]
    assert enc_changed, "adapt did not change the encoder weights"
    for n in before:
        if n.startswith(("estimator.", "generator.")) or n.startswith("prototype"):
            assert torch.equal(before[n], after[n]), n
    assert model.generator.training  # mode restored


def test_adapt_requires_prototype():
    with pytest.raises(RuntimeError, match="prototype"):
        mr.adapt(mr.MetaRppg(), window_batch(1), steps=1, lr=1e-5)


# ------------------------------------------------------------------------------ preprocessing

def test_window_preprocess_masked_mean():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (2, 60, 3, 64, 64), generator=g, dtype=torch.uint8)
    mask = torch.zeros(2, 60, 3, 64, 64, dtype=torch.uint8)
    mask[..., 16:48, 20:44] = 255
    x_copy = x.clone()
    y = mr.window_preprocess(x, mask)
    assert torch.equal(x, x_copy) and y.dtype == torch.float32  # not in place
    sel = mask > 0
    for b in range(2):
        for c in range(3):
            inside = y[b, :, c][sel[b, :, c]]
            assert abs(float(inside.mean())) < 1e-3
            offset = x[b, :, c].float() - y[b, :, c]  # one constant per window and channel
            assert float(offset.max() - offset.min()) < 1e-3
    # 0/1 mask is the same as 0/255; no mask = plain per-window channel mean
    assert torch.allclose(mr.window_preprocess(x, mask // 255), y)
    y0 = mr.window_preprocess(x[0])
    assert torch.allclose(y0.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-3)
    with pytest.raises(ValueError, match="mask"):
        mr.window_preprocess(x, torch.zeros_like(mask))


def test_reduced_crop_keeps_every_parameter():
    full, small = mr.MetaRppg(), mr.MetaRppg(size=32)
    assert sum(p.numel() for p in small.parameters()) == sum(p.numel() for p in full.parameters()) == 379_808
    prob, decision, z = small(mr.window_preprocess(torch.rand(2, 60, 3, 32, 32)))
    assert prob.shape == (2, 60, 40) and z.shape == (2, 60, 120)
    with pytest.raises(ValueError, match="expected"):
        small(torch.rand(1, 60, 3, 64, 64))
    with pytest.raises(ValueError, match=">= 32"):
        mr.MetaRppg(size=16)
