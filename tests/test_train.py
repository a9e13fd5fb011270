"""The training loop: a few CPU steps of each registered family from a real build, with a checkpoint."""

from __future__ import annotations

import math

import pytest
import torch

from rppg_models.train import FAMILIES, TrainConfig, fit


@pytest.fixture()
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_smoke_training_from_a_real_build(family, real_build, tmp_path, one_thread):
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


def test_train_command_runs_a_family(real_build, tmp_path, one_thread):
    from click.testing import CliRunner

    from rppg_prep.cli import main

    _, cache, _ = real_build
    res = CliRunner().invoke(main, ["train", "meta-rppg", "--cache", str(cache), "--steps", "1", "--batch", "1",
                                    "--device", "cpu", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "1 steps on cpu" in res.output and list(tmp_path.glob("meta-rppg-*.pt"))
