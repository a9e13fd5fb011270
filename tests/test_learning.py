"""A model learns the pulse from the stored clips only when the labels line up with the pixels.

STGNet (reduced to 16-px crops, the CPU recipe's input) is fitted to one real subject's clips twice:
with the labels as stored, and with each clip's label circularly shifted by half a clip, which keeps
its spectrum and breaks its alignment with the pixels. Subject3 is used because there the shifted
label is uncorrelated with the label (mean per-clip r ~0.0; at an HR whose period divides 80 frames,
as subject8's, half a clip would be nearly the same phase), which the test checks first.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import torch_threads

SUBJECT = "subject3"
STEPS = 120


@pytest.fixture(scope="module")
def subject_clips(real_build):
    from rppg_models.data import ClipDataset

    _, cache, _ = real_build
    ds = ClipDataset(cache, "ubfc", "ubfc", subjects=[SUBJECT], norm="temporal", size_px=16)
    items = [ds[i] for i in range(len(ds))]
    return torch.stack([it[0] for it in items]), torch.stack([it[1] for it in items])


def _fit(x: torch.Tensor, bvp: torch.Tensor, steps: int = STEPS) -> list[float]:
    from rppg_models.stgnet import Stgnet, neg_pearson_loss

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = Stgnet(frames=x.shape[2], size=16)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(steps):
        idx = torch.randint(len(x), (4,), generator=gen)
        loss = neg_pearson_loss(model(x[idx]), bvp[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def test_loss_falls_with_aligned_labels_and_not_with_shifted_ones(subject_clips):
    x, bvp = subject_clips
    assert x.shape[1:] == (3, 160, 16, 16) and len(x) > 20
    shifted = torch.roll(bvp, bvp.shape[1] // 2, dims=1)
    r_shift = np.mean([np.corrcoef(a, b)[0, 1] for a, b in zip(bvp.numpy(), shifted.numpy())])
    assert abs(r_shift) < 0.1, r_shift  # the shifted label is not the label again
    with torch_threads(2):
        aligned = _fit(x, bvp)
        control = _fit(x, shifted)
    start, end = np.mean(aligned[:10]), np.mean(aligned[-20:])
    assert start > 0.9  # 1 - Pearson r: chance is 1
    assert end < start - 0.2, (start, end)
    assert np.mean(control[-20:]) > 0.9, np.mean(control[-20:])
