"""Tiny DiDeMo, ActivityNet Captions and LSMDC folders in the layouts distributed for CLIP4Clip
(the readers' own layouts: tests/test_new_datasets.py), for the benchmark-dataset tests.

Paragraph captions (several sentences per video, longer than a tiny model's max_words), real-
looking file names, 16x16 px videos of a few seconds. Each writer also leaves the oddities its
reader tolerates in the files (records of videos the list does not name, a repeated id, blank
lines, a trailing tab), and ``add_bad_records`` puts one record of every kind the reader
collects as a problem into a copy.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List

import numpy as np

from toy_datasets import write_video

S = 16
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black", "grey", "pink")
THINGS = ("dog", "car", "child", "bird", "boat", "ball", "horse", "train", "cat", "kite")


def write_clip(path: Path, seed: int, seconds: float = 2.0, fps: float = 4.0, fourcc: str = "mp4v") -> None:
    """A ``seconds`` long S x S clip of flat colours (each frame its own colour)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = max(1, int(round(seconds * fps)))
    colours = np.random.default_rng(seed).integers(0, 256, size=(frames, 1, 1, 3), dtype=np.uint8)
    write_video(path, np.broadcast_to(colours, (frames, S, S, 3)).copy(), fps, fourcc=fourcc)


def sentences(n: int, k: int = 4) -> List[str]:
    """k sentences describing video n (distinct words per video, so texts differ)."""
    c, t = COLOURS[n % len(COLOURS)], THINGS[(n * 3) % len(THINGS)]
    return [f"A {c} {t} appears in the first part of the scene.",
            f"Then the {c} {t} moves slowly to the left side.",
            f"Someone watches the {t} while it turns around twice.",
            f"Finally the {c} {t} leaves and the screen goes dark."][:k]


def _fourcc(name: str) -> str:
    return "XVID" if name.endswith(".avi") else "mp4v"


# ----------------------------------------------------------------------------------------------
# DiDeMo: {split}_list.txt (file names), {split}_data.json (LocalizingMoments records), videos/
# ----------------------------------------------------------------------------------------------

DIDEMO = {
    "train": ["10015567@N08_3655084291_d8b58466fa.mov", "12090392@N02_13482799053_87ef417396.avi",
              "13313591@N07_4159411526_93d33e0a2d.mp4", "14284783@N07_5265312484_0ee61d5a47.mp4"],
    "val": ["14307102@N04_3457425434_0a4c1d1fbe.mp4", "16242624@N03_6073406390_7da7b4b2fd.mp4"],
    "test": ["21981151@N02_6248745913_9b6f0b0a0e.mp4", "48393431@N00_4960813380_1f4a9e6c84.mov",
             "52433537@N00_2457458574_5df3a1a3d0.mp4"],
}
#: Described in every data file but in no list: skipped, as CLIP4Clip skips it.
DIDEMO_UNLISTED = "00000000@N00_0000000000_0000000000.mp4"


def _didemo_records(videos: List[str], first: int) -> List[dict]:
    recs = []
    for k in range(4):  # records of different videos interleaved, as in the released files
        for j, v in enumerate(videos):
            recs.append({"annotation_id": len(recs), "description": sentences(first + j)[k],
                         "times": [[k, k + 1], [k, k], [k + 1, k + 1], [k, k + 1]], "video": v,
                         "dl_link": f"https://www.flickr.com/video_download.gne?id={v.split('_')[1]}",
                         "num_segments": 6, "context": [k, k + 1]})
    return recs


def write_didemo(root: Path, seconds: float = 2.0, fps: float = 4.0) -> Path:
    root = Path(root)
    n = 0
    for split, videos in DIDEMO.items():
        root.mkdir(parents=True, exist_ok=True)
        (root / f"{split}_list.txt").write_text("".join(v + "\n" for v in videos), encoding="utf-8")
        recs = _didemo_records(videos, n) + _didemo_records([DIDEMO_UNLISTED], 90)
        (root / f"{split}_data.json").write_text(json.dumps(recs), encoding="utf-8")
        for i, v in enumerate(videos):
            sub = "part2/" if i % 2 else ""  # the reader walks subfolders
            write_clip(root / "videos" / f"{sub}{v}", n, seconds, fps, _fourcc(v))
            n += 1
    return root


def didemo_paragraphs(split: str) -> Dict[str, str]:
    first = sum(len(DIDEMO[s]) for s in list(DIDEMO)[: list(DIDEMO).index(split)])
    return {v: " ".join(sentences(first + j)) for j, v in enumerate(DIDEMO[split])}


# ----------------------------------------------------------------------------------------------
# ActivityNet Captions: {train,val}_ids.json, train.json / val_1.json, videos/
# ----------------------------------------------------------------------------------------------

ANET = {"train": ["v_QOlSCBRmfWY", "v_ehGHCYKzyZ8", "v_nwznKOuZM7w", "v_jqb1mIwYiT8"],
        "val": ["v_uqiMw7tQ1Cc", "v_bXdq2zI1Ms0", "v_-FvnMAc5LMc"]}
# Both file namings in circulation (with and without "v_"), two containers, a subfolder.
ANET_FILES = {"v_QOlSCBRmfWY": "QOlSCBRmfWY.mp4", "v_ehGHCYKzyZ8": "v_ehGHCYKzyZ8.mkv",
              "v_nwznKOuZM7w": "v1-3/nwznKOuZM7w.mp4", "v_jqb1mIwYiT8": "jqb1mIwYiT8.mp4",
              "v_uqiMw7tQ1Cc": "uqiMw7tQ1Cc.mp4", "v_bXdq2zI1Ms0": "v1-3/v_bXdq2zI1Ms0.mp4",
              "v_-FvnMAc5LMc": "-FvnMAc5LMc.mkv"}
ANET_DATA = {"train": "train.json", "val": "val_1.json"}


def _anet_entry(n: int) -> dict:
    text = sentences(n)
    return {"duration": 2.0 * len(text), "timestamps": [[2.0 * k, 2.0 * k + 1.5] for k in range(len(text))],
            "sentences": [t if k == 0 else f" {t} " for k, t in enumerate(text)]}


def write_activitynet(root: Path, seconds: float = 2.0, fps: float = 4.0) -> Path:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    n = 0
    for split, ids in ANET.items():
        # A repeated id is ignored (first occurrence kept), as by CLIP4Clip.
        (root / f"{split}_ids.json").write_text(json.dumps(ids + ids[:1]), encoding="utf-8")
        data = {v: _anet_entry(n + i) for i, v in enumerate(ids)}
        data["v_notlisted0"] = _anet_entry(95)  # not in the ids file: skipped
        (root / ANET_DATA[split]).write_text(json.dumps(data), encoding="utf-8")
        for v in ids:
            write_clip(root / "videos" / ANET_FILES[v], n, seconds, fps, _fourcc(ANET_FILES[v]))
            n += 1
    return root


# ----------------------------------------------------------------------------------------------
# LSMDC: tab-separated LSMDC16_annos_{training,val}.csv, LSMDC16_challenge_1000_publictect.csv
# ----------------------------------------------------------------------------------------------

LSMDC_FILES = {"train": "LSMDC16_annos_training.csv", "val": "LSMDC16_annos_val.csv",
               "test": "LSMDC16_challenge_1000_publictect.csv"}
LSMDC = {
    "train": ["0001_American_Beauty_00.00.51.926-00.00.54.129", "0001_American_Beauty_00.01.02.000-00.01.04.500",
              "1010_TITANIC_00.00.46.000-00.00.48.000", "1010_TITANIC_00.02.10.250-00.02.13.000"],
    "val": ["0004_Charade_00.01.02.003-00.01.05.006", "0004_Charade_00.03.00.000-00.03.02.100"],
    "test": ["1014_2012_00.00.01.471-00.00.04.537", "1014_2012_00.00.05.000-00.00.07.000",
             "1015_27_Dresses_00.00.38.000-00.00.40.000"],
}


def lsmdc_line(clip: str, sentence: str, trailing_tab: bool = False) -> str:
    start, end = clip.rsplit("_", 1)[1].split("-")
    return "\t".join([clip, start, end, start, end, sentence]) + ("\t" if trailing_tab else "") + "\n"


def write_lsmdc(root: Path, seconds: float = 2.0, fps: float = 4.0) -> Path:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    n = 0
    for split, clips in LSMDC.items():
        lines = []
        for i, clip in enumerate(clips):
            # One (long, quoted) sentence per clip; a blank line and a trailing tab are tolerated.
            text = f'SOMEONE says "look" and {" ".join(sentences(n + i, 2)).lower()}'
            lines.append(lsmdc_line(clip, text, trailing_tab=i == 1) + ("\n" if i == 0 else ""))
        (root / LSMDC_FILES[split]).write_text("".join(lines), encoding="utf-8")
        for clip in clips:
            movie = clip.rsplit("_", 1)[0]
            sub = "" if clip.startswith("1015") else movie + "/"  # one clip flat in videos/
            write_clip(root / "videos" / f"{sub}{clip}.avi", n, seconds, fps, "XVID")
            n += 1
    return root


WRITERS = {"didemo": write_didemo, "activitynet": write_activitynet, "lsmdc": write_lsmdc}


# ----------------------------------------------------------------------------------------------
# One record of each kind the readers collect as a problem (all are reported together)
# ----------------------------------------------------------------------------------------------


def add_bad_records(name: str, root: Path) -> int:
    """Put one bad record of every kind ``name``'s reader collects into its TRAIN split's files;
    returns how many problems the reader must report."""
    root = Path(root)
    if name == "didemo":
        path = root / "train_data.json"
        recs = json.loads(path.read_text())
        recs[0]["description"] = "  "            # empty description
        del recs[1]["times"]                     # a missing field
        recs[2]["times"] = [[0, 1, 2]]           # malformed times
        recs.append("not a record")              # not an object
        path.write_text(json.dumps(recs), encoding="utf-8")
        with (root / "train_list.txt").open("a", encoding="utf-8") as f:
            f.write("99999999@N99_9999999999_unannotated.mp4\n")  # listed, never described
        return 5
    if name == "activitynet":
        ids = ANET["train"] + ["QOlSCBRmfWY", "v_notannotated"]  # no v_ prefix; no annotation
        (root / "train_ids.json").write_text(json.dumps(ids), encoding="utf-8")
        data = json.loads((root / "train.json").read_text())
        data[ANET["train"][0]]["sentences"][1] = " "     # empty sentence
        data[ANET["train"][1]]["timestamps"].pop()       # timestamps != sentences
        del data[ANET["train"][2]]["duration"]           # a missing field
        (root / "train.json").write_text(json.dumps(data), encoding="utf-8")
        return 5
    if name == "lsmdc":
        path = root / LSMDC_FILES["train"]
        text = path.read_text(encoding="utf-8")
        text += "1010_TITANIC_00.03.00.000-00.03.01.000\t00.03.00.000\t00.03.01.000\tShe runs.\n"  # 4 fields
        text += lsmdc_line("1010_TITANIC_00.03.05.000-00.03.06.000", "   ")                      # empty sentence
        text += "\t00.03.07.000\t00.03.08.000\t00.03.07.000\t00.03.08.000\tNo clip id.\n"           # empty clip id
        path.write_text(text, encoding="utf-8")
        return 3
    raise ValueError(name)
