"""DiDeMo, ActivityNet Captions and LSMDC readers on tiny folders in the official (CLIP4Clip)
layouts: items, paragraph joining, splits, annotation errors (all reported at once) and
missing videos."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from data.readers.activitynet import ActivityNetDataset
from data.readers.base import MissingDataError, MissingVideosWarning
from data.readers.annotations import AnnotationError
from data.readers.didemo import DiDeMoDataset
from data.readers.lsmdc import LSMDCDataset, lsmdc_movie
from toy_datasets import write_video

S = 16
OPTS = {"image_size": S, "max_frames": 4, "progress": False}


def _video(path: Path, seed: int, fourcc: str = "mp4v", frames: int = 16, fps: float = 4.0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, size=(frames, 1, 1, 3), dtype=np.uint8)
    write_video(path, np.broadcast_to(colours, (frames, S, S, 3)).copy(), fps, fourcc=fourcc)


def _copy(src: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(src, tmp_path / "copy"))


# ----------------------------------------------------------------------------------------------
# DiDeMo
# ----------------------------------------------------------------------------------------------

DIDEMO = {
    "train": ["10015567@N08_3655084291_d8b58466fa.mov", "12090392@N02_13482799053_87ef417396.avi"],
    "val": ["14307102@N04_3457425434_0a4c1d1fbe.mp4"],
    "test": ["21981151@N02_6248745913_9b6f0b0a0e.mp4", "48393431@N00_4960813380_1f4a9e6c84.mov"],
}


def _didemo_records(videos: list[str]) -> list[dict]:
    """Two or three descriptions per video, records of different videos interleaved."""
    recs = []
    for k in range(3):
        for j, v in enumerate(videos):
            if k == 2 and j % 2:
                continue
            recs.append({"annotation_id": len(recs), "description": f" {v[:4]} moment {k} ",
                         "times": [[k, k + 1], [k, k], [k + 1, k + 1], [k, k + 1]],
                         "video": v, "dl_link": f"https://www.flickr.com/video_download.gne?id={v[:8]}",
                         "num_segments": 6, "context": [k, k + 1]})
    return recs


@pytest.fixture(scope="module")
def didemo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("didemo") / "DiDeMo"
    seed = 0
    for split, videos in DIDEMO.items():
        (root / f"{split}_list.txt").parent.mkdir(parents=True, exist_ok=True)
        (root / f"{split}_list.txt").write_text("".join(v + "\n" for v in videos), encoding="utf-8")
        (root / f"{split}_data.json").write_text(json.dumps(_didemo_records(videos)), encoding="utf-8")
        for i, v in enumerate(videos):
            sub = "part2/" if i == 1 else ""  # the loader walks subfolders
            _video(root / "videos" / f"{sub}{v}", seed, fourcc="XVID" if v.endswith(".avi") else "mp4v")
            seed += 1
    return root


def test_didemo_one_paragraph_per_video_in_every_split(didemo):
    for split, videos in DIDEMO.items():
        ds = DiDeMoDataset(didemo, split, **OPTS)
        assert ds.video_ids == videos and len(ds) == len(videos) == ds.num_videos
        records = json.loads((didemo / f"{split}_data.json").read_text())
        for v in videos:
            descs = [r["description"].strip() for r in records if r["video"] == v]
            assert ds.captions[v] == [" ".join(descs)]
            assert ds.moments[v] == [(d, r["times"]) for d, r in zip(descs, [r for r in records if r["video"] == v])]
        assert ds.texts == [ds.captions[v][0] for v in videos]
    train = DiDeMoDataset(didemo, "train", caption_mode="random", **OPTS)
    v = DIDEMO["train"][0]
    assert train.captions[v] == [f"{v[:4]} moment 0 {v[:4]} moment 1 {v[:4]} moment 2"]
    assert train.video_path(DIDEMO["train"][1]).parent.name == "part2"
    item = train[1]
    assert item["video"].shape == (4, 3, S, S) and item["video_mask"].tolist() == [1, 1, 1, 1]
    assert item["text"] == train.captions[DIDEMO["train"][1]][0]


def test_didemo_bad_records_are_reported_together(didemo, tmp_path):
    root = _copy(didemo, tmp_path)
    videos = DIDEMO["test"]
    recs = _didemo_records(videos)
    recs[0]["description"] = "   "                     # empty description
    del recs[1]["times"]                                # missing field
    recs[2]["times"] = [[0, 1, 2]]                      # malformed times
    recs[3]["video"] = "00000000@N00_0000000000_0000000000.mp4"  # not in the list: skipped
    recs.append("not a record")
    (root / "test_data.json").write_text(json.dumps(recs), encoding="utf-8")
    with (root / "test_list.txt").open("a") as f:
        f.write("\n99999999@N99_9999999999_unannotated.mp4\n")  # listed, never described
    with pytest.raises(AnnotationError) as e:
        DiDeMoDataset(root, "test", **OPTS)
    msg = str(e.value)
    data, lst = root / "test_data.json", root / "test_list.txt"
    assert msg.splitlines()[0] == f"DiDeMo split 'test': 5 problem(s) in the annotation files under {root}:"
    assert e.value.problems == [
        f"{data}: record 0: 'description' is empty; expected a sentence",
        f"{data}: record 1: no 'times' field; expected "
        '{"video": str, "description": str, "times": [[start_segment, end_segment], ...]}',
        f"{data}: record 2: 'times' is a JSON array [[0, 1, 2]]; expected a non-empty list of "
        "[start_segment, end_segment] pairs of integers >= 0",
        f"{data}: record 5: is a JSON string \"not a record\"; expected "
        '{"video": str, "description": str, "times": [[start_segment, end_segment], ...]}',
        f"{lst}: line 4: video '99999999@N99_9999999999_unannotated.mp4' has no description in test_data.json",
    ]
    assert all(f"  {p}" in msg for p in e.value.problems)


def test_descriptions_of_unlisted_videos_are_skipped_as_clip4clip_does(didemo, anet, tmp_path):
    # The distributed DiDeMo lists leave out a few of the videos the LocalizingMoments files
    # describe; CLIP4Clip skips those records, and so do both paragraph readers.
    root = _copy(didemo, tmp_path / "d")
    recs = _didemo_records(DIDEMO["val"]) + _didemo_records(["00000000@N00_0000000000_0000000000.mp4"])
    (root / "val_data.json").write_text(json.dumps(recs), encoding="utf-8")
    ds = DiDeMoDataset(root, "val", **OPTS)
    assert ds.video_ids == DIDEMO["val"] and ds.unlisted_videos == ["00000000@N00_0000000000_0000000000.mp4"]
    root = _copy(anet, tmp_path / "a")
    data = json.loads((root / "val_1.json").read_text())
    data["v_notlisted"] = _anet_entry("v_notlisted", 2)
    (root / "val_1.json").write_text(json.dumps(data), encoding="utf-8")
    assert ActivityNetDataset(root, "val", **OPTS).video_ids == ANET["val"]


def test_didemo_unreadable_json_and_empty_list_are_reported_together(didemo, tmp_path):
    root = _copy(didemo, tmp_path)
    (root / "val_list.txt").write_text("\n\n", encoding="utf-8")
    (root / "val_data.json").write_text('[{"video": "a.mp4", "description": "x"', encoding="utf-8")
    with pytest.raises(AnnotationError) as e:
        DiDeMoDataset(root, "val", **OPTS)
    assert len(e.value.problems) == 2
    assert e.value.problems[0] == (f"{root / 'val_list.txt'}: no entries (empty file); expected a video file "
                                   "name (with its extension), one per line")
    assert e.value.problems[1].startswith(f"{root / 'val_data.json'}: not valid JSON (line 1")


def test_didemo_missing_files_and_videos(didemo, tmp_path):
    root = _copy(didemo, tmp_path)
    (root / "val_data.json").unlink()
    with pytest.raises(MissingDataError) as e:
        DiDeMoDataset(root, "val", **OPTS)
    assert e.value.missing == [str(root / "val_data.json")]
    assert "val_list.txt  (one video file name per line, extension included)" in str(e.value)
    gone = DIDEMO["test"][1]
    (root / "videos" / "part2" / gone).unlink()
    with pytest.raises(MissingDataError) as e:
        DiDeMoDataset(root, "test", **OPTS)
    assert e.value.missing == [str(root / "videos" / gone)]
    with pytest.warns(MissingVideosWarning, match="1 video"):
        ds = DiDeMoDataset(root, "test", allow_missing=True, **OPTS)
    assert ds.video_ids == DIDEMO["test"][:1] and ds.missing_videos == [gone]


# ----------------------------------------------------------------------------------------------
# ActivityNet Captions
# ----------------------------------------------------------------------------------------------

ANET = {
    "train": ["v_QOlSCBRmfWY", "v_ehGHCYKzyZ8", "v_nwznKOuZM7w"],
    "val": ["v_uqiMw7tQ1Cc", "v_bXdq2zI1Ms0", "v_-FvnMAc5LMc"],
}
# The two file namings in circulation, several containers, a subfolder.
ANET_FILES = {
    "v_QOlSCBRmfWY": "QOlSCBRmfWY.mp4", "v_ehGHCYKzyZ8": "v_ehGHCYKzyZ8.mkv", "v_nwznKOuZM7w": "v1-3/nwznKOuZM7w.webm",
    "v_uqiMw7tQ1Cc": "uqiMw7tQ1Cc.mp4", "v_bXdq2zI1Ms0": "v1-3/v_bXdq2zI1Ms0.mp4", "v_-FvnMAc5LMc": "-FvnMAc5LMc.mkv",
}


def _anet_entry(v: str, n: int) -> dict:
    sentences = [f"A person does step {k} in {v[2:6]}." if k == 0 else f" Then step {k} follows. " for k in range(n)]
    return {"duration": 2.0 * n, "timestamps": [[2.0 * k, 2.0 * k + 1.5] for k in range(n)], "sentences": sentences}


@pytest.fixture(scope="module")
def anet(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("anet") / "ActivityNet"
    root.mkdir()
    for split, data_name in (("train", "train.json"), ("val", "val_1.json")):
        (root / f"{split}_ids.json").write_text(json.dumps(ANET[split]), encoding="utf-8")
        data = {v: _anet_entry(v, 2 + i % 2) for i, v in enumerate(ANET[split])}
        (root / data_name).write_text(json.dumps(data), encoding="utf-8")
    for i, (v, name) in enumerate(ANET_FILES.items()):
        _video(root / "videos" / name, 10 + i, fourcc="VP80" if name.endswith(".webm") else "mp4v")
    return root


def test_activitynet_paragraphs_splits_and_file_namings(anet):
    train = ActivityNetDataset(anet, "train", **OPTS)
    assert train.video_ids == ANET["train"] and len(train) == 3
    assert train.captions["v_QOlSCBRmfWY"] == ["A person does step 0 in QOlS. Then step 1 follows."]
    assert train.captions["v_ehGHCYKzyZ8"] == [
        "A person does step 0 in ehGH. Then step 1 follows. Then step 2 follows."]
    assert train.moments["v_ehGHCYKzyZ8"][2] == ("Then step 2 follows.", (4.0, 5.5))
    assert train.durations["v_ehGHCYKzyZ8"] == 6.0
    for v, name in ANET_FILES.items():
        if v in ANET["train"]:
            assert train.video_path(v) == anet / "videos" / name
    test, val = ActivityNetDataset(anet, "test", **OPTS), ActivityNetDataset(anet, "val", **OPTS)
    assert test.video_ids == val.video_ids == ANET["val"]  # "test" is val_1, as everyone reports it
    assert test.texts == val.texts and test.text_video_index == [0, 1, 2]
    assert test[2]["video"].shape == (4, 3, S, S)


def test_activitynet_bad_annotations_are_reported_together(anet, tmp_path):
    root = _copy(anet, tmp_path)
    ids = ANET["val"] + ["QOlSCBRmfWY", "v_notannotated"]  # no v_ prefix; an id without annotation
    (root / "val_ids.json").write_text(json.dumps(ids), encoding="utf-8")
    data = json.loads((root / "val_1.json").read_text())
    data["v_uqiMw7tQ1Cc"]["sentences"][1] = "  "
    data["v_bXdq2zI1Ms0"]["timestamps"].pop()
    del data["v_-FvnMAc5LMc"]["duration"]
    data["v_unlisted"] = {"sentences": []}  # not in the ids file: skipped, as CLIP4Clip does
    (root / "val_1.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(AnnotationError) as e:
        ActivityNetDataset(root, "test", **OPTS)
    d, i = root / "val_1.json", root / "val_ids.json"
    assert str(e.value).splitlines()[0] == (
        f"ActivityNet Captions split 'test': 5 problem(s) in the annotation files under {root}:")
    assert e.value.problems == [
        f"{i}: entry 3: is a JSON string \"QOlSCBRmfWY\"; expected a video id 'v_<YouTube id>'",
        f"{d}: video 'v_uqiMw7tQ1Cc': 'sentences' entries [1] are empty or not text; expected a sentence each",
        f"{d}: video 'v_bXdq2zI1Ms0': 2 'timestamps' for 3 'sentences'; expected one per sentence",
        f"{d}: video 'v_-FvnMAc5LMc': no 'duration' field; expected "
        '{"duration": seconds, "timestamps": [[start, end], ...], "sentences": [str, ...]}',
        f"{i}: entry 4: 'v_notannotated' has no annotation in val_1.json",
    ]


def test_activitynet_missing_videos(anet, tmp_path):
    root = _copy(anet, tmp_path)
    (root / "videos" / "uqiMw7tQ1Cc.mp4").unlink()
    with pytest.raises(MissingDataError) as e:
        ActivityNetDataset(root, "val", **OPTS)
    assert e.value.missing == [f"{root / 'videos'}/{{v_uqiMw7tQ1Cc,uqiMw7tQ1Cc}}.{{mp4,mkv,webm}}"]
    assert "videos/<id>.mp4|mkv|webm or v_<id>.*" in str(e.value)
    with pytest.warns(MissingVideosWarning):
        ds = ActivityNetDataset(root, "val", allow_missing=True, **OPTS)
    assert ds.video_ids == ANET["val"][1:]
    (root / "train.json").unlink()
    with pytest.raises(MissingDataError, match="train.json"):
        ActivityNetDataset(root, "train", **OPTS)


# ----------------------------------------------------------------------------------------------
# LSMDC
# ----------------------------------------------------------------------------------------------

LSMDC_ROWS = {
    "train": [
        ("0001_American_Beauty_00.00.51.926-00.00.54.129", "SOMEONE walks into the \"kitchen\"."),
        ("0001_American_Beauty_00.00.51.926-00.00.54.129", "He opens the fridge."),
        ("1010_TITANIC_00.00.46.000-00.00.48.000", "\"Hi,\" SOMEONE says, smiling."),
    ],
    "val": [("0004_Charade_00.01.02.003-00.01.05.006", "She looks at the \"quiet\" street.")],
    "test": [
        ("1014_2012_00.00.01.471-00.00.04.537", "A 'plane' flies over the city."),
        ("1014_2012_00.00.05.000-00.00.07.000", "\"Run!\""),
        ("1015_27_Dresses_00.00.38.000-00.00.40.000", "SOMEONE holds up a dress, \"too big\"; she frowns."),
    ],
}
LSMDC_FILES = {"train": "LSMDC16_annos_training.csv", "val": "LSMDC16_annos_val.csv",
               "test": "LSMDC16_challenge_1000_publictect.csv"}


def _lsmdc_line(clip: str, sentence: str) -> str:
    start, end = clip.rsplit("_", 1)[1].split("-")
    return "\t".join([clip, start, end, start, end, sentence]) + "\n"


@pytest.fixture(scope="module")
def lsmdc(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lsmdc") / "LSMDC"
    root.mkdir()
    seed = 20
    for split, rows in LSMDC_ROWS.items():
        (root / LSMDC_FILES[split]).write_text("".join(_lsmdc_line(c, s) for c, s in rows), encoding="utf-8")
        for clip in dict.fromkeys(c for c, _ in rows):
            # Official layout: a folder per movie; one clip flat in videos/ (also accepted).
            sub = "" if clip.startswith("1015") else lsmdc_movie(clip) + "/"
            _video(root / "videos" / f"{sub}{clip}.avi", seed, fourcc="XVID")
            seed += 1
    return root


def test_lsmdc_one_item_per_line_quotes_kept(lsmdc):
    test = LSMDCDataset(lsmdc, "test", **OPTS)
    assert list(zip(test.video_ids, test.texts)) == LSMDC_ROWS["test"]
    assert test.video_path("1014_2012_00.00.01.471-00.00.04.537").parent.name == "1014_2012"
    assert test.video_path("1015_27_Dresses_00.00.38.000-00.00.40.000").parent.name == "videos"
    assert test[1]["text"] == '"Run!"' and test[1]["video"].shape == (4, 3, S, S)
    val = LSMDCDataset(lsmdc, "val", **OPTS)
    assert list(zip(val.video_ids, val.texts)) == LSMDC_ROWS["val"]
    train = LSMDCDataset(lsmdc, "train", **OPTS)  # default "all": one item per line, as CLIP4Clip
    assert list(zip(train.video_ids, train.texts)) == LSMDC_ROWS["train"]
    assert train.num_videos == 2 and train.text_video_index == [0, 0, 1]
    random = LSMDCDataset(lsmdc, "train", caption_mode="random", **OPTS)
    assert random.video_ids == [c for c, _ in LSMDC_ROWS["train"][1:]]
    first = random.captions[random.video_ids[0]]
    assert random.texts[0] in first and len(first) == 2
    assert lsmdc_movie("0001_American_Beauty_00.00.51.926-00.00.54.129") == "0001_American_Beauty"


def test_lsmdc_bad_lines_are_reported_together(lsmdc, tmp_path):
    root = _copy(lsmdc, tmp_path)
    good = "".join(_lsmdc_line(c, s) for c, s in LSMDC_ROWS["test"])
    bad = (
        good
        + "1014_2012_00.00.09.000-00.00.10.000\t00.00.09.000\t00.00.10.000\tShe runs.\n"  # 4 fields
        + "\n"  # blank lines are skipped
        + _lsmdc_line("1014_2012_00.00.11.000-00.00.12.000", "   ")  # empty sentence
        + "\t00.00.13.000\t00.00.14.000\t00.00.13.000\t00.00.14.000\tNo clip id.\n"
        + _lsmdc_line("1014_2012_00.00.15.000-00.00.16.000", "He says \"a\tb\".")  # a tab inside
    )
    (root / LSMDC_FILES["test"]).write_text(bad, encoding="utf-8")
    with pytest.raises(AnnotationError) as e:
        LSMDCDataset(root, "test", **OPTS)
    p = root / LSMDC_FILES["test"]
    fields = "clip_id, start_aligned, end_aligned, start_extracted, end_extracted, sentence"
    assert str(e.value).splitlines()[0] == f"LSMDC split 'test': 4 problem(s) in the annotation files under {root}:"
    assert e.value.problems == [
        f"{p}: line 4: 4 tab-separated field(s); expected 6 ({fields})",
        f"{p}: line 6: empty sentence; expected 6 tab-separated fields ({fields})",
        f"{p}: line 7: empty clip id; expected 6 tab-separated fields ({fields})",
        f"{p}: line 8: 7 tab-separated field(s); expected 6 ({fields})",
    ]


def test_lsmdc_many_problems_are_counted_and_cut_to_20(lsmdc, tmp_path):
    root = _copy(lsmdc, tmp_path)
    (root / LSMDC_FILES["val"]).write_text("only\tthree\tfields\n" * 25, encoding="utf-8")
    with pytest.raises(AnnotationError) as e:
        LSMDCDataset(root, "val", **OPTS)
    lines = str(e.value).splitlines()
    assert "25 problem(s)" in lines[0] and len(e.value.problems) == 25
    assert len(lines) == 1 + 20 + 1 and lines[-1] == "  ... and 5 more"


def test_lsmdc_missing_videos_and_file(lsmdc, tmp_path):
    root = _copy(lsmdc, tmp_path)
    clip = "1014_2012_00.00.05.000-00.00.07.000"
    (root / "videos" / "1014_2012" / f"{clip}.avi").unlink()
    with pytest.raises(MissingDataError) as e:
        LSMDCDataset(root, "test", **OPTS)
    assert e.value.missing == [f"{root / 'videos' / '1014_2012' / clip}.avi (or {root / 'videos' / clip}.avi)"]
    with pytest.warns(MissingVideosWarning):
        ds = LSMDCDataset(root, "test", allow_missing=True, **OPTS)
    assert clip not in ds.video_ids and len(ds) == 2
    (root / LSMDC_FILES["val"]).unlink()
    with pytest.raises(MissingDataError) as e:
        LSMDCDataset(root, "val", **OPTS)
    assert "LSMDC16_annos_val.csv  (tab-separated: clip_id, start_aligned" in str(e.value)
