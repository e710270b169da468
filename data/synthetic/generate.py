"""Deterministic synthetic "moving shapes" dataset, written in the MSR-VTT layout.

``ensure_synthetic_dataset()`` returns a folder laid out exactly like MSR-VTT as distributed for
CLIP4Clip, so the real loading path (``MSRVTTDataset``) runs on it::

    videos/video<N>.mp4          N = 0.. over train, then val, then test (mp4v, 64x64, 2 fps, 8 s)
    MSRVTT_data.json             {"videos": [...], "sentences": [...]} (every caption)
    MSRVTT_train.9k.csv          video_id            (all train videos)
    MSRVTT_train.7k.csv          video_id            (the first 78% of train videos)
    MSRVTT_JSFUSION_test.csv     key,vid_key,video_id,sentence   (one row per test clip)
    MSRVTT_val.csv               same columns, validation split (synthetic only)
    attributes.json              per video: split, colour, shape, background, direction, geometry
    COMPLETE                     written last; JSON of the generation parameters

Splits: every test clip has a caption no other test clip has (R@1 then means getting every
attribute right), same for val; train clips draw combos at random, covering every combo when
there are at least as many train clips as combos, and get the canonical caption plus
paraphrases. Val and test captions are canonical only.

Determinism: each clip's parameters come from ``np.random.default_rng([seed, split, index])``
and captions from their own stream, so the output does not depend on worker scheduling. The
same seed gives byte-identical text files and identical decoded frames.

Atomicity: generation happens in a hidden temporary sibling folder which is renamed into place
(``os.replace``) after ``COMPLETE`` is written, so a killed run never leaves a folder that looks
complete.
"""

from __future__ import annotations

import csv
import hashlib
import json
import multiprocessing as mp
import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from clip4clip.core.processes import pid_alive

from .render import (
    BACKGROUNDS,
    SHAPES,
    ClipSpec,
    all_combos,
    canonical_caption,
    make_clip_spec,
    paraphrases,
    render_clip,
    reversed_spec,
    with_cutaway,
)

__all__ = ["GENERATOR_VERSION", "SyntheticConfig", "default_synthetic_root", "ensure_synthetic_dataset"]

#: Bump when rendering or layout changes, so cached datasets are regenerated.
GENERATOR_VERSION = 7
MARKER = "COMPLETE"
_SPLIT_CODES = {"train": 0, "validate": 1, "test": 2}


@dataclass(frozen=True)
class SyntheticConfig:
    """All parameters that determine the generated data (they are hashed into the folder name).

    frame_size: width = height in pixels; video_fps: frames per second of the files;
    seconds: clip length; num_*: clips per split; train_captions: captions per train video
    (canonical + paraphrases, 1..9); train_7k_fraction: share of train videos in the 7k CSV;
    minimal_pairs: train clips come in groups of 4 consecutive videos sharing colour, shape and
    background: a clip, its exact time reversal (opposite direction, same frames backwards),
    and a perpendicular clip with its reversal; and runs of 4 such groups (16 clips) share
    colour and background with a different shape each. Batches that keep such runs together
    (``trainer.shuffle_block=16``) always hold negatives that differ only in motion direction
    or only in shape, which a contrastive model trained from scratch needs to learn those at all;
    scene_cuts: fraction of clips (every split) that open with a static "cutaway" shot (a plain
    background of another colour, no shape) for the first 25-50% of their frames and then cut
    to the captioned scene, already in motion. The cut frame is stored in attributes.json
    (``cut``). For keyframe studies: uniform sampling spends frames on the cutaway, maxdiff
    jumps to the cut. 0 (the default) leaves the dataset, and its hash, exactly as before.
    """

    seed: int = 0
    frame_size: int = 64
    video_fps: int = 2
    seconds: int = 8
    num_train: int = 3000
    num_val: int = 250
    num_test: int = 500
    train_captions: int = 5
    train_7k_fraction: float = 0.78
    minimal_pairs: bool = True
    scene_cuts: float = 0.0

    def validate(self) -> None:
        n_combos = len(all_combos())
        if self.frame_size < 16 or self.frame_size % 2:
            raise ValueError(f"frame_size must be an even number >= 16, got {self.frame_size}")
        if self.video_fps < 1 or self.seconds < 1:
            raise ValueError(f"video_fps and seconds must be >= 1, got {self.video_fps}, {self.seconds}")
        for name in ("num_train", "num_val", "num_test"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("num_val", "num_test"):
            if getattr(self, name) > n_combos:
                raise ValueError(
                    f"{name}={getattr(self, name)} exceeds the {n_combos} distinct captions; "
                    "val/test captions must be unique within the split"
                )
        if not 1 <= self.train_captions <= 9:
            raise ValueError(f"train_captions must be in 1..9 (canonical + up to 8 paraphrases), got {self.train_captions}")
        if not 0 < self.train_7k_fraction <= 1:
            raise ValueError(f"train_7k_fraction must be in (0, 1], got {self.train_7k_fraction}")
        if not 0 <= self.scene_cuts <= 1:
            raise ValueError(f"scene_cuts must be a fraction in [0, 1], got {self.scene_cuts}")

    def params(self) -> dict:
        p = {"generator_version": GENERATOR_VERSION, **asdict(self)}
        if not self.scene_cuts:
            del p["scene_cuts"]  # added later: absent when off, so existing datasets keep their hash
        return p

    def short_hash(self) -> str:
        blob = json.dumps(self.params(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:10]


def default_synthetic_root(config: SyntheticConfig) -> Path:
    """``$CLIP4CLIP_DATA_DIR/synthetic-<hash>``, else ``~/.cache/clip4clip/synthetic-<hash>``."""
    base = os.environ.get("CLIP4CLIP_DATA_DIR")
    parent = Path(base) if base else Path.home() / ".cache" / "clip4clip"
    return parent / f"synthetic-{config.short_hash()}"


# ----------------------------------------------------------------------------------------------
# Planning: which combo, geometry and captions each clip gets (cheap, main process)
# ----------------------------------------------------------------------------------------------


def _plan(cfg: SyntheticConfig) -> list[dict]:
    """One record per clip, in video-number order: split, video_id, spec, captions."""
    combos = all_combos()
    n = len(combos)
    num_frames = cfg.video_fps * cfg.seconds
    records = []
    for split, count in (("train", cfg.num_train), ("validate", cfg.num_val), ("test", cfg.num_test)):
        code = _SPLIT_CODES[split]
        pick_rng = np.random.default_rng([cfg.seed, code, 1_000_000])
        if split == "train" and cfg.minimal_pairs:
            records.extend(_plan_minimal_pair_groups(cfg, code, count, num_frames, len(records)))
            continue
        if split == "train" and count >= n:
            # Every combo at least once, the rest at random, then shuffled.
            extra = pick_rng.integers(0, n, size=count - n)
            choice = pick_rng.permutation(np.concatenate([np.arange(n), extra]))
        else:
            choice = pick_rng.choice(n, size=count, replace=False)  # unique captions in the split
        for i, c in enumerate(choice):
            combo = combos[int(c)]
            spec = make_clip_spec(combo, np.random.default_rng([cfg.seed, code, i]), cfg.frame_size, cfg.frame_size, num_frames)
            captions = [canonical_caption(*combo)]
            if split == "train" and cfg.train_captions > 1:
                alts = paraphrases(*combo)
                pick = np.random.default_rng([cfg.seed, code, i, 1]).choice(len(alts), cfg.train_captions - 1, replace=False)
                captions += [alts[int(k)] for k in sorted(pick)]
            records.append({"split": split, "video_id": f"video{len(records)}", "spec": spec, "captions": captions})
    if cfg.scene_cuts:
        _plan_scene_cuts(cfg, records, num_frames)
    return records


def _plan_scene_cuts(cfg: SyntheticConfig, records: list[dict], num_frames: int) -> None:
    """Give a ``scene_cuts`` fraction of the clips a cutaway opening: record["cut"] = {"frame":
    first frame of the captioned scene, "cutaway": background colour of the opening shot}."""
    for i, r in enumerate(records):
        rng = np.random.default_rng([cfg.seed, 3_000_000, i])  # its own stream: other choices unchanged
        if rng.random() >= cfg.scene_cuts:
            continue
        frame = int(rng.integers(max(num_frames // 4, 1), max(num_frames // 2, 1) + 1))
        others = [b for b in BACKGROUNDS if b != r["spec"].background]
        r["cut"] = {"frame": frame, "cutaway": others[int(rng.integers(len(others)))]}


def _plan_minimal_pair_groups(cfg: SyntheticConfig, code: int, count: int, num_frames: int,
                              first_number: int) -> list[dict]:
    """Train records in groups of 4 (see ``SyntheticConfig.minimal_pairs``), and the groups in
    runs of 4 that share colour and background and differ in shape: 16 consecutive clips are one
    colour on one background, every shape, every direction. The scenes (colour, shape,
    background) cycle through every possible one in a shuffled order."""
    pairs = sorted({(c, b) for c, _, b, _ in all_combos()})
    pick_rng = np.random.default_rng([cfg.seed, code, 2_000_000])
    order = []
    while len(order) * 4 < count:
        for k in pick_rng.permutation(len(pairs)):
            color, background = pairs[int(k)]
            order.extend((color, SHAPES[int(j)], background) for j in pick_rng.permutation(len(SHAPES)))
    records = []
    for g, scene in enumerate(order):
        rng = np.random.default_rng([cfg.seed, code, g])
        first = ("left", "right", "up", "down")[int(rng.integers(4))]
        perpendicular = ("up", "down") if first in ("left", "right") else ("left", "right")
        second = perpendicular[int(rng.integers(2))]
        for direction in (first, second):
            spec = make_clip_spec((*scene, direction), rng, cfg.frame_size, cfg.frame_size, num_frames)
            for s in (spec, reversed_spec(spec)):
                if len(records) == count:
                    return records
                i = len(records)
                combo = (s.color, s.shape, s.background, s.direction)
                captions = [canonical_caption(*combo)]
                if cfg.train_captions > 1:
                    alts = paraphrases(*combo)
                    pick = np.random.default_rng([cfg.seed, code, i, 1]).choice(len(alts), cfg.train_captions - 1, replace=False)
                    captions += [alts[int(k)] for k in sorted(pick)]
                records.append({"split": "train", "video_id": f"video{first_number + i}", "spec": s, "captions": captions})
    return records


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------


def _write_clip(path: str, spec: ClipSpec, fps: int, cut: dict | None = None) -> None:
    frames = render_clip(spec)
    if cut:
        frames = with_cutaway(frames, cut["frame"], cut["cutaway"])
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (spec.width, spec.height))
    if not writer.isOpened():
        raise RuntimeError(f"cv2.VideoWriter cannot open {path!r} with fourcc mp4v (OpenCV built without FFmpeg?)")
    try:
        for frame in frames:
            writer.write(frame)
    finally:
        writer.release()


def _write_chunk(task: tuple[str, int, list[tuple[str, ClipSpec]]]) -> int:
    video_dir, fps, items = task
    for video_id, spec, cut in items:
        _write_clip(os.path.join(video_dir, f"{video_id}.mp4"), spec, fps, cut)
    return len(items)


def _worker_init() -> None:
    cv2.setNumThreads(1)  # one process per core already; avoid oversubscription


def _write_videos(records: list[dict], video_dir: Path, fps: int, num_workers: int, progress: bool) -> None:
    items = [(r["video_id"], r["spec"], r.get("cut")) for r in records]
    chunk = 50
    tasks = [(str(video_dir), fps, items[k : k + chunk]) for k in range(0, len(items), chunk)]
    bar = tqdm(total=len(items), desc="synthetic clips", unit="clip", disable=not progress)
    try:
        if num_workers <= 1 or len(tasks) == 1:
            for t in tasks:
                bar.update(_write_chunk(t))
        else:
            # fork is cheap and needs no re-import; fall back to spawn where it does not exist.
            method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
            with mp.get_context(method).Pool(min(num_workers, len(tasks)), initializer=_worker_init) as pool:
                for done in pool.imap_unordered(_write_chunk, tasks):
                    bar.update(done)
    finally:
        bar.close()


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def _write_text_files(records: list[dict], out: Path, cfg: SyntheticConfig) -> None:
    duration = float(cfg.seconds)
    videos, sentences, attributes = [], [], {}
    for r in records:
        num = int(r["video_id"][len("video") :])
        spec: ClipSpec = r["spec"]
        videos.append(
            {
                "category": SHAPES.index(spec.shape),  # the shape, as an MSR-VTT-style category number
                "url": "",
                "video_id": r["video_id"],
                "start time": 0.0,
                "end time": duration,
                "split": r["split"],
                "id": num,
            }
        )
        for cap in r["captions"]:
            sentences.append({"caption": cap, "video_id": r["video_id"], "sen_id": len(sentences)})
        attributes[r["video_id"]] = {"split": r["split"], "caption": r["captions"][0], **spec.to_dict()}
        if "cut" in r:
            attributes[r["video_id"]]["cut"] = r["cut"]

    with open(out / "MSRVTT_data.json", "w", encoding="utf-8") as f:
        json.dump({"info": {"synthetic": True, **cfg.params()}, "videos": videos, "sentences": sentences}, f)
    with open(out / "attributes.json", "w", encoding="utf-8") as f:
        # One line per clip (readable, diffable) through json's C encoder: indent= would
        # switch the whole file to the pure-Python one (~1 s for the demo's 3750 clips).
        f.write("{\n" + ",\n".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in attributes.items()) + "\n}\n")

    train = [r["video_id"] for r in records if r["split"] == "train"]
    n7k = max(1, int(round(len(train) * cfg.train_7k_fraction)))
    _write_csv(out / "MSRVTT_train.9k.csv", ["video_id"], [[v] for v in train])
    _write_csv(out / "MSRVTT_train.7k.csv", ["video_id"], [[v] for v in train[:n7k]])
    for split, name in (("test", "MSRVTT_JSFUSION_test.csv"), ("validate", "MSRVTT_val.csv")):
        rows = [r for r in records if r["split"] == split]
        _write_csv(
            out / name,
            ["key", "vid_key", "video_id", "sentence"],
            [[f"ret{i}", "msr" + r["video_id"][len("video") :], r["video_id"], r["captions"][0]] for i, r in enumerate(rows)],
        )


def generate_synthetic_dataset(out: Path, cfg: SyntheticConfig, num_workers: int = 1, progress: bool = True) -> None:
    """Write the whole dataset into ``out`` (created; should not exist). ``COMPLETE`` is written last."""
    cfg.validate()
    out.mkdir(parents=True)
    (out / "videos").mkdir()
    records = _plan(cfg)
    _write_videos(records, out / "videos", cfg.video_fps, num_workers, progress)
    _write_text_files(records, out, cfg)
    (out / MARKER).write_text(json.dumps(cfg.params(), sort_keys=True) + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------------------------
# Cache folder handling
# ----------------------------------------------------------------------------------------------


def _marker_params(root: Path) -> dict | None:
    try:
        return json.loads((root / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _remove_stale_tmp(root: Path) -> None:
    """Delete temporary folders of killed generations for ``root`` (their process is gone)."""
    if not root.parent.is_dir():
        return
    for p in root.parent.glob(f".{root.name}.tmp-*"):
        try:
            pid = int(p.name.split(".tmp-")[1].split("-")[0])
        except (ValueError, IndexError):
            continue  # not ours
        if not pid_alive(pid):
            shutil.rmtree(p, ignore_errors=True)


def ensure_synthetic_dataset(
    root: str | os.PathLike | None = None,
    seed: int = 0,
    *,
    num_workers: int | None = None,
    progress: bool = True,
    **params,
) -> Path:
    """Return the folder of the synthetic dataset for these parameters, generating it if needed.

    root: target folder; default ``default_synthetic_root`` (a hash of all parameters in the name).
    seed, **params: ``SyntheticConfig`` fields (frame_size, video_fps, seconds, num_train,
    num_val, num_test, train_captions, train_7k_fraction, minimal_pairs, scene_cuts).
    num_workers: processes for writing videos (default: CPU count, at most 8; 0/1 = in process).
    A folder with a ``COMPLETE`` marker holding the same parameters is returned as is. An explicit
    ``root`` that holds something else raises (nothing of the user's is deleted); an incomplete
    folder at the default location is replaced.
    """
    unknown = set(params) - set(SyntheticConfig.__dataclass_fields__)
    if unknown:
        raise TypeError(f"unknown synthetic dataset parameter(s) {sorted(unknown)}; expected {sorted(SyntheticConfig.__dataclass_fields__)}")
    cfg = SyntheticConfig(seed=seed, **params)
    cfg.validate()
    explicit = root is not None
    root = Path(root).expanduser() if explicit else default_synthetic_root(cfg)
    want = cfg.params()

    found = _marker_params(root)
    if found == want:
        return root
    if root.exists():
        if found is not None and explicit:
            raise ValueError(f"{root} holds a synthetic dataset generated with other parameters {found}; wanted {want}")
        if explicit and any(root.iterdir()):
            raise FileExistsError(f"{root} exists, is not empty and is not a complete synthetic dataset; choose another root")
        if not explicit:
            shutil.rmtree(root)  # our own cache folder, incomplete or stale

    root.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(root)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    if num_workers is None:
        num_workers = min(os.cpu_count() or 1, 8)
    t0 = time.perf_counter()
    try:
        generate_synthetic_dataset(tmp, cfg, num_workers=num_workers, progress=progress)
        try:
            os.replace(tmp, root)
        except OSError:
            # Another process finished the same dataset first: use theirs.
            if _marker_params(root) != want:
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    if progress:
        print(f"synthetic dataset written to {root} in {time.perf_counter() - t0:.1f} s")
    return root
