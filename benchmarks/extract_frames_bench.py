"""Extraction speed: videos/s of our keyframe extraction against decode-everything-then-sample.

    python benchmarks/extract_frames_bench.py                       # full: 8 generated videos + the 3 real clips
    python benchmarks/extract_frames_bench.py --videos 2 --repeats 1  # quick

Every method does the whole per-video job of ``extract_frames.py``: choose 12 keyframes, resize
(shorter side 224, bicubic) and centre-crop them, write them (.npy and JPEG). They differ in
how frames are chosen and decoded:

* baseline: ``cap.read()`` of every frame, each converted to RGB and kept, then the 1-fps
  uniform sample (how the official CLIP4Clip extractor and the seed's scripts work);
* uniform: ``data.video.keyframes`` uniform: grab/retrieve, and seeks past whole GOPs where the packet
  scan proves seeking exact (``data.video.seeking``);
* maxdiff (step 1 and 4): every (k-th) frame converted, cropped, blurred and differenced.

Videos: generated, realistic size (320x240, 30 fps, 15-30 s; pans across textures taken from
the real clips, scene cuts every 2-6 s; encoded with OpenCV's MPEG-4 Part 2, the only encoder
OpenCV ships here), and the three real clips in ../shared/testdata/videos (two H.264 mp4s with
B-frames, one MPEG-4 avi). Timed in one process, one video at a time; the best of ``--repeats``
runs is kept, CPU time (process_time) beside wall time because the machine may be shared.
Prints a table and writes benchmarks/results/extract_frames.json.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from data.frames.extract import ExtractSettings, extract_one  # noqa: E402
from data.frames.store import write_video_frames  # noqa: E402
from data.video.keyframes import KeyframeParams  # noqa: E402
sys.path.insert(0, str(REPO / "tests"))  # the toy video writer lives with the tests
from toy_datasets import write_video  # noqa: E402
from data.video.transforms import clip_resize_crop  # noqa: E402
from data.video.decode import sample_frame_indices  # noqa: E402

sys.path.insert(0, str(REPO / "benchmarks"))
from _report import machine_info, write_result  # noqa: E402

REAL = REPO.parent / "shared" / "testdata" / "videos"
REAL_CLIPS = ["arm_wrestling.mp4", "eye_makeup.avi", "pool_cleaning.mp4"]
FORMATS = ("npy", "jpeg")


# ----------------------------------------------------------------------------------------------
# Test videos
# ----------------------------------------------------------------------------------------------


def _textures() -> list[np.ndarray]:
    """BGR frames of the real clips, every second, as texture sources for generated footage."""
    out = []
    for name in REAL_CLIPS:
        cap = cv2.VideoCapture(str(REAL / name))
        i = 0
        while True:
            ok, f = cap.read()
            if not ok:
                break
            if i % 25 == 0:
                out.append(f)
            i += 1
        cap.release()
    if not out:
        raise FileNotFoundError(f"the real clips in {REAL} are needed as textures")
    return out


def make_realistic_video(path: Path, seconds: float, seed: int, textures: list[np.ndarray],
                         width: int = 320, height: int = 240, fps: int = 30) -> Path:
    """Camera-like footage: each shot (2-6 s) pans and zooms slowly across a real frame scaled
    up 1.6x, with a moving block on top; hard cuts between shots."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * fps))
    frames = np.empty((n, height, width, 3), dtype=np.uint8)
    t = 0
    while t < n:
        shot = min(n - t, int(rng.uniform(2, 6) * fps))
        src = textures[int(rng.integers(len(textures)))]
        big = cv2.resize(src, (int(width * 1.6), int(height * 1.6)), interpolation=cv2.INTER_CUBIC)
        x0, y0 = rng.uniform(0, big.shape[1] - width), rng.uniform(0, big.shape[0] - height)
        vx, vy = rng.uniform(-1.5, 1.5), rng.uniform(-1, 1)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        for k in range(shot):
            x = int(np.clip(x0 + vx * k, 0, big.shape[1] - width))
            y = int(np.clip(y0 + vy * k, 0, big.shape[0] - height))
            f = big[y : y + height, x : x + width].copy()
            bx = int((k * 3) % (width - 40))
            cv2.rectangle(f, (bx, height // 3), (bx + 40, height // 3 + 30), colour, -1)
            frames[t + k] = f
        t += shot
    return write_video(path, frames, fps)


def generated_videos(work: Path, count: int) -> list[Path]:
    """``count`` videos of 15..30 s (evenly spread), generated once into ``work`` and reused."""
    work.mkdir(parents=True, exist_ok=True)
    textures = None
    paths = []
    for i, seconds in enumerate(np.linspace(15, 30, count) if count > 1 else [20.0]):
        p = work / f"gen{i:02d}_{seconds:.0f}s.mp4"
        if not p.is_file():
            textures = textures if textures is not None else _textures()
            make_realistic_video(p.with_suffix(".tmp.mp4"), float(seconds), seed=i, textures=textures).replace(p)
        paths.append(p)
    return paths


# ----------------------------------------------------------------------------------------------
# Methods
# ----------------------------------------------------------------------------------------------


def baseline(path: Path, out: Path, vid: str) -> None:
    """Decode every frame (RGB, kept), then take the 1-fps uniform sample; resize, crop, write."""
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, 1])
    fps = cap.get(cv2.CAP_PROP_FPS)
    frames = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    cap.release()
    idx = sample_frame_indices(len(frames), fps, 1.0, 12, "uniform")
    write_video_frames(out, vid, clip_resize_crop(np.stack([frames[i] for i in idx]), 224), FORMATS)


def ours(params: KeyframeParams):
    settings = ExtractSettings(keyframes=params, size=224, formats=FORMATS, progress=False)

    def run(path: Path, out: Path, vid: str) -> None:
        res = extract_one(vid, path, out, settings)
        if "failure" in res:
            raise RuntimeError(f"{path}: {res['failure']['reason']}")
    return run


METHODS = {
    "baseline": baseline,
    "uniform": ours(KeyframeParams("uniform")),
    "maxdiff": ours(KeyframeParams("maxdiff")),
    "maxdiff_step4": ours(KeyframeParams("maxdiff", step=4)),
}


def time_method(fn, videos: list[Path], repeats: int) -> dict:
    """Best-of-``repeats`` wall and CPU seconds for extracting every video once."""
    best_wall, best_cpu = float("inf"), float("inf")
    for _ in range(repeats):
        out = Path(tempfile.mkdtemp(prefix="bench-extract-"))
        try:
            w0, c0 = time.perf_counter(), time.process_time()
            for i, v in enumerate(videos):
                fn(v, out, f"v{i}")
            best_wall = min(best_wall, time.perf_counter() - w0)
            best_cpu = min(best_cpu, time.process_time() - c0)
        finally:
            shutil.rmtree(out, ignore_errors=True)
    n = len(videos)
    return {"videos": n, "wall_s": best_wall, "cpu_s": best_cpu, "videos_per_s_wall": n / best_wall,
            "videos_per_s_cpu": n / best_cpu}


def machine() -> dict:
    return machine_info()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--videos", type=int, default=8, help="generated videos (15..30 s each)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per method; the best is kept")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "clip4clip-bench-videos",
                    help="folder for the generated videos (reused between runs)")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "extract_frames.json")
    args = ap.parse_args(argv)
    os.environ.setdefault("CLIP4CLIP_DECODE_THREADS", "1")
    sets = {"generated": generated_videos(args.work, args.videos), "real": [REAL / n for n in REAL_CLIPS]}
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    results = {name: {m: time_method(METHODS[m], vids, args.repeats) for m in methods} for name, vids in sets.items()}
    for rows in results.values():
        base = rows.get("baseline")
        for r in rows.values():
            if base:
                r["speedup_cpu"] = base["cpu_s"] / r["cpu_s"]
                r["speedup_wall"] = base["wall_s"] / r["wall_s"]

    print(f"\nextraction, 12 keyframes -> 224px .npy + JPEG, one process ({machine()['cpu']}, {os.cpu_count()} cores)")
    print(f"{'videos':<22}{'method':<15}{'videos/s (cpu)':>15}{'videos/s (wall)':>17}{'x baseline (cpu)':>18}")
    for name, rows in results.items():
        label = f"{name} ({len(sets[name])})"
        for m, r in rows.items():
            sp = f"{r['speedup_cpu']:.2f}" if "speedup_cpu" in r else "-"
            print(f"{label:<22}{m:<15}{r['videos_per_s_cpu']:>15.2f}{r['videos_per_s_wall']:>17.2f}{sp:>18}")
            label = ""
    record = {"command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])]),
              "machine": machine(), "generated": [p.name for p in sets["generated"]],
              "real": REAL_CLIPS, "repeats": args.repeats, "results": results,
              "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_result(record, args.out)
    return record


if __name__ == "__main__":
    main()
