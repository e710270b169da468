"""Search: an indexer killed outright (SIGKILL) keeps every video it finished; the re-run encodes
only the rest, and the published index is never half-written."""
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import search_utils as su
from search_utils import base, run  # noqa: F401  (session fixtures)
from clip4clip.search import SearchIndex, build_index
from clip4clip.search import store

# Indexes LIB into OUT in batches of 4 videos and SIGKILLs itself right after the second batch
# is journaled, writing the relpath of every video it journaled to LOG first.
CHILD = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, sys.argv[1])
    from clip4clip.search import Encoder, build_index, journal
    ckpt, lib, out, log = sys.argv[2:6]
    enc = Encoder.load(ckpt)
    enc.batch_clips = 4
    add, calls = journal.Journal.add, []

    def add_then_die(self, entries, size_mtime):
        entries = list(entries)
        add(self, entries, size_mtime)
        with open(log, "a") as f:
            f.writelines(e.relpath + "\\n" for e in entries)
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
    journal.Journal.add = add_then_die
    build_index(lib, out, enc, progress=False)
    print("not killed")
""")


def _kill_midway(run, lib, out, log):
    p = subprocess.run([sys.executable, "-c", CHILD, str(su.REPO), str(run["checkpoint"]), str(lib), str(out),
                        str(log)], capture_output=True, text=True, timeout=300)
    assert p.returncode == -signal.SIGKILL, (p.returncode, p.stdout, p.stderr[-2000:])
    return log.read_text().split()


def test_sigkill_halfway_then_rerun_encodes_each_video_exactly_once(tmp_path, run):
    lib = tmp_path / "lib"
    lib.mkdir()
    clips = sorted((run["data"] / "videos").glob("*.mp4"))[:14]
    for p in clips[:2]:
        shutil.copy2(p, lib / p.name)
    out = tmp_path / "index"
    enc = su.encoder(run["checkpoint"])
    first = build_index(lib, out, enc, progress=False)
    before = (out / "CURRENT").read_text()
    for p in clips[2:]:
        shutil.copy2(p, lib / p.name)

    journaled = _kill_midway(run, lib, out, tmp_path / "journaled.txt")
    assert len(journaled) == 8  # two batches of 4
    # Killed: the published index is the previous one, whole and searchable.
    assert (out / "CURRENT").read_text() == before
    assert {h.path for h in SearchIndex.open(out, encoder=enc).search("a red circle", k=20)} == set(first.added)
    builds = [p for p in out.iterdir() if p.name.startswith(".build-")]
    assert len(builds) == 1 and (builds[0] / "journal.sqlite").is_file()

    again = build_index(lib, out, enc, progress=False)
    encoded_now = sorted(set(again.added) - set(again.resumed))
    assert sorted(again.resumed) == sorted(journaled)
    assert again.encoded == len(encoded_now) == 4
    assert sorted(journaled + encoded_now) == sorted(p.name for p in clips[2:])  # each exactly once
    assert again.unchanged == sorted(first.added) and again.num_videos == 14
    assert not [p for p in out.iterdir() if p.name.startswith(".build-")]
    version = store.require_version(out)
    assert not (version / "journal.sqlite").exists() and not list(version.glob("*/j-*"))

    # The resumed index is the index an uninterrupted run makes.
    ref = build_index(lib, tmp_path / "ref", enc, progress=False)
    assert ref.encoded == 14
    ref_version = store.require_version(tmp_path / "ref")
    assert np.allclose(np.load(version / "video_emb.npy"), np.load(ref_version / "video_emb.npy"), atol=1e-6)
    assert np.allclose(np.load(version / "frame_emb.npy").astype(np.float32),
                       np.load(ref_version / "frame_emb.npy").astype(np.float32), atol=1e-3)
    cols = "id, relpath, size, mtime_ns, frame_count, frame_times, media"
    rows = sqlite3.connect(version / "meta.sqlite").execute(f"SELECT {cols} FROM videos ORDER BY id").fetchall()
    ref_rows = sqlite3.connect(ref_version / "meta.sqlite").execute(f"SELECT {cols} FROM videos ORDER BY id").fetchall()
    assert rows == ref_rows
    for vid, *_ in rows:  # every thumbnail and playback copy is there
        assert (version / "thumbs" / f"{vid}.jpg").is_file() and (version / "media" / f"{vid}.mp4").is_file()


def test_a_journal_of_another_model_is_not_used(tmp_path, run):
    """A killed run's journal is only taken over with the same model and settings."""
    lib = tmp_path / "lib"
    lib.mkdir()
    for p in sorted((run["data"] / "videos").glob("*.mp4"))[:9]:
        shutil.copy2(p, lib / p.name)
    out = tmp_path / "index"
    _kill_midway(run, lib, out, tmp_path / "journaled.txt")
    enc = su.encoder(run["checkpoint"])
    other = build_index(lib, out, enc, progress=False, proxies="off")  # another proxy setting
    assert other.encoded == 9 and not other.resumed
    assert not [p for p in out.iterdir() if p.name.startswith(".build-")]


def test_ctrl_c_keeps_the_journal_too(tmp_path, run, monkeypatch):
    from clip4clip.search import indexer
    lib = tmp_path / "lib"
    lib.mkdir()
    for p in sorted((run["data"] / "videos").glob("*.mp4"))[:6]:
        shutil.copy2(p, lib / p.name)
    enc = su.encoder(run["checkpoint"])
    monkeypatch.setattr(enc, "batch_clips", 3)
    add, calls = indexer._BatchEncoder.add, []

    def interrupted(self, batch):
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return add(self, batch)
    monkeypatch.setattr(indexer._BatchEncoder, "add", interrupted)
    messages = []
    with pytest.raises(KeyboardInterrupt):
        build_index(lib, tmp_path / "index", enc, progress=False, proxies="off", log=messages.append)
    assert any("run the same command again" in m for m in messages)
    monkeypatch.undo()
    again = build_index(lib, tmp_path / "index", enc, progress=False, proxies="off")
    assert len(again.resumed) == 3 and again.encoded == 3 and again.num_videos == 6
    assert os.listdir(tmp_path / "index").count("CURRENT") == 1
