"""Search: every file of an index is checked before it is trusted. A tampered or foreign shard
serves nothing from outside the index; a corrupt journal row is re-encoded, not fatal forever;
a broken version is named when it is opened, never by a query."""
import json
import shutil
import sqlite3

import numpy as np
import pytest

import search_utils as su
from search_utils import base, run  # noqa: F401  (session fixtures)
from clip4clip.search import SearchIndex, build_index, merge_indexes
from clip4clip.search import indexer, store
from clip4clip.search.__main__ import main
from clip4clip.search.web import create_app


@pytest.fixture(scope="module")
def small(run, tmp_path_factory):
    """A 4-clip library (mp4v: each gets an H.264 playback copy), its index and the encoder."""
    root = tmp_path_factory.mktemp("checks")
    lib = root / "lib"
    lib.mkdir()
    for p in sorted((run["data"] / "videos").glob("*.mp4"))[:4]:
        shutil.copy2(p, lib / p.name)
    enc = su.encoder(run["checkpoint"])
    out = root / "index"
    report = build_index(lib, out, enc, progress=False)
    assert not report.failed and report.num_videos == 4
    return {"lib": lib, "index": out, "enc": enc, "root": root}


def _copy_index(small, dst):
    shutil.copytree(small["index"], dst, symlinks=True)
    return store.require_version(dst)


def _ids(version):
    db = sqlite3.connect(version / "meta.sqlite")
    try:
        return [r[0] for r in db.execute("SELECT id FROM videos ORDER BY id")]
    finally:
        db.close()


def _sql(version, sql, *params):
    db = sqlite3.connect(version / "meta.sqlite")
    try:
        db.execute(sql, params)
        db.commit()
    finally:
        db.close()


@pytest.fixture()
def secret(tmp_path):
    path = tmp_path / "secret.txt"
    path.write_text("TOP SECRET: not part of any index\n")
    return path


# ---------------------------------------------------------------------------- serving
def test_symlinked_thumbnail_and_media_in_an_index_are_not_served(tmp_path, small, secret):
    version = _copy_index(small, tmp_path / "index")
    vid = _ids(version)[0]
    for sub, name in (("thumbs", f"{vid}.jpg"), ("media", f"{vid}.mp4")):
        assert (version / sub / name).is_file()
        (version / sub / name).unlink()
        (version / sub / name).symlink_to(secret)
    client = create_app(SearchIndex.open(tmp_path / "index", encoder=small["enc"])).test_client()
    thumb, media = client.get(f"/thumb/{vid}"), client.get(f"/media/{vid}")
    assert thumb.mimetype == "image/svg+xml" and b"TOP SECRET" not in thumb.data  # the placeholder
    assert media.status_code == 404 and b"TOP SECRET" not in media.data
    other = _ids(version)[1]
    assert client.get(f"/thumb/{other}").status_code == 200  # the untouched ones still are
    assert client.get(f"/media/{other}").status_code == 200


def test_index_naming_another_library_serves_only_videos_under_it(tmp_path, small, secret):
    version = _copy_index(small, tmp_path / "index")
    vid = _ids(version)[0]
    _sql(version, "UPDATE meta SET value = ? WHERE key = 'library'", json.dumps(str(secret.parent)))
    _sql(version, "UPDATE videos SET relpath = ?, media = 'original' WHERE id = ?", secret.name, vid)
    client = create_app(SearchIndex.open(tmp_path / "index", encoder=small["enc"])).test_client()
    resp = client.get(f"/media/{vid}")
    assert resp.status_code == 404 and b"TOP SECRET" not in resp.data  # not a video file


@pytest.mark.parametrize("relpath", ["../secret.mp4", "/etc/passwd.mp4", "a/../../b.mp4", "a\\..\\b.mp4"])
def test_relpath_leaving_the_library_is_refused_at_open(tmp_path, small, relpath):
    version = _copy_index(small, tmp_path / "index")
    _sql(version, "UPDATE videos SET relpath = ? WHERE id = ?", relpath, _ids(version)[0])
    with pytest.raises(store.IndexFormatError, match=r"meta\.sqlite: video \d+ has a bad relpath"):
        SearchIndex.open(tmp_path / "index", encoder=small["enc"])


# ---------------------------------------------------------------------------- merging
def _shards(small, tmp_path):
    parts = [tmp_path / f"part{i}" for i in range(2)]
    for i, part in enumerate(parts):
        build_index(small["lib"], part, small["enc"], progress=False, shard=(i, 2))
    return parts


@pytest.mark.parametrize("sub", ["thumbs", "media"])
def test_merge_of_a_shard_with_a_symlinked_file_is_refused_and_publishes_nothing(tmp_path, small, secret, sub):
    parts = _shards(small, tmp_path)
    version = store.require_version(parts[1])
    target = sorted((version / sub).iterdir())[0]
    target.unlink()
    target.symlink_to(secret)
    out = tmp_path / "merged"
    with pytest.raises(store.IndexFormatError, match=rf"{sub}.*(not a regular file|symbolic link)"):
        merge_indexes(parts, out)
    assert store.current_version(out) is None
    assert not [p for p in out.rglob("*") if p.is_file() and p.read_bytes() == secret.read_bytes()]
    with pytest.raises(SystemExit) as e:
        main(["merge", "--out", str(tmp_path / "merged2"), *map(str, parts)])
    assert e.value.code == 2


def test_merge_refuses_a_shard_whose_rows_do_not_fit_its_arrays(tmp_path, small, capsys):
    parts = _shards(small, tmp_path)
    version = store.require_version(parts[0])
    _sql(version, "UPDATE videos SET frame_start = 100000 WHERE id = ?", _ids(version)[0])
    with pytest.raises(store.IndexFormatError, match=r"part0/v-[^/]+/meta\.sqlite: video \d+ has a bad frame_start"):
        merge_indexes(parts, tmp_path / "merged")


# ---------------------------------------------------------------------------- opening
def _frame_times_short(v):
    _sql(v, "UPDATE videos SET frame_times = '[0.0]' WHERE id = ?", _ids(v)[0])


def _frame_times_nan(v):
    _sql(v, "UPDATE videos SET frame_times = ? WHERE id = ?",
         json.dumps([float("nan")] * 4), _ids(v)[0])  # counts do not matter: NaN is refused


def _nan_embedding(v):
    arr = np.load(v / "video_emb.npy")
    arr[1, 3] = np.nan
    np.save(v / "video_emb.npy", arr)


def _nan_frame(v):
    arr = np.load(v / "frame_emb.npy")
    arr[-1, 0] = np.inf
    np.save(v / "frame_emb.npy", arr)


def _no_fts(v):
    _sql(v, "DROP TABLE captions_fts")


def _random_db(v):
    (v / "meta.sqlite").write_bytes(np.random.default_rng(0).bytes(8192))


def _truncated_db(v):
    data = (v / "meta.sqlite").read_bytes()
    (v / "meta.sqlite").write_bytes(data[:len(data) // 3])


def _garbage_npy(v):
    (v / "video_emb.npy").write_bytes(b"\x93NUMPY\x01\x00\x20\x00{'descr': '<f4', 'shape': ((((\n" + b"\0" * 64)


def _wrong_width(v):
    np.save(v / "frame_emb.npy", np.zeros((5, 7), np.float16))


def _row_out_of_range(v):
    _sql(v, "UPDATE videos SET row = 99 WHERE id = ?", _ids(v)[0])


def _text_size(v):
    _sql(v, "UPDATE videos SET size = 'big' WHERE id = ?", _ids(v)[0])


def _bad_meta_json(v):
    _sql(v, "UPDATE meta SET value = '{not json' WHERE key = 'sampling'")


def _relative_library(v):
    _sql(v, "UPDATE meta SET value = ? WHERE key = 'library'", json.dumps("lib"))


BROKEN = {
    "frame_times shorter than frame_count": (_frame_times_short, r"video \d+ has a bad frame_times"),
    "NaN frame time": (_frame_times_nan, r"video \d+ has a bad frame_times"),
    "NaN video embedding": (_nan_embedding, r"video_emb\.npy: row 1 holds NaN"),
    "inf frame embedding": (_nan_frame, r"frame_emb\.npy: row \d+ holds NaN or inf"),
    "no full-text table": (_no_fts, r"meta\.sqlite: table captions_fts is missing"),
    "random meta.sqlite": (_random_db, r"meta\.sqlite: .*(not a readable SQLite|unreadable)"),
    "truncated meta.sqlite": (_truncated_db, r"meta\.sqlite: "),
    "garbage npy header": (_garbage_npy, r"video_emb\.npy: not a valid \.npy file"),
    "frame width differs": (_wrong_width, r"embeddings are \d+-wide"),
    "row past video_emb": (_row_out_of_range, r"video \d+ has a bad row"),
    "text in an integer column": (_text_size, r"video \d+ has a bad size"),
    "meta value not JSON": (_bad_meta_json, r"meta value 'sampling' is not JSON"),
    "relative library path": (_relative_library, r"meta library is 'lib'"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_version_is_named_at_open(tmp_path, small, case):
    breaker, pattern = BROKEN[case]
    version = _copy_index(small, tmp_path / "index")
    breaker(version)
    with pytest.raises(store.IndexFormatError, match=pattern) as e:
        SearchIndex.open(tmp_path / "index", encoder=small["enc"])
    assert "\n" not in str(e.value)
    # An update is refused the same way (with the way out), and --rebuild starts afresh.
    with pytest.raises(store.IndexFormatError, match="--rebuild"):
        build_index(small["lib"], tmp_path / "index", small["enc"], progress=False)
    assert build_index(small["lib"], tmp_path / "index", small["enc"], progress=False, rebuild=True).num_videos == 4


def test_search_cli_reports_a_broken_index_in_one_line(tmp_path, small, run, capsys):
    version = _copy_index(small, tmp_path / "index")
    _frame_times_short(version)
    with pytest.raises(SystemExit) as e:
        main(["search", "--index", str(tmp_path / "index"), "--checkpoint", str(run["checkpoint"]), "a red circle"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "meta.sqlite" in err[0], err


def test_refresh_keeps_serving_when_a_broken_version_is_published(tmp_path, small):
    idx = SearchIndex.open(_copy_index(small, tmp_path / "index").parent, encoder=small["enc"])
    broken = _copy_index(small, tmp_path / "other")
    _nan_embedding(broken)
    new = tmp_path / "index" / "v-broken"
    shutil.copytree(broken, new)
    (tmp_path / "index" / store.CURRENT).write_text(new.name + "\n")
    assert idx.refresh() is idx  # the broken version is not taken
    assert idx.search("a red circle", k=2)


# ---------------------------------------------------------------------------- the journal
def _interrupted_build(small, out, monkeypatch):
    """An index run of the library killed at assembly: its build folder keeps the journal."""
    shutil.rmtree(out, ignore_errors=True)

    def die(*a, **k):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(indexer, "_finish", die)
        with pytest.raises(KeyboardInterrupt):
            build_index(small["lib"], out, small["enc"], progress=False, log=lambda s: None)
    builds = [p for p in out.iterdir() if p.name.startswith(".build-")]
    assert len(builds) == 1
    return builds[0] / "journal.sqlite"


def _corrupt(journal, sql, relpath, *params):
    db = sqlite3.connect(journal)
    try:
        db.execute(sql, (*params, relpath))
        db.commit()
    finally:
        db.close()


JOURNAL_DAMAGE = {
    "row not JSON": ("UPDATE encoded SET row = '{oops' WHERE relpath = ?",),
    "short video blob": ("UPDATE encoded SET video = x'0000' WHERE relpath = ?",),
    "TEXT frames": ("UPDATE encoded SET frames = 'abc' WHERE relpath = ?",),
    "thumb leaves the folder": ("UPDATE encoded SET thumb = '../../../x.jpg' WHERE relpath = ?",),
    "media absolute": ("UPDATE encoded SET media = '/etc/passwd' WHERE relpath = ?",),
    "row of another video": ("UPDATE encoded SET row = json_set(row, '$.relpath', 'zz.mp4') WHERE relpath = ?",),
}


def test_corrupt_journal_rows_are_re_encoded_not_fatal(tmp_path, small, monkeypatch):
    out = tmp_path / "index"
    journal = _interrupted_build(small, out, monkeypatch)
    names = sorted(p.name for p in small["lib"].iterdir())
    damaged = dict(zip(names, JOURNAL_DAMAGE))  # four videos, four kinds of damage
    for name, case in damaged.items():
        _corrupt(journal, JOURNAL_DAMAGE[case][0], name)
    report = build_index(small["lib"], out, small["enc"], progress=False)
    assert report.resumed == [] and report.encoded == 4 and report.num_videos == 4
    ref = store.require_version(small["index"])
    got = store.require_version(out)
    np.testing.assert_allclose(np.load(got / "video_emb.npy"), np.load(ref / "video_emb.npy"), atol=1e-6)

    # The other two kinds of damage, on a second interrupted run; undamaged rows are resumed.
    journal = _interrupted_build(small, out, monkeypatch)
    rest = list(JOURNAL_DAMAGE)[4:]
    for name, case in zip(names, rest):
        _corrupt(journal, JOURNAL_DAMAGE[case][0], name)
    report = build_index(small["lib"], out, small["enc"], progress=False)
    assert report.encoded == len(rest) and sorted(report.resumed) == names[len(rest):]


def test_unreadable_journal_file_is_started_afresh(tmp_path, small, monkeypatch):
    out = tmp_path / "index"
    journal = _interrupted_build(small, out, monkeypatch)
    for suffix in ("-wal", "-shm"):
        journal.with_name(journal.name + suffix).unlink(missing_ok=True)
    data = bytearray(journal.read_bytes())
    data[100:4096] = np.random.default_rng(1).bytes(4096 - 100)  # header intact, pages garbage
    journal.write_bytes(bytes(data))
    report = build_index(small["lib"], out, small["enc"], progress=False)
    assert report.num_videos == 4 and not report.failed
