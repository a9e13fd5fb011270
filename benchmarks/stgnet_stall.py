"""Why STGNet stalled: the exploratory harness behind benchmarks/results/stgnet-stall-2026-12-03.json (run by hand).

    .venv/bin/python benchmarks/stgnet_stall.py --cache CACHE --prepare            # face crops -> frames16.npz
    .venv/bin/python benchmarks/stgnet_stall.py --cache CACHE --seed 1 --tag base1  # the old recipe
    .venv/bin/python benchmarks/stgnet_stall.py --cache CACHE --seed 1 --freeze-pos --aug shift+flip \\
        --sched warmcos --norm bandpass --tag bp1                                    # the recipe

Trains STGNet (rppg_models.stgnet, 16 px) on windows of the face crops held in memory and logs,
every ``--eval-every`` steps, the training loss, the per-clip BVP r and HR MAE on the test
subjects' stored clips, and two collapse measures: ``pred_pair_r`` (mean r between the
predictions of different clips; near 1 when the model outputs one waveform whatever the input)
and ``zero_r`` (mean |r| between each prediction and the prediction for an all-zero input).
"""
import argparse
import json
import time

import numpy as np, torch

from rppg_models.stgnet import Stgnet, neg_pearson_loss
from rppg_models.evaluate import hr_on_clock

ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
ap.add_argument("--cache", default="cache")
ap.add_argument("--prepare", action="store_true", help="write frames<size>.npz beside this script and stop")
ap.add_argument("--train", default="subject3,subject4,subject5,subject10,subject11,subject12")
ap.add_argument("--test", default="subject8,subject9")
ap.add_argument("--steps", type=int, default=400)
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--lr", type=float, default=1e-3)
ap.add_argument("--batch", type=int, default=4)
ap.add_argument("--size", type=int, default=16)
ap.add_argument("--frames", type=int, default=160)
ap.add_argument("--norm", default="temporal")
ap.add_argument("--aug", default="none")  # none | shift | shift+flip | shift+flip+speed
ap.add_argument("--loss", default="np")  # np | np+spec
ap.add_argument("--sched", default="const")  # const | warmcos
ap.add_argument("--wd", type=float, default=0.0)
ap.add_argument("--freeze-pos", action="store_true")
ap.add_argument("--shift", type=float, default=0.0)  # label circular shift fraction (control)
ap.add_argument("--eval-every", type=int, default=100)
ap.add_argument("--tag", default="")
a = ap.parse_args()
NPZ = __import__("pathlib").Path(__file__).with_name(f"frames{a.size}.npz")
if a.prepare:
    import cv2
    from rppg_prep import open_build
    arrays = {}
    for sid, n in open_build(a.cache, "ubfc", "ubfc").items():
        fr = np.asarray(n["face"]["frames"][:])
        arrays[f"{sid}__x"] = np.stack([cv2.resize(f, (a.size, a.size), interpolation=cv2.INTER_AREA) for f in fr])
        arrays[f"{sid}__bvp"] = np.asarray(n["labels"]["bvp"][:], np.float32)
        arrays[f"{sid}__t"] = np.asarray(n["labels"]["t_s"][:])
        arrays[f"{sid}__win"] = np.asarray(n["clips"]["window"][:])
        arrays[f"{sid}__hr"] = np.asarray(n["labels"]["clip_hr_beats_bpm"][:])
    np.savez(NPZ, **arrays)
    raise SystemExit(0)
torch.set_num_threads(1)
torch.manual_seed(a.seed); rng = np.random.default_rng(a.seed)
z = np.load(NPZ)
D = {}
for k in z.files:
    s, f = k.split("__"); D.setdefault(s, {})[f] = z[k]
train, test = a.train.split(","), a.test.split(",")
L = a.frames

def norm(x):
    x = x.astype(np.float32)
    if a.norm == "temporal":
        d = x - x.mean(0, keepdims=True); return d / (d.std() + 1e-7)
    if a.norm == "diffnorm":
        d = np.zeros_like(x); d[:-1] = (x[1:] - x[:-1]) / (x[1:] + x[:-1] + 1e-7); return d / (d.std() + 1e-7)
    if a.norm == "bandpass":
        from scipy.signal import butter, sosfiltfilt
        sos = butter(2, [0.7, 3.5], btype="band", fs=30.0, output="sos")
        d = sosfiltfilt(sos, x - x.mean(0, keepdims=True), axis=0).astype(np.float32)
        return d / (d.std() + 1e-7)
    if a.norm == "raw":
        return x / 255.
    if a.norm == "tempdet":  # per-pixel mean removed, per-pixel std? no: per-channel global
        d = x - x.mean(0, keepdims=True); return d / (d.std(axis=(0,1,2), keepdims=True) + 1e-7)

def lab(y):
    return (y - y.mean()) / (y.std() + 1e-7)

def sample():
    xs, ys = [], []
    for _ in range(a.batch):
        s = train[rng.integers(len(train))]; d = D[s]
        # speed: a window of L * k frames resampled to L (k in [0.7, 1.4]), which scales the clip's HR
        # by k, so that a fold trains on HRs beyond its subjects'
        k = rng.uniform(0.7, 1.4) if "speed" in a.aug else 1.0
        n = min(int(round(L * k)), len(d["x"]))
        if a.aug.startswith("shift"):
            st = rng.integers(0, len(d["x"]) - n + 1)
        else:
            w = d["win"][rng.integers(len(d["win"]))]; st = w[0]; n = L
        xs_, ys_ = d["x"][st:st + n], d["bvp"][st:st + n]
        if n != L:
            pos = np.linspace(0, n - 1, L)
            lo = np.floor(pos).astype(int); hi = np.minimum(lo + 1, n - 1); f = (pos - lo)[:, None, None, None]
            xs_ = xs_[lo] * (1 - f) + xs_[hi] * f
            ys_ = np.interp(pos, np.arange(n), ys_)
        x = norm(xs_); y = lab(np.asarray(ys_, np.float32))
        if "flip" in a.aug and rng.random() < 0.5:
            x = x[:, :, ::-1]
        if a.shift:
            y = np.roll(y, int(a.shift * L))
        xs.append(np.ascontiguousarray(x.transpose(3, 0, 1, 2))); ys.append(y)
    return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys).astype(np.float32))

def band_power(sig, fs=30.0, n=512):
    f = torch.fft.rfftfreq(n, 1 / fs)
    m = (f >= 0.7) & (f <= 3.5)
    p = torch.fft.rfft(sig - sig.mean(-1, keepdim=True), n=n).abs() ** 2
    return p[:, m]

def loss_fn(p, y):
    if a.loss.startswith("bc"):  # remove the component common to the batch's predictions
        p = p - p.mean(0, keepdim=True)
    l = neg_pearson_loss(p, y)
    if a.loss.endswith("spec"):
        pp, py = band_power(p), band_power(y)
        tgt = py.argmax(-1)
        l = l + 0.5 * torch.nn.functional.cross_entropy(torch.log(pp / pp.sum(-1, keepdim=True) + 1e-8), tgt) / 5
    return l

model = Stgnet(frames=L, size=a.size)
if a.freeze_pos:
    for n_, p_ in model.named_parameters():
        if "pos_embed" in n_: p_.requires_grad_(False)
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=a.lr, weight_decay=a.wd) if a.wd else torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=a.lr)
if a.sched == "warmcos":
    warm = max(1, a.steps // 10)
    sch = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + np.cos(np.pi * min(1.0, s / a.steps))))
else:
    sch = None

def evaluate():
    model.eval(); rs, errs, preds = [], [], []
    with torch.no_grad():
        for s in test:
            d = D[s]
            for (st, sp), hr in zip(d["win"], d["hr"]):
                x = torch.from_numpy(np.ascontiguousarray(norm(d["x"][st:st + L]).transpose(3, 0, 1, 2)))[None]
                p = model(x)[0].numpy(); y = d["bvp"][st:st + L]
                rs.append(np.corrcoef(p, y)[0, 1]); preds.append((p - p.mean()) / (p.std() + 1e-9))
                errs.append(abs(hr_on_clock(p, d["t"][st:st + L])[0] - hr))
    with torch.no_grad():
        p0 = model(torch.zeros(1, 3, L, a.size, a.size))[0].numpy()
    p0 = (p0 - p0.mean()) / (p0.std() + 1e-9)
    zr = float(np.mean([abs(np.dot(p0, q) / len(q)) for q in preds]))
    model.train()
    P = np.stack(preds); C = P @ P.T / P.shape[1]; same = float((C.sum() - np.trace(C)) / (len(P) * (len(P) - 1)))
    return float(np.mean(rs)), float(np.mean(errs)), same, zr

losses, log = [], []
t0 = time.time()
for step in range(a.steps):
    x, y = sample()
    l = loss_fn(model(x), y)
    opt.zero_grad(); l.backward(); opt.step()
    if sch: sch.step()
    losses.append(float(l.detach()))
    if (step + 1) % a.eval_every == 0:
        r, mae, same, zr = evaluate()
        log.append(dict(step=step + 1, loss=float(np.mean(losses[-50:])), test_r=r, test_mae=mae, pred_pair_r=same, zero_r=zr))
        print(a.tag, log[-1], f"{time.time()-t0:.0f}s", flush=True)
print("RESULT", json.dumps(dict(vars(a), log=log)))
