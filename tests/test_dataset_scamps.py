"""SCAMPS: a miniature of real MATLAB v7.3 files (HDF5 behind a MATLAB user block), built end to end."""

from __future__ import annotations

import subprocess
import sys
import time

import cv2
import h5py
import numpy as np
import pytest

from miniature import build_and_check, build_fails_naming, frames_rgb, recording
from rppg_prep.datasets import _mat73, scamps
from rppg_prep.errors import DatasetLayoutError, GroundTruthError, VideoDecodeError

HR = {"P000002": 66.0, "P000010": 96.0}
_CLASS = {"float64": "double", "float32": "single", "uint8": "uint8", "bool": "logical"}


def write_v73(path, variables: dict, *, compress: bool = True) -> None:
    """Write ``variables`` as MATLAB ``save -v7.3`` does: HDF5 after a 512-byte MATLAB header.

    Arrays are given in MATLAB order and stored column-major, i.e. with the axes reversed as h5py
    shows them; 1-D arrays are MATLAB column vectors (n x 1). Strings become MATLAB char arrays.
    """
    with h5py.File(path, "w", userblock_size=512) as f:
        for name, value in variables.items():
            if isinstance(value, str):
                ds = f.create_dataset(name, data=np.array([[ord(c) for c in value]], np.uint16).T)
                ds.attrs["MATLAB_class"] = np.bytes_("char")
                ds.attrs["MATLAB_int_decode"] = np.int32(2)
                continue
            arr = np.asarray(value)
            if arr.ndim == 1:
                arr = arr[:, None]
            stored = np.ascontiguousarray(arr.T)
            big = compress and stored.size > 4096
            ds = f.create_dataset(name, data=stored.astype(np.uint8) if arr.dtype == bool else stored,
                                  chunks=True if big else None, compression="gzip" if big else None,
                                  compression_opts=1 if big else None)
            ds.attrs["MATLAB_class"] = np.bytes_(_CLASS[str(arr.dtype)])
            if arr.dtype == bool:
                ds.attrs["MATLAB_int_decode"] = np.int32(1)
    stamp = time.strftime("%a %b %d %H:%M:%S %Y", time.gmtime(0))
    text = f"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: {stamp} HDF5 schema 1.00 .".ljust(116)
    with open(path, "r+b") as fh:  # the user block is reserved by HDF5 and free for MATLAB's header
        fh.write(text.encode("ascii") + b" " * 8 + b"\x00\x02" + b"IM")


def face_crop(frames: np.ndarray, side: int = 240) -> np.ndarray:
    """Centre a square on the face of FaceRecording frames (T, 480, 640, 3) and resize it to side x side."""
    return np.stack([cv2.resize(f[40:340, 180:480], (side, side), interpolation=cv2.INTER_AREA) for f in frames])


def _write_scamps(path, video_u8: np.ndarray, ppg: np.ndarray, *, compress: bool) -> None:
    # Xsub is MATLAB T x H x W x C (h5py: C x W x H x T), floats in [0, 1]; d_ppg is a T x 1 column.
    # Stored as single here to keep the files small (the MATLAB class does not change the reading)
    write_v73(path, {"Xsub": (video_u8 / 255.0).astype(np.float32), "d_ppg": ppg,
                     "d_br": np.sin(np.arange(len(ppg)) / 30.0)}, compress=compress)


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    root = tmp_path_factory.mktemp("scamps")
    recs, videos = {}, {}
    for k, (sid, hr) in enumerate(HR.items()):
        rec = recording(hr, fps=scamps.FPS, seed=k)
        videos[sid] = face_crop(frames_rgb(rec))
        ppg, _ = rec.contact_ppg()  # rendered with the video: one sample per frame
        # the first file chunked and deflated (as MATLAB saves large arrays), the second contiguous
        _write_scamps(root / f"{sid}.mat", videos[sid], ppg, compress=k == 0)
        recs[sid] = rec
    (root / "ScampsTrainTest.csv").write_text("split,file\n")  # non-.mat files beside them are ignored
    return root, recs, videos


def test_files_are_matlab_v73(mini):
    root, _, _ = mini
    path = root / "P000002.mat"
    assert path.read_bytes()[:19] == b"MATLAB 7.3 MAT-file" and h5py.is_hdf5(path)
    with h5py.File(path, "r") as f:
        assert f.userblock_size == 512
        assert f["Xsub"].shape == (3, 240, 240, 360) and f["d_ppg"].shape == (1, 360)
        assert f["Xsub"].attrs["MATLAB_class"] == b"single" and f["Xsub"].compression == "gzip"


def test_find_subjects(mini, tmp_path):
    root, _, _ = mini
    subs = scamps.find_subjects(root)
    assert [s.id for s in subs] == ["P000002", "P000010"]
    assert all(s.video == s.truth[0] == root / f"{s.id}.mat" and s.fmt == "v7.3" for s in subs)
    with pytest.raises(DatasetLayoutError) as err:
        scamps.find_subjects(tmp_path)
    assert err.value.path == str(tmp_path)


def test_build_finds_the_hr_and_labels_line_up(mini, tmp_path):
    root, recs, _ = mini
    nodes = build_and_check("scamps", root, tmp_path / "cache", HR)
    for sid, rec in recs.items():
        assert nodes[sid]["decode"]["t_s"][:] == pytest.approx(np.arange(360) / 30.0)
        bvp = nodes[sid]["labels"]["bvp"][:]
        # d_ppg sample i belongs to frame i; contact PPG rises with blood volume, as the pulse does
        assert np.corrcoef(bvp, rec.pulse)[0, 1] > 0.9


def test_frames_read_back_exactly_and_in_blocks(mini, monkeypatch):
    root, _, videos = mini
    sub = scamps.find_subjects(root)[1]
    monkeypatch.setattr(_mat73, "BLOCK_BYTES", 13 * 240 * 240 * 3 * 4)  # blocks that batches straddle
    with scamps.open_frames(sub) as src:
        assert (src.info.n_frames, src.info.width, src.info.height, src.info.fps) == (360, 240, 240, 30.0)
        assert src.array.block < 360
        got = np.concatenate([b.frames for b in src.batches(8)])
    np.testing.assert_array_equal(got, videos["P000010"])


@pytest.mark.parametrize("matlab_order, compress", [("THWC", True), ("HWCT", False)])
def test_both_matlab_axis_orders_keep_the_picture_upright(tmp_path, matlab_order, compress):
    rng = np.random.default_rng(1)
    video = rng.integers(0, 256, (20, 48, 64, 3), dtype=np.uint8)  # T, H, W, C; not square on purpose
    stored = video if matlab_order == "THWC" else video.transpose(1, 2, 3, 0)
    path = tmp_path / "P000001.mat"
    write_v73(path, {"Xsub": stored / 255.0, "d_ppg": np.zeros(20)}, compress=compress)  # double
    with scamps.open_frames(scamps.find_subjects(tmp_path)[0]) as src:
        assert (src.info.width, src.info.height) == (64, 48)
        np.testing.assert_array_equal(np.concatenate([b.frames for b in src.batches(8)]), video)


def test_missing_ppg_and_truncated_file_name_the_file(mini, tmp_path):
    root, _, videos = mini
    bad = tmp_path / "no_ppg"
    bad.mkdir()
    write_v73(bad / "P000003.mat", {"Xsub": videos["P000002"][:30] / 255.0, "d_br": np.zeros(30)})
    with pytest.raises(GroundTruthError, match="no PPG variable 'd_ppg'") as err:
        scamps.read_truth(scamps.find_subjects(bad)[0])
    assert err.value.path.endswith("P000003.mat") and err.value.subject == "P000003"

    cut = tmp_path / "truncated"
    cut.mkdir()
    data = (root / "P000010.mat").read_bytes()
    (cut / "P000004.mat").write_bytes(data[: len(data) // 2])
    out = build_fails_naming("scamps", cut, tmp_path / "cache2", "P000004.mat")
    assert "truncated or corrupt" in out
    sub = scamps.find_subjects(cut)[0]
    with pytest.raises(VideoDecodeError) as err:
        scamps.open_frames(sub)
    assert err.value.path.endswith("P000004.mat")
    with pytest.raises(GroundTruthError) as err:
        scamps.read_truth(sub)
    assert err.value.path.endswith("P000004.mat")


def test_labels_only_file_and_non_hdf5_file(tmp_path):
    write_v73(tmp_path / "P000005.mat", {"d_ppg": np.zeros(600), "d_br": np.zeros(600)})
    (tmp_path / "P000006.mat").write_bytes(b"MATLAB 5.0 MAT-file" + b"\0" * 200)
    a, b = scamps.find_subjects(tmp_path)
    with pytest.raises(VideoDecodeError, match="labels-only") as err:
        scamps.open_frames(a)
    assert err.value.path.endswith("P000005.mat")
    assert scamps.read_truth(a).ppg.shape == (600,)
    with pytest.raises(GroundTruthError, match="not a MATLAB v7.3") as err:
        scamps.read_truth(b)
    assert err.value.path.endswith("P000006.mat")


def test_import_is_light():
    code = ("import sys, rppg_prep.datasets.scamps; "
            "assert 'h5py' not in sys.modules and 'scipy.io' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)
