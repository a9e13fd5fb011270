"""The training loop: a few CPU steps of each registered family from a real build, with a checkpoint."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import torch_threads

from rppg_models.train import FAMILIES, TrainConfig, fit


@pytest.fixture()
def two_threads():
    with torch_threads(2):
        yield


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_smoke_training_from_a_real_build(family, real_build, tmp_path, two_threads):
    _, cache, _ = real_build
    res = fit(family, cache, "ubfc", "ubfc", TrainConfig(steps=2, batch=1, seed=0), subjects=["subject12"],
              device="cpu", out=tmp_path, progress=False)
    assert len(res["losses"]) == 2 and all(math.isfinite(v) for v in res["losses"])
    ckpt = torch.load(res["checkpoint"], weights_only=False)
    assert ckpt["family"] == family and ckpt["build"]["key"] and ckpt["subjects"] == ["subject12"]
    model = FAMILIES[family]().build()
    model.load_state_dict(ckpt["state_dict"])


def test_unknown_family_names_the_known_ones(real_build):
    _, cache, _ = real_build
    with pytest.raises(KeyError, match="meta-rppg"):
        fit("nope", cache, "ubfc", "ubfc")


def test_train_command_runs_a_family(real_build, tmp_path, two_threads):
    from click.testing import CliRunner

    from rppg_prep.cli import main

    _, cache, _ = real_build
    res = CliRunner().invoke(main, ["train", "meta-rppg", "--cache", str(cache), "--steps", "1", "--batch", "1",
                                    "--device", "cpu", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "1 steps on cpu" in res.output and list(tmp_path.glob("meta-rppg-*.pt"))


def test_cnn3d_trains_on_synthetic_videos_and_reads_real_clips(real_build, two_threads):
    import rppg_prep
    from rppg_models import cnn3d
    from rppg_models.train import cnn3d_clip_hr, fit_cnn3d_synthetic

    model, losses = fit_cnn3d_synthetic(steps=2, batch=8, device="cpu")
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    _, cache, _ = real_build
    clip = rppg_prep.open_build(cache, "ubfc", "ubfc")["subject12"]["clips"]["clips"][0]
    hr = cnn3d_clip_hr(model, clip)
    assert hr == -1.0 or cnn3d.HR_CLASSES_BPM[0] <= hr <= cnn3d.HR_CLASSES_BPM[-1]
