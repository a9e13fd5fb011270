"""MAHNOB-HCI: a miniature in the real layout (Sessions/<N>/ with session.xml, the C1 colour AVI
beside a grey side view, and a BioSemi BDF written by pyedflib with ECG on EXG1-3 and a Status
trigger), built through the CLI; labels come from the ECG R-peaks."""

from __future__ import annotations

import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
from scipy.signal import find_peaks

from miniature import build, build_and_check, build_fails_naming, recording
from rppg_prep.datasets import mahnob
from rppg_prep.errors import GroundTruthError

FPS = 61.0  # what the real C1 containers say (session.xml: vidRate="60.9708")
BDF_FS = 256
W, H = 780, 580  # the real C1 frame size; FaceRecording frames (640x480) are padded to it
HR = {"2": 66.0, "10": 96.0}
#: session -> (participant, trial, Status trigger onset s, ECG polarity); the real files trigger at 30 s
SESSIONS = {"2": (1, 2, 5.0, 1.0), "10": (3, 5, 7.5, -1.0)}
EEG = ["Fp1", "AF3", "F3", "F7", "FC5", "FC1", "C3", "T7", "CP5", "CP1", "P3", "P7", "PO3", "O1", "Oz", "Pz",
       "Fp2", "AF4", "Fz", "F4", "F8", "FC6", "FC2", "Cz", "C4", "T8", "CP6", "CP2", "P4", "P8", "PO4", "O2"]
CHANNELS = EEG + [f"EXG{i}" for i in range(1, 9)] + ["GSR1", "GSR2", "Erg1", "Erg2", "Resp", "Temp", "Status"]
DATE = "2009.07.09.17.53.46"


def beat_times(rec, t0: float, t1: float) -> np.ndarray:
    """Systolic peaks of the recording's pulse model between t0 and t1 (s, video clock): the R-peaks."""
    t = np.arange(t0, t1, 0.001)
    peaks, _ = find_peaks(rec.pulse_at(t), prominence=0.5)
    return t[peaks]


def synthetic_ecg(beats: np.ndarray, t: np.ndarray, rng, gain: float = 1.0) -> np.ndarray:
    """ECG in uV at times t: P, QRS and T waves per beat, a BioSemi-like DC offset, wander and noise."""
    x = np.zeros_like(t)
    for b in beats:
        d = t - b
        x += (1000 * np.exp(-0.5 * (d / 0.008) ** 2) - 150 * np.exp(-0.5 * ((d + 0.025) / 0.008) ** 2)
              - 200 * np.exp(-0.5 * ((d - 0.025) / 0.009) ** 2) + 300 * np.exp(-0.5 * ((d - 0.28) / 0.045) ** 2)
              + 100 * np.exp(-0.5 * ((d + 0.17) / 0.025) ** 2))
    return gain * x - 21000.0 + 200 * np.sin(2 * np.pi * 0.3 * t) + rng.normal(0, 20, t.size)


def write_bdf(path, rec, *, trigger_s: float, polarity: float = 1.0, post_s: float = 2.0, triggers: bool = True,
              seed: int = 0) -> np.ndarray:
    """A BioSemi BDF (24-bit, 256 Hz, the real channel names); returns the R-peak times on the video clock."""
    import pyedflib

    rng = np.random.default_rng(seed)
    dur = int(np.ceil(trigger_s + rec.t_s[-1] + post_s))
    t_bdf = np.arange(dur * BDF_FS) / BDF_FS
    t_vid = t_bdf - trigger_s
    beats = beat_times(rec, t_vid[0] - 1.0, t_vid[-1] + 1.0)
    data = {c: rng.normal(0, 10, t_bdf.size) for c in EEG}
    for c, g in (("EXG1", 0.4), ("EXG2", polarity), ("EXG3", 1.3)):
        data[c] = synthetic_ecg(beats, t_vid, rng, g)
    for c in ("EXG4", "EXG5", "EXG6", "EXG7", "EXG8", "GSR1", "GSR2", "Erg1", "Erg2", "Resp", "Temp"):
        data[c] = rng.normal(0, 5, t_bdf.size)
    status = np.full(t_bdf.size, 1 << 20, dtype=np.int64)  # a system bit above the 16 trigger bits
    if triggers:
        for onset in (trigger_s, trigger_s + rec.t_s[-1]):  # stimulus (= video) start and end
            i = int(round(onset * BDF_FS))
            status[i:i + 26] |= 1
    data["Status"] = status.astype(np.float64)
    headers = []
    for c in CHANNELS:
        st = c == "Status"
        headers.append(dict(label=c, dimension="Boolean" if st else "uV", sample_frequency=BDF_FS,
                            physical_min=-8388608 if st else -262144, physical_max=8388607 if st else 262143,
                            digital_min=-8388608, digital_max=8388607, transducer="", prefilter=""))
    w = pyedflib.EdfWriter(str(path), len(CHANNELS), file_type=pyedflib.FILETYPE_BDF)
    try:
        w.setSignalHeaders(headers)
        w.writeSamples([data[c] for c in CHANNELS])
    finally:
        w.close()
    return beats


def write_session(folder, rec, participant: int, trial: int, trigger_s: float, polarity: float, seed: int):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "session.xml").write_text(
        '<?xml version="1.0" encoding="utf-8"?>\n'
        f'<session cutNr="{trial}" isStim="1" vidRate="60.9708" audioRate="44100">\n'
        f'  <subject id="{participant}" />\n</session>\n')
    stem = f"P{participant}-Rec1-{DATE}"
    vw = cv2.VideoWriter(str(folder / f"{stem}_C1 trigger _C_Section_{trial}.avi"), cv2.VideoWriter_fourcc(*"MJPG"),
                         FPS, (W, H))
    for f in rec.frames_bgr():
        vw.write(cv2.copyMakeBorder(f, 50, H - 480 - 50, 70, W - 640 - 70, cv2.BORDER_REPLICATE))
    vw.release()
    # a grey side view, sorting before C1: the loader must not take it
    side = cv2.VideoWriter(str(folder / f"{stem}_BW1 trigger _C_Section_{trial}.avi"), cv2.VideoWriter_fourcc(*"MJPG"),
                           FPS, (W, H), isColor=False)
    for _ in range(3):
        side.write(np.full((H, W), 90, np.uint8))
    side.release()
    return write_bdf(folder / f"Part_{participant}_S_Trial{trial}_emotion.bdf", rec, trigger_s=trigger_s,
                     polarity=polarity, seed=seed)


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    root = tmp_path_factory.mktemp("mahnob")
    recs, beats = {}, {}
    for k, (sid, hr) in enumerate(HR.items()):
        part, trial, trig, pol = SESSIONS[sid]
        recs[sid] = recording(hr, fps=FPS, seed=k)
        beats[sid] = write_session(root / "Sessions" / sid, recs[sid], part, trial, trig, pol, seed=k)
    return root, recs, beats


@pytest.fixture(scope="module")
def built(mini, tmp_path_factory):
    root, _, _ = mini
    cache = tmp_path_factory.mktemp("mahnob_cache")
    return build_and_check("mahnob-hci", root, cache, HR), cache


def test_find_subjects(mini):
    root, _, _ = mini
    subs = mahnob.find_subjects(root)
    assert [s.id for s in subs] == ["2", "10"]
    assert all("_C1 trigger _C_Section_" in s.video.name and s.fmt == "S" for s in subs)
    assert [s.truth[0].name for s in subs] == ["Part_1_S_Trial2_emotion.bdf", "Part_3_S_Trial5_emotion.bdf"]
    assert [s.id for s in mahnob.find_subjects(root / "Sessions")] == ["2", "10"]
    (one,) = mahnob.find_subjects(root / "Sessions" / "10")
    assert one.id == "10" and one.video == subs[1].video


def expected_surrogate(beats: np.ndarray, t: np.ndarray) -> np.ndarray:
    k = np.clip(np.searchsorted(beats, t, side="right") - 1, 0, beats.size - 2)
    return np.cos(2 * np.pi * (k + (t - beats[k]) / np.diff(beats)[k]))


def test_build_finds_the_hr_and_aligns_on_the_trigger(mini, built):
    _, recs, beats = mini
    nodes, _ = built
    for sid, rec in recs.items():
        lab = nodes[sid]["labels"]
        bvp = lab["bvp"][:]
        assert bvp.shape == rec.pulse.shape
        # the two sessions trigger at 5.0 and 7.5 s: only the Status edge puts the beats on the frames
        assert np.corrcoef(bvp, expected_surrogate(beats[sid], rec.t_s))[0, 1] > 0.95
        assert np.corrcoef(bvp, rec.pulse)[0, 1] > 0.5  # a cosine peaking at systole, not the PPG shape
        assert abs(np.nanmedian(lab["hr_device_bpm"][:]) - HR[sid]) < 2.0


def test_read_truth_ecg_clock_and_notes(mini):
    root, recs, beats = mini
    for s in mahnob.find_subjects(root):
        trig = SESSIONS[s.id][2]
        truth = mahnob.read_truth(s)
        assert np.all(np.diff(truth.t_s) > 0) and truth.quality_ok.all()
        # 256-Hz samples from the first detected R-peak, shifted by the trigger edge
        first = beats[s.id][beats[s.id] >= -trig][0]
        assert truth.t_s[0] == pytest.approx(first, abs=1.5 / BDF_FS)
        assert abs(np.median(truth.hr_bpm) - HR[s.id]) < 2.0
        notes = " | ".join(truth.notes)
        assert f"trigger edge at {trig:.3f} s" in notes and "surrogate" in notes and "60.9708" in notes


def test_r_peak_detector_either_polarity():
    rec = recording(72.0, fps=FPS, seed=9)
    t = np.arange(12 * BDF_FS) / BDF_FS
    beats = beat_times(rec, -1.0, 13.0)
    rng = np.random.default_rng(1)
    for gain in (1.0, -0.5):
        r = mahnob.detect_r_peaks(synthetic_ecg(beats, t, rng, gain), BDF_FS)
        inside = beats[(beats > 0.1) & (beats < t[-1] - 0.1)]
        assert r.size == inside.size and np.max(np.abs(r - inside)) < 2.0 / BDF_FS
    assert mahnob.detect_r_peaks(np.zeros(10 * BDF_FS), BDF_FS).size == 0


def _bad_session(mini, dst, *, bdf: bool = True, c1: bool = True):
    """A copy of session 2 with parts removed."""
    src = mini[0] / "Sessions" / "2"
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if (f.suffix == ".bdf" and not bdf) or ("_C1 " in f.name and not c1):
            continue
        shutil.copy2(f, dst / f.name)
    return dst


def test_missing_bdf_names_the_file(mini, built, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(built[1], cache)  # the video nodes are reused: only the labels stage runs and fails
    bad = _bad_session(mini, tmp_path / "bad" / "Sessions" / "2", bdf=False)
    out = build_fails_naming("mahnob-hci", tmp_path / "bad", cache, "emotion.bdf")
    assert "missing" in out
    with pytest.raises(GroundTruthError, match="missing") as err:
        mahnob.read_truth(mahnob.find_subjects(bad)[0])
    assert err.value.path.endswith("Part_1_<S|N>_Trial<k>_emotion.bdf") and err.value.subject == "2"


def test_bdf_without_trigger_and_corrupt_bdf(mini, tmp_path):
    _, recs, _ = mini
    bad = _bad_session(mini, tmp_path / "2")
    bdf = bad / "Part_1_S_Trial2_emotion.bdf"
    write_bdf(bdf, recs["2"], trigger_s=5.0, triggers=False)
    (s,) = mahnob.find_subjects(bad)
    with pytest.raises(GroundTruthError, match="no trigger") as err:
        mahnob.read_truth(s)
    assert err.value.path == str(bdf) and err.value.subject == "2"
    bdf.write_bytes(b"\xffBIOSEMI" + b"not a header" * 40)
    with pytest.raises(GroundTruthError, match="BDF") as err:
        mahnob.read_truth(s)
    assert err.value.path == str(bdf)


def test_missing_c1_video_names_it(mini, tmp_path):
    bad = _bad_session(mini, tmp_path / "Sessions" / "2", c1=False)
    (s,) = mahnob.find_subjects(bad)
    assert "_C1 trigger" in s.video.name and not s.video.exists()  # the grey BW1 view is never taken
    res = build("mahnob-hci", tmp_path, tmp_path / "cache")
    assert res.exit_code != 0
    assert "_C1" in res.output and "missing" in res.output, res.output


def test_import_is_light():
    code = ("import sys, rppg_prep.datasets.mahnob; "
            "assert not {'pyedflib', 'h5py', 'scipy.io', 'scipy.signal'} & set(sys.modules), sys.modules.keys()")
    subprocess.run([sys.executable, "-c", code], check=True)
