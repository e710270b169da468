"""Synthetic moving-shapes dataset: layout, determinism, geometry, atomic caching."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import data.synthetic.generate as synthetic
from data.synthetic.generate import SyntheticConfig, _plan, default_synthetic_root, ensure_synthetic_dataset
from data.synthetic.render import BACKGROUNDS, COLORS, DIRECTIONS, SHAPES, all_combos, canonical_caption, render_clip
from data.video.decode import probe_video, read_frames

SMALL = dict(num_train=40, num_val=10, num_test=12)
TEXT_FILES = ["MSRVTT_data.json", "MSRVTT_train.9k.csv", "MSRVTT_train.7k.csv", "MSRVTT_JSFUSION_test.csv", "MSRVTT_val.csv", "attributes.json", "COMPLETE"]


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    return ensure_synthetic_dataset(tmp_path_factory.mktemp("syn") / "small", seed=0, progress=False, **SMALL)


@pytest.fixture(scope="module")
def attrs(small) -> dict:
    return json.loads((small / "attributes.json").read_text())


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def all_frames(path) -> np.ndarray:
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    out = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        out.append(cv2.cvtColor(f, cv2.COLOR_BGR2RGB))
    cap.release()
    return np.stack(out)


def centroids(frames: np.ndarray, background: str) -> np.ndarray:
    """Shape centroid (x, y) per frame [T, 2], weighted by the distance to the background colour
    (minus 20, which removes the codec's noise on the background)."""
    w = np.clip(np.abs(frames.astype(int) - np.array(BACKGROUNDS[background])).sum(-1) - 20, 0, None).astype(float)
    total = w.sum(axis=(1, 2))
    xs = (w * np.arange(w.shape[2])[None, None, :]).sum(axis=(1, 2)) / total
    ys = (w * np.arange(w.shape[1])[None, :, None]).sum(axis=(1, 2)) / total
    return np.stack([xs, ys], axis=1)


# ---- the world ---------------------------------------------------------------------------------


def test_palettes_and_combos():
    assert len(COLORS) >= 8 and len(SHAPES) >= 4 and len(BACKGROUNDS) >= 6 and len(DIRECTIONS) == 4
    combos = all_combos()
    assert len(combos) == 720  # 8*4*6*4 = 768 minus the 48 with shape colour == background colour
    assert all(COLORS[c] != BACKGROUNDS[b] for c, _, b, _ in combos)
    assert len({canonical_caption(*c) for c in combos}) == len(combos)
    assert canonical_caption("red", "circle", "blue", "left") == "a red circle moves left on a blue background"
    assert canonical_caption("orange", "cross", "gray", "up") == "an orange cross moves up on a gray background"


def test_train_covers_every_combo_and_test_is_unique():
    records = _plan(SyntheticConfig(num_train=800, num_val=250, num_test=500))
    train = [r for r in records if r["split"] == "train"]
    seen = {(r["spec"].color, r["spec"].shape, r["spec"].background, r["spec"].direction) for r in train}
    assert seen == set(all_combos())
    for split, n in (("test", 500), ("validate", 250)):
        caps = [r["captions"][0] for r in records if r["split"] == split]
        assert len(caps) == n and len(set(caps)) == n
    with pytest.raises(ValueError, match="num_test"):
        SyntheticConfig(num_test=721).validate()



def test_train_clips_come_in_minimal_pair_runs():
    """4 consecutive clips: one scene in all 4 directions (two exact reversal pairs); 16
    consecutive clips: one colour on one background, each shape once per group of 4."""
    from data.synthetic.render import OPPOSITE
    train = [r["spec"] for r in _plan(SyntheticConfig(num_train=160, num_val=10, num_test=10)) if r["split"] == "train"]
    for run in range(0, 160, 16):
        block = train[run:run + 16]
        assert len({(s.color, s.background) for s in block}) == 1
        shapes = []
        for g in range(0, 16, 4):
            group = block[g:g + 4]
            assert len({(s.color, s.shape, s.background) for s in group}) == 1
            assert sorted(s.direction for s in group) == sorted(DIRECTIONS)
            for a, b in (group[:2], group[2:]):
                assert b.direction == OPPOSITE[a.direction] and b.start == a.end and b.end == a.start
            shapes.append(group[0].shape)
        assert sorted(shapes) == sorted(SHAPES)
    # Runs differ from each other: the (colour, background) order is shuffled, not fixed.
    assert len({(s.color, s.background) for s in train[::16]}) > 1

# ---- layout ------------------------------------------------------------------------------------


def test_msrvtt_layout(small, attrs):
    for name in TEXT_FILES:
        assert (small / name).is_file(), name
    videos = sorted((small / "videos").iterdir(), key=lambda p: int(p.stem[5:]))
    assert [p.name for p in videos] == [f"video{i}.mp4" for i in range(62)]

    meta = json.loads((small / "MSRVTT_data.json").read_text())
    assert [v["video_id"] for v in meta["videos"]] == [f"video{i}" for i in range(62)]
    assert [v["split"] for v in meta["videos"]] == ["train"] * 40 + ["validate"] * 10 + ["test"] * 12
    assert all(isinstance(v["category"], int) for v in meta["videos"])
    assert [s["sen_id"] for s in meta["sentences"]] == list(range(len(meta["sentences"])))
    caps = {}
    for s in meta["sentences"]:
        caps.setdefault(s["video_id"], []).append(s["caption"])

    train = [r["video_id"] for r in read_csv(small / "MSRVTT_train.9k.csv")]
    assert train == [f"video{i}" for i in range(40)]
    assert [r["video_id"] for r in read_csv(small / "MSRVTT_train.7k.csv")] == train[:31]  # 78% of 40
    for v in train:  # canonical + 4 distinct paraphrases, canonical first
        a = attrs[v]
        assert len(caps[v]) == 5 == len(set(caps[v]))
        assert caps[v][0] == canonical_caption(a["color"], a["shape"], a["background"], a["direction"])
        assert all(a["color"] in c and a["shape"] in c and a["background"] in c for c in caps[v])

    for name, first, n in (("MSRVTT_JSFUSION_test.csv", 50, 12), ("MSRVTT_val.csv", 40, 10)):
        rows = read_csv(small / name)
        assert list(rows[0]) == ["key", "vid_key", "video_id", "sentence"]
        assert [r["key"] for r in rows] == [f"ret{i}" for i in range(n)]
        assert [r["video_id"] for r in rows] == [f"video{first + i}" for i in range(n)]
        assert [r["vid_key"] for r in rows] == [f"msr{first + i}" for i in range(n)]
        sentences = [r["sentence"] for r in rows]
        assert len(set(sentences)) == n  # unique within the split
        for r in rows:  # canonical only, and the JSON agrees
            a = attrs[r["video_id"]]
            assert r["sentence"] == canonical_caption(a["color"], a["shape"], a["background"], a["direction"])
            assert caps[r["video_id"]] == [r["sentence"]]


def test_video_files(small):
    info = probe_video(small / "videos" / "video0.mp4")
    assert (info.fps, info.frame_count, info.width, info.height, info.duration) == (2.0, 16, 64, 64, 8.0)
    frames, times = read_frames(small / "videos" / "video0.mp4", fps=1.0, max_frames=12)
    assert frames.shape == (8, 64, 64, 3)
    np.testing.assert_allclose(times, np.arange(8))


# ---- determinism -------------------------------------------------------------------------------


def test_same_seed_same_dataset(small, tmp_path):
    # In-process here, a process pool for the fixture: output must not depend on scheduling.
    other = ensure_synthetic_dataset(tmp_path / "again", seed=0, num_workers=0, progress=False, **SMALL)
    for name in TEXT_FILES:
        assert (small / name).read_bytes() == (other / name).read_bytes(), name
    for i in range(62):
        np.testing.assert_array_equal(all_frames(small / f"videos/video{i}.mp4"), all_frames(other / f"videos/video{i}.mp4"))


def test_other_seed_other_dataset(small):
    a = _plan(SyntheticConfig(seed=0, **SMALL))
    b = _plan(SyntheticConfig(seed=1, **SMALL))
    assert [r["captions"] for r in a] != [r["captions"] for r in b]
    assert [r["captions"] for r in a] == [r["captions"] for r in _plan(SyntheticConfig(seed=0, **SMALL))]


# ---- geometry ----------------------------------------------------------------------------------


def test_rendered_shape_stays_inside_the_frame(small):
    # Checked on the rendered frames (the codec smears colour near edges, so not on decoded ones).
    for r in _plan(SyntheticConfig(seed=0, **SMALL)):
        spec = r["spec"]
        frames = render_clip(spec)[..., ::-1]  # BGR -> RGB
        diff = np.abs(frames.astype(int) - np.array(BACKGROUNDS[spec.background])).sum(-1)
        assert (diff > 0).any(axis=(1, 2)).all(), f"{r['video_id']}: shape invisible in some frame"
        border = np.concatenate([diff[:, 0, :], diff[:, -1, :], diff[:, :, 0], diff[:, :, -1]], axis=1)
        assert border.max() == 0, f"{r['video_id']}: shape reaches the frame border"


def test_shapes_move_straight_at_constant_speed(small, attrs):
    for vid, a in attrs.items():
        frames = all_frames(small / f"videos/{vid}.mp4")
        assert len(frames) == 16  # 2 fps x 8 s
        c = centroids(frames, a["background"])
        moved = c[-1] - c[0]
        np.testing.assert_allclose(moved, np.subtract(a["end"], a["start"]), atol=0.75, err_msg=vid)
        dx, dy = DIRECTIONS[a["direction"]]
        assert np.sign(np.round(moved)).tolist() == [dx, dy], vid
        step = np.diff(c, axis=0)  # per frame; speed is |end - start| / 31 (0.7 .. 1.4 px)
        assert np.abs(step - step.mean(0)).max() < 0.6, f"{vid}: speed not constant"


def test_reversed_left_clip_looks_like_a_right_clip(small, attrs):
    left = next(v for v, a in attrs.items() if a["direction"] == "left")
    right = next(v for v, a in attrs.items() if a["direction"] == "right")
    bg = lambda v: attrs[v]["background"]  # noqa: E731
    fwd, _ = read_frames(small / f"videos/{left}.mp4")
    rev, _ = read_frames(small / f"videos/{left}.mp4", frame_order="reverse")
    ref, _ = read_frames(small / f"videos/{right}.mp4")
    c_fwd, c_rev, c_ref = centroids(fwd, bg(left)), centroids(rev, bg(left)), centroids(ref, bg(right))
    assert (np.diff(c_fwd[:, 0]) < 0).all()
    assert (np.diff(c_rev[:, 0]) > 0).all() and (np.diff(c_ref[:, 0]) > 0).all()  # both go right
    assert np.abs(np.diff(c_rev[:, 1])).max() < 0.3 and np.abs(np.diff(c_ref[:, 1])).max() < 0.3
    # constant speed both ways (per second, about 3 px): no acceleration cue gives the reversal away
    for c in (c_rev, c_ref):
        d = np.diff(c[:, 0])
        assert d.max() - d.min() < 1.0


# ---- caching, marker, atomicity ----------------------------------------------------------------


def test_complete_dataset_is_reused(small, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("should not regenerate")

    monkeypatch.setattr(synthetic, "generate_synthetic_dataset", boom)
    assert ensure_synthetic_dataset(small, seed=0, progress=False, **SMALL) == small
    marker = json.loads((small / "COMPLETE").read_text())
    assert marker == SyntheticConfig(seed=0, **SMALL).params()


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "_write_text_files", killed)
    with pytest.raises(KeyboardInterrupt):
        ensure_synthetic_dataset(tmp_path / "ds", num_workers=0, progress=False, num_train=3, num_val=1, num_test=1)
    assert list(tmp_path.iterdir()) == []


def test_stale_temp_folder_of_dead_process_is_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".ds.tmp-{dead.pid}-deadbeef"
    (stale / "videos").mkdir(parents=True)
    (stale / "videos" / "video0.mp4").write_bytes(b"half")
    root = ensure_synthetic_dataset(tmp_path / "ds", num_workers=0, progress=False, num_train=3, num_val=1, num_test=1)
    assert (root / "COMPLETE").is_file() and not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_explicit_root_is_never_overwritten(small, tmp_path):
    with pytest.raises(ValueError, match="other parameters"):
        ensure_synthetic_dataset(small, seed=1, progress=False, **SMALL)
    junk = tmp_path / "mine"
    junk.mkdir()
    (junk / "thesis.pdf").write_text("precious")
    with pytest.raises(FileExistsError, match="not empty"):
        ensure_synthetic_dataset(junk, progress=False, **SMALL)
    assert (junk / "thesis.pdf").read_text() == "precious"
    with pytest.raises(TypeError, match="num_trian"):
        ensure_synthetic_dataset(tmp_path / "x", num_trian=3)


def test_default_root_uses_env_and_parameter_hash(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIP4CLIP_DATA_DIR", str(tmp_path))
    a = default_synthetic_root(SyntheticConfig(**SMALL))
    b = default_synthetic_root(SyntheticConfig(seed=1, **SMALL))
    assert a.parent == tmp_path and a.name.startswith("synthetic-") and a != b
    assert a == default_synthetic_root(SyntheticConfig(**SMALL))
    # an incomplete folder at the default location (not the user's) is replaced
    a.mkdir()
    (a / "leftover").write_text("x")
    root = ensure_synthetic_dataset(num_workers=0, progress=False, num_train=3, num_val=1, num_test=1)
    assert root.parent == tmp_path and (root / "COMPLETE").is_file()
    monkeypatch.delenv("CLIP4CLIP_DATA_DIR")
    assert default_synthetic_root(SyntheticConfig()).parent == Path.home() / ".cache" / "clip4clip"
    assert os.environ.get("CLIP4CLIP_DATA_DIR") is None


def test_decoded_colours_are_the_named_ones(small, attrs):
    for vid, a in attrs.items():
        frame = all_frames(small / f"videos/{vid}.mp4")[0].astype(int)
        x, y = (int(round(v)) for v in a["start"])
        assert np.abs(frame[y, x] - COLORS[a["color"]]).max() < 40, (vid, frame[y, x], a["color"])
        far = max([(0, 0), (0, 63), (63, 0), (63, 63)], key=lambda p: (p[0] - x) ** 2 + (p[1] - y) ** 2)
        assert np.abs(frame[far[1], far[0]] - BACKGROUNDS[a["background"]]).max() < 25, (vid, a["background"])
