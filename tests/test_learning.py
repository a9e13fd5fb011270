"""A model learns the pulse from the stored clips only when the labels line up with the pixels.

Meta-rPPG (32-px crops, ``temporal`` pixel normalisation: the CPU recipe) is fitted for 250 steps to
the 60-frame windows of the first 60 % of one real subject's clips, twice: with the labels as stored,
and with each clip's label circularly shifted by half a clip (80 of 160 frames), which keeps its
spectrum and breaks its alignment with the pixels. With aligned labels the training loss falls well
below its start and the model's waveform on the subject's last clips (never trained on, no overlap)
follows their PPG; with shifted labels it learns nothing that carries over. Subject3 is used because
there the shifted label is uncorrelated with the label (mean r over the windows ~0.01; at an HR whose
period divides 80 frames, half a clip would be nearly the same phase), which the test checks first.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import torch_threads

SUBJECT = "subject3"
STEPS = 250
BATCH = 2
LR = 2e-3
OFFSETS = (0, 50, 100)  # 60-frame windows of each 160-frame clip


@pytest.fixture(scope="module")
def windows(real_build):
    from rppg_models.data import ClipDataset

    _, cache, _ = real_build
    ds = ClipDataset(cache, "ubfc", "ubfc", subjects=[SUBJECT], norm="temporal", size_px=32, layout="NDCHW")
    items = [ds[i] for i in range(len(ds))]
    x = torch.stack([it[0] for it in items])
    y = torch.stack([it[1] for it in items])
    shifted = torch.roll(y, y.shape[1] // 2, dims=1)
    cut = lambda a: torch.cat([a[:, o:o + 60] for o in OFFSETS])  # noqa: E731
    clip = torch.arange(len(x)).repeat(len(OFFSETS))
    n_train = int(0.6 * len(x))
    train = torch.nonzero(clip < n_train).ravel()
    test = torch.nonzero(clip >= n_train + 3).ravel()  # clips overlap by 100 frames: leave a gap
    return cut(x), cut(y), cut(shifted), train, test


def _fit(x, y, train, test):
    """Train on ``train`` windows; return the training losses and the mean r of the waveform on ``test``."""
    from rppg_models import meta_rppg as mr
    from rppg_models.evaluate import predict_bvp

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = mr.MetaRppg(size=32)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    losses = []
    for _ in range(STEPS):
        idx = train[torch.randint(len(train), (BATCH,), generator=gen)]
        prob, _, _ = model(mr.window_preprocess(x[idx]))
        loss = mr.ordinal_loss(prob, mr.ordinal_targets(y[idx]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    model.eval()
    with torch.no_grad():
        pred = predict_bvp("meta-rppg", model, x[test]).numpy()
    r = np.nanmean([np.corrcoef(p, t)[0, 1] for p, t in zip(pred, y[test].numpy())])
    return np.array(losses), float(r)


def test_loss_falls_with_aligned_labels_and_not_with_shifted_ones(windows):
    x, y, shifted, train, test = windows
    assert x.shape[1:] == (60, 3, 32, 32) and len(train) >= 40 and len(test) >= 20
    r_shift = np.mean([np.corrcoef(a, b)[0, 1] for a, b in zip(y.numpy(), shifted.numpy())])
    assert abs(r_shift) < 0.1, r_shift  # the shifted label is not the label again
    with torch_threads(2):
        aligned, r_aligned = _fit(x, y, train, test)
        control, r_control = _fit(x, shifted, train, test)
    # measured (2 threads): aligned 23.6 -> 10.3 and r 0.59; shifted 23.4 -> 18.2 and r 0.13
    start = aligned[:10].mean()
    assert aligned[-25:].mean() < 0.6 * start, (start, aligned[-25:].mean())
    assert control[-25:].mean() > 0.7 * control[:10].mean(), (control[:10].mean(), control[-25:].mean())
    assert r_aligned > 0.4, r_aligned  # the pulse it learnt carries over to clips it never saw
    assert r_control < r_aligned - 0.3, (r_control, r_aligned)  # what it memorised does not
