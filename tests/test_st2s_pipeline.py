"""ST2S end to end on the embedded sample: stage 1, split nodes, stage 2; retraining re-keys only the split."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import torch_threads
from rppg_models import st2s_pipeline as P

from rppg_prep.manifest import open_build
from rppg_prep.cli import main
from rppg_prep.sample import write_ubfc_sample
from rppg_prep.store import open_node


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    out = tmp_path_factory.mktemp("st2s_root")
    write_ubfc_sample(out, n_subjects=3, duration_s=20.5, seed=9)
    return out


@pytest.fixture(scope="module")
def built(root, tmp_path_factory):
    cache = tmp_path_factory.mktemp("st2s_cache")
    assert CliRunner().invoke(main, ["build", "ubfc", "--root", str(root), "--cache", str(cache)]).exit_code == 0
    with torch_threads(1):
        data = {sid: P.load_subject(sid, n) for sid, n in open_build(cache, "ubfc", "ubfc").items()}
        yield cache, data


def _manifest(cache):
    return json.loads((cache / "ubfc.builds" / "ubfc.json").read_text())["subjects"]


def test_two_stage_runs_end_to_end(built):
    cache, data = built
    assert {d.shape for d in data.values()} == {(2, 29)}
    key, path = P.train_stage1(cache, "ubfc", "ubfc", P.Stage1Config(epochs=1), data=data)
    folds = sorted(p.name for p in path.glob("fold-*.pt"))
    assert folds == ["fold-subject1.pt", "fold-subject2.pt", "fold-subject3.pt"]
    assert json.loads((path / "meta.json").read_text())["build"]["pipeline"] == "ubfc"
    keys = P.write_split(cache, "ubfc", "ubfc", key, path, 5.0, data=data)
    for sid, k in keys.items():
        pred = open_node(cache / _manifest(cache)[sid]["nodes"]["st2s_pred"]["path"])["hr_bpm"][:]
        split = open_node(cache / _manifest(cache)[sid]["nodes"]["split"]["path"])
        assert pred.shape == (2, 29) and np.isfinite(pred).all()
        err = np.abs(pred - open_build(cache, "ubfc", "ubfc")[sid]["labels"]["st_hr_bpm"][:][:, None])
        np.testing.assert_array_equal(split["bad"][:], (err > 5.0).astype(np.int8))
    res = P.stage2(cache, "ubfc", "ubfc", keys, P.Stage2Config(epochs=2), data=data)
    for r in res.values():
        assert r["two_stage_bpm"].shape == (2,) and np.isfinite(r["two_stage_bpm"]).all()
        assert r["stage1_bpm"].shape == (2,) and 0.0 <= r["keep_fraction"] <= 1.0


def test_retraining_rekeys_the_split_and_nothing_upstream(built):
    cache, data = built
    k1, p1 = P.train_stage1(cache, "ubfc", "ubfc", P.Stage1Config(epochs=1), data=data)
    s1 = P.write_split(cache, "ubfc", "ubfc", k1, p1, 5.0, data=data)
    before = _manifest(cache)
    k2, p2 = P.train_stage1(cache, "ubfc", "ubfc", P.Stage1Config(epochs=1, seed=1), data=data)
    assert k2 != k1 and p2 != p1
    s2 = P.write_split(cache, "ubfc", "ubfc", k2, p2, 5.0, data=data)
    after = _manifest(cache)
    for sid in s1:
        assert s2[sid]["split"] != s1[sid]["split"] and s2[sid]["st2s_pred"] != s1[sid]["st2s_pred"]
        for stage in ("decode", "landmarks", "face", "clips", "st_map", "labels"):
            assert after[sid]["nodes"][stage] == before[sid]["nodes"][stage]
    # a new threshold re-keys only the split, not the predictions
    s3 = P.write_split(cache, "ubfc", "ubfc", k2, p2, 8.0, data=data)
    for sid in s1:
        assert s3[sid]["st2s_pred"] == s2[sid]["st2s_pred"] and s3[sid]["split"] != s2[sid]["split"]
    # the same config reuses the checkpoint
    assert P.train_stage1(cache, "ubfc", "ubfc", P.Stage1Config(epochs=1), data=data) == (k1, p1)


def test_train_cli_runs_both_stages(built):
    cache, _ = built
    res = CliRunner().invoke(main, ["train", "st2s", "--cache", str(cache), "--epochs", "1", "--stage2-epochs", "1"])
    assert res.exit_code == 0, res.output
    assert "two-stage MAE" in res.output and "subject3" in res.output
    res = CliRunner().invoke(main, ["train", "st2s-cnn", "--cache", str(cache), "--epochs", "1",
                                    "--layout", "paper"])
    assert res.exit_code == 0, res.output
    paper = [p for p in (cache / "models").glob("st2s-cnn-*") if json.loads((p / "meta.json").read_text())
             ["config"]["layout"] == "paper"]
    assert len(paper) == 1


def test_split_rule_just_below_at_and_above_the_threshold():
    from rppg_prep.stages.split import SplitParams, good_bad

    pred = np.array([[104.99, 105.0, 105.01, 94.99], [60.0, 70.0, 80.0, 90.0]])
    bad, err = good_bad(pred, np.array([100.0, np.nan]), 5.0)
    assert bad.tolist() == [[0, 0, 1, 1], [1, 1, 1, 1]]  # a NaN label is bad
    np.testing.assert_allclose(err[0], [4.99, 5.0, 5.01, 5.01], atol=1e-4)
    with pytest.raises(ValueError):
        SplitParams(threshold_bpm=0.0)


def test_a_rebuild_keeps_the_st2s_nodes_and_gc_keeps_their_files(built, root):
    """The manifest is owned by one module: a later build of the pipeline must not forget derived nodes."""
    cache, data = built
    key, path = P.train_stage1(cache, "ubfc", "ubfc", P.Stage1Config(epochs=1), data=data)
    keys = P.write_split(cache, "ubfc", "ubfc", key, path, 5.0, data=data)
    before = _manifest(cache)
    for args in (["build", "ubfc"], ["build", "ubfc", "--force", "labels"], ["gc"]):
        res = CliRunner().invoke(main, [*args, "--cache", str(cache)] + (["--root", str(root)] if args[0] == "build" else []))
        assert res.exit_code == 0, res.output
        after = _manifest(cache)
        for sid, k in keys.items():
            assert after[sid]["nodes"]["st2s_pred"] == before[sid]["nodes"]["st2s_pred"]
            assert after[sid]["nodes"]["split"]["key"] == k["split"]
            assert (cache / after[sid]["nodes"]["split"]["path"]).is_dir()
    # once an input of the derived nodes changes they are no longer the build's: dropped, then collected
    sid = next(iter(keys))
    man_path = cache / "ubfc.builds" / "ubfc.json"
    man = json.loads(man_path.read_text())
    man["subjects"][sid]["nodes"]["st2s_pred"]["inputs"]["labels"] = "0" * 64
    man_path.write_text(json.dumps(man))
    assert CliRunner().invoke(main, ["build", "ubfc", "--root", str(root), "--cache", str(cache)]).exit_code == 0
    after = _manifest(cache)
    assert "st2s_pred" not in after[sid]["nodes"] and "split" not in after[sid]["nodes"]
    assert all("split" in after[s]["nodes"] for s in keys if s != sid)


def _synthetic_subject(name: str, hrs, rng) -> P.SubjectData:
    from rppg_models import st2s
    from test_st2s_model import pulse_st_images

    segs = [pulse_st_images(h, rng) for h in hrs]  # each (3, 32, 900, 3)
    images = np.concatenate(segs)
    r = len(segs[0])
    return P.SubjectData(subject=name, images=st2s.st_to_tensor(images, "time"), hog=st2s.hog_features(images),
                         label_bpm=np.repeat(np.asarray(hrs, np.float32), r),
                         segment=np.repeat(np.arange(len(hrs)), r), shape=(len(hrs), r))


def test_evaluate_split_chooses_on_validation_and_scores_test():
    rng = np.random.default_rng(11)
    names = [f"s{i}" for i in range(6)]
    with torch_threads(1):
        data = {n: _synthetic_subject(n, rng.uniform(60, 120, 2), rng) for n in names}
        res = P.evaluate_split("unused", "ubfc", "ubfc", train=names[:4], val="s4", test=["s5"], seed=3,
                               cfg=P.Stage1Config(epochs=30, strip_step=2, bias_init=True), epochs=3,
                               stage2=P.Stage2Config(epochs=2), thresholds_bpm=(5.0, 200.0), data=data)
    json.dumps(res)  # JSON-able
    assert res["n"] == 2 and res["train"] == names[:4] and res["val"] == ["s4"] and res["test"] == ["s5"]
    assert 1 <= res["epoch"] <= 3 and len(res["val_curve"]) == 3
    assert res["val_mae"] == min(res["val_curve"]) == res["val_curve"][res["epoch"] - 1]
    assert res["config"]["seed"] == 3 and res["config"]["layout"] == "time"
    segs = res["segments"]
    assert [(s["subject"], s["segment"]) for s in segs] == [("s5", 0), ("s5", 1)]
    ref, pred = np.array([s["ref"] for s in segs]), np.array([s["pred"] for s in segs])
    np.testing.assert_allclose(ref, data["s5"].label_bpm[::3], rtol=1e-6)
    assert res["mae"] == pytest.approx(np.abs(pred - ref).mean())
    train_hr = np.concatenate([data[n].label_bpm[::3] for n in names[:4]])
    const = res["constant_segments"]
    assert const["hr_bpm"] == pytest.approx(train_hr.mean(), rel=1e-6)
    assert const["mae"] == pytest.approx(np.abs(ref - train_hr.mean()).mean(), rel=1e-6)
    two = res["two_stage"]
    # 200 bpm makes every training image good: one class, no classifier; 5 bpm is tried
    assert set(two["val_grid"]) <= {"5"}
    if two["fallback"]:
        assert two["threshold_bpm"] is None and two["kept_fraction"] == 1.0 and two["mae"] == res["mae"]
    else:
        assert two["threshold_bpm"] == 5.0 and two["val_mae"] == two["val_grid"]["5"]
    with pytest.raises(ValueError, match="disjoint"):
        P.evaluate_split("unused", "ubfc", "ubfc", train=names[:4], val="s3", test=["s5"], data=data)
    with pytest.raises(ValueError, match="layout"):
        P.evaluate_split("unused", "ubfc", "ubfc", train=names[:4], val="s4", test=["s5"], data=data,
                         cfg=P.Stage1Config(layout="paper"))
