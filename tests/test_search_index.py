"""Search: indexing real and synthetic libraries, ranking, best moments, incremental updates,
refusal of another model, per-video failures and crash safety."""
import json
import os
import shutil
import sqlite3

import numpy as np
import pytest
import torch

import search_utils as su
from search_utils import base, run  # noqa: F401  (session fixtures)
from clip4clip.search import IndexMismatchError, SearchIndex, build_index
from clip4clip.search import indexer as indexer_mod
from clip4clip.search import store


@pytest.fixture(scope="session")
def synth_index(base, run):
    lib = su.synthetic_library(base, run["data"])
    return su.built_index("synthetic_index", lib, run["checkpoint"], base)


@pytest.fixture(scope="session")
def real_index(base, run):
    return su.built_index("real_index", su.real_videos(), run["checkpoint"], base)


def _db(index_dir):
    db = sqlite3.connect(store.require_version(index_dir) / "meta.sqlite")
    db.row_factory = sqlite3.Row
    return db


def test_real_clips_index_with_their_own_rates_thumbnails_and_playable_media(real_index):
    version = store.require_version(real_index)
    rows = {r["relpath"]: dict(r) for r in _db(real_index).execute("SELECT * FROM videos")}
    assert set(rows) == {"arm_wrestling.mp4", "eye_makeup.avi", "pool_cleaning.mp4"}
    expected = {"arm_wrestling.mp4": (28, 10.0), "eye_makeup.avi": (25, 6.56), "pool_cleaning.mp4": (30, 10.0)}
    for rel, (fps, duration) in expected.items():
        r = rows[rel]
        assert r["fps"] == pytest.approx(fps) and r["duration"] == pytest.approx(duration, abs=0.05)
        times = json.loads(r["frame_times"])
        assert times == sorted(times) and times[0] == 0 and len(times) == r["frame_count"] >= 6
        # 1 moment frame per second: the first frame at or after each whole second.
        assert np.allclose(np.diff(times), 1.0, atol=1.0 / fps)
        thumb = version / "thumbs" / f"{r['id']}.jpg"
        assert thumb.read_bytes()[:3] == b"\xff\xd8\xff"  # JPEG
    # Browsers play H.264 MP4 as it is; the AVI gets a WebM copy with the same frames.
    assert rows["arm_wrestling.mp4"]["media"] == rows["pool_cleaning.mp4"]["media"] == "original"
    avi = rows["eye_makeup.avi"]
    assert avi["media"] == "proxy"
    import cv2
    cap = cv2.VideoCapture(str(version / "media" / f"{avi['id']}.webm"))
    n = 0
    while cap.grab():
        n += 1
    assert n == avi["num_frames"] == 164 and cap.get(cv2.CAP_PROP_FPS) == pytest.approx(25)
    video = np.load(version / "video_emb.npy")
    frames = np.load(version / "frame_emb.npy")
    assert video.dtype == frames.dtype == np.float16
    assert video.shape[0] == 3 and frames.shape[0] == sum(r["frame_count"] for r in rows.values())
    assert np.allclose(np.linalg.norm(video.astype(np.float32), axis=1), 1, atol=1e-2)


def test_caption_search_finds_its_video_in_the_top_3(synth_index, run):
    """Every test caption is searched among the 24 test clips (chance of top 3: 12.5%)."""
    index = SearchIndex.open(synth_index)
    captions = su.split_captions(run["data"])
    ranks = []
    for vid, caption in captions.items():
        paths = [h.path for h in index.search(caption, k=len(captions))]
        ranks.append(paths.index(f"videos/{vid}.mp4") + 1)
    top3 = np.mean(np.array(ranks) <= 3)
    assert top3 >= 0.6, f"ranks of the captioned videos: {ranks}"
    # One caption, end to end: the first test caption finds its video in the top 3.
    first_vid, first_caption = next(iter(captions.items()))
    hits = index.search(first_caption, k=3)
    assert f"videos/{first_vid}.mp4" in [h.path for h in hits], (first_caption, [h.path for h in hits])
    # Hits carry the stored captions, and the caption baseline finds the exact caption's words.
    assert all(h.captions for h in hits)
    caption_hits = index.caption_search(first_caption, k=5)
    assert caption_hits and sorted(caption_hits[0].caption.split()) == sorted(first_caption.split())


def test_scores_are_the_evaluation_similarity(synth_index, run, tmp_path):
    """The index ranks by exactly what evaluate.py measures: same video embeddings (up to
    float16 storage) and cosine similarity with the same text embeddings."""
    from clip4clip.engine.evaluate_job import run_evaluation
    from framework_utils import compose_cfg
    cfg = compose_cfg("evaluate", [f"checkpoint={run['checkpoint']}", f"paths.output_dir={tmp_path / 'eval'}",
                                   "trainer.num_workers=0", "trainer.progress=false"])
    _, objs = run_evaluation(cfg)
    enc = objs["encoded"]
    index = SearchIndex.open(synth_index)
    emb = np.load(index.version / "video_emb.npy").astype(np.float32)
    rows = {r["relpath"]: r["row"] for r in _db(synth_index).execute("SELECT relpath, row FROM videos")}
    for i, vid in enumerate(enc.video_ids):
        assert np.abs(emb[rows[f"videos/{vid}.mp4"]] - enc.video_emb[i].numpy()).max() < 2e-3, vid
    for t in range(0, len(enc.texts), 6):
        hits = index.search(enc.texts[t], k=len(enc.video_ids))
        ours = {h.path: h.score for h in hits}
        ref = (enc.video_emb @ enc.text_emb[t]).numpy()
        for i, vid in enumerate(enc.video_ids):
            assert ours[f"videos/{vid}.mp4"] == pytest.approx(float(ref[i]), abs=3e-3)


def test_best_moment_is_where_the_caption_happens(base, run):
    """Videos spliced from two test clips (first 4 s of one, then the other): the caption of
    each part must point at a moment inside that part."""
    captions = su.split_captions(run["data"])
    attrs = json.loads((run["data"] / "attributes.json").read_text())
    vids = list(captions)
    lib = base / "spliced"
    lib.mkdir(exist_ok=True)
    pairs = []
    for a in vids:  # pair clips that differ in colour and background (what a short run learns)
        for b in vids:
            if len(pairs) < 8 and a != b and all(attrs[a][k] != attrs[b][k] for k in ("color", "background")) \
                    and a not in sum(pairs, ()) and b not in sum(pairs, ()):
                pairs.append((a, b))
    for a, b in pairs:
        su.splice(run["data"] / "videos" / f"{a}.mp4", run["data"] / "videos" / f"{b}.mp4", lib / f"{a}_{b}.mp4")
    index = SearchIndex.open(su.built_index("spliced_index", lib, run["checkpoint"], base))
    right = []
    for a, b in pairs:
        for vid, second_half in ((a, False), (b, True)):
            hit = {h.path: h for h in index.search(captions[vid], k=len(pairs))}[f"{a}_{b}.mp4"]
            right.append((hit.moment >= 4.0) == second_half)
            # The moment is the time of the highest-scoring indexed frame.
            scores = index.frame_scores(hit.id, captions[vid])
            assert hit.moment == max(scores, key=lambda s: s["score"])["time"]
    assert np.mean(right) >= 0.75, right


def test_reindex_adds_drops_and_reencodes_only_what_changed(tmp_path, run):
    lib = tmp_path / "lib"
    shutil.copytree(su.real_videos(), lib, ignore=shutil.ignore_patterns("*.md"))
    out = tmp_path / "index"
    enc = su.encoder(run["checkpoint"])
    first = build_index(lib, out, enc, progress=False)
    assert sorted(first.added) == ["arm_wrestling.mp4", "eye_makeup.avi", "pool_cleaning.mp4"]
    v1 = store.require_version(out)
    ids1 = {r["relpath"]: r["id"] for r in _db(out).execute("SELECT relpath, id FROM videos")}
    emb1 = {r["relpath"]: np.load(v1 / "video_emb.npy")[r["row"]]
            for r in _db(out).execute("SELECT relpath, row FROM videos")}

    (lib / "pool_cleaning.mp4").unlink()                                     # deleted
    (lib / "new" / "deeper").mkdir(parents=True)
    shutil.copy2(su.real_videos() / "pool_cleaning.mp4", lib / "new" / "deeper" / "again.mp4")  # added, nested
    shutil.copyfile(su.real_videos() / "pool_cleaning.mp4", lib / "arm_wrestling.mp4")  # changed content
    second = build_index(lib, out, enc, progress=False)
    assert second.added == ["new/deeper/again.mp4"]
    assert second.removed == ["pool_cleaning.mp4"]
    assert second.updated == ["arm_wrestling.mp4"]
    assert second.unchanged == ["eye_makeup.avi"]
    assert second.num_videos == 3 and not second.failed

    v2 = store.require_version(out)
    assert v2 != v1 and not v1.exists(), "the previous version is deleted once the new one is live"
    assert [p.name for p in out.iterdir() if p.name.startswith((".build", "v-"))] == [v2.name]
    rows = {r["relpath"]: r for r in _db(out).execute("SELECT relpath, id, row, media FROM videos")}
    emb2 = np.load(v2 / "video_emb.npy")
    assert rows["eye_makeup.avi"]["id"] == ids1["eye_makeup.avi"]        # ids are stable: URLs keep working
    assert rows["arm_wrestling.mp4"]["id"] == ids1["arm_wrestling.mp4"]
    assert np.array_equal(emb2[rows["eye_makeup.avi"]["row"]], emb1["eye_makeup.avi"])   # copied, not re-encoded
    assert np.array_equal(emb2[rows["arm_wrestling.mp4"]["row"]], emb1["pool_cleaning.mp4"])  # new content
    assert (v2 / "media" / f"{rows['eye_makeup.avi']['id']}.webm").is_file()  # playback copy carried over
    assert {h.path for h in SearchIndex.open(out).search("a pool", k=10)} == set(rows)


def test_index_built_with_another_model_is_refused(tmp_path, run):
    lib = tmp_path / "lib"
    lib.mkdir()
    shutil.copy2(su.real_videos() / "eye_makeup.avi", lib)
    out = tmp_path / "index"
    build_index(lib, out, su.encoder(run["checkpoint"]), progress=False, proxies="off")
    ckpt = torch.load(run["checkpoint"], map_location="cpu", weights_only=False)
    ckpt["model"]["clip.logit_scale"] = ckpt["model"]["clip.logit_scale"] + 0.5
    other = tmp_path / "other.pt"
    torch.save(ckpt, other)
    from clip4clip.search import Encoder
    other_enc = Encoder.load(str(other))
    with pytest.raises(IndexMismatchError, match=r"another model.*--rebuild"):
        build_index(lib, out, other_enc, progress=False)
    with pytest.raises(ValueError, match="was built with model"):
        SearchIndex.open(out, checkpoint=str(other))
    # Other frame sampling would mix incomparable embeddings too.
    with pytest.raises(IndexMismatchError, match="max_frames"):
        build_index(lib, out, Encoder.load(str(run["checkpoint"]), max_frames=2), progress=False)
    # The command line says it in one line and exits with status 2.
    code, _, err = su.run_cli("index", "--videos", str(lib), "--checkpoint", str(other), "--out", str(out),
                              "--no-progress")
    assert code == 2 and "error:" in err and "another model" in err and "Traceback" not in err
    # --rebuild replaces it.
    report = build_index(lib, out, other_enc, progress=False, rebuild=True, proxies="off")
    assert report.added == ["eye_makeup.avi"]
    assert SearchIndex.open(out).meta["fingerprint"] == other_enc.fingerprint


def test_broken_files_are_reported_and_the_rest_indexed(tmp_path, run):
    lib = tmp_path / "lib"
    lib.mkdir()
    shutil.copy2(su.real_videos() / "arm_wrestling.mp4", lib)
    (lib / "empty.mp4").write_bytes(b"")
    (lib / "not_a_video.mkv").write_text("hello")
    shutil.copyfile(su.real_videos() / "pool_cleaning.mp4", lib / "truncated.mp4")
    with open(lib / "truncated.mp4", "r+b") as f:
        f.truncate(os.path.getsize(lib / "truncated.mp4") // 3)  # its 'moov' index is at the end
    (lib / "notes.txt").write_text("not a video extension: ignored")
    report = build_index(lib, tmp_path / "index", su.encoder(run["checkpoint"]), progress=False)
    failed = dict(report.failed)
    assert set(failed) == {"empty.mp4", "not_a_video.mkv", "truncated.mp4"}
    assert "empty" in failed["empty.mp4"] and "VideoReadError" in failed["not_a_video.mkv"]
    assert report.added == ["arm_wrestling.mp4"] and report.num_videos == 1
    assert "failed: empty.mp4" in report.summary()
    stored = _db(tmp_path / "index").execute("SELECT relpath FROM failures").fetchall()
    assert {r[0] for r in stored} == set(failed)


def test_a_crash_mid_index_leaves_the_previous_version(tmp_path, run, monkeypatch):
    lib = tmp_path / "lib"
    lib.mkdir()
    shutil.copy2(su.real_videos() / "arm_wrestling.mp4", lib)
    out = tmp_path / "index"
    enc = su.encoder(run["checkpoint"])
    build_index(lib, out, enc, progress=False)
    before = (out / "CURRENT").read_text()
    shutil.copy2(su.real_videos() / "pool_cleaning.mp4", lib)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # stands for a kill at the worst moment: mid-version
    monkeypatch.setattr(indexer_mod, "write_thumbnail", killed)
    with pytest.raises(KeyboardInterrupt):
        build_index(lib, out, enc, progress=False)
    assert (out / "CURRENT").read_text() == before
    assert not [p for p in out.iterdir() if p.name.startswith(".build")]
    assert [h.path for h in SearchIndex.open(out).search("anything", k=5)] == ["arm_wrestling.mp4"]
    # A process killed outright leaves its build folder; the next run removes it.
    orphan = out / ".build-999999999-deadbeef"
    orphan.mkdir()
    monkeypatch.undo()
    report = build_index(lib, out, enc, progress=False)
    assert report.added == ["pool_cleaning.mp4"] and not orphan.exists()


def test_refuses_to_write_into_a_folder_that_is_not_an_index(tmp_path, run):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a search index"):
        build_index(su.real_videos(), tmp_path / "out", su.encoder(run["checkpoint"]), progress=False)
    with pytest.raises(FileNotFoundError, match="no such folder"):
        build_index(tmp_path / "nope", tmp_path / "out2", su.encoder(run["checkpoint"]), progress=False)
    with pytest.raises(FileNotFoundError, match="not a search index"):
        SearchIndex.open(tmp_path / "out")


def test_faiss_backend_ranks_like_exact_search(tmp_path, base, run):
    from clip4clip.search.ann import build_faiss_index, faiss_search
    lib = su.synthetic_library(base, run["data"])
    out = tmp_path / "index"
    build_index(lib, out, su.encoder(run["checkpoint"]), progress=False, faiss=True, proxies="off")
    exact = SearchIndex.open(out, encoder=su.encoder(run["checkpoint"]))
    approx = SearchIndex.open(out, encoder=su.encoder(run["checkpoint"]), backend="faiss")
    for caption in list(su.split_captions(run["data"]).values())[:5]:
        a, b = exact.search(caption, k=5), approx.search(caption, k=5)
        assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=2e-3)
        assert [(h.path, h.moment) for h in a[:1]] == [(h.path, h.moment) for h in b[:1]]
    # Large libraries get an IVF index: approximate, but it finds a stored vector itself.
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((4000, 32)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    ivf = build_faiss_index(emb, nlist=16)
    _, rows = faiss_search(ivf, emb[:50], k=1, nprobe=4)
    assert (rows[:, 0] == np.arange(50)).all()


@pytest.mark.parametrize("moment_frames", [64, 3])  # evaluation frames reused / decoded again
def test_video_frames_are_exactly_the_evaluation_frames(moment_frames):
    from clip4clip.search import Sampling
    from clip4clip.search.media import sample_for_index
    from data.video import read_frames
    for name, fps, max_frames in (("arm_wrestling.mp4", 1.0, 12), ("eye_makeup.avi", 0.5, 4),
                                  ("pool_cleaning.mp4", 2.0, 5)):
        path = su.real_videos() / name
        s = sample_for_index(path, Sampling(fps, max_frames, "uniform", 1.0, moment_frames, 32))
        want, _ = read_frames(path, fps, max_frames, "uniform")
        assert np.array_equal(s.video_frames, want), name
        assert len(s.moment_frames) == len(s.moment_times) == min(moment_frames, int(np.ceil(s.info.duration)))


def test_an_index_inside_its_library_does_not_index_itself(tmp_path, run):
    lib = tmp_path / "lib"
    lib.mkdir()
    shutil.copy2(su.real_videos() / "eye_makeup.avi", lib)  # gets a .webm playback copy in the index
    enc = su.encoder(run["checkpoint"])
    build_index(lib, lib / "search-index", enc, progress=False)
    again = build_index(lib, lib / "search-index", enc, progress=False)
    assert again.unchanged == ["eye_makeup.avi"] and not again.added
    with pytest.raises(ValueError, match="must not contain the library"):
        build_index(lib, tmp_path, enc, progress=False)


def test_a_lost_thumbnail_is_made_again(tmp_path, run):
    lib = tmp_path / "lib"
    lib.mkdir()
    shutil.copy2(su.real_videos() / "arm_wrestling.mp4", lib)
    out = tmp_path / "index"
    enc = su.encoder(run["checkpoint"])
    build_index(lib, out, enc, progress=False)
    next((store.require_version(out) / "thumbs").iterdir()).unlink()  # e.g. lost in a power cut
    report = build_index(lib, out, enc, progress=False)
    assert report.updated == ["arm_wrestling.mp4"]
    assert len(list((store.require_version(out) / "thumbs").iterdir())) == 1
