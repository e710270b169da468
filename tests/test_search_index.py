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
from clip4clip.search import IndexMismatchError, SearchIndex, best_segment, build_index
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
    # Browsers play H.264 MP4 as it is; the AVI gets an H.264 MP4 copy with the same frames,
    # a fraction of the original's size (the VP8 copy OpenCV writes was 2.7x the original).
    assert rows["arm_wrestling.mp4"]["media"] == rows["pool_cleaning.mp4"]["media"] == "original"
    avi = rows["eye_makeup.avi"]
    assert avi["media"] == "proxy"
    import cv2
    from clip4clip.search.media import browser_playable
    proxy = version / "media" / f"{avi['id']}.mp4"
    assert browser_playable(proxy)
    cap = cv2.VideoCapture(str(proxy))
    n = 0
    while cap.grab():
        n += 1
    assert n == avi["num_frames"] == 164 and cap.get(cv2.CAP_PROP_FPS) == pytest.approx(25)
    assert proxy.stat().st_size < 0.5 * (su.real_videos() / "eye_makeup.avi").stat().st_size
    # The whole index is smaller than the library it indexes, and says so.
    info = SearchIndex.open(real_index).info()
    library = sum((su.real_videos() / n).stat().st_size for n in rows)
    assert info["library_bytes"] == library and 0 < info["index_bytes"] < library / 4
    assert info["sizes"]["playback_copies"] == proxy.stat().st_size
    video = np.load(version / "video_emb.npy")
    frames = np.load(version / "frame_emb.npy")
    assert video.dtype == np.float32 and frames.dtype == np.float16  # ranking is float32, as evaluation
    assert video.shape[0] == 3 and frames.shape[0] == sum(r["frame_count"] for r in rows.values())
    assert np.allclose(np.linalg.norm(video, axis=1), 1, atol=1e-5)


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
    emb = np.load(index.version / "video_emb.npy")
    assert emb.dtype == np.float32  # float16 storage moved scores by ~1e-3 and changed ranks
    rows = {r["relpath"]: r["row"] for r in _db(synth_index).execute("SELECT relpath, row FROM videos")}
    for i, vid in enumerate(enc.video_ids):
        assert np.abs(emb[rows[f"videos/{vid}.mp4"]] - enc.video_emb[i].numpy()).max() < 1e-6, vid
    for t in range(0, len(enc.texts), 6):
        hits = index.search(enc.texts[t], k=len(enc.video_ids))
        ours = {h.path: h.score for h in hits}
        ref = (enc.video_emb @ enc.text_emb[t]).numpy()
        for i, vid in enumerate(enc.video_ids):
            assert ours[f"videos/{vid}.mp4"] == pytest.approx(float(ref[i]), abs=1e-6)


def test_search_over_the_test_clips_gives_the_runs_test_r1_exactly(synth_index, run):
    """Index the run's test clips, search every test caption (each caption is a query, as in
    evaluation, so a video with several captions counts once per caption): top-1 accuracy is the
    run's own test t2v R@1. Evaluation ranks pessimistically (every video scoring >= the right
    one counts as ahead of it), so a tie at the top is a miss here too."""
    import csv
    metrics = json.loads((run["run"] / "metrics.json").read_text())["test"]["t2v"]
    with open(run["data"] / "MSRVTT_JSFUSION_test.csv", newline="", encoding="utf-8") as f:
        queries = [(r["video_id"], r["sentence"]) for r in csv.DictReader(f)]
    assert metrics["num_queries"] == len(queries)
    index = SearchIndex.open(synth_index)
    right = 0
    for vid, caption in queries:
        hits = index.search(caption, k=2)
        right += hits[0].path == f"videos/{vid}.mp4" and hits[1].score < hits[0].score
    assert right == round(metrics["R1"] * len(queries) / 100), (right, metrics["R1"])
    assert 100 * right / len(queries) == pytest.approx(metrics["R1"], abs=1e-9)


def test_each_frame_goes_through_the_image_tower_once(tmp_path, run, monkeypatch):
    """The evaluation frames are moment frames too: they are encoded once, for both the video
    embedding (still exactly evaluation's) and the best moment."""
    from clip4clip.search.media import sample_for_index
    enc = su.encoder(run["checkpoint"])
    lib = tmp_path / "lib"
    lib.mkdir()
    for p in sorted((run["data"] / "videos").glob("*.mp4"))[:5]:
        shutil.copy2(p, lib / p.name)
    frames = []
    image_tower = enc.model.clip.encode_image

    def counting(x, **context):
        mask = context.get("frame_mask")
        frames.append(int(mask.sum()) if mask is not None else len(x))  # real frames, not padding
        return image_tower(x, **context)
    monkeypatch.setattr(enc.model.clip, "encode_image", counting)
    out = tmp_path / "index"
    build_index(lib, out, enc, progress=False, proxies="off")
    stored = sum(r["frame_count"] for r in _db(out).execute("SELECT frame_count FROM videos"))
    assert sum(frames) == stored  # 5 x 8 moment frames; the 4 evaluation frames of each among them
    samples = [sample_for_index(p, enc.sampling) for p in sorted(lib.iterdir())]
    frames.clear()
    video, moments = enc.encode_for_index([(s.moment_frames, s.video_pos) for s in samples])
    assert sum(frames) == sum(len(s.moment_frames) for s in samples)
    assert np.array_equal(video, enc.encode_videos([s.video_frames for s in samples]))
    for a, b in zip(moments, enc.encode_moments([s.moment_frames for s in samples])):
        assert np.allclose(a, b, atol=1e-6)
    emb = np.load(store.require_version(out) / "video_emb.npy")
    assert np.array_equal(emb, video)


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
    right, segment_right = [], []
    for a, b in pairs:
        for vid, second_half in ((a, False), (b, True)):
            hit = {h.path: h for h in index.search(captions[vid], k=len(pairs))}[f"{a}_{b}.mp4"]
            right.append((hit.moment >= 4.0) == second_half)
            # The moment is the time of the highest-scoring indexed frame, the segment the run of
            # frames around it within 10% of its score.
            scores = index.frame_scores(hit.id, captions[vid])
            assert hit.moment == max(scores, key=lambda s: s["score"])["time"]
            _, _, start, end = best_segment([s["score"] for s in scores], [s["time"] for s in scores],
                                            hit.duration)
            assert (hit.start, hit.end) == (start, end) and hit.start <= hit.moment < hit.end
            segment_right.append((hit.start >= 4.0) == second_half and (hit.end <= 4.0) == (not second_half))
    assert np.mean(right) >= 0.75, right
    # The segment stays inside the half the caption describes.
    assert np.mean(segment_right) >= 0.6, segment_right


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
    assert (v2 / "media" / f"{rows['eye_makeup.avi']['id']}.mp4").is_file()  # playback copy carried over
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


@pytest.mark.parametrize("moment_frames", [64, 3])  # evaluation frames among the moments / merged in
def test_video_frames_are_exactly_the_evaluation_frames(moment_frames):
    from clip4clip.search import Sampling
    from clip4clip.search.media import sample_for_index
    from data.video.decode import read_frames
    for name, fps, max_frames in (("arm_wrestling.mp4", 1.0, 12), ("eye_makeup.avi", 0.5, 4),
                                  ("pool_cleaning.mp4", 2.0, 5)):
        path = su.real_videos() / name
        s = sample_for_index(path, Sampling(fps, max_frames, "uniform", 1.0, moment_frames, 32))
        want, want_times = read_frames(path, fps, max_frames, "uniform")
        assert np.array_equal(s.video_frames, want), name
        assert np.allclose(s.moment_times[s.video_pos], want_times)
        moments, _ = read_frames(path, 1.0, moment_frames, "uniform")
        # The moment frames are the 1 fps sample plus whichever evaluation frames it lacks.
        assert len(s.moment_frames) == len(s.moment_times) == len(np.union1d(
            np.round(read_frames(path, 1.0, moment_frames, "uniform")[1], 4), np.round(want_times, 4)))
        assert np.all(np.diff(s.moment_times) > 0) and len(s.moment_frames) >= len(moments)


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


def test_a_format_1_index_is_read_and_re_encoded_on_update(tmp_path, run):
    """Indexes written before float32 ranking (format 1, float16 video rows) still open; an
    update encodes their videos again (float16 rows would not rank as evaluation), ids kept."""
    lib = tmp_path / "lib"
    lib.mkdir()
    for p in sorted((run["data"] / "videos").glob("*.mp4"))[:3]:
        shutil.copy2(p, lib / p.name)
    out, enc = tmp_path / "index", su.encoder(run["checkpoint"])
    build_index(lib, out, enc, progress=False, proxies="off")
    version = store.require_version(out)
    emb = np.load(version / "video_emb.npy")
    np.save(version / "video_emb.npy", emb.astype(np.float16))  # what format 1 stored
    db = sqlite3.connect(version / "meta.sqlite")
    db.execute("UPDATE meta SET value = ? WHERE key = 'format'", (json.dumps("clip4clip-search/1"),))
    db.execute("DELETE FROM meta WHERE key IN ('sizes', 'next_id')")
    db.commit()
    db.close()
    old = SearchIndex.open(out, encoder=enc)
    assert old.info()["format"] == "clip4clip-search/1" and len(old.search("a red circle", k=5)) == 3
    ids = {h.path: h.id for h in old.search("x", k=5)}
    messages = []
    report = build_index(lib, out, enc, progress=False, proxies="off", log=messages.append)
    assert report.updated == sorted(ids) and report.encoded == 3 and not report.unchanged
    assert any("format clip4clip-search/1" in m for m in messages)
    new = SearchIndex.open(out, encoder=enc)
    assert {h.path: h.id for h in new.search("x", k=5)} == ids and new.meta["format"] == store.FORMAT
    assert np.array_equal(np.load(store.require_version(out) / "video_emb.npy"), emb)
