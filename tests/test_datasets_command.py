"""`rppg-prep datasets` lists every loader; listing them imports no heavy reader."""

from __future__ import annotations

import subprocess
import sys

from click.testing import CliRunner

from rppg_prep.cli import main
from rppg_prep.datasets import LOADERS, get_loader


def test_datasets_lists_every_loader_with_its_layout_and_pipeline():
    res = CliRunner().invoke(main, ["datasets"], terminal_width=200)
    assert res.exit_code == 0, res.output
    for name in LOADERS:
        assert name in res.output and f"pipelines/{name}.yaml" in res.output
    one = CliRunner().invoke(main, ["datasets", "pure"], terminal_width=200)
    assert one.exit_code == 0 and "/FullPackage" in one.output and "ubfc-phys" not in one.output
    bad = CliRunner().invoke(main, ["datasets", "nope"])
    assert bad.exit_code != 0 and "known:" in bad.output


def test_every_loader_has_the_contract():
    for name in LOADERS:
        mod = get_loader(name)
        assert mod.NAME == name and mod.LAYOUT and callable(mod.find_subjects) and callable(mod.read_truth)


def test_listing_loaders_imports_no_heavy_reader():
    code = ("import sys; from rppg_prep.datasets import LOADERS, get_loader; [get_loader(n) for n in LOADERS]; "
            "heavy = [m for m in ('h5py', 'torch', 'pyedflib', 'scipy.io', 'mediapipe', 'zarr') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_sample_synthetic_writes_a_buildable_dataset(tmp_path):
    from rppg_prep.datasets import synthetic

    res = CliRunner().invoke(main, ["sample", "synthetic", "--out", str(tmp_path), "--videos-per-class", "1"])
    assert res.exit_code == 0, res.output
    subs = synthetic.find_subjects(tmp_path)
    assert len(subs) == 75 and subs[0].id == "c00" and subs[0].fmt == "55.0"
    truth = synthetic.read_truth(subs[0])
    assert truth.ppg.shape == (60,) and truth.frame_locked
