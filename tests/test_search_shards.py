"""Search: indexing past one machine. ``index --shard I/N`` builds partial indexes, ``merge``
combines them into the index one run would have built, bit for bit."""
import sqlite3

import numpy as np
import pytest

import search_utils as su
from search_utils import base, run  # noqa: F401  (session fixtures)
from clip4clip.search import merge_indexes
from clip4clip.search import store
from clip4clip.search.__main__ import main
from clip4clip.search.indexer import VOLATILE_META


def _tables(version):
    db = sqlite3.connect(version / "meta.sqlite")
    try:
        meta = {k: v for k, v in db.execute("SELECT key, value FROM meta") if k not in VOLATILE_META}
        return {"videos": db.execute("SELECT * FROM videos ORDER BY id").fetchall(),
                "captions": db.execute("SELECT video_id, caption FROM captions ORDER BY rowid").fetchall(),
                "fts": db.execute("SELECT caption, video_id FROM captions_fts ORDER BY rowid").fetchall(),
                "failures": db.execute("SELECT * FROM failures ORDER BY relpath").fetchall(), "meta": meta}
    finally:
        db.close()


def _files(version):
    return {p.relative_to(version).as_posix(): p.read_bytes()
            for sub in ("thumbs", "media") for p in sorted((version / sub).iterdir())}


def test_two_shards_merged_are_one_run_bit_for_bit(tmp_path, base, run, capsys):
    lib = su.synthetic_library(base, run["data"])
    single = store.require_version(su.built_index("synthetic_index", lib, run["checkpoint"], base))
    parts = [tmp_path / f"part{i}" for i in range(2)]
    for i, part in enumerate(parts):
        assert main(["index", "--videos", str(lib), "--checkpoint", str(run["checkpoint"]), "--out", str(part),
                     "--shard", f"{i}/2", "--no-progress"]) == 0
        assert f"index shard {i}/2" in capsys.readouterr().out
    assert main(["merge", "--out", str(tmp_path / "merged"), *map(str, reversed(parts))]) == 0
    assert "24 videos (24 added" in capsys.readouterr().out
    merged = store.require_version(tmp_path / "merged")
    for name in ("video_emb.npy", "frame_emb.npy"):
        assert (merged / name).read_bytes() == (single / name).read_bytes(), name
    ours, ref = _tables(merged), _tables(single)
    for key in ref:
        assert ours[key] == ref[key], key
    assert len(ref["videos"]) == 24 and len(ref["captions"]) >= 24
    assert _files(merged) == _files(single)  # thumbnails and playback copies, renamed to the final ids


def test_merge_refuses_missing_repeated_and_foreign_shards(tmp_path, run):
    from clip4clip.search import build_index
    lib = tmp_path / "lib"
    lib.mkdir()
    clips = sorted((run["data"] / "videos").glob("*.mp4"))[:4]
    for p in clips[:3]:
        (lib / p.name).write_bytes(p.read_bytes())
    enc = su.encoder(run["checkpoint"])
    for i in range(2):
        build_index(lib, tmp_path / f"p{i}", enc, progress=False, proxies="off", shard=(i, 2))
    with pytest.raises(ValueError, match=r"missing \[1\]"):
        merge_indexes([tmp_path / "p0"], tmp_path / "m", log=lambda m: None)
    with pytest.raises(ValueError, match=r"given twice \[0\]"):
        merge_indexes([tmp_path / "p0", tmp_path / "p0"], tmp_path / "m", log=lambda m: None)
    (lib / clips[3].name).write_bytes(clips[3].read_bytes())  # the library changed between shards
    build_index(lib, tmp_path / "p1", enc, progress=False, proxies="off", shard=(1, 2))
    with pytest.raises(ValueError, match="saw different libraries"):
        merge_indexes([tmp_path / "p0", tmp_path / "p1"], tmp_path / "m", log=lambda m: None)
    assert not (tmp_path / "m" / "CURRENT").exists()
    assert np.load(store.require_version(tmp_path / "p1") / "video_emb.npy").shape[0] == 2
