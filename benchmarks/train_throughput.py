"""Is the reader the bottleneck? Clips/s the Dataset delivers vs clips/s a training step consumes (run by hand).

    .venv/bin/python benchmarks/train_throughput.py --cache CACHE [--steps 3] [--batch 2]

CACHE holds a build of the real UBFC-rPPG subjects (``rppg-prep build ubfc --root ../shared/data/ubfc-rppg``).
For each registered family (models/train.py): the DataLoader's clips/s reading that family's clips
(its normalisation and layout, batch 8, 0 and 2 workers, 48 clips) and the clips/s of ``fit`` (CPU,
or CUDA when present) over ``--steps`` steps; the ratio reader / step should be >= 20 on CPU.
``--crc-only`` measures just the cost of the crc32c chunk checksums: every clip chunk of the build
read through zarr as stored (Blosc + crc32c, checked on read) against the same chunks copied into
arrays without the checksum (Blosc only), best of 3 passes each.
Writes benchmarks/results/train-throughput-<date>.json (or crc-read-cost-<date>.json).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from rppg_models.data import ClipDataset
from rppg_models.train import FAMILIES, TrainConfig, fit, pick_device


def crc_read_cost(cache: Path, repeats: int = 3) -> dict:
    """Read every stored clip with and without the crc32c codec: clips/s and MB/s of each, best of ``repeats``."""
    import shutil
    import tempfile

    import zarr
    from zarr.codecs import BloscCodec

    import rppg_prep
    from rppg_prep.store import PIXEL_CODEC

    build = rppg_prep.open_build(cache, "ubfc", "ubfc")
    tmp = Path(tempfile.mkdtemp(prefix="rppg-crc-"))
    try:
        plain = []
        for sid, nodes in build.items():
            src = nodes["clips"]["clips"]
            dst = zarr.create_array(str(tmp / sid), shape=src.shape, chunks=src.chunks, dtype=src.dtype,
                                    compressors=BloscCodec(**PIXEL_CODEC), config={"write_empty_chunks": True})
            for i in range(src.shape[0]):
                dst[i] = src[i]
            plain.append(dst)
        stored = [nodes["clips"]["clips"] for nodes in build.values()]
        n = sum(a.shape[0] for a in stored)
        nbytes = sum(a.nbytes for a in stored)

        def best(arrays) -> float:
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                for a in arrays:
                    for i in range(a.shape[0]):
                        a[i]
                times.append(time.perf_counter() - t0)
            return min(times)

        t_crc, t_plain = best(stored), best(plain)
        return {"clips": n, "mb_uncompressed": round(nbytes / 1e6, 1),
                "crc32c_clips_per_s": round(n / t_crc, 1), "plain_clips_per_s": round(n / t_plain, 1),
                "read_time_ratio": round(t_crc / t_plain, 3), "crc32c_mb_per_s": round(nbytes / 1e6 / t_crc, 1),
                "plain_mb_per_s": round(nbytes / 1e6 / t_plain, 1)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def reader_clips_per_s(cache: Path, fam, workers: int, n: int = 48) -> float:
    ds = ClipDataset(cache, "ubfc", "ubfc", norm=fam.norm, layout=fam.layout)
    loader = DataLoader(ds, batch_size=8, shuffle=True, num_workers=workers, generator=torch.Generator().manual_seed(0))
    seen, t0 = 0, time.perf_counter()
    for x, *_ in loader:
        seen += len(x)
        if seen >= n:
            break
    return seen / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--crc-only", action="store_true", help="only the read cost of the crc32c checksums")
    args = ap.parse_args()
    if args.crc_only:
        r = crc_read_cost(args.cache)
        print(json.dumps(r, indent=1))
        dest = Path(__file__).resolve().parent / "results" / f"crc-read-cost-{time.strftime('%Y-%m-%d')}.json"
        dest.write_text(json.dumps({"date": time.strftime("%Y-%m-%dT%H:%M:%S"), **r}, indent=1))
        print(f"written {dest}")
        return
    device = str(pick_device("auto"))
    rows = {}
    for name, factory in FAMILIES.items():
        fam = factory()
        r0, r2 = reader_clips_per_s(args.cache, fam, 0), reader_clips_per_s(args.cache, fam, 2)
        res = fit(name, args.cache, "ubfc", "ubfc", TrainConfig(steps=args.steps, batch=args.batch), device=device,
                  progress=False)
        rows[name] = {"reader_clips_per_s_0_workers": round(r0, 1), "reader_clips_per_s_2_workers": round(r2, 1),
                      "train_clips_per_s": round(res["clips_per_s"], 2), "device": device,
                      "ratio": round(max(r0, r2) / res["clips_per_s"], 1)}
        print(name, rows[name], flush=True)
    print("| family | reader clips/s (0 / 2 workers) | training clips/s | reader / training |\n|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['reader_clips_per_s_0_workers']} / {r['reader_clips_per_s_2_workers']} | "
              f"{r['train_clips_per_s']} ({r['device']}) | {r['ratio']}× |")
    dest = Path(__file__).resolve().parent / "results" / f"train-throughput-{time.strftime('%Y-%m-%d')}.json"
    dest.write_text(json.dumps({"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "families": rows}, indent=1))
    print(f"written {dest}")


if __name__ == "__main__":
    main()
