"""Loader speed: clips/s (12 frames at 224) from the frame cache, .npy arrays vs JPEG, 2 workers.

    python benchmarks/loader_bench.py                  # full: 96 clips, 3 timed epochs
    python benchmarks/loader_bench.py --clips 32 --epochs 1   # quick

A small MSR-VTT-format dataset of realistic 320x240 clips (see extract_frames_bench.py) is
written once, its uniform keyframes extracted at 224px in both formats, then the training
split is read through ``MSRVTTDataset`` + ``DataLoader(num_workers=2, batch_size=16)`` as the
trainer does: from the .npy arrays, from the JPEGs, and (for reference) by decoding the videos.
Each with CLIP-normalised float32 output and with uint8 output (normalised later on the GPU).
One warm-up epoch (worker start, page cache), then the best of ``--epochs`` timed epochs.
Prints a table and writes benchmarks/results/loader.json.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from torch.utils.data import DataLoader  # noqa: E402

from data import KeyframeParams, MSRVTTDataset, collate_fn, default_frame_cache_dir  # noqa: E402
from data.frames.extract import ExtractSettings, extract_to_cache  # noqa: E402
from _report import machine_info as machine, write_result  # noqa: E402
from extract_frames_bench import _textures, make_realistic_video  # noqa: E402

FRAMES, SIZE = 12, 224


def build_dataset(root: Path, clips: int) -> Path:
    """An MSR-VTT-format folder of ``clips`` realistic 12.5 s clips at 10 fps, made once."""
    videos = root / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    textures = None
    for i in range(clips):
        p = videos / f"video{i}.mp4"
        if not p.is_file():
            textures = textures if textures is not None else _textures()
            make_realistic_video(p.with_suffix(".tmp.mp4"), 12.5, seed=1000 + i, textures=textures, fps=10).replace(p)
    with open(root / "MSRVTT_train.9k.csv", "w", newline="") as f:
        csv.writer(f).writerows([["video_id"]] + [[f"video{i}"] for i in range(clips)])
    sentences = [{"video_id": f"video{i}", "caption": f"clip number {i}", "sen_id": i} for i in range(clips)]
    (root / "MSRVTT_data.json").write_text(json.dumps({"videos": [], "sentences": sentences}))
    return root


def clips_per_s(ds, epochs: int, workers: int, batch: int) -> float:
    loader = DataLoader(ds, batch_size=batch, num_workers=workers, collate_fn=collate_fn,
                        persistent_workers=workers > 0, shuffle=False)
    for _ in loader:  # warm-up: workers start, files enter the page cache
        pass
    best = float("inf")
    for _ in range(epochs):
        t0 = time.perf_counter()
        n = sum(b["video"].shape[0] for b in loader)
        best = min(best, time.perf_counter() - t0)
    return n / best


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=96)
    ap.add_argument("--epochs", type=int, default=3, help="timed epochs; the best is kept")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "clip4clip-bench-loader")
    ap.add_argument("--skip-decode", action="store_true", help="leave out decoding the videos (slow reference)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "loader.json")
    args = ap.parse_args(argv)

    root = build_dataset(args.work / f"msrvtt-{args.clips}", args.clips)
    params = KeyframeParams("uniform", max_frames=FRAMES)
    cache = default_frame_cache_dir(root, "uniform", SIZE)
    extract_to_cache({f"video{i}": root / "videos" / f"video{i}.mp4" for i in range(args.clips)}, cache,
                     ExtractSettings(keyframes=params, size=SIZE, formats=("npy", "jpeg"), workers=args.workers,
                                     progress=False))
    sizes = {fmt: sum(f.stat().st_size for f in (cache / fmt).rglob("*") if f.is_file()) / args.clips
             for fmt in ("npy", "jpeg")}

    sources = {"npy": dict(frame_cache_format="npy"), "jpeg": dict(frame_cache_format="jpeg")}
    if not args.skip_decode:
        sources["decode video"] = dict(frame_cache=False)
    results = {}
    for name, kw in sources.items():
        for normalize in (True, False):
            ds = MSRVTTDataset(root, "train", image_size=SIZE, max_frames=FRAMES, normalize=normalize, progress=False, **kw)
            assert (ds.frame_store is None) == (name == "decode video")
            key = f"{name} / {'float32 normalised' if normalize else 'uint8'}"
            results[key] = {"clips_per_s": clips_per_s(ds, args.epochs, args.workers, args.batch_size),
                            "source": name, "normalize": normalize}

    print(f"\nloader: {args.clips} clips x {FRAMES} frames at {SIZE}px, batch {args.batch_size}, "
          f"{args.workers} workers ({machine()['cpu']}, {os.cpu_count()} cores)")
    print(f"cache size per clip: npy {sizes['npy'] / 2**20:.2f} MiB, jpeg {sizes['jpeg'] / 2**20:.2f} MiB")
    print(f"{'source / output':<36}{'clips/s':>10}")
    for k, r in results.items():
        print(f"{k:<36}{r['clips_per_s']:>10.1f}")
    record = {"command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])]),
              "machine": machine(), "clips": args.clips, "frames": FRAMES, "size": SIZE, "workers": args.workers,
              "batch_size": args.batch_size, "bytes_per_clip": sizes, "results": results,
              "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_result(record, args.out)
    return record


if __name__ == "__main__":
    main()
