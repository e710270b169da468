"""Small dataset folders in the official MSR-VTT and MSVD layouts, with generated videos.

For tests, examples and benchmarks that need the real file formats without the real data:
``write_msrvtt_folder`` / ``write_msvd_folder`` render moving-shape clips (``data.synthetic.render``)
and write the annotation files exactly as distributed for CLIP4Clip; ``write_cut_video`` writes a
clip with scene cuts at known frames (for keyframe tests).
"""

from __future__ import annotations

import csv
import json
import os
import pickle
from pathlib import Path

import cv2
import numpy as np

from data.synthetic.render import BACKGROUNDS, COLORS, all_combos, canonical_caption, make_clip_spec, paraphrases, render_clip

__all__ = ["write_cut_video", "write_msrvtt_folder", "write_msvd_folder", "write_video"]


def write_video(path: str | os.PathLike, frames_bgr: np.ndarray, fps: float, fourcc: str = "mp4v") -> Path:
    """Encode uint8 BGR frames [T, H, W, 3] into ``path`` (container from the extension)."""
    path = Path(path)
    h, w = frames_bgr.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), float(fps), (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"cv2.VideoWriter cannot write {path} with fourcc {fourcc!r}")
    try:
        for f in frames_bgr:
            writer.write(np.ascontiguousarray(f))
    finally:
        writer.release()
    return path


def write_cut_video(
    path: str | os.PathLike, cuts: list[int], num_frames: int, fps: float = 10.0, width: int = 96, height: int = 72
) -> Path:
    """A clip of ``len(cuts) + 1`` shots; shot k starts at frame ``([0] + cuts)[k]``.

    Each shot has its own plain background colour and a small square drifting slowly inside it,
    so the difference between consecutive frames is small everywhere except at the first frame
    of each shot. Frames are wider than tall, so the square centre crop matters.
    """
    starts = [0] + sorted(int(c) for c in cuts)
    if any(b <= a for a, b in zip(starts, starts[1:])) or starts[-1] >= num_frames:
        raise ValueError(f"cuts {cuts} must be increasing and inside 1..{num_frames - 1}")
    colours = list(BACKGROUNDS.values())
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    shot = 0
    for t in range(num_frames):
        while shot + 1 < len(starts) and t >= starts[shot + 1]:
            shot += 1
        bg = colours[(2 * shot + 1) % len(colours)]
        fg = list(COLORS.values())[shot % len(COLORS)]
        frames[t] = np.array(bg[::-1], dtype=np.uint8)
        x = width // 2 - 6 + (t - starts[shot]) % 6  # one pixel per frame, within the crop
        cv2.rectangle(frames[t], (x, height // 2 - 6), (x + 12, height // 2 + 6), fg[::-1], -1)
    return write_video(path, frames, fps)


def _clips(n: int, seed: int, width: int, height: int, num_frames: int, captions: int):
    """n (video_id-less) clips: (frames BGR, [captions]) with distinct canonical captions."""
    combos = all_combos()
    rng = np.random.default_rng(seed)
    for i, c in enumerate(rng.choice(len(combos), size=n, replace=False)):
        combo = combos[int(c)]
        spec = make_clip_spec(combo, np.random.default_rng([seed, i]), width, height, num_frames)
        yield render_clip(spec), [canonical_caption(*combo)] + paraphrases(*combo)[: captions - 1]


def write_msrvtt_folder(
    root: str | os.PathLike,
    num_train: int = 6,
    num_test: int = 4,
    captions: int = 3,
    fps: int = 4,
    seconds: int = 4,
    width: int = 80,
    height: int = 64,
    seed: int = 0,
) -> Path:
    """MSR-VTT as distributed: MSRVTT_data.json, MSRVTT_train.9k.csv, MSRVTT_train.7k.csv,
    MSRVTT_JSFUSION_test.csv (one row per test video) and videos/video<N>.mp4."""
    root = Path(root)
    (root / "videos").mkdir(parents=True, exist_ok=True)
    videos, sentences, ids = [], [], []
    for n, (frames, caps) in enumerate(_clips(num_train + num_test, seed, width, height, fps * seconds, captions)):
        vid = f"video{n}"
        write_video(root / "videos" / f"{vid}.mp4", frames, fps)
        split = "train" if n < num_train else "test"
        videos.append({"category": 0, "url": "", "video_id": vid, "start time": 0.0, "end time": float(seconds), "split": split, "id": n})
        sentences += [{"caption": c, "video_id": vid, "sen_id": len(sentences) + k} for k, c in enumerate(caps)]
        ids.append((vid, caps[0]))
    (root / "MSRVTT_data.json").write_text(json.dumps({"videos": videos, "sentences": sentences}), encoding="utf-8")
    train, test = ids[:num_train], ids[num_train:]
    for name, rows in (("MSRVTT_train.9k.csv", train), ("MSRVTT_train.7k.csv", train[: max(1, len(train) * 7 // 9)])):
        with open(root / name, "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([["video_id"]] + [[v] for v, _ in rows])
    with open(root / "MSRVTT_JSFUSION_test.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["key", "vid_key", "video_id", "sentence"])
        w.writerows([[f"ret{i}", "msr" + v[5:], v, c] for i, (v, c) in enumerate(test)])
    return root


def write_msvd_folder(
    root: str | os.PathLike,
    splits: tuple[int, int, int] = (6, 2, 3),
    captions: int = 4,
    fps: int = 4,
    seconds: int = 4,
    width: int = 80,
    height: int = 64,
    seed: int = 1,
) -> Path:
    """MSVD as distributed: train_list.txt, val_list.txt, test_list.txt, raw-captions.pkl (id ->
    list of token lists) and YouTubeClips/<id>.avi, with YouTube-like ids."""
    root = Path(root)
    (root / "YouTubeClips").mkdir(parents=True, exist_ok=True)
    raw, lists = {}, {"train": [], "val": [], "test": []}
    names = [s for s, k in zip(("train", "val", "test"), splits) for _ in range(k)]
    for n, (frames, caps) in enumerate(_clips(sum(splits), seed, width, height, fps * seconds, captions)):
        vid = f"-{n:02d}xYz_{n * 3}_{n * 3 + seconds}"
        write_video(root / "YouTubeClips" / f"{vid}.avi", frames, fps, fourcc="XVID")
        raw[vid] = [c.split() for c in caps]
        lists[names[n]].append(vid)
    for split, vids in lists.items():
        (root / f"{split}_list.txt").write_text("".join(v + "\n" for v in vids), encoding="utf-8")
    with open(root / "raw-captions.pkl", "wb") as f:
        pickle.dump(raw, f)
    return root
