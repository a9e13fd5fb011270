"""Whole-clip prediction from fixed-length model windows (models/evaluate.predict_clip)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rppg_models import evaluate as ev


@pytest.mark.parametrize("length,frames", [(160, 60), (160, 128), (160, 160), (150, 60)])
def test_windows_cover_the_clip_and_keep_the_pulse(monkeypatch, length, frames):
    t = torch.arange(length, dtype=torch.float32) / 30.0
    pulse = torch.sin(2 * np.pi * 1.3 * t)
    x = (pulse[None, :, None] * torch.ones(2, length, 3)).unsqueeze(-1).unsqueeze(-1)  # (B, L, C, 1, 1)
    seen = []

    def fake(family, model, window):  # each window's "BVP" is its own mean pixel, at a per-window scale
        seen.append(window.shape[1])
        return 5.0 * window.mean(dim=(2, 3, 4)) + 7.0

    monkeypatch.setattr(ev, "predict_bvp", fake)
    out = ev.predict_clip("meta-rppg", None, x, frames, t_axis=1)
    assert out.shape == (2, length) and set(seen) == {frames}
    assert len(seen) == -(-length // frames)  # windows every `frames`, one more ending at the clip end
    assert np.corrcoef(out[0].numpy(), pulse.numpy())[0, 1] > 0.99


def test_a_clip_shorter_than_the_model_window_is_refused():
    with pytest.raises(ValueError, match="shorter"):
        ev.predict_clip("stgnet", None, torch.zeros(1, 3, 100, 8, 8), 160, t_axis=2)


class _Payload:
    """A pickle that would create a file when unpickled (what a crafted checkpoint could do instead)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import pathlib

        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def test_a_checkpoint_that_runs_code_is_refused(tmp_path):
    import torch

    from rppg_models.evaluate import load_checkpoint

    marker = tmp_path / "ran"
    bad = tmp_path / "stgnet-crafted.pt"
    torch.save({"family": "stgnet", "state_dict": {}, "x": _Payload(str(marker))}, bad)
    with pytest.raises(ValueError, match="not loaded"):
        load_checkpoint(bad)
    assert not marker.exists()
